"""Checkpoints: atomic writing, safe reading, selection and averaging of model weights."""
