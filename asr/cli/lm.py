"""``asr lm``: train a token n-gram LM (interpolated modified Kneser-Ney) and write it as ARPA.

The transcripts are tokenized with the model's tokenizer, so the LM's words are token ids, the
form ``search.lm_path`` expects (shallow fusion in ``transducer_beam``, ``tdt_beam``,
``ctc_prefix_beam`` and ``cif_beam``).
Transcript formats as for ``asr bpe``. Pass each transcript once: a cut manifest with speed
perturbation repeats every sentence per speed (use the LibriSpeech directory instead).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "train a token n-gram LM (modified Kneser-Ney, ARPA) for shallow fusion"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transcripts", nargs="+", required=True, metavar="F",
        help="LibriSpeech dirs / *.trans.txt, Kaldi 'text', lhotse *.jsonl.gz, or plain text files",
    )  # fmt: skip
    parser.add_argument("--tokenizer-dir", required=True, help="directory of the tokenizer")
    parser.add_argument("--order", type=int, default=4, help="n-gram order (default 4)")
    parser.add_argument("--output", required=True, help="ARPA file to write")
    parser.add_argument("--force", action="store_true", help="retrain even if the output exists")


def run(args: argparse.Namespace) -> int:
    """Train and write the LM; errors are reported without a traceback (exit 2)."""
    from asr.decoding.ngram_train import estimate_kneser_ney, write_arpa
    from asr.tokenizers.base import load_tokenizer
    from asr.tokenizers.transcripts import read_transcripts

    output = Path(args.output)
    if output.is_file() and not args.force:
        logger.info("%s exists, skipping (use --force to retrain)", output)
        return 0
    try:
        tokenizer = load_tokenizer(args.tokenizer_dir)
        sentences = [tokenizer.encode(text) for text in read_transcripts(args.transcripts)]
        empty = sum(1 for s in sentences if not s)
        if empty:
            logger.warning("%d transcripts encode to no tokens and are skipped", empty)
        vocab = [i for i in range(tokenizer.vocab_size) if i != tokenizer.blank_id]
        estimate = estimate_kneser_ney([s for s in sentences if s], args.order, vocab)
        write_arpa(estimate, output)
    except (OSError, ValueError) as err:
        logger.error("asr lm: %s", err)
        return 2
    logger.info("wrote a %d-gram token LM to %s", args.order, output)
    return 0
