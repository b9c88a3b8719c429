"""What the ranks agree on at each optimizer step: every per-step scalar in ONE all-reduce.

Before a step acts, every rank must know what the others know: the utterances of the global batch
(the gradients' divisor), whether the gradients are finite on every rank (else the step is skipped
everywhere), whether a preemption signal reached any rank (every rank stops after the same step)
and, in a budgeted run, whether any rank's clock says the time budget is spent. Each is a blocking,
latency-bound collective (tens of microseconds to milliseconds on a multi-node job), so
:func:`agree` carries them all in one all-reduce of a small float64 vector whose slots are all
SUMMED over the ranks:

=================  =================================  =======================================
slot               a rank puts                        the sum says
=================  =================================  =======================================
utterances         its utterances of the step         the global batch's
non-finite         1 if its gradient norm is not      gradients not finite on some rank (> 0)
                   finite
budget spent       1 if its clock says so             some rank's clock says so (> 0)
one per signal of  1 in the slot of the signal it     which signals reached some rank (> 0)
PREEMPTION_SIGNALS got
=================  =================================  =======================================

Flags are counts, so their sum is also their "any"; a signal is a slot of its own rather than its
number, so the job's signal, the highest number that reached any rank (what a maximum over the
ranks gave), is read back exactly from sums. float64 holds the sums of utterance counts exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from asr.train.distributed import DistInfo, all_reduce_sums
from asr.train.preemption import PREEMPTION_SIGNALS

__all__ = ["StepReport", "agree", "decode", "encode"]

#: The slots before the signals' (module docstring).
_SCALARS = 3


@dataclass(frozen=True)
class StepReport:
    """What one rank knows at the end of a step's last backward; from :func:`agree`, the job's.

    Attributes:
        utterances: the utterances of the step's batches (the job's: summed over the ranks).
        non_finite: the gradient norm is not finite (the job's: on some rank).
        budget_spent: the clock says the time budget is spent (the job's: on some rank).
        signum: the preemption signal received (one of ``PREEMPTION_SIGNALS``), or None (the
            job's: the highest number that reached any rank).
    """

    utterances: float = 0.0
    non_finite: bool = False
    budget_spent: bool = False
    signum: int | None = None


def encode(report: StepReport) -> list[float]:
    """``report`` as the vector that :func:`agree` sums (module docstring).

    Raises:
        ValueError: for a signal that is not one of ``PREEMPTION_SIGNALS``.
    """
    if report.signum is not None and report.signum not in PREEMPTION_SIGNALS:
        raise ValueError(f"signal {report.signum} is not a preemption signal "
                         f"({', '.join(s.name for s in PREEMPTION_SIGNALS)})")
    return [float(report.utterances), float(report.non_finite), float(report.budget_spent),
            *(float(report.signum == sig) for sig in PREEMPTION_SIGNALS)]


def decode(sums: Sequence[float]) -> StepReport:
    """The job's report from the sums over the ranks of their :func:`encode` vectors.

    Raises:
        ValueError: for a vector of another length.
    """
    if len(sums) != _SCALARS + len(PREEMPTION_SIGNALS):
        raise ValueError(f"a step report has {_SCALARS + len(PREEMPTION_SIGNALS)} slots, got "
                         f"{len(sums)}")
    got = [int(sig) for sig, count in zip(PREEMPTION_SIGNALS, sums[_SCALARS:]) if count > 0]
    return StepReport(utterances=float(sums[0]), non_finite=sums[1] > 0,
                      budget_spent=sums[2] > 0, signum=max(got) if got else None)


def agree(report: StepReport, dist: DistInfo) -> StepReport:
    """The job's report, from this rank's ``report`` and every other rank's: collective when
    distributed (every rank must call it at the same point), one all-reduce.

    Raises:
        ValueError: for a signal that is not one of ``PREEMPTION_SIGNALS``.
    """
    return decode(all_reduce_sums(encode(report), dist))
