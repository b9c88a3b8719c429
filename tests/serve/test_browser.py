"""The microphone page in headless Chromium, with a synthesized wav as its fake microphone.

Chromium is driven over the DevTools protocol (a websocket on 127.0.0.1): the page is opened with
``?autostart=1``, captures the fake microphone through its AudioWorklet, resamples to 16 kHz and
streams to the server; the test reads the transcript from the DOM until a final segment appears,
then stops the page. The server's recognizer keeps what it received: that must be the
microphone's speech, block by block (:func:`asr.testing.signals.blockwise_snr_db`), and the
page must show the text of decoding it offline.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile
from websockets.sync.client import connect

from asr.testing.serving import stop_process

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


pytestmark = pytest.mark.skipif(
    _chromium() is None,
    reason="needs Chromium for the browser test (Debian: apt-get install chromium)",
)


class DevTools:
    """A minimal Chrome DevTools protocol client for one page."""

    def __init__(self, ws) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    def evaluate(self, expression: str, timeout: float = 10.0):
        call_id = next(self._ids)
        self._ws.send(
            json.dumps(
                {
                    "id": call_id,
                    "method": "Runtime.evaluate",
                    "params": {"expression": expression, "returnByValue": True},
                }
            )
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = json.loads(self._ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if reply.get("id") == call_id:
                return reply["result"]["result"].get("value")
        raise TimeoutError(f"no DevTools reply to {expression!r}")


def _devtools_port(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        match = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
        if match:
            return int(match.group(1))
    raise RuntimeError("Chromium did not start its DevTools server:\n" + "".join(lines[-20:]))


def _page_socket(port: int, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
            pages = [t for t in json.load(response) if t.get("type") == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.1)
    raise RuntimeError("Chromium opened no page")


def _open_page(url: str, tmp_path, *flags: str) -> subprocess.Popen:
    """Headless Chromium on ``url`` with extra command-line ``flags`` (the microphone's)."""
    cmd = [
        _chromium(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--mute-audio",
        *flags,
        "--autoplay-policy=no-user-gesture-required",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={tmp_path / 'profile'}",
        url,
    ]
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


@contextlib.contextmanager
def _fake_microphone_page(http_url: str, tmp_path, fake_mic) -> Iterator[DevTools]:
    """The microphone page in Chromium, started at once, capturing the wav ``fake_mic`` once
    through; yields its DevTools and stops Chromium after."""
    proc = _open_page(
        f"{http_url}/?autostart=1",
        tmp_path,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_mic}%noloop",
    )
    try:
        with connect(_page_socket(_devtools_port(proc)), max_size=None, open_timeout=10) as ws:
            yield DevTools(ws)
    finally:
        stop_process(proc)


def _status(devtools: DevTools) -> str:
    """The page's status line."""
    return devtools.evaluate("document.getElementById('status').textContent") or ""


class RecordingRecognizer:
    """A recognizer that keeps a copy of the audio the server hands it: ``(rate, samples)``."""

    def __init__(self, recognizer) -> None:
        self._recognizer = recognizer
        self.chunks: list[tuple[int, np.ndarray]] = []

    def accept_waveform(self, stream, samples: np.ndarray, sample_rate: int) -> None:
        self.chunks.append((sample_rate, np.array(samples, np.float32)))
        self._recognizer.accept_waveform(stream, samples, sample_rate)

    def __getattr__(self, name: str):
        return getattr(self._recognizer, name)


def test_microphone_page_in_headless_chromium(engine, recognizer, offline_text, speech, tmp_path):
    """The page captures the fake microphone (a 48 kHz file) and streams it at 16 kHz: the server
    receives that speech whole, and the page shows the text of decoding what it received offline
    (what the tiny model hears in it depends on its training, not on the page)."""
    from asr.audio import load_audio
    from asr.serve.config import ServerConfig
    from asr.serve.server import BackgroundServer
    from asr.testing.signals import blockwise_snr_db

    if engine != "pytorch":  # the page speaks the protocol, which test_server holds per engine
        pytest.skip("the page's own conduct, the same for every engine")
    rate = 48000
    samples = load_audio(speech[2].path, rate)
    wave = np.concatenate(
        [np.zeros(rate // 2, np.float32), samples, np.zeros(3 * rate, np.float32)]
    )
    fake_mic = tmp_path / "mic.wav"
    soundfile.write(fake_mic, wave, rate, subtype="PCM_16")
    recording = RecordingRecognizer(recognizer)
    with BackgroundServer(recording, ServerConfig(port=0)) as background:
        with _fake_microphone_page(background.http_url, tmp_path, fake_mic) as devtools:

            def status() -> str:
                return _status(devtools)

            def finals() -> list[str]:
                return devtools.evaluate(
                    "Array.from(document.querySelectorAll('#segments p.final'))"
                    ".map(p => p.textContent)"
                ) or []

            # the speech ends 2 s before the file does: its final (an endpoint) comes first
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline and not finals():
                if status().startswith(("error", "disconnected", "server error")):
                    break
                time.sleep(0.25)
            recording_status = status()
            devtools.evaluate("document.getElementById('stop').click()")
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and not status().startswith("disconnected"):
                time.sleep(0.1)
            assert status().startswith("disconnected (1000"), status()
            shown = finals()
    assert re.fullmatch(r"recording \(\d+ Hz -> 16000 Hz\)", recording_status), recording_status
    assert {r for r, _ in recording.chunks} == {16000}
    received = np.concatenate([c for _, c in recording.chunks])
    # block by block: under load the capture drops blocks (once 10.5 dB aligned whole; beside a
    # second pytest worker and a training run, a quarter of the speech, each gap leaving one poor
    # block that straddles it), but the blocks the server got must be the microphone's, unscaled
    # (a scaled or resampled copy has every block poor: the median) and in order
    match = blockwise_snr_db(
        load_audio(fake_mic, 16000)[rate // 6: (rate // 2 + samples.size) // 3], received, 800)
    median_db = float(np.median(match.snr_db)) if match.snr_db.size else float("-inf")
    assert (median_db > 30.0 and match.share_above(15.0) >= 0.75 and match.in_order
            and match.coverage > 0.6), (
        f"the server received other audio than the microphone's: median block {median_db:.1f} "
        f"dB, {match.share_above(15.0):.0%} of its blocks above 15 dB, in order: "
        f"{match.in_order}, {match.coverage:.0%} of the speech's energy")
    assert shown, f"no final segment on the page (status {recording_status!r})"
    assert " ".join(shown) == offline_text(received, 16000)


def test_a_page_that_cannot_capture_closes_its_connection(engine, tmp_path, wait_until, request):
    """Without a microphone (no device, or permission denied) the page showed the error but kept
    its websocket open: the server held the session until its idle timeout, and the page then
    replaced the error by 'disconnected (1008: ... idle timeout)'."""
    from asr.serve.config import ServerConfig
    from asr.serve.server import BackgroundServer

    if engine != "pytorch":
        pytest.skip("the page's own conduct, the same for every engine")
    recognizer = request.getfixturevalue("recognizer")
    with BackgroundServer(recognizer, ServerConfig(port=0, idle_timeout=60.0)) as background:
        url = f"{background.http_url}/?autostart=1"
        proc = _open_page(url, tmp_path, "--deny-permission-prompts")
        try:
            with connect(_page_socket(_devtools_port(proc)), max_size=None, open_timeout=10) as ws:
                devtools = DevTools(ws)

                def status() -> str:
                    return devtools.evaluate("document.getElementById('status').textContent") or ""

                assert wait_until(lambda: status().startswith("error"), 30.0), status()
                assert background.server.stats()["sessions_opened"] == 1
                assert wait_until(lambda: background.server.num_sessions == 0, 5.0)
                assert status().startswith("error"), status()
                assert devtools.evaluate("document.getElementById('start').disabled") is False
        finally:
            stop_process(proc)


def test_the_page_keeps_the_servers_error_when_the_connection_closes(
        engine, recognizer, speech, tmp_path):
    """The server's error message was replaced on the page by the close status that follows it,
    whose reason the protocol cuts to 123 bytes: the page now shows the error in full."""
    from asr.serve.config import ServerConfig
    from asr.serve.server import BackgroundServer

    if engine != "pytorch":
        pytest.skip("the page's own conduct, the same for every engine")
    fake_mic = tmp_path / "mic.wav"
    soundfile.write(fake_mic, np.tile(soundfile.read(speech[2].path, dtype="float32")[0], 3),
                    speech[2].sample_rate, subtype="PCM_16")
    config = ServerConfig(port=0, max_session_seconds=0.5)
    with BackgroundServer(recognizer, config) as background:
        with _fake_microphone_page(background.http_url, tmp_path, fake_mic) as devtools:

            def status() -> str:
                return _status(devtools)

            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline and not status().startswith("disconnected"):
                time.sleep(0.1)
            shown = status()
    assert shown == ("disconnected (1008: server error: more than 0.5 s of audio in one "
                     "connection)"), shown


def test_a_page_outside_a_secure_context_says_why_it_cannot_capture(engine, tmp_path, request):
    """Opened by a name other than localhost over http (a server bound to the network, the page
    opened from another machine), the page is no secure context: the browser gives it no
    navigator.mediaDevices, and the page said 'error: Cannot read properties of undefined
    (reading 'getUserMedia')', after opening a websocket session for nothing."""
    from asr.serve.config import ServerConfig
    from asr.serve.server import BackgroundServer

    if engine != "pytorch":
        pytest.skip("the page's own conduct, the same for every engine")
    recognizer = request.getfixturevalue("recognizer")
    with BackgroundServer(recognizer, ServerConfig(port=0)) as background:
        # asr.test resolves to 127.0.0.1 in this browser alone: all traffic stays on loopback
        url = f"http://asr.test:{background.server.port}/?autostart=1"
        proc = _open_page(url, tmp_path, "--host-resolver-rules=MAP asr.test 127.0.0.1",
                          "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream")
        try:
            with connect(_page_socket(_devtools_port(proc)), max_size=None, open_timeout=10) as ws:
                devtools = DevTools(ws)
                deadline = time.monotonic() + 30.0
                while time.monotonic() < deadline and not _status(devtools).startswith("error"):
                    time.sleep(0.1)
                shown = _status(devtools)
                assert devtools.evaluate("window.isSecureContext") is False
                assert devtools.evaluate("document.getElementById('start').disabled") is False
        finally:
            stop_process(proc)
        assert background.server.stats()["sessions_opened"] == 0
    assert shown.startswith("error: the microphone needs a secure page"), shown
    assert "localhost" in shown and "https" in shown, shown


def test_a_connection_closed_while_the_microphone_starts_is_not_shown_as_recording(
        engine, tmp_path, wait_until, request):
    """The server closed the connection (here its idle timeout) while the page waited for the
    microphone (a permission prompt): the page then went on to show 'recording' with Stop
    enabled, capturing the microphone and sending nothing."""
    from asr.serve.config import ServerConfig
    from asr.serve.server import BackgroundServer

    if engine != "pytorch":
        pytest.skip("the page's own conduct, the same for every engine")
    recognizer = request.getfixturevalue("recognizer")
    with BackgroundServer(recognizer, ServerConfig(port=0, idle_timeout=0.5)) as background:
        proc = _open_page(f"{background.http_url}/", tmp_path, "--use-fake-ui-for-media-stream",
                          "--use-fake-device-for-media-stream")
        try:
            with connect(_page_socket(_devtools_port(proc)), max_size=None, open_timeout=10) as ws:
                devtools = DevTools(ws)
                assert wait_until(lambda: devtools.evaluate(
                    "document.readyState === 'complete' && !!document.getElementById('start')"),
                    20.0)
                # the microphone waits for a gate the test opens once the server has closed
                devtools.evaluate("""
                    const media = navigator.mediaDevices, real = media.getUserMedia.bind(media);
                    window.gate = new Promise((resolve) => { window.openGate = resolve; });
                    media.getUserMedia = async (c) => { await window.gate; return real(c); };
                    document.getElementById('start').click();
                """)
                stats = background.server.stats
                assert wait_until(lambda: stats()["sessions_opened"] == 1, 20.0)
                assert wait_until(lambda: background.server.num_sessions == 0, 20.0)
                assert wait_until(lambda: _status(devtools).startswith("disconnected"), 20.0)
                devtools.evaluate("window.openGate()")
                assert wait_until(lambda: _status(devtools).startswith(("error", "recording")),
                                  20.0), _status(devtools)
                shown = _status(devtools)
                buttons = devtools.evaluate("[document.getElementById('start').disabled, "
                                            "document.getElementById('stop').disabled]")
        finally:
            stop_process(proc)
    assert shown.startswith("error: the server closed the connection"), shown
    assert "idle timeout" in shown, shown
    assert buttons == [False, True], buttons
