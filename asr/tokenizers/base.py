"""The tokenizer interface shared by every model, search and data pipeline.

Special ids (the same for every tokenizer kind):

* ``0`` ``<blk>``: the CTC / transducer blank; never produced by :meth:`Tokenizer.encode`.
* ``1`` ``<sos/eos>``: one shared start/end symbol, used by attention decoders.
* ``2`` ``<unk>``: what unknown text maps to.

Expected input text: LibriSpeech-style transcripts, i.e. upper-case words (``A-Z`` and
apostrophes) separated by single spaces, such as ``"HE DIDN'T KNOW"``. Tokenizers do not change
case or strip punctuation (that is the corpus preparation's job, see ``asr/synth/text_norm.py``);
text with characters unseen in training encodes to ``<unk>``.

Text of ids (:meth:`Tokenizer.decode`, and the words and text of every recognition result) is
read from the pieces by one rule, :func:`piece_words`: each ``▁`` is a space between words,
``<blk>`` and ``<sos/eos>`` are left out, and every other piece reads as written in
``tokens.txt`` (``<unk>`` as ``<unk>``, as sherpa-onnx prints it, not sentencepiece's `` ⁇ ``).

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
#: Pieces that are no text (decoding leaves them out).
_SILENT_PIECES = frozenset((BLANK_PIECE, SOS_EOS_PIECE))

TOKENS_FILE = "tokens.txt"
BPE_MODEL_FILE = "bpe.model"


def normalize_whitespace(text: str) -> str:
    """``text`` with each run of whitespace (tabs, newlines, no-break spaces: whatever
    :meth:`str.isspace` calls whitespace) made one space, and none at either end: the form in
    which every tokenizer is trained on a sentence (a piece never holds whitespace)."""
    return " ".join(text.split())


def check_text(text: str) -> str:
    """Returns ``text``, refusing one that writes the word-start mark ``▁`` (U+2581) itself.

    Every tokenizer here reads ``▁`` in its pieces as a space between words (:func:`piece_words`)
    and sentencepiece writes the spaces of a text as ``▁``, so a ``▁`` in a text would encode as
    a word boundary and decode as a space: ``decode(encode(text)) != text``, silently.

    Raises:
        ValueError: naming the text (its first 100 characters) and the mark.
    """
    if WORD_START in text:
        shown = text if len(text) <= 100 else text[:100] + "..."
        raise ValueError(
            f"text {shown!r} holds {WORD_START!r} (U+2581), the tokenizers' word-boundary mark, "
            "which would read back as a space; replace it in the transcripts (the corpus "
            "preparation's job)"
        )
    return text


def piece_words(pieces: Iterable[str]) -> list[tuple[str, int, int]]:
    """The words that token pieces spell: ``(text, index of its first piece, index of its last
    piece)`` for each word, in order.

    Every ``▁`` in a piece is a boundary between words (``▁HE`` starts a word, a bare ``▁`` is
    a space), so leading, trailing, repeated and bare ``▁`` make no empty word; ``<blk>`` and
    ``<sos/eos>`` are left out; other pieces read as written (``<unk>`` too, inside a word or
    as one). The one rule of text from pieces: :func:`text_of_pieces` joins these words.

    Args:
        pieces: (U,) token pieces in order.
    """
    words: list[tuple[str, int, int]] = []
    text, first, last = "", 0, 0
    for index, piece in enumerate(pieces):
        if piece in _SILENT_PIECES:
            continue
        for part_no, part in enumerate(piece.split(WORD_START)):
            if part_no and text:
                words.append((text, first, last))
                text = ""
            if part:
                first = index if not text else first
                text, last = text + part, index
    if text:
        words.append((text, first, last))
    return words


def text_of_pieces(pieces: Iterable[str]) -> str:
    """The text of token pieces: their :func:`piece_words` joined by single spaces."""
    return " ".join(word for word, _, _ in piece_words(pieces))


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
        """Text of token ids (:func:`text_of_pieces` of their pieces); blank and ``<sos/eos>``
        are ignored."""
        ...

    def id_to_piece(self, token_id: int) -> str:
        """The piece (sub-word or character) of one id."""
        ...

    def pieces(self) -> list[str]:
        """Every piece in id order: the vocabulary a model is trained on (a training
        checkpoint keeps it as ``extra["tokens"]``, see :func:`check_vocabulary`)."""
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


def read_tokens_file(path: Path, specials: bool = True) -> list[str]:
    """Read ``tokens.txt`` written by :func:`write_tokens_file`; ids must be 0, 1, 2, ... in order,
    the first three :data:`SPECIAL_PIECES` unless ``specials`` is False (the ``tokens.txt`` of
    an ONNX export in sherpa-onnx's NeMo layout has the blank last)."""
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
    if specials and tuple(pieces[: len(SPECIAL_PIECES)]) != SPECIAL_PIECES:
        raise ValueError(
            f"{path}: ids 0, 1, 2 must be {list(SPECIAL_PIECES)}, got {pieces[:3]}"
        )
    return pieces


def check_vocabulary(trained: Sequence[str] | None, tokenizer: Tokenizer,
                     tokenizer_dir: str | Path) -> None:
    """Checks that weights trained on the vocabulary ``trained`` (a training checkpoint's
    ``extra["tokens"]``; ``None`` for weights that do not record one) are used with
    ``tokenizer`` (loaded from ``tokenizer_dir``).

    A tokenizer made again with the same size but other pieces (``asr bpe`` remakes its model
    when the training texts change) gives parameters of the same shapes, so only this tells that
    every output id of the model now means another piece.

    Raises:
        ValueError: naming the tokenizer directory and the first id whose piece differs.
    """
    pieces = tokenizer.pieces()
    if trained is None or list(trained) == pieces:
        return
    trained = list(trained)
    if len(trained) != len(pieces):
        detail = f"{len(trained)} tokens, {tokenizer_dir} has {len(pieces)}"
    else:
        first = next(i for i, (a, b) in enumerate(zip(trained, pieces)) if a != b)
        detail = (f"token {first} is {trained[first]!r} there and {pieces[first]!r} in "
                  f"{tokenizer_dir}")
    raise ValueError(
        f"it was trained with another vocabulary than tokenizer_dir {tokenizer_dir} ({detail}); "
        "point tokenizer_dir at the tokenizer the checkpoint was trained with, or train anew")
