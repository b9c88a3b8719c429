"""The timing of tools/bench: the first call of an engine or mode (one-time set-up and
allocation) is not among the timed runs, and every bench reports the median of its repeats."""

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
    median = load_bench("onnx")._rtf(run, 2, 1.0)
    assert median < 0.1, median
    assert len(run.calls) == 3  # one warm-up, two timed


def test_transcribe_bench_warms_up_each_mode_before_timing_it():
    model = _ColdFirst()
    audios = [object()] * 4
    median = load_bench("transcribe")._measure(model, audios, 1, batch_size=1, streaming=True)
    assert median < 0.1, median
    assert model.calls[0] == {"batch_size": 1, "streaming": True}


class _Clock:
    """``time.perf_counter`` for the timing helper: each timed run lasts the next of
    ``durations`` seconds (a run reads the clock twice)."""

    def __init__(self, durations: list[float]) -> None:
        self.readings = iter([t for d in durations for t in (0.0, d)])

    def perf_counter(self) -> float:
        return next(self.readings)


def test_the_benches_report_the_median_of_their_repeats_not_the_best(monkeypatch):
    """One convention for every bench that times repeats (tools/bench/_timing.py): the encoder
    and transcribe benches kept the best run, the decode and rnnt_loss benches the median and
    the onnx bench both, so their tables compared a lucky run with a typical one."""
    import tools.bench._timing as timing

    durations = [4.0, 1.0, 3.0]  # best 1, median 3
    monkeypatch.setattr(timing, "time", _Clock(durations * 4))
    assert timing.median_seconds(lambda: None, 3) == 3.0
    assert load_bench("transcribe")._measure(_ColdFirst(0.0), [object()] * 2, 3) == 3.0
    assert load_bench("onnx")._rtf(lambda: None, 3, 2.0) == 1.5
    encoder = load_bench("encoder")
    row = encoder.bench_preset("tiny", 2.0, [], 3, "cpu")  # 200 frames: 2 s of audio
    assert row["offline_ms_per_s"] == 1000.0 * 3.0 / 2.0, row
    for name in ("decode", "encoder", "onnx", "rnnt_loss", "transcribe"):
        assert "median" in load_bench(name).__doc__, name


def test_the_timing_helper_warms_up_as_asked():
    """One untimed call first: of ``run`` itself, of a cheaper call given instead, or none
    when the caller has warmed up (the rnnt_loss bench's two steps before its timed ones)."""
    from tools.bench._timing import median_seconds

    calls: list[str] = []
    median_seconds(lambda: calls.append("run"), 2)
    assert calls == ["run"] * 3
    calls.clear()
    median_seconds(lambda: calls.append("run"), 2, warm_up=lambda: calls.append("warm"))
    assert calls == ["warm", "run", "run"]
    calls.clear()
    median_seconds(lambda: calls.append("run"), 2, warm_up=False)
    assert calls == ["run", "run"]
    with pytest.raises(ValueError, match="repeats must be at least 1, got 0"):
        median_seconds(lambda: None, 0)


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
    """The speed-up column divides the batch-1 row's median time by each row's: a streaming row
    timed once against a median of ``--repeat`` would be timed differently."""
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
