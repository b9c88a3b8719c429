"""tools/bench/serve.py with --model serves that model: it trained the tiny test model all the
same (about 20 s, and a model it did not use) for its recordings, the benchmark's speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from bench_helpers import load_bench


class _Started(Exception):
    """Raised in place of starting the server: what the bench would have served."""


def test_the_serve_bench_trains_no_model_with_model(tmp_path, monkeypatch):
    import asr.testing.packages as packages
    import asr.testing.tiny as tiny

    bench = load_bench("serve")
    spoken = []

    def synthesize(text, path, **_):  # espeak-ng's place: 0.5 s of a tone per sentence
        spoken.append(text)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(11025) / 22050
        sf.write(path, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 22050)
        return Path(path)

    def trained_tiny_package(*args, **kwargs):
        raise AssertionError("the tiny model was trained")

    def start_server(model, *args):
        raise _Started(model)

    monkeypatch.setattr(tiny, "synthesize", synthesize)
    monkeypatch.setattr(packages, "trained_tiny_package", trained_tiny_package)
    monkeypatch.setattr(bench, "start_server", start_server)
    with pytest.raises(_Started) as started:
        bench.main(["--model", str(tmp_path / "pkg"), "--work-dir", str(tmp_path / "work"),
                    "--seconds", "1"])
    assert started.value.args == (tmp_path / "pkg",)
    assert spoken == list(tiny.TINY_SENTENCES)
    assert sorted(p.name for p in (tmp_path / "work" / "speech").iterdir()) == [
        f"utt{i}.wav" for i in range(len(spoken))]
