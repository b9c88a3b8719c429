"""Per-stream hotwords over the websocket protocol: concurrent connections each get their own
biasing; malformed or unusable hotwords get an error and a close code, never a crash."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from test_server import _misbehave, _run

from asr.serve.client import stream_samples


@pytest.fixture(scope="module")
def hello(tiny) -> np.ndarray:
    from asr.audio import load_audio

    assert tiny.texts[0] == "HELLO WORLD"
    return load_audio(tiny.wavs[0], 16000)


@pytest.fixture(scope="module")
def beam_server(tiny):
    """The tiny CTC model served with its prefix beam search (which biases), small limits."""
    import asr
    from asr.serve.config import ServerConfig
    from asr.serve.server import BackgroundServer

    recognizer = asr.load_model(tiny.package_dir, search={"beam_size": 8}).streaming_recognizer(
        "ctc_prefix_beam")
    config = ServerConfig(port=0, idle_timeout=5.0, max_hotwords=3, max_hotword_chars=20,
                          max_hotwords_bytes=50)
    with BackgroundServer(recognizer, config) as background:
        yield background


def _alone(tiny, hello: np.ndarray, hotwords) -> str:
    """What the served recognizer's settings hear with ``hotwords`` in one stream of the API."""
    import asr

    model = asr.load_model(tiny.package_dir, search={"beam_size": 8, "hotwords_score": 3.0})
    [result] = model.transcribe([hello], searcher="ctc_prefix_beam", streaming=True,
                                hotwords=hotwords)
    return result.text


def test_concurrent_connections_get_their_own_hotwords(tiny, beam_server, hello, wait_until):
    """Four connections at once, batched by the server: two biased toward different phrases
    (each hears its own), one with an empty list and one without hotwords (both plain)."""
    lists = [["HELLO WORD"], "WORLDS", [], None]

    async def main():
        return await asyncio.gather(*(
            stream_samples(beam_server.url, hello, 16000, chunk_seconds=c, hotwords=hotwords,
                           hotwords_score=3.0 if hotwords else None, timeout=30)
            for hotwords, c in zip(lists, [0.1, 0.05, 0.2, 0.1])
        ))

    results = _run(main())
    assert [r.close_code for r in results] == [1000] * 4, [r.errors for r in results]
    texts = [r.text for r in results]
    plain = _alone(tiny, hello, None)  # what the tiny model hears depends on its training
    assert plain and texts[2:] == [plain, plain]
    # a large enough boost pulls the tiny model toward each phrase, each stream as when alone
    assert "HELLO WORD" in texts[0] and "WORLDS" in texts[1] and len(set(texts)) == 3
    assert texts[:2] == [_alone(tiny, hello, h) for h in lists[:2]]
    assert beam_server.server.stats()["max_batch"] > 1
    assert wait_until(lambda: beam_server.server.num_sessions == 0, 5.0)


AUDIO = np.zeros(1600, "<f4").tobytes()
BAD_HOTWORDS = {
    "unknown character": ([json.dumps({"hotwords": ["HELLO", "WORLD\u00c9"]})], 1007,
                          "does not know: '\u00c9'"),
    "lower case": ([json.dumps({"hotwords": "hello"})], 1007, "check the case"),
    "wrong type": ([json.dumps({"hotwords": 3})], 1007, "list of strings"),
    "bad score": ([json.dumps({"hotwords": ["HELLO"], "hotwords_score": "high"})], 1007,
                  "finite number"),
    # its float32 scores overflowed: 'internal decoding error' for every stream of the batch
    "huge score": ([json.dumps({"hotwords": ["HELLO"], "hotwords_score": 1e308})], 1007,
                   "hotwords_score 1e+308: a per-token boost must be in [-100, 100]"),
    "too many": ([json.dumps({"hotwords": ["A", "B", "D", "E"]})], 1008, "4 phrases, at most 3"),
    "too long": ([json.dumps({"hotwords": ["HELLO WORLD HELLO WORLD"]})], 1008,
                 "23 characters, at most 20"),
    "too big": ([json.dumps({"hotwords": "HELLO WORLD;" * 5})], 1008, "55 bytes, at most 50"),
    "twice": ([json.dumps({"hotwords": ["HELLO"]}), json.dumps({"hotwords": ["WORLD"]})], 1008,
              "once per connection"),
    "after audio": ([AUDIO, json.dumps({"hotwords": ["HELLO"]})], 1008,
                    "before the first audio"),
}


@pytest.mark.parametrize("name", list(BAD_HOTWORDS))
def test_bad_hotwords_are_rejected(beam_server, name, wait_until):
    messages, code, error = BAD_HOTWORDS[name]
    close_code, received = _run(_misbehave(beam_server.url, [*messages, AUDIO, "Done"]), 20)
    assert close_code == code and error in received[-1]["error"], received
    assert wait_until(lambda: beam_server.server.num_sessions == 0, 5.0)


def test_hotwords_to_a_server_that_cannot_bias(server, wait_until):
    """The default servers run a greedy search (ours) or sherpa-onnx: a clear error."""
    close_code, received = _run(_misbehave(server.url, [json.dumps({"hotwords": ["HELLO"]})]), 20)
    assert close_code == 1008 and "does not take hotwords" in received[-1]["error"]
    assert wait_until(lambda: server.server.num_sessions == 0, 5.0)


def test_the_recognizer_is_called_from_the_decode_thread_only(tiny, hello):
    """Every recognizer call of a session, its new_stream included (a transducer's start state
    runs the model), happens in the engine's worker thread; only the hotword graph (tokenizer
    alone) is built in another thread."""
    import threading

    import asr
    from asr.serve.config import ServerConfig
    from asr.serve.server import BackgroundServer

    recognizer = asr.load_model(tiny.package_dir).streaming_recognizer("ctc_prefix_beam")
    calls: list[tuple[str, str]] = []

    class Recording:
        def __getattr__(self, name):
            value = getattr(recognizer, name)
            if not callable(value):
                return value

            def call(*args, **kwargs):
                calls.append((name, threading.current_thread().name))
                return value(*args, **kwargs)

            return call

    async def two_clients(url):
        return await asyncio.gather(*(stream_samples(url, hello, 16000, hotwords=words, timeout=30)
                                      for words in (["HELLO WORD"], None)))

    with BackgroundServer(Recording(), ServerConfig(port=0)) as background:
        results = _run(two_clients(background.url), 60)
    assert [r.close_code for r in results] == [1000, 1000]
    threads = {name: {t for n, t in calls if n == name} for name, _ in calls}
    assert threads.pop("hotword_graph") != threads["new_stream"]
    assert {"new_stream", "decode", "accept_waveform", "result"} <= set(threads)
    assert set.union(*threads.values()) == {"asr-decode_0"}, threads
