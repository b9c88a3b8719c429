"""Size presets load strictly and have the advertised sizes; the benchmark tool runs."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch
from bench_helpers import load_bench

from asr.config import load_config
from asr.encoders import EncoderConfig, build_encoder

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ROOT / "recipes" / "presets"


def _params(name: str) -> int:
    cfg = load_config(EncoderConfig, PRESETS / f"encoder_{name}.yaml")
    return sum(p.numel() for p in build_encoder(cfg, 80).parameters())


def _bench_module():
    return load_bench("encoder")


def test_all_presets_load_and_tiny_is_tiny():
    for name in ("tiny", "s", "m", "l"):
        cfg = load_config(EncoderConfig, PRESETS / f"encoder_{name}.yaml")
        assert cfg.causal and cfg.chunk_size > 0 and cfg.left_chunks >= 0, name
    tiny = load_config(EncoderConfig, PRESETS / "encoder_tiny.yaml")
    assert tiny.d_model <= 64 and tiny.num_layers <= 2


def test_small_preset_size_with_head():
    head = _bench_module().transducer_head_params(256)
    assert 19e6 <= _params("s") + head <= 21e6


@pytest.mark.slow
@pytest.mark.parametrize("name,low,high", [("m", 60e6, 70e6), ("l", 140e6, 160e6)])
def test_large_preset_sizes(name, low, high):
    assert low <= _params(name) <= high


def test_bench_tool_runs_on_tiny(capsys):
    bench = _bench_module()
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--presets", "tiny", "--seconds", "0.5", "--chunk-sizes", "2",
                           "--repeats", "1", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    header, row = out.strip().splitlines()[-2:]
    assert "RTF c=2 (80 ms)" in header
    cells = [c.strip() for c in row.split("|")]
    assert cells[0] == "tiny" and cells[1] == f"{_params('tiny') / 1e6:.2f}M"
    assert float(cells[3]) > 0 and float(cells[4]) > 0


def test_bench_timer_waits_for_the_device_before_each_reading(monkeypatch):
    """On CUDA a call returns once its kernels are queued: every timer reading after a timed
    call must come after the device sync, or the table shows launch time, not compute time."""
    bench = _bench_module()
    events: list[str] = []
    clock = iter(range(100))

    def reading() -> float:
        events.append("clock")
        return float(next(clock))

    monkeypatch.setattr(time, "perf_counter", reading)
    bench.median_seconds(lambda: events.append("run"), 2, lambda: events.append("sync"))
    timed = events[events.index("clock"):]
    assert timed == ["clock", "run", "sync", "clock"] * 2, events
    assert bench.device_sync("cuda") is torch.cuda.synchronize
    assert bench.device_sync("cuda:0") is torch.cuda.synchronize
    bench.device_sync("cpu")()  # nothing to wait for, and no CUDA needed


def test_bench_streams_with_the_preset_left_context_even_unlimited(monkeypatch):
    """A preset of unlimited left context (-1) streams with a growing cache, not with none
    (which would time a cheaper encoder than the preset's)."""
    bench = _bench_module()
    tiny = load_config(EncoderConfig, ROOT / "recipes/presets/encoder_tiny.yaml")
    unlimited = dataclasses.replace(tiny, left_chunks=-1)
    monkeypatch.setattr(bench, "load_config", lambda *args, **kwargs: unlimited)
    seen: list[int] = []
    monkeypatch.setattr(bench, "_stream_once", lambda *args: seen.append(args[3]))
    bench.bench_preset("tiny", 0.5, [2], 1, "cpu")
    assert seen and set(seen) == {-1}
