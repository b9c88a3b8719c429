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
from torchrun_helpers import run_scripts, run_torchrun

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
PLAIN = (
    "import runpy, sys; sys.argv = sys.argv[2:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


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


#: A driver of :func:`torchrun_helpers.run_scripts` for one process (rank 0): notes each launch
#: (its root folder) in LAUNCHES and, with FAIL_AT_EXIT, fails after its last script.
DRIVER = r'''
import json, os, runpy, sys
sys.path.insert(0, os.environ["HELPERS_DIR"])
from torchrun_helpers import SCRIPTS_ENV, done_marker
root = os.environ["OUT_DIR"]
with open(os.environ["LAUNCHES"], "a") as f:
    f.write(os.path.basename(root) + "\n")
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


#: A script that passes on its first run and fails on every later one (its runs counted in
#: TRIES_DIR, across launches).
FAILS_WHEN_RUN_AGAIN = r'''
import os
tries = os.path.join(os.environ["TRIES_DIR"], "a")
n = int(open(tries).read()) + 1 if os.path.exists(tries) else 1
open(tries, "w").write(str(n))
if n > 1:
    raise ValueError("a fails when run again")
open(os.path.join(os.environ["OUT_DIR"], "out"), "w").write("ok")
'''

#: A script whose first run fails as a socket set-up does (run_torchrun retries it once).
SOCKET_FAILURE_ONCE = r'''
import os, sys
tries = os.path.join(os.environ["TRIES_DIR"], "b")
if not os.path.exists(tries):
    open(tries, "w").close()
    sys.exit("RuntimeError: Connection reset by peer")
open(os.path.join(os.environ["OUT_DIR"], "out"), "w").write("ok")
'''


def test_a_retried_launch_starts_from_an_empty_root(tmp_path, plain_launcher):
    """The launch is retried after a socket set-up failure in script b, and script a, which had
    passed in the failed attempt, fails in the retry: a's failure is a's. The retry ran in the
    failed attempt's root, where a's done marker and output stood for it: the failure was put
    on b and a's test passed on the failed attempt's output."""
    tries = tmp_path / "tries"
    tries.mkdir()
    runs, launches = _run_scripts(tmp_path, {"a": FAILS_WHEN_RUN_AGAIN, "b": SOCKET_FAILURE_ONCE},
                                  TRIES_DIR=str(tries))
    assert launches == ["run1", "run1", "run2"]
    assert list(runs.failures) == ["a"]
    with pytest.raises(pytest.fail.Exception, match="a fails when run again"):
        runs["a"]
    assert (runs["b"] / "out").read_text() == "ok"


def test_a_driver_that_writes_no_done_marker_is_refused(tmp_path, plain_launcher):
    """Without its markers a failure could not be told to its script: the helper refuses such a
    driver even when it passes."""
    with pytest.raises(AssertionError, match=r"without writing the done markers of \['a'\]"):
        run_scripts("pass\n", {"a": WRITES}, tmp_path / "runs", nproc=1, env=dict(os.environ),
                    timeout=60)


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

