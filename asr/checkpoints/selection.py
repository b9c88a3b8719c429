"""Which weights of an experiment directory to use, and reading them: the one place that chooses.

``asr average``, ``asr decode`` and ``asr export-package`` take the same options (icefall's):

* ``--checkpoint F``: one training checkpoint (``.pt``) or weights file (``.safetensors``);
* ``--epoch E --avg N``: the average of ``epoch-(E-N+1).pt .. epoch-E.pt``, or with
  ``--use-averaged-model`` the running average over every sampled step of those epochs;
* ``--last N``: the average of the newest ``N`` step checkpoints ``checkpoint-K.pt``;
* ``--val-best N``: the average of the ``N`` epoch checkpoints of lowest validation loss
  (WeNet's ``average_model.py --val_best``), the losses the trainer recorded at each epoch's
  end;
* nothing: the newest ``checkpoint-K.pt`` (every epoch end writes one, so it is at least as
  new as the newest ``epoch-E.pt``).

Choosing is two steps: :func:`plan_weights` finds the files and the tag that names them from the
directory listing alone, reading no checkpoint but, for ``--val-best``, the validation loss each
``epoch-N.pt`` records for its epoch (its plain fields only; so ``asr average`` can lock the output
that the tag names before it reads any weights), and :func:`read_weights` reads (and averages)
them; :func:`select_weights` does both. A training that still runs prunes its step checkpoints to
``train.keep_last`` meanwhile, and may delete one that ``--last N`` (or the newest) chose between
the listing and its reading: :func:`use_planned_weights` (which :func:`select_weights`, ``asr
average`` and ``asr export-package`` read through) then chooses again from a new listing (at most
:data:`SELECT_ATTEMPTS` times), which names the newer checkpoints that replaced it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from asr.checkpoints.averaging import (
    average_state_dicts,
    averaged_model_between,
    averaged_model_checkpoints,
    best_valid_epoch_checkpoints,
    epoch_checkpoints,
    last_step_checkpoints,
)
from asr.checkpoints.io import (
    CheckpointError,
    latest_checkpoint,
    read_model_weights,
)

__all__ = [
    "SELECT_ATTEMPTS",
    "PlannedWeights",
    "SelectedWeights",
    "WeightSelection",
    "plan_weights",
    "read_weights",
    "select_weights",
    "use_planned_weights",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How often :func:`select_weights` lists and reads when the checkpoints it chose vanish before
#: they are read (a running training's ``keep_last`` pruning, module docstring).
SELECT_ATTEMPTS = 3


@dataclass(frozen=True)
class WeightSelection:
    """Which weights of an experiment directory to use (at most one way; see the module doc).

    Raises:
        ValueError: on construction, for an inconsistent combination.
    """

    epoch: int | None = None
    avg: int = 1
    last: int | None = None
    checkpoint: Path | None = None
    use_averaged_model: bool = False
    val_best: int | None = None

    def __post_init__(self) -> None:
        ways = sum(x is not None for x in (self.epoch, self.last, self.checkpoint, self.val_best))
        if ways > 1:
            raise ValueError("choose one of --epoch/--avg, --last, --val-best and --checkpoint")
        if self.use_averaged_model and self.epoch is None:
            raise ValueError("--use-averaged-model needs --epoch (and --avg)")
        if self.avg != 1 and self.epoch is None:
            raise ValueError("--avg needs --epoch")
        for flag, value in (("--avg", self.avg), ("--last", self.last), ("--epoch", self.epoch),
                            ("--val-best", self.val_best)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        if self.epoch is not None and self.avg > self.epoch:  # epoch-1.pt is the first one
            raise ValueError(
                f"--avg {self.avg} is more than --epoch {self.epoch}: it would average epochs "
                f"{self.epoch - self.avg + 1}..{self.epoch}, and training writes epoch-1.pt "
                f"first; give --avg {self.epoch} or less (or a later --epoch)")

    def is_default(self) -> bool:
        """Whether no way was chosen (the newest step checkpoint)."""
        return (self.epoch is None and self.last is None and self.checkpoint is None
                and self.val_best is None)


@dataclass(frozen=True)
class SelectedWeights:
    """Weights chosen by a :class:`WeightSelection`.

    Attributes:
        state_dict: model weights (averages in their checkpoints' dtype).
        tag: names the selection, e.g. ``epoch-8-avg-3`` or ``checkpoint-4500``.
        sources: the files the weights come from, oldest first.
        checkpoint: the newest source's whole training checkpoint (progress, ``extra`` config);
            empty for a ``.safetensors`` file.
    """

    state_dict: dict[str, torch.Tensor]
    tag: str
    sources: tuple[Path, ...]
    checkpoint: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedWeights:
    """The files a :class:`WeightSelection` names in an experiment directory (none read yet).

    Attributes:
        exp_dir: the experiment directory.
        selection: the selection planned.
        tag: names the selection, e.g. ``epoch-8-avg-3``, ``val-best-3-epochs-5-7-8`` or
            ``checkpoint-4500``.
        sources: the files the weights come from, oldest first (for ``--use-averaged-model``
            the end epoch's checkpoint, whose running average is used).
    """

    exp_dir: Path
    selection: WeightSelection
    tag: str
    sources: tuple[Path, ...]


def plan_weights(exp_dir: str | Path, selection: WeightSelection) -> PlannedWeights:
    """The files ``selection`` names in ``exp_dir`` and their tag, from the listing alone.

    Raises:
        FileNotFoundError: naming missing checkpoints (for ``--use-averaged-model`` both epoch
            checkpoints whose running averages it reads).
        ValueError: for ``--use-averaged-model`` with ``--avg`` above ``--epoch``; for
            ``--val-best N`` when fewer than N epochs have a checkpoint and a validation loss.
        asr.checkpoints.io.CheckpointError: for ``--val-best``, naming an epoch checkpoint
            that cannot be read or is not the checkpoint of its epoch's end.
    """
    exp_dir = Path(exp_dir)
    if selection.checkpoint is not None:
        path = Path(selection.checkpoint)
        if path.is_dir():
            raise FileNotFoundError(f"checkpoint {path} is a directory; give a .pt or "
                                    ".safetensors file")
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return PlannedWeights(exp_dir, selection, path.stem, (path,))
    if selection.epoch is not None:
        epoch, avg = selection.epoch, selection.avg
        if selection.use_averaged_model:
            # both epochs it reads must be there: a missing one is named now, not taken for
            # one a running training deleted (use_planned_weights would choose again)
            end = averaged_model_checkpoints(exp_dir, epoch, avg)[-1]
            return PlannedWeights(exp_dir, selection,
                                  f"epoch-{epoch}-avg-{avg}-use-averaged-model", (end,))
        return PlannedWeights(exp_dir, selection, f"epoch-{epoch}-avg-{avg}",
                              tuple(epoch_checkpoints(exp_dir, epoch, avg)))
    if selection.val_best is not None:
        best = best_valid_epoch_checkpoints(exp_dir, selection.val_best)
        logger.info("--val-best %d: epochs %s (validation losses %s)", selection.val_best,
                    ", ".join(str(e) for e, _, _ in best),
                    ", ".join(f"{loss:.4f}" for _, loss, _ in best))
        epochs = "-".join(str(e) for e, _, _ in best)
        return PlannedWeights(exp_dir, selection, f"val-best-{selection.val_best}-epochs-{epochs}",
                              tuple(path for _, _, path in best))
    if selection.last is not None:
        paths = last_step_checkpoints(exp_dir, selection.last)
        return PlannedWeights(exp_dir, selection, f"last-{selection.last}-{paths[-1].stem}",
                              tuple(paths))
    path = latest_checkpoint(exp_dir)
    if path is None:
        raise FileNotFoundError(f"{exp_dir} holds no checkpoint-N.pt")
    return PlannedWeights(exp_dir, selection, path.stem, (path,))


def read_weights(plan: PlannedWeights) -> SelectedWeights:
    """Reads (and averages) the weights of ``plan``.

    Raises:
        ValueError: when ``--use-averaged-model`` finds no running average to use, or averaged
            checkpoints do not fit together.
        asr.checkpoints.io.CheckpointError: naming a file that is missing, corrupt or not a
            checkpoint.
    """
    selection = plan.selection
    if selection.use_averaged_model:
        assert selection.epoch is not None  # WeightSelection checks it
        weights, checkpoint = averaged_model_between(plan.exp_dir, selection.epoch, selection.avg)
        return SelectedWeights(weights, plan.tag, plan.sources, checkpoint)
    loaded = [read_model_weights(p) for p in plan.sources]
    state_dict = loaded[0][0] if len(loaded) == 1 else average_state_dicts(
        [sd for sd, _ in loaded], [str(p) for p in plan.sources])
    return SelectedWeights(state_dict, plan.tag, plan.sources, loaded[-1][1])


def use_planned_weights(exp_dir: str | Path, selection: WeightSelection,
                        use: Callable[[PlannedWeights], T]) -> T:
    """``use`` of the :func:`plan_weights` of ``selection``, planned again and used again when
    a chosen file vanished before ``use`` read it (a running training's ``keep_last`` pruning;
    module docstring), up to :data:`SELECT_ATTEMPTS` times in all. ``use`` reads the plan with
    :func:`read_weights` and lets its :class:`~asr.checkpoints.io.CheckpointError` pass; what it
    does around the reading (``asr average`` locks the output the tag names) is done again for
    each plan.

    Raises:
        FileNotFoundError: naming missing checkpoints.
        asr.checkpoints.io.CheckpointError: what ``use`` raised, or for the last file that
            vanished after :data:`SELECT_ATTEMPTS` choices, saying so.
    """
    for attempt in range(1, SELECT_ATTEMPTS + 1):
        plan = plan_weights(exp_dir, selection)
        try:
            return use(plan)
        except CheckpointError as err:
            vanished = [path for path in plan.sources if not path.exists()]
            if not vanished:
                raise
            if attempt == SELECT_ATTEMPTS:
                raise CheckpointError(
                    f"{err}: the checkpoints chosen in {exp_dir} were deleted before they were "
                    f"read, {SELECT_ATTEMPTS} times (a training that still runs there prunes "
                    "them to train.keep_last): choose ones it keeps, or wait for it to end"
                ) from err
            logger.info("%s was deleted after it was chosen (a running training's keep_last "
                        "pruning?): choosing again", vanished[0])
    raise AssertionError("unreachable")


def select_weights(exp_dir: str | Path, selection: WeightSelection) -> SelectedWeights:
    """Reads (and averages) the weights ``selection`` names in ``exp_dir``: :func:`read_weights`
    of :func:`plan_weights`, planned again when a chosen file vanished before it was read
    (:func:`use_planned_weights`).

    Raises:
        FileNotFoundError: naming missing checkpoints.
        ValueError: when ``--use-averaged-model`` finds no running average to use.
        asr.checkpoints.io.CheckpointError: naming a file that is corrupt or not a checkpoint,
            or the last one that vanished after :data:`SELECT_ATTEMPTS` choices.
    """
    return use_planned_weights(exp_dir, selection, read_weights)
