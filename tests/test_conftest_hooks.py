"""The suite's conftest: the failure report shows what a failed ``check=True`` subprocess
printed; every test, and every process a test starts, runs torch with one intra-op thread."""

from __future__ import annotations

import re
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")


def test_a_failed_checked_subprocess_reports_its_captured_output(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        """
        import subprocess, sys

        def test_fails():
            subprocess.run([sys.executable, "-c",
                            "import sys; print('OUT-MARK'); sys.stderr.write('ERR-MARK'); "
                            "sys.exit(3)"],
                           check=True, capture_output=True)

        def test_fails_in_text_mode():
            subprocess.run([sys.executable, "-c",
                            "import sys; sys.stderr.write('TXT-MARK'); sys.exit(1)"],
                           check=True, capture_output=True, text=True)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*Captured stdout of the failed subprocess*", "OUT-MARK",
        "*Captured stderr of the failed subprocess*", "ERR-MARK",
    ])
    result.stdout.fnmatch_lines(["*Captured stderr of the failed subprocess*", "TXT-MARK"])


def test_every_test_starts_with_one_thread_whatever_an_earlier_test_left(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        """
        import torch

        def test_leaves_two():
            torch.set_num_threads(2)  # as an in-process `asr train` does on 2 cores

        def test_next_has_one():
            assert torch.get_num_threads() == 1
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_a_started_process_runs_torch_with_one_thread(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        """
        import subprocess, sys

        def test_child():
            code = ("import os, torch; "
                    "print(os.environ.get('OMP_NUM_THREADS'), torch.get_num_threads())")
            out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                 text=True).stdout
            assert out.split() == ["1", "1"]
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_tiny_models_folder_is_shared_by_the_xdist_workers_of_a_run(pytester):
    """Each xdist worker has a base temporary directory of its own: the tiny models kept there
    were trained once per worker. ``tiny_models_dir`` is the run's, whichever worker asks; a
    serial pytest that a worker's test starts (here, under ``-n 2``) has its own, though it
    inherits the worker's ``PYTEST_XDIST_WORKER``."""
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_where(n, tiny_models_dir, pytestconfig):
            worker = getattr(pytestconfig, "workerinput", {}).get("workerid", "-")
            print("WHERE", worker, tiny_models_dir)
        """
    )
    base = pytester.path / "base"
    serial = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:xdist", "-s",
                                f"--basetemp={base}")
    serial.assert_outcomes(passed=4)
    assert set(re.findall(r"WHERE (\S+) (\S+)", serial.stdout.str())) == {
        ("-", str(base / "tiny_models"))}
    parallel = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2",
                                             "--dist", "load", "-rA", f"--basetemp={base}")
    parallel.assert_outcomes(passed=4)
    shared = str(base / "tiny_models")
    assert set(re.findall(r"WHERE (\S+) (\S+)", parallel.stdout.str())) == {
        ("gw0", shared), ("gw1", shared)}
