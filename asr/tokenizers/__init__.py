"""Tokenizers: BPE (sentencepiece) and characters behind one interface, and the loader."""

from __future__ import annotations

from pathlib import Path

from asr.tokenizers.base import BPE_MODEL_FILE, TOKENS_FILE, Tokenizer
from asr.tokenizers.bpe import BpeTokenizer
from asr.tokenizers.char import CharTokenizer

__all__ = ["BpeTokenizer", "CharTokenizer", "Tokenizer", "load_tokenizer", "tokenizer_file"]


def tokenizer_file(directory: str | Path) -> Path:
    """The file of the tokenizer saved in ``directory``, without loading it: ``bpe.model``
    (sentencepiece), otherwise ``tokens.txt`` (characters).

    Raises:
        FileNotFoundError: when the directory holds neither file, naming both.
    """
    directory = Path(directory)
    for name in (BPE_MODEL_FILE, TOKENS_FILE):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"{directory}: no tokenizer found (expected {directory / BPE_MODEL_FILE} or {TOKENS_FILE})"
    )


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Loads the tokenizer saved in ``directory``.

    The kind comes from the files (:func:`tokenizer_file`): ``bpe.model`` -> sentencepiece
    (:class:`BpeTokenizer`), otherwise ``tokens.txt`` -> characters (:class:`CharTokenizer`).

    Raises:
        FileNotFoundError: when the directory holds neither file.
    """
    path = tokenizer_file(directory)
    if path.name == BPE_MODEL_FILE:
        return BpeTokenizer.from_file(path)
    return CharTokenizer.from_file(path)
