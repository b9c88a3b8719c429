import gzip
import os
import subprocess
from pathlib import Path

import pytest
import torch

pytest_plugins = ["pytester"]

#: the thread-count variables a child process' torch, OpenMP and MKL read when they start
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

# One intra-op thread for the tests in this process and, through the environment torch (and OpenMP
# / MKL) read at start-up, in the processes they start (CLI runs, torchrun, tools/ scripts; an
# ``asr`` command with a thread choice of its own, such as ``asr train``'s cores per process, still
# applies that). Two cores here and in CI, shared with those subprocesses (and on a development box
# with other work): with two threads every parallel op waits for a second thread that a busy core
# has descheduled. On the shared 2-core machine, tests/test_recipes.py and tests/test_model.py took
# 47.9 s with two threads and 5.5 s with one; the tiny streaming encoder of tests/gpu, 2.6 s per
# forward with two, 0.008 s with one. A test about threads sets what it needs (its own subprocess
# environment included).
os.environ.update({name: "1" for name in THREAD_ENV})
torch.set_num_threads(1)

#: characters of a failed subprocess' captured stdout / stderr shown in a failure report
SUBPROCESS_TAIL = 6000


@pytest.fixture(scope="session")
def run_tmp_path(tmp_path_factory, pytestconfig) -> Path:
    """The base temporary directory of the whole run, which its pytest-xdist workers (each with
    a base directory of its own inside it) share: a set-up kept there through
    :func:`asr.testing.once.made_once` is made once per run rather than once per worker.
    Serially, the session's base directory. A worker is told by its config (``workerinput``),
    not by ``PYTEST_XDIST_WORKER``: a pytest that a worker's test starts (pytester) inherits
    that variable but is no worker."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if hasattr(pytestconfig, "workerinput") else base


@pytest.fixture(scope="session")
def tiny_models_dir(run_tmp_path) -> Path:
    """Where the session fixtures keep :func:`asr.testing.packages.trained_tiny_package`'s
    models, once per run."""
    return run_tmp_path / "tiny_models"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts with one intra-op thread, whatever an earlier test left: an in-process
    ``asr train`` sets its cores per process (2 here) and keeps them, as a user's run should."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that fails on ``subprocess.run(..., check=True, capture_output=True)`` reports the
    process' captured output (its tail), which ``CalledProcessError`` alone does not print."""
    outcome = yield
    report = outcome.get_result()
    # A captured log or output holding a name that is not UTF-8 (os.fsdecode's surrogates, as
    # in tests/test_fileio.py) cannot be sent from an xdist worker: the run stopped with an
    # INTERNALERROR (UnicodeEncodeError). Such characters are shown as escapes instead.
    report.sections = [(title, text.encode("utf-8", "backslashreplace").decode("utf-8"))
                       for title, text in report.sections]
    error = call.excinfo.value if call.excinfo is not None else None
    if not isinstance(error, subprocess.CalledProcessError):
        return
    for name, data in (("stdout", error.stdout), ("stderr", error.stderr)):
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        if data:
            report.sections.append((f"Captured {name} of the failed subprocess",
                                    data[-SUBPROCESS_TAIL:]))


@pytest.fixture
def gzip_copies(tmp_path):
    """``write(stem, data)`` stores the bytes ``data`` in ``tmp_path`` three ways and returns
    the paths: plain (``<stem>.txt``), gzip under a .gz name (``<stem>.txt.gz``) and gzip under
    a plain name (``<stem>-gzip.txt``), for readers that must tell gzip by the first bytes."""

    def write(stem: str, data: bytes) -> list[Path]:
        plain, named, unnamed = (tmp_path / f"{stem}.txt", tmp_path / f"{stem}.txt.gz",
                                 tmp_path / f"{stem}-gzip.txt")
        plain.write_bytes(data)
        named.write_bytes(gzip.compress(data))
        unnamed.write_bytes(gzip.compress(data))
        return [plain, named, unnamed]

    return write
