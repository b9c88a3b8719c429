"""``asr prepare``: LibriSpeech-layout corpus -> lhotse manifests -> stored fbank features.

Examples::

    asr prepare manifests --corpus-dir download/LibriSpeech --output-dir data/manifests \\
        --parts train-clean-5 dev-clean-2
    asr prepare fbank --manifest-dir data/manifests --output-dir data/fbank \\
        --parts train-clean-5 dev-clean-2 --speed-perturb

``prepare fbank`` makes each part by one run at a time: a second run on a part that another is
making is refused (exit 2, naming the part's manifest), and a part is replaced only once its new
features are complete (:func:`asr.data.fbank.compute_fbank_for_parts`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from asr.cli.options import part_name
from asr.constants import add_overwrite_argument
from asr.data.fbank import compute_fbank_for_parts
from asr.data.librispeech import prepare_manifests, write_shuffled_cuts
from asr.features.fbank import FbankConfig
from asr.fileio import OutputBusyError, check_writable_dir, check_writable_file

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="prepare_command", metavar="STEP", required=True)

    man = sub.add_parser("manifests", help="validate the corpus (decoding every flac once) and "
                                           "write recordings/supervisions/cuts",
                         formatter_class=parser.formatter_class)
    man.add_argument("--corpus-dir", type=Path, required=True,
                     help="directory containing the part directories (e.g. download/LibriSpeech)")
    man.add_argument("--output-dir", type=Path, default=Path("data/manifests"),
                     help="where the manifests go")
    man.add_argument("--parts", nargs="+", required=True, type=part_name,
                     help="part directory names")
    man.add_argument("--num-jobs", type=int, default=1,
                     help="parallel processes (threads for decoding the flacs)")
    man.add_argument("--normalize-text", choices=("none", "lower"), default="none",
                     help="transcript normalization")
    man.set_defaults(_prepare=_run_manifests)

    fb = sub.add_parser("fbank", help="compute and store 80-bin fbank features (lilcom)",
                        formatter_class=parser.formatter_class)
    fb.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"),
                    help="where the manifests of asr prepare manifests are")
    fb.add_argument("--output-dir", type=Path, default=Path("data/fbank"),
                    help="where the features and cut manifests with features go")
    fb.add_argument("--parts", nargs="+", required=True, type=part_name, help="part names")
    fb.add_argument("--speed-perturb", action="store_true",
                    help="add 0.9/1.1 speed-perturbed copies of the parts whose name starts "
                         "with 'train' (see --perturb-parts)")
    fb.add_argument("--perturb-parts", nargs="+", default=None,
                    help="with --speed-perturb: exactly which parts to perturb (default: the "
                         "parts whose name starts with 'train')")
    fb.add_argument("--num-jobs", type=int, default=1, help="parallel processes")
    fb.add_argument("--num-mel-bins", type=int, default=80, help="mel bins per frame")
    add_overwrite_argument(fb, "recompute existing outputs")
    fb.set_defaults(_prepare=_run_fbank)

    sh = sub.add_parser("shuffle", help="write the cuts of several manifests in one random order "
                                        "(a globally shuffled training manifest)")
    sh.add_argument("--cuts", type=Path, nargs="+", required=True,
                    help="cut manifests; one listed twice is oversampled (its cuts are written "
                         "twice, and training names each repeat <id>_repeat<k>, with its own "
                         "augmentation)")
    sh.add_argument("--output", type=Path, required=True,
                    help="the shuffled manifest to write (gzip-compressed when it ends in .gz)")
    sh.add_argument("--seed", type=int, default=42, help="shuffle seed (default: 42)")
    sh.set_defaults(_prepare=_run_shuffle)


def _run_manifests(args: argparse.Namespace) -> int:
    check_writable_dir(args.output_dir, "--output-dir")
    paths = prepare_manifests(args.corpus_dir, args.output_dir, args.parts,
                              num_jobs=args.num_jobs, normalize_text=args.normalize_text)
    for part, path in paths.items():
        print(f"{part}\t{path}")
    return 0


def _run_fbank(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # parallelism comes from --num-jobs processes
    perturb: list[str] = []
    if args.speed_perturb:
        perturb = args.perturb_parts or [p for p in args.parts if p.startswith("train")]
        if not perturb:
            logger.warning("--speed-perturb: no part name starts with 'train'; nothing perturbed")
    elif args.perturb_parts:
        raise ValueError("--perturb-parts needs --speed-perturb")
    check_writable_dir(args.output_dir, "--output-dir")
    paths = compute_fbank_for_parts(
        args.manifest_dir,
        args.output_dir,
        args.parts,
        perturb_parts=perturb,
        cfg=FbankConfig(num_mel_bins=args.num_mel_bins),
        num_jobs=args.num_jobs,
        overwrite=args.overwrite,
    )
    for part, path in paths.items():
        print(f"{part}\t{path}")
    return 0


def _run_shuffle(args: argparse.Namespace) -> int:
    check_writable_file(args.output, "--output")
    count = write_shuffled_cuts(args.cuts, args.output, args.seed)
    print(f"{args.output}\t{count} cuts")
    return 0


def run(args: argparse.Namespace) -> int:
    """Runs the chosen step: a bad option, a bad corpus or a missing or malformed input (each
    named) exits with 2, as in the other commands, and so does an output another run is making;
    a failure of the work itself with 1."""
    try:
        if getattr(args, "num_jobs", 1) < 1:
            raise ValueError(f"--num-jobs must be >= 1, got {args.num_jobs}")
        return args._prepare(args)
    # CorpusError and DataError are ValueErrors
    except (FileNotFoundError, ValueError, OutputBusyError) as err:
        logger.error("asr prepare: %s", err)
        return 2
