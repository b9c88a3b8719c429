"""StreamingRecognizer: batched == alone, streaming == offline, endpointing, resampling."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from asr.audio import DecodedAudio, load_audio, resample
from asr.decoding.registry import STREAMING_SEARCHER_NAMES, available_searchers
from asr.runtime.endpoint import EndpointConfig, EndpointRule, detect_endpoint
from asr.runtime.offline import load_model
from asr.runtime.streaming import left_context_bound, transcribe_streaming
from asr.testing.streams import decode_together, decode_with_endpoints
from asr.testing.tiny import espeak_available

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="needs espeak-ng")


@pytest.fixture(scope="session")
def tiny(tiny_models_dir):
    from asr.testing.packages import trained_tiny_package

    if not espeak_available():
        pytest.skip("needs espeak-ng")
    return trained_tiny_package(tiny_models_dir)


@pytest.fixture(scope="session")
def transducer_model(tmp_path_factory):
    """A random-weight causal chunked Conformer with a transducer head (chunks of 2 frames)."""
    from asr.testing.packages import random_package

    root = tmp_path_factory.mktemp("random_transducer")
    return load_model(random_package(root, head="transducer", chunk_size=2, left_chunks=3, seed=1))


def _speech(tiny) -> list[np.ndarray]:
    return [load_audio(w) for w in tiny.wavs]


def _decode_alone(recognizer, samples: np.ndarray, piece: int, rate: int = 16000):
    stream = recognizer.new_stream()
    for start in range(0, samples.shape[0], piece):
        recognizer.accept_waveform(stream, samples[start: start + piece], rate)
        while recognizer.is_ready(stream):
            recognizer.decode([stream])
    recognizer.input_finished(stream)
    while recognizer.is_ready(stream):
        recognizer.decode([stream])
    assert stream.done
    return recognizer.result(stream)


def _decode_together(recognizer, waves, pieces, delays):
    """One decode() call per tick over all streams; stream i starts at tick delays[i]."""
    return [recognizer.result(s) for s in decode_together(recognizer, waves, pieces, delays)]


def _same(a, b) -> None:
    assert a.token_ids == b.token_ids
    assert a.timestamps == pytest.approx(b.timestamps)
    assert a.text == b.text and a.is_final and b.is_final


@needs_espeak
def test_batched_streams_at_different_positions_equal_alone(tiny):
    recognizer = load_model(tiny.package_dir).streaming_recognizer(
        endpoint=EndpointConfig(enabled=False))
    waves = _speech(tiny)
    pieces, delays = [1600, 999, 4000, 321], [0, 3, 1, 7]
    together = _decode_together(recognizer, waves, pieces, delays)
    for wave, piece, result in zip(waves, pieces, together):
        _same(result, _decode_alone(recognizer, wave, piece))
    assert all(r.token_ids for r in together)  # comparing empty results would prove little


def test_batched_transducer_streams_equal_alone(transducer_model):
    recognizer = transducer_model.streaming_recognizer(endpoint=EndpointConfig(enabled=False))
    rng = np.random.default_rng(0)
    waves = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (8000, 15000, 4321)]
    together = _decode_together(recognizer, waves, [800, 2000, 555], [2, 0, 5])
    assert any(r.token_ids for r in together)  # random weights still emit tokens
    for wave, result in zip(waves, together):
        _same(result, _decode_alone(recognizer, wave, 1234))


def test_streaming_equals_offline_chunk_masked_forward(transducer_model):
    """The offline forward uses the same chunk mask, so streaming gives the offline tokens."""
    recognizer = transducer_model.streaming_recognizer(endpoint=EndpointConfig(enabled=False))
    rng = np.random.default_rng(1)
    waves = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (9000, 13000)]
    offline = transducer_model.transcribe(waves)
    for wave, expected in zip(waves, offline):
        result = _decode_alone(recognizer, wave, 700)
        assert result.token_ids == expected.token_ids
        assert result.timestamps == pytest.approx(expected.timestamps)


@pytest.fixture(scope="session", params=["conformer", "transformer"])
def recipe_chunked_model(request, tmp_path_factory):
    """A random-weight transducer with the recipes' streaming chunking (chunks of 8 frames,
    4 chunks of left context, a causal kernel of 15 for the Conformer)."""
    from asr.testing.packages import random_package

    root = tmp_path_factory.mktemp(f"random_{request.param}_8x4")
    return load_model(random_package(
        root, head="transducer", chunk_size=8, left_chunks=4, seed=1,
        encoder_overrides={"kind": request.param, "conv_kernel_size": 15}))


def test_streams_joining_finishing_and_leaving_a_batch_equal_alone_and_offline(
        recipe_chunked_model):
    """Streams of the recipes' chunking decoded as a server decodes them: new streams join
    while others are mid-way, a stream that is done leaves the list, and the others go on;
    among them one shorter than the subsampling's window, one shorter than a chunk and ones
    ending in a partial chunk. Each equals its solo decode and the offline decode of the same
    model (tokens and timestamps), whose timestamps are monotonic and within the audio."""
    model = recipe_chunked_model
    recognizer = model.streaming_recognizer(endpoint=EndpointConfig(enabled=False))
    rng = np.random.default_rng(7)
    # 300 samples: 2 feature frames; 4000: 5 encoder frames; 16000: 3 whole chunks; the others
    # end in a partial chunk
    sizes = (300, 4000, 7000, 16000, 9999, 12345)
    waves = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in sizes]
    joins, pieces = (0, 0, 2, 1, 4, 9), (800, 4000, 640, 1600, 3000, 999)
    active, cursors, results, tick = {}, {}, {}, 0
    while len(results) < len(waves):
        for i, join in enumerate(joins):
            if join == tick:
                active[i], cursors[i] = recognizer.new_stream(), 0
        for i, stream in active.items():
            if not stream.input_done:
                recognizer.accept_waveform(stream, waves[i][cursors[i]: cursors[i] + pieces[i]],
                                           16000)
                cursors[i] += pieces[i]
                if cursors[i] >= waves[i].shape[0]:
                    recognizer.input_finished(stream)
        recognizer.decode(list(active.values()))
        for i, stream in list(active.items()):
            if stream.done:
                results[i] = recognizer.result(stream)
                del active[i]  # a finished stream leaves; the others go on
        tick += 1
    assert joins[-1] < tick and len({results[i].token_ids for i in range(3, 6)}) == 3
    offline = model.transcribe(waves)
    for i, (wave, expected) in enumerate(zip(waves, offline)):
        _same(results[i], _decode_alone(recognizer, wave, 1234))
        assert results[i].token_ids == expected.token_ids
        assert results[i].timestamps == pytest.approx(expected.timestamps)
        times = list(results[i].timestamps)
        assert times == sorted(times) and all(0 <= t < sizes[i] / 16000 for t in times)
        assert all(word.end <= sizes[i] / 16000 + 1e-9 for word in results[i].words)
    assert results[0].token_ids == () and sum(len(r.token_ids) for r in offline) > 20


@pytest.mark.parametrize("model", ["transducer_model", "tdt_model"])
def test_segmented_timestamps_are_monotonic_within_the_audio_and_their_segments(model, request):
    """Every streaming searcher, with endpoints that end a segment every 0.4 s or after 0.2 s
    without a token: the transcript's token times never go back, each lies within the audio
    and within its own segment (from its start to the next segment's), and each word ends
    within the audio and its segment."""
    model = request.getfixturevalue(model)
    rules = EndpointConfig(rule1=EndpointRule(False, 0.2, 0.0), rule2=EndpointRule(True, 0.2, 0.0),
                           rule3=EndpointRule(False, 0.0, 0.4))
    wave = (np.random.default_rng(8).standard_normal(38000) * 0.1).astype(np.float32)
    wave[12000:20000] = 0.0  # a pause
    duration = wave.shape[0] / 16000
    names = [n for n in available_searchers(model.runtime.model) if n in STREAMING_SEARCHER_NAMES]
    for searcher in names:
        recognizer = model.streaming_recognizer(searcher, endpoint=rules)
        segments = decode_with_endpoints(recognizer, recognizer.new_stream(), wave, 16000, 1000)
        assert len(segments) > 4 and sum(len(s.token_ids) for s in segments) > 5, searcher
        ends = [s.begin for s in segments[1:]] + [duration]
        for segment, end in zip(segments, ends):
            assert segment.begin <= end
            assert all(segment.begin <= t < end for t in segment.timestamps), searcher
            # (a word ends a frame after its last token: on the frame grid, to float rounding)
            assert all(segment.begin <= w.start < w.end <= end + 1e-9 for w in segment.words), \
                searcher
        times = [t for s in segments for t in s.timestamps]
        assert times == sorted(times), searcher


@pytest.fixture(scope="session")
def unlimited_model(tmp_path_factory):
    """A random-weight causal chunked Conformer with unlimited left context (left_chunks -1)."""
    from asr.testing.packages import random_package

    root = tmp_path_factory.mktemp("random_unlimited")
    return load_model(random_package(root, head="transducer", chunk_size=2, left_chunks=-1,
                                     seed=1))


def test_unlimited_left_context_caches_every_frame_of_a_stream(unlimited_model):
    """A left_chunks -1 package streams (streaming == offline: the parametrized test below);
    each stream's attention cache holds all its frames."""
    assert unlimited_model.runtime.package.metadata.streaming  # the package says it streams
    recognizer = unlimited_model.streaming_recognizer()
    assert recognizer.left_chunks == -1
    stream = recognizer.new_stream()
    wave = (np.random.default_rng(3).standard_normal(15000) * 0.1).astype(np.float32)
    recognizer.accept_waveform(stream, wave, 16000)
    for decoded in (2, 4, 6):
        recognizer.decode([stream])
        assert stream.encoder_state.layers[0].key.shape[2] == stream.frames_decoded == decoded


def test_a_lone_streams_cif_store_is_not_copied_each_chunk(tmp_path, monkeypatch):
    """The search state of a stream decoded alone is the searcher's own (no other stream's
    memory to let go of): it was copied after every chunk, for CIF the store of all the
    segment's encoder frames. Streams decoded in a batch still get copies of their own parts."""
    from asr.testing.packages import random_package

    model = load_model(random_package(tmp_path, head="cif", chunk_size=2, left_chunks=3))
    recognizer = model.streaming_recognizer("cif_greedy", endpoint=EndpointConfig(enabled=False))
    searcher, stepped = recognizer.searcher, []
    step = searcher.step

    def recording(enc, enc_lens, state):
        stepped.append(step(enc, enc_lens, state))
        return stepped[-1]

    monkeypatch.setattr(searcher, "step", recording)
    rng = np.random.default_rng(5)
    lone, other = recognizer.new_stream(), recognizer.new_stream()
    for stream in (lone, other):
        recognizer.accept_waveform(stream, (rng.standard_normal(16000) * 0.1).astype(np.float32),
                                   16000)
    for _ in range(3):
        recognizer.decode([lone])
        assert lone.search_state.frames[0] is stepped[-1].frames[0]
        assert lone.search_state.window_start.data_ptr() == stepped[-1].window_start.data_ptr()
    recognizer.decode([lone, other])
    for stream in (lone, other):
        chunks = stream.search_state.frames[0]
        while chunks is not None:  # each chunk its stream's own, not a view of the batch's
            store = chunks.frames
            assert store.untyped_storage().nbytes() == store.numel() * store.element_size()
            chunks = chunks.before


def test_a_waiting_stream_keeps_only_its_own_cache(unlimited_model):
    """A young stream decoded in a batch with an old one and then waiting for audio holds its
    own frames only: neither the padding up to the old stream's cache nor (through a view) the
    batch's caches, which would make the memory of N streams grow as N times the oldest."""
    recognizer = unlimited_model.streaming_recognizer(endpoint=EndpointConfig(enabled=False))
    rng = np.random.default_rng(4)
    old, young = recognizer.new_stream(), recognizer.new_stream()
    recognizer.accept_waveform(old, (rng.standard_normal(40000) * 0.1).astype(np.float32), 16000)
    for _ in range(10):
        recognizer.decode([old])
    recognizer.accept_waveform(young, (rng.standard_normal(2000) * 0.1).astype(np.float32), 16000)
    recognizer.decode([old, young])
    assert young.frames_decoded == 2 and old.frames_decoded == 22
    for layer in young.encoder_state.layers:
        for cache in (layer.key, layer.value):
            assert cache.shape[2] == 2
            assert cache.untyped_storage().nbytes() == cache.numel() * cache.element_size()


def _encoder_run(recognizer, wave: np.ndarray, piece: int = 1000):
    """Decodes ``wave`` alone; returns every encoder frame the searcher was given, (T', D), and
    the stream's largest key/value cache (frames) after each decode."""
    frames, sizes, step = [], [], recognizer.searcher.step

    def recording_step(enc, enc_lens, state):
        frames.append(enc[0, : int(enc_lens[0])].clone())
        return step(enc, enc_lens, state)

    recognizer.searcher.step = recording_step
    stream = recognizer.new_stream()
    for begin in range(0, wave.shape[0], piece):
        recognizer.accept_waveform(stream, wave[begin: begin + piece], 16000)
        if begin + piece >= wave.shape[0]:
            recognizer.input_finished(stream)
        while recognizer.is_ready(stream):
            recognizer.decode([stream])
            sizes.append(max(cache.shape[2] for layer in stream.encoder_state.layers
                             for cache in (layer.key, layer.value)))
    assert stream.done
    return torch.cat(frames), sizes


def test_unlimited_left_context_is_bounded_by_max_left_seconds(unlimited_model, caplog):
    """left_chunks -1 with max_left_seconds 0.5 (6 chunks of 0.08 s): a long stream's cache
    grows to 6 chunks and stays there (it grew with the stream: 100 frames after 4 s); it
    decodes as left_chunks 6, and a stream within the bound (at most 7 chunks) as with no
    bound, both to float rounding (the last chunk of the 13 frames attends over a cache of 12
    slots, not 13, a product some CPUs round differently; a frame too few moves frames by
    ~0.1). When a stream's context starts to slide is logged, once."""
    quiet = EndpointConfig(enabled=False)
    bounded = unlimited_model.streaming_recognizer(endpoint=quiet, max_left_seconds=0.5)
    unbounded = unlimited_model.streaming_recognizer(endpoint=quiet, max_left_seconds=math.inf)
    windowed = unlimited_model.streaming_recognizer(endpoint=quiet, left_chunks=6)
    assert (bounded.max_left_chunks, unbounded.max_left_chunks) == (6, None)
    rng = np.random.default_rng(5)
    long = (rng.standard_normal(64000) * 0.1).astype(np.float32)  # 4 s: 100 encoder frames
    with caplog.at_level(logging.INFO, logger="asr.runtime.streaming"):
        frames, sizes = _encoder_run(bounded, long)
    slides = [r for r in caplog.records if "left context slides" in r.getMessage()]
    assert len(slides) == 1 and "last 6 chunks" in slides[0].getMessage()
    assert frames.shape[0] == 99 and sizes[:3] == [2, 4, 6] and max(sizes) == sizes[-1] == 12
    all_frames, all_sizes = _encoder_run(unbounded, long)
    assert all_sizes[-1] == 99
    torch.testing.assert_close(frames, _encoder_run(windowed, long)[0], atol=1e-5, rtol=0)
    assert not torch.allclose(frames[20:], all_frames[20:], atol=1e-3)
    short = long[:9000]  # 13 encoder frames, within 7 chunks
    frames, sizes = _encoder_run(bounded, short)
    assert frames.shape[0] == 13 and max(sizes) == 12
    torch.testing.assert_close(frames, _encoder_run(unbounded, short)[0], atol=1e-5, rtol=0)


def test_max_left_seconds_default_and_errors(unlimited_model, transducer_model):
    """By default a left_chunks -1 stream keeps 30 s (375 chunks of 0.08 s); a bounded
    left_chunks needs no bound. A bound that is not a positive number of seconds, or shorter
    than one chunk, is an error naming the option."""
    assert unlimited_model.streaming_recognizer().max_left_chunks == 375
    # whole chunks despite float rounding: 4.64 / (4 * 0.04) is 28.999999999999996 in floats
    assert [left_context_bound(s, 4 * 0.04) for s in (4.64, 4.63, 0.16)] == [29, 28, 1]
    assert left_context_bound(math.inf, 0.16) is None
    assert transducer_model.streaming_recognizer(max_left_seconds=0.01).max_left_chunks is None
    for bad in (0, -1.0, math.nan, "x", True):
        for model in (unlimited_model, transducer_model):
            with pytest.raises(ValueError, match=r"max_left_seconds \(--max-left-seconds\) "
                                                 r"must be a positive number"):
                model.streaming_recognizer(max_left_seconds=bad)
    with pytest.raises(ValueError, match=r"0.05 is shorter than one chunk \(0.08 s\)"):
        unlimited_model.streaming_recognizer(max_left_seconds=0.05)
    with pytest.raises(ValueError, match="max_left_seconds bounds the left context a stream keeps"):
        unlimited_model.transcribe([np.zeros(1600, np.float32)], max_left_seconds=5)


def test_chunking_that_is_not_whole_numbers_is_an_error_naming_the_option(transducer_model):
    """A boolean is no chunk count (True was taken as 1), nor is a fraction."""
    for kwargs, name in [({"chunk_size": True}, "chunk_size"), ({"chunk_size": 2.5}, "chunk_size"),
                         ({"left_chunks": False}, "left_chunks"),
                         ({"left_chunks": 1.0}, "left_chunks")]:
        with pytest.raises(ValueError, match=rf"{name} \(--{name.replace('_', '-')}\) must be "
                                             "a whole number"):
            transducer_model.streaming_recognizer(**kwargs)


@pytest.fixture(scope="session")
def tdt_model(tmp_path_factory):
    """A random-weight causal chunked Conformer with a TDT head (chunks of 2 frames)."""
    from asr.testing.packages import random_package

    root = tmp_path_factory.mktemp("random_tdt")
    return load_model(random_package(root, head="tdt", chunk_size=2, left_chunks=3, seed=1))


@pytest.mark.parametrize(("model", "searcher"), [("transducer_model", "transducer_beam"),
                                                 ("tdt_model", "tdt_beam"),
                                                 ("transducer_model", "ctc_prefix_beam"),
                                                 ("unlimited_model", "transducer_greedy")])
def test_streaming_beam_equals_offline_beam_chunk_masked_forward(model, searcher, request):
    """The beam searches stream: through the chunked encoder, batched with streams at other
    positions, their final results are the offline beam search's on the chunk-masked
    forward. So does the greedy search of a model with unlimited left context (left_chunks -1,
    every earlier frame cached: streams of different ages share a batch, their caches padded)."""
    model = request.getfixturevalue(model)
    recognizer = model.streaming_recognizer(searcher, endpoint=EndpointConfig(enabled=False))
    assert recognizer.searcher_name == searcher
    rng = np.random.default_rng(1)
    waves = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (9000, 13000, 5000)]
    offline = model.transcribe(waves, searcher=searcher)
    assert sum(len(r.token_ids) for r in offline) > 5
    together = _decode_together(recognizer, waves, [700, 1500, 333], [0, 2, 1])
    for wave, expected, result in zip(waves, offline, together):
        assert result.token_ids == expected.token_ids
        assert result.timestamps == pytest.approx(expected.timestamps)
        _same(result, _decode_alone(recognizer, wave, 700))


