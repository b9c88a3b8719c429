"""tools/bench/onnx.py: it leaves nothing behind without --work-dir (it left a bench-onnx-* temp
directory of exports, 11 MB for the mini_tts main-job model, after every run), and every row
times the same thing."""

from __future__ import annotations

import tempfile

import numpy as np
import soundfile as sf
from bench_helpers import load_bench

from asr.runtime.offline import Transcriber
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


def test_every_onnx_bench_row_times_decoding_not_construction(tmp_path, monkeypatch, capsys):
    """The PyTorch streaming rows built a new streaming recognizer inside every timed run (and
    the warm-up) while the sherpa-onnx rows built theirs before timing: one engine's RTF held
    construction, the others' did not. Now every recognizer is built before the timed runs, ours
    once for the whole bench; each run makes its own streams, for every engine alike."""
    bench = load_bench("onnx")
    package = random_package(tmp_path / "rnnt", head="transducer", seed=4)
    wav = tmp_path / "a.wav"
    sf.write(wav, (0.05 * np.random.default_rng(0).standard_normal(12000)).astype(np.float32),
             16000)
    built = []
    make = Transcriber.streaming_recognizer

    def counted(self, *args, **kwargs):
        built.append(args)
        return make(self, *args, **kwargs)

    monkeypatch.setattr(Transcriber, "streaming_recognizer", counted)
    assert bench.main(["--model", str(package), "--files", str(wav), "--threads", "1",
                       "--repeat", "2", "--batch-size", "1"]) == 0
    out = capsys.readouterr().out
    assert len(built) == 1, built  # not one per timed run: 2 sizes x (warm-up + 2 runs)
    assert "median of 2 runs after a warm-up run, recognizers built before (not timed)" in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| pytorch")]
    assert [row[1] for row in rows] == ["offline", "streaming"]
    assert all(len(row) == 4 and float(row[3].rstrip(" |")) > 0 for row in rows), rows
