"""The torchrun test helper reports a failure with the processes' output and retries only a
socket set-up failure (before any process's group was up), once.

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
from torchrun_helpers import UP_LINE, run_scripts, run_torchrun

#: Counts its runs in COUNT_DIR; fails with MESSAGE in the first FAIL_UNTIL of them, after its
#: up line with UP_FIRST (its process group was up), and prints its up line when it passes
#: (none with NO_UP). Each run finds FRESH empty, and leaves a file there.
SCRIPT = r'''
import os, sys
sys.path.insert(0, os.environ["HELPERS_DIR"])
from torchrun_helpers import report_up
count = os.path.join(os.environ["COUNT_DIR"], "attempts")
n = int(open(count).read()) + 1 if os.path.exists(count) else 1
open(count, "w").write(str(n))
if os.listdir(os.environ["FRESH"]):
    sys.exit(f"FRESH holds {os.listdir(os.environ['FRESH'])}")
open(os.path.join(os.environ["FRESH"], f"attempt{n}"), "w").close()
if n <= int(os.environ["FAIL_UNTIL"]):
    if os.environ.get("UP_FIRST"):
        report_up(0)
    sys.stderr.write(os.environ["MESSAGE"] + "\n")
    sys.exit(1)
if not os.environ.get("NO_UP"):
    report_up(0)
'''


def _run(tmp_path, fail_until: int, message: str, up: str | None = UP_LINE, **env: str):
    """Runs :data:`SCRIPT` in one process; its number of runs is left in ``_run.attempts``."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, COUNT_DIR=str(tmp_path), FRESH=str(tmp_path / "fresh"),
               HELPERS_DIR=os.path.dirname(torchrun_helpers.__file__),
               FAIL_UNTIL=str(fail_until), MESSAGE=message, **env)
    try:
        return run_torchrun([str(script)], nproc=1, env=env, timeout=120,
                            fresh=tmp_path / "fresh", up=up)
    finally:
        _run.attempts = int((tmp_path / "attempts").read_text())


