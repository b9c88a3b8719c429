"""asr.decoding"""