def _decode_at_once(recognizer, waves) -> list[list]:
    """Streams given all their audio at once, decoded together one chunk each per call; the
    hypotheses of every stream after each call."""
    streams = [recognizer.new_stream() for _ in waves]
    for stream, wave in zip(streams, waves):
        recognizer.accept_waveform(stream, wave, 16000)
        recognizer.input_finished(stream)
    steps = []
    while not all(s.done for s in streams):
        recognizer.decode(streams)
        steps.append([s.hypothesis for s in streams])
    return steps


@pytest.mark.parametrize("model", ["transducer_model", "tdt_model"])
def test_garbage_in_a_chunks_padding_reaches_no_stream(model, request, monkeypatch):
    """An encoder whose chunk output holds NaN beyond each stream's count (the rows of the
    streams whose last chunk is shorter than the others'): every streaming searcher gives
    every stream, at every step, the clean run's hypothesis, and no NaN score (CTC greedy's
    partial scores were NaN), as offline (``ASRModel.encode_chunk`` and ``encode`` zero the
    padding alike)."""
    model = request.getfixturevalue(model)
    rng = np.random.default_rng(2)
    waves = [(rng.standard_normal(n) * 0.1).astype(np.float32)
             for n in (13000, 5000, 5700, 6300)]  # the short ones end on chunks of other lengths
    encoder = model.runtime.model.encoder
    forward_chunk = encoder.forward_chunk
    padded = []

    def dirty_forward_chunk(feats, feat_lens, state):
        enc, enc_lens, state = forward_chunk(feats, feat_lens, state)
        valid = torch.arange(enc.shape[1])[None, :] < enc_lens[:, None]
        padded.append(int((~valid).sum()))
        return enc.masked_fill(~valid[:, :, None], float("nan")), enc_lens, state

    names = available_searchers(model.runtime.model)
    searchers = [name for name in names if name in STREAMING_SEARCHER_NAMES]
    assert {"ctc_greedy", "ctc_prefix_beam"} < set(searchers) and len(searchers) == 4
    for searcher in searchers:
        recognizer = model.streaming_recognizer(searcher, endpoint=EndpointConfig(enabled=False))
        clean = _decode_at_once(recognizer, waves)
        with monkeypatch.context() as patch:
            patch.setattr(encoder, "forward_chunk", dirty_forward_chunk)
            dirty = _decode_at_once(recognizer, waves)
        assert len(dirty) == len(clean)
        for step, (expected, got) in enumerate(zip(clean, dirty)):
            for stream, (e, g) in enumerate(zip(expected, got)):
                where = (searcher, step, stream)
                assert (g.tokens, g.frames) == (e.tokens, e.frames), where
                assert g.score == pytest.approx(e.score, nan_ok=False), where
    assert sum(padded) > 0  # the batches had padding to fill


