"""A process marked to skip the interpreter's finalization ends with its status, its ``atexit``
handlers run, its logs and output flushed, and without the rest of the finalization (the
destructor of an object that ``__main__`` holds, which the finalization calls when it clears
the modules after the handlers, stands for it); an unmarked one exits as usual.

The processes are plain ``python`` (no torch): ending one is this module's, not torch's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from asr import process_exit
from asr.process_exit import exit_status

ROOT = Path(__file__).resolve().parents[1]

#: Registers an atexit handler that writes the file ATEXIT, and holds an object whose destructor
#: writes the file FINALIZED: it exists once the interpreter finalized (cleared ``__main__``).
PRELUDE = (
    "import atexit, os\n"
    "atexit.register(lambda: open(os.environ['ATEXIT'], 'w').close())\n"
    "class Finalized:\n"
    "    def __del__(self, open=open, path=os.environ['FINALIZED']):\n"
    "        open(path, 'w').close()\n"
    "finalized = Finalized()\n"
)


def _python(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Runs ``PRELUDE + code`` in a plain python with this checkout's asr first on its path."""
    env = dict(os.environ, FINALIZED=str(tmp_path / "finalized"), ATEXIT=str(tmp_path / "atexit"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-c", PRELUDE + code], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)


def test_end_process_flushes_the_logs_and_output_and_skips_the_finalization(tmp_path):
    """The status as given; a buffered log handler (written on its flush alone) and stdout, a
    pipe here (block-buffered), have their last lines out; the atexit handler ran, the rest of
    the finalization did not."""
    result = _python(tmp_path, (
        "import logging, logging.handlers\n"
        "from asr.process_exit import end_process\n"
        "target = logging.FileHandler('run.log')\n"
        "logging.getLogger().addHandler(logging.handlers.MemoryHandler(100, target=target))\n"
        "logging.getLogger().warning('last log line')\n"
        "print('results written', end='')\n"
        "end_process(3)\n"))
    assert result.returncode == 3, result.stderr
    assert result.stdout == "results written"
    assert (tmp_path / "run.log").read_text() == "last log line\n"
    assert (tmp_path / "atexit").exists()
    assert not (tmp_path / "finalized").exists()


def test_end_process_runs_the_atexit_handlers_of_user_code_and_multiprocessing(tmp_path):
    """Handlers registered by user code ran last registered first, as at a normal exit, and one
    that raised (reported on stderr) kept none of them from it; ``multiprocessing``'s own (as a
    DataLoader's workers are its processes) joined the child still at work, whose file is
    there when the parent has ended. ``os._exit`` alone ran none: the child was still
    sleeping. (The child closes the pipes it inherited, stdout and stderr, which the test's
    ``subprocess.run`` reads to their end: open, they kept it waiting for the child however
    the parent ended, and the child's file was there even without the join.)"""
    result = _python(tmp_path, (
        "import atexit, multiprocessing, os, time\n"
        "from asr.process_exit import end_process\n"
        "def work():\n"
        "    os.close(1), os.close(2)\n"
        "    time.sleep(1.0)\n"
        "    open('child-done', 'w').close()\n"
        "order = []\n"
        "atexit.register(lambda: print('handlers:', order))\n"
        "atexit.register(order.append, 'first registered')\n"
        "atexit.register(lambda: 1 / 0)\n"
        "atexit.register(order.append, 'last registered')\n"
        "if __name__ == '__main__':\n"
        "    multiprocessing.get_context('fork').Process(target=work).start()\n"
        "    end_process(0)\n"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "handlers: ['last registered', 'first registered']\n"
    assert "ZeroDivisionError" in result.stderr
    assert (tmp_path / "child-done").exists()
    assert not (tmp_path / "finalized").exists()


def test_end_process_bounds_a_handler_that_never_returns(tmp_path):
    """``multiprocessing``'s handler joins a non-daemonic child; one that never ends (here it
    sleeps; a child whose queue's feeder waits on a pipe no one reads does the same) kept the
    process, done with its work, alive for as long: end_process hung. Past its bound it ends
    with the status it was given, its output flushed where the handlers got that far, and says
    why on stderr. The child, left running, is ended by the test."""
    code = (
        "import multiprocessing, os, sys, time\n"
        "from asr import process_exit\n"
        "process_exit.EXIT_TIMEOUT_SECONDS = 1.0\n"
        "def stuck():\n"
        "    os.close(1), os.close(2)\n"
        "    time.sleep(600)\n"
        "if __name__ == '__main__':\n"
        "    child = multiprocessing.get_context('fork').Process(target=stuck)\n"
        "    child.start()\n"
        "    open('child.pid', 'w').write(str(child.pid))\n"
        "    print('results written', flush=True)\n"
        "    process_exit.end_process(3)\n")
    try:
        result = _python(tmp_path, code)
    finally:
        pid = tmp_path / "child.pid"
        if pid.exists():
            try:
                os.kill(int(pid.read_text()), 9)
            except ProcessLookupError:
                pass
    assert result.returncode == 3, result.stderr
    assert result.stdout == "results written\n"
    assert result.stderr.endswith(
        "asr: the exit handlers (atexit, logging, flushing the output) did not finish in 1 s (a "
        "child process that does not end, or a full pipe?): ending with status 3 without them\n")
    assert not (tmp_path / "finalized").exists()


@pytest.mark.parametrize(("words", "status", "stream", "line"), [
    (["wer", "same.txt", "same.txt"], 0, "stdout", "WER 0.00"),
    (["wer", "absent.txt", "same.txt"], 2, "stderr", "asr wer: "),
])
def test_the_command_line_of_a_marked_process_ends_with_its_status(tmp_path, words, status,
                                                                    stream, line):
    """``asr`` in a process marked by skip_finalization (as setup_distributed marks one): the
    status the command returns (0, or a failure's) and its last lines, without finalization."""
    (tmp_path / "same.txt").write_text("utt1 A B\n")
    result = _python(tmp_path, (
        "import sys\n"
        "from asr.process_exit import skip_finalization\n"
        "from asr.cli.main import main\n"
        "skip_finalization('a test')\n"
        f"sys.exit(main({words!r}))\n"))
    assert result.returncode == status, result.stderr
    assert line in getattr(result, stream)
    assert not (tmp_path / "finalized").exists()


def test_an_unmarked_process_exits_as_usual(tmp_path):
    result = _python(tmp_path, (
        "import sys\n"
        "from asr.cli.main import main\n"
        "sys.exit(main(['wer', 'absent.txt', 'absent.txt']))\n"))
    assert result.returncode == 2 and "asr wer: " in result.stderr
    assert (tmp_path / "finalized").exists()


def test_exit_status_ends_only_a_marked_process(monkeypatch):
    ended = []
    monkeypatch.setattr(process_exit, "end_process", ended.append)
    monkeypatch.setattr(process_exit, "_reason", None)
    assert exit_status(143) == 143 and ended == []
    process_exit.skip_finalization("a test")
    exit_status(138)
    assert ended == [138]


def test_setting_up_a_process_group_marks_the_process(monkeypatch):
    """setup_distributed under torchrun (WORLD_SIZE > 1) marks the process; without a group
    (one process) it does not. torch's group itself is stood in for: its setup is torchrun's."""
    import torch.distributed as dist

    from asr.train import distributed

    monkeypatch.setattr(process_exit, "_reason", None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: None)
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.setup_distributed("cpu")
    assert process_exit._reason is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    distributed.setup_distributed("cpu")
    assert "gloo" in process_exit._reason
