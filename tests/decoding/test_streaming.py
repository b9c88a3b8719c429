"""Streaming searchers: chunk-by-chunk == offline, batched streams at different positions ==
each stream alone, state stack/unstack round trip, absolute timestamps."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from search_helpers import ENC_DIM, encoder_output, make_model
from torch.overrides import TorchFunctionMode

from asr.config import ConfigError
from asr.decoding import SearchConfig, build_searcher, build_streaming_searcher
from asr.decoding.base import TokenBuffer
from asr.decoding.config import override_search
from asr.state import select_states, stack_states, unstack_states
from asr.types import Hypothesis

MODELS = {
    "ctc_greedy": dict(ctc=True),
    "ctc_prefix_beam": dict(ctc=True),
    "transducer_greedy": dict(transducer="pruned"),
    "transducer_beam": dict(transducer="pruned"),
    "tdt_greedy": dict(transducer="tdt"),
    "tdt_beam": dict(transducer="tdt"),
}
CASES = [(name, predictor) for name in MODELS for predictor in ("stateless", "lstm")]


def build(name: str, predictor: str = "stateless", **cfg):
    model = make_model(predictor=predictor, **MODELS[name])
    if name.startswith("tdt"):  # realistic TDT: blanks mostly skip 2-4 frames
        with torch.no_grad():
            model.heads["transducer"].joiner.output.bias[-5:] += torch.tensor(
                [0.0, 0.5, 1.5, 2.0, 2.0]
            )
    search_cfg = SearchConfig(**cfg)
    return build_searcher(name, model, search_cfg), build_streaming_searcher(
        name, model, search_cfg
    )


def run_chunks(searcher, enc, enc_lens, chunk_sizes, state=None):
    """Feeds enc in chunks of the given sizes (cycled); each stream's lengths clipped."""
    state = state or searcher.init_state(enc.shape[0], enc.device)
    start, index = 0, 0
    while start < enc.shape[1]:
        size = chunk_sizes[index % len(chunk_sizes)]
        chunk = enc[:, start : start + size]
        lens = (enc_lens - start).clamp(min=0, max=chunk.shape[1])
        state = searcher.step(chunk, lens, state)
        start, index = start + size, index + 1
    return state


@pytest.mark.parametrize(("name", "predictor"), CASES)
@pytest.mark.parametrize("chunk_sizes", [[1], [3], [4, 2, 5]])
def test_chunked_equals_offline(name, predictor, chunk_sizes):
    offline, streaming = build(name, predictor)
    enc, enc_lens = encoder_output([23, 14, 19])
    expected = offline(enc, enc_lens)
    state = run_chunks(streaming, enc, enc_lens, chunk_sizes)
    for e, got in zip(expected, streaming.finalize(state)):
        assert got.tokens == e[0].tokens and got.frames == e[0].frames
        assert got.score == pytest.approx(e[0].score, abs=1e-4)
    assert any(len(e[0].tokens) > 2 for e in expected)


@pytest.mark.parametrize(("name", "predictor"), CASES)
def test_streams_at_different_positions_batched_equal_each_alone(name, predictor):
    _, streaming = build(name, predictor)
    enc, _ = encoder_output([30, 30], seed=4)
    # stream a has consumed 7 frames, stream b 12 (in chunks of 5: a TDT skip may be pending)
    state_a = run_chunks(streaming, enc[:1, :7], torch.tensor([7]), [5])
    state_b = run_chunks(streaming, enc[1:, :12], torch.tensor([12]), [5])
    both = stack_states([state_a, state_b])
    assert [h.tokens for h in streaming.partial(both)] == [
        streaming.partial(state_a)[0].tokens,
        streaming.partial(state_b)[0].tokens,
    ]
    chunk = torch.stack([enc[0, 7:13], enc[1, 12:18]])  # 6 frames each, b has only 4 valid
    lens = torch.tensor([6, 4])
    stepped = streaming.step(chunk, lens, both)
    alone_a = streaming.step(chunk[:1], lens[:1], state_a)
    alone_b = streaming.step(chunk[1:, :4], lens[1:], state_b)
    batched_hyps = streaming.partial(stepped)
    for got, alone in zip(batched_hyps, streaming.partial(alone_a) + streaming.partial(alone_b)):
        assert got.tokens == alone.tokens and got.frames == alone.frames
        assert got.score == pytest.approx(alone.score, abs=1e-4)
    split = unstack_states(stepped)
    assert [streaming.partial(s)[0] for s in split] == batched_hyps
    swapped = select_states(stepped, [1, 0])
    assert streaming.partial(swapped) == batched_hyps[::-1]
    assert max(batched_hyps[1].frames, default=0) < 16  # absolute frames of stream b
    # ... and they go on alike after a chunk that was only padding for a, and one that was
    # partly padding for b: what a searcher keeps from a chunk (say the label that a run goes
    # on in) must come from the stream's valid frames, not from the padding, which holds here
    # the other stream's frames
    pos = [13, 16]
    for counts in ((0, 5), (5, 3)):
        lens = torch.tensor(counts)
        chunk = torch.stack([enc[1 - b, pos[1 - b]: pos[1 - b] + 5] for b in range(2)])
        for b, count in enumerate(counts):
            chunk[b, :count] = enc[b, pos[b]: pos[b] + count]
        stepped = streaming.step(chunk, lens, stepped)
        alone_a = streaming.step(chunk[:1, : counts[0]], lens[:1], alone_a)
        alone_b = streaming.step(chunk[1:, : counts[1]], lens[1:], alone_b)
        pos = [pos[0] + counts[0], pos[1] + counts[1]]
    alone = streaming.finalize(alone_a) + streaming.finalize(alone_b)
    for got, expected in zip(streaming.finalize(stepped), alone):
        assert got.tokens == expected.tokens and got.frames == expected.frames
        assert got.score == pytest.approx(expected.score, abs=1e-4)


