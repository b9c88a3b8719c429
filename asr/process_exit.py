"""Ending a process without the interpreter's finalization, where torch's threads make that unsafe.

torch 2.14's gloo worker threads (and nccl's likewise) outlive ``destroy_process_group`` once DDP
has used the process group: torch's C++ parts keep references to the group's Python object (10
of them stay after the DDP wrapper and the model are deleted, the group destroyed and ``gc`` run,
none held by an object that ``gc`` finds; torch 2.14.1, gloo), so the group's destructor, which
joins its threads, never runs before the interpreter's finalization. Without DDP the group's
threads end in ``destroy_process_group``.
Such a worker may drop the last reference to a finished collective while the main thread
finalizes the interpreter (``Py_FinalizeEx``); the work's captured ``at::ThreadLocalState`` holds
a Python object, whose decref takes the GIL, Python ends that thread inside the destructor, and
C++ calls ``std::terminate``: SIGABRT, "terminate called without an active exception", after the
process had done and written all its work, and ``torchrun`` reports the job failed (core dumps:
``runLoop`` > ``~AsyncAllreduceWork`` > ``~ThreadLocalState`` >
``ConcretePyInterpreterVTable::decref`` > ``take_gil`` > ``PyThread_exit_thread``; torch issue
190489). A process that set up a process group therefore ends with :func:`end_process`: its
``atexit`` handlers run, its logs and output are flushed, then ``os._exit`` with the status it
would have had, so the rest of the finalization, where that race lives, never runs.

The ``atexit`` handlers are run as ``Py_FinalizeEx`` would run them, by the interpreter's own
``atexit._run_exitfuncs`` (CPython's, undocumented but in every CPython 3; there is no public
way to run what others registered): a user's or a library's (``multiprocessing``'s join of its
child processes, torch's shutdown of a DataLoader's persistent workers, ``logging.shutdown``)
still gets to finish its work. That is not the race: ``Py_FinalizeEx`` calls them before it
marks the interpreter as finalizing, and only a thread that takes the GIL after that mark is
ended inside torch's destructor; while the handlers run, a gloo or nccl thread that takes the
GIL just waits for it, as during training. Python threads still running are not waited for
(``threading``'s shutdown, which ``Py_FinalizeEx`` runs before the handlers, is left out).

Unlike ``Py_FinalizeEx``, :func:`end_process` bounds that last step: a handler that never returns
(``multiprocessing``'s join of a non-daemonic child that cannot end, e.g. one whose queue's
feeder thread waits on a pipe no one reads any more; a flush into a full pipe whose reader has
stopped) would leave the process, and under ``torchrun`` the whole job, hanging after its work
was done. After :data:`EXIT_TIMEOUT_SECONDS` a watchdog thread says so on stderr (itself bounded:
stderr may be that pipe) and ends the process with the status it would have had.

:func:`skip_finalization` marks the process (:func:`asr.train.distributed.setup_distributed`,
when it sets up a group) and :func:`exit_status` is the command line's last step
(:func:`asr.cli.main.main`): the status itself in an unmarked process, which exits as usual.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from typing import NoReturn

__all__ = ["EXIT_TIMEOUT_SECONDS", "end_process", "exit_status", "skip_finalization"]

logger = logging.getLogger(__name__)

#: Why this process must end without the interpreter's finalization (None: it ends as usual).
_reason: str | None = None

#: The longest :func:`end_process` waits for the ``atexit`` handlers and the flushes, seconds.
EXIT_TIMEOUT_SECONDS = 120.0
#: The longest the watchdog waits for its own message to reach stderr, seconds.
_MESSAGE_TIMEOUT_SECONDS = 1.0


def skip_finalization(reason: str) -> None:
    """Marks this process as one that :func:`exit_status` ends with :func:`end_process`.

    Args:
        reason: why (logged at DEBUG when the process ends).
    """
    global _reason
    _reason = reason


def end_process(status: int, timeout: float | None = None) -> NoReturn:
    """Ends the process with ``status`` without the interpreter's finalization: the ``atexit``
    handlers run first, as at a normal exit (last registered first; one that raises is reported
    on stderr and the others still run), then logging is shut down (every handler flushed and
    closed: a log file's last lines, the command's on stderr) and ``sys.stdout`` and
    ``sys.stderr`` are flushed. When that has not finished after ``timeout`` seconds (a handler
    or a flush that blocks), the process ends all the same, with ``status``, saying so on
    stderr (see the module doc).

    Args:
        status: the exit status (0-255).
        timeout: the bound, seconds (default :data:`EXIT_TIMEOUT_SECONDS`).
    """
    logger.debug("ending with status %d without the interpreter's finalization: %s", status,
                 _reason or "asked for")
    limit = EXIT_TIMEOUT_SECONDS if timeout is None else timeout
    watchdog = threading.Thread(target=_end_after, args=(limit, status), daemon=True,
                                name="asr-exit-watchdog")
    watchdog.start()
    atexit._run_exitfuncs()  # what Py_FinalizeEx runs, before its race
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(status)


def _end_after(seconds: float, status: int) -> None:
    """The watchdog of :func:`end_process`: sleeps ``seconds`` (the process normally ends
    meanwhile), then writes why it ends it to stderr, waiting at most
    :data:`_MESSAGE_TIMEOUT_SECONDS` for the write, and ends the process with ``status``."""
    threading.Event().wait(seconds)
    message = (f"asr: the exit handlers (atexit, logging, flushing the output) did not finish in "
               f"{seconds:g} s (a child process that does not end, or a full pipe?): ending "
               f"with status {status} without them\n").encode()
    writer = threading.Thread(target=_write_stderr, args=(message,), daemon=True)
    writer.start()
    writer.join(_MESSAGE_TIMEOUT_SECONDS)
    os._exit(status)


def _write_stderr(data: bytes) -> None:
    """Writes ``data`` to file descriptor 2, past Python's buffers and locks (which a blocked
    handler may hold); nothing where it is closed."""
    try:
        os.write(2, data)
    except OSError:
        pass


def exit_status(status: int) -> int:
    """``status``, for the caller to exit with; a process marked by :func:`skip_finalization`
    ends here with it (:func:`end_process`).

    Args:
        status: the exit status (0-255).
    """
    if _reason is not None:
        end_process(status)
    return status
