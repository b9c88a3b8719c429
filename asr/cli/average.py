"""``asr average``: average checkpoints of an experiment into one safetensors weights file.

Examples::

    asr average --exp-dir exp/transducer --epoch 30 --avg 9          # epoch-22.pt .. epoch-30.pt
    asr average --exp-dir exp/transducer --epoch 30 --avg 9 --use-averaged-model
    asr average --exp-dir exp/transducer --last 5                    # newest 5 checkpoint-N.pt

``--use-averaged-model`` uses the running parameter averages stored in ``epoch-30.pt`` and
``epoch-21.pt`` to average the model over every sampled training step of epochs 22..30 (icefall's
method) instead of only the 9 end-of-epoch snapshots. The output (default
``<exp-dir>/averaged-<tag>.safetensors``) carries the experiment's resolved config as metadata.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "average the weights of several checkpoints into a safetensors file"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser)
    parser.add_argument("--output", type=Path, default=None,
                        help="weights file (default: <exp-dir>/averaged-<tag>.safetensors)")


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that choose model weights in an experiment directory (shared with ``asr decode``)."""
    parser.add_argument("--exp-dir", type=Path, required=True, help="experiment directory")
    parser.add_argument("--epoch", type=int, default=None, help="last epoch to use (epoch-N.pt)")
    parser.add_argument("--avg", type=int, default=1, help="number of epochs averaged (with --epoch)")
    parser.add_argument("--use-averaged-model", action="store_true",
                        help="with --epoch/--avg: average the running averages over all steps")
    parser.add_argument("--last", type=int, default=None,
                        help="average the newest N step checkpoints (checkpoint-N.pt)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="one checkpoint (.pt) or weights file (.safetensors) instead")


def selection_from_args(args: argparse.Namespace):
    """The :class:`asr.experiment.WeightSelection` described by the checkpoint options."""
    from asr.experiment import WeightSelection

    return WeightSelection(epoch=args.epoch, avg=args.avg, last=args.last,
                           checkpoint=args.checkpoint, use_averaged_model=args.use_averaged_model)


def run(args: argparse.Namespace) -> int:
    from asr.experiment import load_weights_for, save_experiment_weights

    try:
        selection = selection_from_args(args)
        if selection.is_default():
            raise ValueError("give --epoch E [--avg N], --last N or --checkpoint F")
        state_dict, tag = load_weights_for(args.exp_dir, selection)
        output = args.output or args.exp_dir / f"averaged-{tag}.safetensors"
        save_experiment_weights(args.exp_dir, state_dict, output, tag)
    except (FileNotFoundError, ValueError) as err:
        logger.error("asr average: %s", err)
        return 2
    logger.info("wrote %s (%s)", output, tag)
    print(output)
    return 0
