"""Time-budgeted training: the step plan against brute force, and the trainer on a fake clock."""

import dataclasses
import itertools
import logging
import random
import re

import pytest
import torch

from asr.train.budget import SAFETY, PlanInput, StepPlan, plan_total_steps
from asr.train.optim import OptimConfig
from asr.train.state import TrainConfig
from asr.train.trainer import Trainer
from tests.train.test_trainer import ToyModel, batches


def brute_force_plan(inp: PlanInput) -> StepPlan:
    """Walks the steps one by one, paying for each, for the validations and checkpoints after it
    and for every epoch end it goes on after; a total fits when the work of stopping there fits
    too: the last epoch's end, or else the stop's checkpoint (unless the interval's holds it)."""
    available = SAFETY * inp.remaining_s
    epoch_cap = None
    if inp.steps_per_epoch > 0:
        epoch_cap = inp.step + inp.steps_left_in_epoch + (inp.epochs_left - 1) * inp.steps_per_epoch
    caps = [c for c in (epoch_cap, inp.max_steps or None) if c is not None]
    cap = min(caps) if caps else None
    by_epochs = cap is not None and cap == epoch_cap
    if cap is not None and cap <= inp.step:
        return StepPlan(inp.step, by_epochs)

    def every(n, interval):
        return interval > 0 and n % interval == 0

    def end_of_epoch(after):  # the end after step `after`: its validation unless done, and more
        return (inp.epoch_end_s + inp.checkpoint_s
                + (0.0 if every(after, inp.valid_every) else inp.valid_s))

    best, cost, into_epoch = inp.step, 0.0, inp.steps_per_epoch - inp.steps_left_in_epoch
    for total in itertools.count(inp.step + 1):
        if inp.steps_per_epoch > 0 and into_epoch == inp.steps_per_epoch:
            into_epoch = 0
            cost += end_of_epoch(total - 1)  # an epoch ends before this step: paid if taken
        cost += inp.sec_per_step
        cost += inp.valid_s * every(total, inp.valid_every)
        cost += inp.checkpoint_s * every(total, inp.checkpoint_every)
        into_epoch += 1
        if total == epoch_cap:
            stopping = end_of_epoch(total)
        else:
            stopping = 0.0 if every(total, inp.checkpoint_every) else inp.checkpoint_s
        if cost + stopping <= available + 1e-9:
            best = total
            if best == cap:
                return StepPlan(cap, by_epochs)  # a limit ends training exactly there, unrounded
        elif cost > available + 1e-9:
            break
    return StepPlan(max(best // inp.quantum * inp.quantum, inp.step))


def test_plan_matches_brute_force_on_random_inputs():
    rng = random.Random(0)
    for _ in range(3000):
        steps_per_epoch = rng.choice([0, 1, 3, 7, 20])
        inp = PlanInput(
            step=rng.randint(0, 50),
            remaining_s=rng.uniform(-5, 120),
            sec_per_step=rng.choice([0.25, 0.5, 1.0, 1.7]),
            epoch_end_s=rng.choice([0.0, 0.9, 4.0, 30.0]),
            steps_per_epoch=steps_per_epoch,
            steps_left_in_epoch=rng.randint(0, steps_per_epoch) if steps_per_epoch else 0,
            epochs_left=rng.randint(1, 6),
            max_steps=rng.choice([0, 0, 30, 80]),
            valid_every=rng.choice([0, 3, 5, 7]),
            valid_s=rng.choice([0.0, 2.0, 3.0]),
            checkpoint_every=rng.choice([0, 4, 10]),
            checkpoint_s=rng.choice([0.0, 1.5, 5.0]),
            quantum=rng.choice([1, 5, 10]),
        )
        assert plan_total_steps(inp) == brute_force_plan(inp), inp


def test_plan_examples():
    # 98% of 100 s at 1 s per step, no epochs known yet: 98 steps, or 90 in multiples of 10.
    assert plan_total_steps(PlanInput(step=0, remaining_s=100, sec_per_step=1.0)) == StepPlan(98)
    assert plan_total_steps(
        PlanInput(step=0, remaining_s=100, sec_per_step=1.0, quantum=10)) == StepPlan(90)
    # Ends of 10-step epochs cost 4 s: 70 more steps pay for the 6 ends before the last one
    # (70 + 24 <= 98); a 71st step would pay for a 7th end (71 + 28 > 98).
    inp = PlanInput(step=10, remaining_s=100, sec_per_step=1.0, epoch_end_s=4.0,
                    steps_per_epoch=10, steps_left_in_epoch=10, epochs_left=100)
    assert plan_total_steps(inp) == StepPlan(80)
    # The epoch limit ends training on an epoch's last step, not on a rounded one.
    inp = PlanInput(step=12, remaining_s=1000, sec_per_step=1.0, steps_per_epoch=10,
                    steps_left_in_epoch=8, epochs_left=2, quantum=100)
    assert plan_total_steps(inp) == StepPlan(30, by_epochs=True)
    assert plan_total_steps(PlanInput(step=40, remaining_s=-3, sec_per_step=1.0)) == StepPlan(40)
    # A 4 s validation after every 10th step: 70 steps and 7 of them fit 98 s (70 + 28).
    inp = PlanInput(step=0, remaining_s=100, sec_per_step=1.0, valid_every=10, valid_s=4.0)
    assert plan_total_steps(inp) == StepPlan(70)
    # A 3 s checkpoint after every 10th step and at the stop: 74 steps pay for 7 and the stop's
    # (74 + 24 = 98); in multiples of 10, the stop's checkpoint is the interval's (70 + 21).
    inp = PlanInput(step=0, remaining_s=100, sec_per_step=1.0, checkpoint_every=10,
                    checkpoint_s=3.0)
    assert plan_total_steps(inp) == StepPlan(74)
    assert plan_total_steps(dataclasses.replace(inp, quantum=10)) == StepPlan(70)
    # A 4 s validation after every 20th step and at each end of 10-step epochs, once at an end on
    # a validated step: 70 steps pay for those after 20, 40, 60 and the ends after 10, 30, 50
    # (70 + 24 = 94); a 71st pays for the end after 70 too (99).
    inp = PlanInput(step=0, remaining_s=100, sec_per_step=1.0, valid_every=20, valid_s=4.0,
                    steps_per_epoch=10, steps_left_in_epoch=10, epochs_left=100)
    assert plan_total_steps(inp) == StepPlan(70)
    with pytest.raises(ValueError, match="sec_per_step"):
        plan_total_steps(PlanInput(step=0, remaining_s=10, sec_per_step=0.0))
    with pytest.raises(ValueError, match="valid_every and checkpoint_every must be >= 0"):
        plan_total_steps(PlanInput(step=0, remaining_s=10, sec_per_step=1.0, valid_every=-1))


class FakeClock:
    """Seconds that pass only when the test says (per training forward and per dev WER)."""

    def __init__(self, step_cost: float = 1.0) -> None:
        self.now = 0.0  # a falsy start must not read as "not started"
        self.step_cost = step_cost

    def __call__(self) -> float:
        return self.now


class TimedToy(ToyModel):
    """Each training forward costs ``step_cost`` (times ``factor`` after ``change_after`` calls);
    the first one also pays ``start_up``, call ``stall_at`` also ``stall_s``."""

    def __init__(self, clock: FakeClock, change_after: int = 0, factor: float = 1.0,
                 start_up: float = 0.0, stall_at: int = 0, stall_s: float = 0.0):
        super().__init__()
        self.clock = clock
        self.calls = 0
        self.change_after, self.factor = change_after, factor
        self.start_up = start_up
        self.stall_at, self.stall_s = stall_at, stall_s

    def forward(self, batch, step=None):
        if self.training:
            self.calls += 1
            if self.calls == 1:
                self.clock.now += self.start_up
            if self.calls == self.stall_at:
                self.clock.now += self.stall_s
            changed = self.change_after and self.calls > self.change_after
            self.clock.now += self.clock.step_cost * (self.factor if changed else 1.0)
        return super().forward(batch, step)


def budget_run(exp_dir, clock, budget=60.0, resume=False, fail_at=0, max_epochs=50,
               calibration=3, window=200, quantum=1, log_interval=1, valid_interval=0,
               valid_s=0.0, stream=None, **timing):
    torch.manual_seed(0)
    model = TimedToy(clock, **timing)

    def train_batches(epoch, skip, skip_world_size):
        for i, b in enumerate(batches(epoch, skip), start=skip):
            if fail_at and epoch == 2 and i == fail_at:
                raise KeyboardInterrupt("killed")
            yield b

    train_batches.stream = stream  # the batch stream it names (None: none)

    def evaluate(_model):
        clock.now += 5.0
        return 12.5

    def valid_batches():
        clock.now += valid_s
        return batches(99, 0, num_batches=2)

    trainer = Trainer(
        model,
        OptimConfig(lr=1e-2, warmup_steps=3, schedule="cosine", total_steps=1000, min_lr=1e-4),
        TrainConfig(max_epochs=max_epochs, checkpoint_interval=4, log_interval=log_interval,
                    average_period=0, keep_last=0, time_budget_s=budget,
                    valid_interval=valid_interval,
                    time_budget_calibration_steps=calibration, time_budget_quantum=quantum,
                    time_budget_window=window),
        exp_dir, train_batches=train_batches, valid_batches=valid_batches,
        evaluate=evaluate, clock=clock,
    )
    if resume:
        assert trainer.resume()
    trainer.fit()
    return trainer


def test_budgeted_run_fits_its_budget_and_ends_the_schedule_on_the_plan(tmp_path):
    clock = FakeClock()
    trainer = budget_run(tmp_path, clock, budget=60.0)
    p = trainer.progress
    # 7 steps per epoch at 1 s, 5 s per epoch end: the plan made at step 3 knew no epoch costs
    # (58 steps); from the end of epoch 1 on it is 35 steps and 4 ends (55 s <= 98% of 60 s);
    # one step more would pay for a 5th end (61 s).
    assert p.planned_steps == p.step == 35
    assert [r.batches for r in p.history] == [7] * 4  # what plans count epochs by
    assert p.train_seconds <= 60.0
    assert clock.now == pytest.approx(35 + 4 * 5)
    # The cosine schedule reached its floor at the planned step, not at optim.total_steps.
    assert trainer.scheduler.total_steps == 35
    assert trainer.scheduler.get_last_lr() == pytest.approx(1e-4)


def test_epoch_limit_caps_the_plan(tmp_path):
    trainer = budget_run(tmp_path, FakeClock(), budget=1000.0, max_epochs=3)
    # The whole 3 epochs fit: training ends with them, after the last epoch's validation.
    assert trainer.progress.step == trainer.scheduler.total_steps == 21
    assert trainer.progress.planned_steps == 0
    assert len(trainer.progress.history) == 3
    assert trainer.scheduler.get_last_lr() == pytest.approx(1e-4)


def test_a_stall_no_plan_can_absorb_stops_at_the_budget(tmp_path, caplog):
    clock = FakeClock()
    with caplog.at_level(logging.WARNING, logger="asr.train.trainer"):
        trainer = budget_run(tmp_path, clock, budget=60.0, stall_at=33, stall_s=10.0)
    assert "time budget of 60 s spent" in caplog.text
    p = trainer.progress
    assert 60.0 <= clock.now <= 60.0 + 11.0  # checked after every step (log_interval 1)
    assert (tmp_path / f"checkpoint-{p.step}.pt").is_file()


def test_the_budget_stops_a_run_at_the_first_step_past_it_whatever_the_log_interval(tmp_path):
    """A 30 s stall in step 26 spends the 60 s budget that the plan made at step 23 (30 steps)
    did not foresee: the run stops right after that step, not at the next logged step or end of
    epoch (log_interval 10, as in the recipes)."""
    clock = FakeClock()
    trainer = budget_run(tmp_path, clock, budget=60.0, stall_at=26, stall_s=30.0, quantum=10,
                         log_interval=10)
    p = trainer.progress
    assert p.planned_steps == 30 and p.step == 26
    assert clock.now == pytest.approx(26 + 3 * 5 + 30)  # 26 steps, 3 epoch ends, the stall
    assert (tmp_path / "checkpoint-26.pt").is_file()


def _changing_run(tmp_path, caplog, window, change_after, factor):
    clock = FakeClock()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="asr.train.trainer"):
        trainer = budget_run(tmp_path / str(window), clock, budget=100.0, window=window,
                             change_after=change_after, factor=factor)
    return trainer, clock.now, "time budget of 100 s spent" in caplog.text


def test_plans_follow_a_late_slowdown(tmp_path, caplog):
    """Steps get 3x slower at call 45 (of ~52). Plans timed over the latest 4 steps end the run on
    its plan inside the budget; plans from the whole run's average cost lag behind it and run
    into the hard stop after the budget."""
    trainer, seconds, hard_stop = _changing_run(tmp_path, caplog, 4, 45, 3.0)
    p = trainer.progress
    assert not hard_stop and p.step == p.planned_steps == trainer.scheduler.total_steps
    assert 95.0 <= seconds <= 100.0
    _, seconds, hard_stop = _changing_run(tmp_path, caplog, 1000, 45, 3.0)
    assert hard_stop and seconds > 100.0


def test_plans_follow_steps_that_get_faster(tmp_path, caplog):
    """Steps get 3x faster at call 30: plans made every step (quantum 1) extend the run, which
    ends on its plan and uses the budget (at 1 s per step, about 57 steps would fit)."""
    trainer, seconds, hard_stop = _changing_run(tmp_path, caplog, 4, 30, 1 / 3)
    p = trainer.progress
    assert not hard_stop and p.step == p.planned_steps == trainer.scheduler.total_steps > 70
    assert 95.0 <= seconds <= 100.0


def test_resumed_budgeted_run_continues_the_plan_and_the_clock(tmp_path):
    full = budget_run(tmp_path / "full", FakeClock())
    clock = FakeClock()
    with pytest.raises(KeyboardInterrupt):
        budget_run(tmp_path / "resumed", clock, fail_at=6)  # killed in epoch 2, after step 12
    clock.now += 500.0  # time between the kill and the restart does not count
    torch.manual_seed(12345)
    resumed = budget_run(tmp_path / "resumed", clock, resume=True)
    assert resumed.progress.step == resumed.progress.planned_steps == full.progress.step
    assert resumed.progress.train_seconds == pytest.approx(full.progress.train_seconds)
    for (name, a), (_, b) in zip(full.model.state_dict().items(),
                                 resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_start_up_cost_of_the_first_steps_is_not_taken_for_the_step_cost(tmp_path):
    # The first step pays 40 s of start-up. Timing from step 2 on (a fifth of the 10 calibration
    # steps) measures 1 s per step: after the 40 s, 35 steps and 4 epoch ends fit 98% of the
    # 100 s budget (as 35 did in 60 s without start-up). Counting the start-up as step cost
    # (6.7 s per step at epoch 1's end) plans 21 steps and leaves half the budget unused.
    clock = FakeClock()
    trainer = budget_run(tmp_path, clock, budget=100.0, start_up=40.0, calibration=10)
    assert trainer.progress.step == trainer.progress.planned_steps == 35
    assert clock.now == pytest.approx(40 + 35 + 4 * 5)


def test_a_raised_budget_continues_a_run_that_ended_on_its_plan(tmp_path, caplog):
    """A run that ended on the plan for 60 s (35 steps) and is resumed with 120 s trains on, as
    Lightning's / NeMo's ``max_time`` does: the stored plan was for 60 s, so it plans again, for
    120 s summed over both runs, and the cosine schedule ends on the new plan. Resumed with the
    budget it was planned for, a finished run stays finished."""
    clock = FakeClock()
    first = budget_run(tmp_path, clock, budget=60.0)
    assert first.progress.step == first.progress.planned_steps == 35
    assert first.progress.plan_budget_s == 60.0
    same = budget_run(tmp_path, clock, budget=60.0, resume=True)
    assert same.progress.step == 35 and clock.now == pytest.approx(35 + 4 * 5)
    with caplog.at_level(logging.INFO, logger="asr.train.budget"):
        raised = budget_run(tmp_path, clock, budget=120.0, resume=True)
    assert "the plan of 35 steps was made for 60 s: planning again" in caplog.text
    p = raised.progress
    assert p.step == p.planned_steps == raised.scheduler.total_steps > 35
    assert p.plan_budget_s == 120.0
    assert 0.9 * 120.0 <= p.train_seconds <= 120.0
    assert raised.scheduler.get_last_lr() == pytest.approx(1e-4)


def test_a_raised_budget_in_another_batch_stream_ends_the_epoch_its_plan_ended_on(tmp_path,
                                                                                 caplog):
    """The run planned for 60 s stops on epoch 5's last step (35), its end left out by design.
    Resumed with 120 s and a sampler of another stream (other buckets), the checkpoint's
    position is the end of epoch 5's stream: the epoch ends at step 35 and epoch 6 starts in the
    new stream. Epoch 5 was trained again from its start (ended at step 42), the end told by a
    look at the new stream alone."""
    clock = FakeClock()
    first = budget_run(tmp_path, clock, budget=60.0, stream="buckets A")
    p = first.progress
    assert (p.step, p.epoch, p.batches_in_epoch) == (35, 5, 7)
    with caplog.at_level(logging.WARNING, logger="asr.train.trainer"):
        raised = budget_run(tmp_path, clock, budget=120.0, resume=True, stream="buckets B")
    assert "trained again" not in caplog.text
    history = raised.progress.history
    assert [r.step for r in history[:6]] == [7, 14, 21, 28, 35, 42]
    assert raised.progress.epoch_stream == "buckets B"


def _slow_saves(monkeypatch, clock: FakeClock, seconds: float) -> None:
    """Every checkpoint write takes ``seconds`` of the fake clock."""
    import asr.train.trainer as trainer_module

    real_save = trainer_module.atomic_torch_save

    def slow_save(obj, path):
        clock.now += seconds
        real_save(obj, path)

    monkeypatch.setattr(trainer_module, "atomic_torch_save", slow_save)


def test_validations_and_checkpoints_between_steps_do_not_swing_the_plan(tmp_path, caplog,
                                                                        monkeypatch):
    """1 s steps, a 3 s validation after every 5th step and a 2 s checkpoint write after every
    4th (and at each end of epoch, after the 5 s dev WER and the 3 s validation). Timed over the
    latest 4 steps with the work between them, a step cost 1.5 s to 2.75 s as the window held
    checkpoints or validations, and the plans made every step jumped between 41 and 57 steps.
    Costed apart, a step costs 1 s in every plan, and from the first plan that knows every
    cost (at epoch 1's end) the plan is 44 steps, ended on inside the budget. The end of epoch
    5 reuses the validation of step 35: charged there twice, the plans said 43 steps until that
    end, and 44 after it."""
    clock = FakeClock()
    _slow_saves(monkeypatch, clock, 2.0)
    with caplog.at_level(logging.INFO, logger="asr.train.budget"):
        trainer = budget_run(tmp_path, clock, budget=150.0, window=4, valid_interval=5,
                             valid_s=3.0)
    plans = [(int(m[1]), float(m[2]), int(m[3])) for m in re.finditer(
        r"time budget: \S+ s left at step (\d+), (\S+) s per step,.* planning (\d+) steps",
        caplog.text)]
    assert {cost for _, cost, _ in plans} == {1.0}
    assert [(step, total) for step, _, total in plans if step >= 7] == [(7, 44)]
    p = trainer.progress
    assert p.step == p.planned_steps == 44
    assert "time budget of 150 s spent" not in caplog.text
    assert 0.9 * 150.0 <= clock.now <= 150.0


def test_the_plan_leaves_time_for_the_checkpoint_of_its_stop(tmp_path, monkeypatch):
    """5 s checkpoint writes (every 4th step and at each end of epoch), 7 steps per epoch: 16
    steps fit 60 s (16 + 4 interval checkpoints + 2 ends of 10 s = 56 s); 17 would need the
    stop's own checkpoint as well (62 s). Unplanned, that write ran the run past its budget:
    19 steps ended at 64 s."""
    clock = FakeClock()
    _slow_saves(monkeypatch, clock, 5.0)
    trainer = budget_run(tmp_path, clock, budget=60.0)
    p = trainer.progress
    assert p.step == p.planned_steps == 16
    assert clock.now == pytest.approx(56.0)


@pytest.mark.parametrize("before, after, expected_total", [
    # 20 global batches an epoch. 2 -> 1 processes: 11 of epoch 2's left after step 15, then 20
    # of epoch 3 (the steps that epoch 1 took, 10, gave 15 + 1 + 10 = 26, half of epoch 3).
    (2, 1, 15 + 11 + 20),
    # 1 -> 2: 5 steps of 2 batches left after step 29, then 10 (the 20 steps of epoch 1 gave
    # 29 + 15 + 20 = 64: a schedule that never reaches its floor).
    (1, 2, 29 + 5 + 10),
])
def test_a_run_resumed_with_another_world_size_plans_its_epochs_in_its_own_steps(
        monkeypatch, before, after, expected_total):
    """A checkpoint of 2 (or 1) processes, resumed by 1 (or 2) in epoch 2 of 3 with a budget
    that fits them all: the plan ends with the epochs, on the step the last epoch ends at in
    steps of the new world size (each step takes one batch of each process)."""
    import asr.train.budget as budget_module
    from asr.train.distributed import DistInfo
    from asr.train.state import EpochRecord, Progress

    # rank 0 of a job of `after` processes: its sums are its own (the plan is rank 0's)
    monkeypatch.setattr(budget_module, "all_reduce_sum", lambda value, _dist: value)
    epoch_steps = 20 // before
    taken = 8  # global batches of epoch 2 when the checkpoint was written
    progress = Progress(epoch=2, step=epoch_steps + taken // before, batches_in_epoch=taken,
                        epoch_world_size=before, history=[EpochRecord(1, 1.0, step=epoch_steps,
                                                                      batches=20)])
    clock = FakeClock()
    cfg = TrainConfig(max_epochs=3, time_budget_s=1e6, time_budget_calibration_steps=1)
    budget = budget_module.TimeBudget(cfg, DistInfo(rank=0, world_size=after), clock)
    budget.start(progress)
    clock.now += 1.0  # one step of this run: `after` global batches
    progress.step += 1
    progress.batches_in_epoch += after
    assert budget.after_step(progress, spent=False) == expected_total
    assert progress.planned_steps == 0  # all of max_epochs fit: they end the run


@pytest.mark.parametrize(("into", "world_size", "accum_grad", "left"),
                         [(6, 3, 1, 3), (6, 2, 1, 3), (6, 3, 2, 2), (12, 3, 1, 1), (13, 3, 1, 0)])
def test_the_steps_left_count_the_batches_split_among_the_ranks(into, world_size, accum_grad,
                                                                  left):
    """An epoch of 13 global batches of 2 processes resumed after ``into`` of them on
    ``world_size`` processes: the batches that fill no round of another number of them are
    split among them, one more step (:func:`asr.data.sampler.resumed_share`), which the plan
    left out. The 2 processes that sampled it split none (lhotse's drop_last)."""
    from asr.train.budget import epoch_steps
    from asr.train.state import EpochRecord, Progress

    progress = Progress(epoch=2, step=20, batches_in_epoch=into, epoch_world_size=2,
                        history=[EpochRecord(1, 1.0, step=10, batches=13)])
    assert epoch_steps(progress, accum_grad, world_size)[1] == left


@pytest.mark.parametrize(("into", "epoch_world_size", "expected"),
                         [(0, 3, (3, 3)), (3, 3, (3, 2)), (4, 2, (3, 2))])
def test_an_epoch_sampled_for_its_processes_counts_only_their_full_rounds(
        into, epoch_world_size, expected):
    """Epoch 1 took 10 global batches of 2 processes; the run goes on with 3. An epoch sampled
    for the 3 (a new one, or one they began) gives each the batches of its full rounds
    (lhotse's drop_last, the default): 3 steps, not the 4 of a ceiling that only the batches a
    resumed epoch of another world size splits among them take (there: 6 left, 2 steps)."""
    from asr.train.budget import epoch_steps
    from asr.train.state import EpochRecord, Progress

    progress = Progress(epoch=2, step=5, batches_in_epoch=into, epoch_world_size=epoch_world_size,
                        history=[EpochRecord(1, 1.0, step=5, batches=10)])
    assert epoch_steps(progress, 1, 3) == expected
