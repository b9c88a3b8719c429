"""The timing helpers of tools/bench: the first call of an engine or mode (one-time set-up and
allocation) is not among the timed runs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / f"tools/bench/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _ColdFirst:
    """A stand-in whose first call per options takes ``cold`` seconds and later calls none."""

    def __init__(self, cold: float = 0.3) -> None:
        self.cold = cold
        self.seen: set = set()
        self.calls: list = []

    def __call__(self, *args, **kwargs) -> None:
        key = tuple(sorted(kwargs.items()))
        self.calls.append(kwargs)
        if key not in self.seen:
            self.seen.add(key)
            time.sleep(self.cold)

    transcribe = __call__


def test_onnx_bench_does_not_time_the_first_run():
    run = _ColdFirst()
    low, median = _bench("onnx")._timed(run, 2, 1.0)
    assert median < 0.1 and low < 0.1, (low, median)
    assert len(run.calls) == 3  # one warm-up, two timed


def test_transcribe_bench_warms_up_each_mode_before_timing_it():
    model = _ColdFirst()
    audios = [object()] * 4
    best = _bench("transcribe")._measure(model, audios, 1, batch_size=1, streaming=True)
    assert best < 0.1, best
    assert model.calls[0] == {"batch_size": 1, "streaming": True}


@pytest.mark.parametrize("name", ["decode", "encoder", "onnx", "rnnt_loss", "serve",
                                  "train_throughput", "transcribe"])
def test_a_bench_run_as_a_script_measures_its_own_checkout(name, tmp_path):
    """With another ``asr`` importable first (an editable install of another checkout, or
    PYTHONPATH), a bench run as ``python tools/bench/NAME.py`` still imports the asr of the
    checkout it belongs to."""
    other = tmp_path / "asr"
    other.mkdir()
    (other / "__init__.py").write_text("OTHER = True\n")
    script = ROOT / "tools" / "bench" / f"{name}.py"
    code = (f"import runpy, sys; sys.path[0] = {str(script.parent)!r}; "
            f"runpy.run_path({str(script)!r}, run_name='bench'); "
            "import asr; print(asr.__file__)")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(ROOT / "asr" / "__init__.py"), proc.stdout
