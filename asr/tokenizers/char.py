"""Character tokenizer: one id per character, a word-boundary symbol for spaces.

Ids: ``<blk>`` 0, ``<sos/eos>`` 1, ``<unk>`` 2, the space symbol ``▁`` 3, then the training
characters in code-point order. Runs of whitespace are one space and leading/trailing
whitespace is dropped, so ``decode(encode(text)) == " ".join(text.split())`` for seen characters;
unseen characters encode to ``<unk>``, which decodes to the text ``<unk>``
(:func:`asr.tokenizers.base.text_of_pieces`). A text that writes ``▁`` itself is refused
(:func:`asr.tokenizers.base.check_text`): it would decode as a space.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from asr.tokenizers.base import (
    SPECIAL_PIECES,
    TOKENS_FILE,
    UNK_ID,
    WORD_START,
    ReservedIds,
    check_ids,
    check_text,
    read_tokens_file,
    text_of_pieces,
    write_tokens_file,
)

#: The piece standing for a space between words (as in sentencepiece).
SPACE_PIECE = WORD_START


class CharTokenizer(ReservedIds):
    """Character-level tokenizer.

    Args:
        pieces: all pieces in id order: ``SPECIAL_PIECES``, ``SPACE_PIECE``, then characters.
    """

    def __init__(self, pieces: Sequence[str]) -> None:
        pieces = list(pieces)
        expected = [*SPECIAL_PIECES, SPACE_PIECE]
        if pieces[: len(expected)] != expected:
            raise ValueError(f"char tokenizer pieces must start with {expected}, got {pieces[:4]}")
        chars = pieces[len(expected):]
        bad = [p for p in chars if len(p) != 1 or p.isspace() or p == SPACE_PIECE]
        if bad or len(set(chars)) != len(chars):
            raise ValueError(
                f"char tokenizer pieces after {SPACE_PIECE!r} must be distinct single "
                f"non-space characters, got bad={bad[:5]} ({len(chars)} characters)"
            )
        self._pieces = pieces
        self._ids = {piece: i for i, piece in enumerate(pieces) if i > UNK_ID}
        self._space_id = len(SPECIAL_PIECES)

    @classmethod
    def from_file(cls, path: str | Path) -> CharTokenizer:
        """Load ``tokens.txt``."""
        return cls(read_tokens_file(Path(path)))

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``.

        Raises:
            ValueError: naming a text that holds ``▁`` (:func:`asr.tokenizers.base.check_text`).
        """
        ids: list[int] = []
        for word in check_text(text).split():
            if ids:
                ids.append(self._space_id)
            ids.extend(self._ids.get(ch, UNK_ID) for ch in word)
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return text_of_pieces(self._pieces[i] for i in check_ids(ids, self.vocab_size))

    def id_to_piece(self, token_id: int) -> str:
        check_ids([token_id], self.vocab_size)
        return self._pieces[int(token_id)]

    def pieces(self) -> list[str]:
        """All pieces in id order."""
        return list(self._pieces)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_tokens_file(directory / TOKENS_FILE, self._pieces)


def build_char_tokenizer(texts: Iterable[str]) -> CharTokenizer:
    """Build a character tokenizer from every non-space character of ``texts``.

    Raises:
        ValueError: when ``texts`` hold no character, or naming a text that holds ``▁``
            (reserved for spaces, :func:`asr.tokenizers.base.check_text`).
    """
    chars: set[str] = set()
    for text in texts:
        chars.update(ch for ch in check_text(text) if not ch.isspace())
    if not chars:
        raise ValueError("no characters in the training texts of the char tokenizer")
    return CharTokenizer([*SPECIAL_PIECES, SPACE_PIECE, *sorted(chars)])
