"""The microphone page in headless Chromium, with a synthesized wav as its fake microphone.

Chromium is driven over the DevTools protocol (a websocket on 127.0.0.1): the page is opened with
``?autostart=1``, captures the fake microphone through its AudioWorklet, resamples to 16 kHz and
streams to the server; the test reads the transcript from the DOM until the words appear.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import time
import urllib.request

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


def test_microphone_page_in_headless_chromium(
    engine, server, tiny, speech, reference_texts, tmp_path
):
    from asr.audio import load_audio

    if engine != "pytorch":  # the page speaks the protocol, which test_server holds per engine
        pytest.skip("needs a sentence the engine gets exactly right: the tiny transducer in "
                    "sherpa-onnx's greedy search (one symbol per frame) gets none")

    # a sentence the tiny model gets exactly right when decoded offline
    index = next((i for i, s in enumerate(speech[:-1]) if reference_texts[i] == s.text), None)
    assert index is not None, f"the tiny model recognizes none of {[s.text for s in speech]}"
    text = speech[index].text
    rate = 48000
    samples = load_audio(speech[index].path, rate)
    wave = np.concatenate(
        [np.zeros(rate // 2, np.float32), samples, np.zeros(3 * rate, np.float32)]
    )
    fake_mic = tmp_path / "mic.wav"
    soundfile.write(fake_mic, wave, rate, subtype="PCM_16")
    proc = _open_page(
        f"{server.http_url}/?autostart=1",
        tmp_path,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_mic}%noloop",
    )
    try:
        with connect(_page_socket(_devtools_port(proc)), max_size=None, open_timeout=10) as ws:
            devtools = DevTools(ws)
            finals, status = [], ""
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline:
                status = devtools.evaluate("document.getElementById('status').textContent") or ""
                finals = (
                    devtools.evaluate(
                        "Array.from(document.querySelectorAll('#segments p.final'))"
                        ".map(p => p.textContent)"
                    )
                    or []
                )
                if finals or status.startswith(("error", "disconnected", "server error")):
                    break
                time.sleep(0.25)
        assert status.startswith("recording"), status
        assert finals, f"no final segment on the page (status {status!r})"
        words = " ".join(finals).split()
        assert set(text.split()) <= set(words), (finals, text)
    finally:
        stop_process(proc)


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
