"""asr.testing"""
