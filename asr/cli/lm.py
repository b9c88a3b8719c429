"""``asr lm``: train an n-gram LM (interpolated modified Kneser-Ney) and write it as ARPA
(gzip-compressed when ``--output`` ends in ``.gz``: ``lm.arpa.gz``).

``--unit token`` (default): the transcripts are tokenized with the model's tokenizer, so the LM's
words are token ids, the form ``search.lm_path`` expects with ``search.lm_unit=token`` (shallow
fusion in ``transducer_beam``, ``tdt_beam``, ``ctc_prefix_beam`` and ``cif_beam``).
``--unit word``: an n-gram over the transcripts' words, written out; its vocabulary becomes the
lexicon of ``search.lm_unit=word`` (hypotheses are restricted to those words, see
:mod:`asr.decoding.word_lm`), so pass every text the recognizer may have to say. A word
written ``<unk>`` in the transcripts is the LM's unknown word (as KenLM counts it), no word
of the lexicon; ``<s>`` or ``</s>`` written there is refused while the transcripts are read,
naming the file and line (every sentence is counted between them already).
Transcript formats as for ``asr bpe`` (a text file may be gzip-compressed, e.g. LibriSpeech's
LM corpus ``librispeech-lm-norm.txt.gz`` as it ships). The speed copies of a speed-perturbed
cut manifest (:func:`asr.data.filtering.is_speed_copy`) are left out, so each utterance's text
counts once; a transcript passed twice counts twice.
An existing ``--output`` is reused only while its fingerprint (``<output>.fingerprint.json``,
:mod:`asr.fingerprint`: the sha256 of the transcripts' sentences, the unit, the order and, for
tokens, of the tokenizer's files) equals this run's; otherwise the LM is trained again. A second
run on the same ``--output`` while one makes it is refused (exit 2, :func:`asr.fileio.output_lock`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from asr.constants import add_overwrite_argument
from asr.data.filtering import is_speed_copy
from asr.decoding.lm import UNK
from asr.decoding.ngram_train import check_words, estimate_kneser_ney, write_arpa
from asr.fileio import check_writable_file, output_lock
from asr.fingerprint import (
    fingerprint_path,
    is_current,
    sha256_of_files,
    sha256_of_texts,
    write_fingerprint,
)
from asr.tokenizers import load_tokenizer
from asr.tokenizers.base import BPE_MODEL_FILE, TOKENS_FILE
from asr.tokenizers.transcripts import TRANSCRIPTS_HELP, read_transcripts

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transcripts", nargs="+", required=True, metavar="F",
        help=TRANSCRIPTS_HELP,
    )  # fmt: skip
    parser.add_argument(
        "--tokenizer-dir",
        help="directory of the tokenizer (default: none; needed for --unit token)",
    )
    parser.add_argument(
        "--unit", choices=("token", "word"), default="token",
        help="n-gram over token ids or over words",
    )  # fmt: skip
    parser.add_argument("--order", type=int, default=4, help="n-gram order")
    parser.add_argument("--output", required=True,
                        help="ARPA file to write; gzip-compressed when it ends in .gz")
    add_overwrite_argument(parser, "retrain even if the output exists and was made from these "
                                   "transcripts and options (otherwise it is reused)")


def run(args: argparse.Namespace) -> int:
    """Train and write the LM, or keep the existing one while its fingerprint says it was made
    from the same transcripts, tokenizer and options; errors are reported without a traceback
    (exit 2)."""
    output = Path(args.output)
    try:
        check_writable_file(output, "--output")
        # the options first: reading an LM corpus takes long
        if args.order < 1:
            raise ValueError(f"--order must be >= 1, got {args.order}")
        if args.unit == "token" and args.tokenizer_dir is None:
            raise ValueError("--unit token needs --tokenizer-dir")
        # a word LM's words are checked as they are read, naming the file and line
        texts = read_transcripts(args.transcripts, check_words if args.unit == "word" else None,
                                 skip=is_speed_copy)
        made_from = {"unit": args.unit, "order": args.order,
                     "texts_sha256": sha256_of_texts(texts), "num_texts": len(texts)}
        if args.unit == "token":
            made_from["tokenizer_sha256"] = sha256_of_files(
                Path(args.tokenizer_dir) / name for name in (BPE_MODEL_FILE, TOKENS_FILE))
        with output_lock(output):  # another run making it is refused, naming it
            if not args.overwrite and is_current(output, made_from):
                return 0
            fingerprint_path(output).unlink(missing_ok=True)
            symbols = None
            if args.unit == "word":
                # <unk> in the text is the unknown word (as KenLM counts it), no lexicon word
                symbols = sorted({word for text in texts for word in text.split()} - {"<unk>"})
                index = {word: i for i, word in enumerate(symbols)} | {"<unk>": UNK}
                sentences = [[index[word] for word in text.split()] for text in texts]
                vocab: list[int] = []
            else:
                tokenizer = load_tokenizer(args.tokenizer_dir)
                sentences = [tokenizer.encode(text) for text in texts]
                vocab = [i for i in range(tokenizer.vocab_size) if i != tokenizer.blank_id]
            empty = sum(1 for s in sentences if not s)
            if empty:
                logger.warning("%d transcripts have no %ss and are skipped", empty, args.unit)
            estimate = estimate_kneser_ney([s for s in sentences if s], args.order, vocab)
            write_arpa(estimate, output, symbols)
            write_fingerprint(output, made_from)
    except (OSError, ValueError) as err:
        logger.error("asr lm: %s", err)
        return 2
    extra = f", {len(symbols)} words" if symbols is not None else ""
    logger.info("wrote a %d-gram %s LM%s to %s", args.order, args.unit, extra, output)
    return 0
