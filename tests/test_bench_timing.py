"""The timing helpers of tools/bench: the first call of an engine or mode (one-time set-up and
allocation) is not among the timed runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_helpers import load_bench

ROOT = Path(__file__).resolve().parents[1]


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
    low, median = load_bench("onnx")._timed(run, 2, 1.0)
    assert median < 0.1 and low < 0.1, (low, median)
    assert len(run.calls) == 3  # one warm-up, two timed


def test_transcribe_bench_warms_up_each_mode_before_timing_it():
    model = _ColdFirst()
    audios = [object()] * 4
    best = load_bench("transcribe")._measure(model, audios, 1, batch_size=1, streaming=True)
    assert best < 0.1, best
    assert model.calls[0] == {"batch_size": 1, "streaming": True}


#: The benches run as scripts; onnx first, in a process that has imported nothing of the others
#: (its own name would shadow the onnx package on the script's path).
BENCHES = ["onnx", "decode", "encoder", "rnnt_loss", "serve", "train_throughput", "transcribe"]

#: Runs each script of argv as ``python tools/bench/NAME.py`` would (its folder first on the path,
#: not as ``__main__``) and notes which ``asr`` it left importable; before each, the path as it
#: was and neither asr nor a bench module imported, so that each script finds asr on its own.
_WHICH_ASR = """
import json, os, runpy, sys
path, found = list(sys.path), {}
for script in sys.argv[1:]:
    folder = os.path.dirname(script)
    for name, module in list(sys.modules.items()):
        where = getattr(module, "__file__", None) or ""
        if name == "asr" or name.startswith("asr.") or os.path.dirname(where) == folder:
            del sys.modules[name]
    sys.path[:] = [folder, *path[1:]]
    runpy.run_path(script, run_name="bench")
    import asr
    found[script] = asr.__file__
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def bench_asr(tmp_path_factory) -> dict[str, str]:
    """The ``asr.__file__`` each bench of :data:`BENCHES` imports, run as a script, with another
    ``asr`` importable first (an editable install of another checkout, or PYTHONPATH). One
    process for all (each its own would import torch again: seconds)."""
    tmp_path = tmp_path_factory.mktemp("other_asr")
    other = tmp_path / "asr"
    other.mkdir()
    (other / "__init__.py").write_text("OTHER = True\n")
    scripts = [str(ROOT / "tools" / "bench" / f"{name}.py") for name in BENCHES]
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", _WHICH_ASR, *scripts], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return {Path(script).stem: path for script, path in found.items()}


@pytest.mark.parametrize("name", BENCHES)
def test_a_bench_run_as_a_script_measures_its_own_checkout(name, bench_asr):
    """With another ``asr`` importable first, a bench run as ``python tools/bench/NAME.py``
    still imports the asr of the checkout it belongs to."""
    assert bench_asr[name] == str(ROOT / "asr" / "__init__.py"), bench_asr


def test_transcribe_bench_times_streaming_as_often_as_the_rows_it_is_compared_with(monkeypatch):
    """The speed-up column divides the batch-1 row's best time by each row's: a streaming row
    timed once against a best of ``--repeat`` would be handicapped."""
    import asr.audio
    import asr.runtime.offline

    model = _ColdFirst(cold=0.0)
    model.sample_rate = 16000
    monkeypatch.setattr(asr.runtime.offline, "load_model", lambda package, device: model)
    monkeypatch.setattr(asr.audio, "decode_audio",
                        lambda path, rate: type("Audio", (), {"samples": np.zeros(rate)})())
    threads = torch.get_num_threads()
    try:
        assert load_bench("transcribe").main(["--model", "pkg", "--files", "a.wav", "b.wav",
                                          "--batch-size", "2", "--repeat", "3",
                                          "--streaming"]) == 0
    finally:
        torch.set_num_threads(threads)
    runs: dict = {}
    for call in model.calls:
        key = (call["batch_size"], call.get("streaming", False))
        runs[key] = runs.get(key, 0) + 1
    # every mode: one untimed warm-up, then --repeat timed runs
    assert runs == {(1, False): 4, (2, False): 4, (1, True): 4, (2, True): 4}, runs
