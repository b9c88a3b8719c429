"""The torchrun test helper reports a failure with the processes' output and retries only a
socket set-up failure, once.

The retry rule is the helper's own: its tests run the script under a stand-in launcher that
takes torchrun's arguments and runs the script in one plain process (a torchrun start imports
torch, seconds each). That a worker's output reaches the helper through the real torchrun is
``test_any_other_failure_fails_at_once_with_the_output``'s.
"""

from __future__ import annotations

import os
import sys

import pytest
import torchrun_helpers
from torchrun_helpers import run_torchrun

SCRIPT = r'''
import os, sys
count = os.path.join(os.environ["OUT_DIR"], "attempts")
n = int(open(count).read()) + 1 if os.path.exists(count) else 1
open(count, "w").write(str(n))
fail_until = int(os.environ["FAIL_UNTIL"])
if n <= fail_until:
    sys.stderr.write(os.environ["MESSAGE"] + "\n")
    sys.exit(1)
'''


def _run(tmp_path, fail_until: int, message: str):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OUT_DIR=str(tmp_path), FAIL_UNTIL=str(fail_until), MESSAGE=message)
    try:
        return run_torchrun([str(script)], nproc=1, env=env, timeout=120)
    finally:
        _run.attempts = int((tmp_path / "attempts").read_text())


#: ``python -c PLAIN --nproc-per-node=N SCRIPT``: runs SCRIPT as ``__main__`` in this process.
PLAIN = "import runpy, sys; sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')"


@pytest.fixture
def plain_launcher(monkeypatch):
    monkeypatch.setattr(torchrun_helpers, "TORCHRUN", (sys.executable, "-c", PLAIN))


def test_a_socket_setup_failure_is_run_once_more(tmp_path, plain_launcher):
    _run(tmp_path, 1, "RuntimeError: Gloo connectFullMesh failed with Connect timeout")
    assert _run.attempts == 2


def test_a_socket_setup_failure_twice_fails_with_the_output(tmp_path, plain_launcher):
    with pytest.raises(AssertionError, match="Connection reset by peer"):
        _run(tmp_path, 2, "Connection reset by peer")
    assert _run.attempts == 2


def test_any_other_failure_fails_at_once_with_the_output(tmp_path):
    with pytest.raises(AssertionError, match="ValueError: bad shape"):
        _run(tmp_path, 5, "ValueError: bad shape")
    assert _run.attempts == 1
