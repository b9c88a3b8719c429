"""Training configuration and the resumable progress record."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class TrainConfig:
    """How long and how to train.

    Attributes:
        max_epochs: number of passes over the training data.
        max_steps: stop after this many optimizer steps (0: no limit); when that is an epoch's
            last step, the epoch still ends (validation, dev WER, ``epoch-N.pt``).
        log_interval: steps between TensorBoard scalars / progress-bar updates.
        valid_interval: steps between mid-epoch validations (0: only at the end of each epoch;
            an epoch that ends on such a step takes its loss, validated once).
        checkpoint_interval: steps between ``checkpoint-N.pt`` writes (0: only per epoch).
        keep_last: how many step checkpoints to keep (0 keeps all).
        average_period: steps between updates of the running parameter average (0: off). A
            resumed run keeps the period its checkpoint was written with (the average is a
            mean over samples every that many steps); averaging turned on at a resume starts
            from the resumed weights, counted as the mean of every earlier step.
        use_amp: mixed precision on CUDA (losses stay float32); ignored on CPU.
        amp_dtype: ``bfloat16`` (no loss scaling needed; Ampere and newer GPUs) or ``float16``
            (with a GradScaler, which skips overflowing steps and lowers its scale): the choice
            for GPUs without bfloat16, such as V100 and T4 (``--set train.amp_dtype=float16``).
        cpu_amp: bfloat16 autocast when training on CPU (losses stay float32). Worth it only on
            CPUs with native bf16 (Intel AMX / AVX512-BF16: ~1.3x per step for the mini_tts
            Transformer); elsewhere bf16 matmuls are emulated and ~10x slower than float32.
            ``"auto"`` turns it on where oneDNN reports native bf16 and trains in float32
            elsewhere; ``true`` forces it (with a warning on CPUs without native bf16). Off by
            default.
        accum_grad: batches accumulated per optimizer step (an epoch's last step takes the
            batches left over, so that no gradient is carried into the next epoch).
        seed: base random seed (each rank adds its rank).
        device: ``auto``, ``cpu`` or ``cuda``.
        dev_wer: decode the dev set with a greedy searcher after each epoch (WER in the plot);
            with several processes each decodes its share and the error counts are summed.
        dev_wer_max_utterances: decode at most this many dev utterances for it (0: all), on all
            the processes together.
        max_skipped_in_a_row: optimizer steps with non-finite gradients are skipped (the
            batches saved under ``<exp_dir>/bad-batches/``); more than this many in a row stop
            training with an error.
        min_loss_scale: float16 training (``amp_dtype=float16`` on CUDA): the GradScaler skips a
            step whose gradients overflow and halves its loss scale, so a loss that overflows at
            every step would halve it forever while training does nothing. An overflow that
            leaves the scale below this stops training with an error naming the step and the
            scale (the step's batches saved under ``<exp_dir>/bad-batches/``); each overflow
            that leaves it below 0.01 is logged as a warning first. The default, 1e-5, and the
            warning level are icefall's; from the initial 2**16 the floor is ~33 overflows in a
            row away. 0 never stops.
        time_budget_s: wall-clock seconds of training, summed over resumed runs (0: no budget).
            A budgeted run measures the costs of its steps and, apart, of its validations,
            checkpoints and ends of epochs, plans the total step count that fits, each piece of
            work charged once where it is done, the final stop's checkpoint or epoch end
            included (:mod:`asr.train.budget`), after
            ``time_budget_calibration_steps`` steps, again every ``time_budget_quantum`` steps and
            after every epoch, and ends the cosine schedule at the plan (it replaces
            ``optim.total_steps``); ``max_steps`` (when > 0) and ``max_epochs`` cap the plan, and
            training stops when the budget is spent whatever the plan said. The step count then
            depends on the machine: resumption restores the plan and continues it, but is exact only
            where the re-measured plan comes out the same. A run resumed with another budget (as
            ``max_time`` in Lightning / NeMo, the budget counts the seconds of all the runs) drops
            its plan and plans for the new one: a raised budget continues a run that had ended on
            its plan (its cosine horizon moves out with the new plan, so the rate rises again from
            the floor it had reached), a lowered one ends it sooner.
        time_budget_calibration_steps: steps before the first plan; the step cost is timed from
            a fifth of them on (the first steps of a run mostly pay for start-up).
        time_budget_quantum: plans are rounded down to a multiple of this many steps, so repeated
            runs on one machine usually train the same number of steps.
        time_budget_window: plans use the cost of (at least) the latest this many steps, so a
            machine that gets faster or slower during the run (other load, a shared host) gets
            plans that follow it; a window longer than the run averages the whole run.

    Resumption is bit-exact with any ``data.num_workers``: the data path's random draws
    (augmentation, dither) are a function of the data seed, the epoch and the cut ids
    (:mod:`asr.data.dataset`), and the model's (dropout, chunk sizes...) come from the main
    process' RNG state, which checkpoints capture. Resumed with another number of processes, a
    run trains the rest of the epoch's batches, each once, but not bit-exactly (the RNG streams
    restart from the seed; :mod:`asr.train.trainer`); a time budget's plans count the epochs'
    batches in steps of the new number (:func:`asr.train.budget.epoch_steps`).
    """

    max_epochs: int = 10
    max_steps: int = 0
    log_interval: int = 10
    valid_interval: int = 0
    checkpoint_interval: int = 500
    keep_last: int = 5
    average_period: int = 100
    use_amp: bool = True
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    cpu_amp: bool | Literal["auto"] = False
    accum_grad: int = 1
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dev_wer: bool = True
    dev_wer_max_utterances: int = 0
    max_skipped_in_a_row: int = 20
    min_loss_scale: float = 1e-5
    time_budget_s: float = 0.0
    time_budget_calibration_steps: int = 50
    time_budget_quantum: int = 100
    time_budget_window: int = 200

    def __post_init__(self) -> None:
        if self.max_epochs <= 0:
            raise ValueError(f"max_epochs must be > 0, got {self.max_epochs}")
        if self.accum_grad <= 0:
            raise ValueError(f"accum_grad must be > 0, got {self.accum_grad}")
        if self.log_interval <= 0:  # the loop takes the step count modulo it
            raise ValueError(f"log_interval must be > 0, got {self.log_interval}")
        for name in ("max_steps", "valid_interval", "checkpoint_interval", "keep_last",
                     "average_period", "dev_wer_max_utterances", "max_skipped_in_a_row"):
            if getattr(self, name) < 0:  # 0 is each one's "off" / "all"
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.min_loss_scale < math.inf:  # NaN fails too
            raise ValueError(f"min_loss_scale must be >= 0 and finite, got {self.min_loss_scale}")
        if not 0 <= self.time_budget_s < math.inf:
            raise ValueError(f"time_budget_s must be >= 0 and finite, got {self.time_budget_s}")
        knobs = ("calibration_steps", "quantum", "window")
        if any(getattr(self, f"time_budget_{k}") <= 0 for k in knobs):
            raise ValueError(
                "time_budget_calibration_steps, time_budget_quantum and time_budget_window must "
                "be > 0, got " + ", ".join(str(getattr(self, f"time_budget_{k}")) for k in knobs)
            )


@dataclass
class EpochRecord:
    """Per-epoch summary kept in the checkpoint and plotted."""

    epoch: int
    train_loss: float  # per utterance, over the steps taken (NaN: none was)
    valid_loss: float | None = None
    valid_wer: float | None = None
    step: int | None = None  # optimizer steps at the end of the epoch
    # the epoch's global batches (all processes' together; None: unknown, in a checkpoint
    # written before they were kept), which plans turn into steps of any world size
    batches: int | None = None


@dataclass
class Progress:
    """Where training is: everything besides module/optimizer state needed to resume exactly.

    Attributes:
        epoch: current epoch (1-based).
        step: optimizer steps taken so far (each one step of every process: a count of global
            batches of ``accum_grad`` x world size batches, whatever the world size was).
        batches_in_epoch: GLOBAL batches of the current epoch already consumed, by all
            processes together (the sampler position in the epoch's batch stream): each rank's
            count times the world size.
        epoch_world_size: the number of processes the current epoch's batch stream is sampled
            for (the world size of the run that started the epoch; a run resumed mid-epoch with
            another world size takes its share of the rest of that stream,
            :class:`asr.data.epochs.EpochBatches`). None: unknown, in a checkpoint written
            before it was kept, whose ``batches_in_epoch`` counts one process' batches (the
            trainer takes them as batches of each of its processes, as it then did).
        epoch_stream: what the current epoch's batch stream is sampled with, as the batch source
            names it (``train_batches.stream``: :attr:`asr.data.epochs.EpochBatches.stream`, the
            sampler and its duration buckets), recorded when the epoch starts; a run resumed
            mid-epoch whose source names another stream trains the epoch again from its start
            (``batches_in_epoch`` is a position in the recorded stream alone), unless
            ``epoch_batches`` says that position is the stream's end. None: a source that names
            none, or a checkpoint written before it was kept.
        epoch_batches: the current epoch's global batches in its recorded stream, once a look
            past ``batches_in_epoch`` found none left: before every checkpoint written inside
            the epoch (the interval's, a stop's, a preemption's; the batch found is kept for
            the next step and the RNGs it may draw from are left as they were) and when the
            stream runs out. While it equals ``batches_in_epoch`` the epoch's batches are all
            trained on and only its end is due, whatever stream the batch source now samples.
            None: not known (any other position, or a checkpoint written before it was kept:
            the trainer then looks for a next batch in the current stream).
        history: finished epochs.
        loss_sum / utts_sum: running training loss of the current epoch.
        planned_steps: where a run stops to fit ``train.time_budget_s`` (0: no plan yet, or all
            of ``max_epochs`` fit; the scheduler keeps the cosine horizon).
        plan_budget_s: the ``train.time_budget_s`` that ``planned_steps`` was planned for (None:
            no plan yet, or unknown in a checkpoint written before it was kept). A run resumed
            with another budget drops the plan and plans for its own budget
            (:meth:`asr.train.budget.TimeBudget.start`).
        train_seconds: wall-clock seconds spent training, summed over resumed runs.
        skipped_steps: optimizer steps skipped for non-finite gradients.
        skipped_in_a_row: of them, those since the last step taken (``train.max_skipped_in_a_row``
            counts them across a resumption, e.g. from the checkpoint of an epoch whose last
            steps were skipped).
        valid_step / valid_loss: the step of the latest validation and its loss (None: no
            validation batches), so that an epoch ending on a step already validated
            (``train.valid_interval``) reuses that loss instead of validating and logging it
            again, also in a run resumed from that step's checkpoint. -1: none yet.
        step_scalars: the TensorBoard scalars logged at ``step`` so far (tag -> value). A
            resumed run purges the event files from ``step`` on (the killed run may have logged
            more at that step after its checkpoint, e.g. an epoch end's) and writes these again.
            None: unknown (a checkpoint written before they were kept); the resumed run then
            purges from ``step + 1``.
        log_bytes: the size of the training log ``<exp_dir>/train.log`` when this checkpoint
            was written (0: a run from step 0, before it logged anything). A run resumed from
            it moves what the log holds past that size (what the interrupted run logged after
            its checkpoint, which the resumed run logs again) to ``train-superseded.log``, so
            that ``train.log`` reads as one uninterrupted run, as TensorBoard does. None:
            unknown (a checkpoint written before it was kept); the log is then only appended
            to.
    """

    epoch: int = 1
    step: int = 0
    batches_in_epoch: int = 0
    epoch_world_size: int | None = 1
    epoch_stream: str | None = None
    epoch_batches: int | None = None
    loss_sum: float = 0.0
    utts_sum: float = 0.0
    planned_steps: int = 0
    plan_budget_s: float | None = None
    train_seconds: float = 0.0
    skipped_steps: int = 0
    skipped_in_a_row: int = 0
    valid_step: int = -1
    valid_loss: float | None = None
    step_scalars: dict[str, float] | None = field(default_factory=dict)
    log_bytes: int | None = 0
    history: list[EpochRecord] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        state = asdict(self)
        state["history"] = [asdict(r) for r in self.history]
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Progress:
        history = [EpochRecord(**r) for r in state.get("history", [])]
        valid_loss, scalars = state.get("valid_loss"), state.get("step_scalars")
        log_bytes, plan_budget_s = state.get("log_bytes"), state.get("plan_budget_s")
        epoch_world_size, epoch_stream = state.get("epoch_world_size"), state.get("epoch_stream")
        epoch_batches = state.get("epoch_batches")
        return cls(
            epoch=int(state["epoch"]),
            step=int(state["step"]),
            batches_in_epoch=int(state["batches_in_epoch"]),
            epoch_world_size=None if epoch_world_size is None else int(epoch_world_size),
            epoch_stream=None if epoch_stream is None else str(epoch_stream),
            epoch_batches=None if epoch_batches is None else int(epoch_batches),
            loss_sum=float(state.get("loss_sum", 0.0)),
            utts_sum=float(state.get("utts_sum", 0.0)),
            planned_steps=int(state.get("planned_steps", 0)),
            plan_budget_s=None if plan_budget_s is None else float(plan_budget_s),
            train_seconds=float(state.get("train_seconds", 0.0)),
            skipped_steps=int(state.get("skipped_steps", 0)),
            skipped_in_a_row=int(state.get("skipped_in_a_row", 0)),
            valid_step=int(state.get("valid_step", -1)),
            valid_loss=None if valid_loss is None else float(valid_loss),
            step_scalars=(
                None if scalars is None else {str(k): float(v) for k, v in scalars.items()}
            ),
            log_bytes=None if log_bytes is None else int(log_bytes),
            history=history,
        )
