"""A train + decode run prints no warning a user cannot act on (lhotse's eager-CutSet warning
among them): both run as a user runs them, and their stderr holds no Python warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from train_helpers import tiny_experiment, write_yaml

REPO = Path(__file__).resolve().parents[2]
_WARNING = re.compile(r"\w*Warning\b|warnings\.warn")


def _asr(*args: str) -> str:
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)  # the user's default warning filters
    proc = subprocess.run([sys.executable, "-m", "asr.cli.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_train_and_decode_print_no_warnings(tiny_corpus, tmp_path):
    config = write_yaml(tiny_experiment(tiny_corpus, max_epochs=1), tmp_path / "recipe.yaml")
    exp = tmp_path / "exp"
    logs = _asr("train", "--config", str(config), "--exp-dir", str(exp))
    logs += _asr("decode", "--exp-dir", str(exp), "--searcher", "greedy")
    warnings = [line for line in logs.splitlines() if _WARNING.search(line)]
    assert warnings == [], "\n".join(warnings)
    assert "dev WER" in logs and "test-clean transducer_greedy" in logs
