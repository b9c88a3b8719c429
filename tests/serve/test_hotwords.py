"""Per-stream hotwords over the websocket protocol: concurrent connections each get their own
biasing; malformed or unusable hotwords get an error and a close code, never a crash."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from test_server import _misbehave, _run

from asr.decoding.registry import BIASING_STREAMING_SEARCHERS
from asr.serve.client import build_parser, stream_samples
from asr.serve.client import main as client_main


@pytest.fixture(scope="module")
def hello(tiny) -> np.ndarray:
    from asr.audio import load_audio

    assert tiny.texts[0] == "HELLO WORLD"
    return load_audio(tiny.wavs[0], 16000)


#: The search of :func:`asr.testing.packages.constant_ctc_package` under which its prefix beam
#: hears whole copies of the phrases boosted by more than 6 per token, and otherwise nothing.
CONSTANT_SEARCH = {"beam_size": 20, "hotwords_unboosted_prefix": 0, "hotwords_score": 8.0}


@pytest.fixture(scope="module")
def constant_ctc(tmp_path_factory):
    from asr.testing.packages import constant_ctc_package

    return constant_ctc_package(tmp_path_factory.mktemp("constant_ctc"))


@pytest.fixture(scope="module")
def beam_server(constant_ctc):
    """The hand-built CTC model (what it hears is known) served with its prefix beam search
    (which biases), small limits."""
    import asr
    from asr.serve.config import ServerConfig
    from asr.serve.server import BackgroundServer

    recognizer = asr.load_model(constant_ctc, search=CONSTANT_SEARCH).streaming_recognizer(
        "ctc_prefix_beam")
    config = ServerConfig(port=0, idle_timeout=5.0, max_hotwords=3, max_hotword_chars=20,
                          max_hotwords_bytes=50)
    with BackgroundServer(recognizer, config) as background:
        yield background


def _alone(package, wave: np.ndarray, hotwords) -> str:
    """What the served recognizer's settings hear with ``hotwords`` in one stream of the API."""
    import asr

    model = asr.load_model(package, search=CONSTANT_SEARCH)
    [result] = model.transcribe([wave], searcher="ctc_prefix_beam", streaming=True,
                                hotwords=hotwords)
    return result.text


def test_concurrent_connections_get_their_own_hotwords(constant_ctc, beam_server, wait_until):
    """Four connections at once, batched by the server: two biased toward different phrases
    (each hears its own), one with an empty list and one without hotwords (both plain). The
    model hears nothing but the phrases its stream is boosted toward, so each connection's
    list shows in its text (a trained model's pull toward a phrase depended on weights trained
    on the machine)."""
    wave = (0.1 * np.random.default_rng(0).standard_normal(9600)).astype(np.float32)  # 0.6 s
    lists = [["HELLO WORD"], "WORLDS", [], None]

    async def main():
        return await asyncio.gather(*(
            stream_samples(beam_server.url, wave, 16000, chunk_seconds=c, hotwords=hotwords,
                           hotwords_score=8.0 if hotwords else None, timeout=30)
            for hotwords, c in zip(lists, [0.1, 0.05, 0.2, 0.1])
        ))

    results = _run(main())
    assert [r.close_code for r in results] == [1000] * 4, [r.errors for r in results]
    texts = [r.text for r in results]
    assert texts[2:] == ["", ""] == [_alone(constant_ctc, wave, None)] * 2
    # whole copies of each stream's own phrase, as many as the frames hold, as when alone
    assert texts[0] and not texts[0].replace("HELLO WORD", "")
    assert texts[1] and not texts[1].replace("WORLDS", "")
    assert texts[:2] == [_alone(constant_ctc, wave, h) for h in lists[:2]]
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


@pytest.mark.parametrize("score", ["inf", "1e9"])
def test_the_client_refuses_a_boost_every_other_hotwords_score_option_refuses(score, capsys):
    """The client's --hotwords-score was a plain float: inf went out as the JSON ``Infinity``
    and 1e9 as a number, each refused only by the server, after connecting."""
    with pytest.raises(SystemExit) as exit_info:
        client_main(["--hotwords", "HELLO", "--hotwords-score", score, "speech.wav"])
    assert exit_info.value.code == 2
    assert ("argument --hotwords-score: a per-token boost must be in [-100, 100], "
            f"got {score!r}") in capsys.readouterr().err


def test_the_client_help_names_every_server_that_biases(monkeypatch):
    """``--hotwords`` said the server must run ``asr serve --searcher transducer_beam``: not
    ``tdt_beam`` or ``ctc_prefix_beam``, and untrue with ``--engine sherpa-onnx``, which
    refuses a client's hotwords (with ``--searcher beam`` it biases only toward the server's
    own ``search.hotwords_file``)."""
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: no word is wrapped apart
    help_text = build_parser().format_help()
    # the option's entry: its line, and the next one where argparse puts a long option's help
    lines = help_text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("--hotwords "))
    line = " ".join(lines[at:at + 2])
    assert all(name in line for name in BIASING_STREAMING_SEARCHERS)
    assert "--engine sherpa-onnx refuses a client's hotwords" in line


def test_hotwords_to_a_server_that_cannot_bias(server, wait_until):
    """The default servers run a greedy search (ours) or sherpa-onnx: a clear error, which
    names what biases. It told a sherpa-onnx server's client of a server started with
    --searcher transducer_beam, which sherpa-onnx takes only as its own beam search, without a
    client's hotwords."""
    close_code, received = _run(_misbehave(server.url, [json.dumps({"hotwords": ["HELLO"]})]), 20)
    error = received[-1]["error"]
    assert close_code == 1008 and "does not take hotwords" in error
    assert "PyTorch engine and --searcher " + " / ".join(BIASING_STREAMING_SEARCHERS) in error
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


def test_the_client_reads_a_hotwords_file_as_asr_transcribe_does(constant_ctc, beam_server,
                                                                  tmp_path, capsys):
    """``--hotwords FILE`` (the file ``asr transcribe --hotwords`` and sherpa-onnx read) sent
    the file's path as a phrase, which the server refused ("characters the model's tokenizer
    does not know: '/.'"). Its lines are the phrases now: each stream hears what the API hears
    with the same file; a ``.txt`` name that is no file is an error before any connection."""
    import soundfile

    wave = (0.1 * np.random.default_rng(1).standard_normal(9600)).astype(np.float32)
    audio = [tmp_path / "a.wav", tmp_path / "b.wav"]
    for path in audio:
        soundfile.write(path, wave, 16000, subtype="FLOAT")
    words = tmp_path / "words.txt"
    words.write_text("WORLDS :8\n\n")
    argv = [*map(str, audio), "--server", beam_server.url, "--hotwords", str(words)]
    assert client_main(argv) == 0, capsys.readouterr().err
    expected = _alone(constant_ctc, wave, str(words))
    assert expected and not expected.replace("WORLDS", "")  # copies of the file's phrase
    assert capsys.readouterr().out.splitlines() == [f"{path}\t{expected}" for path in audio]

    missing = tmp_path / "missing.txt"
    argv = [str(audio[0]), "--server", beam_server.url, "--hotwords", str(missing)]
    assert client_main(argv) == 2
    assert f"--hotwords: hotwords file {missing} does not exist" in capsys.readouterr().err
