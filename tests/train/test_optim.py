"""Learning-rate schedules: hand values, resumable state, and a schedule counted in audio that
gives every number of processes the same learning rate at the same point of an epoch."""

from __future__ import annotations

import pytest
import torch

from asr.train.optim import OptimConfig, Scheduler, build_optimizer, lr_factor


def test_schedules_and_resumable_scheduler():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, schedule="noam")
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 39) == pytest.approx(0.5)
    cos = OptimConfig(lr=1e-3, warmup_steps=0, schedule="cosine", total_steps=100, min_lr=1e-5)
    assert lr_factor(cos, 99) == pytest.approx(0.01)
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.weight_decay, 0.0]
    sched = Scheduler(opt, cfg)
    for _ in range(15):
        sched.step()
    other = Scheduler(build_optimizer(model, cfg), cfg)
    other.load_state_dict(sched.state_dict())
    assert other.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_eden_decays_with_steps_and_epochs():
    cfg = OptimConfig(lr=1e-3, warmup_steps=0, schedule="eden", lr_batches=100, lr_epochs=2)
    assert lr_factor(cfg, 0) == pytest.approx(((1 + 100**2) / 100**2) ** -0.25)
    assert lr_factor(cfg, 99) == pytest.approx(2**-0.25)
    assert lr_factor(cfg, 99, epoch=2) == pytest.approx(2**-0.5)
    warm = OptimConfig(lr=1e-3, warmup_steps=10, schedule="eden")
    assert lr_factor(warm, 4) == pytest.approx(0.5)


def _epoch_curve(cfg: OptimConfig, processes: int, epochs: int = 3) -> list[float]:
    """The lr at every twelfth of an epoch when each of ``processes`` processes trains on 100 s
    batches of a 4800 s epoch (the global batch grows with the processes)."""
    batch_seconds = 100.0 * processes
    steps_per_epoch = int(4800 / batch_seconds)
    sched = Scheduler(build_optimizer(torch.nn.Linear(2, 2), cfg), cfg,
                      cfg.step_scale(batch_seconds))
    curve = []
    for epoch in range(epochs):
        sched.set_epoch(epoch)
        for step in range(steps_per_epoch):
            if step % (steps_per_epoch // 12) == 0:
                curve.append(sched.get_last_lr())
            sched.step()
    return curve


@pytest.mark.parametrize("schedule", ["eden", "noam", "cosine"])
def test_lr_per_epoch_is_the_same_for_1_2_and_4_processes(schedule):
    cfg = OptimConfig(lr=1e-3, schedule=schedule, warmup_steps=20, total_steps=150,
                      lr_batches=30, lr_epochs=1.5, reference_batch_seconds=100.0)
    one, two, four = (_epoch_curve(cfg, n) for n in (1, 2, 4))
    assert len(one) == 36
    assert two == pytest.approx(one, rel=1e-12) and four == pytest.approx(one, rel=1e-12)
    assert max(one) > 0.8e-3 and one[-1] < 0.8 * max(one)  # warms up, then anneals
    # counted in optimizer steps instead, 4 processes would warm up and decay over 4x the audio
    in_steps = OptimConfig(**{**cfg.__dict__, "reference_batch_seconds": 0.0})
    assert _epoch_curve(in_steps, 4) != pytest.approx(_epoch_curve(in_steps, 1), rel=1e-3)


def test_scheduler_state_holds_the_epoch():
    cfg = OptimConfig(lr=1e-3, schedule="eden", warmup_steps=0, lr_epochs=1.0)
    sched = Scheduler(build_optimizer(torch.nn.Linear(2, 2), cfg), cfg, step_scale=2.0)
    sched.set_epoch(3)
    sched.step()
    other = Scheduler(build_optimizer(torch.nn.Linear(2, 2), cfg), cfg, step_scale=2.0)
    other.load_state_dict(sched.state_dict())
    assert other.get_last_lr() == sched.get_last_lr() and other.epoch == 3
    with pytest.raises(ValueError, match="reference_batch_seconds"):
        OptimConfig(reference_batch_seconds=-1.0)


def test_a_resumed_run_takes_a_changed_cosine_horizon_and_keeps_a_time_budgets_plan():
    """``--set optim.total_steps=100`` on resuming a run begun with 10: the checkpoint's horizon
    replaced the new one, so the run decayed to the old end (the config's other schedule
    values, lr and warmup, did take effect). A horizon re-planned by a time budget is the run's
    own and is restored."""
    def scheduler(total_steps):
        cfg = OptimConfig(lr=1e-2, schedule="cosine", warmup_steps=2, total_steps=total_steps)
        return Scheduler(build_optimizer(torch.nn.Linear(2, 2), cfg), cfg), cfg

    old, _ = scheduler(10)
    for _ in range(4):
        old.step()
    longer, cfg = scheduler(100)
    longer.load_state_dict(old.state_dict())
    assert longer.get_last_lr() == pytest.approx(1e-2 * lr_factor(cfg, 4))
    assert longer.total_steps == 100

    old.set_total_steps(8)  # a time budget's plan
    planned, _ = scheduler(100)
    planned.load_state_dict(old.state_dict())
    assert planned.total_steps == 8
    assert planned.get_last_lr() == pytest.approx(old.get_last_lr())


@pytest.mark.parametrize("schedule", ["noam", "cosine"])
def test_resuming_with_another_number_of_processes_continues_the_schedule_in_audio(schedule):
    """30 steps of 100 s (1 process), then resumed with 2 processes (200 s steps): the schedule
    is at 30 reference steps of audio, not 60 (the steps taken re-counted at the new batch), and
    reaches the cosine floor after the same audio as a run on 1 process."""
    cfg = OptimConfig(lr=1e-3, schedule=schedule, warmup_steps=20, total_steps=150,
                      reference_batch_seconds=100.0)

    def scheduler(seconds):
        return Scheduler(build_optimizer(torch.nn.Linear(2, 2), cfg), cfg, cfg.step_scale(seconds))

    one, two = scheduler(100.0), scheduler(200.0)
    for _ in range(30):
        one.step()
    two.load_state_dict(one.state_dict())
    assert two.get_last_lr() == pytest.approx(one.get_last_lr(), rel=1e-12)
    for _ in range(60):
        one.step()
        one.step()
        two.step()
        assert two.get_last_lr() == pytest.approx(one.get_last_lr(), rel=1e-12)
    again = scheduler(100.0)  # and back to 1 process
    again.load_state_dict(two.state_dict())
    assert again.get_last_lr() == pytest.approx(one.get_last_lr(), rel=1e-12)
    if schedule == "cosine":
        assert two.get_last_lr() == pytest.approx(cfg.min_lr)


def test_cosine_decays_from_one_to_the_floor_after_warm_up():
    """Hand values: 1 at the end of warm-up, halfway between 1 and the floor at mid-horizon, the
    floor at and past the horizon (it never climbs back)."""
    cfg = OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=10, total_steps=110, min_lr=1e-4)
    assert lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 59) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(cfg, 109) == pytest.approx(0.1)
    assert lr_factor(cfg, 500) == pytest.approx(0.1)


