"""Fitting a training run to a wall-clock budget: how many optimizer steps are left to plan.

A budgeted run (``train.time_budget_s``) measures what a step and an end of epoch (validation, dev
WER, checkpoint, plot) cost on the machine it runs on, and plans its total step count so that the
whole run fits the budget; the cosine schedule then decays to its floor exactly at the planned step.
The mini_tts main job thus trains ~1700 float32 steps on a 2-core AVX2 machine (estimated) and
2900-3400 bf16 steps on one with AMX (measured) in the same minutes, instead of a step count sized
for the slowest machine.

:func:`plan_total_steps` is the arithmetic; :class:`asr.train.trainer.Trainer` does the measuring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SAFETY = 0.98
"""Fraction of the remaining time a plan uses: steps get a few percent slower over a run (longer
batches late in an epoch, a busier machine), and an overrun cuts the schedule short."""


@dataclass(frozen=True)
class PlanInput:
    """What a plan is made from.

    Attributes:
        step: optimizer steps taken so far.
        remaining_s: budget seconds left.
        sec_per_step: measured cost of one optimizer step (data, forward, backward, periodic
            checkpoints).
        epoch_end_s: measured cost of one end of epoch (0 while none has happened).
        steps_per_epoch: optimizer steps of a whole epoch (0 while unknown: before the first one
            ends, epoch ends are neither counted nor capped).
        steps_left_in_epoch: steps until the current epoch ends; 0 when its last step is done
            and its end comes before any further step (ignored while ``steps_per_epoch`` is 0).
        epochs_left: epochs that may still start or continue, the current one included.
        max_steps: a fixed upper limit on the total (0: none).
        quantum: the plan is rounded down to a multiple of this (so that repeated runs on the
            same machine usually agree), unless the epoch limit ends training first.
    """

    step: int
    remaining_s: float
    sec_per_step: float
    epoch_end_s: float = 0.0
    steps_per_epoch: int = 0
    steps_left_in_epoch: int = 0
    epochs_left: int = 1
    max_steps: int = 0
    quantum: int = 1


def _epoch_ends(n: int, inp: PlanInput) -> int:
    """Ends of epochs that training continues after while taking ``n`` more steps.

    A budgeted run that stops at an epoch's last step writes its checkpoint without the end-of-epoch
    validation, so only ends strictly before the final step cost ``epoch_end_s``.
    """
    if inp.steps_per_epoch <= 0 or n <= inp.steps_left_in_epoch:
        return 0
    return 1 + (n - 1 - inp.steps_left_in_epoch) // inp.steps_per_epoch


def _cost(n: int, inp: PlanInput) -> float:
    return n * inp.sec_per_step + _epoch_ends(n, inp) * inp.epoch_end_s


@dataclass(frozen=True)
class StepPlan:
    """A plan: train ``total_steps`` in all; ``by_epochs`` when the epoch limit ends training there
    first (then the run stops with ``max_epochs``, after the last epoch's validation)."""

    total_steps: int
    by_epochs: bool = False


def plan_total_steps(inp: PlanInput) -> StepPlan:
    """The total number of optimizer steps (>= ``inp.step``) that fits the remaining budget.

    Raises:
        ValueError: on a non-positive step cost or quantum.
    """
    if inp.sec_per_step <= 0 or not math.isfinite(inp.sec_per_step):
        raise ValueError(f"sec_per_step must be a positive number, got {inp.sec_per_step}")
    if inp.quantum <= 0:
        raise ValueError(f"quantum must be > 0, got {inp.quantum}")
    available = SAFETY * inp.remaining_s
    lo, hi = 0, max(int(available / inp.sec_per_step) + 1, 1)  # cost(lo) fits, cost(hi) not
    while hi - lo > 1:  # the cost grows with n: bisect for the most steps that fit
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _cost(mid, inp) <= available else (lo, mid)
    total = inp.step + lo
    epoch_cap = None
    if inp.steps_per_epoch > 0:
        epoch_cap = (inp.step + inp.steps_left_in_epoch
                     + max(inp.epochs_left - 1, 0) * inp.steps_per_epoch)
    if epoch_cap is not None and total >= epoch_cap and not 0 < inp.max_steps < epoch_cap:
        return StepPlan(epoch_cap, by_epochs=True)
    if 0 < inp.max_steps <= total:
        return StepPlan(max(inp.max_steps, inp.step))
    return StepPlan(max(total // inp.quantum * inp.quantum, inp.step))
