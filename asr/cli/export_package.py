"""``asr export-package --exp-dir DIR --out PKG``: write a model package from an experiment.

The package (see :mod:`asr.package`) holds ``config.yaml``, the tokenizer, ``model.safetensors``
(averaged weights) and ``metadata.json``; ``asr transcribe --model PKG`` and ``asr serve`` use it.
"""

from __future__ import annotations

import argparse
import logging

HELP = "write a model package (config, tokenizer, safetensors weights, metadata) from an experiment"

logger = logging.getLogger(__name__)


def _wer(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--wer expects NAME=PERCENT, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exp-dir", required=True, help="experiment directory written by asr train")
    parser.add_argument("--out", required=True, help="package directory to create")
    parser.add_argument("--epoch", type=int, help="last epoch to use (default: the newest)")
    parser.add_argument("--avg", type=int, default=1,
                        help="average the checkpoints of this many epochs ending at --epoch")
    parser.add_argument("--checkpoint", help="use this one checkpoint (.pt or .safetensors) instead")
    parser.add_argument("--tokenizer-dir", help="tokenizer to package (default: the config's)")
    parser.add_argument("--wer", type=_wer, action="append", default=[], metavar="NAME=PERCENT",
                        help="record a known WER in the metadata (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing package")


def run(args: argparse.Namespace) -> int:
    from asr.package import PackageError, export_package

    if args.checkpoint and (args.epoch is not None or args.avg != 1):
        logger.error("asr export-package: --checkpoint excludes --epoch/--avg")
        return 2
    try:
        metadata = export_package(
            args.exp_dir, args.out, epoch=args.epoch, avg=args.avg, checkpoint=args.checkpoint,
            tokenizer_dir=args.tokenizer_dir, wer=dict(args.wer) if args.wer else None,
            overwrite=args.overwrite,
        )
    except PackageError as err:
        logger.error("asr export-package: %s", err)
        return 1
    print(f"{args.out}: {metadata.num_parameters} parameters, searcher {metadata.searcher}, "
          f"streaming {str(metadata.streaming).lower()}, from {', '.join(metadata.checkpoints)}")
    return 0
