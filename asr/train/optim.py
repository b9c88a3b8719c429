"""Optimizers and learning-rate schedules with explicit, resumable state."""

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
        schedule: ``noam`` (linear warm-up then inverse square root decay), ``cosine`` (warm-up then
            cosine decay to ``min_lr`` at ``total_steps``) or ``constant`` (warm-up then flat).
        warmup_steps: linear warm-up length in optimizer steps.
        total_steps: horizon of the cosine schedule (ignored by the others).
        min_lr: floor of the cosine schedule.
        grad_clip: max global gradient norm (<= 0 disables clipping).
    """

    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 1e-3
    schedule: Literal["noam", "cosine", "constant"] = "noam"
    warmup_steps: int = 1000
    total_steps: int = 100_000
    min_lr: float = 1e-5
    grad_clip: float = 5.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


def lr_factor(cfg: OptimConfig, step: int, total_steps: int | None = None) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based count of steps taken).

    ``total_steps`` replaces ``cfg.total_steps`` as the cosine horizon (a time-budgeted run's plan).
    """
    total = cfg.total_steps if total_steps is None else total_steps
    step = max(step, 0) + 1
    warm = max(cfg.warmup_steps, 1)
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
    """Sets every param group's lr to ``cfg.lr * lr_factor(cfg, step, total_steps)``.

    Its state is the step and the cosine horizon ``total_steps`` (``cfg.total_steps`` unless a
    time-budgeted run re-planned it with :meth:`set_total_steps`).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.step_count = 0
        self.total_steps = cfg.total_steps
        self._apply()

    def set_total_steps(self, total_steps: int) -> None:
        """Moves the end of the cosine decay to ``total_steps`` from the current step on."""
        self.total_steps = int(total_steps)
        self._apply()

    def _apply(self) -> None:
        lr = self.cfg.lr * lr_factor(self.cfg, self.step_count, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, int]:
        return {"step_count": self.step_count, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step_count = int(state["step_count"])
        self.total_steps = int(state.get("total_steps", self.cfg.total_steps))
        self._apply()
