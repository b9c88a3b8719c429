"""asr.encoders"""
