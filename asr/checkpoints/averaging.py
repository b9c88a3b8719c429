"""Model averaging: offline averaging of saved checkpoints and a running average during training.

Averaging the weights of the last few checkpoints (or a running average over the whole run) is a
cheap and reliable WER improvement for Conformer/transducer models; icefall and ESPnet both rely on
it. Both functions here work on plain state dicts so they apply to any model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asr.checkpoints.io import (
    EPOCH_PATTERN,
    CheckpointError,
    epoch_checkpoint_path,
    list_checkpoints,
    safe_torch_load,
    training_checkpoint,
)


def _difference(state: Mapping[str, torch.Tensor],
                reference: Mapping[str, tuple[torch.Size, torch.dtype]]) -> str | None:
    """How ``state`` differs from the ``(shape, dtype)`` of each tensor of ``reference`` (its
    keys, then a tensor's shape, then its dtype, in words), or None when it does not."""
    if set(state) != set(reference):
        return f"keys: {sorted(set(reference) ^ set(state))[:5]}"
    for key, value in state.items():
        shape, dtype = reference[key]
        if value.shape != shape:
            return (f"the shape of {key}: {tuple(value.shape)} vs {tuple(shape)} (checkpoints "
                    "of different models cannot be averaged)")
        if value.dtype != dtype:
            return (f"the dtype of {key}: {value.dtype} vs {dtype} (the average would have no "
                    "one dtype to be written in)")
    return None


def _signature(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Size, torch.dtype]]:
    return {k: (v.shape, v.dtype) for k, v in state.items()}


