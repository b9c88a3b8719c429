"""asr.serve"""
