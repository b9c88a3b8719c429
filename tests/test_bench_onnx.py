"""tools/bench/onnx.py leaves nothing behind without --work-dir (it left a bench-onnx-* temp
directory of exports, 11 MB for the mini_tts main-job model, after every run)."""

from __future__ import annotations

import tempfile

import numpy as np
import soundfile as sf
from bench_helpers import load_bench

from asr.testing.packages import random_package


def test_the_onnx_bench_removes_its_temp_dir(tmp_path, monkeypatch, capsys):
    bench = load_bench("onnx")
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
