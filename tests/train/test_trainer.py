"""Trainer: exact resume after a stop mid-epoch, DDP gradient equivalence, logs and plot."""

import errno
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn
from torchrun_helpers import UP_LINE, ScriptRuns, run_scripts, run_torchrun

from asr.checkpoints.io import CheckpointError, list_checkpoints, safe_torch_load
from asr.constants import PER_RANK
from asr.train.distributed import DistInfo
from asr.train.optim import OptimConfig, lr_factor
from asr.train.preemption import TrainingPreempted
from asr.train.state import TrainConfig
from asr.train.trainer import Trainer
from asr.types import Batch


@dataclass
class _Out:
    loss: torch.Tensor
    num_utterances: int
    metrics: dict = field(default_factory=dict)


class ToyModel(nn.Module):
    """Regresses per-utterance mean features onto token counts; dropout exercises the RNG."""

    def __init__(self):
        super().__init__()
        self.noise = 0.01
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 1))
        self.steps_seen: list[int | None] = []  # the step each training forward was given

    def forward(self, batch: Batch, step: int | None = None) -> _Out:
        if self.training:
            self.steps_seen.append(step)
        mask = (torch.arange(batch.feats.shape[1])[None] < batch.feat_lens[:, None]).float()
        pooled = (batch.feats * mask[..., None]).sum(1) / batch.feat_lens[:, None].float()
        noise = self.noise * torch.randn_like(pooled)  # stands in for on-the-fly augmentation
        pred = self.net(pooled + noise).squeeze(-1)
        loss = ((pred - batch.token_lens.float()) ** 2).sum()
        return _Out(loss, batch.batch_size, {"sq_err": float(loss.detach())})


def make_batch(generator: torch.Generator, batch_size: int = 3) -> Batch:
    feat_lens = torch.randint(3, 8, (batch_size,), generator=generator)
    feats = torch.randn(batch_size, int(feat_lens.max()), 4, generator=generator)
    token_lens = torch.randint(1, 4, (batch_size,), generator=generator)
    tokens = torch.ones(batch_size, int(token_lens.max()), dtype=torch.long)
    return Batch(feats, feat_lens, tokens, token_lens)


def batches(epoch: int, skip: int, skip_world_size: int = 1, num_batches: int = 7):
    """The epoch's batches of every rank after ``skip`` global batches of ``skip_world_size``
    ranks (each rank gets the same batches here)."""
    g = torch.Generator().manual_seed(1000 + epoch)  # the sampler's order is a function of epoch
    for i in range(num_batches):
        b = make_batch(g)
        if i >= skip // skip_world_size:
            yield b


def run(exp_dir, max_steps=0, resume=False, checkpoint_interval=2, cpu_amp=False, accum_grad=1,
        max_epochs=2, make_model=ToyModel, evaluate=lambda m: 12.5):
    torch.manual_seed(0)
    model = make_model()
    trainer = Trainer(
        model,
        OptimConfig(lr=1e-2, warmup_steps=3),
        TrainConfig(max_epochs=max_epochs, max_steps=max_steps,
                    checkpoint_interval=checkpoint_interval, log_interval=1, average_period=2,
                    keep_last=0, cpu_amp=cpu_amp, accum_grad=accum_grad),
        exp_dir,
        train_batches=batches,
        valid_batches=lambda: batches(99, 0, num_batches=2),
        evaluate=evaluate,
    )
    if resume:
        assert trainer.resume()
    trainer.fit()
    return trainer


def test_stop_mid_epoch_and_resume_equals_uninterrupted(tmp_path):
    full = run(tmp_path / "full")
    partial = run(tmp_path / "resumed", max_steps=3 + 7 - 7 + 2)  # stops at step 5: mid epoch 1
    assert partial.progress.step == 5 and partial.progress.epoch == 1
    # A fresh process state: scramble the global RNG before resuming.
    torch.manual_seed(12345)
    resumed = run(tmp_path / "resumed", resume=True)
    assert resumed.progress.step == full.progress.step == 14
    for (name, a), (_, b) in zip(full.model.state_dict().items(),
                                 resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(
        full.averager.average["net.0.weight"], resumed.averager.average["net.0.weight"]
    )
    assert [r.train_loss for r in full.progress.history] == [
        r.train_loss for r in resumed.progress.history
    ]


def test_accumulation_does_not_cross_an_epoch_end_so_resuming_there_is_exact(tmp_path):
    """7 batches per epoch, 2 per step: the epoch's last step takes its 7th batch alone, instead
    of carrying its gradients into epoch 2, past the epoch checkpoint, which holds none."""
    full = run(tmp_path / "full", accum_grad=2, checkpoint_interval=0)
    assert [r.step for r in full.progress.history] == [4, 8]
    run(tmp_path / "resumed", accum_grad=2, checkpoint_interval=0, max_epochs=1)
    torch.manual_seed(12345)
    resumed = run(tmp_path / "resumed", accum_grad=2, checkpoint_interval=0, resume=True)
    assert resumed.progress.step == 8
    for (name, a), (_, b) in zip(full.model.state_dict().items(),
                                 resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_checkpoint_without_its_world_size_resumes_as_before_with_a_warning(tmp_path,
                                                                               caplog):
    """Checkpoints written before the world size was recorded count one process' batches: the
    resumed run skips that many of each of its own (as it did), and says that a checkpoint of
    another number of processes may repeat or leave out cuts."""
    run(tmp_path, max_steps=2, checkpoint_interval=0)  # 2 batches into epoch 1
    (path,) = [p for _, p in list_checkpoints(tmp_path)]
    state = torch.load(path, weights_only=False)
    assert (state["progress"]["batches_in_epoch"], state["progress"]["epoch_world_size"]) == (2, 1)
    del state["progress"]["epoch_world_size"]
    state["rng_per_rank"] *= 2  # as if written by 2 processes
    torch.save(state, path)
    calls = []

    def recorded(epoch, skip, skip_world_size):
        calls.append((epoch, skip, skip_world_size))
        return batches(epoch, skip, skip_world_size)

    trainer = Trainer(ToyModel(), OptimConfig(), TrainConfig(max_epochs=1, checkpoint_interval=0),
                      tmp_path, recorded)
    with caplog.at_level(logging.WARNING, logger="asr.train.trainer"):
        assert trainer.resume()
    assert "before checkpoints recorded their world size" in caplog.text
    assert "cuts of epoch 1 may be trained on twice or not at all" in caplog.text
    # no rank's RNG state is this process' own: they restart from the seed, said so
    assert "written by 2 processes, resuming with 1: RNG streams restart" in caplog.text
    trainer.fit()
    assert calls[0] == (1, 2, 1)
    assert trainer.progress.step == 7


class _NamedStream:
    """A batch source that names the stream it samples (as EpochBatches does) and records its
    calls."""

    def __init__(self, stream: str, unrecorded_stream: str | None = None) -> None:
        self.stream = stream
        self.unrecorded_stream = stream if unrecorded_stream is None else unrecorded_stream
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, epoch, skip, skip_world_size):
        self.calls.append((epoch, skip, skip_world_size))
        return batches(epoch, skip, skip_world_size)


@pytest.mark.parametrize(("recorded", "source", "restarts"), [
    ("buckets A", _NamedStream("buckets A"), False),
    ("buckets A", _NamedStream("one bucket"), True),
    (None, _NamedStream("buckets A"), False),  # an older checkpoint, the same stream then
    (None, _NamedStream("one bucket", unrecorded_stream="buckets []"), True),
])
def test_an_epoch_resumed_in_another_batch_stream_is_trained_again_from_its_start(
        tmp_path, caplog, recorded, source, restarts):
    """A checkpoint's batches_in_epoch is a position in the stream its sampler drew (a tiny
    corpus was sampled with lhotse's bucketing sampler, now with one bucket): skipping that
    many batches of another stream silently trained some cuts twice and others not at all. The
    checkpoint records the stream; resumed in another, the epoch starts again, with a warning
    naming the checkpoint."""
    run(tmp_path, max_steps=2, checkpoint_interval=0)  # 2 batches into epoch 1
    (path,) = [p for _, p in list_checkpoints(tmp_path)]
    state = torch.load(path, weights_only=False)
    assert state["progress"]["epoch_stream"] is None  # run()'s source names no stream
    state["progress"]["epoch_stream"] = recorded
    torch.save(state, path)
    trainer = Trainer(ToyModel(), OptimConfig(), TrainConfig(max_epochs=1, checkpoint_interval=0),
                      tmp_path, source)
    with caplog.at_level(logging.WARNING, logger="asr.train.trainer"):
        assert trainer.resume()
    assert (f"{path} was written 2 batches into epoch 1 of a batch stream sampled with "
            in caplog.text) == restarts
    trainer.fit()
    assert source.calls[0] == ((1, 0, 1) if restarts else (1, 2, 1))
    assert trainer.progress.step == (2 + 7 if restarts else 7)
    assert trainer.progress.epoch_stream == source.stream


@pytest.mark.parametrize(("max_steps", "interval"), [(7, 0), (0, 0), (0, 7)])
def test_a_stop_on_an_epochs_last_step_resumed_in_another_stream_only_ends_the_epoch(
        tmp_path, caplog, max_steps, interval):
    """max_steps on epoch 1's last step, killed after the stop's checkpoint and before the
    epoch's end. Resumed with a source of another stream (re-run as it was, or continued with
    no step limit), that checkpoint's position is the end of the epoch's recorded stream: only
    the end is owed. The epoch was trained again from its start (to step 14; re-run as it was,
    not even ended), because the end was told by a look at the current stream alone. An
    interval checkpoint of that step records the end itself: the stop writes no other."""

    def trainer(source, max_steps, evaluate):
        torch.manual_seed(0)
        return Trainer(ToyModel(), OptimConfig(),
                       TrainConfig(max_epochs=1, max_steps=max_steps, checkpoint_interval=interval),
                       tmp_path, source, evaluate=evaluate)

    def killed(model):
        raise Killed

    with pytest.raises(Killed):
        trainer(_NamedStream("buckets A"), 7, killed).fit()
    (path,) = [p for _, p in list_checkpoints(tmp_path)]
    progress = safe_torch_load(path)["progress"]
    assert (progress["batches_in_epoch"], progress["epoch_batches"]) == (7, 7)
    assert progress["history"] == []
    source = _NamedStream("one bucket")
    resumed = trainer(source, max_steps, lambda model: 12.5)
    with caplog.at_level(logging.WARNING, logger="asr.train.trainer"):
        assert resumed.resume()
    assert "trained again" not in caplog.text
    p = resumed.fit()
    assert [(r.epoch, r.step, r.batches) for r in p.history] == [(1, 7, 7)]
    assert source.calls == []  # no batch of the new stream is drawn for the old epoch
    assert (p.epoch, p.batches_in_epoch, p.epoch_batches) == (2, 0, None)


@pytest.mark.parametrize("kind", ["preemption", "interval"])
def test_every_checkpoint_of_an_epochs_last_step_records_the_epochs_end(tmp_path, caplog,
                                                                        outer_handlers, kind):
    """A SIGTERM in epoch 1's last step (its checkpoint is a preemption's), or an interval
    checkpoint of that step killed in the end's dev WER: the checkpoint records the end of the
    epoch's stream, so a run resumed in another stream only ends the epoch. Only a stop by
    max_steps looked for the end: these two trained epoch 1 again from its start (to step 14)."""

    def trainer(source, model, interval, evaluate):
        torch.manual_seed(0)
        return Trainer(model, OptimConfig(),
                       TrainConfig(max_epochs=1, checkpoint_interval=interval), tmp_path, source,
                       evaluate=evaluate)

    def killed(model):
        raise Killed

    if kind == "preemption":
        with pytest.raises(TrainingPreempted):
            trainer(_NamedStream("buckets A"), SignalsAt(7), 0, killed).fit()
    else:
        with pytest.raises(Killed):
            trainer(_NamedStream("buckets A"), ToyModel(), 7, killed).fit()
    (path,) = [p for _, p in list_checkpoints(tmp_path)]
    progress = safe_torch_load(path)["progress"]
    assert (progress["step"], progress["batches_in_epoch"], progress["epoch_batches"]) == (7, 7, 7)
    assert progress["history"] == []
    source = _NamedStream("one bucket")
    resumed = trainer(source, ToyModel(), 0, lambda model: 12.5)
    with caplog.at_level(logging.WARNING, logger="asr.train.trainer"):
        assert resumed.resume()
    assert "trained again" not in caplog.text
    p = resumed.fit()
    assert [(r.epoch, r.step, r.batches) for r in p.history] == [(1, 7, 7)]
    assert source.calls == []


def test_a_stop_checkpoint_without_the_epochs_end_looks_for_it_in_the_current_stream(tmp_path):
    """A checkpoint written before Progress.epoch_batches was kept, at a max_steps stop on epoch
    1's last step: the resumed run tells the end still owed by a look at the current stream, as
    it did."""

    def trainer(source, evaluate):
        torch.manual_seed(0)
        return Trainer(ToyModel(), OptimConfig(),
                       TrainConfig(max_epochs=1, max_steps=7, checkpoint_interval=0),
                       tmp_path, source, evaluate=evaluate)

    def killed(model):
        raise Killed

    with pytest.raises(Killed):
        trainer(_NamedStream("buckets A"), killed).fit()
    (path,) = [p for _, p in list_checkpoints(tmp_path)]
    state = torch.load(path, weights_only=False)
    del state["progress"]["epoch_batches"]
    torch.save(state, path)
    source = _NamedStream("buckets A")
    resumed = trainer(source, lambda model: 12.5)
    assert resumed.resume() and resumed.progress.epoch_batches is None
    p = resumed.fit()
    assert source.calls == [(1, 7, 1)]
    assert [(r.epoch, r.step, r.batches) for r in p.history] == [(1, 7, 7)]


class BadBatch(Exception):
    """A batch that fails to load (a bad feature file)."""


@pytest.mark.parametrize(("max_steps", "interval"), [(0, 4), (4, 0)])
def test_a_batch_that_fails_to_load_after_a_checkpoints_look_does_not_lose_the_checkpoint(
        tmp_path, max_steps, interval):
    """The 5th batch fails to load. The checkpoint of step 4 (the interval's, or a max_steps
    stop's) looks for it first: the checkpoint is still written, and the error is raised where
    the batch is taken (not at all by the stop, which takes none: the resumed run meets it).
    The stop's look raised the error before the stop's checkpoint was written: no checkpoint."""

    def failing(epoch, skip, skip_world_size):
        for i, batch in enumerate(batches(epoch, skip), start=skip):
            if i == 4:
                raise BadBatch(f"epoch {epoch} batch {i}")
            yield batch

    trainer = Trainer(ToyModel(), OptimConfig(),
                      TrainConfig(max_epochs=1, max_steps=max_steps,
                                  checkpoint_interval=interval),
                      tmp_path, failing)
    if max_steps:
        assert trainer.fit().step == 4
    else:
        with pytest.raises(BadBatch, match="epoch 1 batch 4"):
            trainer.fit()
    progress = safe_torch_load(tmp_path / "checkpoint-4.pt")["progress"]
    assert (progress["step"], progress["batches_in_epoch"], progress["epoch_batches"]) == (
        4, 4, None)


def test_resuming_another_models_checkpoint_names_the_file(tmp_path):
    run(tmp_path, max_steps=2)
    wider = ToyModel()
    wider.net[0] = nn.Linear(4, 24)
    wider.net[3] = nn.Linear(24, 1)
    trainer = Trainer(wider, OptimConfig(lr=1e-2), TrainConfig(max_epochs=1), tmp_path,
                      train_batches=batches)
    with pytest.raises(CheckpointError, match=r"cannot resume from .*checkpoint-2\.pt.*net\.0"):
        trainer.resume()


@pytest.mark.parametrize("content", [[1, 2], torch.ones(3), None, {"model": [1]}],
                         ids=["list", "tensor", "none", "model-list"])
def test_resuming_a_file_that_is_no_training_checkpoint_names_it(tmp_path, content):
    """A weights-only file that is not a checkpoint's dict (a bare tensor, a list...) failed
    with a TypeError or IndexError from indexing it, naming no file."""
    torch.save(content, tmp_path / "checkpoint-3.pt")
    trainer = Trainer(ToyModel(), OptimConfig(lr=1e-2), TrainConfig(max_epochs=1), tmp_path,
                      train_batches=batches)
    with pytest.raises(CheckpointError, match=r"checkpoint-3\.pt: not a training checkpoint"):
        trainer.resume()


def test_an_unreadable_newest_checkpoint_says_how_to_resume_from_the_one_before(tmp_path):
    """A newest checkpoint damaged after it was written (a disk error, a partial copy): resume
    refuses it, naming it, and says which earlier one resuming would take once it is moved."""
    run(tmp_path, max_steps=4)  # checkpoints at steps 2 and 4
    newest = tmp_path / "checkpoint-4.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    trainer = Trainer(ToyModel(), OptimConfig(lr=1e-2), TrainConfig(max_epochs=1), tmp_path,
                      train_batches=batches)
    with pytest.raises(CheckpointError, match=r"checkpoint-4\.pt \(100 bytes\).*; to resume "
                       r"from the checkpoint before it \(checkpoint-2\.pt\), move checkpoint-4"):
        trainer.resume()
    with pytest.raises(CheckpointError) as named:  # a file asked for by name: no hint
        trainer.resume(newest)
    assert "to resume from" not in str(named.value)