def average_state_dicts(
    state_dicts: Iterable[Mapping[str, torch.Tensor]], names: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors; integer tensors (e.g. counters) come from the
    last.

    Each mean is accumulated in float64 and returned in the dtype of its inputs (float16,
    bfloat16 and float32 checkpoints average to weights of their own dtype, as icefall keeps
    the model's).

    Args:
        state_dicts: the state dicts to average.
        names: what each state dict is (e.g. its checkpoint file), for messages; default
            ``state dict 0``, ``state dict 1``...

    Raises:
        ValueError: on an empty input, or state dicts with different keys or a tensor whose
            shape or dtype differs from the first state dict's (naming both sources and the
            tensor).
    """
    total: dict[str, torch.Tensor] = {}
    reference: dict[str, tuple[torch.Size, torch.dtype]] | None = None
    count = 0

    def name(index: int) -> str:
        return names[index] if names is not None else f"state dict {index}"

    for sd in state_dicts:
        if reference is None:
            reference = _signature(sd)
        difference = _difference(sd, reference)
        if difference is not None:
            raise ValueError(f"{name(count)} and {name(0)} differ in {difference}")
        for key, value in sd.items():
            if value.is_floating_point():
                acc = value.detach().to(torch.float64)
                total[key] = total[key] + acc if key in total else acc.clone()
            else:
                total[key] = value.detach().clone()
        count += 1
    if count == 0 or reference is None:
        raise ValueError("no state dicts to average")
    out = {}
    for key, (_, dtype) in reference.items():
        value = total[key]
        out[key] = (value / count).to(dtype) if value.is_floating_point() else value
    return out


class RunningAverage:
    """Cumulative average of a model's parameters over training steps.

    Every ``period`` steps the average is updated as ``avg = avg * (1 - w) + current * w`` with
    ``w = period / step``, which makes ``avg`` the mean of the model sampled every ``period`` steps
    since the start. The average is kept in float64 on the model's device.

    Args:
        model: the model whose ``state_dict`` is averaged (float tensors only).
        period: update interval in optimizer steps.
    """

    def __init__(self, model: nn.Module, period: int = 100) -> None:
        if period <= 0:
            raise ValueError(f"RunningAverage period must be > 0, got {period}")
        self.period = period
        self.device = next((v.device for v in model.state_dict().values()), torch.device("cpu"))
        self.average = {
            k: v.detach().to(torch.float64).clone()
            for k, v in model.state_dict().items()
            if v.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> bool:
        """Updates the average if ``step`` is a multiple of ``period``; returns whether it did."""
        if step <= 0 or step % self.period != 0:
            return False
        weight = self.period / step
        for name, value in model.state_dict().items():
            if name in self.average:
                avg = self.average[name]
                avg.mul_(1.0 - weight).add_(value.detach().to(torch.float64), alpha=weight)
        return True

    def state_dict(self) -> dict[str, object]:
        return {"period": self.period, "average": self.average}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Takes ``state``'s period and average, the average onto the device it is kept on (the
        model's), wherever ``state``'s tensors are (a checkpoint read onto the CPU)."""
        self.period = int(state["period"])  # type: ignore[arg-type]
        self.average = {
            k: v.to(device=self.device, dtype=torch.float64, copy=True)
            for k, v in state["average"].items()  # type: ignore[union-attr]
        }

    def averaged_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with every float tensor replaced by its average (model dtype)."""
        out = {}
        for name, value in model.state_dict().items():
            out[name] = self.average[name].to(value.dtype) if name in self.average else value
        return out


# ------------------------------------------------------------------ choosing checkpoints by name


def list_epoch_checkpoints(exp_dir: str | Path) -> dict[int, Path]:
    """Epoch number -> ``epoch-N.pt`` for every epoch checkpoint in ``exp_dir`` (may be empty)."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return {}
    found = {}
    for path in exp_dir.iterdir():
        match = EPOCH_PATTERN.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def epoch_checkpoints(exp_dir: str | Path, epoch: int, avg: int) -> list[Path]:
    """The ``avg`` epoch checkpoints ending at ``epoch``: ``epoch-(epoch-avg+1) .. epoch-epoch``.

    Raises:
        ValueError: for ``avg < 1``.
        FileNotFoundError: naming every missing ``epoch-N.pt`` and the epochs that do exist
            (``avg > epoch`` reaches below ``epoch-1.pt``: a
            :class:`asr.checkpoints.selection.WeightSelection` refuses it first, naming both).
    """
    if avg < 1:
        raise ValueError(f"avg must be >= 1, got {avg}")
    return _existing_epoch_checkpoints(exp_dir, range(epoch - avg + 1, epoch + 1))


def averaged_model_checkpoints(exp_dir: str | Path, epoch: int, avg: int) -> list[Path]:
    """The epoch checkpoints :func:`averaged_model_between` reads: ``epoch-(epoch-avg).pt``
    (none for ``avg == epoch``: the average starts at the training's start) and
    ``epoch-epoch.pt``, oldest first.

    Raises:
        ValueError: unless ``1 <= avg <= epoch``.
        FileNotFoundError: naming every missing one and the epochs that do exist.
    """
    if avg < 1 or avg > epoch:
        raise ValueError(f"need 1 <= avg <= epoch, got epoch={epoch} avg={avg}")
    return _existing_epoch_checkpoints(exp_dir, [e for e in (epoch - avg, epoch) if e > 0])


def _existing_epoch_checkpoints(exp_dir: str | Path, epochs: Iterable[int]) -> list[Path]:
    """``epoch-N.pt`` of each of ``epochs`` in ``exp_dir``.

    Raises:
        FileNotFoundError: naming every missing one and the epochs that do exist.
    """
    paths = [epoch_checkpoint_path(exp_dir, e) for e in epochs]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"missing epoch checkpoints: {', '.join(missing)} "
            f"(found epochs {sorted(list_epoch_checkpoints(exp_dir))})"
        )
    return paths


