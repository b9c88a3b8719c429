"""``asr serve`` as a process: the file client CLI against it, then SIGTERM mid-utterance."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from asr.serve.client import main as client_main
from asr.serve.client import stream_samples


def _start_server(package_dir) -> tuple[subprocess.Popen, int]:
    cmd = [
        sys.executable,
        "-m",
        "asr.cli.main",
        "serve",
        "--model",
        str(package_dir),
        "--port",
        "0",
        "--idle-timeout",
        "10",
        "--shutdown-timeout",
        "5",
        "--num-threads",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        match = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
        if match:
            return proc, int(match.group(1))
    proc.kill()
    raise RuntimeError("asr serve did not start:\n" + "".join(lines[-30:]))


def test_serve_cli_client_and_graceful_sigterm(tiny, speech, reference_texts, capsys):
    proc, port = _start_server(tiny.package_dir)
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