def test_resume_names_an_epoch_left_unnamed_and_removes_dead_writers_temporaries(tmp_path):
    """A run killed after writing its epoch-end checkpoint but before linking ``epoch-E.pt``,
    and one killed inside a checkpoint write: resuming repairs both."""
    run(tmp_path, max_epochs=1, checkpoint_interval=0)
    (tmp_path / "epoch-1.pt").unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f".checkpoint-9.pt.tmp-{int(dead.stdout)}"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".checkpoint-9.pt.tmp-{os.getppid()}"  # a writer still running
    live.write_bytes(b"being written")
    # a killed writer whose pid this process was given (a container restarted after a kill
    # starts the same processes in the same order): the resuming training writes nothing yet
    reused = tmp_path / f".checkpoint-8.pt.tmp-{os.getpid()}"
    reused.write_bytes(b"half a checkpoint")
    trainer = Trainer(ToyModel(), OptimConfig(lr=1e-2), TrainConfig(max_epochs=2), tmp_path,
                      train_batches=batches)
    assert trainer.resume()
    epoch = tmp_path / "epoch-1.pt"
    assert epoch.exists() and epoch.samefile(tmp_path / "checkpoint-7.pt")
    assert not stale.exists() and live.exists() and not reused.exists()


@pytest.fixture
def linear_dtypes(monkeypatch) -> list[torch.dtype]:
    """The output dtypes of every nn.Linear call made while the test runs."""
    seen: list[torch.dtype] = []
    original = nn.Linear.forward

    def spy(self, x):
        out = original(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(nn.Linear, "forward", spy)
    return seen


def test_cpu_amp_runs_matmuls_in_bfloat16_and_keeps_float32_weights(tmp_path, linear_dtypes):
    """train.cpu_amp: the Linear layers compute in bfloat16 during training steps; parameters,
    optimizer state and checkpoints stay float32; resume is still exact."""
    full = run(tmp_path / "full", cpu_amp=True)
    assert torch.bfloat16 in linear_dtypes
    run(tmp_path / "resumed", max_steps=5, cpu_amp=True)
    resumed = run(tmp_path / "resumed", resume=True, cpu_amp=True)
    linear_dtypes.clear()
    run(tmp_path / "fp32", max_steps=1)
    assert linear_dtypes and torch.bfloat16 not in linear_dtypes
    assert all(p.dtype == torch.float32 for p in full.model.parameters())
    assert safe_torch_load(tmp_path / "full" / "epoch-2.pt")["model"]["net.0.weight"].dtype == (
        torch.float32
    )
    for (name, a), (_, b) in zip(full.model.state_dict().items(),
                                 resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("native", [True, False])
def test_cpu_amp_auto_uses_bfloat16_only_where_the_cpu_has_it(tmp_path, monkeypatch, native,
                                                              linear_dtypes):
    """train.cpu_amp=auto: bf16 autocast where oneDNN reports native bf16, float32 elsewhere
    (emulated bf16 is an order of magnitude slower); the YAML value parses."""
    import asr.train.trainer as trainer_module
    from asr.config import from_dict

    assert from_dict(TrainConfig, {"cpu_amp": "auto"}).cpu_amp == "auto"
    with pytest.raises(Exception, match="cpu_amp"):
        from_dict(TrainConfig, {"cpu_amp": "yes"})
    monkeypatch.setattr(trainer_module, "_cpu_has_bf16", lambda: native)
    trainer = run(tmp_path, max_steps=2, cpu_amp="auto")
    assert trainer.amp is native
    assert linear_dtypes and (torch.bfloat16 in linear_dtypes) is native


def test_outputs_checkpoints_logs_and_plot(tmp_path):
    trainer = run(tmp_path)
    steps = [s for s, _ in list_checkpoints(tmp_path)]
    assert steps == sorted(set(range(2, 15, 2)) | {7, 14})
    assert (tmp_path / "epoch-1.pt").is_file() and (tmp_path / "epoch-2.pt").is_file()
    state = safe_torch_load(tmp_path / "epoch-2.pt")
    assert state["progress"]["step"] == 14
    assert [r.valid_wer for r in trainer.progress.history] == [12.5, 12.5]
    assert all(r.valid_loss is not None for r in trainer.progress.history)
    png = tmp_path / "training.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP])
def test_an_experiment_directory_without_hard_links_gets_epoch_checkpoints_as_copies(
        tmp_path, monkeypatch, code):
    """Object-store mounts (gcsfuse, s3fs, blobfuse) have no hard links: the first epoch's end
    failed after writing its checkpoint, and so did every resume, which names that epoch
    again. epoch-N.pt is then a copy of the epoch's checkpoint, as icefall's own file is."""
    from asr.checkpoints import io

    def no_links(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(io.os, "link", no_links)
    run(tmp_path)
    for epoch, step in ((1, 7), (2, 14)):
        epoch_state = safe_torch_load(tmp_path / f"epoch-{epoch}.pt")
        assert epoch_state["progress"]["step"] == step
        assert (tmp_path / f"epoch-{epoch}.pt").read_bytes() == (
            tmp_path / f"checkpoint-{step}.pt").read_bytes()
    assert sorted(p.name for p in tmp_path.glob("epoch-*")) == ["epoch-1.pt", "epoch-2.pt"]


class NanAt(ToyModel):
    """A ToyModel whose loss is NaN on the training forwards numbered in ``bad`` (1-based)."""

    def __init__(self, bad=()):
        super().__init__()
        self.bad, self.calls = set(bad), 0

    def forward(self, batch, step=None):
        out = super().forward(batch, step)
        if self.training:
            self.calls += 1
            if self.calls in self.bad or "all" in self.bad:
                return _Out(out.loss * float("nan"), out.num_utterances)
        return out


def _named(batches_fn):
    def named(epoch, skip, skip_world_size):
        for i, b in enumerate(batches_fn(epoch, skip, skip_world_size)):
            yield Batch(b.feats, b.feat_lens, b.tokens, b.token_lens,
                        cut_ids=[f"e{epoch}b{i}u{u}" for u in range(b.batch_size)])
    return named


@pytest.mark.parametrize("cpu_amp", [False, True])
def test_non_finite_step_is_skipped_saved_and_training_goes_on(tmp_path, cpu_amp):
    torch.manual_seed(0)
    model = NanAt(bad={3})
    trainer = Trainer(model, OptimConfig(), TrainConfig(max_epochs=1, cpu_amp=cpu_amp,
                      checkpoint_interval=0), tmp_path, _named(batches))
    progress = trainer.fit()
    assert progress.skipped_steps == 1 and progress.step == 6  # 7 batches, the third skipped
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(progress.history[0].train_loss)
    saved = safe_torch_load(tmp_path / "bad-batches" / "epoch-1-batch-3-rank-0.pt")
    assert saved[0]["cut_ids"] == ["e1b2u0", "e1b2u1", "e1b2u2"]
    assert trainer.scheduler.step_count == 6  # the schedule did not move on the skipped step


def test_a_skipped_steps_warning_is_logged_by_every_rank(tmp_path, caplog):
    """Each rank saves its own batches of a skipped step: the warning naming them is marked
    per rank (``PER_RANK``), else a torchrun job's console shows rank 0's file alone
    (:func:`asr.cli.main.console_logging` keeps the other ranks' unmarked warnings off)."""
    torch.manual_seed(0)
    trainer = Trainer(NanAt(bad={3}), OptimConfig(), TrainConfig(max_epochs=1,
                      checkpoint_interval=0), tmp_path, _named(batches))
    with caplog.at_level(logging.WARNING, logger="asr.train.trainer"):
        assert trainer.fit().skipped_steps == 1
    skipped = [r for r in caplog.records if "step skipped" in r.getMessage()]
    assert len(skipped) == 1 and all(getattr(skipped[0], key) for key in PER_RANK), skipped

def test_each_skipped_step_keeps_its_own_saved_batches(tmp_path):
    """Two steps in a row with non-finite gradients: the step count stays where it was, and the
    second step's batches, saved under the same step number, replaced the first one's, whose
    warning had named the file."""
    torch.manual_seed(0)
    trainer = Trainer(NanAt(bad={3, 4}), OptimConfig(), TrainConfig(
        max_epochs=1, checkpoint_interval=0, accum_grad=1), tmp_path, _named(batches))
    assert trainer.fit().skipped_steps == 2
    saved = {p.name: safe_torch_load(p)[0]["cut_ids"][0]
             for p in (tmp_path / "bad-batches").iterdir()}
    assert saved == {"epoch-1-batch-3-rank-0.pt": "e1b2u0", "epoch-1-batch-4-rank-0.pt": "e1b3u0"}


def test_non_finite_steps_in_a_row_stop_training_naming_the_cuts(tmp_path):
    trainer = Trainer(NanAt(bad={"all"}), OptimConfig(), TrainConfig(max_skipped_in_a_row=2),
                      tmp_path, _named(batches))
    with pytest.raises(FloatingPointError, match=r"3 steps in a row.*e1b2u0"):
        trainer.fit()
    assert trainer.progress.step == 0 and trainer.progress.skipped_steps == 3


DDP_SCRIPT = r'''
import os, sys, torch
sys.path[:0] = [os.environ["TEST_DIR"], os.path.dirname(os.environ["TEST_DIR"])]
from test_trainer import ToyModel, make_batch
from asr.process_exit import end_process
from torchrun_helpers import report_up
from asr.train.distributed import setup_distributed, cleanup_distributed
from asr.train.optim import OptimConfig, lr_factor
from asr.train.state import TrainConfig
from asr.train.trainer import Trainer
from asr.types import Batch
info = setup_distributed("cpu")
report_up(info.rank)
torch.manual_seed(0)
model = ToyModel().eval()  # no dropout: the two runs must see identical functions
full = make_batch(torch.Generator().manual_seed(7), batch_size=4)
idx = [0, 1, 2, 3] if info.world_size == 1 else [2 * info.rank, 2 * info.rank + 1]
T = int(full.feat_lens[idx].max())
part = Batch(full.feats[idx, :T], full.feat_lens[idx], full.tokens[idx], full.token_lens[idx])
trainer = Trainer(model, OptimConfig(), TrainConfig(max_epochs=1), os.environ["OUT_DIR"],
                  lambda e, s, w: [], dist=info)
trainer.model.train()
unwrapped = trainer.model.module if info.distributed else trainer.model
unwrapped.net[2].p = 0.0
unwrapped.noise = 0.0  # per-rank random streams differ from one process' stream
trainer._forward_backward(part)
grads = {n: p.grad for n, p in unwrapped.named_parameters()}
if info.rank == 0:
    torch.save(grads, os.path.join(os.environ["OUT_DIR"], f"grads_{info.world_size}.pt"))
cleanup_distributed()
end_process(0)
'''


def _ddp_env(tmp_path: Path) -> dict[str, str]:
    """TEST_DIR and OUT_DIR for the scripts, one thread per process, and this checkout first on
    the import path (an installed asr may be another checkout's)."""
    root = str(Path(__file__).resolve().parents[2])
    return dict(os.environ, TEST_DIR=str(Path(__file__).parent), OUT_DIR=str(tmp_path),
                OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))


def _run_processes(script: Path, nproc: int, env: dict[str, str]) -> None:
    """Runs ``script`` in ``nproc`` processes: under torchrun (gloo on CPU) for 2 or more, as
    a plain ``python script`` for 1, which is what torchrun with one process runs too (WORLD_SIZE
    1: :func:`asr.train.distributed.setup_distributed` makes no process group) without the
    seconds of the launcher's own start."""
    if nproc > 1:
        run_torchrun([str(script)], nproc=nproc, env=env, timeout=180, up=UP_LINE)
    else:
        subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                       timeout=180, check=True)


def test_two_process_torchrun_gives_the_same_gradients_as_one_process(tmp_path):
    script = tmp_path / "ddp_check.py"
    script.write_text(DDP_SCRIPT)
    for nproc in (1, 2):
        _run_processes(script, nproc, _ddp_env(tmp_path))
    one = torch.load(tmp_path / "grads_1.pt")
    two = torch.load(tmp_path / "grads_2.pt")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)


