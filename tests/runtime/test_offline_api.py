"""The Python API's argument checks and input names (``Transcriber.transcribe`` / ``load``)."""

from __future__ import annotations

import dataclasses
import re
import threading

import numpy as np
import pytest
import torch

from asr.audio import AudioError
from asr.results import FailedInput, TranscriptionError, TranscriptionResult
from asr.runtime.offline import load_model, plan_windows


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A random-weight causal chunked Conformer with a transducer head."""
    from asr.testing.packages import random_package

    root = tmp_path_factory.mktemp("random_transducer_api")
    return load_model(random_package(root, head="transducer", chunk_size=2, left_chunks=3, seed=1))


def _noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)


@pytest.mark.parametrize(("window", "overlap"), [(1.0, 0.99997), (1e-5, 0.0)])
def test_windows_whose_step_rounds_to_no_sample_are_refused(window, overlap):
    # the seconds pass 0 <= overlap < window, but in samples the step was 0: an endless loop
    with pytest.raises(ValueError, match="step"):
        plan_windows(0, 50_000, 16_000, window, overlap)


@pytest.mark.parametrize("rate", [0, -8000, 8000.5, True])
def test_a_bad_array_sample_rate_is_an_error_naming_it(model, rate):
    # 0 was taken as the model rate, 8000.5 as 8000, and -8000 failed naming "waveform"
    with pytest.raises(ValueError, match="sample_rate"):
        model.transcribe(_noise(0.5, 0), sample_rate=rate, on_error="return")


def test_a_rate_that_cannot_be_resampled_names_the_array(model):
    [failed] = model.transcribe([_noise(0.5, 0)], sample_rate=7919, on_error="return")
    assert isinstance(failed, FailedInput) and failed.error.startswith("<array 0>: ")


@pytest.mark.parametrize("batch_size", [0, -1])
@pytest.mark.parametrize("streaming", [False, True])
def test_a_batch_size_below_one_is_an_error(model, batch_size, streaming):
    with pytest.raises(ValueError, match="batch_size"):
        model.transcribe(_noise(0.5, 0), batch_size=batch_size, streaming=streaming)


def test_failed_inputs_are_named_as_their_results_would_be(model, tmp_path):
    import soundfile

    path = tmp_path / "ok.wav"
    soundfile.write(path, _noise(0.5, 1), 16000)
    encoded = path.read_bytes()
    inputs = [_noise(0.5, 2), np.zeros(0, np.float32), encoded, b"not audio", encoded]
    results = model.transcribe(inputs, on_error="return")
    assert [r.source for r in results] == [
        "<array 0>", "<array 1>", "<bytes 2>", "<bytes 3>", "<bytes 4>"]
    assert [type(r) for r in results] == [
        TranscriptionResult, FailedInput, TranscriptionResult, FailedInput, TranscriptionResult]
    # each error names its own input, so that two failing byte strings are told apart
    assert results[1].error.startswith("<array 1>: ") and results[3].error.startswith("<bytes 3>: ")
    with pytest.raises(AudioError, match=r"^<bytes 1>: "):
        model.transcribe([encoded, b"not audio"])


def test_one_model_from_two_threads_equals_sequential(model):
    waves = [_noise(s, k) for k, s in enumerate((0.7, 1.3, 2.1, 0.4))]
    sequential = [model.transcribe(w)[0] for w in waves]
    outputs: dict[int, list] = {}

    def work(k: int) -> None:
        outputs[k] = [model.transcribe(w)[0] for w in waves]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outputs[0] == outputs[1] == sequential


@pytest.mark.parametrize("dtype", ["<i2", ">i2", ">i4", ">f4", ">f8"])
def test_arrays_of_either_byte_order_are_read_alike(model, dtype):
    # np.frombuffer(data, ">i2") (AIFF, network order) was refused as "not audio"
    pcm = (_noise(0.6, 3) * 32767).astype(np.int16)
    native = pcm.astype(np.dtype(dtype).newbyteorder("="))
    if native.dtype.kind == "f":
        native = native / np.float32(32768.0)
    swapped = native.astype(dtype)
    assert swapped.dtype.str == dtype and np.array_equal(swapped, native)
    assert model.transcribe(swapped)[0] == model.transcribe(native)[0]



def test_a_searcher_without_token_times_invents_none_and_refuses_to_join_windows(
    model, monkeypatch
):
    """A searcher without token times (aed_beam) put every token at its window's start, before
    the span the window owns, so all windows but the first were dropped without a word."""
    from asr.types import Hypothesis

    real = model.searcher()
    wave = _noise(2.5, 4)
    timed = model.transcribe(wave)[0]

    def untimed(enc, enc_lens):
        return [[Hypothesis(tokens=h.tokens, score=h.score) for h in nbest]
                for nbest in real(enc, enc_lens)]

    monkeypatch.setattr(model, "searcher", lambda *args, **kwargs: untimed)
    [whole] = model.transcribe(wave)
    # one window: the tokens, with no times invented for them (they were all 0.0, every word
    # 0.0-0.04 s), and each word spans the input, all that is known of where it was said
    assert whole.token_ids == timed.token_ids and whole.text == timed.text != ""
    assert whole.timestamps == () and whole.to_dict()["timestamps"] == []
    assert [w.text for w in whole.words] == [w.text for w in timed.words]
    assert all((w.start, w.end) == (0.0, pytest.approx(2.5)) for w in whole.words)
    assert (whole.segments[0].start, whole.segments[0].end) == (0.0, pytest.approx(2.5))
    with pytest.raises(ValueError, match=r"^<array 0>: .* no token times"):
        model.transcribe(wave, window_seconds=1.0, overlap_seconds=0.2)


@pytest.mark.parametrize(("option", "value"), [("chunk_size", 3.5), ("left_chunks", 1.5),
                                               ("chunk_size", "4"), ("left_chunks", True)])
def test_a_chunking_that_is_not_whole_is_an_error_naming_it(model, option, value):
    # chunk_size 3.5 failed deep in torch.zeros with a TypeError naming no option
    with pytest.raises(ValueError, match=option):
        model.transcribe(_noise(0.5, 0), streaming=True, **{option: value})


def test_an_unknown_on_error_is_refused(model):
    # on_error="rais" returned FailedInput values instead of raising
    with pytest.raises(ValueError, match="on_error"):
        model.transcribe([b"not audio"], on_error="rais")


@pytest.mark.parametrize("streaming", [False, True])
def test_inputs_are_read_group_by_group_each_result_given_before_the_next_group(
        model, monkeypatch, streaming):
    """Every input was read into memory before the first was decoded (a directory of long
    recordings could not fit), and nothing came out before the last was done: inputs are read
    in groups of about GROUP_SECONDS of audio, each group's results given before the next group
    is read, and the results are those of one group."""
    from asr.runtime import offline

    inputs = [_noise(0.7, seed) for seed in range(3)]
    whole = model.transcribe(inputs, streaming=streaming)
    events, load = [], offline.Transcriber.load

    def spy(self, item, sample_rate=None, index=0, progress=None):
        events.append(f"read {index}")
        return load(self, item, sample_rate, index, progress)

    monkeypatch.setattr(offline.Transcriber, "load", spy)
    monkeypatch.setattr(offline, "GROUP_SECONDS", 1.0)  # groups: inputs 0 and 1, then 2
    results = []
    for result in model.transcribe_iter(inputs, streaming=streaming):
        events.append(f"result {len(results)}")
        results.append(result)
    assert events == ["read 0", "read 1", "result 0", "result 1", "read 2", "result 2"]
    assert results == whole


def test_a_bad_window_is_refused_before_any_input_is_read(model, tmp_path):
    # the window was checked after every input had been read and decoded
    with pytest.raises(ValueError, match=r"need 0 <= overlap \(2.0\) < window \(1.0\)"):
        model.transcribe([tmp_path / "missing.wav"], window_seconds=1.0, overlap_seconds=2.0)



@pytest.mark.parametrize("window, overlap", [(float("inf"), 2.0), (30.0, float("inf")),
                                             (float("nan"), 2.0)])
def test_a_window_of_no_finite_length_is_refused_naming_both(model, tmp_path, window, overlap):
    """``--window-seconds inf`` (one window per input, a user might think) failed with
    "OverflowError: cannot convert float infinity to integer", naming no option."""
    with pytest.raises(ValueError, match=r"need 0 <= overlap \(.*\) < window \(.*\) seconds, "
                                         r"both finite"):
        model.transcribe([tmp_path / "missing.wav"], window_seconds=window,
                         overlap_seconds=overlap)

def test_a_generator_of_inputs_is_many_inputs_read_as_it_is_consumed(model, monkeypatch):
    """A generator was taken as one input ('unsupported type generator'): any iterable other
    than one input's own types holds many, and it is pulled group by group, not all at once."""
    from asr.runtime import offline

    inputs = [_noise(0.7, seed) for seed in range(3)]
    pulled = []

    def lazily():
        for index, wave in enumerate(inputs):
            pulled.append(index)
            yield wave

    monkeypatch.setattr(offline, "GROUP_SECONDS", 1.0)  # groups: inputs 0 and 1, then 2
    results = model.transcribe_iter(lazily())
    first = next(results)
    assert pulled == [0, 1]
    assert [first, *results] == model.transcribe(inputs)


