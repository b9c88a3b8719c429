"""Running a script under ``torchrun --standalone`` (gloo on CPU) from a test.

A failed run raises with the processes' own output, so a CI log says why it failed (a run past
its timeout too, stopped as a job's end stops torchrun: :func:`_stop`); the processes run with
Python's faulthandler on, so a process killed by a signal (a C++ ``std::terminate``'s
SIGABRT among them) leaves the Python stack of each of its threads in that output. A run that
fails while gloo or the rendezvous sets up its sockets (a peer resetting a connection, a connect
timeout, a port taken between its choice and its bind) is retried once: those come from the
sandbox's network stack, not from the code under test. Only a failure before any process's
group was up is such a failure: each process prints a line once its group is up (``up`` of
:func:`run_torchrun`; :func:`report_up`), and a failure after one did is the code's, whatever
it printed (a rank that fails inside a collective leaves its peers "Connection closed by
peer"). Any other failure, or the same one twice, fails the test.

:func:`run_scripts` runs several scripts one after the other in one torchrun (one start of the
launcher and its processes for all) and gives each its own outcome: a failing script fails its
own test alone. A gloo script ends with :func:`asr.process_exit.end_process` (torch's exit race:
that module's docstring).
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
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


#: The line that :func:`report_up` prints: ``up`` of :func:`run_torchrun` for a script that
#: calls it.
UP_LINE = "torchrun_helpers: the process group of rank {rank} is up"


#: The launcher, ``torchrun --standalone`` of this interpreter; ``--nproc-per-node`` and the
#: script follow it. The helper's own tests replace it to test the retry rule without torch.
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone")


#: Seconds a run past its timeout is given to stop after SIGTERM (torchrun's own grace for its
#: workers is 30 s) before SIGKILL.
STOP_GRACE_S = 60.0


def _failure(what: str, args: Sequence[str], stdout: str, stderr: str) -> AssertionError:
    """The error of a failed run: ``what`` happened, with the tail of its output."""
    return AssertionError(f"torchrun {what}: {' '.join(args)}\n"
                          f"--- stdout (tail) ---\n{stdout[-3000:]}\n"
                          f"--- stderr (tail) ---\n{stderr[-6000:]}")


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Stops a launcher past its timeout as a job's end does: SIGTERM, which torchrun passes on
    to its workers (each in a session of its own: a SIGKILL of the launcher alone leaves them
    running), then SIGKILL after :data:`STOP_GRACE_S`; returns its output (stdout, stderr)."""
    proc.terminate()
    try:
        return proc.communicate(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            return proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # orphaned workers hold the pipes
            return "", "(no output: the launcher was killed, its workers hold its pipes)"


def report_up(rank: int) -> None:
    """Prints :data:`UP_LINE` for ``rank`` (flushed): a script's line once its process group is
    up, before it runs anything that a retry could hide."""
    print(UP_LINE.format(rank=rank), flush=True)


def _socket_setup_error(output: str, up: str | None, nproc: int) -> str | None:
    """The socket error (one of :data:`SOCKET_SETUP_ERRORS`) that a failed run with ``output``
    met while setting up, or None: none is named, no ``up`` line tells set-up from what came
    after, or a process printed its ``up`` line (its group was up: the failure is the code's)."""
    if up is None or any(up.format(rank=rank) in output for rank in range(nproc)):
        return None
    return next((e for e in SOCKET_SETUP_ERRORS if e in output), None)


def run_torchrun(args: Sequence[str], *, nproc: int, env: Mapping[str, str], timeout: float,
                 fresh: Path | None = None,
                 up: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m torch.distributed.run --standalone --nproc-per-node=nproc *args``.

    Args:
        args: the script (or ``-m module``) and its arguments.
        nproc: processes to start.
        env: their environment (``PYTHONFAULTHANDLER=1`` unless it says otherwise).
        timeout: seconds per attempt; a run past them is stopped (:func:`_stop`) and fails.
        fresh: a folder the processes write to, made anew (empty) before each attempt: a retry
            finds nothing of the failed attempt's output to take for its own.
        up: the line that each process prints once its process group is up, ``{rank}`` standing
            for its rank (:data:`UP_LINE` for a script that calls :func:`report_up`); a run that
            passes must show it for every rank. A socket error before any process printed it is
            retried once; without ``up`` nothing tells set-up from later, and no run is retried.

    Raises:
        AssertionError: a non-zero exit or a run past ``timeout``, with the tail of stdout and
            stderr.
        RuntimeError: a run that passed without a process's ``up`` line: a retry could not tell
            set-up from later (not a failure of the code under test).
    """
    command = [*TORCHRUN, f"--nproc-per-node={nproc}", *args]
    for attempt in (1, 2):
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)
            fresh.mkdir(parents=True)
        with subprocess.Popen(command, env={"PYTHONFAULTHANDLER": "1", **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as proc:
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise _failure(f"with {nproc} processes ran past {timeout:g} s", args,
                               *_stop(proc)) from None
        output = stdout + stderr
        if proc.returncode == 0:
            silent = [r for r in range(nproc) if up is not None
                      and up.format(rank=r) not in output]
            if silent:
                raise RuntimeError(f"torchrun passed, but the processes of ranks {silent} never "
                                   f"printed their line {up!r}: a failed run's retry could not "
                                   f"tell its set-up from later: {' '.join(args)}")
            return subprocess.CompletedProcess(command, 0, stdout, stderr)
        setup_error = _socket_setup_error(output, up, nproc)
        if setup_error is None or attempt == 2:
            raise _failure(f"with {nproc} processes exited {proc.returncode}", args, stdout,
                           stderr)
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


def run_scripts(driver: str, scripts: Mapping[str, str], root: Path, *, nproc: int,
                env: Mapping[str, str], timeout: float) -> ScriptRuns:
    """Runs ``scripts`` one after the other in one torchrun of ``driver``, each script with an
    output folder of its own, and tells each script's outcome apart. The sources are written
    to ``<root>/scripts`` as ``driver.py`` and ``<name>.py``.

    The driver reads ``{name: path}`` (JSON, in order) from the environment variable
    :data:`SCRIPTS_ENV` and its root folder from ``OUT_DIR``; it sets up its process group and
    calls :func:`report_up` before its first script (a socket error after that line is a
    script's failure, never retried: :func:`run_torchrun`'s ``up``); it runs each script with
    ``OUT_DIR`` set to ``<OUT_DIR>/<name>`` and, once the script has returned, writes
    :func:`done_marker`. When the torchrun fails, the scripts done in every process passed, the
    first one not done failed (its test alone gets the run's output), and those after it, which
    had not run (or were stopped with it), run again in a torchrun of their own. A failure after
    every script was done (in the processes' exit) is the last script's. Each torchrun has a
    root folder of its own, emptied before a retry of the launch (:func:`run_torchrun`'s), so
    a script that runs again starts from empty folders and only markers of the last attempt
    count.

    Args:
        driver: the source of the script that torchrun starts.
        scripts: the scripts' sources by name, in the order they run.
        root: a folder for the scripts and the runs' output.
        nproc: processes to start.
        env: their environment (``OUT_DIR`` and :data:`SCRIPTS_ENV` are set here).
        timeout: seconds per torchrun.
    """
    sources = Path(root) / "scripts"
    sources.mkdir(parents=True)
    driver_path = sources / "driver.py"
    driver_path.write_text(driver)
    paths = {name: sources / f"{name}.py" for name in scripts}
    for name, source in scripts.items():
        paths[name].write_text(source)
    pending = list(scripts)
    folders: dict[str, Path] = {}
    failures: dict[str, str] = {}
    attempt = 0
    while pending:
        attempt += 1
        out = Path(root) / f"run{attempt}"
        run_env = dict(env, OUT_DIR=str(out),
                       **{SCRIPTS_ENV: json.dumps({n: str(paths[n]) for n in pending})})
        try:
            run_torchrun([str(driver_path)], nproc=nproc, env=run_env, timeout=timeout, fresh=out,
                         up=UP_LINE)
            failed = None
        except AssertionError as error:  # an exit or a timeout, with the output
            failed = error
        # each process runs the scripts in order: those done in every process are a prefix
        done = list(itertools.takewhile(
            lambda n, out=out: all(done_marker(out, n, r).is_file() for r in range(nproc)),
            pending))
        if failed is None and done != pending:
            raise AssertionError(f"{driver_path} exited 0 without writing the done markers of "
                                 f"{sorted(set(pending) - set(done))}")
        folders.update({name: out / name for name in done})
        pending = pending[len(done):]
        if failed is None:
            continue
        if not pending:  # every script returned: the processes failed in their exit
            failures[done[-1]] = (f"torchrun of the driver failed after its last script, "
                                  f"{done[-1]!r}, had returned in every process:\n{failed}")
            del folders[done[-1]]
            continue
        name, pending = pending[0], pending[1:]
        failures[name] = (f"script {name!r} failed (torchrun of the driver with "
                          f"{', '.join([name, *pending])}):\n{failed}")
        if pending:
            logger.warning("script %r failed; running %s in a torchrun of their own", name,
                           ", ".join(pending))
    return ScriptRuns(folders, failures)
