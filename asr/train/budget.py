"""Fitting a training run to a wall-clock budget: how many optimizer steps are left to plan.

A budgeted run (``train.time_budget_s``) measures what a step, a validation, a checkpoint and
the rest of an end of epoch (dev WER, plot) cost on the machine it runs on, each apart, and plans
its total step count so that the whole run fits the budget, each piece of work charged once
where it is done: a validation after every ``train.valid_interval``-th step and at every end of
epoch (once at an end on such a step), a checkpoint after every ``checkpoint_interval``-th step,
at every end of epoch and at the final stop (unless the interval's holds that step); the cosine
schedule then decays to its floor exactly at the planned step.
The mini_tts main job thus trains ~1700 float32 steps on a 2-core AVX2 machine (estimated) and
4300-5428 bf16 steps on one with AMX (measured, recipes/mini_tts/README.md) in the same minutes,
instead of a step count sized for the slowest machine.

:func:`plan_total_steps` is the arithmetic; :class:`TimeBudget` measures the run and (re)plans;
the trainer calls it after every optimizer step and at every end of epoch, and applies its plans.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from asr.train.distributed import DistInfo, all_reduce_sum
from asr.train.state import Progress, TrainConfig

logger = logging.getLogger(__name__)

SAFETY = 0.98
"""Fraction of the remaining time a plan uses: steps get a few percent slower over a run (longer
batches late in an epoch, a busier machine), and an overrun cuts the schedule short."""


@dataclass(frozen=True)
class PlanInput:
    """What a plan is made from.

    Attributes:
        step: optimizer steps taken so far.
        remaining_s: budget seconds left.
        sec_per_step: measured cost of one optimizer step (data, forward, backward, logs), without
            the work between steps (validations, checkpoints, ends of epochs).
        epoch_end_s: measured cost of one end of epoch besides its validation and checkpoint
            (dev WER, plot; 0 while none has happened).
        steps_per_epoch: optimizer steps of a whole epoch (0 while unknown: before the first one
            ends, epoch ends are neither counted nor capped).
        steps_left_in_epoch: steps until the current epoch ends; 0 when its last step is done
            and its end comes before any further step (ignored while ``steps_per_epoch`` is 0).
        epochs_left: epochs that may still start or continue, the current one included.
        max_steps: a fixed upper limit on the total (0: none).
        valid_every / valid_s: a validation of ``valid_s`` seconds after each optimizer step whose
            count is a multiple of ``valid_every`` (0: none) and at each end of epoch, once at an
            end on such a step (it reuses that step's loss).
        checkpoint_every / checkpoint_s: a checkpoint of ``checkpoint_s`` seconds after each
            optimizer step whose count is a multiple of ``checkpoint_every`` (0: none), at each
            end of epoch and at the final step of a plan that ends before the epochs do (the
            stop's own, unless the interval's holds that step).
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
    valid_every: int = 0
    valid_s: float = 0.0
    checkpoint_every: int = 0
    checkpoint_s: float = 0.0
    quantum: int = 1


def _epoch_cap(inp: PlanInput) -> int | None:
    """The step the last of ``epochs_left`` epochs ends at (None while epochs are unknown)."""
    if inp.steps_per_epoch <= 0:
        return None
    return inp.step + inp.steps_left_in_epoch + max(inp.epochs_left - 1, 0) * inp.steps_per_epoch


def _epoch_end_steps(n: int, inp: PlanInput) -> range:
    """The steps whose end of epoch is paid for while taking ``n`` more steps: those training
    continues after, and the last epoch's when the ``n``-th step is its last (the run ends with
    the epochs, after that end). A budgeted run stopping on another epoch's last step writes
    its checkpoint without the end."""
    cap = _epoch_cap(inp)
    if cap is None or n <= 0:
        return range(0)
    end = inp.step + n
    last = end if end == cap else min(end - 1, cap)
    return range(inp.step + inp.steps_left_in_epoch, last + 1, inp.steps_per_epoch)


def _multiples(every: int, step: int, end: int) -> int:
    """The multiples of ``every`` (0: none) in ``(step, end]``."""
    return end // every - step // every if every > 0 else 0


def _cost(n: int, inp: PlanInput) -> float:
    """Seconds of ``n`` more steps, with the validations, checkpoints and ends of epochs they
    bring, each charged once (:class:`PlanInput`)."""
    end = inp.step + n
    ends = _epoch_end_steps(n, inp)
    # an end on a step the interval validated reuses its loss (ends are at most epochs_left)
    valid = inp.valid_every
    validations = _multiples(valid, inp.step, end) + sum(
        1 for e in ends if valid <= 0 or e % valid)
    every = inp.checkpoint_every
    stop = n > 0 and end not in ends and not (every > 0 and end % every == 0)
    checkpoints = _multiples(every, inp.step, end) + len(ends) + int(stop)
    return (n * inp.sec_per_step + len(ends) * inp.epoch_end_s + validations * inp.valid_s
            + checkpoints * inp.checkpoint_s)


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
    if inp.valid_every < 0 or inp.checkpoint_every < 0:
        raise ValueError(f"valid_every and checkpoint_every must be >= 0, got {inp.valid_every} "
                         f"and {inp.checkpoint_every}")
    available = SAFETY * inp.remaining_s
    lo, hi = 0, max(int(available / inp.sec_per_step) + 1, 1)  # cost(lo) fits, cost(hi) not
    while hi - lo > 1:  # the cost grows with n: bisect for the most steps that fit
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _cost(mid, inp) <= available else (lo, mid)
    total = inp.step + lo
    epoch_cap = _epoch_cap(inp)
    if epoch_cap is not None and total >= epoch_cap and not 0 < inp.max_steps < epoch_cap:
        return StepPlan(epoch_cap, by_epochs=True)
    if 0 < inp.max_steps <= total:
        return StepPlan(max(inp.max_steps, inp.step))
    return StepPlan(max(total // inp.quantum * inp.quantum, inp.step))


#: What :meth:`TimeBudget.between_steps` times: every validation (the interval's, an end of
#: epoch's), every checkpoint written, and the rest of an end of epoch after its plan (the plot).
VALIDATION, CHECKPOINT, EPOCH_END = "validation", "checkpoint", "epoch end"


def epoch_steps(progress: Progress, accum_grad: int, world_size: int,
                drop_last: bool = True) -> tuple[int, int]:
    """``(steps of a whole epoch, steps left in the current one)`` in optimizer steps of
    ``world_size`` processes taking ``accum_grad`` batches each (``PlanInput.steps_per_epoch``
    and ``steps_left_in_epoch``; ``(0, 0)`` before an epoch has ended), from the global batches
    of the latest epoch finished (``EpochRecord.batches``, the estimate of an epoch's stream)
    and those the current one has taken (``Progress.batches_in_epoch``): right also when the
    world size changed at a resumption, where the steps that epochs took would count steps of
    another size. An epoch's last step takes the batches left over
    (:class:`asr.train.trainer.Trainer`).

    Each process draws, of ``G`` global batches left, ``ceil(G / world_size)``: without
    ``drop_last`` (the batch source's ``data.drop_last``) lhotse splits the batches of a last
    round that the processes do not fill among them, one part each, and so does an epoch
    resumed with another number of processes, or at a position that is no multiple of theirs
    (a resumed epoch resumed again), with ``drop_last`` too
    (:func:`asr.data.sampler.resumed_share`); only an epoch sampled for ``world_size``
    processes with ``drop_last`` (the default) gives each ``floor(G / world_size)``, its full
    rounds. The parts of a last round with fewer cuts than processes repeat cuts, which an
    epoch resumed with other processes does not train again (nor, with ``drop_last``, such a
    round): there the count can be a step over. Checkpoints written before epochs recorded
    their batches give the steps the latest epoch took.
    """
    ends = [r for r in progress.history if r.step is not None]
    if not ends:
        return 0, 0
    last, into = ends[-1], progress.batches_in_epoch
    if last.batches is None:
        per_epoch = last.step - (ends[-2].step if len(ends) > 1 else 0)
        return per_epoch, max(per_epoch - into // (accum_grad * world_size), 0)

    def steps(global_batches: int, split: bool) -> int:  # accum_grad batches a step
        # each process' share: the full rounds of the processes, and with ``split`` one batch
        # more each for the batches that fill no round
        rounds = max(global_batches, 0) / world_size
        return math.ceil((math.ceil(rounds) if split else math.floor(rounds)) / accum_grad)

    # the rule of asr.data.epochs.EpochBatches: a resumed share unless the position is one of
    # this world size's stream
    resumed = into > 0 and (progress.epoch_world_size not in (None, world_size)
                            or into % world_size != 0)
    return (steps(last.batches, not drop_last),
            steps(last.batches - into, resumed or not drop_last))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


class TimeBudget:
    """The wall clock of a training run and, with ``train.time_budget_s > 0``, its step plan.

    It counts the seconds trained (summed over resumed runs: ``Progress.train_seconds``), measures
    the cost of a step (from a fifth of the calibration steps on, over the latest
    ``time_budget_window`` steps, without the work between steps that :meth:`after_epoch` and
    :meth:`between_steps` are given) and, apart, of an end of epoch, a validation and a
    checkpoint (mean over this run's), so that a validation or a checkpoint inside the window
    does not swing the step cost and the plan; plans the total step count
    (:func:`plan_total_steps`) after ``time_budget_calibration_steps`` steps, every
    ``time_budget_quantum`` steps after that and at every end of epoch, and says after every
    step and every end of epoch whether the budget is spent. Every method that plans or checks
    the budget is collective when distributed: rank 0's plan holds everywhere, and every rank
    stops once any rank's clock says the budget is spent. After a step the ranks have agreed on
    that already, in the step's one all-reduce (:func:`asr.train.agreement.agree` of each rank's
    :meth:`over`), which :meth:`after_step` is given.

    Args:
        cfg: the loop settings.
        dist: this process' place in the job.
        clock: monotonic seconds (replaceable in tests).
        drop_last: whether the batch source drops the batches of an epoch's last round that
            its processes do not fill (:func:`epoch_steps`).
    """

    def __init__(self, cfg: TrainConfig, dist: DistInfo,
                 clock: Callable[[], float] = time.monotonic, drop_last: bool = True) -> None:
        self.cfg = cfg
        self.dist = dist
        self.clock = clock
        self.drop_last = drop_last
        self.enabled = cfg.time_budget_s > 0
        self.spent = False
        self._run_start: float | None = None  # clock() when the run started
        self._seconds_before = 0.0  # training seconds of earlier (resumed) runs
        self._start_step = 0
        # costs of this run's ends of epochs besides validation and checkpoint: up to their
        # plans (dev WER) and after them (the plot: :data:`EPOCH_END`)
        self._epoch_end_seconds: list[float] = []
        self._epoch_end_tails: list[float] = []
        self._work_seconds: dict[str, list[float]] = {VALIDATION: [], CHECKPOINT: []}
        self._between = 0.0  # seconds of this run between steps (epoch ends, periodic work)
        # (clock, step, self._between) marks that step timing starts from: the first one after
        # the first steps of a run, whose cost is mostly start-up (first batches, kernel set-up),
        # not steady training; then one per periodic re-plan, so that plans follow the recent
        # cost.
        self._rate_marks: list[tuple[float, int, float]] = []
        self._planned_total: int | None = None

    @property
    def running(self) -> bool:
        """Whether :meth:`start` was called (inside ``Trainer.fit``)."""
        return self._run_start is not None

    def start(self, progress: Progress) -> None:
        """A run starts (or resumes) at ``progress``. Collective.

        A plan made for another ``time_budget_s`` than this run's (``Progress.plan_budget_s``)
        is dropped: the run trains on (a raised budget continues a run that ended on its plan)
        and plans for its own budget after ``time_budget_calibration_steps`` steps, as every
        resumed run re-plans.
        """
        self._run_start = self.clock()
        self._seconds_before = progress.train_seconds
        self._start_step = progress.step
        self._epoch_end_seconds = []
        self._epoch_end_tails = []
        self._work_seconds = {VALIDATION: [], CHECKPOINT: []}
        self._between = 0.0
        self._rate_marks = []
        self.spent = False
        if not self.enabled:
            return
        budget, planned_for = self.cfg.time_budget_s, progress.plan_budget_s
        if progress.planned_steps > 0 and planned_for is not None and planned_for != budget:
            logger.info(
                "time budget %.0f s, the plan of %d steps was made for %.0f s: planning again "
                "after %d steps", budget, progress.planned_steps, planned_for,
                self.cfg.time_budget_calibration_steps,
            )
            progress.planned_steps = 0
            progress.plan_budget_s = None
        self._check(progress)

    def elapsed(self) -> float:
        """Training seconds so far, earlier (resumed) runs included."""
        assert self._run_start is not None, "only after start()"
        return self._seconds_before + self.clock() - self._run_start

    def limit(self, progress: Progress) -> int:
        """The step training stops at (0: no limit but the epochs)."""
        if self.enabled and progress.planned_steps > 0:
            return progress.planned_steps
        return self.cfg.max_steps

    def over(self) -> bool:
        """Whether this rank's clock says the budget is spent (never without a budget). Not
        collective: the trainer agrees on it with the other ranks at each step
        (:func:`asr.train.agreement.agree`) and hands the outcome to :meth:`after_step`."""
        return self.enabled and self.elapsed() >= self.cfg.time_budget_s

    def after_step(self, progress: Progress, spent: bool) -> int | None:
        """Called after each optimizer step taken; returns a new planned total, or None.
        Collective at the steps it plans at.

        Args:
            progress: the progress after the step.
            spent: whether any rank's :meth:`over` said so at the step's agreement (its last
                backward done).
        """
        if not self.enabled:
            return None
        total = None
        steps_this_run = progress.step - self._start_step
        calibration = self.cfg.time_budget_calibration_steps
        if steps_this_run == calibration // 5:
            self._mark_rate(progress)
        since = steps_this_run - calibration
        if since >= 0 and since % self.cfg.time_budget_quantum == 0:
            # after calibration, then every quantum steps; before this step's periodic work
            total = self._plan(progress, at_epoch_end=False)
            if since > 0:
                self._mark_rate(progress)
        # Every step, not every log_interval: a run stops at the first step past its budget.
        self._stop_if(spent, progress)
        return total

    @contextlib.contextmanager
    def between_steps(self, kind: str) -> Iterator[None]:
        """Times the work inside it, done between two optimizer steps, as ``kind``:
        :data:`VALIDATION` or :data:`CHECKPOINT` (any: the interval's, an end of epoch's, a
        stop's), whose mean cost plans charge where each is done (:class:`PlanInput`), or
        :data:`EPOCH_END`, the part of an end of epoch after :meth:`after_epoch` besides its
        checkpoint (the plot), whose mean cost plans add to that of the part before. Step costs
        leave it out. Not nested: the seconds inside count once."""
        start = self.clock()
        try:
            yield
        finally:
            seconds = self.clock() - start
            self._between += seconds
            costs = self._epoch_end_tails if kind == EPOCH_END else self._work_seconds[kind]
            costs.append(seconds)

    def after_epoch(self, progress: Progress, end_seconds: float) -> int | None:
        """Called at an end of epoch that cost ``end_seconds`` so far besides its validation
        (``progress.epoch`` is already the next one), before its checkpoint and plot, whose costs
        the trainer gives with :meth:`between_steps`; returns a new planned total, or None.
        Collective."""
        self._epoch_end_seconds.append(end_seconds)
        self._between += end_seconds
        if not self.enabled:
            return None
        self._check(progress)
        if self.spent or 0 < self.limit(progress) <= progress.step:
            return None
        if progress.epoch > self.cfg.max_epochs:
            return None
        return self._plan(progress, at_epoch_end=True)

    def _check(self, progress: Progress) -> None:
        """Whether the budget is spent on any rank's clock: collective."""
        self._stop_if(all_reduce_sum(float(self.over()), self.dist) > 0, progress)

    def _stop_if(self, spent: bool, progress: Progress) -> None:
        """Stops the run once ``spent`` (agreed by every rank) says so; logs it once."""
        if spent and not self.spent:
            self.spent = True
            logger.warning(
                "time budget of %.0f s spent at step %d (plan: %d steps): stopping here",
                self.cfg.time_budget_s, progress.step, progress.planned_steps,
            )

    def _mark_rate(self, progress: Progress) -> None:
        self._rate_marks.append((self.clock(), progress.step, self._between))
        # Only the newest mark at least a window old is ever used (or the first one).
        window_start = progress.step - self.cfg.time_budget_window
        old = [i for i, m in enumerate(self._rate_marks) if m[1] <= window_start]
        if len(old) > 1:
            del self._rate_marks[1 : old[-1]]

    def _plan(self, progress: Progress, at_epoch_end: bool) -> int | None:
        """(Re)plans the total step count from this run's measured costs; sets
        ``progress.planned_steps`` and returns the total for the schedule. The work still due
        before the next step is taken off the time left at its mean cost: at an end of epoch
        (``at_epoch_end``) its checkpoint and plot, else the interval's work of the step just
        taken (its validation, its checkpoint)."""
        p = progress
        if p.step - self._start_step <= 0:
            return None
        assert self._run_start is not None
        tail_s = _mean(self._epoch_end_tails)
        epoch_end_s = _mean(self._epoch_end_seconds) + tail_s
        # The cost of the latest time_budget_window steps (or more): a machine whose speed
        # changes during the run (other load, a shared host) gets plans that follow it.
        recent = [m for m in self._rate_marks if m[1] <= p.step - self.cfg.time_budget_window]
        origin = recent[-1] if recent else (self._rate_marks[0] if self._rate_marks else None)
        if origin is None or p.step <= origin[1]:  # too early: time the run from its start
            origin = (self._run_start, self._start_step, 0.0)
        timed_steps = p.step - origin[1]
        step_seconds = self.clock() - origin[0] - (self._between - origin[2])
        steps_per_epoch, steps_left = epoch_steps(p, self.cfg.accum_grad, self.dist.world_size,
                                                  self.drop_last)
        valid_every, checkpoint_every = self.cfg.valid_interval, self.cfg.checkpoint_interval
        valid_s = _mean(self._work_seconds[VALIDATION])
        checkpoint_s = _mean(self._work_seconds[CHECKPOINT])
        if at_epoch_end:
            due = checkpoint_s + tail_s
        else:
            due = (_multiples(valid_every, p.step - 1, p.step) * valid_s
                   + _multiples(checkpoint_every, p.step - 1, p.step) * checkpoint_s)
        inp = PlanInput(
            step=p.step,
            remaining_s=self.cfg.time_budget_s - self.elapsed() - due,
            sec_per_step=max(step_seconds / timed_steps, 1e-9),
            epoch_end_s=epoch_end_s,
            steps_per_epoch=steps_per_epoch,
            # 0 on an epoch's last step: its end (validation, dev WER) comes before any more.
            steps_left_in_epoch=steps_left,
            epochs_left=self.cfg.max_epochs - p.epoch + 1,
            max_steps=self.cfg.max_steps,
            valid_every=valid_every,
            valid_s=valid_s,
            checkpoint_every=checkpoint_every,
            checkpoint_s=checkpoint_s,
            quantum=self.cfg.time_budget_quantum,
        )
        plan = plan_total_steps(inp) if self.dist.is_main else None
        # Rank 0's plan everywhere (a negative total says "ends with the epochs").
        code = (-1 if plan.by_epochs else 1) * plan.total_steps if plan is not None else 0
        code = int(round(all_reduce_sum(code, self.dist)))
        total, by_epochs = abs(code), code < 0
        if total != self._planned_total:
            logger.info(
                "time budget: %.0f s left at step %d, %.3f s per step, %.1f s per epoch end, "
                "%s steps per epoch: planning %d steps%s", inp.remaining_s, p.step,
                inp.sec_per_step, epoch_end_s, steps_per_epoch or "?", total,
                " (all of max_epochs fit)" if by_epochs else "",
            )
        self._planned_total = total
        p.planned_steps = 0 if by_epochs else total
        p.plan_budget_s = self.cfg.time_budget_s
        return total
