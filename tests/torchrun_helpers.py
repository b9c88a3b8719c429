"""Running a script under ``torchrun --standalone`` (gloo on CPU) from a test.

A failed run raises with the processes' own output, so a CI log says why it failed. A run that
fails while gloo or the rendezvous sets up its sockets (a peer resetting a connection, a connect
timeout, a port taken between its choice and its bind) is retried once: those come from the
sandbox's network stack, not from the code under test; any other failure, or the same one twice,
fails the test.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

SOCKET_SETUP_ERRORS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Connection refused",
    "connectFullMesh",
    "Connect timeout",
    "Address already in use",
    "RendezvousConnectionError",
)


#: The launcher, ``torchrun --standalone`` of this interpreter; ``--nproc-per-node`` and the
#: script follow it. The helper's own tests replace it to test the retry rule without torch.
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone")


def run_torchrun(args: Sequence[str], *, nproc: int, env: Mapping[str, str],
                 timeout: float) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m torch.distributed.run --standalone --nproc-per-node=nproc *args``.

    Args:
        args: the script (or ``-m module``) and its arguments.
        nproc: processes to start.
        env: their environment.
        timeout: seconds per attempt.

    Raises:
        AssertionError: a non-zero exit, with the tail of stdout and stderr.
    """
    command = [*TORCHRUN, f"--nproc-per-node={nproc}", *args]
    for attempt in (1, 2):
        result = subprocess.run(command, env=dict(env), capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode == 0:
            return result
        output = result.stdout + result.stderr
        setup_error = next((e for e in SOCKET_SETUP_ERRORS if e in output), None)
        if setup_error is None or attempt == 2:
            raise AssertionError(
                f"torchrun with {nproc} processes exited {result.returncode}: {' '.join(args)}\n"
                f"--- stdout (tail) ---\n{result.stdout[-3000:]}\n"
                f"--- stderr (tail) ---\n{result.stderr[-6000:]}")
        logger.warning("torchrun failed setting up its sockets (%s); running it once more",
                       setup_error)
    raise AssertionError("unreachable")
