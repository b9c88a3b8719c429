"""asr.heads"""
