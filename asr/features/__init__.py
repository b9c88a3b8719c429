"""asr.features"""