def epoch_valid_loss(path: str | Path, epoch: int) -> float | None:
    """The validation loss that the epoch checkpoint ``path`` of ``epoch`` records for its own
    epoch: the last record of its ``progress`` history, which the trainer appends at the
    epoch's end before it writes the checkpoint. Only the file's plain fields are read (its
    tensors are mapped, not read).

    Returns:
        the loss, or None when it is not a finite number (a training without
        ``data.dev_cuts`` records none; NaN or inf: a diverged epoch).

    Raises:
        asr.checkpoints.io.CheckpointError: naming ``path`` when it cannot be read, is not a
            training checkpoint, records no epoch history or its history does not end with
            ``epoch`` (not the checkpoint of that epoch's end).
    """
    progress = training_checkpoint(safe_torch_load(path, mmap=True), path).get("progress")
    history = progress.get("history") if isinstance(progress, dict) else None
    if not isinstance(history, list) or not history:
        raise CheckpointError(f"{path}: records no epoch history ('progress'), so no "
                              "validation loss: not a checkpoint of asr train")
    record = history[-1]
    if not isinstance(record, dict) or record.get("epoch") != epoch:
        ends = record.get("epoch") if isinstance(record, dict) else record
        raise CheckpointError(f"{path}: its epoch history ends with epoch {ends!r}, not "
                              f"{epoch}: not the checkpoint of epoch {epoch}'s end")
    loss = record.get("valid_loss")
    if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss):
        return None
    return float(loss)