def _segments_with_resets(recognizer, wave: np.ndarray, piece: int = 700):
    """Decodes ``wave`` alone, resetting at every endpoint; returns the final segments, the
    results at the endpoints (what a server sends), what ``reset`` returned, the segment start
    frames and every encoder chunk the searcher was given."""
    chunks, step = [], recognizer.searcher.step

    def recording_step(enc, enc_lens, state):
        chunks.append(enc[0, : int(enc_lens[0])].clone())
        return step(enc, enc_lens, state)

    recognizer.searcher.step = recording_step
    stream, sent, returned, starts = recognizer.new_stream(), [], [], [0]
    for begin in range(0, wave.shape[0] + piece, piece):
        if begin < wave.shape[0]:
            recognizer.accept_waveform(stream, wave[begin: begin + piece], 16000)
        else:
            recognizer.input_finished(stream)
        while recognizer.is_ready(stream):
            recognizer.decode([stream])
            if recognizer.is_endpoint(stream):
                sent.append(recognizer.result(stream))
                returned.append(recognizer.reset(stream))
                starts.append(stream.segment_start_frame)
    del recognizer.searcher.step
    assert stream.done
    return [*stream.finished_segments, recognizer.result(stream)], sent, returned, starts, chunks


@pytest.mark.parametrize(("model", "searcher"), [("tdt_model", "tdt_beam"),
                                                 ("tdt_model", "tdt_greedy"),
                                                 ("transducer_model", "transducer_beam"),
                                                 ("transducer_model", "ctc_prefix_beam")])
