"""``asr export-package --exp-dir DIR --output-dir PKG``: write a model package from an experiment.

The package (see :mod:`asr.package`) holds ``config.yaml``, the tokenizer, ``model.safetensors``
(the chosen, possibly averaged, weights), the LM its search fuses and ``metadata.json``;
``asr transcribe --model PKG``, ``asr serve`` and ``asr.load_model`` use it. The weights are
chosen as in ``asr average`` and ``asr decode`` (``--epoch E --avg N [--use-averaged-model]``,
``--last N``, ``--val-best N``, ``--checkpoint F``; default: the newest ``checkpoint-N.pt``).

The package decodes by default as the recipe tuned it: ``--searcher beam`` (or a name) and
``--set search.beam_size=8 search.lm_path=lm.arpa search.lm_weight=0.5 ...``, as given to
``asr decode``; ``--wer test-clean=22.58`` records what that search scored. Example::

    asr export-package --exp-dir exp/transducer --last 2 --output-dir exp/transducer/package \
        --searcher beam --set search.beam_size=8 search.lm_path=data/lang/token_6gram.arpa \
        search.lm_weight=0.5 search.blank_penalty=3 --wer test-clean=22.58

A bad option or input (missing or corrupt checkpoints, config, tokenizer or LM, a searcher or
search option the model cannot use, an output in the way or being written by another run)
exits with 2; a failure while writing, with 1. The checkpoints a selection names are found
before the output's lock is taken, as in ``asr average``: a missing one is reported even while
another run writes the output, and leaves nothing behind.
"""

from __future__ import annotations

import argparse
import logging
import math

from asr.cli.options import add_checkpoint_arguments, add_search_arguments, selection_from_args
from asr.constants import OldName, add_overwrite_argument
from asr.package import PackageError, export_package

logger = logging.getLogger(__name__)


def _wer(text: str) -> tuple[str, float]:
    """``NAME=PERCENT`` -> (name, percent); a missing ``=``, an empty (or blank) name or a
    percent that is no number, not finite (``nan``, ``inf``: metadata.json would hold tokens
    that are not JSON) or negative is refused, naming the option (argparse's exit 2). A WER
    above 100 is one (insertions)."""
    name, sep, value = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        percent = float(value)
        if not 0.0 <= percent < math.inf:
            raise ValueError
        return name, percent
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--wer expects NAME=PERCENT with a set name and a finite percent >= 0, got "
            f"{text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser)
    # required, as every required option (its hidden old name --out meets it: OldName)
    parser.add_argument("--output-dir", metavar="PKG", required=True,
                        help="package directory to create (required)")
    parser.add_argument("--out", dest="output_dir", action=OldName, new="--output-dir")
    parser.add_argument("--tokenizer-dir", help="tokenizer to package (default: the config's)")
    add_search_arguments(parser, "the greedy searcher of the model's first trained head (loss "
                                 "weight > 0)",
                         "the experiment's search section; the LM of search.lm_path and the "
                         "phrases of search.hotwords_file are copied into the package")
    parser.add_argument("--wer", type=_wer, action="append", default=[], metavar="NAME=PERCENT",
                        help="record the WER of the package's search on a test set, e.g. "
                             "test-clean=22.58; repeatable, once per set (default: the last dev "
                             "WER of training)")
    add_overwrite_argument(parser, "replace an earlier package in --output-dir (never the "
                                   "experiment or another directory)")


def run(args: argparse.Namespace) -> int:
    names = [name for name, _ in args.wer]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # dict() would keep the last value without a word
        logger.error("asr export-package: --wer gives %s more than once; give each set once",
                     ", ".join(repeated))
        return 2
    try:
        selection = selection_from_args(args)
    except ValueError as err:
        logger.error("asr export-package: %s", err)
        return 2
    try:
        metadata = export_package(
            args.exp_dir, args.output_dir, selection, tokenizer_dir=args.tokenizer_dir,
            wer=dict(args.wer) if args.wer else None, overwrite=args.overwrite,
            searcher=args.searcher, search=args.search_overrides,
        )
    except PackageError as err:  # a bad input or option, as in asr decode and asr transcribe
        logger.error("asr export-package: %s", err)
        return 2
    print(f"{args.output_dir}: {metadata.num_parameters} parameters, searcher {metadata.searcher}, "
          f"streaming {str(metadata.streaming).lower()}, from {', '.join(metadata.checkpoints)}")
    return 0
