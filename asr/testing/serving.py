"""``asr serve`` as a child process, for tests and benchmarks that talk to it over loopback."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["start_server_process", "stop_process"]

_LISTENING = re.compile(r"serving on http://127\.0\.0\.1:(\d+)")


def start_server_process(
    package_dir: str | Path, *extra_args: str, timeout: float = 60.0
) -> tuple[subprocess.Popen, int]:
    """Starts ``asr serve --model PACKAGE --port 0 EXTRA...`` and waits until it listens.

    Returns:
        ``(process, port)``; the process' stdout (with stderr) stays open for the caller.

    Raises:
        RuntimeError: if the server exits or does not listen within ``timeout`` seconds; the
            message holds the end of its log.
    """
    cmd = [sys.executable, "-m", "asr.cli.main", "serve", "--model", str(package_dir),
           "--port", "0", *extra_args]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        match = _LISTENING.search(line)
        if match:
            return proc, int(match.group(1))
    stop_process(proc, timeout=5.0)
    raise RuntimeError("asr serve did not start:\n" + "".join(lines[-30:]))


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