def test_segment_after_reset_equals_a_fresh_search_of_its_frames(model, searcher, request):
    """Endpoints in the middle of speech (rule 3 every 0.5 s): each segment's final result,
    the one sent at its endpoint too, is the searcher's result on that segment's encoder frames
    searched fresh (TDT searches keep the last frames of a chunk undecided until the end is
    known: a reset must finalize them, not drop them), with absolute, increasing times."""
    model = request.getfixturevalue(model)
    endpoint = EndpointConfig(rule1=EndpointRule(False, 100.0, 0.0),
                              rule2=EndpointRule(True, 100.0, 0.0),
                              rule3=EndpointRule(False, 0.0, 0.5))
    recognizer = model.streaming_recognizer(searcher, endpoint=endpoint)
    wave = (np.random.default_rng(1).standard_normal(16000 * 3) * 0.1).astype(np.float32)
    segments, sent, returned, starts, chunks = _segments_with_resets(recognizer, wave)
    enc = torch.cat(chunks)
    bounds = [*starts, enc.shape[0]]
    assert len(segments) == len(bounds) - 1 >= 4
    for index, segment in enumerate(segments):
        begin, end = bounds[index], bounds[index + 1]
        state = recognizer.searcher.step(enc[None, begin:end], torch.tensor([end - begin]),
                                         recognizer.searcher.init_state(1, "cpu"))
        fresh = model.runtime.results.hypothesis_segment(
            recognizer.searcher.finalize(state)[0], begin, index)
        assert (segment.index, segment.is_final) == (index, True)
        assert segment.token_ids == fresh.token_ids, index
        assert segment.timestamps == pytest.approx(fresh.timestamps)
    assert sent == returned == segments[:-1]
    times = [t for segment in segments for t in segment.timestamps]
    assert len(times) > 10 and times == sorted(times)