@pytest.mark.parametrize("item", [3, {"path": "a.wav"}])
def test_an_input_of_another_type_is_an_error_naming_its_type(model, item):
    with pytest.raises(AudioError, match=f"unsupported type {type(item).__name__}"):
        model.transcribe(item)


def _recorded_bars(monkeypatch) -> list:
    """The progress bars the offline runtime makes from now on, as it makes them."""
    from asr.runtime import offline

    bars = []

    class Recording(offline.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(offline, "tqdm", Recording)
    return bars


def test_the_progress_bar_of_windowed_inputs_ends_at_their_duration(model, monkeypatch):
    # it counted each window's length, so overlaps twice: a long input ran past the total
    bars = _recorded_bars(monkeypatch)
    inputs = [_noise(3.3, 0), _noise(0.6, 1)]
    model.transcribe(inputs, window_seconds=1.0, overlap_seconds=0.4, progress=True)
    [bar] = bars
    assert bar.total == pytest.approx(3.9, abs=0.01)
    assert bar.n == pytest.approx(bar.total, abs=0.01)


@pytest.mark.parametrize("progress", [True, False])
def test_a_file_being_read_shows_its_seconds_read_of_its_length(model, monkeypatch, tmp_path,
                                                                 progress):
    """Reading (decoding and resampling) an hour of 44.1 kHz audio takes minutes, in which no
    bar moved: the file read for over ``READ_BAR_DELAY`` seconds has a bar of its seconds read
    of its length, gone when it is read; none without ``progress`` (nor for an array input,
    which the other progress tests hold)."""
    import soundfile

    from asr import audio
    from asr.runtime import offline

    path = tmp_path / "lecture.wav"
    soundfile.write(path, _noise(3.0, 0), 16000)
    monkeypatch.setattr(offline, "READ_BAR_DELAY", 0.0)
    monkeypatch.setattr(audio, "READ_BLOCK_FRAMES", 4000)
    bars = _recorded_bars(monkeypatch)
    model.transcribe(path, progress=progress)
    reading = [bar for bar in bars if getattr(bar, "desc", None) == f"read {path}"]
    if progress:
        assert len(reading) == 1 and len(bars) == 2
        assert (reading[0].total, reading[0].n, reading[0].leave) == (3.0, 3.0, False)
    else:
        assert reading == [] and all(bar.disable for bar in bars)


def _poison(monkeypatch, model, *waves: np.ndarray) -> None:
    """Makes ``model``'s encoder raise for a batch holding any of ``waves`` (samples at the
    model rate, an input or one window of it), found by its features; other batches decode."""
    from asr.features.fbank import compute_fbank

    runtime = model.runtime
    poisoned = [compute_fbank(w, model.sample_rate, runtime.fbank, runtime.extractor)
                for w in waves]
    encode = runtime.model.encode

    def encode_or_fail(feats, feat_lens):
        for row, n in zip(feats, feat_lens.tolist()):
            if any(p.shape[0] == n and torch.equal(row[:n].cpu(), p.cpu()) for p in poisoned):
                raise RuntimeError("encoder blew up")
        return encode(feats, feat_lens)

    monkeypatch.setattr(runtime.model, "encode", encode_or_fail)


def _alone(model, inputs, indices, **kwargs) -> list[TranscriptionResult]:
    """The results of ``inputs[k]`` for ``k`` in ``indices``, each transcribed alone, named as
    input ``k`` of a batch."""
    return [dataclasses.replace(model.transcribe(inputs[k], **kwargs)[0], source=f"<array {k}>")
            for k in indices]


def test_an_input_whose_decoding_fails_fails_alone(model, monkeypatch):
    """An exception in one input's decoding stopped the whole run (the rest of its batch and
    every later input lost): a batch that raises is decoded input by input, the input that
    fails alone is a FailedInput naming it and why, the others are what they are alone."""
    inputs = [_noise(0.7, 0), _noise(1.3, 1), _noise(0.9, 2), _noise(0.5, 3)]
    alone = _alone(model, inputs, (0, 1, 3))
    _poison(monkeypatch, model, inputs[2])
    results = model.transcribe(inputs, on_error="return")
    assert [type(r) for r in results] == [
        TranscriptionResult, TranscriptionResult, FailedInput, TranscriptionResult]
    assert [results[k] for k in (0, 1, 3)] == alone
    assert results[2] == FailedInput(
        "<array 2>", "<array 2>: decoding failed: RuntimeError: encoder blew up")


def test_a_failed_decode_raises_naming_its_input(model, monkeypatch):
    # the encoder's own error came out, naming no input
    inputs = [_noise(0.7, 0), _noise(0.9, 2), _noise(0.5, 3)]
    _poison(monkeypatch, model, inputs[1])
    with pytest.raises(TranscriptionError,
                       match=r"^<array 1>: decoding failed: RuntimeError: encoder blew up$") as err:
        model.transcribe(inputs)
    assert err.value.source == "<array 1>" and isinstance(err.value.__cause__, RuntimeError)


def test_a_failing_window_of_a_long_input_fails_that_input_alone(model, monkeypatch, caplog):
    """One window that raised lost every input; now the long input fails naming the window,
    and the inputs decoded in its batches (2 windows each) keep their own results."""
    from asr.runtime.offline import plan_windows

    window = {"window_seconds": 1.0, "overlap_seconds": 0.4}
    long, short = _noise(3.3, 5), [_noise(0.9, 6), _noise(1.0, 7), _noise(0.6, 8)]
    inputs = [short[0], long, *short[1:]]
    alone = _alone(model, inputs, (0, 2, 3), **window)
    windows = plan_windows(1, long.shape[0], model.sample_rate, 1.0, 0.4, model.window_grid,
                           model.window_context)
    assert len(windows) >= 3
    bad = windows[1]
    _poison(monkeypatch, model, long[bad.start: bad.end])
    bars = _recorded_bars(monkeypatch)
    results = model.transcribe(inputs, batch_size=2, on_error="return", progress=True, **window)
    [bar] = bars  # the failed input's undecoded seconds count: the bar ends at its total
    assert bar.n == pytest.approx(bar.total, abs=0.01) and bar.total == pytest.approx(5.8, abs=0.01)
    assert [type(r) for r in results] == [
        TranscriptionResult, FailedInput, TranscriptionResult, TranscriptionResult]
    assert [results[k] for k in (0, 2, 3)] == alone
    span = f"{bad.start / 16000:.2f}-{bad.end / 16000:.2f} s"
    assert results[1].error == (f"<array 1>: decoding failed (its window {span}): "
                                "RuntimeError: encoder blew up")
    assert "decoding a batch of 2 windows failed" in caplog.text  # shared with a healthy one


def test_a_stream_whose_decode_fails_fails_its_input_alone(model, monkeypatch):
    """Streaming: a decode step that raised for one stream stopped the run; each stream of the
    failed step is decoded alone, and only the one that fails alone fails its input."""
    from asr.runtime.streaming import StreamingRecognizer

    inputs = [_noise(0.7, 0), _noise(1.3, 1), _noise(0.9, 2), _noise(0.5, 3)]
    alone = _alone(model, inputs, (0, 1, 3), streaming=True)
    made, new_stream, step = [], StreamingRecognizer.new_stream, StreamingRecognizer._step

    def recorded(self, *args, **kwargs):
        made.append(new_stream(self, *args, **kwargs))
        return made[-1]

    def step_or_fail(self, batch):
        if any(stream is made[2] for stream, _ in batch):  # the third input's stream
            raise RuntimeError("search lost its hypotheses")
        return step(self, batch)

    monkeypatch.setattr(StreamingRecognizer, "new_stream", recorded)
    monkeypatch.setattr(StreamingRecognizer, "_step", step_or_fail)
    results = model.transcribe(inputs, streaming=True, on_error="return")
    assert [type(r) for r in results] == [
        TranscriptionResult, TranscriptionResult, FailedInput, TranscriptionResult]
    assert [results[k] for k in (0, 1, 3)] == alone
    assert results[2].error == ("<array 2>: decoding failed: RuntimeError: search lost its "
                                "hypotheses")
    made.clear()
    with pytest.raises(TranscriptionError, match=r"^<array 2>: decoding failed: "):
        model.transcribe(inputs, streaming=True)


def test_a_binary_file_object_is_one_input_named_by_its_path(model, tmp_path):
    """A file object is iterable (over its lines), so ``transcribe(open(path, "rb"))`` decoded
    each line as encoded bytes: "<bytes 0>: cannot decode audio", one failure per line."""
    import io

    import soundfile

    path = tmp_path / "speech.wav"
    soundfile.write(path, _noise(0.5, 0), 16000)
    [expected] = model.transcribe(path)
    with open(path, "rb") as stream:
        [result] = model.transcribe(stream)
    assert result == dataclasses.replace(expected, source=str(path))
    buffers = [io.BytesIO(path.read_bytes()), io.BytesIO(b"not audio")]
    ok, failed = model.transcribe(buffers, on_error="return")
    assert ok == dataclasses.replace(expected, source="<file 0>")
    assert isinstance(failed, FailedInput) and failed.source == "<file 1>"
    assert failed.error.startswith("<file 1>: cannot decode audio")
    [as_view] = model.transcribe(memoryview(path.read_bytes()))
    assert as_view == dataclasses.replace(expected, source="<bytes 0>")


def test_a_text_mode_or_closed_file_object_is_an_error_naming_it(model, tmp_path):
    path = tmp_path / "speech.wav"
    path.write_bytes(b"RIFF")
    with open(path) as text:
        [failed] = model.transcribe(text, on_error="return")
    assert failed.error == f"{path}: a file opened in text mode: open it in binary mode ('rb')"
    with open(path, "rb") as closed:
        pass
    message = rf"^{re.escape(str(path))}: cannot read the file object: .*closed"
    with pytest.raises(AudioError, match=message):
        model.transcribe(closed)


def test_a_file_object_that_is_no_iobase_is_one_input_named_by_its_path(model, tmp_path):
    """``tempfile.NamedTemporaryFile`` gives a wrapper that reads and iterates like a binary
    file but is no ``io.IOBase``: ``transcribe`` took each of its lines for an input (hundreds
    of "<bytes i>" results for one wav). Anything with a ``read`` method is one file object."""
    import tempfile

    import soundfile

    path = tmp_path / "speech.wav"
    soundfile.write(path, _noise(0.5, 0), 16000)
    [expected] = model.transcribe(path)
    with tempfile.NamedTemporaryFile(suffix=".wav", dir=tmp_path) as stream:
        stream.write(path.read_bytes())
        stream.seek(0)
        [result] = model.transcribe(stream)
    assert result == dataclasses.replace(expected, source=stream.name)


def test_streaming_without_endpoints_is_one_segment_of_the_offline_search(model):
    """Streaming split every input at its endpoints (rule 3: each 20 s), searching each segment
    afresh, and gave no way to keep one search: a beam search streamed differed from offline.
    ``endpoint=EndpointConfig(enabled=False)`` streams one segment, the offline transcript."""
    from asr.runtime.endpoint import EndpointConfig

    wave = _noise(22.0, 5)
    for searcher in ("transducer_beam", "transducer_greedy"):
        offline = model.transcribe(wave, searcher=searcher)[0]
        split = model.transcribe(wave, searcher=searcher, streaming=True)[0]
        whole = model.transcribe(wave, searcher=searcher, streaming=True,
                                 endpoint=EndpointConfig(enabled=False))[0]
        assert len(split.segments) >= 2 and len(whole.segments) == 1, searcher
        assert len(offline.token_ids) > 20, searcher
        assert whole.token_ids == offline.token_ids, searcher
        assert whole.timestamps == pytest.approx(offline.timestamps), searcher
    with pytest.raises(ValueError, match="streaming=True"):
        model.transcribe(wave, endpoint=EndpointConfig(enabled=False))
