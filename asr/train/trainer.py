"""The training loop: plain PyTorch, DDP through ``torchrun``, AMP on GPU, exact resume.

The trainer knows nothing about speech: it drives any module whose ``forward(batch, step=...)``
(``step``: the optimizer steps taken so far, for losses with a schedule) returns an object with
``loss`` (scalar, SUMMED over utterances), ``num_utterances`` and ``metrics`` (a dict of floats,
also sums), as :class:`asr.model.ASRModel` does; one whose loss leaves some trainable parameters
out (``has_unused_parameters`` true: an ASRModel's heads of loss weight 0) has DDP look for them
at every step, as it must, and only then: the walk of the autograd graph took ~3 ms a step for
the 1.1M-parameter mini_tts transducer on 2 CPU processes (58-87 ms steps of 2 x 2 s; at a batch
of 8 x 10 s, 1.04-1.06 s steps, it was within the noise). Wall-clock budgets are planned by
:class:`asr.train.budget.TimeBudget`, called after each step and at each end of epoch. Batches
come from a callable ``train_batches(epoch, skip, skip_world_size)`` that yields this rank's
batches of ``epoch`` after the first ``skip`` GLOBAL batches (all ranks' together) of the
epoch's stream as ``skip_world_size`` processes sample it (the same batches, augmentation
included, as in an uninterrupted run: :class:`asr.data.epochs.EpochBatches`); that position plus
the RNG states is what makes a resumed run continue exactly where the killed one stopped. A
source that names its stream (``train_batches.stream``, e.g. the sampler and its duration
buckets) has it recorded in the checkpoint (``Progress.epoch_stream``): an epoch resumed in
another stream, where the position means other batches, is trained again from its start, with a
warning; unless the checkpoint knows its position to be the end of the recorded stream
(``Progress.epoch_batches``, looked for by every checkpoint written inside an epoch,
:meth:`Trainer.save`), where only the epoch's end is due.

Counters (:class:`asr.train.state.Progress`): ``step`` counts optimizer steps, one per step of
all ranks together; ``batches_in_epoch`` counts the epoch's global batches (each rank's batches
times the world size) and ``epoch_world_size`` the processes the epoch's stream is sampled for,
so a run resumed mid-epoch with another number of processes takes its share of exactly the
batches the killed run left (the RNG streams then restart from the seed: not bit-exact). Its
steps take ``accum_grad`` batches of each of its processes: with
``optim.reference_batch_seconds`` the LR schedule counts them by their audio
(:class:`asr.train.optim.Scheduler`, ``schedule_scale``; without it, one per step), while
``train.max_steps``, ``valid_interval``, ``checkpoint_interval`` and ``average_period`` count
optimizer steps of whatever size.

Gradient normalisation: each batch's summed loss is multiplied by the world size before
``backward`` (DDP averages gradients over ranks, so they become sums over the global batch); at the
optimizer step the gradients are divided by the number of utterances of the GLOBAL batch (summed
over ranks and over the ``accum_grad`` accumulated batches). N processes therefore give the same
update as one process seeing their batches, and one process with ``accum_grad=N`` the same as
N processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from asr.checkpoints.averaging import RunningAverage
from asr.checkpoints.io import (
    CheckpointError,
    atomic_torch_save,
    capture_rng_state,
    checkpoint_path,
    epoch_checkpoint_path,
    latest_checkpoint,
    link_epoch_checkpoint,
    list_checkpoints,
    remove_old_checkpoints,
    remove_stale_temporaries,
    restore_rng_state,
    safe_torch_load,
    training_checkpoint,
)
from asr.constants import LOG_FORMAT, PER_RANK
from asr.train.agreement import StepReport, agree
from asr.train.budget import CHECKPOINT, EPOCH_END, VALIDATION, TimeBudget
from asr.train.distributed import DistInfo, all_reduce_sum, average_gradients, barrier
from asr.train.optim import OptimConfig, Scheduler, build_optimizer
from asr.train.plot import plot_history
from asr.train.preemption import PreemptionGuard, TrainingPreempted
from asr.train.state import EpochRecord, Progress, TrainConfig
from asr.types import Batch

logger = logging.getLogger(__name__)

#: float16 loss scales below this are logged as warnings (icefall's level); ``min_loss_scale``
#: stops training.
LOW_LOSS_SCALE = 0.01

#: The training log in the experiment directory: what rank 0 logs while :meth:`Trainer.fit`
#: runs, appended to by every run into the directory.
TRAIN_LOG = "train.log"
#: Where a resumed run moves what the training log holds past its checkpoint (logged by the
#: run that stopped after writing it, and logged again by the resumed run).
SUPERSEDED_LOG = "train-superseded.log"

#: ``(epoch, skip, skip_world_size) -> batches`` of this rank (module docstring)
BatchSource = Callable[[int, int, int], Iterable[Batch]]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class _EpochIterator:
    """An epoch's batch iterator that can tell ahead whether it has ended (:meth:`ended`),
    keeping the batch it loads for the loop: the look costs no load of its own while the epoch
    goes on. The look leaves the RNGs as it found them (a batch's loading may draw from them:
    augmentation), and the kept batch puts back the states its loading left when the loop takes
    it: the draws happen where the loop takes the batch, as without the look, so a checkpoint
    written between the look and that take holds the RNGs a resumed run loads the batch with.
    A batch whose loading fails (a bad file) is kept as its error, raised where the loop takes
    it: the checkpoint that looked is written first.

    Args:
        batches: the epoch's batches of this rank, from the position on.
        device: the device whose CUDA RNG state is kept with the CPU ones
            (:func:`asr.checkpoints.io.capture_rng_state`).
    """

    def __init__(self, batches: Iterable[Batch], device: torch.device) -> None:
        self._batches = iter(batches)
        self._device = device
        # the batch looked at and the RNGs its loading left, or the error it failed with
        self._next: tuple[Batch, dict[str, Any]] | Exception | None = None

    def __iter__(self) -> _EpochIterator:
        return self

    def __next__(self) -> Batch:
        looked, self._next = self._next, None
        if looked is None:
            return next(self._batches)
        if isinstance(looked, Exception):
            raise looked
        batch, rng = looked
        restore_rng_state(rng, self._device)
        return batch

    def ended(self) -> bool:
        """Whether the epoch is known to hold no batch after the position (a look loads the next
        one and keeps it, with the RNGs as before; one that fails to load is not known to be
        the last)."""
        if self._next is None:
            before = capture_rng_state(self._device)
            try:
                batch = next(self._batches, None)
                if batch is None:
                    return True
                self._next = (batch, capture_rng_state(self._device))
            except Exception as err:  # noqa: BLE001 - raised where the loop takes the batch
                self._next = err
            finally:
                restore_rng_state(before, self._device)
        return False


def _cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively here (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Trainer:
    """Runs epochs of optimisation with checkpoints, validation, logs and a progress plot.

    Args:
        model: module with ``forward(batch) -> output`` (see module docstring); moved to the
            device and wrapped in DDP when distributed.
        optim_cfg: optimizer and learning-rate schedule.
        train_cfg: loop settings.
        exp_dir: where checkpoints, TensorBoard logs, ``train.log`` and ``training.png`` go.
        train_batches: ``(epoch, skip, skip_world_size) -> batches`` of this rank (module
            docstring).
        valid_batches: ``() -> batches`` for the validation loss (or None).
        evaluate: ``(model) -> WER in percent`` (or None) after each epoch, called on every rank
            (distributed, a collective: each rank decodes its share, :class:`asr.run.train.DevWer`)
            and the same number on each; rank 0 logs it.
        dist: this process' place in the job.
        extra_state: plain data stored in every checkpoint (e.g. the resolved config).
        clock: monotonic seconds, for ``train.time_budget_s`` (replaceable in tests).
        schedule_scale: reference steps of the LR schedule per optimizer step
            (:meth:`asr.train.optim.OptimConfig.step_scale` of the global batch's audio).
        check_resume: called by :meth:`resume` with the ``extra`` state of the checkpoint it
            read, before anything of it is loaded; a ``ValueError`` it raises (the checkpoint
            was made for other data, e.g. another vocabulary of the same size, which the
            parameter shapes cannot tell) refuses the checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        optim_cfg: OptimConfig,
        train_cfg: TrainConfig,
        exp_dir: str | Path,
        train_batches: BatchSource,
        valid_batches: Callable[[], Iterable[Batch]] | None = None,
        evaluate: Callable[[nn.Module], float | None] | None = None,
        dist: DistInfo | None = None,
        extra_state: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        schedule_scale: float = 1.0,
        check_resume: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        self.cfg = train_cfg
        self.check_resume = check_resume
        self.dist = dist or DistInfo()
        self.exp_dir = Path(exp_dir)
        self.train_batches = train_batches
        self.valid_batches = valid_batches
        self.evaluate = evaluate
        self.extra_state = dict(extra_state or {})
        self.device = self.dist.device
        model = model.to(self.device)
        self.optimizer = build_optimizer(model, optim_cfg)
        self.scheduler = Scheduler(self.optimizer, optim_cfg, schedule_scale)
        self.grad_clip = optim_cfg.grad_clip
        self.averager = (
            RunningAverage(model, train_cfg.average_period)
            if train_cfg.average_period > 0
            else None
        )
        if self.dist.distributed:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(getattr(model, "has_unused_parameters", False)),
            )
        self.model = model
        on_cuda = self.device.type == "cuda"
        cpu_amp = train_cfg.cpu_amp
        native_bf16 = not on_cuda and cpu_amp is not False and _cpu_has_bf16()
        if not on_cuda and cpu_amp == "auto":
            cpu_amp = native_bf16
            logger.info(
                "train.cpu_amp=auto: %s", "native bfloat16 here, training with bf16 autocast"
                if cpu_amp else "no native bfloat16 on this CPU, training in float32"
            )
        self.amp = (train_cfg.use_amp and on_cuda) or (cpu_amp is True and not on_cuda)
        cuda_fp16 = on_cuda and train_cfg.amp_dtype == "float16"
        self.amp_dtype = torch.float16 if cuda_fp16 else torch.bfloat16  # CPU: bfloat16 only
        if self.amp and not on_cuda and not native_bf16:
            logger.warning(
                "train.cpu_amp: this CPU has no native bfloat16 support; autocast will be much "
                "slower than float32 (set train.cpu_amp=auto or false)"
            )
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp and self.amp_dtype == torch.float16
        )
        self.progress = Progress(epoch_world_size=self.dist.world_size)
        self._accum_utts = 0.0  # utterances in the gradients accumulated since the last step
        self._step_batches: list[Batch] = []  # the batches of the step being accumulated
        self._step_loss = 0.0  # their summed loss and metrics (this rank's), for the logs
        self._step_metrics: dict[str, float] = {}
        self._writer = None
        self._first_logged_step = 1  # the first step this run may log (fit() sets it)
        self._replayed: tuple[int, dict[str, float]] = (0, {})  # what fit() re-logs (writer)
        self._log_handler: logging.Handler | None = None  # train.log while fit() runs (rank 0)
        self._resumed_from: Path | None = None  # the checkpoint resume() loaded
        self._guard = PreemptionGuard()  # SIGTERM / SIGUSR1 while fit() runs
        # _position() of the latest checkpoint written: a stop writes its own unless that one
        # holds its very position
        self._saved_at: tuple[int, int, int] | None = None
        self._batches: _EpochIterator | None = None  # the epoch's, while _train_epoch runs
        self._agreed = StepReport()  # what the ranks agreed on at the latest step (_agree)
        # a source that says whether it drops an epoch's last, unfilled round (lhotse's
        # drop_last, EpochBatches.drop_last) has its steps counted so; else as with it
        self.budget = TimeBudget(train_cfg, self.dist, clock,
                                 drop_last=getattr(train_batches, "drop_last", True))

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        rng = capture_rng_state(self.device)
        if self.dist.distributed:
            gathered: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, rng)
            rng_per_rank = gathered
        else:
            rng_per_rank = [rng]
        progress = self.progress.state_dict()
        # the epoch's running loss of every rank (each sums its own); rank 0 resumes with it
        progress["loss_sum"] = all_reduce_sum(self.progress.loss_sum, self.dist)
        progress["utts_sum"] = all_reduce_sum(self.progress.utts_sum, self.dist)
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": progress,
            "averager": self.averager.state_dict() if self.averager else None,
            "rng_per_rank": rng_per_rank,
            "extra": self.extra_state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress.from_state_dict(state["progress"])
        if not self.dist.is_main:  # rank 0 carries the whole job's running loss (state_dict)
            self.progress.loss_sum = self.progress.utts_sum = 0.0
        if self.averager is not None:
            if state.get("averager"):
                self.averager.load_state_dict(state["averager"])
            else:  # averaging turned on at this resume: the resumed weights stand for every
                # earlier step (not the freshly initialised ones the averager was made with)
                self.averager = RunningAverage(unwrap(self.model), self.averager.period)
        rngs = state["rng_per_rank"]
        self._resume_position(len(rngs))
        if len(rngs) == self.dist.world_size:
            restore_rng_state(rngs[self.dist.rank], self.device)
        else:
            logger.warning(
                "checkpoint was written by %d processes, resuming with %d: RNG streams restart "
                "from the seed, so the run continues but not bit-exactly", len(rngs),
                self.dist.world_size,
            )

    def _resume_position(self, written_by: int) -> None:
        """Where this run enters the checkpoint's epoch, written by ``written_by`` processes."""
        p, world_size = self.progress, self.dist.world_size
        if p.epoch_world_size is None:  # a checkpoint without it counts one process' batches
            if p.batches_in_epoch and written_by != world_size:
                logger.warning(
                    "checkpoint written by %d processes before checkpoints recorded their world "
                    "size, resumed with %d mid-epoch: each process skips the %d batches one of "
                    "them had trained on, so cuts of epoch %d may be trained on twice or not at "
                    "all", written_by, world_size, p.batches_in_epoch, p.epoch,
                )
            p.batches_in_epoch *= world_size
            p.epoch_world_size = world_size
        if p.batches_in_epoch == 0:  # nothing of the epoch trained on: this run samples it
            p.epoch_world_size = world_size
        elif p.epoch_world_size != world_size:
            logger.info(
                "epoch %d was sampled for %d processes: the %d of this run share the rest of its "
                "batches after the %d trained on (a step now takes another global batch, which "
                "the LR schedule counts by its audio with optim.reference_batch_seconds)",
                p.epoch, p.epoch_world_size, world_size, p.batches_in_epoch,
            )

    def _check_epoch_stream(self, path: Path) -> None:
        """Trains the resumed epoch again from its start, with a warning naming the checkpoint
        ``path``, when it was interrupted mid-epoch in a batch stream other than the one the
        batch source now samples (``train_batches.stream``; for a checkpoint that recorded none,
        ``train_batches.unrecorded_stream``, what the source's earlier versions sampled):
        skipping the checkpoint's count of batches there would train some cuts of the epoch
        twice and leave others out. The steps taken stay counted. A position known to be the
        end of the recorded stream (:meth:`_epoch_exhausted`) is kept: the epoch's batches are
        all trained on, only its end is due."""
        p = self.progress
        current = getattr(self.train_batches, "stream", None)
        if p.batches_in_epoch == 0 or current is None:
            return
        recorded = p.epoch_stream
        if recorded is None:
            recorded = getattr(self.train_batches, "unrecorded_stream", current)
        if recorded == current:
            p.epoch_stream = current  # a checkpoint that recorded none: its next one does
            return
        if self._epoch_exhausted():
            logger.info(
                "%s was written at the end of epoch %d's batch stream, sampled with %s (this run "
                "samples %s): only the epoch's end is due", path, p.epoch, recorded, current)
            return
        logger.warning(
            "%s was written %d batches into epoch %d of a batch stream sampled with %s; this run "
            "samples it with %s, where that position means other batches: epoch %d is trained "
            "again from its first batch (the %d steps taken stay counted)",
            path, p.batches_in_epoch, p.epoch, recorded, current, p.epoch, p.step,
        )
        p.batches_in_epoch = 0
        p.epoch_world_size = self.dist.world_size
        p.epoch_stream = current
        p.loss_sum = p.utts_sum = 0.0

    def save(self, path: Path) -> None:
        """Writes the training checkpoint ``path`` (rank 0; every rank must call it). Logged
        before the state is taken, so that ``Progress.log_bytes`` counts the line: a run
        resumed from ``path`` keeps it and moves only what was logged later. Inside an epoch,
        it first looks whether the epoch has a batch left (:meth:`_note_the_epochs_end`), so
        that every checkpoint of an epoch's last step (the interval's, a stop's, a
        preemption's) records the epoch's end."""
        self._note_the_epochs_end()
        if self.budget.running:  # inside fit(): count this run's seconds
            self.progress.train_seconds = self.budget.elapsed()
        if self.dist.is_main:
            logger.info("writing %s", path)
            if self._log_handler is not None:
                self._log_handler.flush()
                try:
                    self.progress.log_bytes = (self.exp_dir / TRAIN_LOG).stat().st_size
                except OSError:  # moved away meanwhile: a resumed run only appends
                    self.progress.log_bytes = None
        state = self.state_dict()  # collective when distributed: every rank must call it
        if self.dist.is_main:
            atomic_torch_save(state, path)
        barrier(self.dist)
        self._saved_at = self._position()

    def resume(self, path: str | Path | None = None) -> bool:
        """Loads ``path`` or the newest ``checkpoint-N.pt`` in exp_dir; returns whether it did.

        Raises:
            CheckpointError: naming the file, when it is unreadable, holds the state of
                another model (another configuration's shapes or parameters) or is refused by
                ``check_resume``.
        """
        if self.dist.is_main:
            # nothing of this process is written there yet: a temporary with its pid is a
            # killed process' whose pid it was given again (a restarted container)
            remove_stale_temporaries(self.exp_dir, writing_here=False)
        newest = not path
        path = Path(path) if path else latest_checkpoint(self.exp_dir)
        if path is None:
            return False
        try:
            # read onto the CPU: the RNG states must be CPU tensors (read onto a GPU, every
            # resume there failed), and the model, optimizer and average copy theirs to the device
            state = training_checkpoint(safe_torch_load(path, map_location="cpu"), path)
        except CheckpointError as err:
            earlier = [p for _, p in list_checkpoints(self.exp_dir) if p != path]
            if not newest or not earlier:
                raise
            raise CheckpointError(  # the newest is unreadable: say how to go on from the one before
                f"{err}; to resume from the checkpoint before it ({earlier[-1].name}), move "
                f"{path.name} out of {self.exp_dir}") from err
        if self.check_resume is not None:
            extra = state.get("extra")
            try:
                self.check_resume(extra if isinstance(extra, Mapping) else {})
            except ValueError as err:
                raise CheckpointError(f"cannot resume from {path}: {err}") from err
        try:
            self.load_state_dict(state)
        except (RuntimeError, KeyError, TypeError, ValueError) as err:
            details = "; ".join(line.strip() for line in str(err).splitlines()[1:4] if line.strip())
            raise CheckpointError(
                f"cannot resume from {path}: it does not fit this model and optimizer (was the "
                f"experiment's configuration changed?): {type(err).__name__}: "
                f"{details or err}"
            ) from err
        self._resumed_from = path  # fit() logs it, in train.log too
        self._check_epoch_stream(path)
        p = self.progress
        epoch_end = p.batches_in_epoch == 0 and p.history and p.history[-1].step == p.step
        if (self.dist.is_main and epoch_end and path.parent.resolve() == self.exp_dir.resolve()
                and not epoch_checkpoint_path(self.exp_dir, p.epoch - 1).exists()):
            # killed between writing the epoch's checkpoint and naming it after the epoch
            link_epoch_checkpoint(path, p.epoch - 1)
            logger.info("named %s after epoch %d, which the interrupted run had not", path,
                        p.epoch - 1)
        return True

    # ------------------------------------------------------------------------------------ loop
    @property
    def writer(self):
        """TensorBoard's writer (rank 0 only). It purges the steps from the first one this run
        logs on: a run killed after its last checkpoint logged steps that the resumed run logs
        again, and their earlier values, from the event files the killed run left, must not
        show beside the new ones (nor, for a run that restarts from step 0, the whole earlier
        run's). That is the checkpoint's own step, at which the killed run may have logged more
        after writing it (an epoch's end after an interval checkpoint of its last step): the
        scalars the checkpoint says were logged at that step (``Progress.step_scalars``) are
        written again first, so that step reads as in an uninterrupted run."""
        if self._writer is None and self.dist.is_main:
            self._writer = SummaryWriter(log_dir=str(self.exp_dir / "tensorboard"),
                                         purge_step=self._first_logged_step)
            step, scalars = self._replayed
            for tag, value in scalars.items():
                self._writer.add_scalar(tag, value, step)
        return self._writer

    def _add_scalar(self, tag: str, value: float) -> None:
        """Logs ``value`` as ``tag`` at the current step (rank 0) and keeps it in
        ``Progress.step_scalars`` for a run resumed from this step's checkpoint."""
        if self.writer is None:
            return
        p = self.progress
        self.writer.add_scalar(tag, value, p.step)
        if p.step_scalars is not None:
            p.step_scalars[tag] = float(value)

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _finished(self) -> bool:
        limit = self.budget.limit(self.progress)
        return 0 < limit <= self.progress.step or self.budget.spent

    def _more_to_train(self) -> bool:
        return self.progress.epoch <= self.cfg.max_epochs and not self._finished()

    def _apply_plan(self, total: int | None) -> None:
        if total is not None:
            self.scheduler.set_total_steps(total)

    def fit(self) -> Progress:
        """Trains until ``max_epochs``, ``max_steps`` or the time budget; returns the progress.
        Rank 0 also writes what is logged meanwhile to ``train.log`` (:meth:`_open_log`), and
        the error that stops it, which the caller reports (``asr train`` on stderr). However
        it ends, the TensorBoard writer is closed (every scalar on disk; a later ``fit()`` opens
        another) and ``train.log`` too.

        SIGTERM and SIGUSR1 (a preemption, :mod:`asr.train.preemption`) are caught while it
        runs, their previous handlers restored when it returns: the step in progress finishes,
        every rank stops after the same step, the checkpoint of that position is written (as
        any checkpoint: a run resumed from it ends as an uninterrupted run) and
        :class:`asr.train.preemption.TrainingPreempted` is raised.
        """
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        self._open_log()
        try:
            with self._guard:
                return self._fit()
        except TrainingPreempted:
            raise  # logged where it stopped, as a warning
        except Exception as err:
            if self._log_handler is not None:  # the command reports it, on stderr alone
                what = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                self._log_handler.handle(logger.makeRecord(
                    logger.name, logging.ERROR, __file__, 0, "training stopped: %s", (what,),
                    None))
            raise
        finally:
            if self._writer is not None:  # its last scalars on disk, however fit() ended
                self._writer.close()
                self._writer = None
            if self._log_handler is not None:
                logging.getLogger().removeHandler(self._log_handler)
                self._log_handler.close()
                self._log_handler = None

    def _open_log(self) -> None:
        """Rank 0: appends every record the root logger passes (any module's, at its level)
        to ``<exp_dir>/train.log`` until :meth:`fit` returns, after moving what the log holds
        past ``Progress.log_bytes`` to ``train-superseded.log``: the lines that the run which
        wrote the checkpoint logged after it (an epoch's validation and end, logged again by
        this run; the error it stopped with), or for a run from step 0 an earlier run's whole
        log. ``train.log`` then reads as one uninterrupted run, as the TensorBoard series do
        (:attr:`writer`), and nothing is deleted. The moved lines are appended to the other
        file, under a line that says what they are, before the log is cut."""
        if not self.dist.is_main:
            return
        p, path = self.progress, self.exp_dir / TRAIN_LOG
        kept = p.log_bytes
        if kept is not None and path.is_file() and path.stat().st_size > kept:
            with path.open("rb") as f:
                f.seek(kept)
                tail = f.read()
            what = (f"what it held after {self._resumed_from.name} was written, logged by the "
                    "run that wrote it; the run resumed from it logs that part again"
                    if self._resumed_from else "an earlier run's log; a run from step 0 starts")
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            header = f"=== {stamp} moved from {TRAIN_LOG}: {what} ===\n"
            with (self.exp_dir / SUPERSEDED_LOG).open("ab") as f:
                f.write(header.encode() + tail + (b"" if tail.endswith(b"\n") else b"\n"))
                f.flush()
                os.fsync(f.fileno())
            os.truncate(path, kept)
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(handler)
        self._log_handler = handler
        if self._resumed_from is not None:
            logger.info(
                "resumed from %s at epoch %d, step %d (%d global batches into the epoch)",
                self._resumed_from, p.epoch, p.step, p.batches_in_epoch)
            self._resumed_from = None  # a later fit() continues this run

    def _fit(self) -> Progress:
        p = self.progress
        self.budget.start(p)
        # a checkpoint that does not say what was logged at its step: keep those logs as they are
        self._first_logged_step = p.step if p.step_scalars is not None else p.step + 1
        self._replayed = (p.step, dict(p.step_scalars or {}))
        if self._epoch_end_left_by_a_stop():
            self._end_epoch()
        while self._more_to_train():
            epoch_done = self._train_epoch()
            if self._finished() and not epoch_done:
                break  # stopped mid-epoch (or by the time budget): no end-of-epoch bookkeeping
            self._end_epoch()
            if self._more_to_train():  # a signal during the end (its checkpoint is written)
                signum = agree(StepReport(signum=self._guard.signum), self.dist).signum
                self._stop_if_preempted(signum, saved=True)
        return self.progress

    def _position(self) -> tuple[int, int, int]:
        """Where training stands: (epoch, global batches into it, optimizer steps)."""
        p = self.progress
        return p.epoch, p.batches_in_epoch, p.step

    def _epoch_exhausted(self) -> bool:
        """Whether the current epoch is known to have no batch left after its position, in the
        stream its position counts (``Progress.epoch_batches``), whatever stream the batch
        source now samples: only its end is due."""
        p = self.progress
        return p.epoch_batches is not None and p.batches_in_epoch >= p.epoch_batches

    def _note_the_epochs_end(self) -> None:
        """Records the end of the epoch's stream as ``Progress.epoch_batches`` when the epoch
        being trained has no batch left after its position (a look at its iterator, which keeps
        the batch it finds for the loop and leaves the RNGs as they were:
        :class:`_EpochIterator`); nothing outside an epoch's batches or where the end is known.
        Every rank yields as many batches of an epoch (:mod:`asr.data.epochs`): all find the
        same."""
        p = self.progress
        if (self._batches is not None and p.batches_in_epoch > 0 and p.epoch_batches is None
                and self._batches.ended()):
            p.epoch_batches = p.batches_in_epoch

    def _save_at_stop(self) -> None:
        """The checkpoint of a finished or stopped run to decode or continue from (unless the
        latest one written holds this position: the interval's of this step; not that of the
        step before a skipped one, whose batches it has not passed), the older ones pruned to
        ``keep_last`` as at every other checkpoint."""
        if self._saved_at != self._position():
            with self.budget.between_steps(CHECKPOINT):
                self.save(checkpoint_path(self.exp_dir, self.progress.step))
            if self.dist.is_main:
                remove_old_checkpoints(self.exp_dir, self.cfg.keep_last)

    def _epoch_end_left_by_a_stop(self) -> bool:
        """Whether a run resumed finished (by ``max_steps``) still owes the end of its epoch: it
        was killed after the checkpoint of a stop on the epoch's last step (written before that
        end, :meth:`_train_epoch`) and before the end's own. Told by the end the checkpoint
        records (:meth:`_epoch_exhausted`), or in one that records none (written before it was
        kept) by a look for a next batch of the epoch in the current stream."""
        p = self.progress
        if not (p.batches_in_epoch > 0 and p.epoch <= self.cfg.max_epochs and self._finished()
                and self._stop_ends_epoch()):
            return False
        if self._epoch_exhausted():
            return True
        batches = self.train_batches(p.epoch, p.batches_in_epoch, p.epoch_world_size)
        return next(iter(batches), None) is None

    def _stop_ends_epoch(self) -> bool:
        """Whether stopping now still ends an epoch that has no batch left: a stop by
        ``max_steps`` does; a time budget's does not (its plan leaves that end out)."""
        return not self.budget.spent and self.progress.planned_steps == 0

    def _train_epoch(self) -> bool:
        """Trains the current epoch until its batches run out or training is finished; returns
        whether its end is due (all of its batches trained on)."""
        p = self.progress
        self.model.train()
        self.scheduler.set_epoch(p.epoch - 1)
        world_size = self.dist.world_size
        if p.batches_in_epoch == 0:  # the stream a checkpoint of this epoch is a position in
            p.epoch_stream = getattr(self.train_batches, "stream", None)
        if self._epoch_exhausted():  # no batch of the source, whose stream may be another
            return True
        batches = self.train_batches(p.epoch, p.batches_in_epoch, p.epoch_world_size)
        bar = tqdm(batches, desc=f"epoch {p.epoch}", disable=not self.dist.is_main,
                   initial=p.batches_in_epoch // world_size, unit="batch", dynamic_ncols=True)
        self._batches = _EpochIterator(bar, self.device)
        try:
            return self._train_batches(bar)
        finally:  # a preemption stops inside
            self._batches = None
            bar.close()

    def _train_batches(self, bar: tqdm) -> bool:
        """:meth:`_train_epoch` on the epoch's batches ``bar``."""
        world_size, p = self.dist.world_size, self.progress
        epoch_done = True
        taken = 0  # this rank's batches of the epoch in this run (checkpoints are between steps)
        assert self._batches is not None  # _train_epoch's
        for batch in self._batches:
            taken += 1
            last_of_step = taken % self.cfg.accum_grad == 0
            self._forward_backward(batch, sync=last_of_step)
            p.batches_in_epoch += world_size  # every rank took one
            if not last_of_step:
                continue
            if self._step(bar):
                # Finished: the checkpoint records whether a batch is left (none: the epoch's
                # end is still due, also for a run resumed in another stream)
                self._save_at_stop()
                epoch_done = self._stop_ends_epoch() and self._epoch_exhausted()
                break
        else:
            p.epoch_batches = p.batches_in_epoch  # the stream ran out
            if self._step_batches:
                # The epoch ended inside an accumulation: its last step takes the batches left
                # (no gradient crosses an epoch's end, where checkpoints hold none). The last of
                # them ran under no_sync, so their gradients are averaged here, as DDP would.
                average_gradients(self.model.parameters(), self.dist)
                if self._step(bar) and not self._stop_ends_epoch():
                    self._save_at_stop()
                    epoch_done = False
        return epoch_done

    def _step(self, bar) -> bool:
        """The optimizer step on the accumulated gradients and what follows it (the epoch's
        running loss, averaging, logs, validation, checkpoints); returns whether training is
        finished. First the ranks agree, in one all-reduce (:func:`asr.train.agreement.agree`),
        on everything the step needs from all of them: the global batch's utterances, whether
        its gradients are finite everywhere, whether a preemption signal reached any rank and
        whether the time budget is spent. A skipped step (non-finite gradients, a float16
        overflow) counts nowhere: its batches' losses and utterances stay out of the epoch's
        train loss; a signal stops training after it as after a step taken. A step that wrote the
        interval's checkpoint or validated (``train.valid_interval``) agrees once more, as an
        epoch's end does: a signal during that write or validation stops training right after
        it, rather than after another step (and a second write).

        Raises:
            TrainingPreempted: a signal reached some rank (:meth:`_stop_if_preempted`).
        """
        lr = self.scheduler.get_last_lr()  # the rate of this step
        loss, utts, metrics = self._step_loss, self._accum_utts, self._step_metrics
        self._step_loss, self._step_metrics = 0.0, {}
        stepped = self._optimizer_step()  # agrees: self._agreed
        validated = False
        if stepped:
            self._after_step(loss, utts, metrics, lr, bar, self._agreed.budget_spent)
            validated = self.progress.valid_step == self.progress.step
        finished = self._finished()
        if not finished:  # a finished run stops anyway, with its own checkpoint
            signum = self._agreed.signum
            # every rank validated or saved after the agreement: a signal meanwhile stops here
            if signum is None and (validated or self._saved_at == self._position()):
                signum = agree(StepReport(signum=self._guard.signum), self.dist).signum
            self._stop_if_preempted(signum, saved=False)
        return finished

    def _after_step(self, loss: float, utts: float, metrics: Mapping[str, float], lr: float,
                    bar, budget_spent: bool) -> None:
        """What follows a step taken: ``loss`` and ``utts`` (this rank's sums over the step's
        batches) into the epoch's running loss, the step count, the time budget (``budget_spent``:
        agreed by the ranks), averaging, logs, validation and the interval's checkpoint."""
        p = self.progress
        if math.isfinite(loss):
            p.loss_sum += loss
            p.utts_sum += utts
        p.step += 1
        p.step_scalars = {}
        self._apply_plan(self.budget.after_step(p, budget_spent))
        if self.averager is not None:
            self.averager.update(unwrap(self.model), p.step)
        if p.step % self.cfg.log_interval == 0:
            self._log_step(loss, utts, metrics, lr, bar)
        if self.cfg.valid_interval > 0 and p.step % self.cfg.valid_interval == 0:
            self._valid_loss()
        if self.cfg.checkpoint_interval > 0 and p.step % self.cfg.checkpoint_interval == 0:
            with self.budget.between_steps(CHECKPOINT):
                self.save(checkpoint_path(self.exp_dir, p.step))
                if self.dist.is_main:
                    remove_old_checkpoints(self.exp_dir, self.cfg.keep_last)

    def _stop_if_preempted(self, signum: int | None, saved: bool) -> None:
        """Between steps: when a preemption signal ``signum`` reached some rank (agreed by all of
        them, :func:`asr.train.agreement.agree`), writes the checkpoint of this position (unless
        ``saved``, or the latest checkpoint holds it) and stops; nothing when ``signum`` is None.

        Raises:
            TrainingPreempted: naming the signal and the step.
        """
        if signum is None:
            return
        if not saved:
            self._save_at_stop()
        stop = TrainingPreempted(signum, self.progress.step)
        if self.dist.is_main:
            logger.warning("%s; exiting with %d", stop, stop.exit_status)
        raise stop

    def _forward_backward(self, batch: Batch, sync: bool = True
                          ) -> tuple[float, float, dict[str, float]]:
        """Forward and backward of one batch; returns (loss, utterances, metrics).

        ``sync``: the batch completes an optimizer step; the others of an accumulation keep their
        gradients local under DDP (``no_sync``), which the completing backward all-reduces with
        its own. A non-finite loss is still back-propagated (every rank must join the reduction)
        and makes the step's gradients non-finite, so :meth:`_optimizer_step` skips the step.
        """
        self._step_batches.append(batch)
        batch = batch.to(self.device)
        accumulate = self.dist.distributed and not sync
        with self.model.no_sync() if accumulate else contextlib.nullcontext():
            with self._autocast():
                out = self.model(batch, step=self.progress.step)
            loss = out.loss.float()
            self.scaler.scale(loss * self.dist.world_size).backward()
        loss_value, num_utts = float(loss.detach()), float(out.num_utterances)
        self._accum_utts += num_utts
        self._step_loss += loss_value
        for name, value in out.metrics.items():
            self._step_metrics[name] = self._step_metrics.get(name, 0.0) + float(value)
        return loss_value, num_utts, dict(out.metrics)

    def _gradients(self) -> list[torch.Tensor]:
        return [param.grad for param in self.model.parameters() if param.grad is not None]

    def _local_gradient_norm(self) -> float:
        """The L2 norm of the accumulated gradient sums, unscaled from float16's loss scale,
        before the ranks agree on the global batch's utterances that divide them: whether it is
        finite is this rank's part of the step's agreement. It is not finite when a gradient is
        not. Computed in float64: in float32 the squares of sums beyond ~1.8e19 overflow, and
        finite gradients that clipping tames would skip the step as non-finite."""
        self.scaler.unscale_(self.optimizer)
        grads = self._gradients()
        if not grads:
            return 0.0
        norms = torch._foreach_norm(grads, 2.0, dtype=torch.float64)
        return float(torch.linalg.vector_norm(torch.stack(norms)))

    def _agree(self, norm: float) -> StepReport:
        """What every rank must know of the step, agreed in one all-reduce
        (:func:`asr.train.agreement.agree`): this rank's utterances (cleared for the next step),
        whether its gradient ``norm`` is finite, its time budget and its preemption signal."""
        utts, self._accum_utts = self._accum_utts, 0.0
        return agree(StepReport(utterances=utts, non_finite=not math.isfinite(norm),
                                budget_spent=self.budget.over(), signum=self._guard.signum),
                     self.dist)

    def _optimizer_step(self) -> bool:
        """Agrees with the other ranks on the step (:meth:`_agree`, kept in ``self._agreed`` for
        :meth:`_step`), then normalises, clips and applies the accumulated gradients; returns
        whether it stepped. The gradient sums are divided by the global batch's utterances and
        clipped to ``optim.grad_clip`` in one multiplication (their per-utterance norm is their
        norm divided by the utterances).

        With float16 the GradScaler skips overflowing steps itself (and lowers its scale); such a
        step is not taken either: no scheduler step, no step counted, and a scale that falls
        below ``train.min_loss_scale`` stops training (:meth:`_check_loss_scale`). Any other step
        whose gradients are not finite (on any rank) is skipped: no optimizer or scheduler
        step, the batches saved for inspection, ``progress.skipped_steps`` counted; more than
        ``train.max_skipped_in_a_row`` in a row stop training.
        """
        norm = self._local_gradient_norm()
        job = self._agreed = self._agree(norm)
        batches, self._step_batches = self._step_batches, []
        if job.non_finite and not self.scaler.is_enabled():
            self.optimizer.zero_grad(set_to_none=True)
            self._skip(batches, norm)
            return False
        factor = 1.0 / max(job.utterances, 1.0)
        if self.grad_clip > 0 and math.isfinite(norm):  # as clip_grad_norm_ computes it
            factor *= min(1.0, self.grad_clip / (norm * factor + 1e-6))
        for grad in self._gradients():
            grad.mul_(factor)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if scale is not None and self.scaler.get_scale() < scale:  # only an overflow lowers it
            self._check_loss_scale(batches)
            return False
        self.progress.skipped_in_a_row = 0
        self.scheduler.step()
        return True

    def _check_loss_scale(self, batches: list[Batch]) -> None:
        """Logs a float16 overflow the GradScaler skipped; stops when the scale it left is
        below ``train.min_loss_scale``.

        Raises:
            FloatingPointError: naming the step, the scale, the floor and the saved batches.
        """
        scale, step = self.scaler.get_scale(), self.progress.step
        if scale >= LOW_LOSS_SCALE:
            logger.info("float16 overflow at step %d: step skipped, loss scale now %g", step, scale)
        else:
            logger.warning("float16 overflow at step %d: step skipped, loss scale now %g (below "
                           "%g: the loss or its gradients overflow float16 again and again)", step,
                           scale, LOW_LOSS_SCALE)
        if scale < self.cfg.min_loss_scale:  # whether or not below the warning level
            path, cuts = self._save_bad_batches(batches)
            raise FloatingPointError(
                f"float16 loss scale fell to {scale:g} at step {step}, below "
                f"train.min_loss_scale={self.cfg.min_loss_scale:g}: the loss or its gradients "
                f"overflow at every step, so no step is taken (cuts: {', '.join(cuts[:4])}...); "
                f"the last batches are in {path}. Lower the learning rate, or train with "
                "train.amp_dtype=bfloat16 or train.use_amp=false"
            )

    def _save_bad_batches(self, batches: list[Batch]) -> tuple[Path, list[str]]:
        """Saves the batches of the current step under ``bad-batches/`` as
        ``epoch-E-batch-B-rank-R.pt`` (``B``: the global batches of epoch ``E`` taken with the
        step's last batch, ``Progress.batches_in_epoch``); returns the file and their cut ids.
        Named by the place in the data, not by the step count, which a skipped step leaves where
        it was: the steps skipped in a row would each overwrite the one before.
        """
        p = self.progress
        path = (self.exp_dir / "bad-batches"
                / f"epoch-{p.epoch}-batch-{p.batches_in_epoch}-rank-{self.dist.rank}.pt")
        atomic_torch_save([dataclasses.asdict(b) for b in batches], path)
        return path, [c for b in batches for c in b.cut_ids]

    def _skip(self, batches: list[Batch], norm: float) -> None:
        p = self.progress
        p.skipped_steps += 1
        p.skipped_in_a_row += 1
        path, cuts = self._save_bad_batches(batches)
        logger.warning(  # each rank's own batches: every rank logs it
            "non-finite gradients (norm %s) at step %d: step skipped (%d so far), its %d "
            "batch(es) saved to %s (cuts: %s)", norm, p.step, p.skipped_steps, len(batches), path,
            ", ".join(cuts[:4]) + ("..." if len(cuts) > 4 else ""), extra=PER_RANK,
        )
        if p.skipped_in_a_row > self.cfg.max_skipped_in_a_row:
            raise FloatingPointError(
                f"{p.skipped_in_a_row} steps in a row had non-finite gradients (at step {p.step},"
                f" cuts: {', '.join(cuts[:4])}...); the last batches are in {path}"
            )

    def _log_step(self, loss: float, num_utts: float, metrics: Mapping[str, float], lr: float,
                  bar) -> None:
        """Logs the step just taken: the per-utterance loss and metrics of the batches it
        accumulated on this rank (sums over ``num_utts`` utterances) and the rate it used."""
        loss = loss / max(num_utts, 1.0)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        self._add_scalar("train/loss", loss)
        self._add_scalar("train/lr", lr)
        for name, value in metrics.items():
            self._add_scalar(f"train/{name}", value / max(num_utts, 1.0))

    @torch.no_grad()
    def _validate(self) -> float | None:
        if self.valid_batches is None:
            return None
        model = unwrap(self.model)
        was_training = model.training
        model.eval()
        loss_sum, utts = 0.0, 0.0
        for batch in self.valid_batches():
            with self._autocast():
                out = model(batch.to(self.device), step=self.progress.step)
            loss_sum += float(out.loss.float())
            utts += float(out.num_utterances)
        model.train(was_training)
        loss_sum = all_reduce_sum(loss_sum, self.dist)
        utts = all_reduce_sum(utts, self.dist)
        return loss_sum / utts if utts > 0 else None

    def _valid_loss(self) -> float | None:
        """The validation loss at the current step, validated and logged once per step: an
        epoch that ends on a step validated by ``train.valid_interval`` (in this run or before
        the checkpoint it resumed from) takes that step's loss. The time budget's plans count
        its cost apart from the steps'."""
        p = self.progress
        if p.valid_step != p.step:
            with self.budget.between_steps(VALIDATION):
                p.valid_step, p.valid_loss = p.step, self._validate()
            if p.valid_loss is not None and self.dist.is_main:
                self._add_scalar("valid/loss", p.valid_loss)
                logger.info("step %d: valid loss %.4f", p.step, p.valid_loss)
        return p.valid_loss

    def _end_epoch(self) -> None:
        p = self.progress
        valid_loss = self._valid_loss()  # timed apart, as every validation
        start = self.budget.clock()
        utts = all_reduce_sum(p.utts_sum, self.dist)
        # an epoch without a step taken has no train loss (not 0)
        train_loss = all_reduce_sum(p.loss_sum, self.dist) / utts if utts > 0 else math.nan
        wer = None
        if self.evaluate is not None:  # every rank: a collective where distributed
            wer = self.evaluate(unwrap(self.model))
            if wer is not None:
                self._add_scalar("valid/wer", wer)
        p.history.append(EpochRecord(p.epoch, train_loss, valid_loss, wer, p.step,
                                     p.batches_in_epoch))
        logger.info(
            "epoch %d done: train loss %.4f, valid loss %s, dev WER %s", p.epoch, train_loss,
            "n/a" if valid_loss is None else f"{valid_loss:.4f}",
            "n/a" if wer is None else f"{wer:.2f}%",
        )
        p.epoch += 1
        p.batches_in_epoch = 0
        p.epoch_world_size = self.dist.world_size
        p.epoch_batches = None
        p.loss_sum = p.utts_sum = 0.0
        # Re-planned before the checkpoint, so that a resumed run continues this plan.
        self._apply_plan(self.budget.after_epoch(p, self.budget.clock() - start))
        # The epoch checkpoint is a step checkpoint (what resume() looks for) plus a hard link
        # (or copy) named after the epoch for averaging and decoding by epoch.
        path = checkpoint_path(self.exp_dir, p.step)
        with self.budget.between_steps(CHECKPOINT):  # the end's costs for the next plans
            self.save(path)
        with self.budget.between_steps(EPOCH_END):
            if self.dist.is_main:
                link_epoch_checkpoint(path, p.epoch - 1)
                remove_old_checkpoints(self.exp_dir, self.cfg.keep_last)
                plot_history(p.history, self.exp_dir / "training.png")
