"""Model averaging: offline averaging of saved checkpoints and a running average during training.

Averaging the weights of the last few checkpoints (or a running average over the whole run) is a
cheap and reliable WER improvement for Conformer/transducer models; icefall and ESPnet both rely on
it. Both functions here work on plain state dicts so they apply to any model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from asr.train.checkpoint import safe_torch_load


def average_state_dicts(state_dicts: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors; integer tensors (e.g. counters) come from the last.

    Raises:
        ValueError: on an empty input or state dicts with different keys.
    """
    total: dict[str, torch.Tensor] = {}
    count = 0
    keys: set[str] | None = None
    for sd in state_dicts:
        if keys is None:
            keys = set(sd)
        elif set(sd) != keys:
            raise ValueError(f"state dicts differ in keys: {sorted(keys ^ set(sd))[:5]}")
        for name, value in sd.items():
            if value.is_floating_point():
                acc = value.detach().to(torch.float64)
                total[name] = total[name] + acc if name in total else acc.clone()
            else:
                total[name] = value.detach().clone()
        count += 1
    if count == 0:
        raise ValueError("no state dicts to average")
    ref = {} if keys is None else keys
    out = {}
    for name in ref:
        value = total[name]
        out[name] = value / count if value.is_floating_point() else value
    return out


def average_checkpoints(paths: Iterable[str | Path], key: str = "model") -> dict[str, torch.Tensor]:
    """Averages the ``key`` state dicts of several training checkpoints (weights-only loading).

    The result is returned in float64 for accumulated precision; cast with ``load_state_dict``.
    """
    return average_state_dicts(safe_torch_load(p)[key] for p in paths)


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
        self.period = int(state["period"])  # type: ignore[arg-type]
        self.average = {k: v.clone() for k, v in state["average"].items()}  # type: ignore[union-attr]

    def averaged_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with every float tensor replaced by its average (model dtype)."""
        out = {}
        for name, value in model.state_dict().items():
            out[name] = self.average[name].to(value.dtype) if name in self.average else value
        return out
