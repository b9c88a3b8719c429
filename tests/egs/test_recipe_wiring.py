"""The recipe scripts' own logic, against a stub ``asr`` (no model, no data, a second each): option
checking, which files the stages hand each other, and failures that must stop a script."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRI = REPO / "egs" / "librispeech" / "ASR"
RUN, PREPARE = LIBRI / "run.sh", LIBRI / "prepare.sh"
MINI_TTS = REPO / "egs" / "mini_tts" / "ASR" / "run.sh"
END = "@@end"

# Records each call's arguments (one a line, END after the last), fails the subcommand named in
# $STUB_FAIL, and prints a WER summary path for the decoders (the scripts read what they print).
STUB = f"""#!/usr/bin/env bash
printf '%s\\n' "$@" {END} >> "$STUB_LOG"
[ "$1" = "${{STUB_FAIL:-}}" ] && exit 2
case "$1" in
  decode|decode-onnx) echo "exp/stub/wer-summary-$1.txt" ;;
esac
exit 0
"""


@pytest.fixture
def stub(tmp_path: Path):
    """Runs a script with a stub venv; returns (run, calls): calls() lists each call's argv."""
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "asr").write_text(STUB)
    (venv_bin / "asr").chmod((venv_bin / "asr").stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.txt"

    def run(script: Path, *args: str, fail: str = "") -> subprocess.CompletedProcess:
        env = dict(os.environ, ASR_VENV=str(tmp_path / "venv"), STUB_LOG=str(log), STUB_FAIL=fail)
        return subprocess.run(["bash", str(script), "--skip-setup", "true", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    def calls() -> list[list[str]]:
        if not log.is_file():
            return []
        out, call = [], []
        for line in log.read_text().splitlines():
            if line == END:
                out.append(call)
                call = []
            else:
                call.append(line)
        return out

    return run, calls


@pytest.mark.parametrize("script", [RUN, PREPARE, MINI_TTS])
@pytest.mark.parametrize("args, message", [
    (["--stage", "six"], "--stage takes an integer, got 'six'"),
    (["--stop-stage=5x"], "--stop-stage takes an integer, got '5x'"),
    (["--skip-setup", "yes"], "--skip-setup takes true or false, got 'yes'"),
    (["--stage", "3", "extra"], "unexpected argument 'extra'"),
])
def test_options_are_checked_against_their_defaults(stub, tmp_path, script, args, message):
    run, calls = stub
    result = run(script, "--work-dir", str(tmp_path / "work"), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert calls() == [] and "done (stages" not in result.stderr


@pytest.mark.parametrize("script", [RUN, MINI_TTS])
def test_an_unquoted_train_args_value_is_refused(stub, tmp_path, script):
    """Only "--set" is --train-args' value: the override after it must not be dropped silently."""
    run, calls = stub
    result = run(script, "--work-dir", str(tmp_path / "work"), "--stage", "4",
                 "--train-args", "--set", "train.max_epochs=2")
    assert result.returncode == 2 and "unexpected argument 'train.max_epochs=2'" in result.stderr
    assert calls() == []


def test_typed_options_still_take_their_values(stub, tmp_path):
    run, calls = stub
    result = run(RUN, "--work-dir", str(tmp_path / "work"), "--stage", "-1", "--stop-stage=-1",
                 "--use-shar", "false", "--lm-weight", "0.45", "--train-args", "--set a=1 b=2")
    assert result.returncode == 0, result.stderr
    assert "done (stages -1..-1)" in result.stderr


def test_full_libri_takes_only_true_or_false(stub, tmp_path):
    """`--full-libri yes` used to prepare train-clean-100 only, as `false` does."""
    run, _ = stub
    result = run(PREPARE, "--work-dir", str(tmp_path / "work"), "--full-libri", "yes")
    assert result.returncode == 2 and "--full-libri takes true or false" in result.stderr