@pytest.mark.parametrize("name", ["ctc_greedy", "transducer_greedy"])  # tdt: as transducer
def test_a_stream_of_more_tokens_than_any_old_capacity_keeps_every_token(name):
    """The token store grows: a stream past 2048 tokens (the old fixed capacity, which dropped
    the rest with a warning) keeps every one, as the offline search; and a short stream that
    shared a batch with it splits back to its own tokens only (no padding to the long one)."""
    offline, streaming = build(name, blank_penalty=10.0)
    enc, enc_lens = encoder_output([3000], seed=3)
    expected = offline(enc, enc_lens)[0][0]
    assert len(expected.tokens) > 2048
    state = run_chunks(streaming, enc, enc_lens, [250])
    got = streaming.finalize(state)[0]
    assert got.tokens == expected.tokens and got.frames == expected.frames
    assert got.score == pytest.approx(expected.score, rel=1e-4)
    before = streaming.partial(state)[0].tokens
    fresh, chunk, lens = streaming.init_state(1, enc.device), enc[:, :4], torch.tensor([4])
    both = streaming.step(chunk.expand(2, -1, -1), lens.expand(2), stack_states([state, fresh]))
    long, short = unstack_states(both, copy=True)
    assert len(short.hyp.runs[0].tokens) == short.hyp.runs[0].count <= 4 * 3
    assert streaming.partial(short) == streaming.partial(streaming.step(chunk, lens, fresh))
    assert streaming.partial(long)[0].tokens[: len(before)] == before


@pytest.mark.parametrize("name", ["ctc_greedy", "transducer_greedy", "tdt_greedy"])
def test_a_step_appends_its_tokens_without_copying_the_tokens_held(name):
    """Each append copied all of a stream's tokens into a new store: quadratic in the length
    of a stream without endpointing. A step now extends the stream's own token lists (the same
    lists, grown), also when its state is stacked with another stream's and split back, as the
    runtime does every chunk; the result is the offline search's. An older state stepped again
    copies its own tokens first, and the newer state keeps its tokens."""
    offline, streaming = build(name, blank_penalty=10.0)
    enc, enc_lens = encoder_output([120, 90], seed=5)
    states = [streaming.init_state(1, enc.device) for _ in range(2)]
    lists: list = [None, None]
    middle = None
    for start in range(0, 120, 10):
        lens = (enc_lens - start).clamp(min=0, max=10)
        stepped = streaming.step(enc[:, start: start + 10], lens, stack_states(states))
        states = unstack_states(stepped, copy=True)
        for b, state in enumerate(states):
            run = state.hyp.runs[0]
            if lists[b] is None and run.count:
                lists[b] = (run.tokens, run.frames)
            if lists[b] is not None:
                assert run.tokens is lists[b][0] and run.frames is lists[b][1]
        if start == 60:
            middle = states[0]
    assert all(held is not None for held in lists)
    expected = [h[0] for h in offline(enc, enc_lens)]
    got = streaming.finalize(stack_states(states))
    assert [h.tokens for h in got] == [h.tokens for h in expected]
    assert [h.frames for h in got] == [h.frames for h in expected]
    # the older state goes on alone, on other frames: its own tokens, the newer ones kept
    chunk, lens = enc[1:, :10], torch.tensor([10])
    branch = streaming.partial(streaming.step(chunk, lens, middle))[0]
    before = streaming.partial(middle)[0]
    fresh = streaming.step(chunk, lens, dataclasses.replace(
        middle, hyp=dataclasses.replace(middle.hyp, runs=(type(middle.hyp.runs[0])(
            list(before.tokens), list(before.frames), len(before.tokens)),))))
    assert branch == streaming.partial(fresh)[0]
    assert streaming.finalize(states[0])[0].tokens == got[0].tokens


