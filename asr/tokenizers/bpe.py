"""Sentencepiece BPE tokenizer (Sennrich et al. 2016, "Neural Machine Translation of Rare Words
with Subword Units"; Kudo & Richardson 2018, "SentencePiece").

The model is trained with ``<blk>`` at id 0, ``<sos/eos>`` at id 1 and ``<unk>`` at id 2 (no
sentencepiece bos/eos/pad of its own), full character coverage and the identity normaliser, so
``decode(encode(text)) == text`` for whitespace-normalised text of seen characters (unseen ones
encode to ``<unk>``, and so do ``<blk>`` and ``<sos/eos>`` written in a text; ``<unk>`` decodes
to the text ``<unk>``, :func:`asr.tokenizers.base.text_of_pieces`, where sentencepiece's own
decoder writes `` ⁇ ``). A text that writes the word-start mark ``▁`` itself, which
sentencepiece would take for a space, is refused, in training and in encoding
(:func:`asr.tokenizers.base.check_text`). Training reads
the sentences in the given order with one thread, which makes the model bytes reproducible.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from asr.fileio import write_bytes_atomic
from asr.fingerprint import fingerprint_path, is_current, sha256_of_texts, write_fingerprint
from asr.tokenizers.base import (
    BLANK_ID,
    BLANK_PIECE,
    BPE_MODEL_FILE,
    SOS_EOS_ID,
    SOS_EOS_PIECE,
    SPECIAL_PIECES,
    TOKENS_FILE,
    UNK_ID,
    WORD_START,
    ReservedIds,
    check_ids,
    check_text,
    normalize_whitespace,
    text_of_pieces,
    write_tokens_file,
)

logger = logging.getLogger(__name__)


class BpeTokenizer(ReservedIds):
    """A trained sentencepiece model with the special ids of :mod:`asr.tokenizers.base`.

    Args:
        model_proto: the serialized sentencepiece model (the bytes of ``bpe.model``).
        source: where the bytes came from, for error messages.
    """

    def __init__(self, model_proto: bytes, source: str = "<bytes>") -> None:
        import sentencepiece as spm

        self._proto = bytes(model_proto)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        except RuntimeError as err:
            raise ValueError(
                f"{source}: not a sentencepiece model (corrupt file?): {err}"
            ) from None
        found = tuple(self._sp.id_to_piece(i) for i in range(min(3, self._sp.get_piece_size())))
        if found != SPECIAL_PIECES or self._sp.unk_id() != UNK_ID:
            raise ValueError(
                f"{source}: sentencepiece model must have {list(SPECIAL_PIECES)} at ids 0, 1, 2 "
                f"(unk_id 2), got {list(found)} (unk_id {self._sp.unk_id()}); "
                "train it with train_bpe"
            )
        self._skip = frozenset((BLANK_ID, SOS_EOS_ID))

    @classmethod
    def from_file(cls, path: str | Path) -> BpeTokenizer:
        """Load ``bpe.model``."""
        path = Path(path)
        return cls(path.read_bytes(), source=str(path))

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``.

        Raises:
            ValueError: naming a text that holds ``▁`` (:func:`asr.tokenizers.base.check_text`).
        """
        return self._unknown_specials(self._sp.encode(check_text(text)))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = [check_text(text) for text in texts]
        return [self._unknown_specials(ids) for ids in self._sp.encode(texts)]

    def _unknown_specials(self, ids: Iterable[int]) -> list[int]:
        """``ids`` with ``<unk>`` for blank and ``<sos/eos>``: sentencepiece matches the
        user-defined ``<blk>`` and ``<sos/eos>`` pieces in any text, and a transcript that writes
        them is unknown text, not a blank or an end of sentence in the training targets."""
        return [UNK_ID if i in self._skip else i for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        return text_of_pieces(self._sp.id_to_piece(i) for i in check_ids(ids, self.vocab_size))

    def id_to_piece(self, token_id: int) -> str:
        check_ids([token_id], self.vocab_size)
        return str(self._sp.id_to_piece(int(token_id)))

    def pieces(self) -> list[str]:
        """All pieces in id order."""
        return [self.id_to_piece(i) for i in range(self.vocab_size)]

    def piece_scores(self) -> list[float]:
        """The sentencepiece score of every piece, in id order (what ``spm_export_vocab``
        writes beside each piece)."""
        return [float(self._sp.get_score(i)) for i in range(self.vocab_size)]

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(directory / BPE_MODEL_FILE, self._proto)
        write_tokens_file(directory / TOKENS_FILE, self.pieces())


#: The smallest ``vocab_size`` of a BPE model of any text: the special pieces, the word-start
#: mark ``▁`` and one character (:func:`vocab_size_needed` of a one-letter text).
MIN_VOCAB_SIZE = len(SPECIAL_PIECES) + 2


def vocab_size_needed(sentences: Iterable[str]) -> int:
    """The smallest ``vocab_size`` that sentencepiece trains a model of ``sentences`` with:
    every character of the text has an id of its own (full character coverage), and so does the
    word-start mark ``▁`` that stands for the spaces, beside the special pieces.

    Args:
        sentences: the training text (its whitespace normalised first, as :func:`train_bpe`
            reads it).
    """
    characters = {c for sentence in sentences for c in normalize_whitespace(sentence) if c != " "}
    return len(SPECIAL_PIECES) + len(characters | {WORD_START})


def check_vocab_size(vocab_size: int, sentences: Sequence[str] | None = None) -> None:
    """Refuses a ``vocab_size`` too small for any text (:data:`MIN_VOCAB_SIZE`) or, given the
    training ``sentences``, too small for them (:func:`vocab_size_needed`):
    sentencepiece's own refusal comes only after it has read the text.

    Raises:
        ValueError: naming the smallest size that would do and why.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be at least {MIN_VOCAB_SIZE} (the {len(SPECIAL_PIECES)} special "
            f"pieces {', '.join(SPECIAL_PIECES)}, the word-start mark {WORD_START} and a "
            f"character), got {vocab_size}"
        )
    if sentences is not None:
        needed = vocab_size_needed(sentences)
        if vocab_size < needed:
            raise ValueError(
                f"vocab_size {vocab_size} is too small for the training text: its "
                f"{needed - len(SPECIAL_PIECES) - 1} characters, the word-start mark "
                f"{WORD_START} and the {len(SPECIAL_PIECES)} special pieces need at least {needed}"
            )


def train_bpe(
    texts: Iterable[str],
    output_dir: str | Path,
    vocab_size: int,
    *,
    force: bool = False,
    model_type: str = "bpe",
    max_sentence_length: int = 10000,
    num_threads: int = 1,
) -> BpeTokenizer:
    """Train a sentencepiece model and save ``bpe.model`` + ``tokens.txt`` in ``output_dir``.

    Idempotent: an existing ``output_dir/bpe.model`` is loaded instead of retrained (unless
    ``force``) while its fingerprint (``bpe.model.fingerprint.json``, :mod:`asr.fingerprint`:
    the sha256 of the sentences and every option below but ``num_threads``) equals this call's;
    a model trained on other text or with other options, or without a fingerprint, is trained
    again with a warning naming what changed.

    Args:
        texts: training sentences (normalised transcripts, see :mod:`asr.tokenizers.base`),
            read in this order; their whitespace is normalised first
            (:func:`asr.tokenizers.base.normalize_whitespace`, as ``asr bpe`` reads them) and
            empty ones are dropped.
        output_dir: directory for the model files (created if needed).
        vocab_size: V, the total number of ids including ``<blk>``, ``<sos/eos>`` and ``<unk>``.
        force: retrain even when the model exists.
        model_type: sentencepiece model type (``"bpe"`` or ``"unigram"``).
        max_sentence_length: longest sentence in bytes kept for training.
        num_threads: sentencepiece training threads (1 keeps the model bytes reproducible).

    Returns:
        The trained (or existing) tokenizer.

    Raises:
        ValueError: for a ``vocab_size`` too small for the text (:func:`check_vocab_size`), no
            training text, a text that holds ``▁`` (naming it,
            :func:`asr.tokenizers.base.check_text`), or a vocabulary too large for the text
            (sentencepiece's message is kept).
    """
    output_dir = Path(output_dir)
    model_path = output_dir / BPE_MODEL_FILE
    check_vocab_size(vocab_size)
    # as asr bpe reads transcripts: a tab or a double space would otherwise become a piece
    # of its own, refused only once the model is trained
    sentences = [normalize_whitespace(check_text(t)) for t in texts]
    sentences = [t for t in sentences if t]
    # num_threads is left out: it changes how the model is trained, not what it is trained from
    made_from = {"texts_sha256": sha256_of_texts(sentences), "num_sentences": len(sentences),
                 "vocab_size": vocab_size, "model_type": model_type,
                 "max_sentence_length": max_sentence_length}
    if not force and is_current(model_path, made_from):
        tokenizer = BpeTokenizer.from_file(model_path)
        if not (output_dir / TOKENS_FILE).is_file():
            write_tokens_file(output_dir / TOKENS_FILE, tokenizer.pieces())
        return tokenizer

    if not sentences:
        raise ValueError(f"no training text for the BPE model in {output_dir}")
    check_vocab_size(vocab_size, sentences)
    fingerprint_path(model_path).unlink(missing_ok=True)  # with force: the model is replaced
    # tokens.txt is rewritten too: a char tokenizer's fingerprint of it would describe a file
    # that is no longer there (and let ``asr bpe --kind char`` reuse the BPE model's)
    fingerprint_path(output_dir / TOKENS_FILE).unlink(missing_ok=True)
    proto = _train_proto(sentences, vocab_size, model_type, max_sentence_length, num_threads)
    tokenizer = BpeTokenizer(proto, source=str(model_path))
    tokenizer.save(output_dir)
    write_fingerprint(model_path, made_from)
    logger.info(
        "trained %s model with vocab_size %d on %d sentences -> %s",
        model_type, vocab_size, len(sentences), model_path,
    )
    return tokenizer


def _train_proto(
    sentences: list[str], vocab_size: int, model_type: str, max_sentence_length: int,
    num_threads: int,
) -> bytes:
    import sentencepiece as spm

    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=buffer,
            model_type=model_type,
            vocab_size=vocab_size,
            character_coverage=1.0,
            user_defined_symbols=[BLANK_PIECE, SOS_EOS_PIECE],
            unk_id=UNK_ID,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            normalization_rule_name="identity",
            input_sentence_size=0,  # every sentence (sentencepiece refuses 1 to 100)
            shuffle_input_sentence=False,
            max_sentence_length=max_sentence_length,
            num_threads=num_threads,
            minloglevel=0 if logger.isEnabledFor(logging.DEBUG) else 2,
        )
    except RuntimeError as err:
        raise ValueError(
            f"sentencepiece could not train a {model_type} model of vocab_size {vocab_size} "
            f"on {len(sentences)} sentences: {err}"
        ) from err
    return buffer.getvalue()
