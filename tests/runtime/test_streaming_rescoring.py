"""Streaming n-best rescoring (WeNet U2++'s attention rescoring at an endpoint): partial results
are the CTC prefix beam's, and each segment's final result is the offline rescoring of its
encoder output, under the same chunk mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asr.runtime.endpoint import EndpointConfig, EndpointRule
from asr.runtime.offline import load_model
from asr.testing.packages import random_package
from asr.testing.streams import decode_together

NO_ENDPOINT = EndpointConfig(enabled=False)


@pytest.fixture(scope="module")
def u2pp(tmp_path_factory):
    """A random-weight causal chunked Conformer with CTC and an AED with a right-to-left
    decoder (chunks of 2 frames, 3 left chunks)."""
    root = tmp_path_factory.mktemp("random_u2pp")
    return load_model(random_package(root, head="u2pp", chunk_size=2, left_chunks=3, seed=1))


@pytest.fixture(scope="module")
def paraformer(tmp_path_factory):
    """A random-weight chunked Conformer with a CIF head on the segments of a CTC head."""
    root = tmp_path_factory.mktemp("random_cif_ctc")
    return load_model(random_package(root, head="cif_ctc", chunk_size=2, left_chunks=3, seed=1))


def _waves(seed: int = 1, lengths=(9000, 13000, 5000)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths]


def _offline_hypotheses(model, waves, searcher, chunk_size, left_chunks):
    """The offline searcher's best hypothesis of each wave (one wave per batch, so no padding)
    under the chunk mask of ``asr transcribe --chunk-size --left-chunks``."""
    chunked = model.with_chunking(chunk_size, left_chunks)
    inner = chunked.searcher(searcher)
    got = []

    def recording(enc, enc_lens):
        out = inner(enc, enc_lens)
        got.extend(hyps[0] for hyps in out)
        return out

    chunked._searchers[searcher] = recording
    try:
        for wave in waves:
            chunked.transcribe([wave], searcher=searcher)
    finally:
        chunked._searchers[searcher] = inner
    assert len(got) == len(waves)
    return got


def _stream_alone(recognizer, wave, piece=700):
    """Decodes ``wave`` as one stream fed ``piece`` samples at a time; the stream and its
    partial hypothesis after every decode."""
    stream, partials = recognizer.new_stream(), []
    for begin in range(0, wave.shape[0], piece):
        recognizer.accept_waveform(stream, wave[begin: begin + piece], 16000)
        while recognizer.is_ready(stream):
            recognizer.decode([stream])
            partials.append(stream.hypothesis)
    recognizer.input_finished(stream)
    while recognizer.is_ready(stream):
        recognizer.decode([stream])
    assert stream.done
    return stream, partials


@pytest.mark.parametrize(("chunk_size", "left_chunks"), [(2, 3), (4, 1), (3, -1), (1, 0)])
def test_one_segment_is_the_offline_attention_rescoring_under_the_same_chunk_mask(
    u2pp, chunk_size, left_chunks
):
    """--no-endpoint: the final hypothesis (tokens, CTC frames, mixed score) is offline
    attention_rescoring's under the same chunk mask; the partials are the CTC prefix beam's."""
    waves = _waves()
    offline = _offline_hypotheses(u2pp, waves, "attention_rescoring", chunk_size, left_chunks)
    first_pass = _offline_hypotheses(u2pp, waves, "ctc_prefix_beam", chunk_size, left_chunks)
    recognizer = u2pp.streaming_recognizer("attention_rescoring", endpoint=NO_ENDPOINT,
                                           chunk_size=chunk_size, left_chunks=left_chunks)
    ctc = u2pp.streaming_recognizer("ctc_prefix_beam", endpoint=NO_ENDPOINT,
                                    chunk_size=chunk_size, left_chunks=left_chunks)
    assert recognizer.searcher_name == "attention_rescoring"
    for wave, expected, ctc_best in zip(waves, offline, first_pass):
        stream, partials = _stream_alone(recognizer, wave)
        got = stream.hypothesis
        assert (got.tokens, got.frames) == (expected.tokens, expected.frames)
        assert got.score == pytest.approx(expected.score, abs=1e-4)
        assert got.score != pytest.approx(ctc_best.score, abs=1e-3)  # rescored, not the CTC's
        _, ctc_partials = _stream_alone(ctc, wave)
        assert [(h.tokens, h.frames) for h in partials] == \
            [(h.tokens, h.frames) for h in ctc_partials]
        result = recognizer.result(stream)
        assert result.is_final and result.token_ids == expected.tokens
    assert sum(len(h.tokens) for h in offline) > 5


def test_cif_rescoring_streams_as_offline(paraformer):
    """cif_rescoring falls out of the same code: one segment is its offline result."""
    waves = _waves(2, (9000, 13000))
    offline = _offline_hypotheses(paraformer, waves, "cif_rescoring", 2, 3)
    recognizer = paraformer.streaming_recognizer("cif_rescoring", endpoint=NO_ENDPOINT)
    for wave, expected in zip(waves, offline):
        got = _stream_alone(recognizer, wave)[0].hypothesis
        assert (got.tokens, got.frames) == (expected.tokens, expected.frames)
        assert got.score == pytest.approx(expected.score, abs=1e-4)
    assert any(h.tokens for h in offline)


def test_batched_streams_equal_one_by_one(u2pp):
    """Streams at different positions share a batch (their kept frames stacked with the first
    pass's beams) and each gets its own result."""
    recognizer = u2pp.streaming_recognizer("attention_rescoring", endpoint=NO_ENDPOINT)
    waves = _waves(3)
    pieces, delays = [800, 2000, 555], [2, 0, 5]
    streams = decode_together(recognizer, waves, pieces, delays)
    for stream, wave in zip(streams, waves):
        alone = _stream_alone(recognizer, wave, 1234)[0].hypothesis
        assert (stream.hypothesis.tokens, stream.hypothesis.frames) == (alone.tokens, alone.frames)
        assert stream.hypothesis.score == pytest.approx(alone.score, abs=1e-4)
    assert sum(len(s.hypothesis.tokens) for s in streams) > 5


def test_each_segment_is_the_offline_rescoring_of_its_encoder_output(u2pp):
    """Endpoints every 0.5 s (rule 3): each segment's final result, the one sent at its
    endpoint too, is offline attention_rescoring of that segment's encoder frames (a fresh
    first pass and the AED over those frames alone), with absolute, increasing times."""
    endpoint = EndpointConfig(rule1=EndpointRule(False, 100.0, 0.0),
                              rule2=EndpointRule(True, 100.0, 0.0),
                              rule3=EndpointRule(False, 0.0, 0.5))
    recognizer = u2pp.streaming_recognizer("attention_rescoring", endpoint=endpoint)
    searcher = recognizer.searcher
    chunks, step = [], searcher.step

    def recording_step(enc, enc_lens, state):
        chunks.append(enc[0, : int(enc_lens[0])].clone())
        return step(enc, enc_lens, state)

    searcher.step = recording_step
    wave = _waves(4, (16000 * 3,))[0]
    stream, sent, starts = recognizer.new_stream(), [], [0]
    for begin in range(0, wave.shape[0] + 700, 700):
        if begin < wave.shape[0]:
            recognizer.accept_waveform(stream, wave[begin: begin + 700], 16000)
        else:
            recognizer.input_finished(stream)
        while recognizer.is_ready(stream):
            recognizer.decode([stream])
            if recognizer.is_endpoint(stream):
                sent.append(recognizer.result(stream))
                recognizer.reset(stream)
                starts.append(stream.segment_start_frame)
    del searcher.step
    segments = [*stream.finished_segments, recognizer.result(stream)]
    enc = torch.cat(chunks)
    bounds = [*starts, enc.shape[0]]
    assert len(segments) == len(bounds) - 1 >= 4
    for index, segment in enumerate(segments):
        begin, end = bounds[index], bounds[index + 1]
        offline = searcher(enc[None, begin:end], torch.tensor([end - begin]))[0][0]
        fresh = u2pp.runtime.results.hypothesis_segment(offline, begin, index)
        assert segment.token_ids == fresh.token_ids, index
        assert segment.timestamps == pytest.approx(fresh.timestamps)
    assert sent == segments[:-1]
    times = [t for segment in segments for t in segment.timestamps]
    assert len(times) > 5 and times == sorted(times)


def test_a_reset_drops_the_segments_frames(u2pp):
    """The kept encoder output is the segment's: an endpoint's reset starts an empty store."""
    recognizer = u2pp.streaming_recognizer(
        "attention_rescoring", endpoint=EndpointConfig(rule3=EndpointRule(False, 0.0, 0.3)))
    stream = recognizer.new_stream()
    recognizer.accept_waveform(stream, _waves(5, (8000,))[0], 16000)
    while recognizer.is_ready(stream) and not recognizer.is_endpoint(stream):
        recognizer.decode([stream])
    (held,) = stream.search_state.frames
    assert held is not None and held.num_frames == stream.frames_decoded
    recognizer.reset(stream)
    assert stream.search_state.frames == (None,)


def test_an_endpoint_rescores_its_segment_once_for_result_and_reset(u2pp):
    """The sherpa-onnx loop (``result`` at an endpoint, then ``reset``; ``result`` asked twice
    too) runs the second pass once per segment, and both give the same final result; a later
    chunk finalizes anew."""
    endpoint = EndpointConfig(rule1=EndpointRule(False, 100.0, 0.0),
                              rule2=EndpointRule(True, 100.0, 0.0),
                              rule3=EndpointRule(False, 0.0, 0.5))
    recognizer = u2pp.streaming_recognizer("attention_rescoring", endpoint=endpoint)
    searcher = recognizer.searcher
    calls, rescore = [], searcher._rescore

    def counting(enc, enc_lens, nbests):
        calls.append(int(enc_lens[0]))
        return rescore(enc, enc_lens, nbests)

    searcher._rescore = counting
    try:
        wave = _waves(6, (16000 * 2,))[0]
        stream, endpoints = recognizer.new_stream(), 0
        recognizer.accept_waveform(stream, wave, 16000)
        recognizer.input_finished(stream)
        while recognizer.is_ready(stream):
            recognizer.decode([stream])
            if recognizer.is_endpoint(stream):
                endpoints += 1
                shown = recognizer.result(stream)
                assert recognizer.result(stream) == shown
                assert len(calls) == endpoints
                assert recognizer.reset(stream) == shown
                assert len(calls) == endpoints
            elif not stream.done:
                before = len(calls)
                recognizer.result(stream)  # a partial: no second pass
                assert len(calls) == before
        assert endpoints >= 2 and stream.done
        assert len(calls) == endpoints + 1  # and the last segment's, at the end
        final = recognizer.result(stream)
        assert final.is_final and len(calls) == endpoints + 1
    finally:
        del searcher._rescore
