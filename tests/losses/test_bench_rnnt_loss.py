"""tools/bench/rnnt_loss.py runs end to end on tiny sizes and prints one row per method."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_prints_a_row_per_method_with_allocator_peaks():
    cmd = [sys.executable, str(ROOT / "tools/bench/rnnt_loss.py"), "--batch=2", "--frames=50",
           "--tokens=10", "--vocab", "500", "--joiner-dim=16", "--repeats=1", "--threads=1"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("500 ")]
    assert [row[1] for row in rows] == ["full", "pruned", "tdt"], out
    for row in rows:
        seconds, peak_mb = float(row[2]), float(row[3])
        assert seconds > 0 and peak_mb > 0, out
    assert float(rows[0][5]) == 1.0 and float(rows[0][6]) == 1.0  # ratios against full
    assert float(rows[1][3]) < float(rows[0][3]), "pruned must allocate less than full"
