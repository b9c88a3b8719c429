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


@pytest.mark.parametrize("seconds", [8.0, 8.01, 13.9, 14.1, 61.3])
@pytest.mark.parametrize(("window", "overlap", "grid"), [(8.0, 2.0, 64), (5.0, 1.0, 7),
                                                          (3.0, 0.0, 100), (3.0, 2.5, 50)])
def test_windows_on_a_grid_start_on_it_and_still_cover_the_input(seconds, window, overlap, grid):
    """Every start is a multiple of the grid (the encoder's chunk in samples), the step is the
    regular one rounded down to it, no window is longer than asked, the last one ends with the
    input and is at most one grid step shorter, and neighbours overlap by at least ``overlap``."""
    rate = 100
    n = int(round(seconds * rate))
    windows = plan_windows(3, n, rate, window, overlap, grid)
    length, least = int(round(window * rate)), int(round(overlap * rate))
    step = (length - least) // grid * grid
    assert all(w.start % grid == 0 for w in windows)
    assert windows[0].start == 0 and windows[-1].end == n
    assert all(w.end - w.start == length for w in windows[:-1])
    assert length - grid < windows[-1].end - windows[-1].start <= length or len(windows) == 1
    assert [w.start for w in windows[:-1]] == [k * step for k in range(len(windows) - 1)]
    for a, b in zip(windows, windows[1:]):
        assert a.start < b.start and b.start <= a.end - least
        assert a.keep_to == b.keep_from == pytest.approx((b.start + a.end) / 2 / rate)


def test_a_step_shorter_than_the_grid_is_refused():
    with pytest.raises(ValueError, match=r"step of 50 samples between windows: need at least "
                                         r"64 \(one encoder chunk"):
        plan_windows(0, 1000, 100, 2.0, 1.5, grid=64)


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    """A random-weight chunked Transformer (2 layers, chunks of 4 frames, 1 chunk of left
    context): an encoder frame sees the 2 * 1 chunks before its own through the layers."""
    from asr.runtime.offline import load_model
    from asr.testing.packages import random_package

    root = tmp_path_factory.mktemp("random_transformer_windows")
    return load_model(random_package(root, head="ctc", chunk_size=4, left_chunks=1, seed=3,
                                     encoder_overrides={"kind": "transformer"}))


def test_window_frames_are_the_one_window_decodes_where_the_window_holds_their_context(
        transformer, monkeypatch):
    """Windows start on the encoder's chunk grid, so past the left context its frames see (and
    the first frame, whose features reflect the window's edge), each window's encoder frames are
    those of one window over the whole input, under the same chunk mask. Off the grid (starts at
    multiples of window - overlap) every frame of a later window differed."""
    import numpy as np
    import torch

    from asr.features.fbank import compute_fbank
    from asr.runtime import offline

    planned, plan = [], offline.plan_windows

    def spy(*args, **kwargs):
        planned.append(plan(*args, **kwargs))
        return planned[-1]

    monkeypatch.setattr(offline, "plan_windows", spy)
    runtime = transformer.runtime
    wave = (0.1 * np.random.default_rng(5).standard_normal(16000 * 5)).astype(np.float32)
    transformer.transcribe(wave, window_seconds=1.9, overlap_seconds=0.5, batch_size=2)
    [windows] = planned
    assert len(windows) >= 3

    def encode(samples: np.ndarray) -> torch.Tensor:
        feats = compute_fbank(samples, 16000, runtime.fbank, runtime.extractor)
        with torch.no_grad():
            enc, _ = runtime.model.encode(feats[None], torch.tensor([feats.shape[0]]))
        return enc[0]

    whole = encode(wave)
    chunk = runtime.chunk_size
    frame = runtime.fbank.hop_samples * runtime.model.encoder.subsampling_factor
    context = (2 * 1 + 1) * chunk  # layers x left_chunks chunks, after the edge frame's chunk
    for window in windows[1:]:
        part = encode(wave[window.start: window.end])
        offset = round(window.start / frame)
        end = part.shape[0] - 2 * chunk  # the last chunk may be cut by the window's end
        torch.testing.assert_close(part[context:end], whole[offset + context: offset + end],
                                   atol=1e-5, rtol=0)