def test_each_forward_gets_the_optimizer_steps_taken_so_far(tmp_path):
    model = ToyModel()
    cfg = TrainConfig(max_epochs=1, accum_grad=2, checkpoint_interval=0)
    trainer = Trainer(model, OptimConfig(), cfg, tmp_path,
                      lambda epoch, skip, world: batches(epoch, skip, num_batches=6))
    trainer.fit()
    assert model.steps_seen == [0, 0, 1, 1, 2, 2]


DDP_SKIP_SCRIPT = r'''
import os, sys, torch
sys.path[:0] = [os.environ["TEST_DIR"], os.path.dirname(os.environ["TEST_DIR"])]
from test_trainer import NanAt, batches
from asr.train.distributed import setup_distributed, cleanup_distributed
from asr.train.optim import OptimConfig, lr_factor
from asr.train.state import TrainConfig
from asr.train.trainer import Trainer
info = setup_distributed("cpu")
torch.manual_seed(0)
model = NanAt(bad={2} if info.rank == 1 else ())  # rank 1's second batch goes NaN
out = os.path.join(os.environ["OUT_DIR"], f"rank{info.rank}")
trainer = Trainer(model, OptimConfig(), TrainConfig(max_epochs=1, checkpoint_interval=0,
                  average_period=0), out, lambda e, s, w: batches(e, s, num_batches=4), dist=info)
progress = trainer.fit()
unwrapped = trainer.model.module
torch.save({"step": progress.step, "skipped": progress.skipped_steps,
            "weights": unwrapped.state_dict()}, os.path.join(os.environ["OUT_DIR"],
            f"result{info.rank}.pt"))
cleanup_distributed()
'''


#: The driver of :func:`ddp_runs` (:func:`torchrun_helpers.run_scripts`): sets up the process
#: group, then runs its scripts one after the other in the same 2 processes and process group
#: (their setup_distributed finds it, their cleanup_distributed waits for the last), each with
#: OUT_DIR a folder of its own and torch.distributed's functions as they were before it (one
#: script counts their calls).
DDP_RUNS_SCRIPT = r"""
import json, os, runpy, sys
import torch.distributed as dist
import asr.train.distributed as distributed
sys.path.insert(0, os.path.dirname(os.environ["TEST_DIR"]))
from torchrun_helpers import SCRIPTS_ENV, done_marker, report_up
from asr.process_exit import end_process
root, scripts = os.environ["OUT_DIR"], json.loads(os.environ[SCRIPTS_ENV])
rank = distributed.setup_distributed("cpu").rank
report_up(rank)
cleanup, distributed.cleanup_distributed = distributed.cleanup_distributed, lambda: None
for name, path in scripts.items():
    os.environ["OUT_DIR"] = os.path.join(root, name)
    os.makedirs(os.environ["OUT_DIR"], exist_ok=True)
    functions = dict(vars(dist))
    try:
        runpy.run_path(path, run_name="__main__")
    finally:
        for key, value in functions.items():
            setattr(dist, key, value)
    done_marker(root, name, rank).parent.mkdir(exist_ok=True)
    done_marker(root, name, rank).touch()
cleanup()
end_process(0)
"""


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> ScriptRuns:
    """The output folder (OUT_DIR) of each 2-process script below, by name: every script in one
    torchrun (gloo on CPU, environment as :func:`_ddp_env`), as each its own would start 3
    Pythons that import torch (seconds each). A failed script fails its own test alone, with its
    run's output (:func:`torchrun_helpers.run_scripts`)."""
    scripts = {"skip": DDP_SKIP_SCRIPT, "resume": DDP_RESUME_SCRIPT,
               "idle_head": DDP_IDLE_HEAD_SCRIPT, "dev_wer": DDP_DEV_WER_SCRIPT,
               "preempt": DDP_PREEMPT_SCRIPT, "collectives": COLLECTIVES_SCRIPT}
    root = tmp_path_factory.mktemp("ddp_runs")
    return run_scripts(DDP_RUNS_SCRIPT, scripts, root, nproc=2, env=_ddp_env(root), timeout=300)


def test_a_non_finite_step_on_one_rank_is_skipped_on_every_rank(ddp_runs):
    out = ddp_runs["skip"]
    rank0, rank1 = (torch.load(out / f"result{r}.pt") for r in (0, 1))
    assert (rank0["step"], rank0["skipped"]) == (rank1["step"], rank1["skipped"]) == (3, 1)
    for name, value in rank0["weights"].items():
        assert torch.isfinite(value).all() and torch.equal(value, rank1["weights"][name]), name
    assert (out / "rank1" / "bad-batches" / "epoch-1-batch-4-rank-1.pt").is_file()


