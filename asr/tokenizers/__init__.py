"""asr.tokenizers"""