class _HostSyncs(TorchFunctionMode):
    """Counts the torch calls that wait for the device: host transfers (``tolist``, ``item``,
    ``cpu``, ...) and the ops whose output size is data-dependent (``nonzero``, a boolean mask
    index), so that a CPU test can count what would be a sync on a GPU."""

    SYNCS = {"tolist", "item", "cpu", "numpy", "nonzero", "argwhere", "masked_select",
             "__bool__", "__int__", "__float__"}

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        index = args[1] if name == "__getitem__" and len(args) > 1 else None
        masks = index if isinstance(index, tuple) else (index,)
        if name in self.SYNCS or any(
            isinstance(m, torch.Tensor) and m.dtype == torch.bool for m in masks
        ):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_token_buffer_extend_syncs_twice_and_appends_in_order():
    """``TokenBuffer.extend`` made three device syncs per step (two boolean-mask selections
    and the host transfer); the positions of the appended tokens are found once and the tokens
    and frames gathered at them, so two do (the positions, and one transfer of everything)."""
    buffer = TokenBuffer.empty(3, "cpu")
    tokens = torch.tensor([[5, 6, 7], [1, 2, 3], [8, 9, 4]], dtype=torch.int32)
    frames = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]], dtype=torch.int32)
    emit = torch.tensor([[True, False, True], [False, False, False], [False, True, True]])
    with _HostSyncs() as syncs:
        extended = buffer.extend(tokens, frames, emit)
    assert syncs.calls == ["nonzero", "tolist"]
    assert [(h.tokens, h.frames) for h in extended.hypotheses()] == [
        ((5, 7), (0, 2)), ((), ()), ((9, 4), (7, 8))
    ]


def test_build_streaming_searcher_rejects_offline_only_names():
    with pytest.raises(ValueError, match=r"'aed_beam' does not stream.*\['ctc_greedy', 'ctc_p"):
        build_streaming_searcher("aed_beam", make_model(ctc=True, aed=True))


def test_tdt_decision_that_depends_on_the_stream_end_waits_for_the_next_chunk():
    """A move past the frames received so far (or a token onto the last of them) is allowed only
    if the stream goes on: the stream waits on that frame, holding at most max(durations)
    frames, and decides with the next chunk or, the end known, in finalize: as offline."""
    offline, streaming = build("tdt_greedy")
    enc, enc_lens = encoder_output([25])
    state, waits = streaming.init_state(1, enc.device), []
    for start in range(0, 25, 2):
        chunk = enc[:, start : start + 2]
        state = streaming.step(chunk, torch.tensor([chunk.shape[1]]), state)
        waits.append(int(state.num_pending[0]))
        received = int(state.frames_done[0])
        assert all(frame < received - waits[-1] for frame in streaming.partial(state)[0].frames)
    assert 0 < max(waits) <= 4  # durations (0, 1, 2, 3, 4)
    got, expected = streaming.finalize(state)[0], offline(enc, enc_lens)[0][0]
    assert got.tokens == expected.tokens and got.frames == expected.frames
    assert got.score == pytest.approx(expected.score, abs=1e-4)


CIF_MODES = {"ctc segments": dict(segments="ctc"), "integrate-and-fire": dict(end_slot=True)}


def build_cif(mode: str, partial_window: int | None = None, **cfg):
    """The offline and the streaming ``cif_greedy`` of a CIF model (``partial_window``: the
    search option, default its default)."""
    model = make_model(cif=True, ctc=True, cif_options=CIF_MODES[mode], vocab=9)
    if partial_window is not None:
        cfg["partial_window"] = partial_window
    search_cfg = SearchConfig(**cfg)
    streaming = build_streaming_searcher("cif_greedy", model, search_cfg)
    assert streaming.partial_window == search_cfg.partial_window
    return build_searcher("cif_greedy", model, search_cfg), streaming


def count_decoded_frames(monkeypatch, searcher) -> list[int]:
    """The encoder frames of each call of the CIF head's decoder, from now on."""
    frames: list[int] = []
    decode = searcher.head.decode

    def counting(inputs, input_lens, enc, enc_lens):
        frames.append(enc.shape[1])
        return decode(inputs, input_lens, enc, enc_lens)

    monkeypatch.setattr(searcher.head, "decode", counting)
    return frames


