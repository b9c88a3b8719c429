"""Importable, tested data helpers that the egs/ stage scripts call."""
