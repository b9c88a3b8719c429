"""``asr bpe``: train a tokenizer (sentencepiece BPE or characters) from transcripts.

Transcript formats, by path (see :mod:`asr.tokenizers.transcripts`): a directory -> all
``*.trans.txt`` below it; ``*.jsonl.gz`` / ``*.jsonl`` -> lhotse supervision or cut manifest;
``*.trans.txt`` or ``text`` -> ``utt_id TEXT`` lines; anything else -> one sentence per line. A
text file may be gzip-compressed, told by its first bytes (``librispeech-lm-norm.txt.gz``).
The speed copies of a speed-perturbed cut manifest (``asr prepare fbank --speed-perturb``: told
by :func:`asr.data.filtering.is_speed_copy`) are left out, so each utterance's text counts once.
A tokenizer already in ``--output-dir`` is reused only while its fingerprint
(``bpe.model.fingerprint.json`` / ``tokens.txt.fingerprint.json``, :mod:`asr.fingerprint`) says
it was made from the same sentences and options; otherwise it is trained again. A second run on the
same ``--output-dir`` while one makes it is refused (exit 2, :func:`asr.fileio.output_lock`).
A ``--vocab-size`` too small for the text (each of its characters, the word-start mark ``▁`` and
the three special pieces take an id: :func:`asr.tokenizers.bpe.check_vocab_size`) is refused
before sentencepiece reads it; ``--check-only`` checks it (against the ``--transcripts`` given,
if any, else the least any text needs) and exits, as the recipe scripts do before their first
stage.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from asr.constants import add_overwrite_argument
from asr.data.filtering import is_speed_copy
from asr.fileio import check_writable_dir, output_lock
from asr.fingerprint import fingerprint_path, is_current, sha256_of_texts, write_fingerprint
from asr.tokenizers.base import BPE_MODEL_FILE, TOKENS_FILE
from asr.tokenizers.bpe import MIN_VOCAB_SIZE, check_vocab_size, train_bpe
from asr.tokenizers.char import build_char_tokenizer
from asr.tokenizers.transcripts import TRANSCRIPTS_HELP, read_transcripts

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transcripts", nargs="+", default=[], metavar="F",
        help=f"{TRANSCRIPTS_HELP} (required but with --check-only)",
    )
    parser.add_argument("--output-dir", default=None,
                        help="where bpe.model / tokens.txt go (required but with --check-only)")
    parser.add_argument("--vocab-size", type=int, default=500,
                        help=f"BPE vocabulary size incl. <blk>, <sos/eos>, <unk>: at least "
                             f"{MIN_VOCAB_SIZE}, and one id per character of the text with the "
                             f"word-start mark (default: 500)")
    parser.add_argument("--kind", choices=("bpe", "char"), default="bpe", help="tokenizer kind")
    add_overwrite_argument(parser, "retrain even if the model exists and was made from these "
                                   "transcripts and options (otherwise it is reused)")
    parser.add_argument("--check-only", action="store_true",
                        help="check --vocab-size (against the --transcripts given, if any) and "
                             "that --output-dir (if given) can be written, and exit: 0 when they "
                             "fit, 2 naming what does not; trains and writes nothing")


def _check_only(args: argparse.Namespace) -> None:
    """``--check-only``: ValueError (or OSError) for what training would refuse."""
    if args.output_dir is not None:
        check_writable_dir(Path(args.output_dir), "--output-dir")
    if args.kind == "bpe":
        texts = (read_transcripts(args.transcripts, skip=is_speed_copy) if args.transcripts
                 else None)
        try:
            check_vocab_size(args.vocab_size, texts)
        except ValueError as err:
            raise ValueError(f"--vocab-size {args.vocab_size}: {err}"
                             + (f" ({' '.join(args.transcripts)})" if texts else "")) from err


def run(args: argparse.Namespace) -> int:
    """Train the tokenizer, or keep the existing one while its fingerprint says it was made from
    the same transcripts and options (:mod:`asr.fingerprint`); errors are reported without a
    traceback (exit 2)."""
    try:
        if args.check_only:
            _check_only(args)
            logger.info("asr bpe: --vocab-size %d fits (--check-only: nothing trained)",
                        args.vocab_size)
            return 0
        if not args.transcripts or args.output_dir is None:
            raise ValueError("--transcripts and --output-dir are required (but with --check-only)")
        output_dir = Path(args.output_dir)
        check_writable_dir(output_dir, "--output-dir")
        texts = read_transcripts(args.transcripts, skip=is_speed_copy)
        with output_lock(output_dir):  # another run making it is refused, naming it
            if args.kind == "char":
                tokens = output_dir / TOKENS_FILE
                made_from = {"kind": "char", "texts_sha256": sha256_of_texts(texts)}
                if not args.overwrite and is_current(tokens, made_from):
                    return 0
                if (output_dir / BPE_MODEL_FILE).is_file():
                    raise ValueError(f"{output_dir} holds a BPE model; use another --output-dir")
                fingerprint_path(tokens).unlink(missing_ok=True)
                tokenizer = build_char_tokenizer(texts)
                tokenizer.save(output_dir)
                write_fingerprint(tokens, made_from)
            else:
                # train_bpe reuses an existing model only while it was trained on these texts
                tokenizer = train_bpe(texts, output_dir, args.vocab_size, force=args.overwrite)
    except (OSError, ValueError) as err:
        logger.error("asr bpe: %s", err)
        return 2
    logger.info("%s tokenizer with vocab_size %d in %s",
                args.kind, tokenizer.vocab_size, output_dir)
    return 0