@pytest.mark.parametrize("mode", list(CIF_MODES))
@pytest.mark.parametrize("chunk_sizes", [[1], [4, 2, 5]])
def test_cif_chunked_equals_offline(mode, chunk_sizes):
    """The CTC segments (or fires) of the cached frames, decoded at the end, are the offline
    search's, exactly (scores too: the same computation on the same frames)."""
    offline, streaming = build_cif(mode, blank_penalty=0.5)
    enc, enc_lens = encoder_output([23, 14, 19], scale=3.0)
    expected = offline(enc, enc_lens)
    state = run_chunks(streaming, enc, enc_lens, chunk_sizes)
    assert state.num_frames.tolist() == [23, 14, 19]
    assert streaming.finalize(state) == [e[0] for e in expected]
    assert sum(len(e[0].tokens) for e in expected) > 6


@pytest.mark.parametrize("mode", list(CIF_MODES))
@pytest.mark.parametrize("window", [None, 6])
def test_cif_streams_at_different_positions_batched_equal_each_alone(mode, window):
    """Also when a stream's partial window is settled (window 6: the second stream's at 12
    frames, both streams' in the step), and its settled tokens stack with the other's."""
    _, streaming = build_cif(mode, partial_window=window)
    enc, _ = encoder_output([30, 30], seed=4, scale=3.0)
    state_a = run_chunks(streaming, enc[:1, :7], torch.tensor([7]), [5])
    state_b = run_chunks(streaming, enc[1:, :12], torch.tensor([12]), [5])
    chunk = torch.stack([enc[0, 7:13], enc[1, 12:18]])
    lens = torch.tensor([6, 4])
    stepped = streaming.step(chunk, lens, stack_states([state_a, state_b]))
    alone = streaming.partial(streaming.step(chunk[:1], lens[:1], state_a)) + streaming.partial(
        streaming.step(chunk[1:, :4], lens[1:], state_b)
    )
    for got, single in zip(streaming.partial(stepped), alone):
        assert got.tokens == single.tokens and got.frames == single.frames
        assert got.score == pytest.approx(single.score, abs=1e-4)
    split = [streaming.partial(s)[0] for s in unstack_states(stepped)]
    assert [h.tokens for h in split] == [h.tokens for h in alone]
    if window is not None:
        assert stepped.window_start.tolist() != [0, 0]
        assert max(run.count for run in stepped.settled.runs) > 0