DDP_RESUME_SCRIPT = r'''
import os, sys, torch
sys.path[:0] = [os.environ["TEST_DIR"], os.path.dirname(os.environ["TEST_DIR"])]
from test_trainer import ToyModel, batches
from asr.train.distributed import setup_distributed, cleanup_distributed
from asr.train.optim import OptimConfig
from asr.train.state import TrainConfig
from asr.train.trainer import Trainer
info = setup_distributed("cpu")

def fit(name, max_steps=0, resume=False):
    torch.manual_seed(info.rank)
    trainer = Trainer(ToyModel(), OptimConfig(lr=1e-2, warmup_steps=3),
                      TrainConfig(max_epochs=2, max_steps=max_steps, checkpoint_interval=0),
                      os.path.join(os.environ["OUT_DIR"], name), batches, dist=info)
    if resume:
        assert trainer.resume()
    return trainer.fit()

full = fit("full")
fit("resumed", max_steps=10)  # 3 batches into epoch 2
resumed = fit("resumed", resume=True)
torch.save({"full": [r.train_loss for r in full.history],
            "resumed": [r.train_loss for r in resumed.history]},
           os.path.join(os.environ["OUT_DIR"], f"losses{info.rank}.pt"))
cleanup_distributed()
'''


def test_the_epoch_train_loss_of_a_resumed_ddp_run_counts_every_rank_once(ddp_runs):
    """The running loss of an epoch is a sum per rank; the checkpoint held rank 0's alone, which
    every rank took on resuming: the epoch's train loss counted rank 0's part N times and the
    other ranks' part never."""
    out = ddp_runs["resume"]
    for rank in (0, 1):
        losses = torch.load(out / f"losses{rank}.pt")
        assert losses["resumed"] == pytest.approx(losses["full"], rel=1e-12)


DDP_IDLE_HEAD_SCRIPT = r"""
import os, sys, torch
sys.path[:0] = [os.environ["TEST_DIR"], os.path.dirname(os.environ["TEST_DIR"])]
from test_model import HEADS_YAML, _batch, _model
from asr.train.distributed import setup_distributed, cleanup_distributed
from asr.train.optim import OptimConfig
from asr.train.state import TrainConfig
from asr.train.trainer import Trainer
info = setup_distributed("cpu")
torch.manual_seed(0)
model = _model(dict(HEADS_YAML, loss_weights={"ctc": 1.0, "aed": 0.0, "cif": 0.0})).train()
trainer = Trainer(model, OptimConfig(), TrainConfig(max_epochs=1, checkpoint_interval=0,
                  average_period=0), os.path.join(os.environ["OUT_DIR"], f"rank{info.rank}"),
                  lambda epoch, skip, world: [_batch() for _ in range(3 - skip // world)],
                  dist=info)
untouched = {n: p.detach().clone() for n, p in model.heads["aed"].named_parameters()}
progress = trainer.fit()
assert progress.step == 3, progress.step
for name, param in model.heads["aed"].named_parameters():  # as in one process: not trained
    assert torch.equal(param, untouched[name]), name
cleanup_distributed()
"""


def test_ddp_trains_a_model_with_a_head_of_weight_0(ddp_runs):
    """A head of loss weight 0 is kept for decoding but not run: DDP, not told that some
    parameters get no gradient, failed every rank at the second step ('Expected to have
    finished reduction in the prior iteration before starting a new one')."""
    ddp_runs["idle_head"]  # its script asserts in each rank: a failure fails this test



DDP_DEV_WER_SCRIPT = r"""
import json, os, sys, torch
sys.path[:0] = [os.environ["TEST_DIR"], os.path.dirname(os.environ["TEST_DIR"])]
from test_trainer import ToyModel, batches
from asr.train.distributed import setup_distributed, cleanup_distributed
from asr.train.optim import OptimConfig
from asr.train.state import TrainConfig
from asr.train.trainer import Trainer
info = setup_distributed("cpu")
calls = []

def evaluate(model):  # asr.run.train.DevWer sums its ranks' counts: the same WER on each
    calls.append(info.rank)
    return 5.0

torch.manual_seed(0)
trainer = Trainer(ToyModel(), OptimConfig(lr=1e-2, warmup_steps=3),
                  TrainConfig(max_epochs=2, checkpoint_interval=0, average_period=0),
                  os.path.join(os.environ["OUT_DIR"], "exp"), batches, evaluate=evaluate,
                  dist=info)
progress = trainer.fit()
with open(os.path.join(os.environ["OUT_DIR"], f"wer{info.rank}.json"), "w") as f:
    json.dump({"calls": calls, "wers": [r.valid_wer for r in progress.history]}, f)
cleanup_distributed()
"""


def test_every_rank_takes_part_in_the_dev_wer_and_records_it(ddp_runs):
    """Rank 0 alone decoded the dev set while the others waited in the checkpoint's collective,
    which NCCL gives up on after 10 minutes (a large dev set killed the job); and only rank 0's
    history held the WER. Every rank now calls ``evaluate`` (each decodes its share,
    :class:`asr.run.train.DevWer`) and records the same WER."""
    out = ddp_runs["dev_wer"]
    for rank in (0, 1):
        result = json.loads((out / f"wer{rank}.json").read_text())
        assert result == {"calls": [rank, rank], "wers": [5.0, 5.0]}, rank

WORLD_CHANGE_SCRIPT = r'''
import json, os, sys, torch
sys.path[:0] = [os.environ["TEST_DIR"], os.path.dirname(os.environ["TEST_DIR"])]
from test_trainer import ToyModel, make_batch
from torchrun_helpers import report_up
from asr.process_exit import end_process
from asr.train.distributed import setup_distributed, cleanup_distributed
from asr.train.optim import OptimConfig
from asr.train.state import TrainConfig
from asr.train.trainer import Trainer
from asr.types import Batch
info = setup_distributed("cpu")
report_up(info.rank)
phase = os.environ["PHASE"]

def stream(epoch):
    """The epoch's 13 global batches (the same for any number of ranks here)."""
    g = torch.Generator().manual_seed(1000 + epoch)
    for j in range(13):
        b = make_batch(g, batch_size=2)
        yield Batch(b.feats, b.feat_lens, b.tokens, b.token_lens,
                    cut_ids=[f"e{epoch}g{j}u{u}" for u in range(2)])

def source(epoch, skip, skip_world_size=None):
    """A rank's share of the global batches after ``skip`` (drop_last: as many per rank)."""
    if skip_world_size is None:  # a trainer that counts one rank's batches
        skip *= info.world_size
    rest = list(stream(epoch))[skip:]
    share = len(rest) // info.world_size
    yield from rest[info.rank::info.world_size][:share]

class Recording(ToyModel):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, batch, step=0):
        if self.training:
            self.seen.extend(batch.cut_ids)
        return super().forward(batch, step)

torch.manual_seed(0)
model = Recording()
trainer = Trainer(model, OptimConfig(lr=1e-2, warmup_steps=3),
                  TrainConfig(max_epochs=1, max_steps=3 if phase == "stop" else 0,
                              checkpoint_interval=0, average_period=0),
                  os.path.join(os.environ["OUT_DIR"], "exp"), source, dist=info)
if phase == "resume":
    assert trainer.resume()
progress = trainer.fit()
with open(os.path.join(os.environ["OUT_DIR"], f"{phase}{info.rank}.json"), "w") as f:
    json.dump({"seen": model.seen, "step": progress.step,
               "scheduler_steps": trainer.scheduler.step_count}, f)
cleanup_distributed()
end_process(0)
'''


@pytest.mark.parametrize(("old_world", "new_world"), [(2, 1), (1, 2)])
def test_an_epoch_resumed_with_another_number_of_processes_trains_each_batch_once(
        tmp_path, old_world, new_world):
    """A checkpoint counted one rank's batches: resumed with another number of processes, each
    skipped that many of its own share, repeating batches (2 -> 1) or never training some
    (1 -> 2). It counts the epoch's global batches and the processes that sampled them; the
    resumed ranks share the rest. The step counter and the schedule go on from the checkpoint's
    (steps of another global batch, each counted once)."""
    script = tmp_path / "world_change.py"
    script.write_text(WORLD_CHANGE_SCRIPT)
    for phase, nproc in (("stop", old_world), ("resume", new_world)):
        _run_processes(script, nproc, dict(_ddp_env(tmp_path), PHASE=phase))
    stop = [json.loads((tmp_path / f"stop{r}.json").read_text()) for r in range(old_world)]
    resume = [json.loads((tmp_path / f"resume{r}.json").read_text()) for r in range(new_world)]
    seen = [c for run in stop + resume for c in run["seen"]]
    trained = 3 * old_world + new_world * ((13 - 3 * old_world) // new_world)  # drop_last
    assert sorted(seen) == sorted(f"e1g{j}u{u}" for j in range(trained) for u in range(2))
    steps = 3 + (13 - 3 * old_world) // new_world
    assert {(r["step"], r["scheduler_steps"]) for r in resume} == {(steps, steps)}


def test_more_local_processes_than_gpus_is_a_clear_error(monkeypatch):
    """CUDA's own message for it was "invalid device ordinal", naming neither rank nor fix."""
    from asr.train.distributed import setup_distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: None)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(RuntimeError, match=r"local rank 2 has no GPU: this machine has 2"):
        setup_distributed("cuda")


def test_a_float16_step_the_grad_scaler_skips_moves_neither_the_schedule_nor_the_step(tmp_path):
    """fp16 on CUDA: the GradScaler skips a step whose gradients overflow and lowers its scale.
    The optimizer did not step, so the step count, the schedule and the running average must not
    move either (a CPU GradScaler stands in for the CUDA one)."""
    torch.manual_seed(0)
    trainer = Trainer(NanAt(bad={3}), OptimConfig(), TrainConfig(max_epochs=1, average_period=1,
                      checkpoint_interval=0), tmp_path, _named(batches))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    progress = trainer.fit()
    adam_steps = int(next(iter(trainer.optimizer.state.values()))["step"])
    assert trainer.scaler.get_scale() == 8.0  # one overflow
    assert adam_steps == progress.step == trainer.scheduler.step_count == 6


def test_a_float16_loss_that_always_overflows_stops_training_at_the_scale_floor(tmp_path,
                                                                              caplog):
    """A loss that overflows at every step made the GradScaler halve its scale at every step
    while training went on taking none. Below 0.01 each overflow is a warning; below
    train.min_loss_scale training stops naming the step and the scale. Skipped float16 steps are
    still neither counted nor scheduled (a CPU GradScaler stands in for the CUDA one)."""
    torch.manual_seed(0)
    trainer = Trainer(NanAt(bad={"all"}), OptimConfig(), TrainConfig(
        max_epochs=1, checkpoint_interval=0, min_loss_scale=1e-3), tmp_path, _named(batches))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** -4)
    with caplog.at_level(logging.INFO), pytest.raises(
            FloatingPointError, match=r"scale fell to 0.000976562 at step 0, below "
                                      r"train.min_loss_scale=0.001.*e1b5u0"):
        trainer.fit()  # 2**-4 -> 2**-5, ..., 2**-10 < 1e-3: at the 6th batch
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [m.split("loss scale now ")[1].split()[0] for m in warned] == [
        "0.0078125", "0.00390625", "0.00195312", "0.000976562"]
    p = trainer.progress
    assert p.step == p.skipped_steps == trainer.scheduler.step_count == 0
    saved = safe_torch_load(tmp_path / "bad-batches" / "epoch-1-batch-6-rank-0.pt")
    assert saved[0]["cut_ids"][0] == "e1b5u0"
    with pytest.raises(ValueError, match="min_loss_scale must be >= 0"):
        TrainConfig(min_loss_scale=-1.0)


