"""``asr average``: average checkpoints of an experiment into one safetensors weights file.

Examples::

    asr average --exp-dir exp/transducer --epoch 30 --avg 9          # epoch-22.pt .. epoch-30.pt
    asr average --exp-dir exp/transducer --epoch 30 --avg 9 --use-averaged-model
    asr average --exp-dir exp/transducer --last 5                    # newest 5 checkpoint-N.pt
    asr average --exp-dir exp/ctc_aed --val-best 5     # 5 epochs of lowest validation loss

``--use-averaged-model`` uses the running parameter averages stored in ``epoch-30.pt`` and
``epoch-21.pt`` to average the model over every sampled training step of epochs 22..30 (icefall's
method) instead of only the 9 end-of-epoch snapshots. The output (default
``<exp-dir>/averaged-<tag>.safetensors``) carries the experiment's resolved config as metadata.
It is written atomically by one run at a time: a second run on the same output is refused
(exit 2, naming it; :func:`asr.fileio.output_lock`) before it reads any checkpoint (the default
output's name comes from the selected checkpoints' file names, found by listing
:func:`asr.checkpoints.selection.plan_weights`). A training that still runs may prune a chosen
checkpoint before it is read: the selection is then planned (and its output locked) again,
naming the newer checkpoints (:func:`asr.checkpoints.selection.use_planned_weights`, as ``asr
decode`` does). A selection naming a missing checkpoint is
reported before a busy output, also with ``--output``: it is a mistake in the command that no
wait mends, while the busy output goes when the other run ends, so a user fixes the command
now rather than wait for the other run to learn of it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from asr.checkpoints.io import CheckpointError
from asr.checkpoints.selection import PlannedWeights, read_weights, use_planned_weights
from asr.cli.options import add_checkpoint_arguments, selection_from_args
from asr.experiment import save_experiment_weights
from asr.fileio import OutputBusyError, check_writable_file, output_lock

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser, newest_by_default=False)
    parser.add_argument("--output", type=Path, default=None,
                        help="weights file (default: <exp-dir>/averaged-<tag>.safetensors)")


def run(args: argparse.Namespace) -> int:
    def average(plan: PlannedWeights) -> tuple[Path, str]:
        """Averages ``plan`` into its output under the output's lock (each plan its own)."""
        output = args.output
        if output is None:
            output = args.exp_dir / f"averaged-{plan.tag}.safetensors"
        else:
            check_writable_file(output, "--output")
        with output_lock(output):  # before any checkpoint is read
            weights = read_weights(plan)
            save_experiment_weights(args.exp_dir, weights.state_dict, output, weights.tag)
        return output, weights.tag

    try:
        selection = selection_from_args(args)
        if selection.is_default():
            raise ValueError("give --epoch E [--avg N], --last N, --val-best N or --checkpoint F")
        # plans from the listing before the lock, again if training pruned a chosen file
        output, tag = use_planned_weights(args.exp_dir, selection, average)
    except (FileNotFoundError, ValueError, CheckpointError, OutputBusyError) as err:
        logger.error("asr average: %s", err)
        return 2
    logger.info("wrote %s (%s)", output, tag)
    print(output)
    return 0
