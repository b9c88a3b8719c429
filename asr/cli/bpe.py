"""``asr bpe``: train a tokenizer (sentencepiece BPE or characters) from transcripts.

Transcript formats, by path (see :mod:`asr.tokenizers.transcripts`): a directory -> all
``*.trans.txt`` below it; ``*.jsonl.gz`` / ``*.jsonl`` -> lhotse supervision or cut manifest;
``*.trans.txt`` or ``text`` -> ``utt_id TEXT`` lines; anything else -> one sentence per line.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from asr.tokenizers.base import BPE_MODEL_FILE, TOKENS_FILE
from asr.tokenizers.bpe import train_bpe
from asr.tokenizers.char import build_char_tokenizer
from asr.tokenizers.transcripts import read_transcripts

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transcripts", nargs="+", required=True, metavar="F",
        help="LibriSpeech dirs / *.trans.txt, Kaldi 'text', lhotse *.jsonl.gz, or plain text files",
    )
    parser.add_argument("--output-dir", required=True, help="where bpe.model / tokens.txt go")
    parser.add_argument("--vocab-size", type=int, default=500,
                        help="BPE vocabulary size incl. <blk>, <sos/eos>, <unk> ")
    parser.add_argument("--kind", choices=("bpe", "char"), default="bpe", help="tokenizer kind")
    parser.add_argument("--force", action="store_true", help="retrain even if the model exists")


def run(args: argparse.Namespace) -> int:
    """Train (or keep the existing) tokenizer; errors are reported without a traceback (exit 2)."""
    output_dir = Path(args.output_dir)
    try:
        if args.kind == "char":
            if (output_dir / TOKENS_FILE).is_file() and not args.force:
                logger.info("%s exists, skipping (use --force to rebuild)", output_dir / TOKENS_FILE)
                return 0
            if (output_dir / BPE_MODEL_FILE).is_file():
                raise ValueError(f"{output_dir} holds a BPE model; use another --output-dir")
            tokenizer = build_char_tokenizer(read_transcripts(args.transcripts))
            tokenizer.save(output_dir)
        else:
            if (output_dir / BPE_MODEL_FILE).is_file() and not args.force:
                texts: list[str] = []  # train_bpe loads and checks the existing model
            else:
                texts = read_transcripts(args.transcripts)
            tokenizer = train_bpe(texts, output_dir, args.vocab_size, force=args.force)
    except (OSError, ValueError) as err:
        logger.error("asr bpe: %s", err)
        return 2
    logger.info("%s tokenizer with vocab_size %d in %s", args.kind, tokenizer.vocab_size, output_dir)
    return 0