def test_ctc_segment_cif_streaming_equals_offline(tmp_path):
    """Paraformer-v2 through the real chunked encoder: the segments of the cached frames come
    from CTC, so the final streaming result is the offline chunk-masked one."""
    from asr.testing.packages import random_package

    model = load_model(random_package(tmp_path, head="cif_ctc", chunk_size=2, left_chunks=3))
    recognizer = model.streaming_recognizer("cif_greedy", endpoint=EndpointConfig(enabled=False))
    rng = np.random.default_rng(2)
    waves = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (9000, 13000)]
    offline = model.transcribe(waves, searcher="cif_greedy")
    assert any(r.token_ids for r in offline)
    for wave, expected in zip(waves, offline):
        result = _decode_alone(recognizer, wave, 700)
        assert result.token_ids == expected.token_ids
        assert result.timestamps == pytest.approx(expected.timestamps)


def test_cif_streaming_partials_decode_a_bounded_window_final_all_frames(tmp_path, monkeypatch):
    """transcribe_streaming (the server's decode loop is the same: ``decode`` takes the
    searcher's partial after every chunk for the endpoints and the partial results) decodes a
    CIF partial over at most ``search.partial_window`` (here from the model's search options) +
    a chunk of frames; the final result of the long segment decodes all its frames and is the
    offline chunk-masked one."""
    from asr.testing.packages import random_package

    model = load_model(random_package(tmp_path, head="cif", chunk_size=2, left_chunks=3),
                       search={"partial_window": 8})
    recognizer = model.streaming_recognizer("cif_greedy", endpoint=EndpointConfig(enabled=False))
    head, decoded = recognizer.searcher.head, []
    decode = head.decode

    def counting(inputs, input_lens, enc, enc_lens):
        decoded.append(enc.shape[1])
        return decode(inputs, input_lens, enc, enc_lens)

    monkeypatch.setattr(head, "decode", counting)
    wave = (np.random.default_rng(3).standard_normal(32000) * 0.1).astype(np.float32)
    [result] = transcribe_streaming(recognizer, [DecodedAudio(wave, 16000, "long")])
    assert len(decoded) > 20 and max(decoded[:-1]) <= 8 + 2 < 40 < decoded[-1]  # 2 s: ~49
    monkeypatch.undo()
    [expected] = model.transcribe([wave], searcher="cif_greedy")
    assert len(expected.token_ids) > 10
    assert result.token_ids == expected.token_ids
    assert result.timestamps == pytest.approx(expected.timestamps)


@needs_espeak
def test_streaming_text_equals_offline_text(tiny):
    model = load_model(tiny.package_dir)
    recognizer = model.streaming_recognizer()
    for wave, expected in zip(_speech(tiny), model.transcribe(_speech(tiny))):
        result = _decode_alone(recognizer, wave, 2048)
        assert (result.text, result.token_ids) == (expected.text, expected.token_ids)
        assert result.timestamps == pytest.approx(expected.timestamps)


@needs_espeak
def test_other_sample_rates_are_resampled_exactly(tiny):
    recognizer = load_model(tiny.package_dir).streaming_recognizer()
    wave = _speech(tiny)[1]
    at_8k = resample(wave, 16000, 8000)
    expected = _decode_alone(recognizer, resample(at_8k, 8000, 16000), 1600)
    _same(_decode_alone(recognizer, at_8k, 777, rate=8000), expected)
    assert expected.token_ids  # comparing empty results would prove little


def test_invalid_input(transducer_model):
    recognizer = transducer_model.streaming_recognizer()
    stream = recognizer.new_stream()
    with pytest.raises(ValueError, match="NaN"):
        recognizer.accept_waveform(stream, np.array([0.0, np.nan], np.float32), 16000)
    recognizer.accept_waveform(stream, np.zeros(100, np.float32), 8000)
    with pytest.raises(ValueError, match="sample rate changed"):
        recognizer.accept_waveform(stream, np.zeros(100, np.float32), 16000)
    recognizer.input_finished(stream)
    with pytest.raises(ValueError, match="after input_finished"):
        recognizer.accept_waveform(stream, np.zeros(100, np.float32), 8000)


@pytest.mark.parametrize("rate", [16000.5, 8000.25, True])
def test_a_sample_rate_that_is_not_whole_hz_is_an_error_naming_the_stream(transducer_model, rate):
    """16000.5 Hz was cut to 16000 (and 8000.25 to 8000) and taken without a word."""
    recognizer = transducer_model.streaming_recognizer()
    stream = recognizer.new_stream()
    with pytest.raises(ValueError, match=rf"stream {stream.id}: sample rates must be whole"):
        recognizer.accept_waveform(stream, np.zeros(1600, np.float32), rate)
    recognizer.accept_waveform(stream, np.zeros(1600, np.float32), 16000.0)  # whole: fine
    assert stream.num_samples == 1600