@pytest.mark.parametrize("mode", list(CIF_MODES))
def test_cif_partials_decode_a_bounded_window_and_the_final_result_every_frame(
    mode, monkeypatch
):
    """A partial result decodes at most ``partial_window`` + a chunk of frames, whatever the
    segment's length (decoding the whole segment after every chunk costs its square), and
    settles at most once per half window; it is the offline search of the frames so far until
    the segment outgrows the window. The final result of the long segment is the offline
    search of all its frames, exactly."""
    window, chunk, lens = 16, 5, [203, 150]
    offline, streaming = build_cif(mode, partial_window=window, blank_penalty=0.5)
    enc, enc_lens = encoder_output(lens, scale=3.0)
    decoded = count_decoded_frames(monkeypatch, streaming)
    state = streaming.init_state(2, enc.device)
    chunks = 0
    for start in range(0, max(lens), chunk):
        chunk_lens = (enc_lens - start).clamp(min=0, max=chunk)
        state = streaming.step(enc[:, start: start + chunk], chunk_lens, state)
        partials = streaming.partial(state)
        chunks += 1
        held = state.num_frames
        for hyp, n in zip(partials, held.tolist()):
            assert list(hyp.frames) == sorted(hyp.frames) and all(0 <= f < n for f in hyp.frames)
        if start + chunk <= window:
            so_far = offline(enc[:, : start + chunk], held)
            assert partials == [e[0] for e in so_far]
    assert max(decoded) <= window + chunk
    settles = sum(-(-n // (window // 2)) for n in lens)
    assert len(decoded) <= chunks + settles
    assert min(run.count for run in state.settled.runs) > 5  # settled many times
    expected = offline(enc, enc_lens)
    assert streaming.finalize(state) == [e[0] for e in expected]
    assert decoded[-1] == max(lens)  # the final result decoded every frame


def test_cif_partial_window_is_a_search_option_of_at_least_two_frames():
    """``search.partial_window`` (a YAML ``search:`` section, ``--set``) reaches the streaming
    searcher; it was only the searcher's constructor argument, which nothing configured could
    change. A value that is not a whole number >= 2 is refused, naming the option."""
    model = make_model(cif=True, ctc=True, vocab=9)
    cfg = override_search(SearchConfig(), ["search.partial_window=12"])
    assert build_streaming_searcher("cif_greedy", model, cfg).partial_window == 12
    assert build_streaming_searcher("cif_greedy", model, SearchConfig()).partial_window == 256
    for bad in ("1", "0", "2.5", "true", "-4"):
        with pytest.raises(ConfigError, match=r"search\.partial_window"):
            override_search(SearchConfig(), [f"search.partial_window={bad}"])
    with pytest.raises(ValueError, match=r"search\.partial_window must be a whole number"):
        SearchConfig(partial_window=1)


def test_cif_segment_longer_than_the_old_frame_capacity_keeps_every_frame():
    """The frame store grows: a segment past 1500 frames (the old fixed capacity, which
    dropped the rest with a warning) decodes as the offline search of all its frames; a short
    stream that shared a batch with it splits back to its own frames only."""
    offline, streaming = build_cif("ctc segments")
    enc, enc_lens = encoder_output([1600], scale=3.0)
    state = run_chunks(streaming, enc, enc_lens, [400])
    assert state.num_frames.tolist() == [1600] and state.frames[0].num_frames == 1600
    assert streaming.finalize(state) == [offline(enc, enc_lens)[0][0]]
    fresh = streaming.init_state(1, enc.device)
    chunk, lens = enc[:, :5].expand(2, -1, -1), torch.tensor([5, 5])
    both = streaming.step(chunk, lens, stack_states([state, fresh]))
    _, short = unstack_states(both, copy=True)
    assert short.frames[0].num_frames == 5
    assert streaming.finalize(short) == [offline(enc[:, :5], torch.tensor([5]))[0][0]]
    assert streaming.partial(streaming.init_state(2, enc.device)) == [Hypothesis(())] * 2


def _frame_memory(state) -> dict[int, int]:
    """The memory of every float tensor of ``state`` as wide as the encoder (its frames):
    storage address -> bytes."""
    found: dict[int, int] = {}

    def visit(value) -> None:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            if (value.is_floating_point() and value.dim() > 1 and value.shape[-1] == ENC_DIM
                    and storage.nbytes()):
                found[storage.data_ptr()] = storage.nbytes()
        elif dataclasses.is_dataclass(value):
            for field in dataclasses.fields(value):
                visit(getattr(value, field.name))
        elif isinstance(value, tuple):
            for item in value:
                visit(item)

    visit(state)
    return found


def test_a_cif_step_adds_its_chunk_without_copying_the_frames_held():
    """Each step copied the store of all the segment's frames into a new one a chunk longer:
    quadratic in the segment's length (a stream without endpointing is one segment). A step
    now keeps the frames held before as they are (the same memory) and adds its chunk's, each
    stream's own copy of its rows (not a view of the batch); the result is unchanged."""
    offline, streaming = build_cif("ctc segments")
    enc, enc_lens = encoder_output([40, 25], scale=3.0)
    state = streaming.init_state(2, enc.device)
    chunk_bytes = 4 * ENC_DIM * enc.element_size()
    for start in range(0, 40, 4):
        held = _frame_memory(state)
        lens = (enc_lens - start).clamp(min=0, max=4)
        state = streaming.step(enc[:, start : start + 4], lens, state)
        now = _frame_memory(state)
        assert held.items() <= now.items()
        assert all(now[address] <= chunk_bytes for address in now.keys() - held.keys())
    assert state.num_frames.tolist() == [40, 25]
    assert streaming.finalize(state) == [h[0] for h in offline(enc, enc_lens)]


@pytest.mark.parametrize("mode", list(CIF_MODES))
def test_the_cif_frame_count_is_that_of_the_frames_held(mode):
    """``CifStreamState`` kept a (B,) count of its frames beside the frame store, which holds
    its own count: two records that any state built from another's frames (here a stream's
    store handed to the other) left apart, and the windows then read the wrong frames. The
    count is now the store's: one record, so the state decodes the frames it holds."""
    offline, streaming = build_cif(mode, blank_penalty=0.5)
    enc, enc_lens = encoder_output([23, 14], scale=3.0)
    state = streaming.step(enc, enc_lens, streaming.init_state(2, enc.device))
    assert state.num_frames.tolist() == [23, 14]
    assert "num_frames" not in {f.name for f in dataclasses.fields(state)}
    swapped = dataclasses.replace(state, frames=state.frames[::-1])
    assert swapped.num_frames.tolist() == [14, 23]
    expected = [h[0] for h in offline(enc.flip(0), enc_lens.flip(0))]
    assert streaming.finalize(swapped) == expected
