"""The per-step agreement: sums of the ranks' encoded reports read back as sums, "any" flags and
the highest signal (what separate sum and max all-reduces gave)."""

import signal

import pytest

from asr.train.agreement import StepReport, agree, decode, encode
from asr.train.distributed import DistInfo


def _summed(*reports: StepReport) -> StepReport:
    """What one SUM all-reduce of the ranks' vectors gives back."""
    return decode([sum(slot) for slot in zip(*(encode(r) for r in reports))])


def test_sums_read_back_as_counts_flags_and_the_highest_signal():
    job = _summed(StepReport(utterances=3, signum=signal.SIGTERM),
                  StepReport(utterances=5, non_finite=True, signum=signal.SIGUSR1),
                  StepReport(utterances=2, budget_spent=True, signum=signal.SIGTERM))
    assert job == StepReport(utterances=10, non_finite=True, budget_spent=True,
                             signum=max(signal.SIGTERM, signal.SIGUSR1))
    assert _summed(StepReport(utterances=4), StepReport(utterances=4)) == StepReport(utterances=8)
    assert _summed(StepReport(), StepReport(signum=signal.SIGTERM)).signum == signal.SIGTERM


def test_one_process_agrees_with_itself_and_other_signals_are_refused():
    report = StepReport(utterances=7, non_finite=True, signum=signal.SIGUSR1)
    assert agree(report, DistInfo()) == report
    with pytest.raises(ValueError, match="signal 2 is not a preemption signal"):
        encode(StepReport(signum=signal.SIGINT))
    with pytest.raises(ValueError, match="slots"):
        decode([1.0, 0.0])
