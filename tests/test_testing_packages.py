""":func:`asr.testing.packages.trained_tiny_package` trains once per folder, across processes:
the pytest-xdist workers of one run share the tiny models (each trained 10-20 s apiece on the
2-core machine) rather than training them once per worker. Training and export are replaced by
fakes that record their calls."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

import asr.testing.packages as packages


@pytest.fixture
def trainings(monkeypatch) -> list[Path]:
    """The folders the (fake) training was asked to train in, in order; a fresh process each
    time the in-memory cache is emptied."""
    asked: list[Path] = []

    def fake_train(work_dir, sentences, head, steps):
        work_dir = Path(work_dir)
        asked.append(work_dir)
        (work_dir / "exp").mkdir(parents=True)
        return SimpleNamespace(exp_dir=work_dir / "exp", wavs=(work_dir / "wavs" / "utt0.wav",),
                               texts=tuple(sentences[:1]))

    monkeypatch.setattr(packages, "train_tiny_experiment", fake_train)
    monkeypatch.setattr(packages, "export_package", lambda *args, **kwargs: None)
    monkeypatch.setattr(packages, "_CACHE", {})
    return asked


def test_a_second_process_reads_the_package_the_first_made(tmp_path, trainings, monkeypatch):
    first = packages.trained_tiny_package(tmp_path, head="transducer", steps=7)
    monkeypatch.setattr(packages, "_CACHE", {})  # as in another process
    again = packages.trained_tiny_package(tmp_path, head="transducer", steps=7)
    assert trainings == [tmp_path / "tiny_transducer_7"]
    assert again == first
    assert first.package_dir == tmp_path / "tiny_transducer_7" / "package"
    assert first.wavs == (tmp_path / "tiny_transducer_7" / "wavs" / "utt0.wav",)
    packages.trained_tiny_package(tmp_path, head="ctc", steps=7)  # other arguments: trained
    assert trainings[1:] == [tmp_path / "tiny_ctc_7"]


def test_a_folder_left_by_a_killed_maker_is_made_again(tmp_path, trainings):
    work = tmp_path / "tiny_ctc_300"
    (work / "exp").mkdir(parents=True)  # killed mid-way: no made.json
    made = packages.trained_tiny_package(tmp_path)
    assert trainings == [work]
    assert made.exp_dir == work / "exp"


def test_a_caller_waits_for_the_process_making_the_package(tmp_path, trainings):
    """Another process holds the lock while it trains: the caller waits, then reads what that
    process made instead of training again."""
    work = tmp_path / "tiny_ctc_300"
    fd = os.open(tmp_path / "tiny_ctc_300.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    got = []
    caller = threading.Thread(target=lambda: got.append(packages.trained_tiny_package(tmp_path)))
    try:
        caller.start()
        caller.join(0.5)
        assert caller.is_alive() and not trainings
        work.mkdir()
        (work / "made.json").write_text(json.dumps({
            "package_dir": "p", "exp_dir": "e", "wavs": ["w.wav"], "texts": ["HI"]}))
    finally:
        os.close(fd)
        caller.join(60)
    assert trainings == []
    assert got == [packages.TinyPackage(Path("p"), Path("e"), (Path("w.wav"),), ("HI",))]