#: ``python -c PLAIN --nproc-per-node=N SCRIPT``: runs SCRIPT as ``__main__`` in this process.
PLAIN = (
    "import runpy, sys; sys.argv = sys.argv[2:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


@pytest.fixture
def plain_launcher(monkeypatch):
    monkeypatch.setattr(torchrun_helpers, "TORCHRUN", (sys.executable, "-c", PLAIN))


def test_a_socket_setup_failure_is_run_once_more(tmp_path, plain_launcher):
    """Before the group was up; the retry finds the fresh folder empty (the script checks)."""
    _run(tmp_path, 1, "RuntimeError: Gloo connectFullMesh failed with Connect timeout")
    assert _run.attempts == 2
    assert os.listdir(tmp_path / "fresh") == ["attempt2"]


def test_a_socket_setup_failure_twice_fails_with_the_output(tmp_path, plain_launcher):
    with pytest.raises(AssertionError, match="Connection reset by peer"):
        _run(tmp_path, 2, "Connection reset by peer")
    assert _run.attempts == 2


def test_a_socket_error_after_the_group_was_up_fails_at_once(tmp_path, plain_launcher):
    """A rank that fails inside a collective leaves its peers "Connection closed by peer": once
    a process's group was up, the error is the code's, and a retry that passed hid it."""
    with pytest.raises(AssertionError, match="Connection closed by peer"):
        _run(tmp_path, 1, "Connection closed by peer", UP_FIRST="1")
    assert _run.attempts == 1


def test_without_an_up_line_no_failure_is_retried(tmp_path, plain_launcher):
    """Nothing tells a set-up failure from a later one: the socket error fails the test."""
    with pytest.raises(AssertionError, match="Connection reset by peer"):
        _run(tmp_path, 1, "Connection reset by peer", up=None)
    assert _run.attempts == 1


def test_a_run_that_passes_without_its_up_line_is_refused(tmp_path, plain_launcher):
    """An up line that the processes never print (a script without :func:`report_up`, a log
    line that changed) would make every socket error look like a set-up failure."""
    with pytest.raises(RuntimeError, match=r"ranks \[0\] never printed their line"):
        _run(tmp_path, 0, "", NO_UP="1")


def test_any_other_failure_fails_at_once_with_the_output(tmp_path):
    with pytest.raises(AssertionError, match="ValueError: bad shape"):
        _run(tmp_path, 5, "ValueError: bad shape")
    assert _run.attempts == 1


#: A driver of :func:`torchrun_helpers.run_scripts` for one process (rank 0): notes each launch
#: (its root folder) in LAUNCHES; with SETUP_FAILS (a file that it makes), its first launch
#: fails as a socket set-up does, before its up line; with FAIL_AT_EXIT, it fails after its
#: last script.
DRIVER = r'''
import json, os, runpy, sys
sys.path.insert(0, os.environ["HELPERS_DIR"])
from torchrun_helpers import SCRIPTS_ENV, done_marker, report_up
root = os.environ["OUT_DIR"]
with open(os.environ["LAUNCHES"], "a") as f:
    f.write(os.path.basename(root) + "\n")
if os.environ.get("SETUP_FAILS") and not os.path.exists(os.environ["SETUP_FAILS"]):
    open(os.environ["SETUP_FAILS"], "w").close()
    sys.exit("RuntimeError: Gloo connectFullMesh failed with Connection refused")
report_up(0)
for name, path in json.loads(os.environ[SCRIPTS_ENV]).items():
    os.environ["OUT_DIR"] = os.path.join(root, name)
    os.makedirs(os.environ["OUT_DIR"])
    runpy.run_path(path, run_name="__main__")
    done_marker(root, name, 0).parent.mkdir(exist_ok=True)
    done_marker(root, name, 0).touch()
if os.environ.get("FAIL_AT_EXIT"):
    sys.exit("FailedAtExit")
'''

WRITES = "import os; open(os.path.join(os.environ['OUT_DIR'], 'out'), 'w').write('ok')\n"


def _run_scripts(tmp_path, scripts: dict[str, str], **env: str):
    """``scripts`` (name: source) through :func:`torchrun_helpers.run_scripts` with
    :data:`DRIVER`; returns its outcome and the root folders of the launches."""
    launches = tmp_path / "launches"
    env = dict(os.environ, HELPERS_DIR=os.path.dirname(torchrun_helpers.__file__),
               LAUNCHES=str(launches), **env)
    runs = run_scripts(DRIVER, scripts, tmp_path / "runs", nproc=1, env=env, timeout=120)
    return runs, launches.read_text().split()


def test_scripts_that_pass_run_in_one_launch(tmp_path, plain_launcher):
    runs, launches = _run_scripts(tmp_path, {"a": WRITES, "b": WRITES})
    assert launches == ["run1"] and runs.failures == {}
    assert [(runs[n] / "out").read_text() for n in ("a", "b")] == ["ok", "ok"]


def test_a_failing_script_fails_its_own_test_alone(tmp_path, plain_launcher):
    """The script that failed gets the run's output once; the one before it passed in the same
    run, the one after it runs again in a launch of its own (it had not run)."""
    broken = "raise ValueError('b is broken')\n"
    runs, launches = _run_scripts(tmp_path, {"a": WRITES, "b": broken, "c": WRITES})
    assert launches == ["run1", "run2"]
    assert runs["a"] == tmp_path / "runs" / "run1" / "a"
    assert runs["c"] == tmp_path / "runs" / "run2" / "c"
    assert [(runs[n] / "out").read_text() for n in ("a", "c")] == ["ok", "ok"]
    assert list(runs.failures) == ["b"]
    with pytest.raises(pytest.fail.Exception) as failed:
        runs["b"]
    assert str(failed.value).count("ValueError: b is broken") == 1
    assert "script 'b' failed" in str(failed.value)


def test_a_failure_after_the_last_script_fails_that_scripts_test(tmp_path, plain_launcher):
    """Every script returned, then the processes failed on their way out: not hidden, the last
    script's test reports it."""
    runs, launches = _run_scripts(tmp_path, {"a": WRITES, "b": WRITES}, FAIL_AT_EXIT="1")
    assert launches == ["run1"] and (runs["a"] / "out").read_text() == "ok"
    with pytest.raises(pytest.fail.Exception, match=r"(?s)after its last script.*FailedAtExit"):
        runs["b"]


#: A script whose first run fails with a socket error (after the driver's up line).
SOCKET_FAILURE_ONCE = r'''
import os, sys
tries = os.path.join(os.environ["TRIES_DIR"], "b")
if not os.path.exists(tries):
    open(tries, "w").close()
    sys.exit("RuntimeError: Connection reset by peer")
open(os.path.join(os.environ["OUT_DIR"], "out"), "w").write("ok")
'''


def test_a_socket_error_in_a_script_fails_that_script(tmp_path, plain_launcher):
    """The driver's group was up: script b's socket error is b's failure, not retried. The
    launch was retried, and b, passing on its second run, hid it; c runs in a launch of its
    own."""
    tries = tmp_path / "tries"
    tries.mkdir()
    runs, launches = _run_scripts(tmp_path, {"a": WRITES, "b": SOCKET_FAILURE_ONCE, "c": WRITES},
                                  TRIES_DIR=str(tries))
    assert launches == ["run1", "run2"] and list(runs.failures) == ["b"]
    with pytest.raises(pytest.fail.Exception, match="Connection reset by peer"):
        runs["b"]
    assert [(runs[n] / "out").read_text() for n in ("a", "c")] == ["ok", "ok"]


def test_a_driver_that_fails_setting_up_is_launched_again(tmp_path, plain_launcher):
    """A socket error before the driver's up line: the launch is retried in the same root (made
    anew), and every script runs in the retry."""
    runs, launches = _run_scripts(tmp_path, {"a": WRITES, "b": WRITES},
                                  SETUP_FAILS=str(tmp_path / "setup-failed"))
    assert launches == ["run1", "run1"] and runs.failures == {}
    assert [(runs[n] / "out").read_text() for n in ("a", "b")] == ["ok", "ok"]


def test_a_driver_that_writes_no_done_marker_is_refused(tmp_path, plain_launcher):
    """Without its markers a failure could not be told to its script: the helper refuses such a
    driver even when it passes."""
    driver = ("import os, sys\nsys.path.insert(0, os.environ['HELPERS_DIR'])\n"
              "from torchrun_helpers import report_up\nreport_up(0)\n")
    env = dict(os.environ, HELPERS_DIR=os.path.dirname(torchrun_helpers.__file__))
    with pytest.raises(AssertionError, match=r"without writing the done markers of \['a'\]"):
        run_scripts(driver, {"a": WRITES}, tmp_path / "runs", nproc=1, env=env, timeout=60)


def test_a_process_killed_by_a_signal_leaves_its_python_stack(tmp_path, plain_launcher):
    """A C++ ``std::terminate`` in a worker ends it with SIGABRT and no Python traceback; with
    faulthandler on, the output says where each thread of the process was."""
    script = tmp_path / "script.py"
    script.write_text("import os\n\ndef where_it_aborted():\n    os.abort()\n\n"
                      "where_it_aborted()\n")
    with pytest.raises(AssertionError, match=r"(?s)Fatal Python error: Aborted.*where_it_aborted"):
        run_torchrun([str(script)], nproc=1, env=dict(os.environ), timeout=60)


#: Runs until it is stopped; SIGTERM (what torchrun passes on to its workers) ends it with a
#: note in TERMINATED.
RUNS_ON = r'''
import os, signal, sys, time

def stop(signum, frame):
    open(os.environ["TERMINATED"], "w").close()
    sys.exit(143)

signal.signal(signal.SIGTERM, stop)
print("started, now stuck", flush=True)
while True:
    time.sleep(0.05)
'''


def test_a_run_past_its_timeout_is_stopped_as_torchrun_stops_its_workers(tmp_path,
                                                                          plain_launcher):
    """A hung run fails with its output, after SIGTERM to the launcher, which torchrun passes
    on to its workers. It was SIGKILLed instead: its workers, each in a session of its own, ran
    on past the test (or hung in a collective for gloo's 30 minutes), and the TimeoutExpired
    said nothing of where they were."""
    script = tmp_path / "script.py"
    script.write_text(RUNS_ON)
    terminated = tmp_path / "terminated"
    env = dict(os.environ, TERMINATED=str(terminated))
    with pytest.raises(AssertionError, match=r"(?s)ran past 1 s.*started, now stuck"):
        run_torchrun([str(script)], nproc=1, env=env, timeout=1)
    assert terminated.exists()