def test_misuse_that_was_silently_wrong_is_an_error(transducer_model):
    """A channels-first stereo array (read as 2 samples of 16000 channels) and one stream given
    twice to one decode call (stepped twice on the same chunk)."""
    recognizer = transducer_model.streaming_recognizer()
    stream = recognizer.new_stream()
    with pytest.raises(ValueError, match=r"16000 channels of 2 samples .*transpose"):
        recognizer.accept_waveform(stream, np.zeros((2, 16000), np.float32), 16000)
    with pytest.raises(ValueError, match="16000 channels"):
        transducer_model.transcribe([np.zeros((2, 16000), np.float32)], sample_rate=16000)
    recognizer.accept_waveform(stream, np.zeros((16000, 2), np.float32), 16000)  # (N, C) is fine
    with pytest.raises(ValueError, match="given twice"):
        recognizer.decode([stream, stream])


def test_inputs_shorter_than_the_receptive_field_give_empty_results(transducer_model):
    """Under about 7 feature frames (0.08 s) an input has no encoder frame: offline and
    streaming both give an empty transcript (offline raised), alone or batched."""
    short = [np.full(n, 0.1, np.float32) for n in (1, 400, 1000)]
    for searcher in ("transducer_greedy", "transducer_beam", "ctc_prefix_beam"):
        results = transducer_model.transcribe(short, sample_rate=16000, searcher=searcher)
        assert [r.text for r in results] == ["", "", ""]
        recognizer = transducer_model.streaming_recognizer(searcher)
        for wave in short:
            assert _decode_alone(recognizer, wave, 160).token_ids == ()


@pytest.mark.parametrize("rates", [(16000, 8000), (8000, 16000), (8000, 22050)])
def test_a_sample_rate_change_within_a_stream_is_an_error(transducer_model, rates):
    """The first piece fixes a stream's rate, the model's own included (16 kHz then 8 kHz was
    taken and spliced in resampled)."""
    recognizer = transducer_model.streaming_recognizer()
    stream = recognizer.new_stream()
    recognizer.accept_waveform(stream, np.zeros(1600, np.float32), rates[0])
    with pytest.raises(ValueError, match=f"sample rate changed from {rates[0]} to {rates[1]}"):
        recognizer.accept_waveform(stream, np.zeros(1600, np.float32), rates[1])
    recognizer.accept_waveform(stream, np.zeros(1600, np.float32), rates[0])
    recognizer.input_finished(stream)
    assert stream.num_samples == 3200 * 16000 // rates[0]


# ----------------------------------------------------------------------------- endpointing


def test_endpoint_rules():
    cfg = EndpointConfig()
    frame = 0.04
    # rule 1: 2.4 s of silence with nothing recognized
    assert not detect_endpoint(cfg, 59, None, frame)
    assert detect_endpoint(cfg, 60, None, frame)
    # rule 2: 1.2 s after the last token
    assert not detect_endpoint(cfg, 10 + 29, 9, frame)
    assert detect_endpoint(cfg, 10 + 30, 9, frame)
    # rule 3: 20 s of continuous speech
    assert not detect_endpoint(cfg, 499, 498, frame)
    assert detect_endpoint(cfg, 500, 499, frame)
    assert not detect_endpoint(EndpointConfig(enabled=False), 1000, None, frame)
    with pytest.raises(ValueError, match=">= 0"):
        EndpointRule(False, -1.0, 0.0)
    with pytest.raises(ValueError, match=">= 0"):  # a NaN rule would never fire, silently
        EndpointRule(True, math.nan, 0.0)
    with pytest.raises(ValueError, match=">= 0"):
        EndpointRule(False, 0.0, math.nan)


def _feed_until_endpoint(recognizer, stream, samples, piece=640):
    """Feeds ``samples`` piece by piece; returns the stream time (s) of the first endpoint."""
    for start in range(0, samples.shape[0], piece):
        recognizer.accept_waveform(stream, samples[start: start + piece], 16000)
        while recognizer.is_ready(stream):
            recognizer.decode([stream])
            if recognizer.is_endpoint(stream):
                return stream.frames_decoded * recognizer.frame_seconds
    return None


@needs_espeak
def test_endpoint_on_silence_only(tiny):
    recognizer = load_model(tiny.package_dir).streaming_recognizer()
    stream = recognizer.new_stream()
    when = _feed_until_endpoint(recognizer, stream, np.zeros(16000 * 4, np.float32))
    assert when == pytest.approx(2.4, abs=recognizer.chunk_size * recognizer.frame_seconds)
    result = recognizer.result(stream)
    assert result.is_final and result.text == "" and result.index == 0
    recognizer.reset(stream)
    assert recognizer.result(stream).index == 1
    assert not recognizer.is_endpoint(stream)


@needs_espeak
def test_a_finished_stream_is_at_no_endpoint(tiny):
    """3 s of silence decoded to the end without a reset: rule 1 (2.4 s without a token) holds,
    but the stream is done, so a caller's loop (``if is_endpoint: reset``) does not end its
    final segment a second time and add an empty one."""
    recognizer = load_model(tiny.package_dir).streaming_recognizer()
    stream = recognizer.new_stream()
    recognizer.accept_waveform(stream, np.zeros(16000 * 3, np.float32), 16000)
    recognizer.input_finished(stream)
    while recognizer.is_ready(stream):
        recognizer.decode([stream])
    assert stream.done and stream.frames_decoded * recognizer.frame_seconds > 2.4
    assert not recognizer.is_endpoint(stream)
    result = recognizer.result(stream)
    assert (result.index, result.is_final, result.text) == (0, True, "")