def test_weight_decay_goes_to_weight_matrices_only_and_the_optimizer_is_the_configured_one():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = build_optimizer(model, OptimConfig(weight_decay=0.1)).param_groups
    assert [p is model[0].weight for p in decay["params"]] == [True]
    assert {id(p) for p in no_decay["params"]} == {
        id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert type(build_optimizer(model, OptimConfig(optimizer="adamw"))) is torch.optim.AdamW
    assert type(build_optimizer(model, OptimConfig(optimizer="adam"))) is torch.optim.Adam


def test_older_scheduler_states_keep_their_horizon_in_optimizer_steps():
    """A state saved before ``planned`` / ``total_reference`` existed holds ``total_steps`` in
    optimizer steps at the resuming run's scale: it stays the run's horizon."""
    cfg = OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=0, total_steps=1000)
    sched = Scheduler(build_optimizer(torch.nn.Linear(2, 2), cfg), cfg, step_scale=2.0)
    sched.load_state_dict({"step_count": 10, "total_steps": 40})
    assert sched.planned and sched.total_steps == 40 and sched.reference_steps == 20
    assert sched.get_last_lr() == pytest.approx(1e-3 * lr_factor(cfg, 20, total_steps=80))


def test_a_new_epoch_sets_eden_s_learning_rate_at_once():
    cfg = OptimConfig(lr=1e-3, schedule="eden", warmup_steps=0, lr_epochs=1.0)
    sched = Scheduler(build_optimizer(torch.nn.Linear(2, 2), cfg), cfg)
    sched.set_epoch(1)
    assert sched.get_last_lr() == pytest.approx(1e-3 * lr_factor(cfg, 0, epoch=1))


def test_a_budget_plan_after_resuming_at_another_scale_ends_where_it_says():
    """``set_total_steps(N)`` puts the horizon at optimizer step N of this run, also when the
    steps before the resume counted at another scale."""
    cfg = OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=0, total_steps=1000,
                      reference_batch_seconds=100.0)
    one = Scheduler(build_optimizer(torch.nn.Linear(2, 2), cfg), cfg, cfg.step_scale(100.0))
    for _ in range(10):
        one.step()
    two = Scheduler(build_optimizer(torch.nn.Linear(2, 2), cfg), cfg, cfg.step_scale(200.0))
    two.load_state_dict(one.state_dict())
    two.set_total_steps(30)
    assert two.total_steps == 30
    for _ in range(20):
        two.step()
    assert two.get_last_lr() == pytest.approx(cfg.min_lr)
