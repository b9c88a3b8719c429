"""Fixtures of the recipe scripts' tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import preloaded_asr
import pytest

REPO = Path(__file__).resolve().parents[2]
PRELOADED = Path(preloaded_asr.__file__)


@pytest.fixture(scope="session")
def real(tmp_path_factory):
    """The environment of a run with the real ``asr`` of this checkout (and the real venv's
    python, lhotse, torchrun): a stand-in venv whose ``asr`` runs in a server that imported
    torch once (tests/egs/preloaded_asr.py: each call is a fork of it, with the call's own
    arguments, directory, environment and streams); a process start each was 4-5 s of CPU."""
    root = tmp_path_factory.mktemp("preloaded asr")
    # a Unix socket's path holds at most 107 bytes: not under a --basetemp of any length
    socket_dir = Path(tempfile.mkdtemp(prefix="asr-"))
    socket_path = socket_dir / "asr.sock"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, str(PRELOADED), "serve", str(socket_path)],
                              env=env, stdin=subprocess.DEVNULL)
    try:
        for _ in range(6000):  # its imports: at most 10 minutes on a loaded machine
            if socket_path.exists() or server.poll() is not None:
                break
            time.sleep(0.1)
        assert socket_path.exists(), f"the asr server did not start (status {server.poll()})"
        preloaded_asr.write_venv(root / "venv", socket_path, Path(sys.prefix))
        yield {"ASR_VENV": str(root / "venv"), "PYTHONPATH": str(REPO)}
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(socket_dir)