def test_reset_of_a_done_stream_is_an_error_that_changes_nothing(transducer_model):
    """A done stream's last segment is already final (result() gives it): reset() used to file
    it again in finished_segments and start an empty segment after it."""
    recognizer = transducer_model.streaming_recognizer()
    stream = recognizer.new_stream()
    recognizer.accept_waveform(stream, np.random.default_rng(0).normal(0, 0.1, 8000), 16000)
    recognizer.input_finished(stream)
    while recognizer.is_ready(stream):
        recognizer.decode([stream])
    assert stream.done
    final = recognizer.result(stream)
    with pytest.raises(ValueError, match=rf"stream {stream.id}: reset after the stream is done"):
        recognizer.reset(stream)
    assert stream.finished_segments == [] and stream.segment == 0
    assert recognizer.result(stream) == final


def test_an_endpoint_on_the_last_encoder_frame_ends_no_segment_before_the_end(transducer_model):
    """1 s is 100 feature frames: 12 chunks of 2 encoder frames read 99 of them (11, then 8 a
    chunk), and the last one frame makes no encoder frame. The stream is done with its 12th
    chunk: rule 3 (0.9 s), which fires on it, ended the segment there, and the stream then
    ended with an empty final segment after it, made of that one frame."""
    recognizer = transducer_model.streaming_recognizer(
        endpoint=EndpointConfig(rule3=EndpointRule(False, 0.0, 0.9)))
    stream = recognizer.new_stream()
    recognizer.accept_waveform(stream, np.random.default_rng(0).normal(0, 0.1, 16000), 16000)
    recognizer.input_finished(stream)
    assert stream.feats.shape[0] == 100
    while recognizer.is_ready(stream):
        recognizer.decode([stream])
        if recognizer.is_endpoint(stream):
            recognizer.reset(stream)
    assert stream.done and stream.frames_decoded == 24 and recognizer.pending_seconds(stream) == 0
    segments = [*stream.finished_segments, recognizer.result(stream)]
    assert [(s.index, s.is_final) for s in segments] == [(0, True)]
    assert segments[0].token_ids and segments[0].end == pytest.approx(0.96)


@needs_espeak
def test_endpoint_after_speech_then_new_segment(tiny):
    """The endpoint splits the stream's tokens, which are the offline ones of the whole input
    (the tiny model's encoder is causal and chunked; its CTC greedy search decides each frame
    alone), into two segments at the endpoint."""
    model = load_model(tiny.package_dir)
    recognizer = model.streaming_recognizer()
    speech = _speech(tiny)
    silence = np.zeros(16000 * 2, np.float32)
    stream = recognizer.new_stream()
    when = _feed_until_endpoint(recognizer, stream, np.concatenate([speech[0], silence]))
    result = recognizer.result(stream)
    assert result.text and result.is_final
    # rule 2: 1.2 s after the last token (within one chunk)
    assert when - result.timestamps[-1] == pytest.approx(1.2 + recognizer.frame_seconds,
                                                         abs=recognizer.chunk_size * 0.04)
    recognizer.reset(stream)
    # the new segment starts empty: no partial result repeats the ended segment's text
    fresh = recognizer.result(stream)
    assert (fresh.index, fresh.token_ids, fresh.text, fresh.is_final) == (1, (), "", False)
    rest = np.concatenate([speech[1], np.zeros(8000, np.float32)])
    [offline] = model.transcribe([np.concatenate([speech[0], silence, rest])])
    before = [i for i, t in zip(offline.token_ids, offline.timestamps) if t < when]
    assert list(result.token_ids) == before
    for start in range(0, rest.shape[0], 1600):
        recognizer.accept_waveform(stream, rest[start: start + 1600], 16000)
    recognizer.input_finished(stream)
    while recognizer.is_ready(stream):
        recognizer.decode([stream])
    second = recognizer.result(stream)
    assert (second.index, second.is_final) == (1, True) and second.text
    assert list(result.token_ids) + list(second.token_ids) == list(offline.token_ids)
    assert second.start >= when - 0.2
    assert min(second.timestamps) == second.start
    assert stream.finished_segments[0].text == result.text


@needs_espeak
def test_max_utterance_length_rule(tiny):
    rule3 = EndpointRule(False, 0.0, 0.8)
    recognizer = load_model(tiny.package_dir).streaming_recognizer(
        endpoint=EndpointConfig(rule3=rule3))
    stream = recognizer.new_stream()
    when = _feed_until_endpoint(recognizer, stream, _speech(tiny)[3])
    assert when == pytest.approx(0.8, abs=recognizer.chunk_size * recognizer.frame_seconds)


@needs_espeak
def test_int16_pcm_gives_the_float_result_offline_and_streaming(tiny):
    """Microphone / soundfile int16 samples are scaled, not taken as huge floats."""
    model = load_model(tiny.package_dir)
    wave = _speech(tiny)[0]
    pcm = np.round(wave * 32767).astype(np.int16)
    as_float = pcm.astype(np.float32) / 32768
    [offline_float, offline_pcm] = model.transcribe([as_float, pcm], sample_rate=16000)
    assert offline_pcm.text == offline_float.text and offline_float.text
    assert offline_pcm.token_ids == offline_float.token_ids
    recognizer = model.streaming_recognizer(endpoint=EndpointConfig(enabled=False))
    _same(_decode_alone(recognizer, pcm, 1600), _decode_alone(recognizer, as_float, 1600))


def test_streaming_progress_counts_audio_seconds(transducer_model, monkeypatch):
    """One long input advances the bar as it is decoded, in seconds, up to its duration."""
    import asr.runtime.streaming as streaming
    from asr.audio import DecodedAudio

    bars = []

    class Bar:
        def __init__(self, total, unit, **kwargs):
            self.total, self.unit, self.updates = total, unit, []
            bars.append(self)

        def update(self, n):
            self.updates.append(n)

        def close(self):
            pass

    monkeypatch.setattr(streaming, "tqdm", Bar)
    rng = np.random.default_rng(0)
    audio = DecodedAudio((0.1 * rng.standard_normal(16000 * 5)).astype(np.float32), 16000, "long")
    streaming.transcribe_streaming(transducer_model.streaming_recognizer(), [audio],
                                   progress=True)
    [bar] = bars
    assert bar.unit == "s" and bar.total == pytest.approx(5.0)
    assert len(bar.updates) > 3 and all(n > 0 for n in bar.updates)
    assert sum(bar.updates) == pytest.approx(5.0)