def test_a_loss_scale_floor_above_the_warning_level_stops_training_too(tmp_path):
    """train.min_loss_scale was checked only once the scale was below the warning level (0.01):
    with a floor of 1 a loss that overflows at every step went on halving the scale past it,
    and training only stopped (if the epoch was long enough) at a scale under 0.01."""
    torch.manual_seed(0)
    trainer = Trainer(NanAt(bad={"all"}), OptimConfig(), TrainConfig(
        max_epochs=1, checkpoint_interval=0, min_loss_scale=1.0), tmp_path, _named(batches))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    with pytest.raises(FloatingPointError, match=r"scale fell to 0.5 at step 0, below "
                                                 r"train.min_loss_scale=1:"):
        trainer.fit()  # 4 -> 2 -> 1 -> 0.5 < 1: at the 3rd batch


def test_max_steps_on_an_epochs_last_step_still_ends_that_epoch(tmp_path):
    """max_steps = 2 epochs of 7 steps: the last step is epoch 2's last, whose end (validation,
    dev WER, epoch-2.pt) was left out, and re-running the command never added it. With
    accum_grad=2 that last step is the epoch's leftover batch."""
    for name, accum, steps in (("one", 1, [7, 14]), ("accum", 2, [4, 8])):
        trainer = run(tmp_path / name, max_steps=steps[-1], accum_grad=accum,
                      checkpoint_interval=0)
        assert [r.step for r in trainer.progress.history] == steps
        assert [r.valid_wer for r in trainer.progress.history] == [12.5, 12.5]
        epoch = tmp_path / name / "epoch-2.pt"
        assert epoch.samefile(tmp_path / name / f"checkpoint-{steps[-1]}.pt")
    # a stop inside an epoch still leaves its end to the resumed run
    trainer = run(tmp_path / "mid", max_steps=10, checkpoint_interval=0)
    assert [r.step for r in trainer.progress.history] == [7]
    assert trainer.progress.batches_in_epoch == 3


def test_a_run_killed_after_its_stop_checkpoint_still_ends_the_epoch_when_resumed(tmp_path):
    """max_steps on the first epoch's last step: the stop's checkpoint is written before that
    epoch's end. A run killed in between resumed finished (its step count reached) and never
    ended the epoch: no validation, dev WER, history entry or epoch-1.pt."""

    def fit(kill):
        torch.manual_seed(0)
        trainer: Trainer | None = None

        def evaluate(model):
            if kill:
                raise Killed
            return 12.5

        trainer = Trainer(ToyModel(), OptimConfig(), TrainConfig(
            max_epochs=2, max_steps=7, checkpoint_interval=0, log_interval=1), tmp_path,
            train_batches=batches, valid_batches=lambda: batches(99, 0, num_batches=2),
            evaluate=evaluate)
        trainer.resume()
        return trainer.fit()

    with pytest.raises(Killed):
        fit(kill=True)
    progress = fit(kill=False)
    assert [(r.epoch, r.step, r.valid_wer) for r in progress.history] == [(1, 7, 12.5)]
    assert (progress.epoch, progress.batches_in_epoch) == (2, 0)
    assert (tmp_path / "epoch-1.pt").samefile(tmp_path / "checkpoint-7.pt")


def test_the_checkpoint_of_a_stop_holds_the_rng_state_before_any_further_batch(tmp_path):
    """Telling an epoch's last step from a step inside it takes a look at the next batch, whose
    loading may draw from the global RNG (augmentation): the checkpoint of the stop must hold
    the state before it, or the resumed run draws twice and departs from the uninterrupted one.
    Every checkpoint looks (the interval's keep the batch for the next step): the draws must
    still happen where the batch is trained, so that interval checkpoints change nothing and a
    run killed after one resumes exactly."""

    def drawing(epoch, skip, skip_world_size, kill_at=0):
        for i, batch in enumerate(batches(epoch, skip), start=skip):
            if epoch == 1 and i == kill_at > 0:
                raise Killed
            torch.rand(1)  # an augmentation drawing from the global RNG as the batch loads
            yield batch

    def fit(exp_dir, max_steps=0, resume=False, interval=0, kill_at=0):
        torch.manual_seed(0)
        trainer = Trainer(ToyModel(), OptimConfig(lr=1e-2, warmup_steps=3),
                          TrainConfig(max_epochs=2, max_steps=max_steps,
                                      checkpoint_interval=interval),
                          exp_dir, train_batches=lambda *a: drawing(*a, kill_at=kill_at))
        if resume:
            assert trainer.resume()
        trainer.fit()
        return trainer.model.state_dict()

    full = fit(tmp_path / "full")
    fit(tmp_path / "resumed", max_steps=5)
    torch.manual_seed(12345)
    resumed = fit(tmp_path / "resumed", resume=True)
    with_interval = fit(tmp_path / "interval", interval=2)
    with pytest.raises(Killed):  # after checkpoint-4, which looked at the 5th batch
        fit(tmp_path / "killed", interval=2, kill_at=5)
    torch.manual_seed(12345)
    killed = fit(tmp_path / "killed", interval=2, resume=True)
    for name, value in full.items():
        for other in (resumed, with_interval, killed):
            assert torch.equal(other[name], value), name


class Recording(ToyModel):
    """A ToyModel that records (loss, utterances) of each training forward."""

    def __init__(self):
        super().__init__()
        self.losses: list[tuple[float, int]] = []

    def forward(self, batch, step=None):
        out = super().forward(batch, step)
        if self.training:
            self.losses.append((float(out.loss.detach()), out.num_utterances))
        return out


def _scalars(exp_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(exp_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def test_tensorboard_logs_each_steps_learning_rate_and_loss(tmp_path):
    """train/lr at step N is the learning rate step N used (it was the next step's), and with
    accum_grad=2 train/loss and the metrics are those of all the step's batches (they were the
    last batch's)."""
    torch.manual_seed(0)
    model = Recording()
    optim = OptimConfig(lr=1e-2, warmup_steps=3)
    trainer = Trainer(model, optim, TrainConfig(max_epochs=2, accum_grad=2, log_interval=1,
                      checkpoint_interval=0), tmp_path, train_batches=batches,
                      valid_batches=lambda: batches(99, 0, num_batches=2), evaluate=lambda m: 12.5)
    trainer.fit()
    scalars = _scalars(tmp_path)
    steps = list(range(1, 9))
    assert [s for s, _ in scalars["train/lr"]] == steps
    assert [v for _, v in scalars["train/lr"]] == pytest.approx(
        [1e-2 * lr_factor(optim, s - 1) for s in steps], rel=1e-6)
    groups = [model.losses[i:min(i + 2, e + 7)] for e in (0, 7) for i in range(e, e + 7, 2)]
    expected = [sum(loss for loss, _ in g) / sum(n for _, n in g) for g in groups]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx(expected, rel=1e-6)
    assert [v for _, v in scalars["train/sq_err"]] == pytest.approx(expected, rel=1e-6)
    assert [v for _, v in scalars["valid/wer"]] == [12.5, 12.5]
    assert [s for s, _ in scalars["valid/loss"]] == [4, 8]


def test_tensorboard_of_a_run_killed_after_its_last_checkpoint_has_each_step_once(tmp_path):
    """A run killed after logging step 5, its last checkpoint being step 4's: the resumed run
    logs step 5 again, and TensorBoard showed both values at step 5 (the killed run's event
    file is kept beside the new one). The resumed run's writer purges the steps it logs again,
    so the logs read as the uninterrupted run's."""
    run(tmp_path / "full")
    run(tmp_path / "killed", max_steps=5)
    (tmp_path / "killed" / "checkpoint-5.pt").unlink()  # killed before that checkpoint
    torch.manual_seed(12345)
    run(tmp_path / "killed", resume=True)
    full, killed = _scalars(tmp_path / "full"), _scalars(tmp_path / "killed")
    assert [s for s, _ in killed["train/loss"]] == list(range(1, 15))
    for tag in ("train/loss", "train/lr", "valid/loss", "valid/wer"):
        assert killed[tag] == full[tag], tag
    assert len(list((tmp_path / "killed" / "tensorboard").glob("events.out.tfevents.*"))) == 2


class Killed(Exception):
    """Stands for the kill of a run (raised where it would have been killed)."""


def _run_validating_on_the_epochs_last_step(exp_dir, valid_interval, kill=False, resume=False,
                                            validations=None):
    """Two epochs of 7 steps, an interval checkpoint at step 7 (the first epoch's last) and, with
    ``kill``, a kill at the first epoch's end after it logged its validation (its checkpoint not
    written), the logs written so far on disk."""
    torch.manual_seed(0)
    trainer: Trainer | None = None

    def evaluate(model):
        if kill:
            trainer.writer.flush()
            raise Killed
        return 12.5

    def valid_batches():
        if validations is not None:
            validations.append(trainer.progress.step)
        return batches(99, 0, num_batches=2)

    trainer = Trainer(ToyModel(), OptimConfig(lr=1e-2, warmup_steps=3),
                      TrainConfig(max_epochs=2, checkpoint_interval=7,
                                  valid_interval=valid_interval,
                                  log_interval=1, average_period=2, keep_last=0),
                      exp_dir, train_batches=batches, valid_batches=valid_batches,
                      evaluate=evaluate)
    if resume:
        assert trainer.resume()
    try:
        trainer.fit()
    finally:
        if trainer._writer is not None:
            trainer._writer.close()
    return trainer


@pytest.mark.parametrize("valid_interval", [7, 0])
def test_a_run_killed_between_the_interval_checkpoint_and_the_epoch_end_logs_as_uninterrupted(
        tmp_path, caplog, valid_interval):
    """Step 7, the first epoch's last, is an interval checkpoint: a run killed in that epoch's
    end, after it logged valid/loss and before its own checkpoint, resumes from checkpoint 7 and
    ends the epoch again. Its logs read as the uninterrupted run's: valid/loss was logged twice
    at step 7 (the killed run's value was kept beside the resumed run's), and with
    ``valid_interval`` 7 even the uninterrupted run validated and logged step 7 twice (at the
    step and at the epoch's end)."""
    validations: list[int] = []
    full = _run_validating_on_the_epochs_last_step(tmp_path / "full", valid_interval,
                                                   validations=validations)
    with pytest.raises(Killed):
        _run_validating_on_the_epochs_last_step(tmp_path / "killed", valid_interval, kill=True)
    state = safe_torch_load(tmp_path / "killed" / "checkpoint-7.pt")
    assert (state["progress"]["epoch"], state["progress"]["batches_in_epoch"]) == (1, 7)
    torch.manual_seed(12345)
    with caplog.at_level(logging.INFO, logger="asr.train.trainer"):
        resumed = _run_validating_on_the_epochs_last_step(tmp_path / "killed", valid_interval,
                                                          resume=True)
    expected, got = _scalars(tmp_path / "full"), _scalars(tmp_path / "killed")
    assert [s for s, _ in expected["valid/loss"]] == [7, 14]
    assert validations == [7, 14]
    assert set(got) == set(expected)
    for tag, series in expected.items():
        assert got[tag] == series, tag
    assert resumed.progress.history == full.progress.history
    # the killed run logged step 7's validation; the resumed one takes it from the checkpoint
    assert ("step 7: valid loss" in caplog.text) == (valid_interval == 0)


def test_a_skipped_step_counts_nowhere_in_the_epochs_train_loss(tmp_path):
    """With two batches a step, the second step (batches 3 and 4) is skipped for batch 3's NaN;
    batch 4's finite loss and utterances counted in the epoch's train loss all the same."""

    class RecordingNanAt(NanAt):
        def __init__(self, bad):
            super().__init__(bad)
            self.losses: list[tuple[float, int]] = []

        def forward(self, batch, step=None):
            out = super().forward(batch, step)
            if self.training:
                self.losses.append((float(out.loss.detach()), out.num_utterances))
            return out

    torch.manual_seed(0)
    model = RecordingNanAt(bad={3})
    trainer = Trainer(model, OptimConfig(), TrainConfig(max_epochs=1, accum_grad=2,
                      checkpoint_interval=0), tmp_path, _named(batches))
    progress = trainer.fit()
    assert progress.skipped_steps == 1 and progress.step == 3
    taken = [model.losses[i] for i in (0, 1, 4, 5, 6)]  # steps (1, 2), (5, 6) and (7)
    assert progress.history[0].train_loss == pytest.approx(
        sum(loss for loss, _ in taken) / sum(n for _, n in taken), rel=1e-6)


def test_skipped_steps_apart_do_not_stop_training(tmp_path):
    """``max_skipped_in_a_row`` counts the skips in a row: a good step between two skipped ones
    starts the count again, so three skips apart pass a limit of one."""
    torch.manual_seed(0)
    trainer = Trainer(NanAt(bad={2, 4, 6}), OptimConfig(), TrainConfig(
        max_epochs=1, checkpoint_interval=0, max_skipped_in_a_row=1), tmp_path, _named(batches))
    progress = trainer.fit()
    assert progress.skipped_steps == 3 and progress.step == 4


def test_an_epoch_without_a_step_taken_has_no_train_loss(tmp_path):
    """Every step skipped: the epoch's train loss read 0, the best loss there is."""
    torch.manual_seed(0)
    progress = Trainer(NanAt(bad={"all"}), OptimConfig(), TrainConfig(
        max_epochs=1, checkpoint_interval=0, max_skipped_in_a_row=10), tmp_path,
        _named(batches)).fit()
    assert progress.step == 0 and progress.skipped_steps == 7
    assert math.isnan(progress.history[0].train_loss)


def test_skipped_steps_in_a_row_are_counted_across_a_resumption(tmp_path):
    """The first epoch's last two steps are skipped and the second epoch's first would be the
    third in a row, past a limit of two: a run resumed from the first epoch's checkpoint
    started the count again and trained on."""

    def fit(bad, max_epochs, resume=False):
        torch.manual_seed(0)
        trainer = Trainer(NanAt(bad=bad), OptimConfig(), TrainConfig(
            max_epochs=max_epochs, checkpoint_interval=0, max_skipped_in_a_row=2), tmp_path,
            _named(batches))
        if resume:
            assert trainer.resume()
        return trainer.fit()

    assert fit({6, 7}, max_epochs=1).skipped_steps == 2
    with pytest.raises(FloatingPointError, match="3 steps in a row"):
        fit({1}, max_epochs=2, resume=True)  # the resumed model's first forward: epoch 2's first


def test_the_trainer_keeps_only_the_newest_keep_last_checkpoints(tmp_path):
    """Pruned at each interval checkpoint, not only at an epoch's end: a run stopped inside its
    first epoch (step 6 of 7) keeps the newest two of checkpoints 2, 4 and 6."""
    torch.manual_seed(0)
    Trainer(ToyModel(), OptimConfig(), TrainConfig(max_epochs=1, max_steps=6,
            checkpoint_interval=2, keep_last=2), tmp_path, batches).fit()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]


def test_the_checkpoint_written_at_a_stop_is_pruned_to_keep_last(tmp_path):
    """A run stopped by max_steps off the interval (step 5 of 7, interval 2) writes checkpoint 5
    at the stop: it was not pruned, so keep_last + 1 checkpoints stayed until a resumed run's
    next prune."""
    torch.manual_seed(0)
    Trainer(ToyModel(), OptimConfig(), TrainConfig(max_epochs=1, max_steps=5,
            checkpoint_interval=2, keep_last=2), tmp_path, batches).fit()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5]


