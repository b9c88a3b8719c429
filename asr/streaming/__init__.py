"""asr.streaming"""
