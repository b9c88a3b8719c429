"""asr.export"""
