"""``asr export-package --exp-dir DIR --out PKG``: write a model package from an experiment.

The package (see :mod:`asr.package`) holds ``config.yaml``, the tokenizer, ``model.safetensors``
(the chosen, possibly averaged, weights) and ``metadata.json``; ``asr transcribe --model PKG`` and
``asr serve`` use it. The weights are chosen as in ``asr average`` and ``asr decode``
(``--epoch E --avg N [--use-averaged-model]``, ``--last N``, ``--checkpoint F``; default: the
newest ``checkpoint-N.pt``).
"""

from __future__ import annotations

import argparse
import logging

from asr.cli.options import add_checkpoint_arguments, selection_from_args
from asr.package import PackageError, export_package

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
    add_checkpoint_arguments(parser)
    parser.add_argument("--out", required=True, help="package directory to create")
    parser.add_argument("--tokenizer-dir", help="tokenizer to package (default: the config's)")
    parser.add_argument("--wer", type=_wer, action="append", default=[], metavar="NAME=PERCENT",
                        help="record a known WER in the metadata (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing package")


def run(args: argparse.Namespace) -> int:
    try:
        selection = selection_from_args(args)
    except ValueError as err:
        logger.error("asr export-package: %s", err)
        return 2
    try:
        metadata = export_package(
            args.exp_dir, args.out, selection, tokenizer_dir=args.tokenizer_dir,
            wer=dict(args.wer) if args.wer else None, overwrite=args.overwrite,
        )
    except PackageError as err:
        logger.error("asr export-package: %s", err)
        return 1
    print(f"{args.out}: {metadata.num_parameters} parameters, searcher {metadata.searcher}, "
          f"streaming {str(metadata.streaming).lower()}, from {', '.join(metadata.checkpoints)}")
    return 0
