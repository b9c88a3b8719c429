"""Tokenizers: BPE (sentencepiece) and characters behind one interface, and the loader."""

from __future__ import annotations

from pathlib import Path

from asr.tokenizers.base import BPE_MODEL_FILE, TOKENS_FILE, Tokenizer
from asr.tokenizers.bpe import BpeTokenizer
from asr.tokenizers.char import CharTokenizer

__all__ = ["BpeTokenizer", "CharTokenizer", "Tokenizer", "load_tokenizer"]


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Loads the tokenizer saved in ``directory``.

    The kind comes from the files: ``bpe.model`` -> sentencepiece (:class:`BpeTokenizer`),
    otherwise ``tokens.txt`` -> characters (:class:`CharTokenizer`).

    Raises:
        FileNotFoundError: when the directory holds neither file.
    """
    directory = Path(directory)
    if (directory / BPE_MODEL_FILE).is_file():
        return BpeTokenizer.from_file(directory / BPE_MODEL_FILE)
    if (directory / TOKENS_FILE).is_file():
        return CharTokenizer.from_file(directory / TOKENS_FILE)
    raise FileNotFoundError(
        f"{directory}: no tokenizer found (expected {BPE_MODEL_FILE} or {TOKENS_FILE})"
    )
