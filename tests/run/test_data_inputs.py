"""run.train.check_data_inputs: the data files a config names, checked before a run writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, Recording

import asr.data.dataset as dataset
from asr.data.config import DataConfig, NoiseConfig
from asr.experiment import ExperimentConfig
from asr.run.train import check_data_inputs


def _config(tmp_path: Path, noise: Path) -> ExperimentConfig:
    wav = tmp_path / "a.flac"
    sf.write(wav, np.zeros(1600, dtype=np.float32), 16000)
    cuts = CutSet.from_manifests(recordings=[Recording.from_file(wav)])
    cuts.to_file(tmp_path / "train.jsonl.gz")
    data = DataConfig(manifest_dir=tmp_path, train_cuts=("train.jsonl.gz",),
                      noise=NoiseConfig(cuts_path=noise))
    return dataclasses.replace(ExperimentConfig(), data=data)


def test_the_noise_manifest_is_read_once(tmp_path, monkeypatch):
    """Its first line was read twice, by the manifest check and again to see that it holds a
    cut: one check, one read, tells both."""
    noise = tmp_path / "noise.jsonl.gz"
    cfg = _config(tmp_path, noise)
    noise.write_bytes((tmp_path / "train.jsonl.gz").read_bytes())
    opened: list[Path] = []
    real = dataset.open_maybe_gzip

    def counting(path, *args, **kwargs):
        opened.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dataset, "open_maybe_gzip", counting)
    check_data_inputs(cfg)
    assert opened.count(noise) == 1


def test_a_noise_manifest_of_no_cut_is_refused_naming_the_field(tmp_path):
    (tmp_path / "noise.jsonl").write_bytes(b"\n")
    with pytest.raises(ValueError, match=r"^data.noise.cuts_path: cut manifest .*noise.jsonl "
                                         "holds no cuts$"):
        check_data_inputs(_config(tmp_path, tmp_path / "noise.jsonl"))