def test_averaging_turned_on_at_a_resume_starts_from_the_resumed_weights(tmp_path):
    """A run without averaging (average_period=0) resumed with it: the averager was made from
    the fresh model before resume() loaded the checkpoint's weights, so the average went on
    from random initial weights, counted as the mean of every step before the resumption."""

    def trainer(average_period, max_steps):
        torch.manual_seed(0)
        return Trainer(ToyModel(), OptimConfig(lr=1e-2, warmup_steps=3), TrainConfig(
            max_epochs=1, max_steps=max_steps, checkpoint_interval=0,
            average_period=average_period), tmp_path, batches)

    trainer(average_period=0, max_steps=4).fit()
    resumed = trainer(average_period=2, max_steps=6)
    assert resumed.resume()
    at_resume = {k: v.detach().double().clone() for k, v in resumed.model.state_dict().items()}
    resumed.fit()
    # samples at steps 2 and 4 are the resumed weights, at step 6 the model's
    expected = {k: (2 * at_resume[k] + v.detach().double()) / 3
                for k, v in resumed.model.state_dict().items()}
    for name, value in expected.items():
        torch.testing.assert_close(resumed.averager.average[name], value, rtol=1e-12, atol=1e-12)


def _float16_trainer(exp_dir, model, max_steps=0, init_scale=2.0 ** 8):
    """Two epochs of 7 steps under float16 autocast with an enabled GradScaler, on the CPU:
    the CUDA float16 path (``train.amp_dtype=float16``) with a CPU scaler and CPU autocast
    standing in for CUDA's. The scale grows after every 2 steps without overflow."""
    trainer = Trainer(model, OptimConfig(lr=1e-2, warmup_steps=3), TrainConfig(
        max_epochs=2, max_steps=max_steps, checkpoint_interval=0, average_period=2),
        exp_dir, _named(batches))
    trainer.amp, trainer.amp_dtype = True, torch.float16
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=2)
    return trainer


