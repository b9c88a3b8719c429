"""The tokenizer interface shared by every model, search and data pipeline.

Special ids (the same for every tokenizer kind):

* ``0`` ``<blk>``: the CTC / transducer blank; never produced by :meth:`Tokenizer.encode`.
* ``1`` ``<sos/eos>``: one shared start/end symbol, used by attention decoders.
* ``2`` ``<unk>``: what unknown text maps to.

Expected input text: LibriSpeech-style transcripts, i.e. upper-case words (``A-Z`` and
apostrophes) separated by single spaces, such as ``"HE DIDN'T KNOW"``. Tokenizers do not change
case or strip punctuation (that is the corpus preparation's job, see ``asr/synth/text_norm.py``); text
with characters unseen in training encodes to ``<unk>``.

Every tokenizer directory holds a ``tokens.txt`` (``piece id`` per line, k2/icefall style);
sentencepiece tokenizers also hold ``bpe.model``. :func:`asr.tokenizers.load_tokenizer` picks the
kind from those files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from asr.fileio import read_text, write_text_atomic

BLANK_ID = 0
SOS_EOS_ID = 1
UNK_ID = 2
BLANK_PIECE = "<blk>"
SOS_EOS_PIECE = "<sos/eos>"
UNK_PIECE = "<unk>"
#: Pieces at ids 0, 1, 2 of every tokenizer.
SPECIAL_PIECES = (BLANK_PIECE, SOS_EOS_PIECE, UNK_PIECE)
#: Prefix of a sentencepiece piece that starts a word (``▁HE``; a bare ``▁`` piece too).
WORD_START = "\u2581"

TOKENS_FILE = "tokens.txt"
BPE_MODEL_FILE = "bpe.model"


def normalize_whitespace(text: str) -> str:
    """``text`` with each run of whitespace (tabs, newlines, no-break spaces: whatever
    :meth:`str.isspace` calls whitespace) made one space, and none at either end: the form in
    which every tokenizer is trained on a sentence (a piece never holds whitespace)."""
    return " ".join(text.split())


@runtime_checkable
class Tokenizer(Protocol):
    """Maps normalised text to token ids and back.

    Shape legend: V = ``vocab_size`` (including blank, ``<sos/eos>`` and ``<unk>``).
    """

    @property
    def vocab_size(self) -> int:
        """V, the number of ids including blank."""
        ...

    @property
    def blank_id(self) -> int:
        """Always 0."""
        ...

    @property
    def sos_id(self) -> int:
        """The shared ``<sos/eos>`` id (1)."""
        ...

    @property
    def eos_id(self) -> int:
        """The shared ``<sos/eos>`` id (1)."""
        ...

    @property
    def unk_id(self) -> int:
        """The ``<unk>`` id (2)."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of one transcript (never blank nor ``<sos/eos>``)."""
        ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of several transcripts."""
        ...

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids; blank and ``<sos/eos>`` are ignored."""
        ...

    def id_to_piece(self, token_id: int) -> str:
        """The piece (sub-word or character) of one id."""
        ...

    def save(self, directory: str | Path) -> None:
        """Write the files :func:`load_tokenizer` reads into ``directory`` (created if needed)."""
        ...


class ReservedIds:
    """The special ids every tokenizer here reserves: blank 0, ``<sos/eos>`` 1, ``<unk>`` 2.

    Mixed into :class:`asr.tokenizers.bpe.BpeTokenizer` and
    :class:`asr.tokenizers.char.CharTokenizer` so the :class:`Tokenizer` properties have one home.
    """

    @property
    def blank_id(self) -> int:
        return BLANK_ID

    @property
    def sos_id(self) -> int:
        return SOS_EOS_ID

    @property
    def eos_id(self) -> int:
        return SOS_EOS_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID


def check_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    """Returns ``ids`` as a list, raising ``ValueError`` for an id outside ``[0, vocab_size)``."""
    out = [int(i) for i in ids]
    for token_id in out:
        if not 0 <= token_id < vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary [0, {vocab_size})")
    return out


def write_tokens_file(path: Path, pieces: Sequence[str]) -> None:
    """Write ``tokens.txt``: one ``piece id`` line per id, in id order."""
    for token_id, piece in enumerate(pieces):
        if not piece or any(ch.isspace() for ch in piece):
            raise ValueError(f"piece {piece!r} (id {token_id}) is empty or contains whitespace")
    write_text_atomic(path, "".join(f"{piece} {i}\n" for i, piece in enumerate(pieces)))


def read_tokens_file(path: Path) -> list[str]:
    """Read ``tokens.txt`` written by :func:`write_tokens_file`; ids must be 0, 1, 2, ... in order."""
    pieces: list[str] = []
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit() or int(fields[1]) != len(pieces):
            raise ValueError(
                f"{path}:{line_no}: expected 'piece {len(pieces)}', got {line!r}"
            )
        pieces.append(fields[0])
    if tuple(pieces[: len(SPECIAL_PIECES)]) != SPECIAL_PIECES:
        raise ValueError(
            f"{path}: ids 0, 1, 2 must be {list(SPECIAL_PIECES)}, got {pieces[:3]}"
        )
    return pieces
