"""Optimizers and learning-rate schedules with explicit, resumable state.

Schedules count *reference steps*: with ``optim.reference_batch_seconds = R`` an optimizer step
over ``B`` seconds of audio (``data.max_duration`` x processes x ``train.accum_grad``) advances the
schedule by ``B / R``, so warm-up and decay cover the same amount of audio whatever the number of
GPUs or the batch size (icefall's "adjusted batch count"); with ``R = 0`` a reference step is an
optimizer step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and schedule.

    Attributes:
        optimizer: ``adamw`` (decoupled weight decay) or ``adam``.
        lr: peak learning rate reached at the end of warm-up.
        betas: Adam betas.
        weight_decay: decoupled weight decay (not applied to biases and norm weights).
        schedule: after a linear warm-up: ``noam`` (inverse square root decay), ``cosine``
            (cosine decay to ``min_lr`` at ``total_steps``) or ``constant``; or ``eden``
            (icefall's decay in both steps and epochs, ``((s^2 + lr_batches^2) /
            lr_batches^2)^-1/4 * ((e^2 + lr_epochs^2) / lr_epochs^2)^-1/4`` with ``e`` the epochs
            completed, times the warm-up ramp: it anneals without knowing the run's length).
        warmup_steps: linear warm-up length in reference steps.
        total_steps: horizon of the cosine schedule in reference steps (ignored by the others).
        min_lr: floor of the cosine schedule.
        lr_batches: eden's step scale, in reference steps.
        lr_epochs: eden's epoch scale.
        reference_batch_seconds: seconds of audio per reference step (see the module doc; 0:
            a reference step is an optimizer step).
        grad_clip: max global gradient norm (<= 0 disables clipping).
    """

    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 1e-3
    schedule: Literal["noam", "cosine", "constant", "eden"] = "noam"
    warmup_steps: int = 1000
    total_steps: int = 100_000
    min_lr: float = 1e-5
    lr_batches: float = 7500.0
    lr_epochs: float = 3.5
    reference_batch_seconds: float = 0.0
    grad_clip: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.lr < math.inf:  # NaN fails too
            raise ValueError(f"lr must be > 0 and finite, got {self.lr}")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"betas must be within [0, 1), got {self.betas}")
        for name in ("weight_decay", "min_lr"):  # a negative min_lr ends cosine going uphill
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be >= 0 and finite, got {getattr(self, name)}")
        if self.total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {self.total_steps}")
        if math.isnan(self.grad_clip):
            raise ValueError("grad_clip must be a number (<= 0: no clipping), got nan")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not (0 < self.lr_batches < math.inf and 0 < self.lr_epochs < math.inf):
            raise ValueError(
                "lr_batches and lr_epochs must be > 0 and finite, "
                f"got {self.lr_batches}, {self.lr_epochs}"
            )
        if not 0 <= self.reference_batch_seconds < math.inf:
            raise ValueError(
                "reference_batch_seconds must be >= 0 and finite, "
                f"got {self.reference_batch_seconds}"
            )

    def step_scale(self, batch_seconds: float) -> float:
        """Reference steps per optimizer step of ``batch_seconds`` seconds of audio."""
        if self.reference_batch_seconds == 0:
            return 1.0
        if batch_seconds <= 0:
            raise ValueError(f"batch_seconds must be > 0, got {batch_seconds}")
        return batch_seconds / self.reference_batch_seconds


def lr_factor(
    cfg: OptimConfig, step: float, total_steps: float | None = None, epoch: int = 0
) -> float:
    """Multiplier of ``cfg.lr`` after ``step`` reference steps (0-based count of steps taken).

    ``total_steps`` replaces ``cfg.total_steps`` as the cosine horizon (a time-budgeted run's
    plan); ``epoch`` counts the epochs completed (eden).
    """
    total = cfg.total_steps if total_steps is None else total_steps
    step = max(step, 0) + 1
    warm = max(cfg.warmup_steps, 1)
    if cfg.schedule == "eden":  # decays from the first step; the warm-up ramp multiplies it
        steps = ((step**2 + cfg.lr_batches**2) / cfg.lr_batches**2) ** -0.25
        epochs = ((epoch**2 + cfg.lr_epochs**2) / cfg.lr_epochs**2) ** -0.25
        return min(1.0, step / warm) * steps * epochs
    if step <= cfg.warmup_steps:
        return step / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "noam":
        return math.sqrt(warm / step)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    floor = cfg.min_lr / cfg.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW/Adam with weight decay only on weight matrices (dim >= 2)."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, betas=cfg.betas)


