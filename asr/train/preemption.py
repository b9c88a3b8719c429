"""Preemption: SIGTERM / SIGUSR1 stop training at the next step boundary with a checkpoint.

Clusters announce a kill some seconds ahead: SLURM and Kubernetes send SIGTERM, SLURM with
``--signal=USR1@90`` SIGUSR1. :class:`PreemptionGuard` (installed by
:meth:`asr.train.trainer.Trainer.fit` while it runs, and only then) records such a signal and
nothing else: the step in progress finishes (taken or skipped), every rank agrees at the step's
end to stop (:attr:`PreemptionGuard.signum` is a slot of the step's one all-reduce,
:func:`asr.train.agreement.agree`), the trainer writes its checkpoint at that position and
raises :class:`TrainingPreempted`, whose :attr:`TrainingPreempted.exit_status` (``128 +
signal``: 143 for SIGTERM, 138 for SIGUSR1, as a shell reports a process the signal killed)
``asr train`` exits with. A second signal while the checkpoint is written is recorded
again and interrupts nothing.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

logger = logging.getLogger(__name__)

#: The signals that announce a preemption.
PREEMPTION_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)


def preempted_exit_status(signum: int) -> int:
    """The exit status of a run stopped by signal ``signum``: ``128 + signum``, as shells report
    a process that the signal ended (143 for SIGTERM, 138 for SIGUSR1 on Linux)."""
    return 128 + int(signum)


class TrainingPreempted(Exception):
    """Training stopped by a preemption signal after writing its checkpoint.

    Attributes:
        signum: the signal received (on any rank; the highest number when ranks got several).
        step: the optimizer steps taken, the checkpoint's position.
        exit_status: what the command exits with (:func:`preempted_exit_status`).
    """

    def __init__(self, signum: int, step: int) -> None:
        self.signum = int(signum)
        self.step = step
        self.exit_status = preempted_exit_status(signum)
        super().__init__(f"preempted by {signal.Signals(signum).name} at step {step}: its "
                         "checkpoint is written, the same command resumes from it")


class PreemptionGuard:
    """Records SIGTERM and SIGUSR1 while it is entered, restoring the previous handlers on exit.

    Handlers can only be installed from the main thread: elsewhere the guard records nothing
    (logged), and the signals act as they did before.

    Attributes:
        signum: the first signal received in this process (ranks agree on theirs with
            :func:`asr.train.agreement.agree`), or None.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        # no logging here: a handler may run inside a logging call holding its lock

    def __enter__(self) -> PreemptionGuard:
        self.signum = None  # a signal that stopped an earlier fit() is spent
        if threading.current_thread() is not threading.main_thread():
            logger.info("training outside the main thread: SIGTERM/SIGUSR1 are not caught, a "
                        "preemption loses what was trained since the last checkpoint")
            return self
        for sig in PREEMPTION_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
