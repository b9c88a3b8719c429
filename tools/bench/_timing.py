"""The one way the benches time repeated runs: the median wall time of ``repeats`` calls after
one untimed warm-up call, waiting for the device before each timer reading.

Why the median: every bench runs on machines shared with other work (the project's 2-core CPU
beside trainings and test runs). The minimum keeps the one run that other work left alone, so
two rows timed minutes apart compare their luck; the median is what a run typically costs, is
not moved by one disturbed run either way, and is what the tables compare (speed-ups, goals).
Every bench that times repeats of one call reports this median and says so in its table's
header: ``decode.py``, ``encoder.py``, ``onnx.py``, ``rnnt_loss.py``, ``transcribe.py``
(``train_throughput.py`` times different batches, not repeats, and reports their median step;
``serve.py`` times one real-time run per row).

Why the sync: CUDA runs kernels asynchronously, so a timer read right after a call would time
their launch only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def no_sync() -> None:
    """Nothing to wait for: CPU work is done when the call returns."""


def device_sync(device: str | torch.device) -> Callable[[], None]:
    """What waits for ``device``'s queued work: ``torch.cuda.synchronize`` on CUDA, else
    nothing."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else no_sync


def median_seconds(run: Callable[[], object], repeats: int, sync: Callable[[], None] = no_sync,
                   warm_up: bool | Callable[[], object] = True) -> float:
    """Median wall seconds of ``repeats`` calls of ``run`` (the module docstring says why).

    Args:
        run: what is timed.
        repeats: timed calls, at least 1.
        sync: waits for the device's queued work (:func:`device_sync`); called after the
            warm-up and after each timed call, before the timer is read.
        warm_up: one untimed call first (the first call of an engine or mode pays for one-time
            allocation and set-up): True calls ``run``, a callable calls that instead (e.g. a
            cheaper call with the same options), False none (the caller has warmed up).

    Returns:
        The median of the ``repeats`` times, in seconds.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if warm_up is not False:
        (run if warm_up is True else warm_up)()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
