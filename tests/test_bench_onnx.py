"""tools/bench/onnx.py leaves nothing behind without --work-dir (it left a bench-onnx-* temp
directory of exports, 11 MB for the mini_tts main-job model, after every run)."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.testing.packages import random_package

ROOT = Path(__file__).resolve().parents[1]


def test_the_onnx_bench_removes_its_temp_dir(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("bench_onnx", ROOT / "tools/bench/onnx.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    package = random_package(tmp_path / "rnnt", head="transducer", seed=4)
    wav = tmp_path / "a.wav"
    sf.write(wav, (0.05 * np.random.default_rng(0).standard_normal(12000)).astype(np.float32),
             16000)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert bench.main(["--model", str(package), "--files", str(wav), "--threads", "1",
                       "--repeat", "1", "--batch-size", "1"]) == 0
    assert "| sherpa-onnx int8 | offline |" in capsys.readouterr().out
    assert list(temp.iterdir()) == []
    kept = tmp_path / "work"
    assert bench.main(["--model", str(package), "--files", str(wav), "--threads", "1",
                       "--repeat", "1", "--batch-size", "1", "--work-dir", str(kept)]) == 0
    assert (kept / "onnx" / "export.json").is_file()  # --work-dir is kept
