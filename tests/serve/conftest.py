"""Fixtures of the server tests: a tiny trained model (shared with tests/cli), speech files, and
a server on 127.0.0.1 in a background thread.

Every test that takes ``recognizer``, ``reference_texts`` or ``serve_args`` runs once per engine:
our PyTorch runtime (the tiny CTC model) and sherpa-onnx (the tiny transducer exported with
``asr export-onnx --streaming``, ``asr serve --engine sherpa-onnx``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr.testing.tiny import espeak_available


@dataclass(frozen=True)
class Speech:
    """A test input: samples at their own rate, the file they were written to, and the words."""

    path: Path
    samples: np.ndarray
    sample_rate: int
    text: str


@pytest.fixture(scope="session")
def tiny(tiny_models_dir):
    if not espeak_available():
        pytest.skip("needs espeak-ng to synthesize speech")
    from asr.testing.packages import trained_tiny_package

    return trained_tiny_package(tiny_models_dir)


@pytest.fixture(scope="session")
def speech(tiny, tmp_path_factory) -> list[Speech]:
    """8 inputs: the training sentences at their espeak rate (22.05 kHz) and at 16 kHz, with
    silences around them; the last one holds two sentences 2 s apart (two segments)."""
    from asr.audio import load_audio, resample

    out = tmp_path_factory.mktemp("serve_audio")
    items = []
    for i, (wav, text) in enumerate(zip(tiny.wavs, tiny.texts)):
        native, rate = soundfile.read(wav, dtype="float32")
        for target in (rate, 16000):
            samples = native if target == rate else resample(native, rate, target)
            pad = np.zeros(int(0.3 * target), np.float32)
            samples = np.concatenate([pad, samples, pad])
            path = out / f"utt{i}_{target}.wav"
            soundfile.write(path, samples, target, subtype="FLOAT")
            items.append(Speech(path, samples, target, text))
    first, second = load_audio(tiny.wavs[0], 16000), load_audio(tiny.wavs[3], 16000)
    gap = np.zeros(32000, np.float32)
    both = np.concatenate([gap[:4800], first, gap, second, gap[:4800]])
    path = out / "two_sentences_16000.wav"
    soundfile.write(path, both, 16000, subtype="FLOAT")
    items[-1] = Speech(path, both, 16000, f"{tiny.texts[0]} {tiny.texts[3]}")
    return items


ENGINES = ("pytorch", "sherpa-onnx")


@pytest.fixture(scope="session", params=ENGINES)
def engine(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def sherpa_dir(tiny_models_dir, run_tmp_path, tiny) -> Path:
    """The tiny transducer (the same sentences as ``tiny``) exported for sherpa-onnx, once per
    run (:func:`asr.testing.once.made_once`)."""
    from asr.export import export_onnx
    from asr.testing.once import made_once
    from asr.testing.packages import trained_tiny_package

    def make(root: Path) -> str:
        transducer = trained_tiny_package(tiny_models_dir, head="transducer")
        export_onnx(transducer.package_dir, root / "onnx-streaming", streaming=True)
        return str(root / "onnx-streaming")

    return Path(made_once(run_tmp_path / "serve_onnx", make))


@pytest.fixture(scope="session")
def make_recognizer(engine, tiny, request):
    """A function making a new recognizer of the engine (each has its own streams)."""
    if engine == "pytorch":
        import asr

        return lambda: asr.load_model(tiny.package_dir).streaming_recognizer()
    from asr.export.sherpa_streaming import load_streaming_recognizer

    directory = request.getfixturevalue("sherpa_dir")
    return lambda: load_streaming_recognizer(directory)


@pytest.fixture(scope="session")
def serve_args(engine, tiny, request) -> list[str]:
    """``asr serve`` arguments of the engine's model: ``[model, --engine ...]``."""
    if engine == "pytorch":
        return [str(tiny.package_dir)]
    return [str(request.getfixturevalue("sherpa_dir")), "--engine", "sherpa-onnx"]


@pytest.fixture(scope="session")
def recognizer(make_recognizer):
    return make_recognizer()


def offline_streaming_text(recognizer, samples: np.ndarray, sample_rate: int) -> str:
    """The transcript of StreamingRecognizer fed the whole input at once, endpointing as the
    server does."""
    stream = recognizer.new_stream()
    recognizer.accept_waveform(stream, samples, sample_rate)
    recognizer.input_finished(stream)
    for _ in range(100_000):
        if not recognizer.is_ready(stream):
            break
        recognizer.decode([stream])
        if not stream.done and recognizer.result(stream).is_final:
            recognizer.reset(stream)
    texts = [s.text for s in stream.finished_segments] + [recognizer.result(stream).text]
    return " ".join(t for t in texts if t)


@pytest.fixture(scope="session")
def reference_texts(make_recognizer, speech) -> list[str]:
    """Offline streaming transcripts of ``speech`` (with its own recognizer instance)."""
    recognizer = make_recognizer()
    return [offline_streaming_text(recognizer, s.samples, s.sample_rate) for s in speech]


@pytest.fixture(scope="session")
def offline_text(make_recognizer):
    """``offline_text(samples, rate)``: :func:`offline_streaming_text` with a recognizer of its
    own."""
    recognizer = make_recognizer()
    return lambda samples, sample_rate: offline_streaming_text(recognizer, samples, sample_rate)


def _wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Polls ``predicate`` until it is true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@pytest.fixture(scope="session")
def wait_until():
    """``wait_until(predicate, timeout)``: polls until true, at most ``timeout`` seconds."""
    return _wait_until


@pytest.fixture(scope="module")
def server(recognizer):
    """A server with small limits: 64 KiB messages, 1.5 s idle timeout."""
    from asr.serve.config import ServerConfig
    from asr.serve.server import BackgroundServer

    config = ServerConfig(
        port=0,
        max_connections=24,
        max_message_bytes=1 << 16,
        idle_timeout=1.5,
        max_buffered_seconds=2.0,
        shutdown_timeout=5.0,
    )
    with BackgroundServer(recognizer, config) as background:
        yield background
