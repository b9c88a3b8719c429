"""Running a script under ``torchrun --standalone`` (gloo on CPU) from a test.

A failed run raises with the processes' own output, so a CI log says why it failed; the processes
run with Python's faulthandler on, so a process killed by a signal (a C++ ``std::terminate``'s
SIGABRT among them) leaves the Python stack of each of its threads in that output. A run that
fails while gloo or the rendezvous sets up its sockets (a peer resetting a connection, a connect
timeout, a port taken between its choice and its bind) is retried once: those come from the
sandbox's network stack, not from the code under test; any other failure, or the same one twice,
fails the test.

:func:`run_scripts` runs several scripts one after the other in one torchrun (one start of the
launcher and its processes for all) and gives each its own outcome: a failing script fails its
own test alone. A gloo script ends with :func:`asr.process_exit.end_process` (torch's exit race:
that module's docstring).
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

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
        env: their environment (``PYTHONFAULTHANDLER=1`` unless it says otherwise).
        timeout: seconds per attempt.

    Raises:
        AssertionError: a non-zero exit, with the tail of stdout and stderr.
    """
    command = [*TORCHRUN, f"--nproc-per-node={nproc}", *args]
    for attempt in (1, 2):
        result = subprocess.run(command, env={"PYTHONFAULTHANDLER": "1", **env},
                                capture_output=True, text=True, timeout=timeout)
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


#: The environment variable that gives a driver of :func:`run_scripts` its scripts.
SCRIPTS_ENV = "TORCHRUN_SCRIPTS"


def done_marker(root: Path, name: str, rank: int) -> Path:
    """The empty file that a driver of :func:`run_scripts` writes once script ``name`` has
    returned in process ``rank``."""
    return Path(root) / "done" / f"{name}.{rank}"


@dataclass
class ScriptRuns:
    """The outcome of each script of :func:`run_scripts`, by name.

    Attributes:
        folders: the output folder of each script that ran to its end in every process.
        failures: for each script that failed, why: the output of the torchrun it failed in.
    """

    folders: dict[str, Path]
    failures: dict[str, str]

    def __getitem__(self, name: str) -> Path:
        """The output folder of script ``name``; fails the calling test (with the output of the
        failed run) when that script failed."""
        if name in self.failures:
            pytest.fail(self.failures[name], pytrace=False)
        return self.folders[name]


def run_scripts(driver: Path, scripts: Mapping[str, Path], root: Path, *, nproc: int,
                env: Mapping[str, str], timeout: float) -> ScriptRuns:
    """Runs ``scripts`` one after the other in one torchrun of ``driver``, each script with an
    output folder of its own, and tells each script's outcome apart.

    The driver reads ``{name: path}`` (JSON, in order) from the environment variable
    :data:`SCRIPTS_ENV` and its root folder from ``OUT_DIR``; it runs each script with
    ``OUT_DIR`` set to ``<OUT_DIR>/<name>`` and, once the script has returned, writes
    :func:`done_marker`. When the torchrun fails, the scripts done in every process passed, the
    first one not done failed (its test alone gets the run's output), and those after it, which
    had not run (or were stopped with it), run again in a torchrun of their own. A failure after
    every script was done (in the processes' exit) is the last script's. Each torchrun has a
    root folder of its own, so a script that runs again starts from empty folders.

    Args:
        driver: the script that torchrun starts.
        scripts: the scripts by name, in the order they run.
        root: a folder for the runs' output.
        nproc: processes to start.
        env: their environment (``OUT_DIR`` and :data:`SCRIPTS_ENV` are set here).
        timeout: seconds per torchrun.
    """
    pending = list(scripts)
    folders: dict[str, Path] = {}
    failures: dict[str, str] = {}
    attempt = 0
    while pending:
        attempt += 1
        out = Path(root) / f"run{attempt}"
        out.mkdir(parents=True)
        run_env = dict(env, OUT_DIR=str(out),
                       **{SCRIPTS_ENV: json.dumps({n: str(scripts[n]) for n in pending})})
        try:
            run_torchrun([str(driver)], nproc=nproc, env=run_env, timeout=timeout)
            failed = None
        except (AssertionError, subprocess.TimeoutExpired) as error:
            failed = error
        # each process runs the scripts in order: those done in every process are a prefix
        done = list(itertools.takewhile(
            lambda n, out=out: all(done_marker(out, n, r).is_file() for r in range(nproc)),
            pending))
        if failed is None and done != pending:
            raise AssertionError(f"{driver} exited 0 without writing the done markers of "
                                 f"{sorted(set(pending) - set(done))}")
        folders.update({name: out / name for name in done})
        pending = pending[len(done):]
        if failed is None:
            continue
        if not pending:  # every script returned: the processes failed in their exit
            failures[done[-1]] = (f"torchrun of {driver.name} failed after its last script, "
                                  f"{done[-1]!r}, had returned in every process:\n{failed}")
            del folders[done[-1]]
            continue
        name, pending = pending[0], pending[1:]
        failures[name] = (f"script {name!r} failed (torchrun of {driver.name} with "
                          f"{', '.join([name, *pending])}):\n{failed}")
        if pending:
            logger.warning("script %r failed; running %s in a torchrun of their own", name,
                           ", ".join(pending))
    return ScriptRuns(folders, failures)
