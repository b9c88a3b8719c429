"""Long-input windows of the offline runtime: whole windows, a partition of the input's time."""

from __future__ import annotations

import math

import pytest

from asr.runtime.offline import plan_windows


@pytest.mark.parametrize("seconds", [8.0, 8.01, 13.9, 14.0, 14.1, 15.8, 61.3])
@pytest.mark.parametrize(("window", "overlap"), [(8.0, 2.0), (5.0, 1.0), (3.0, 0.0)])
def test_windows_are_whole_and_own_a_partition_of_the_input(seconds, window, overlap):
    rate = 100
    n = int(round(seconds * rate))
    windows = plan_windows(7, n, rate, window, overlap)
    length = int(round(window * rate))
    assert all(w.index == 7 for w in windows)
    if n <= length:
        assert [(w.start, w.end) for w in windows] == [(0, n)]
        return
    # every window is whole, the first starts at 0 and the last ends with the input, so the
    # end is decided with a full window's left context (it was a remainder before)
    assert all(w.end - w.start == length for w in windows)
    assert windows[0].start == 0 and windows[-1].end == n
    for a, b in zip(windows, windows[1:]):
        assert a.start < b.start and b.start <= a.end - int(round(overlap * rate))
        # the owned spans meet at the middle of the overlap
        assert a.keep_to == b.keep_from == pytest.approx((b.start + a.end) / 2 / rate)
    assert windows[0].keep_from == -math.inf and windows[-1].keep_to == math.inf
    # no more windows than the regular stride needs
    step = length - int(round(overlap * rate))
    assert len(windows) == 1 + math.ceil((n - length) / step)
