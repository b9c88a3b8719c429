"""The benches' result files: a table that is rewritten as a bench goes (so that a stopped run
keeps what it measured) is replaced whole or not at all, and an output folder that does not
exist yet is made."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from bench_helpers import load_bench


def _interrupt_writes_halfway(monkeypatch) -> None:
    """Every file write puts down half its data and is then stopped (as by `timeout`)."""

    def half_text(self: Path, data: str, *args, **kwargs):
        with open(self, "w", encoding="utf-8") as f:
            f.write(data[: len(data) // 2])
        raise KeyboardInterrupt("stopped while writing")

    def half_bytes(self: Path, data: bytes):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise KeyboardInterrupt("stopped while writing")

    monkeypatch.setattr(Path, "write_text", half_text)
    monkeypatch.setattr(Path, "write_bytes", half_bytes)


def _rnnt_row(vocab: int, method: str) -> dict:
    return {"method": method, "vocab": vocab, "loss": 10.0, "lattice_loss": 10.0,
            "seconds": 0.5, "peak_mb": 100.0, "rss_mb": 1.0, "x_faster": 1.0,
            "x_less_mem": 1.0}


def test_rnnt_loss_table_stopped_while_rewritten_keeps_the_earlier_table(tmp_path, monkeypatch):
    bench = load_bench("rnnt_loss")
    args = argparse.Namespace(batch=2, frames=4, tokens=2, joiner_dim=8, prune_range=5,
                              device="cpu", repeats=1)
    path = tmp_path / "rnnt_loss.md"
    first = [_rnnt_row(500, "full"), _rnnt_row(500, "pruned")]
    bench._write_markdown(path, first, args)
    before = path.read_text()
    assert "| 500 | pruned |" in before
    _interrupt_writes_halfway(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        bench._write_markdown(path, first + [_rnnt_row(5000, "full")], args)
    monkeypatch.undo()
    assert path.read_text() == before


def test_train_throughput_tables_stopped_while_rewritten_keep_the_earlier_ones(tmp_path,
                                                                              monkeypatch):
    bench = load_bench("train_throughput")
    results = {"recipe": "r.yaml", "device": "cpu", "params": 1e6, "max_duration": 6.0,
               "max_cut_duration": 3.0, "tiny": True, "fit": None, "notes": [],
               "rows": [{"amp": "bfloat16", "effective": "bfloat16", "scaler": False,
                         "audio_s_per_s": 10.0, "median_step_s": 0.5, "utts_per_batch": 2.0,
                         "peak_gib": None, "worst_case_fits": True,
                         "worst_case_peak_gib": None}]}
    path = tmp_path / "train.md"
    bench._write_markdown(path, results)
    before = path.read_text()
    _interrupt_writes_halfway(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        bench._write_markdown(path, dict(results, notes=["a second row's note"]))
    monkeypatch.undo()
    assert path.read_text() == before


def test_train_throughput_writes_its_json_into_a_folder_it_makes(tmp_path):
    """--json (alone) into a folder that does not exist: written after the measurement, not a
    FileNotFoundError that loses it."""
    out = tmp_path / "new" / "train.json"
    bench = load_bench("train_throughput")
    code = bench.main(["--device", "cpu", "--tiny", "--max-duration", "6",
                       "--max-cut-duration", "3", "--steps", "1", "--warmup", "0",
                       "--fit-probes", "0", "--dtypes", "bfloat16", "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["amp"] for r in rows] == ["bfloat16"] and rows[0]["audio_s_per_s"] > 0
