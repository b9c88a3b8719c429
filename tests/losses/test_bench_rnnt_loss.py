"""tools/bench/rnnt_loss.py runs end to end on tiny sizes and prints one row per method.

Its run with a band that leaves paths out (a row per method with allocator peaks, pruned losses
allocating less, each pruned term at least its full loss) and its TDT rows with the Triton kernel
in the interpreter (``tdt_triton``, the loss equal to the torch row's) are
tests/test_gpu_check.py's: the dry run of the GPU check runs every method, as a script, on such
sizes (each bench run costs a process per method)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench_helpers import load_bench

ROOT = Path(__file__).resolve().parents[2]


def test_bench_pruned_losses_equal_the_full_losses_on_the_same_inputs(tmp_path):
    """With a band of U + 1 symbols a pruned loss holds every path of the full lattice: its
    pruned term equals the full loss of the same inputs and joiner (RNN-T and TDT), and the bench
    checks it (the narrower band of the GPU check's dry run, tests/test_gpu_check.py: at least
    the full loss)."""
    markdown = tmp_path / "rnnt_loss.md"
    cmd = [sys.executable, str(ROOT / "tools/bench/rnnt_loss.py"), "--batch=2", "--frames=12",
           "--tokens=4", "--vocab", "40", "--joiner-dim=8", "--repeats=1", "--threads=1",
           "--prune-range=5", f"--markdown={markdown}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    rows = {line.split()[1]: line for line in out.splitlines() if line.strip().startswith("40 ")}
    lattice = {name: float(line.split("lattice=")[1].split()[0])
               for name, line in rows.items() if "lattice=" in line}
    assert abs(lattice["pruned"] - lattice["full"]) <= 1e-4 * lattice["full"], out
    assert abs(lattice["pruned_tdt"] - lattice["tdt"]) <= 1e-4 * lattice["tdt"], out
    checks = [line for line in out.splitlines() if line.startswith("check at V=40: ")]
    assert len(checks) == 2 and all(line.endswith("holds") for line in checks), out
    assert markdown.read_text().count("the band holds every path): holds.") == 2


class _FakeCudaAllocator:
    """torch.cuda's allocator counters for steps whose first call also allocates a buffer that
    stays (as cuBLAS's workspace does on a GPU's first matrix product) and every call a
    transient ``activations`` bytes."""

    def __init__(self, workspace: int, activations: int) -> None:
        self.workspace, self.activations = workspace, activations
        self.allocated = self.peak = 1 << 20  # the inputs
        self.steps = 0

    def step(self) -> tuple[float, float]:
        if self.steps == 0:
            self.allocated += self.workspace
        self.steps += 1
        self.peak = max(self.peak, self.allocated + self.activations)
        return 1.0, 1.0

    def reset_peak_memory_stats(self) -> None:
        self.peak = self.allocated


def test_cuda_peak_is_the_loss_own_memory_not_first_step_one_time_buffers(monkeypatch):
    """On CUDA, as on the CPU, the peak is read on a step after the first: the first step's
    one-time buffers (cuBLAS workspace) would add the same constant to every method, shrinking
    the 'x less memory' ratios."""
    import argparse

    import torch

    bench = load_bench("rnnt_loss")
    fake = _FakeCudaAllocator(workspace=32 << 20, activations=100 << 20)
    monkeypatch.setattr(bench, "_build", lambda method, args, vocab: fake.step)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: fake.allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: fake.peak)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", fake.reset_peak_memory_stats)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    args = argparse.Namespace(device="cuda", threads=1, repeats=2)
    row = bench.run_case("pruned", 500, args)
    assert row["peak_mb"] == 100.0, row
    assert fake.steps == 4  # the first step, the one measured, the two timed