@pytest.fixture(scope="session")
def constant_ctc(tmp_path_factory):
    """The hand-built CTC package whose searches' outcome is known, on any machine
    (:func:`asr.testing.packages.constant_ctc_package`: blank logit 6, every other id 0)."""
    from asr.testing.packages import constant_ctc_package

    return constant_ctc_package(tmp_path_factory.mktemp("constant_ctc"))


def test_streams_in_one_batch_carry_their_own_hotwords(constant_ctc):
    """new_stream(hotwords=...): three streams of the same audio decoded together, two biased
    toward different phrases, one plain; each equals itself decoded alone, and a reset
    (endpoint) keeps the stream's list. The model hears nothing but the phrases its stream is
    boosted toward (by 8 per token, over blank's lead of 6), so each stream's list shows in its
    text; a trained model's pull toward a phrase depended on weights trained on the machine."""
    model = load_model(constant_ctc, search={"beam_size": 20, "hotwords_unboosted_prefix": 0})
    recognizer = model.streaming_recognizer("ctc_prefix_beam",
                                            endpoint=EndpointConfig(enabled=False))
    wave = (0.1 * np.random.default_rng(0).standard_normal(9600)).astype(np.float32)  # 0.6 s
    lists = [("HELLO WORD", 8.0), ("WORLDS;SEVEN :0.5", 8.0), (None, None)]

    def make(i):
        return recognizer.new_stream(hotwords=lists[i][0], hotwords_score=lists[i][1])

    streams = [make(i) for i in range(3)]
    for piece, stream in zip([1600, 999, 4000], streams):
        for start in range(0, wave.shape[0], piece):
            recognizer.accept_waveform(stream, wave[start: start + piece], 16000)
        recognizer.input_finished(stream)
    while any(recognizer.is_ready(s) for s in streams):
        recognizer.decode(streams)
    texts = [recognizer.result(s).text for s in streams]
    # whole copies of the stream's own phrase, as many as the frames hold (SEVEN's boost of
    # 0.5 is below blank's lead: never said); the plain stream hears what the offline beam
    # search hears: nothing
    [plain] = model.transcribe([wave], searcher="ctc_prefix_beam")
    assert texts[2] == plain.text == ""
    assert texts[0] and not texts[0].replace("HELLO WORD", "")
    assert texts[1] and not texts[1].replace("WORLDS", "")
    for i, text in enumerate(texts):
        alone = make(i)
        recognizer.accept_waveform(alone, wave, 16000)
        recognizer.input_finished(alone)
        while recognizer.is_ready(alone):
            recognizer.decode([alone])
        assert recognizer.result(alone).text == text
    stream = make(0)
    recognizer.reset(stream)
    assert stream.search_state.beams[0].context is stream.context is not None
    with pytest.raises(ValueError, match="before its audio is decoded"):
        recognizer.set_hotword_graph(streams[0], None)


@needs_espeak
def test_hotwords_need_a_searcher_that_biases(tiny):
    recognizer = load_model(tiny.package_dir).streaming_recognizer("ctc_greedy")
    with pytest.raises(ValueError, match="'ctc_greedy' does not take hotwords; these do: "
                                         "ctc_prefix_beam, transducer_beam, tdt_beam"):
        recognizer.new_stream(hotwords=["HELLO"])
    beam = load_model(tiny.package_dir).streaming_recognizer("ctc_prefix_beam")
    with pytest.raises(ValueError, match="does not know"):
        beam.new_stream(hotwords="hello")


def test_a_stream_is_ready_as_soon_as_it_holds_its_next_chunk(transducer_model):
    """Fed one feature frame (10 ms) at a time, a stream is ready exactly when it holds the
    frames of its next chunk (``4c + 3`` first, ``4c`` afterwards), not one frame later: a
    stream that waited for more audio than its chunk needs would lag behind the speaker."""
    recognizer = transducer_model.streaming_recognizer()
    stream = recognizer.new_stream()
    chunks = 0
    for _ in range(60):
        recognizer.accept_waveform(stream, np.full(160, 0.1, np.float32), 16000)
        needed = int(recognizer.encoder.frames_needed(stream.encoder_state,
                                                      recognizer.chunk_size)[0])
        assert recognizer.is_ready(stream) == (stream.feats.shape[0] >= needed)
        if recognizer.is_ready(stream):
            assert stream.feats.shape[0] == needed  # fed one frame at a time: no frame late
            recognizer.decode([stream])
            chunks += 1
    assert chunks >= 5


def test_a_decode_that_raises_changes_no_stream(transducer_model, monkeypatch):
    """decode() gave the batch's streams their new states before it finalized the streams
    whose input had ended: a finalize that raised left the others one chunk on, so a caller
    that decoded each stream alone to find the faulty one (the server) stepped them twice.
    Now nothing changes unless everything succeeded."""
    recognizer = transducer_model.streaming_recognizer()
    rng = np.random.default_rng(0)
    ending, going = recognizer.new_stream(), recognizer.new_stream()
    recognizer.accept_waveform(ending, rng.uniform(-0.1, 0.1, 1600).astype(np.float32), 16000)
    recognizer.input_finished(ending)
    recognizer.accept_waveform(going, rng.uniform(-0.1, 0.1, 16000).astype(np.float32), 16000)
    before = [(s.feats.clone(), s.frames_decoded, s.encoder_state, s.search_state, s.hypothesis)
              for s in (ending, going)]

    def fail(state):
        raise RuntimeError("finalize failed")

    monkeypatch.setattr(recognizer.searcher, "finalize", fail)
    with pytest.raises(RuntimeError, match="finalize failed"):
        recognizer.decode([going, ending])
    for stream, (feats, frames, enc_state, search_state, hyp) in zip((ending, going), before):
        assert torch.equal(stream.feats, feats) and stream.frames_decoded == frames
        assert stream.encoder_state is enc_state and stream.search_state is search_state
        assert stream.hypothesis == hyp and not stream.done
    monkeypatch.undo()
    recognizer.decode([going, ending])
    assert ending.done and going.frames_decoded > 0