def test_the_float16_grad_scaler_resumes_exactly_and_backs_off_at_a_non_finite_step(tmp_path):
    """The GradScaler's state (its scale and the good steps since it last changed) is part of
    every checkpoint: a float16 run resumed mid-epoch goes on with the same scale, grows it at
    the same step and ends with the weights of the uninterrupted run. The non-finite step
    (the third batch) is skipped, not counted, and halves the scale (here the grown scale also
    overflows float16 late in epoch 2, after the resumption: a resumed scale that was not the
    killed run's would overflow elsewhere)."""
    torch.manual_seed(0)
    full = _float16_trainer(tmp_path / "full", NanAt(bad={3}))
    scales = []
    step = full._optimizer_step

    def recording_step():
        took = step()
        scales.append((took, full.scaler.get_scale()))
        return took

    full._optimizer_step = recording_step
    progress = full.fit()
    assert progress.history[0].step == 6 and progress.skipped_steps == 0
    assert scales[:4] == [(True, 2.0 ** 8), (True, 2.0 ** 9), (False, 2.0 ** 8), (True, 2.0 ** 8)]
    assert max(s for _, s in scales) > 2.0 ** 9  # it grew again after the skipped step
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in full.model.parameters())

    torch.manual_seed(0)
    killed = _float16_trainer(tmp_path / "resumed", NanAt(bad={3}), max_steps=5)
    killed.fit()
    saved = safe_torch_load(tmp_path / "resumed" / "checkpoint-5.pt")["scaler"]
    assert saved == killed.scaler.state_dict()
    assert (saved["scale"], saved["_growth_tracker"]) == (2.0 ** 9, 1)

    torch.manual_seed(12345)
    resumed = _float16_trainer(tmp_path / "resumed", NanAt(), init_scale=2.0 ** 16)
    assert resumed.resume()
    assert resumed.scaler.state_dict() == saved
    resumed.fit()
    assert resumed.progress.step == full.progress.step
    assert resumed.scaler.state_dict() == full.scaler.state_dict()
    for (name, a), (_, b) in zip(full.model.state_dict().items(),
                                 resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert [r.train_loss for r in resumed.progress.history] == [
        r.train_loss for r in progress.history]


@pytest.mark.filterwarnings("ignore:for .* copying from a non-meta parameter:UserWarning")
def test_a_checkpoint_resumes_onto_a_device_other_than_the_cpu(tmp_path):
    """resume() read the checkpoint onto the trainer's device, RNG states included, which
    torch and numpy take only as CPU tensors: every resume on a GPU failed, as a checkpoint that
    "does not fit this model and optimizer". The "meta" device stands in for the GPU here: the
    model, the optimizer's state and the running average go onto it, the RNG states are
    restored (tests/gpu/test_gpu_resume.py resumes on CUDA)."""
    torch.manual_seed(0)
    Trainer(ToyModel(), OptimConfig(), TrainConfig(max_epochs=1, max_steps=2,
            checkpoint_interval=0, average_period=1), tmp_path, batches).fit()
    saved = safe_torch_load(tmp_path / "checkpoint-2.pt")
    torch.manual_seed(12345)
    meta = torch.device("meta")
    trainer = Trainer(ToyModel(), OptimConfig(), TrainConfig(max_epochs=1, average_period=1),
                      tmp_path, batches, dist=DistInfo(device=meta))
    assert trainer.resume()
    assert trainer.progress.step == 2
    assert torch.equal(torch.get_rng_state(), saved["rng_per_rank"][0]["torch"])
    assert all(p.device == meta for p in trainer.model.parameters())
    assert {v.device for s in trainer.optimizer.state.values() for k, v in s.items()
            if k != "step"} == {meta}
    assert {v.device for v in trainer.averager.average.values()} == {meta}


def _log_messages(exp_dir: Path, name: str = "train.log") -> list[str]:
    """The trainer's lines of a log in ``exp_dir`` without their time, the directory named E."""
    lines = (exp_dir / name).read_text(encoding="utf-8").splitlines()
    return [line.split(" ", 2)[2].replace(str(exp_dir), "E") for line in lines
            if " asr.train." in line]


def test_the_training_log_of_a_run_killed_after_its_checkpoint_reads_as_uninterrupted(
        tmp_path, caplog):
    """The run is killed at the first epoch's end, after it logged the epoch's validation and
    before the epoch's checkpoint; the run resumed from the interval checkpoint of that step
    validates and logs it again. train.log held both validations, as if the epoch had ended
    twice: the resumed run moves what the log held after the checkpoint it resumes from to
    train-superseded.log, so train.log reads as the uninterrupted run's (with one line saying
    where it resumed), and the killed run's lines are kept."""
    with caplog.at_level(logging.INFO):
        _run_validating_on_the_epochs_last_step(tmp_path / "full", 0)
        with pytest.raises(Killed):
            _run_validating_on_the_epochs_last_step(tmp_path / "killed", 0, kill=True)
        killed_log = _log_messages(tmp_path / "killed")
        assert killed_log[-3] == "INFO asr.train.trainer: writing E/checkpoint-7.pt"
        assert "step 7: valid loss" in killed_log[-2]
        assert killed_log[-1].startswith("ERROR asr.train.trainer: training stopped: Killed")
        torch.manual_seed(12345)
        _run_validating_on_the_epochs_last_step(tmp_path / "killed", 0, resume=True)
    full, resumed = _log_messages(tmp_path / "full"), _log_messages(tmp_path / "killed")
    where = [i for i, m in enumerate(resumed) if "resumed from E/checkpoint-7.pt" in m]
    assert len(where) == 1 and resumed[where[0] - 1] == killed_log[-3]
    assert resumed[:where[0]] + resumed[where[0] + 1:] == full
    assert sum("step 7: valid loss" in m for m in resumed) == 1
    superseded = (tmp_path / "killed" / "train-superseded.log").read_text().splitlines()
    assert superseded[0].endswith(
        "moved from train.log: what it held after checkpoint-7.pt was written, logged by the "
        "run that wrote it; the run resumed from it logs that part again ===")
    assert [line.split(" ", 2)[2].replace(str(tmp_path / "killed"), "E")
            for line in superseded[1:]] == killed_log[-2:]


def test_a_run_from_step_0_moves_an_earlier_runs_log_and_an_older_checkpoint_appends(
        tmp_path, caplog):
    """A run from step 0 (no checkpoint to resume from) supersedes an earlier run's whole
    log, as its TensorBoard writer purges every earlier step; a checkpoint written before
    checkpoints recorded the log's size says nothing of it, and its resumed run only appends."""
    (tmp_path / "train.log").write_text("a run that stopped before its first checkpoint\n")
    with caplog.at_level(logging.INFO):
        run(tmp_path, max_steps=2, checkpoint_interval=0)
        assert (tmp_path / "train-superseded.log").read_text().splitlines()[1:] == [
            "a run that stopped before its first checkpoint"]
        assert "writing" in (tmp_path / "train.log").read_text().splitlines()[0]
        path = tmp_path / "checkpoint-2.pt"
        state = torch.load(path, weights_only=False)
        del state["progress"]["log_bytes"]
        torch.save(state, path)
        with (tmp_path / "train.log").open("a") as f:
            f.write("logged after the checkpoint\n")
        before = (tmp_path / "train.log").read_text()
        run(tmp_path, max_steps=3, checkpoint_interval=0, resume=True)
    assert (tmp_path / "train.log").read_text().startswith(before)
    assert len((tmp_path / "train-superseded.log").read_text().splitlines()) == 2


def test_the_error_that_stops_training_ends_the_training_log(tmp_path, caplog):
    """The command reports the error that stops training on stderr; train.log, which a
    long run is read by, ended before it without a word."""
    trainer = Trainer(NanAt(bad={"all"}), OptimConfig(), TrainConfig(max_skipped_in_a_row=1),
                      tmp_path, _named(batches))
    with caplog.at_level(logging.INFO), pytest.raises(FloatingPointError):
        trainer.fit()
    last = (tmp_path / "train.log").read_text().splitlines()[-1]
    assert (
        " ERROR asr.train.trainer: training stopped: FloatingPointError: 2 steps in a row" in last
    )
    assert not any("training stopped" in r.getMessage() for r in caplog.records)


class SignalsAt(ToyModel):
    """Sends ``signum`` to its own process in its ``at``-th training forward (from 1), as a
    cluster's preemption notice arrives in the middle of a step."""

    def __init__(self, at: int, signum: int = signal.SIGTERM):
        super().__init__()
        self.at, self.signum, self.forwards = at, signum, 0

    def forward(self, batch: Batch, step: int | None = None) -> _Out:
        if self.training:
            self.forwards += 1
            if self.forwards == self.at:
                os.kill(os.getpid(), self.signum)
        return super().forward(batch, step)


class Uncaught(Exception):
    """A preemption signal that reached the test's own handler: fit() did not catch it."""


@pytest.fixture
def outer_handlers():
    """SIGTERM and SIGUSR1 raise :class:`Uncaught` outside fit() during the test (a regression
    fails the test instead of ending pytest's process); the previous handlers are put back."""
    def uncaught(signum, frame):
        raise Uncaught(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, uncaught) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _preempted(exp_dir, **kwargs) -> TrainingPreempted:
    """Runs :func:`run` until its preemption; returns the exception, after checking that fit()
    put the signal handlers back."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    with pytest.raises(TrainingPreempted) as info:
        run(exp_dir, **kwargs)
    assert {sig: signal.getsignal(sig) for sig in before} == before
    return info.value


def _assert_same_weights(a: Trainer, b: Trainer) -> None:
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name
    assert torch.equal(a.averager.average["net.0.weight"], b.averager.average["net.0.weight"])
    assert [r.train_loss for r in a.progress.history] == [r.train_loss for r in b.progress.history]


def test_sigterm_mid_step_finishes_it_checkpoints_there_and_resumes_exactly(tmp_path, caplog,
                                                                           outer_handlers):
    """SIGTERM in step 5's forward (mid epoch 1, no interval checkpoint there): step 5 is taken,
    checkpoint-5.pt written at that position, exit status 143; resuming ends as uninterrupted."""
    full = run(tmp_path / "full")
    stop = _preempted(tmp_path / "preempted", make_model=lambda: SignalsAt(5))
    assert (stop.signum, stop.step, stop.exit_status) == (signal.SIGTERM, 5, 143)
    assert "preempted by SIGTERM at step 5" in caplog.text
    state = safe_torch_load(tmp_path / "preempted" / "checkpoint-5.pt")
    assert (state["progress"]["step"], state["progress"]["epoch"],
            state["progress"]["batches_in_epoch"]) == (5, 1, 5)
    assert [n for n, _ in list_checkpoints(tmp_path / "preempted")] == [2, 4, 5]
    torch.manual_seed(12345)
    resumed = run(tmp_path / "preempted", resume=True)
    assert resumed.progress.step == 14
    _assert_same_weights(full, resumed)


def test_sigusr1_inside_an_accumulation_stops_after_the_whole_step(tmp_path, outer_handlers):
    """SIGUSR1 (SLURM's --signal=USR1@90) in the first of step 2's two batches: the second one is
    trained and step 2 applied before the stop (the interval's checkpoint-2.pt is its
    checkpoint), exit status 138."""
    full = run(tmp_path / "full", accum_grad=2)
    stop = _preempted(tmp_path / "preempted", accum_grad=2,
                      make_model=lambda: SignalsAt(3, signal.SIGUSR1))
    assert (stop.signum, stop.step, stop.exit_status) == (signal.SIGUSR1, 2, 138)
    state = safe_torch_load(tmp_path / "preempted" / "checkpoint-2.pt")
    assert (state["progress"]["step"], state["progress"]["batches_in_epoch"]) == (2, 4)
    assert [n for n, _ in list_checkpoints(tmp_path / "preempted")] == [2]
    resumed = run(tmp_path / "preempted", accum_grad=2, resume=True)
    _assert_same_weights(full, resumed)


def test_a_preempted_run_leaves_its_tensorboard_scalars_on_disk(tmp_path, outer_handlers,
                                                               monkeypatch):
    """fit() closes the TensorBoard writer however it ends: a preemption's status ends the
    process next (under torchrun without the interpreter's finalization, asr.process_exit), so
    steps 1 to 5 must be on disk when TrainingPreempted reaches the caller. The writer's thread
    writes the queued records; slowed down here, it had not written them all by then."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    write = RecordWriter.write
    monkeypatch.setattr(RecordWriter, "write",
                        lambda self, data: (time.sleep(0.02), write(self, data))[1])
    _preempted(tmp_path, make_model=lambda: SignalsAt(5))
    assert [s for s, _ in _scalars(tmp_path)["train/loss"]] == [1, 2, 3, 4, 5]


def test_a_signal_during_the_epoch_end_stops_after_its_checkpoint(tmp_path, outer_handlers):
    """SIGTERM while the dev WER is evaluated: the epoch's end completes (its checkpoint and
    epoch-1.pt) and training stops there instead of starting epoch 2."""
    full = run(tmp_path / "full")

    def evaluate(model):
        os.kill(os.getpid(), signal.SIGTERM)
        return 12.5

    stop = _preempted(tmp_path / "preempted", evaluate=evaluate)
    assert stop.step == 7
    state = safe_torch_load(tmp_path / "preempted" / "epoch-1.pt")
    assert (state["progress"]["step"], state["progress"]["epoch"]) == (7, 2)
    assert [n for n, _ in list_checkpoints(tmp_path / "preempted")] == [2, 4, 6, 7]
    resumed = run(tmp_path / "preempted", resume=True)
    _assert_same_weights(full, resumed)


def test_a_signal_during_the_last_epochs_end_lets_the_finished_run_end(tmp_path,
                                                                     outer_handlers):
    """SIGTERM while the last epoch's dev WER is evaluated: nothing is left to train, so fit()
    returns as usual (no preemption to report, ``asr train`` exits 0)."""
    def evaluate(model):
        if evaluate.calls == 1:  # the second epoch's, the last
            os.kill(os.getpid(), signal.SIGTERM)
        evaluate.calls += 1
        return 12.5

    evaluate.calls = 0
    trainer = run(tmp_path / "exp", evaluate=evaluate)
    assert (trainer.progress.step, len(trainer.progress.history)) == (14, 2)


def test_a_second_signal_during_the_checkpoint_write_does_not_interrupt_it(
        tmp_path, monkeypatch, outer_handlers):
    """Another SIGTERM (and a SIGUSR1) arriving while the preemption checkpoint is written: the
    write completes, one stop is raised, and the checkpoint resumes exactly."""
    from asr.train import trainer as trainer_module

    full = run(tmp_path / "full")
    real_save = trainer_module.atomic_torch_save

    def save_while_signalled(state, path):
        if path.name == "checkpoint-3.pt":  # the preemption's
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGUSR1)
        real_save(state, path)

    monkeypatch.setattr(trainer_module, "atomic_torch_save", save_while_signalled)
    stop = _preempted(tmp_path / "preempted", make_model=lambda: SignalsAt(3))
    monkeypatch.undo()
    assert (stop.step, stop.signum) == (3, signal.SIGTERM)
    assert [n for n, _ in list_checkpoints(tmp_path / "preempted")] == [2, 3]
    resumed = run(tmp_path / "preempted", resume=True)
    _assert_same_weights(full, resumed)


def test_fit_restores_the_signal_handlers_it_replaced(tmp_path):
    """Handlers are SIGTERM's and SIGUSR1's only while fit() runs: a finished run puts back
    the caller's own, which then handles the signal as before."""
    got = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        run(tmp_path / "exp", max_epochs=1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


DDP_PREEMPT_SCRIPT = r'''
import os, signal, sys, torch
sys.path[:0] = [os.environ["TEST_DIR"], os.path.dirname(os.environ["TEST_DIR"])]
from test_trainer import SignalsAt, ToyModel, batches
from asr.train.distributed import setup_distributed, cleanup_distributed
from asr.train.optim import OptimConfig
from asr.train.preemption import TrainingPreempted
from asr.train.state import TrainConfig
from asr.train.trainer import Trainer
info = setup_distributed("cpu")
torch.manual_seed(0)
model = SignalsAt(3) if info.rank == 1 else ToyModel()  # the notice reaches rank 1 alone
trainer = Trainer(model, OptimConfig(), TrainConfig(max_epochs=1, checkpoint_interval=0,
                  average_period=0), os.path.join(os.environ["OUT_DIR"], "exp"),
                  lambda e, s, w: batches(e, s, num_batches=6), dist=info)
try:
    trainer.fit()
    result = None
except TrainingPreempted as stop:
    result = (stop.step, stop.exit_status)
torch.save({"stop": result, "step": trainer.progress.step},
           os.path.join(os.environ["OUT_DIR"], f"result{info.rank}.pt"))
cleanup_distributed()
'''


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(ddp_runs):
    out = ddp_runs["preempt"]
    results = [torch.load(out / f"result{r}.pt") for r in (0, 1)]
    assert results == [{"stop": (3, 143), "step": 3}] * 2
    state = safe_torch_load(out / "exp" / "checkpoint-3.pt")
    assert (state["progress"]["step"], state["progress"]["batches_in_epoch"]) == (3, 6)
    assert [n for n, _ in list_checkpoints(out / "exp")] == [3]


class NanAndSignalAt(SignalsAt):
    """A :class:`SignalsAt` whose ``at``-th training forward also has a NaN loss: the signal
    arrives in a step that is skipped for its non-finite gradients."""

    def forward(self, batch: Batch, step: int | None = None) -> _Out:
        out = super().forward(batch, step)
        if self.training and self.forwards == self.at:
            return _Out(out.loss * float("nan"), out.num_utterances)
        return out


def test_a_signal_in_a_skipped_step_stops_right_after_it(tmp_path, outer_handlers):
    """SIGTERM in the third forward, whose NaN loss makes step 3 skipped: training stopped only
    after the next step taken (a batch later). It stops after the skipped step, at step 2 with
    the third batch passed: checkpoint-2.pt, which the interval wrote before that batch, is
    written again at this position, and the run resumed from it ends as the uninterrupted run
    that skipped the same step."""
    torch.manual_seed(0)
    full = run(tmp_path / "full", make_model=lambda: NanAt(bad={3}))
    assert full.progress.skipped_steps == 1
    stop = _preempted(tmp_path / "preempted", make_model=lambda: NanAndSignalAt(3))
    assert (stop.signum, stop.step, stop.exit_status) == (signal.SIGTERM, 2, 143)
    progress = safe_torch_load(tmp_path / "preempted" / "checkpoint-2.pt")["progress"]
    assert (progress["step"], progress["batches_in_epoch"], progress["skipped_steps"]) == (2, 3, 1)
    assert [n for n, _ in list_checkpoints(tmp_path / "preempted")] == [2]
    torch.manual_seed(12345)
    resumed = run(tmp_path / "preempted", resume=True)
    assert resumed.progress.skipped_steps == 1
    _assert_same_weights(full, resumed)


COLLECTIVES_SCRIPT = r'''
import json, os, sys, torch
import torch.distributed as dist
sys.path[:0] = [os.environ["TEST_DIR"], os.path.dirname(os.environ["TEST_DIR"])]
from test_trainer import ToyModel, batches
from asr.train.distributed import setup_distributed, cleanup_distributed
from asr.train.optim import OptimConfig
from asr.train.state import TrainConfig
from asr.train.trainer import Trainer

calls = []  # every collective of the process, by name
for name in ("all_reduce", "all_gather", "all_gather_object", "broadcast", "barrier"):
    def counting(*args, _real=getattr(dist, name), _name=name, **kwargs):
        calls.append(_name)
        return _real(*args, **kwargs)
    setattr(dist, name, counting)


class Counting(ToyModel):
    """Notes the collectives made before each training forward."""

    def __init__(self):
        super().__init__()
        self.before: list[int] = []

    def forward(self, batch, step=None):
        if self.training:
            self.before.append(len(calls))
        return super().forward(batch, step)


info = setup_distributed("cpu")
torch.manual_seed(0)
model = Counting()
# a time budget far away (its check runs every step), no interval checkpoint or validation
trainer = Trainer(model, OptimConfig(), TrainConfig(
    max_epochs=1, checkpoint_interval=0, average_period=0, time_budget_s=1e6),
    os.path.join(os.environ["OUT_DIR"], "exp"), lambda e, s, w: batches(e, s, num_batches=5),
    dist=info)
trainer.fit()
steps = [b - a for a, b in zip(model.before, model.before[1:])]
with open(os.path.join(os.environ["OUT_DIR"], f"collectives{info.rank}.json"), "w") as f:
    json.dump({"per_step": steps, "step": trainer.progress.step}, f)
cleanup_distributed()
'''


def test_each_step_makes_one_collective_besides_ddps_own(ddp_runs):
    """Under DDP the steps between the first and the last of an epoch make one all-reduce each
    (the utterances, the non-finite agreement, the preemption flag and the time budget's check
    were four), besides DDP's gradient reduction (its own, not torch.distributed's Python
    calls)."""
    out = ddp_runs["collectives"]
    for rank in (0, 1):
        got = json.loads((out / f"collectives{rank}.json").read_text())
        assert got == {"per_step": [1, 1, 1, 1], "step": 5}, rank


def _gradients_the_optimizer_steps_with(trainer: Trainer, model: nn.Module) -> list[torch.Tensor]:
    """Runs the trainer's optimizer step (which must take the step) and returns the gradients
    the optimizer saw, one per parameter of ``model``."""
    got: list[torch.Tensor] = []
    real_step = trainer.optimizer.step

    def step(*args, **kwargs):
        got.extend(p.grad.clone() for p in model.parameters())
        return real_step(*args, **kwargs)

    trainer.optimizer.step = step
    assert trainer._optimizer_step()
    assert got, "the optimizer's step was not called"  # else a zip with it compares nothing
    return got


@pytest.mark.parametrize("grad_clip", [0.0, 0.5, 1e6])  # off, clipping, too large to clip
def test_a_step_divides_and_clips_the_gradients_as_clip_grad_norm_does(tmp_path, grad_clip):
    """The step divides the accumulated gradient sums by the batch's utterances and clips them
    in one multiplication: the gradients the optimizer gets are those of a division followed by
    ``torch.nn.utils.clip_grad_norm_`` (its ``max_norm / (norm + 1e-6)``, at most 1)."""
    torch.manual_seed(0)
    model = ToyModel()
    trainer = Trainer(model, OptimConfig(grad_clip=grad_clip),
                      TrainConfig(max_epochs=1, checkpoint_interval=0, average_period=0),
                      tmp_path, train_batches=batches)
    sums = [10 * torch.randn_like(p) for p in model.parameters()]
    for param, grad in zip(model.parameters(), sums):
        param.grad = grad.clone()
    trainer._accum_utts = 4.0
    reference = [nn.Parameter(torch.zeros_like(g)) for g in sums]
    for param, grad in zip(reference, sums):
        param.grad = grad / 4.0
    norm = torch.nn.utils.clip_grad_norm_(reference, grad_clip if grad_clip > 0 else math.inf)
    assert (0 < grad_clip < float(norm)) == (grad_clip == 0.5)  # the cases are what they say
    got = _gradients_the_optimizer_steps_with(trainer, model)
    assert len(got) == len(reference)
    for mine, theirs in zip(got, reference):
        torch.testing.assert_close(mine, theirs.grad, rtol=1e-6, atol=1e-7)


def _validating_every_3_steps(exp_dir, signal_at_step=None, resume=False) -> Trainer:
    """Two epochs of 7 steps validated every 3 steps, checkpoints only at the epochs' ends; with
    ``signal_at_step``, SIGTERM arrives while step ``signal_at_step`` validates."""
    torch.manual_seed(0)
    trainer: Trainer | None = None

    def valid_batches():
        if trainer.progress.step == signal_at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return batches(99, 0, num_batches=2)

    trainer = Trainer(ToyModel(), OptimConfig(lr=1e-2, warmup_steps=3),
                      TrainConfig(max_epochs=2, checkpoint_interval=0, valid_interval=3,
                                  average_period=2, keep_last=0),
                      exp_dir, train_batches=batches, valid_batches=valid_batches)
    if resume:
        assert trainer.resume()
    trainer.fit()
    return trainer


def test_a_signal_during_a_mid_epoch_validation_stops_right_after_it(tmp_path, outer_handlers):
    """SIGTERM while step 3 validates (train.valid_interval; a validation can take minutes of
    the kill's grace period): training stops at step 3 with its checkpoint. It trained step 4
    first, and only then wrote the checkpoint the kill may not wait for."""
    full = _validating_every_3_steps(tmp_path / "full")
    with pytest.raises(TrainingPreempted) as stop:
        _validating_every_3_steps(tmp_path / "preempted", signal_at_step=3)
    assert stop.value.step == 3
    assert [n for n, _ in list_checkpoints(tmp_path / "preempted")] == [3]
    resumed = _validating_every_3_steps(tmp_path / "preempted", resume=True)
    _assert_same_weights(full, resumed)


def test_finite_gradient_sums_whose_float32_norm_would_overflow_are_clipped_not_skipped(
        tmp_path):
    """Gradient sums of elements ~1e19 are finite, yet their squares overflow float32: the
    norm came out inf and the step was skipped as non-finite (its batches saved, 'non-finite
    gradients (norm inf)' logged) instead of clipped, at norms ~19 orders of magnitude below
    float32's limit. Clipped in float64 they make the step clip_grad_norm_ makes of them."""
    torch.manual_seed(0)
    model = ToyModel()
    trainer = Trainer(model, OptimConfig(grad_clip=5.0),
                      TrainConfig(max_epochs=1, checkpoint_interval=0, average_period=0),
                      tmp_path, train_batches=batches)
    sums = [1e19 * torch.randn_like(p) for p in model.parameters()]
    assert all(torch.isfinite(g).all() for g in sums)
    for param, grad in zip(model.parameters(), sums):
        param.grad = grad.clone()
    trainer._accum_utts = 4.0
    reference = [nn.Parameter(torch.zeros_like(g, dtype=torch.float64)) for g in sums]
    for param, grad in zip(reference, sums):
        param.grad = grad.double() / 4.0
    torch.nn.utils.clip_grad_norm_(reference, 5.0)
    got = _gradients_the_optimizer_steps_with(trainer, model)
    assert trainer.progress.skipped_steps == 0 and not (tmp_path / "bad-batches").exists()
    for mine, theirs in zip(got, reference):
        torch.testing.assert_close(mine, theirs.grad.float(), rtol=1e-5, atol=1e-7)


def test_a_signal_during_the_interval_checkpoint_stops_right_after_it(tmp_path, monkeypatch,
                                                                      outer_handlers):
    """SIGTERM while the interval writes checkpoint-4.pt: training stops at step 4, whose
    checkpoint holds its position, as after an epoch's end. It went on to step 5 and wrote a
    second checkpoint before it stopped, doubling the writes inside the kill's grace period."""
    from asr.train import trainer as trainer_module

    full = run(tmp_path / "full")
    real_save, written = trainer_module.atomic_torch_save, []

    def save_while_signalled(state, path):
        if path.name == "checkpoint-4.pt":  # the interval's (checkpoint_interval=2)
            os.kill(os.getpid(), signal.SIGTERM)
        written.append(path.name)
        real_save(state, path)

    monkeypatch.setattr(trainer_module, "atomic_torch_save", save_while_signalled)
    stop = _preempted(tmp_path / "preempted")
    monkeypatch.undo()
    assert (stop.step, stop.signum) == (4, signal.SIGTERM)
    assert written == ["checkpoint-2.pt", "checkpoint-4.pt"]
    assert [n for n, _ in list_checkpoints(tmp_path / "preempted")] == [2, 4]
    resumed = run(tmp_path / "preempted", resume=True)
    _assert_same_weights(full, resumed)
