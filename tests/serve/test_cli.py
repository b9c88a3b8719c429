"""``asr serve`` as a process: the file client CLI against it, then SIGTERM mid-utterance."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from asr.serve.client import main as client_main
from asr.serve.client import stream_samples
from asr.testing.serving import start_server_process


def test_serve_cli_client_and_graceful_sigterm(serve_args, speech, reference_texts, capsys):
    proc, port = start_server_process(
        *serve_args, "--idle-timeout", "10", "--shutdown-timeout", "5", "--num-threads", "1"
    )
    url = f"ws://127.0.0.1:{port}"
    try:
        # the file client CLI: two files at once (one at 22.05 kHz: announced and resampled)
        assert client_main(["--server", url, str(speech[0].path), str(speech[3].path)]) == 0
        out = capsys.readouterr().out
        assert f"{speech[0].path}\t{reference_texts[0]}" in out
        assert f"{speech[3].path}\t{reference_texts[3]}" in out
        assert client_main(["--server", url, str(speech[0].path) + ".missing"]) == 1

        # SIGTERM while a real-time client is in its first sentence: it still gets a final result
        long = speech[-1]

        async def main():
            client = asyncio.create_task(
                stream_samples(url, long.samples, long.sample_rate, realtime=True, timeout=30)
            )
            await asyncio.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            return await client

        result = asyncio.run(main())
        assert result.close_code == 1001 and result.close_reason == "server shutting down"
        assert result.messages and result.messages[-1]["is_final"]
        assert result.errors == []
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log = proc.stdout.read()
    assert "shutdown requested" in log and "server stopped" in log, log


@pytest.mark.skipif(os.environ.get("ASR_TEST_SOUNDDEVICE") == "1", reason="sounddevice present")
def test_microphone_client_without_sounddevice_is_a_clear_error(monkeypatch):
    from asr.serve.client import stream_microphone

    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if not installed
    with pytest.raises(RuntimeError, match="pip install sounddevice"):
        asyncio.run(stream_microphone("ws://127.0.0.1:9"))


def test_client_takes_files_between_options(capsys):
    """``python -m asr.serve.client a.flac --realtime b.flac`` refused ``b.flac`` (an
    unrecognized argument, exit 2); both files are now streamed (here: each fails, named, for
    want of a server)."""
    code = client_main(["a.flac", "--server", "ws://127.0.0.1:1", "b.flac", "--timeout", "5"])
    err = capsys.readouterr().err
    assert code == 1 and "a.flac: error:" in err and "b.flac: error:" in err


def test_client_takes_a_file_after_a_double_dash(capsys):
    """``python -m asr.serve.client -- -a.flac``: a file may start with '-' after ``--``; Python
    3.11's intermixed parsing dropped the ``--`` and refused ``-a.flac``."""
    code = client_main(["--server", "ws://127.0.0.1:1", "--timeout", "5", "--", "-a.flac"])
    assert code == 1 and "-a.flac: error:" in capsys.readouterr().err


def test_a_refused_handshake_says_the_servers_reason():
    """A server at --max-connections answers HTTP 503 "too many connections"; the client said
    only "server rejected WebSocket connection: HTTP 503"."""
    from websockets.datastructures import Headers
    from websockets.exceptions import InvalidStatus
    from websockets.http11 import Response

    from asr.serve.client import _failure

    full = InvalidStatus(Response(503, "Service Unavailable", Headers(),
                                  bytearray(b"too many connections\n")))  # as received
    assert _failure(full, "ws://h:1") == ("server rejected WebSocket connection: HTTP 503: too "
                                          "many connections (asr serve --max-connections)")
    closing = InvalidStatus(Response(503, "Service Unavailable", Headers(), b"server is shutting "
                                                                            b"down\n"))
    assert _failure(closing, "ws://h:1").endswith("HTTP 503: server is shutting down")
    bare = InvalidStatus(Response(403, "Forbidden", Headers(), b""))
    assert _failure(bare, "ws://h:1") == "server rejected WebSocket connection: HTTP 403"


