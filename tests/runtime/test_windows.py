"""Long-input windows of the offline runtime: whole windows, a partition of the input's time."""

from __future__ import annotations

import math

import pytest

from asr.runtime import offline
from asr.runtime.offline import WindowContext, plan_windows


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

    whole = _encode(transformer, wave)
    chunk = runtime.chunk_size
    frame = runtime.fbank.hop_samples * runtime.model.encoder.subsampling_factor
    context = (2 * 1 + 1) * chunk  # layers x left_chunks chunks, after the edge frame's chunk
    for window in windows[1:]:
        part = _encode(transformer, wave[window.start: window.end])
        offset = round(window.start / frame)
        end = part.shape[0] - 2 * chunk  # the last chunk may be cut by the window's end
        torch.testing.assert_close(part[context:end], whole[offset + context: offset + end],
                                   atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- chunked encoders


def _grid_context(rate: int = 100):
    """A toy context on a grid of 8 samples: 40 samples of left context, 3 of right."""
    return 8, WindowContext(left=40, right=3)


@pytest.mark.parametrize("seconds", [1.01, 2.5, 6.1])
def test_a_chunked_encoders_windows_share_a_stretch_of_exact_frames_and_cut_in_it(seconds):
    """With a context, neighbours overlap until the later window's exact frames (``left`` after
    its start) begin before the earlier window's end (its last chunk ``right`` clear of its
    end), and the cut is the middle of that stretch; the middle of the overlap was often
    before the later window's exact frames began."""
    rate, (grid, context) = 100, _grid_context()
    n = int(round(seconds * rate))
    windows = plan_windows(0, n, rate, 1.0, 0.1, grid, context)
    # the step, 90 samples rounded down to 88, shortened to (100 - 3) // 8 * 8 - 40 = 56
    assert [w.start for w in windows[:-1]] == [56 * k for k in range(len(windows) - 1)]
    assert windows[-1].end == n and all(w.start % grid == 0 for w in windows)
    for a, b in zip(windows, windows[1:]):
        first, last = b.start + context.left, a.start + (a.end - context.right - a.start) // 8 * 8
        assert first <= last
        assert a.keep_to == b.keep_from == pytest.approx((first + last) / 2 / rate)


def test_windows_too_short_for_the_context_keep_the_overlap_and_its_middle():
    """A window that cannot hold the left context and a chunk is not stretched: the overlap
    asked for and the middle-of-overlap cut (the rule of encoders that see the future)."""
    rate, (grid, context) = 100, _grid_context()
    windows = plan_windows(0, 300, rate, 0.5, 0.1, grid, context)
    assert windows == plan_windows(0, 300, rate, 0.5, 0.1, grid)
    assert [w.start for w in windows[:-1]] == [40 * k for k in range(len(windows) - 1)]


def test_an_exact_step_of_one_grid_is_taken():
    """The exact step may be as short as one chunk: windows of 100 samples on a grid of 8 with
    88 samples of left context and 3 of right have (100 - 3) // 8 * 8 - 88 = 8, so they step
    by 8 (not the asked 88) and cut where the exact stretch is one point (sample 96)."""
    rate, grid, context = 100, 8, WindowContext(left=88, right=3)
    windows = plan_windows(0, 130, rate, 1.0, 0.1, grid, context)
    assert [w.start for w in windows[:-1]] == [0, 8, 16, 24]
    assert windows[0].keep_to == pytest.approx(96 / rate)


@pytest.fixture(scope="module")
def conformer(tmp_path_factory):
    """A random-weight causal chunked Conformer transducer (2 layers, chunks of 2 frames, 1 chunk
    of left context, kernel 5): per layer a frame reads the chunk before its own through the
    attention and, through the convolution's 4 frames back, 2 chunks more."""
    from asr.runtime.offline import load_model
    from asr.testing.packages import random_package

    root = tmp_path_factory.mktemp("random_conformer_windows")
    return load_model(random_package(root, head="transducer", chunk_size=2, left_chunks=1,
                                     seed=4))


def _encode(transcriber, samples):
    import torch

    from asr.features.fbank import compute_fbank

    runtime = transcriber.runtime
    feats = compute_fbank(samples, transcriber.sample_rate, runtime.fbank, runtime.extractor)
    with torch.no_grad():
        enc, _ = runtime.model.encode(feats[None], torch.tensor([feats.shape[0]]))
    return enc[0]


@pytest.mark.parametrize("name", ["conformer", "transformer"])
def test_the_window_context_is_where_a_windows_frames_become_the_whole_inputs(name, request):
    """Brute force: a window starting on the grid has the whole input's frames from its
    ``left`` context on and not one chunk earlier (the context is tight: 7 chunks for the
    Conformer, 2 x (1 + 2) + 1, and 3 for the Transformer, 2 x 1 + 1); a window's frames up to
    its last chunk that ends ``right`` samples before its end are the whole input's too."""
    import numpy as np
    import torch

    model = request.getfixturevalue(name)
    context, grid = model.window_context, model.window_grid
    frame = grid // model.runtime.chunk_size
    assert context.left == {"conformer": 7, "transformer": 3}[name] * grid
    wave = (0.1 * np.random.default_rng(8).standard_normal(16000 * 4)).astype(np.float32)
    whole = _encode(model, wave)
    start, end = 5 * grid, 5 * grid + 30 * grid + context.right + 100
    part = _encode(model, wave[start: end])
    first, at = context.left // frame, start // frame
    last = (end - context.right - start) // grid * grid // frame
    torch.testing.assert_close(part[first: last], whole[at + first: at + last], atol=1e-5, rtol=0)
    before = slice(first - model.runtime.chunk_size, first)
    # weakly (about 1e-4 for the Conformer: only its convolution reaches so far), but more
    # than rounding
    assert (part[before] - whole[at + before.start: at + before.stop]).abs().max() > 2e-5


@pytest.mark.parametrize(("name", "searcher"), [("conformer", "transducer_greedy"),
                                                ("conformer", "ctc_greedy"),
                                                ("transformer", "ctc_greedy")])
def test_a_chunked_encoders_windowed_decode_is_the_one_window_decode(name, searcher, request,
                                                                    monkeypatch):
    """The frames each window keeps (its span, from cut to cut) put together are the encoder
    frames of one window over the whole input, and a greedy search's tokens and times are the
    one-window decode's. With the cut in the middle of the 0.5 s overlap, a later window kept
    frames that lacked most of the left context they see in one window."""
    import numpy as np
    import torch

    model = request.getfixturevalue(name)
    wave = (0.1 * np.random.default_rng(9).standard_normal(16000 * 5)).astype(np.float32)
    [one] = model.transcribe(wave, searcher=searcher, window_seconds=100)
    planned, encoded = [], []
    plan, search = offline.plan_windows, model.searcher(searcher)

    def plan_spy(*args, **kwargs):
        planned.append(plan(*args, **kwargs))
        return planned[-1]

    def search_spy(enc, enc_lens):
        encoded.extend(e[:n] for e, n in zip(enc, enc_lens.tolist()))
        return search(enc, enc_lens)

    monkeypatch.setattr(offline, "plan_windows", plan_spy)
    [windowed] = model.transcribe(wave, searcher=search_spy, window_seconds=2.0,
                                  overlap_seconds=0.5, batch_size=3)
    [windows] = planned
    assert len(windows) >= 3
    # windows are decoded longest first: match them to their frames by their length
    by_length = sorted(windows, key=lambda w: w.end - w.start, reverse=True)
    whole, frame_seconds = _encode(model, wave), model.runtime.frame_seconds
    kept = [None] * whole.shape[0]
    for window, enc in zip(by_length, encoded):
        offset = window.start // (model.window_grid // model.runtime.chunk_size)
        for f in range(enc.shape[0]):
            if window.keep_from <= (offset + f) * frame_seconds < window.keep_to:
                kept[offset + f] = enc[f]
    assert all(k is not None for k in kept)
    torch.testing.assert_close(torch.stack(kept), whole, atol=1e-5, rtol=0)
    assert windowed.token_ids == one.token_ids and windowed.timestamps == one.timestamps
    assert one.token_ids  # the random model says something


def test_raising_the_overlap_is_logged_once(conformer, caplog):
    import numpy as np

    wave = np.zeros(16000 * 3, np.float32)
    with caplog.at_level("INFO", logger="asr.runtime.offline"):
        for _ in range(2):
            conformer.transcribe(wave, window_seconds=1.5, overlap_seconds=0.1)
        conformer.transcribe(wave, window_seconds=0.6, overlap_seconds=0.1)
    messages = [r.getMessage() for r in caplog.records if r.name == "asr.runtime.offline"]
    assert len(messages) == 2
    assert messages[0].startswith("offline windows of 1.5 s overlap by 0.62 s, not 0.1 s")
    assert "cannot hold this encoder's left context (0.56 s)" in messages[1]


@pytest.mark.parametrize("name", ["conformer", "transformer"])
def test_every_frame_is_kept_by_exactly_one_window_at_the_one_window_time(name, request):
    """A searcher that emits a token on every frame: the windows together keep one token per
    frame of the input, at its one-window time. A token's time was its window's start plus its
    time in the window, which rounds differently from window to window: a token on a cut could
    fall before the later window's span and after the earlier one's, and be lost."""
    import numpy as np

    from asr.types import Hypothesis

    model = request.getfixturevalue(name)
    [letter] = model.runtime.tokenizer.encode("A")

    def every_frame(enc, enc_lens):
        return [[Hypothesis(tokens=(letter,) * n, frames=tuple(range(n)))]
                for n in enc_lens.tolist()]

    wave = np.zeros(int(16000 * 7.3), np.float32)
    frames = _encode(model, wave).shape[0]
    expected = model.runtime.results.seconds(range(frames))
    for window, overlap in ((1.9, 0.5), (2.3, 1.1), (3.0, 0.3)):
        [result] = model.transcribe(wave, searcher=every_frame, window_seconds=window,
                                    overlap_seconds=overlap)
        assert list(result.timestamps) == expected, (window, overlap)


def test_windows_under_a_chosen_chunking_lie_on_its_grid_and_join_to_its_one_window_decode(
        conformer, monkeypatch):
    """Offline ``chunk_size`` / ``left_chunks`` (WeNet's decoding chunk size) were refused; now
    the encoder runs under that chunk mask, and long inputs' windows follow it: they start on
    its grid (chunks of 4 frames, not the package's 2) and cut by its left context, so a greedy
    search's tokens and times are those of one window over the input at that chunking."""
    import numpy as np

    planned, plan = [], offline.plan_windows

    def spy(*args, **kwargs):
        planned.append((args[5], plan(*args, **kwargs)))
        return planned[-1][1]

    monkeypatch.setattr(offline, "plan_windows", spy)
    wave = (0.1 * np.random.default_rng(11).standard_normal(16000 * 5)).astype(np.float32)
    chunking = {"chunk_size": 4, "left_chunks": 1, "searcher": "transducer_greedy"}
    [one] = conformer.transcribe(wave, window_seconds=100, **chunking)
    [windowed] = conformer.transcribe(wave, window_seconds=2.0, overlap_seconds=0.5,
                                        batch_size=3, **chunking)
    grid = conformer.window_grid * 2
    assert conformer.with_chunking(4, 1).window_grid == grid
    (_, [_]), (used, windows) = planned
    assert used == grid and len(windows) >= 3 and all(w.start % grid == 0 for w in windows)
    assert len(one.token_ids) > 5 and windowed.token_ids == one.token_ids
    assert windowed.timestamps == pytest.approx(one.timestamps)
