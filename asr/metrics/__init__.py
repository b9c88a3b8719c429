"""asr.metrics"""
