"""``asr synthesize``: write a synthetic LibriSpeech-layout corpus (see
:mod:`asr.synth.synthesize`)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from asr.constants import add_overwrite_argument
from asr.fileio import check_writable_dir
from asr.synth.parts import PARTS
from asr.synth.synthesize import PRESETS, TRAIN_TEXTS, synthesize_biasing_set, synthesize_corpus

logger = logging.getLogger(__name__)

def _parse_sizes(items: Sequence[str]) -> dict[str, int]:
    sizes = {}
    for item in items:
        part, sep, count = item.partition("=")
        if not sep or not count.strip().isdigit():
            raise ValueError(f"--num-utts expects PART=N with N a positive integer, got {item!r}")
        if part.strip() in sizes:
            raise ValueError(f"--num-utts names part {part.strip()!r} twice")
        sizes[part.strip()] = int(count)
    return sizes




def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``asr synthesize``."""
    parser.add_argument(
        "--root", type=Path, required=True, help="output dir; writes ROOT/LibriSpeech"
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="mini_tts",
        help="default sizes and vocabulary limit (default: mini_tts = train-clean-5=15000 "
        "dev-clean-2=100 test-clean=100, top 1500 words, training segments)",
    )  # fmt: skip
    parser.add_argument(
        "--num-utts", nargs="+", metavar="PART=N",
        help=f"utterances per part, replacing the preset's sizes; parts: {', '.join(PARTS)} "
             "(default: the preset's sizes)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    parser.add_argument(
        "--num-jobs", type=int, default=os.cpu_count() or 1,
        help="worker processes (default: all CPU cores)",
    )  # fmt: skip
    parser.add_argument(
        "--top-words", type=int, default=None,
        help="keep sentences made of the N most frequent words; 0 = no limit (default: preset)",
    )  # fmt: skip
    parser.add_argument("--min-words", type=int, default=4, help="shortest sentence")
    parser.add_argument("--max-words", type=int, default=16, help="longest sentence")
    parser.add_argument(
        "--text", type=Path, nargs="+", default=None,
        help="sentence source text files (default: Debian fortunes package files)",
    )  # fmt: skip
    parser.add_argument(
        "--voices-per-sentence", type=int, default=None,
        help="training parts speak each sentence this many times in different voices "
        "(default: preset)",
    )  # fmt: skip
    parser.add_argument(
        "--train-text", choices=TRAIN_TEXTS, default=None,
        help="what training parts say: whole pool sentences, or word-run segments of every "
        "source sentence (default: preset)",
    )  # fmt: skip
    parser.add_argument(
        "--held-out-sentences", type=int, default=1000,
        help="with --train-text segments: the pool sentences reserved for dev/test parts, "
        "which no training segment contains (default: 1000)",
    )  # fmt: skip
    parser.add_argument(
        "--biasing", type=int, metavar="N", default=0,
        help="instead of the corpus: synthesize its contextual-biasing set, dev-biasing and "
        "test-biasing of N utterances each plus phrase lists (asr/synth/biasing.py), of the "
        "corpus's sentence sources; needs the corpus (its training text) first",
    )  # fmt: skip
    add_overwrite_argument(parser, "replace an existing synthesis")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Synthesize the corpus; configuration errors are reported without a traceback (exit 2)."""
    try:
        check_writable_dir(args.root, "--root")
        return _synthesize(args)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        logger.error("asr synthesize: %s", err)
        return 2


def _synthesize(args: argparse.Namespace) -> int:
    """Runs the synthesis for parsed arguments; prints a per-part summary."""
    if args.biasing < 0:
        raise ValueError(f"--biasing N needs N >= 1 (0: the corpus itself), got {args.biasing}")
    if args.biasing:
        if args.text:
            raise ValueError("--biasing takes its sentences from the corpus's own sources (its "
                             "synthesis.json); --text is an option of the corpus synthesis")
        result = synthesize_biasing_set(
            args.root, args.biasing, seed=args.seed, num_jobs=args.num_jobs,
            progress=not args.no_progress,
        )  # fmt: skip
        for part in sorted(result.num_utts):
            print(f"{part}\t{result.num_utts[part]} utterances\t{result.hours[part]:.3f} h")
        return 0
    preset = PRESETS[args.preset]
    sizes = _parse_sizes(args.num_utts) if args.num_utts else dict(preset.num_utts)
    top_words = preset.top_words if args.top_words is None else (args.top_words or None)
    repeats = args.voices_per_sentence
    if repeats is None:
        repeats = preset.voices_per_sentence
    train_text = args.train_text or preset.train_text
    result = synthesize_corpus(
        args.root,
        sizes,
        seed=args.seed,
        num_jobs=args.num_jobs,
        top_words=top_words,
        min_words=args.min_words,
        max_words=args.max_words,
        sources=args.text,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        voices_per_sentence=repeats,
        train_text=train_text,
        held_out_sentences=args.held_out_sentences,
    )
    for part in sorted(result.num_utts):
        print(f"{part}\t{result.num_utts[part]} utterances\t{result.hours[part]:.3f} h")
    if result.synthesized:
        print(f"{result.synthesized} utterances in {result.elapsed_s:.1f} s "
              f"({result.utts_per_second:.2f} utt/s) -> {result.corpus_dir}")  # fmt: skip
    return 0
