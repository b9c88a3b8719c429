"""``asr shar`` then ``asr train`` from the Shar shards: trains, and a killed run resumes to the
same parameters as an uninterrupted one (the shard order depends on the epoch only)."""

from __future__ import annotations

import logging
import re

import torch
from train_helpers import train_tiny

from asr.checkpoints.io import list_checkpoints, safe_torch_load
from asr.cli.main import main


def test_train_from_shar_and_resume_exactly(tmp_path, tiny_corpus, caplog):
    caplog.set_level(logging.INFO, logger="asr.run.train")
    shar = tmp_path / "shar"
    manifest = tiny_corpus / "fbank" / "librispeech_cuts_train-clean-5.jsonl.gz"
    assert (
        main(
            [
                "shar",
                "--cuts",
                str(manifest),
                "--output-dir",
                str(shar),
                "--fields",
                "features=numpy",
                "--shard-size",
                "4",
            ]
        )
        == 0
    )
    assert len(list(shar.glob("features.*.tar"))) == 4
    # global CMVN: its statistics come from the lazy, filtered Shar cuts
    use_shar = (f"data.train_shar_dirs=[{shar}]", "encoder.input_norm=global_cmvn")
    assert train_tiny(tmp_path, tiny_corpus, "full", *use_shar) == 0
    assert "training from 4 Lhotse Shar shards" in caplog.text
    full = safe_torch_load(tmp_path / "full" / "epoch-2.pt")
    assert full["model"]["encoder.input_norm.mean"].abs().sum() > 0
    epoch_1 = safe_torch_load(tmp_path / "full" / "epoch-1.pt")["progress"]["step"]
    assert full["progress"]["step"] >= epoch_1 + 2
    # stop one step into epoch 2: the restarted process must read epoch 2's shard order
    stop = f"train.max_steps={epoch_1 + 1}"
    assert train_tiny(tmp_path, tiny_corpus, "resumed", *use_shar, stop) == 0
    partial = safe_torch_load(list_checkpoints(tmp_path / "resumed")[-1][1])
    assert partial["progress"]["step"] == epoch_1 + 1
    torch.manual_seed(1234)
    assert train_tiny(tmp_path, tiny_corpus, "resumed", *use_shar) == 0
    resumed = safe_torch_load(tmp_path / "resumed" / "epoch-2.pt")
    assert resumed["progress"]["step"] == full["progress"]["step"]
    for name, value in full["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=0, atol=0, msg=name)


def test_shar_cli_rejects_bad_fields(tmp_path, tiny_corpus, caplog):
    manifest = tiny_corpus / "fbank" / "librispeech_cuts_train-clean-5.jsonl.gz"
    code = main(["shar", "--cuts", str(manifest), "--output-dir", str(tmp_path / "s"),
                 "--fields", "features=mp3"])
    assert code == 2 and "asr shar: --fields: bad entry 'features=mp3'" in caplog.text


def test_a_kept_shar_directory_is_not_reported_as_written(tmp_path, tiny_corpus, caplog):
    """A rerun that kept the shards (run.sh --use-shar true at every stage 6) logged "reusing
    it" and then "Shar fields written": the last line now says what the directory holds."""
    caplog.set_level(logging.INFO)
    manifest = tiny_corpus / "fbank" / "librispeech_cuts_train-clean-5.jsonl.gz"
    shar = tmp_path / "shar"
    for _ in range(2):
        assert main(["shar", "--cuts", str(manifest), "--output-dir", str(shar),
                     "--shard-size", "4"]) == 0
    assert "reusing it" in caplog.text and "written" not in caplog.messages[-1]
    assert caplog.messages[-1] == (
        f"{shar} holds these shards per field: {{'cuts': 4, 'features': 4}}")


def test_nothing_left_after_filtering_names_the_source(tmp_path, tiny_corpus, caplog):
    """Cuts all longer than ``max_cut_duration``: the error names the manifests or the shards."""
    too_short = ["data.min_cut_duration=0", "data.max_cut_duration=0.05"]
    assert train_tiny(tmp_path, tiny_corpus, "manifests", *too_short) != 0
    assert re.search(r"no training cuts left in \S*fbank/\['librispeech_cuts_train", caplog.text)
    shar = tmp_path / "shar"
    manifest = tiny_corpus / "fbank" / "librispeech_cuts_train-clean-5.jsonl.gz"
    assert main(["shar", "--cuts", str(manifest), "--output-dir", str(shar)]) == 0
    caplog.clear()
    assert train_tiny(tmp_path, tiny_corpus, "shar", f"data.train_shar_dirs=[{shar}]", *too_short)
    assert f"no training cuts left in ['{shar}'] after filtering" in caplog.text


def test_dev_cuts_in_the_training_shards_are_warned_of_naming_the_shar_field(
        tmp_path, tiny_corpus, caplog, monkeypatch):
    """Training from Shar shards of the dev cuts: the warning told to check data.train_cuts,
    which this config does not use, instead of data.train_shar_dirs. Stopped once the data is
    loaded."""
    import asr.run.train

    def stop(*args, **kwargs):
        raise RuntimeError("stopped after loading the data")

    monkeypatch.setattr(asr.run.train, "EpochBatches", stop)
    dev = tiny_corpus / "fbank" / "librispeech_cuts_dev-clean-2.jsonl.gz"
    shar = tmp_path / "shar"
    assert main(["shar", "--cuts", str(dev), "--output-dir", str(shar),
                 "--fields", "features=numpy"]) == 0
    with caplog.at_level(logging.WARNING, logger="asr.run.train"):
        assert train_tiny(tmp_path, tiny_corpus, "overlap", f"data.train_shar_dirs=[{shar}]") == 1
    assert "stopped after loading the data" in caplog.text
    assert re.search(r"4 of the 4 dev cuts are training cuts too, by their id or as speed copies "
                     r"<id>_sp<factor> \(e\.g\. \S+\): the dev loss and WER are not measured "
                     r"on held-out data; check data\.train_shar_dirs and data\.dev_cuts",
                     caplog.text), caplog.text


def test_the_shards_overlap_with_the_dev_cuts_counts_what_training_keeps(
        tmp_path, tiny_corpus, caplog, monkeypatch):
    """Shards of a speed copy (``<id>_sp0.9``) of the shortest dev cut and of the other dev
    cuts as they are, the 2 longest of which the training filter drops
    (data.max_cut_duration): the warning counted every dev cut of the unfiltered manifests (3)
    and no speed copy. Now it counts the dev cuts that training keeps, as they are or as speed
    copies (2), as the check of data.train_cuts does; counted in the training filter's own
    pass over the shards' manifests, each cut judged once (a second pass, parsing and judging
    every cut of the shards again, doubled the cost of loading a large corpus)."""
    from collections import Counter

    from lhotse import CutSet

    import asr.data.filtering
    import asr.run.train

    judged = Counter()
    judge = asr.data.filtering._judge

    def counting_judge(cut, *args):
        judged[cut.id] += 1
        return judge(cut, *args)

    monkeypatch.setattr(asr.data.filtering, "_judge", counting_judge)

    def stop(*args, **kwargs):
        raise RuntimeError("stopped after loading the data")

    monkeypatch.setattr(asr.run.train, "EpochBatches", stop)
    dev_path = tiny_corpus / "fbank" / "librispeech_cuts_dev-clean-2.jsonl.gz"
    dev = sorted(CutSet.from_file(dev_path), key=lambda c: c.duration)
    # the filter keeps the copy and the second shortest, and drops the 2 longest
    limit = max(dev[0].duration / 0.9, dev[1].duration) + 0.01
    assert len(dev) == 4 and limit < dev[2].duration
    copies = CutSet.from_cuts([dev[0].drop_features().perturb_speed(0.9)]
                              + [cut.drop_features() for cut in dev[1:]])
    assert copies[0].id == f"{dev[0].id}_sp0.9"
    copies.to_file(tmp_path / "copies.jsonl.gz")
    shar = tmp_path / "shar"
    assert main(["shar", "--cuts", str(tmp_path / "copies.jsonl.gz"), "--output-dir", str(shar),
                 "--fields", "recording=flac"]) == 0
    settings = (f"data.train_shar_dirs=[{shar}]", "data.on_the_fly_feats=true",
                f"data.max_cut_duration={limit}", "data.speed_perturb=false")
    with caplog.at_level(logging.WARNING, logger="asr.run.train"):
        assert train_tiny(tmp_path, tiny_corpus, "overlap", *settings) == 1
    assert "stopped after loading the data" in caplog.text
    assert (f"2 of the 4 dev cuts are training cuts too, by their id or as speed copies "
            f"<id>_sp<factor> (e.g. {min(dev[0].id, dev[1].id)})") in caplog.text, caplog.text
    assert judged[copies[0].id] == 1, judged  # in the shards alone, judged by one pass
