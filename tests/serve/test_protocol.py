"""Protocol parsing, config checks, static site and decode-engine bookkeeping (no network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request

from asr.serve.config import HotwordLimits, ServerConfig
from asr.serve.protocol import (
    CLOSE_INVALID_DATA,
    CLOSE_UNSUPPORTED,
    DONE,
    ProtocolError,
    StreamSettings,
    check_rate_ratio,
    parse_audio,
    parse_text,
    result_message,
    sample_rate_from_path,
)
from asr.serve.web import load_static_site


def test_parse_audio_round_trip():
    samples = np.linspace(-1, 1, 7, dtype=np.float32)
    np.testing.assert_array_equal(parse_audio(samples.astype("<f4").tobytes()), samples)
    assert parse_audio(b"").shape == (0,)


@pytest.mark.parametrize("data", [b"\x00" * 5, b"\x00" * 3])
def test_parse_audio_odd_bytes(data):
    with pytest.raises(ProtocolError, match=f"{len(data)} bytes") as err:
        parse_audio(data)
    assert err.value.code == CLOSE_INVALID_DATA


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_parse_audio_non_finite(bad):
    with pytest.raises(ProtocolError, match="NaN or infinite") as err:
        parse_audio(np.array([0.1, bad, 0.2], "<f4").tobytes())
    assert err.value.code == CLOSE_INVALID_DATA


def test_parse_audio_names_the_format_that_16_bit_pcm_breaks():
    """16-bit PCM (what WeNet's websocket protocol sends) read as float32: a negative sample in
    the high half of a float is NaN, infinite or huge; the error said only 'NaN or infinite'."""
    pcm = (np.sin(np.arange(1600) / 5.0) * 3000).astype("<i2")
    with pytest.raises(ProtocolError, match=r"expected float32 samples in \[-1, 1\] \(16-bit PCM"):
        parse_audio(pcm.tobytes())


def test_parse_text():
    assert parse_text(DONE) == DONE
    assert parse_text('{"sample_rate": 8000}') == StreamSettings(8000)
    assert parse_text('{"sample_rate": 44100.0}') == StreamSettings(44100)


@pytest.mark.parametrize(
    "text, match",
    [
        ("done", "expected 'Done'"),
        ("\x00\xff garbage", "expected 'Done'"),
        ("[1, 2]", "only JSON message"),
        ('{"sample_rate": 8000, "x": 1}', "only JSON message"),
        ('{"sample_rate": "fast"}', "integer"),
        ('{"sample_rate": 100}', r"\[4000, 192000\]"),
        ('{"sample_rate": 16000.5}', "integer"),
        ('{"sample_rate": true}', "integer"),
        ('{"sample_rate": NaN}', "integer"),
        # each raised past the parser: a traceback in the server log, close 1011, no error sent
        ('{"sample_rate": 1' + "0" * 400 + "}",
         r"integer, got 1000000000000000000000000000000000000000\.\.\.$"),
        ("[" * 5000 + "]" * 5000, r"text message '\[\[\[.*\.\.\.': expected 'Done'"),
    ],
)
def test_parse_text_rejects(text, match):
    with pytest.raises(ProtocolError, match=match) as err:
        parse_text(text)
    assert err.value.code in (CLOSE_UNSUPPORTED, 1008)


def test_parse_text_stream_settings_with_hotwords():
    """A list of phrases, or one string of phrases split at ';' or '/'; blank ones dropped,
    spaces normalised; beside the sample rate and the boost."""
    assert parse_text('{"hotwords": ["JOHN  SMITH", " ", "ACME :3"]}') == StreamSettings(
        None, ("JOHN SMITH", "ACME :3"))
    assert parse_text(
        '{"hotwords": "A B;C/D", "hotwords_score": 2, "sample_rate": 8000}'
    ) == StreamSettings(8000, ("A B", "C", "D"), 2.0)
    assert parse_text('{"hotwords": []}') == StreamSettings(None, ())


@pytest.mark.parametrize(
    "text, code, match",
    [
        ('{"hotwords": 5}', CLOSE_INVALID_DATA, "list of strings"),
        ('{"hotwords": ["A", 3]}', CLOSE_INVALID_DATA, "list of strings"),
        ('{"hotwords": {"A": 1}}', CLOSE_INVALID_DATA, "list of strings"),
        ('{"hotwords": ["A\\u0000B"]}', CLOSE_INVALID_DATA, "control characters"),
        ('{"hotwords_score": "big"}', CLOSE_INVALID_DATA, "finite number"),
        ('{"hotwords_score": true}', CLOSE_INVALID_DATA, "finite number"),
        ('{"hotwords_score": NaN}', CLOSE_INVALID_DATA, "finite number"),
        ('{"hotwords_score": 1' + "0" * 400 + "}", CLOSE_INVALID_DATA, "finite number"),
        ("{}", CLOSE_UNSUPPORTED, "only JSON message"),
        ('{"hotwords": ["A", "B", "C"]}', 1008, "3 phrases, at most 2"),
        ('{"hotwords": ["ABCDEF"]}', 1008, "6 characters, at most 5"),
        ('{"hotwords": "AB;AB;AB;AB;AB;AB;AB;AB;AB;AB;AB"}', 1008, "bytes, at most 20"),
    ],
)
def test_parse_text_rejects_bad_hotwords(text, code, match):
    with pytest.raises(ProtocolError, match=match) as err:
        parse_text(text, limits=HotwordLimits(max_hotwords=2, max_hotword_chars=5,
                                              max_hotwords_bytes=20))
    assert err.value.code == code


def test_sample_rate_from_path():
    assert sample_rate_from_path("/") is None
    assert sample_rate_from_path("/?sample_rate=8000") == 8000
    for bad in ("/?sample_rate=abc", "/?sample_rate=1", "/?sample_rate=8000&sample_rate=16000"):
        with pytest.raises(ProtocolError, match="sample_rate"):
            sample_rate_from_path(bad)


def test_check_rate_ratio_bounds_the_resampling_filter():
    """Every common rate passes; a rate whose ratio to the model's reduces to large terms (its
    resampling filter would take seconds and hundreds of MB to build) is refused by name."""
    for rate in (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 96000, 192000):
        assert check_rate_ratio(rate, 16000, "query") == rate
    assert check_rate_ratio(11025, 8000, "query") == 11025
    for rate in (4001, 7919, 12345, 191999):
        with pytest.raises(ProtocolError, match=f"query: sample_rate {rate} Hz"):
            check_rate_ratio(rate, 16000, "query")


def test_result_message():
    class Result:
        def to_json(self):
            return {
                "text": "HI",
                "tokens": ["H", "I"],
                "timestamps": [0.0, 0.04],
                "segment": 0,
                "is_final": False,
            }

    data = json.loads(result_message(Result(), 1.23456))
    assert data == {
        "text": "HI",
        "tokens": ["H", "I"],
        "timestamps": [0.0, 0.04],
        "segment": 0,
        "is_final": False,
        "is_eof": False,
        "audio_end": 1.235,
    }
    assert json.loads(result_message(Result(), 2.0, is_eof=True))["is_eof"] is True


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"port": 70000}, "port"),
        # as the log's URL writes it: 'cannot serve on [[::1]]:6006: Name or service not
        # known', after a warning that the server was reachable from the network
        ({"host": "[::1]"}, r"host \[::1\]: give the address without brackets \(::1\)"),
        ({"max_connections": 0}, "max_connections"),
        ({"idle_timeout": -1}, "idle_timeout"),
        # NaN passed '<= 0': every client hung (the reader waits for a backlog below NaN)
        ({"max_buffered_seconds": float("nan")}, "max_buffered_seconds must be > 0, got nan"),
        ({"idle_timeout": float("nan")}, "idle_timeout must be > 0, got nan"),
        ({"shutdown_timeout": float("nan")}, "shutdown_timeout must be > 0, got nan"),
        ({"max_session_seconds": float("nan")}, "max_session_seconds must be >= 0, got nan"),
        ({"max_message_bytes": 2}, "max_message_bytes"),
        ({"min_sample_rate": 16000, "max_sample_rate": 8000}, "max_sample_rate"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ServerConfig(**kwargs)


def _get(site, path):
    return site.respond(Request(path, Headers()))


def test_static_site_serves_fixed_files_only():
    site = load_static_site(lambda: {"sessions": 0})
    page = _get(site, "/?autostart=1")
    assert page.status_code == 200 and b'src="app.js"' in page.body
    assert page.headers["Content-Type"].startswith("text/html")
    assert b"registerProcessor" in _get(site, "/recorder-worklet.js").body
    assert b"audioWorklet" in _get(site, "/app.js").body
    assert json.loads(_get(site, "/stats").body) == {"sessions": 0}
    for path in (
        "/../setup.cfg",
        "/static/../../setup.cfg",
        "/%2e%2e/setup.cfg",
        "/etc/passwd",
        "//etc/passwd",
        "/static/index.html",
        "/index.html/..",
        "/config.py",
    ):
        response = _get(site, path)
        assert response.status_code == 404, path
        assert response.body == b"not found\n"


def test_engine_backpressure_and_outbox(recognizer):
    """The reader pauses above max_buffered_seconds; unsent partials are coalesced."""
    from asr.serve.engine import DecodeEngine, _Output

    engine = DecodeEngine(recognizer, max_buffered_seconds=1.0, max_pending_messages=3)
    session = engine.open_session(16000)
    engine.push_audio(session, np.zeros(8000, np.float32))
    assert session.drained.is_set()
    engine.push_audio(session, np.zeros(8000, np.float32))
    assert not session.drained.is_set()  # 1.0 s waiting: stop reading
    work = engine._collect()
    assert session.pending_samples == 0 and len(work[0].chunks) == 2
    outputs, progressed = engine._step(work)
    assert progressed and outputs
    engine._dispatch(work, outputs)
    assert session.drained.is_set()
    partial = _Output(session, "p", False, False)
    for _ in range(5):
        engine._dispatch([], [partial])
    assert len(session.outbox) == 1  # partials supersede each other
    for _ in range(4):
        engine._dispatch([], [_Output(session, "f", True, False)])
    assert session.error is not None and "unread" in str(session.error)
    engine.close_session(session)
    assert engine.num_sessions == 0
    engine._executor.shutdown()


def test_engine_resumes_a_reader_whose_leftover_is_less_than_a_chunk(recognizer):
    """With max_buffered_seconds below one chunk, the audio left after the decoder caught up
    (less than a chunk: it needs more audio) must not keep the reader paused: it did, and the
    stream hung with nobody to send the audio that would fill the chunk."""
    from asr.serve.engine import DecodeEngine

    engine = DecodeEngine(recognizer, max_buffered_seconds=0.05)
    rate = recognizer.sample_rate
    session = engine.open_session(rate)
    engine.push_audio(session, np.zeros(int(1.07 * rate), np.float32))  # not whole chunks
    assert not session.drained.is_set()
    for _ in range(1000):  # the decode loop: steps while any stream makes progress
        work = engine._collect()
        outputs, progressed = engine._step(work)
        engine._dispatch(work, outputs)
        if not progressed:
            break
    assert session.error is None and not recognizer.is_ready(session.stream)
    assert recognizer.pending_seconds(session.stream) > 0  # a part of a chunk waits
    assert session.drained.is_set()  # ... for audio that the reader may now read
    engine.close_session(session)
    engine._executor.shutdown()


def test_client_settings_message_round_trips_through_the_parser():
    from asr.serve.client import build_parser, settings_message

    assert settings_message(16000) is None
    message = settings_message(8000, "JOHN SMITH;ACME :3", 2.5)
    assert parse_text(message) == StreamSettings(8000, ("JOHN SMITH", "ACME :3"), 2.5)
    assert parse_text(settings_message(16000, ["A B"])) == StreamSettings(None, ("A B",))
    args = build_parser().parse_args(["x.wav", "--hotwords", "A;B", "--hotwords-score", "2"])
    assert (args.hotwords, args.hotwords_score) == ("A;B", 2.0)


def test_the_microphone_client_prints_each_final_segment_with_its_start_time(capsys):
    from asr.serve.client import _Printer

    printer = _Printer()
    printer.tty = False
    printer({"text": "HEL", "segment": 1, "start_time": 1.96, "is_final": False})
    printer({"text": "HELLO", "segment": 1, "start_time": 1.96, "is_final": True})
    printer({"text": "", "segment": 2, "start_time": 3.0, "is_final": True})
    printer({"text": "HI", "segment": 0, "is_final": True})  # a server without start_time
    assert capsys.readouterr().out == "[1 1.96s] HELLO\n[0] HI\n"


def test_an_empty_final_result_clears_the_partial_one_in_a_terminal(capsys):
    """A segment whose final result has no text left its last partial result on the terminal's
    line, as if it had been said."""
    from asr.serve.client import _Printer

    printer = _Printer()
    printer.tty = True
    printer({"text": "UM", "segment": 2, "start_time": 3.0, "is_final": False})
    printer({"text": "", "segment": 2, "start_time": 3.0, "is_final": True})
    printer({"text": "HI", "segment": 3, "start_time": 4.0, "is_final": True})
    assert capsys.readouterr().out == "\rUM\033[K\r\033[K\r[3 4.00s] HI\033[K\n"


@pytest.mark.parametrize(
    "samples",
    [np.zeros(1600, np.int16), np.zeros((1600, 2), np.float32), np.zeros((2, 1600), np.float32)],
    ids=["int16", "stereo", "channels first"],
)
def test_the_client_refuses_samples_it_would_send_as_noise(samples):
    """stream_samples sent int16 PCM unscaled and interleaved a stereo array into one channel
    (the server answered with garbage, no error); it now says what it takes before connecting
    (nothing listens on port 9)."""
    import asyncio

    from asr.serve.client import stream_samples

    with pytest.raises(ValueError, match="float mono"):
        asyncio.run(stream_samples("ws://127.0.0.1:9", samples, 16000, timeout=5))


def test_limits_are_inclusive_and_each_refusal_has_its_close_code():
    """A value at a limit is accepted (a sample rate of exactly min/max, exactly max_hotwords
    phrases of exactly max_hotword_chars characters, exactly max_hotwords_bytes bytes), one past
    it refused; text that is not JSON, or JSON that is not the settings object, closes with 1003
    (unsupported data), a limit with 1008 (policy)."""
    assert parse_text('{"sample_rate": 4000}') == StreamSettings(4000)
    assert parse_text('{"sample_rate": 192000}') == StreamSettings(192000)
    assert sample_rate_from_path("/?sample_rate=4000", min_rate=4000, max_rate=8000) == 4000
    assert sample_rate_from_path("/?sample_rate=8000", min_rate=4000, max_rate=8000) == 8000
    for rate in (3999, 192001):
        with pytest.raises(ProtocolError, match=r"\[4000, 192000\]"):
            parse_text(f'{{"sample_rate": {rate}}}')
    limits = HotwordLimits(max_hotwords=2, max_hotword_chars=5, max_hotwords_bytes=10)
    assert parse_text('{"hotwords": ["ABCDE", "FGHIJ"]}', limits=limits) == StreamSettings(
        None, ("ABCDE", "FGHIJ"))
    for text, match in [('{"hotwords": ["AB", "CD", "E"]}', "3 phrases"),
                        ('{"hotwords": ["ABCDEF"]}', "6 characters"),
                        ('{"hotwords": ["ABCDE", "FGHIJK"]}', "11 bytes")]:
        with pytest.raises(ProtocolError, match=match) as err:
            parse_text(text, limits=limits)
        assert err.value.code == 1008
    for text in ("done", "[1, 2]", '{"x": 1}'):
        with pytest.raises(ProtocolError) as err:
            parse_text(text)
        assert err.value.code == CLOSE_UNSUPPORTED
    with pytest.raises(ProtocolError) as err:  # a long message is quoted by its first 40 chars
        parse_text("x" * 100_000)
    assert len(str(err.value)) < 200


class _Broken:
    """A recognizer whose ``decode`` raises for any streams (a bug in the decode step)."""

    def __init__(self, recognizer) -> None:
        self._recognizer = recognizer

    def __getattr__(self, name):
        return getattr(self._recognizer, name)

    def is_ready(self, stream) -> bool:
        return True

    def decode(self, streams):
        raise RuntimeError("the step is broken")


def test_a_step_that_fails_every_stream_logs_its_traceback_once(recognizer, caplog):
    """A decode step that fails for every stream (the step's fault, not a stream's) was logged
    once for the batch and then once per session, each with the same traceback; now it is the
    batch's WARNING and one ERROR line naming every session, with the traceback once. Each
    client is still closed with its own error."""
    import logging

    from asr.serve.engine import DecodeEngine
    from asr.serve.protocol import CLOSE_INTERNAL

    engine = DecodeEngine(_Broken(recognizer))
    sessions = [engine.open_session(16000) for _ in range(3)]
    for session in sessions:
        engine.push_audio(session, np.zeros(8000, np.float32))
    with caplog.at_level(logging.DEBUG, logger="asr"):
        work = engine._collect()
        outputs, progressed = engine._step(work)
        engine._dispatch(work, outputs)
    engine._executor.shutdown()
    assert not progressed and not outputs
    for session in sessions:
        assert session.error is not None and session.error.code == CLOSE_INTERNAL
        assert "RuntimeError: the step is broken" in str(session.error)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 2, [r.getMessage() for r in loud]
    assert "decoding a batch of 3 streams failed" in loud[0].getMessage()
    ids = ", ".join(str(s.id) for s in sessions)
    assert loud[1].levelno == logging.ERROR and loud[1].getMessage().startswith(
        f"sessions {ids} (every stream of a batch of 3): decoding this stream failed")
    assert sum(r.exc_info is not None for r in caplog.records) == 1
