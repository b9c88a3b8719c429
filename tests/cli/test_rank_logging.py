"""The console log of the ranks of a ``torchrun`` job (``RANK``, ``WORLD_SIZE`` as torchrun sets
them): rank 0 logs INFO, the others WARNING and above, naming their rank; a process started
otherwise logs at ``--log-level``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _wer(tmp_path: Path, hyp: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``asr wer`` of a one-line reference against ``hyp`` (INFO: the report it wrote) with
    ``env`` added to the environment."""
    ref = tmp_path / "ref.txt"
    ref.write_text("u1 A B\n")
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "asr.cli.main", "wer", str(ref), hyp,
         "--report", str(tmp_path / f"report{env.get('RANK', '')}.txt")],
        env=dict(environ, **env), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("env", "info"), [
    ({}, True), ({"RANK": "0", "WORLD_SIZE": "2"}, True),
    ({"RANK": "1", "WORLD_SIZE": "2"}, False), ({"RANK": "0", "WORLD_SIZE": "1"}, True)])
def test_only_rank_0_of_a_job_logs_info_lines_to_the_console(tmp_path, env, info):
    """Every rank logged its INFO lines to stderr, so that torchrun's console held each of them
    once per process."""
    run = _wer(tmp_path, str(tmp_path / "ref.txt"), **env)
    assert run.returncode == 0, run.stderr
    assert ("INFO asr.cli.wer: wrote " in run.stderr) == info, run.stderr
    assert " rank " not in run.stderr


def test_a_failure_on_another_rank_reaches_the_console_naming_the_rank(tmp_path):
    missing = tmp_path / "missing.txt"
    run = _wer(tmp_path, str(missing), RANK="3", WORLD_SIZE="4")
    assert run.returncode == 2
    assert f" ERROR rank 3 asr.cli.wer: asr wer: HYP {missing}: no such file" in run.stderr


_LOG_THREE = (
    "import logging\n"
    "from asr.cli.main import console_logging\n"
    "from asr.constants import PER_RANK\n"
    "console_logging(logging.INFO)\n"
    "log = logging.getLogger('asr.data.filtering')\n"
    "log.warning('dropped 3 cuts: too short')\n"
    "log.warning('my own batches saved', extra=PER_RANK)\n"
    "log.error('failed here')\n"
)


@pytest.mark.parametrize(("rank", "shown"), [
    ("0", ["WARNING asr.data.filtering: dropped 3 cuts", "WARNING asr.data.filtering: my own",
           "ERROR asr.data.filtering: failed here"]),
    ("1", ["WARNING rank 1 asr.data.filtering: my own",
           "ERROR rank 1 asr.data.filtering: failed"])])
def test_a_warning_the_same_on_every_rank_reaches_the_console_once(rank, shown):
    """Every rank logged the warnings that are the same on all of them (the data filter's
    counts, a config's, the dev/train overlap), tagged by rank: a 4-process job showed each 4
    times. Rank 0 alone logs them now; the others log their errors and the warnings marked as
    their own (:data:`asr.constants.PER_RANK`)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, "-c", _LOG_THREE],
                         env=dict(environ, RANK=rank, WORLD_SIZE="4"), capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == len(shown), run.stderr
    assert all(expected in line for line, expected in zip(lines, shown)), run.stderr