class Scheduler:
    """Sets every param group's lr to ``cfg.lr * lr_factor(...)`` after each optimizer step.

    Args:
        optimizer: the optimizer whose groups it sets.
        cfg: the schedule.
        step_scale: reference steps per optimizer step (:meth:`OptimConfig.step_scale`).

    Its state is the optimizer steps taken, the reference steps they made, the epochs completed
    and the cosine horizon in reference steps (``cfg.total_steps`` unless a time-budgeted run
    re-planned it with :meth:`set_total_steps`: a resumed run takes its configuration's
    ``total_steps``, changed or not, unless the horizon was re-planned, whose plan it continues).
    Each step counts at the scale of the run that took it: a run resumed with another global
    batch (another number of processes) continues the schedule from the audio trained so far.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                 step_scale: float = 1.0) -> None:
        if step_scale <= 0:
            raise ValueError(f"step_scale must be > 0, got {step_scale}")
        self.optimizer = optimizer
        self.cfg = cfg
        self.step_scale = step_scale
        self.step_count = 0
        self.epoch = 0
        # (reference steps, optimizer steps) from which steps count at this step_scale
        self._base_reference, self._base_count = 0.0, 0
        self.total_reference = float(cfg.total_steps)
        self.planned = False  # whether set_total_steps replaced cfg.total_steps
        self._apply()

    @property
    def reference_steps(self) -> float:
        """Reference steps taken so far."""
        return self._base_reference + (self.step_count - self._base_count) * self.step_scale

    @property
    def total_steps(self) -> float:
        """The cosine horizon in optimizer steps at this ``step_scale``."""
        return self._base_count + (self.total_reference - self._base_reference) / self.step_scale

    def set_total_steps(self, total_steps: int) -> None:
        """Moves the end of the cosine decay to optimizer step ``total_steps`` from now on."""
        self.total_reference = (self._base_reference
                                + (int(total_steps) - self._base_count) * self.step_scale)
        self.planned = True
        self._apply()

    def set_epoch(self, epochs_done: int) -> None:
        """The number of epochs completed (eden's epoch decay; called as each epoch starts)."""
        self.epoch = int(epochs_done)
        self._apply()

    def _apply(self) -> None:
        lr = self.cfg.lr * lr_factor(self.cfg, self.reference_steps, self.total_reference,
                                     self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, float | bool]:
        return {"step_count": self.step_count, "epoch": self.epoch,
                "total_reference": self.total_reference, "planned": self.planned,
                "step_scale": self.step_scale, "base_reference": self._base_reference,
                "base_count": self._base_count}

    def load_state_dict(self, state: dict[str, float | bool]) -> None:
        self.step_count = int(state["step_count"])
        self.epoch = int(state.get("epoch", 0))
        scale = float(state.get("step_scale", self.step_scale))  # older states: this scale
        base_reference = float(state.get("base_reference", 0.0))
        base_count = int(state.get("base_count", 0))
        if scale != self.step_scale:  # the steps taken keep the audio they were taken on
            base_reference += (self.step_count - base_count) * scale
            base_count = self.step_count
        self._base_reference, self._base_count = base_reference, base_count
        # a plan is the run's own; otherwise the horizon is the config's (older states, which
        # do not say, keep theirs)
        self.planned = bool(state.get("planned", True))
        if not self.planned:
            self.total_reference = float(self.cfg.total_steps)
        elif "total_reference" in state:
            self.total_reference = float(state["total_reference"])
        elif "total_steps" in state:  # older states: the horizon in optimizer steps
            self.total_reference = float(state["total_steps"]) * scale
        else:
            self.total_reference = float(self.cfg.total_steps)
            self.planned = False
        self._apply()