def test_a_proxys_html_refusal_is_one_bounded_line():
    """A proxy in front of the server (nginx, a load balancer) answers 503 with an HTML page:
    the client printed all of it, kilobytes of markup escaped into one line. It prints the
    page's text, one line of at most MAX_REASON_CHARS characters, and says when it cut it."""
    from websockets.datastructures import Headers
    from websockets.exceptions import InvalidStatus
    from websockets.http11 import Response

    from asr.serve.client import _failure

    nginx = (b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n"
             b"<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
             b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
    failure = _failure(InvalidStatus(Response(503, "Service Unavailable", Headers(), nginx)),
                       "ws://h:1")
    assert failure == ("server rejected WebSocket connection: HTTP 503: 503 Service Temporarily "
                       "Unavailable 503 Service Temporarily Unavailable nginx")
    page = (b"<!DOCTYPE html><html><head><style>body { color: red; }</style>"
            b"<script>var x = '<b>';</script><title>Down &amp; out</title></head><body>"
            + b"<p>Please try again later.</p>\n" * 200 + b"</body></html>")
    failure = _failure(InvalidStatus(Response(503, "Service Unavailable", Headers(), page)),
                       "ws://h:1")
    reason = failure.split("HTTP 503: ", 1)[1]
    assert "\n" not in failure and "\\n" not in failure and "<" not in reason
    assert reason.startswith("Down & out Please try again later. Please try again later.")
    assert reason.endswith(f"... (cut: the response body's text is {10 + 24 * 200} characters)")
    from asr.serve.client import MAX_REASON_CHARS

    assert len(reason) < MAX_REASON_CHARS + 60


def test_a_refusal_whose_page_has_no_text_ends_with_its_status():
    """An HTML body of markup alone (a proxy's empty page) left the line ending in a bare
    ": " after the status, a reason promised and none given; it ends with the status now."""
    from websockets.datastructures import Headers
    from websockets.exceptions import InvalidStatus
    from websockets.http11 import Response

    from asr.serve.client import _failure

    for body in (b"<html><body></body></html>\r\n", b"<html><body> &nbsp; </body></html>"):
        failure = _failure(InvalidStatus(Response(502, "Bad Gateway", Headers(), body)),
                           "ws://h:1")
        assert failure == "server rejected WebSocket connection: HTTP 502", body


class _NoServer:
    """Stands in for RecognitionServer: a command that got this far would serve."""

    def __init__(self, recognizer, config) -> None:
        self.recognizer = recognizer

    async def serve_forever(self) -> None:
        return None


def test_serve_sherpa_onnx_applies_or_refuses_each_search_option(sherpa_dir, monkeypatch,
                                                                  caplog, speech):
    """``--engine sherpa-onnx`` ignored --searcher and --set with a warning (so a blank penalty
    or a beam asked for was served without), while it refused the chunk options. Each is now
    sherpa-onnx's same setting or an error naming it (exit 2), as a chunk option is."""
    import asr.cli.serve
    from asr.cli.main import main
    from asr.export.sherpa_decode import load_recognizer, sherpa_search_options
    from asr.export.sherpa_streaming import load_streaming_recognizer
    from asr.testing.streams import decode_with_endpoints

    monkeypatch.setattr(asr.cli.serve, "RecognitionServer", _NoServer)
    common = ["serve", "--model", str(sherpa_dir), "--engine", "sherpa-onnx", "--port", "0"]
    for options, message in (
            (["--searcher", "ctc_prefix_beam"], "--searcher ctc_prefix_beam: sherpa-onnx has no "
                                                "such search"),
            (["--set", "search.lm_weight=0.3"], "--set search.lm_weight=0.3: sherpa-onnx has no "
                                                "search.lm_weight"),
            (["--set", "search.max_symbols_per_frame=3"], "--set search.max_symbols_per_frame=3"
                                                          ": sherpa-onnx's searches emit at most "
                                                          "one symbol per frame"),
            (["--set", "search.beam_size=8"], "--set search.beam_size: the beam of sherpa-onnx's "
                                              "modified_beam_search; add --searcher beam"),
            (["--device", "cuda"], "--device cuda: --engine sherpa-onnx runs on the CPU")):
        caplog.clear()
        assert main([*common, *options]) == 2, options
        assert message in caplog.text, (options, caplog.text)
    assert main([*common, "--searcher", "greedy", "--set", "search.max_symbols_per_frame=1"]) == 0

    beam = load_streaming_recognizer(sherpa_dir, search=sherpa_search_options(
        "transducer_beam", ["search.beam_size=3", "search.blank_penalty=2.5"]))
    config = beam.online.config
    assert (config.decoding_method, config.max_active_paths) == ("modified_beam_search", 3)
    assert config.blank_penalty == 2.5
    assert beam.searcher_name == "sherpa-onnx modified_beam_search"
    item = next(s for s in speech if s.sample_rate == 16000)
    served = load_streaming_recognizer(sherpa_dir, search=sherpa_search_options("beam", []))
    segments = decode_with_endpoints(served, served.new_stream(), item.samples, 16000)
    assert segments[-1].is_final and segments[0].text  # the beam search serves
    # the penalty reaches the search: a large one makes it emit on frames greedy leaves blank
    [plain] = load_recognizer(sherpa_dir).decode([item.samples])
    [penalized] = load_recognizer(
        sherpa_dir, **sherpa_search_options(None, ["search.blank_penalty=20"])).decode(
            [item.samples])
    assert len(penalized.token_ids) > len(plain.token_ids)


def test_serve_sherpa_onnx_refuses_an_unused_option_in_its_own_words():
    """``asr serve --engine sherpa-onnx --set search.hotwords_score=2`` (no hotwords file) was
    refused by the loader in ``asr decode-onnx``'s words: "(--hotwords-score) ... give one
    (--hotwords-file)", options serve has not; a ``search.hotwords_file`` without
    ``--searcher beam`` named sherpa-onnx's ``decoding_method``. Each names serve's option and
    its fix now, as ``search.beam_size`` without a beam search did."""
    from asr.export.sherpa_decode import sherpa_search_options

    for searcher, overrides, message in (
            (None, ["search.hotwords_file=h.txt"], "--set search.hotwords_file: sherpa-onnx "
                                                   "biases only in its modified_beam_search; add "
                                                   "--searcher beam"),
            ("greedy", ["search.hotwords_file=h.txt"], "add --searcher beam"),
            ("beam", ["search.hotwords_score=2"], "--set search.hotwords_score: the boost of the "
                                                  "phrases of search.hotwords_file; add --set "
                                                  "search.hotwords_file=FILE")):
        with pytest.raises(ValueError, match=re.escape(message)):
            sherpa_search_options(searcher, overrides)
    assert sherpa_search_options("beam", ["search.hotwords_file=h.txt",
                                          "search.hotwords_score=2"]) == {
        "decoding_method": "modified_beam_search", "hotwords_file": Path("h.txt"),
        "hotwords_score": 2.0}