def best_valid_epoch_checkpoints(exp_dir: str | Path, count: int) -> list[tuple[int, float, Path]]:
    """The ``count`` epoch checkpoints of lowest validation loss (WeNet's ``average_model.py
    --val_best``), as ``(epoch, validation loss, epoch-N.pt)``, oldest epoch first.

    Each ``epoch-N.pt`` counts with the loss it records for its own epoch
    (:func:`epoch_valid_loss`), as WeNet reads each epoch's own ``epoch_N.yaml``: the loss of
    the weights averaged, also where a training resumed from an earlier checkpoint wrote some
    epochs again (another file's history would give those epochs' earlier losses). An epoch
    without a finite loss never counts; equal losses prefer the later epoch.

    Raises:
        ValueError: for ``count < 1``, or when fewer than ``count`` epochs count (naming those
            that do and their losses; a training without ``data.dev_cuts`` records none).
        FileNotFoundError: when ``exp_dir`` holds no ``epoch-N.pt``.
        asr.checkpoints.io.CheckpointError: naming an ``epoch-N.pt`` that cannot be read or is
            not the checkpoint of its epoch's end (:func:`epoch_valid_loss`).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    found = list_epoch_checkpoints(exp_dir)
    if not found:
        raise FileNotFoundError(f"{exp_dir} holds no epoch-N.pt")
    losses: dict[int, float] = {}
    for epoch, path in sorted(found.items()):
        loss = epoch_valid_loss(path, epoch)
        if loss is not None:
            losses[epoch] = loss
    if len(losses) < count:
        known = ", ".join(f"{e}: {v:.4f}" for e, v in sorted(losses.items())) or "none"
        raise ValueError(
            f"{count} epochs of lowest validation loss requested, but only {len(losses)} epochs "
            f"of {exp_dir} have an epoch-N.pt and a finite validation loss (epochs {known}; "
            f"found epoch-N.pt of {sorted(found)}; a training without data.dev_cuts records "
            "none)")
    best = sorted(losses, key=lambda e: (losses[e], -e))[:count]
    return [(e, losses[e], found[e]) for e in sorted(best)]


def last_step_checkpoints(exp_dir: str | Path, count: int) -> list[Path]:
    """The newest ``count`` ``checkpoint-N.pt`` files of ``exp_dir`` (oldest first).

    Raises:
        FileNotFoundError: when ``exp_dir`` holds fewer than ``count`` of them.
    """
    found = list_checkpoints(exp_dir)
    if count < 1 or len(found) < count:
        raise FileNotFoundError(
            f"{exp_dir} holds {len(found)} checkpoint-N.pt files, {count} requested"
        )
    return [path for _, path in found[-count:]]


def averaged_model_between(
    exp_dir: str | Path, epoch: int, avg: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Mean of the model over the training steps of epochs ``epoch-avg+1 .. epoch``, from the
    running averages stored in two epoch checkpoints (icefall's ``--use-averaged-model``).

    :class:`RunningAverage` keeps the mean of ``n = step // period`` model samples, so with the
    averages ``a_end`` (``n_end`` samples, at the end of ``epoch``) and ``a_start`` (``n_start``, at
    the end of ``epoch - avg``; nothing for ``epoch == avg``) the mean over the samples between is
    ``(a_end * n_end - a_start * n_start) / (n_end - n_start)``. Integer buffers come from the end.

    Returns:
        (the averaged model weights, the whole training checkpoint ``epoch-<epoch>.pt``).

    Raises:
        ValueError: when the checkpoints hold no running average, no steps lie between, or
            their averages are of different models (naming both files and the tensor).
        asr.checkpoints.io.CheckpointError: naming a checkpoint that is missing, unreadable or
            not a training checkpoint.
    """
    if avg < 1 or avg > epoch:
        raise ValueError(f"need 1 <= avg <= epoch, got epoch={epoch} avg={avg}")
    end_path = epoch_checkpoint_path(exp_dir, epoch)
    end_checkpoint = safe_torch_load(end_path)
    avg_end, n_end, model_end = _running_average(end_checkpoint, end_path)
    start = None
    if epoch > avg:
        start_path = epoch_checkpoint_path(exp_dir, epoch - avg)
        start = _running_average(safe_torch_load(start_path), start_path)
        difference = _difference(start[0], _signature(avg_end))
        if difference is not None:
            raise ValueError(f"the running averages of {start_path} and {end_path} differ in "
                             f"{difference}")
    n_start = start[1] if start else 0
    if n_end <= n_start:
        # _running_average checked both: the period is an int >= 1, the step count there
        period, end_step = end_checkpoint["averager"]["period"], end_checkpoint["progress"]["step"]
        raise ValueError(
            f"no running-average samples between epoch {epoch - avg} and {epoch} in {exp_dir}: "
            f"the model is sampled every train.average_period={period} steps and epoch {epoch} "
            f"ends at step {end_step} ({n_end} samples; {n_start} by epoch {epoch - avg}): "
            "average the epochs' own weights instead (without --use-averaged-model; run.sh "
            "--use-averaged-model false), or train with a smaller train.average_period"
        )
    out = {}
    for name, value in model_end.items():
        if name in avg_end:
            total = avg_end[name] * n_end
            if start is not None:
                total = total - start[0][name] * n_start
            out[name] = (total / (n_end - n_start)).to(value.dtype)
        else:
            out[name] = value
    return out, end_checkpoint


def _running_average(
    state: Any, path: Path
) -> tuple[dict[str, torch.Tensor], int, dict[str, torch.Tensor]]:
    """(average, number of samples, model state) of the training checkpoint ``path``.

    Raises:
        ValueError: when it holds no running average.
        asr.checkpoints.io.CheckpointError: when it is no training checkpoint (no model, no
            step count, or a running average that is not one).
    """
    model = training_checkpoint(state, path)["model"]
    progress = state.get("progress")
    if not isinstance(progress, dict) or "step" not in progress:
        raise CheckpointError(f"{path}: not a training checkpoint (no 'progress' step count)")
    averager = state.get("averager")
    if not averager:
        raise ValueError(f"{path} holds no running average (train.average_period was 0)")
    average = averager.get("average") if isinstance(averager, dict) else None
    period = averager.get("period") if isinstance(averager, dict) else None
    if (not isinstance(average, dict) or not isinstance(period, int) or period < 1
            or any(k not in model or v.shape != model[k].shape for k, v in average.items())):
        raise CheckpointError(f"{path}: its running average ('averager') does not fit its "
                              "model: the file is not a training checkpoint of this program")
    return average, int(progress["step"]) // period, model
