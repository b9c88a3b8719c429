"""`asr prepare manifests` and `asr prepare fbank` end to end on a tiny corpus."""

from __future__ import annotations

import pytest
from lhotse import CutSet

from asr.cli.main import main


def test_prepare_cli_with_speed_perturb(corpus, tmp_path, capsys) -> None:
    corpus_dir, utts = corpus
    manifests, fbank = tmp_path / "manifests", tmp_path / "fbank"
    parts = ["train-clean-5", "dev-clean-2"]
    assert main(["prepare", "manifests", "--corpus-dir", str(corpus_dir), "--output-dir",
                 str(manifests), "--parts", *parts]) == 0
    assert "librispeech_cuts_dev-clean-2.jsonl.gz" in capsys.readouterr().out
    assert main(["prepare", "fbank", "--manifest-dir", str(manifests), "--output-dir", str(fbank),
                 "--parts", *parts, "--speed-perturb"]) == 0

    train = {c.id: c for c in CutSet.from_file(fbank / "librispeech_cuts_train-clean-5.jsonl.gz")}
    assert len(train) == 3 * len(utts["train-clean-5"])
    for utt in utts["train-clean-5"]:
        base = train[utt.utt_id]
        for factor in (0.9, 1.1):
            cut = train[f"{utt.utt_id}_sp{factor}"]
            assert cut.duration == pytest.approx(base.duration / factor, abs=1e-3)
            assert cut.load_features().shape == (cut.num_frames, 80)
            assert cut.supervisions[0].text == utt.text
    dev = CutSet.from_file(fbank / "librispeech_cuts_dev-clean-2.jsonl.gz")
    assert sorted(c.id for c in dev) == sorted(u.utt_id for u in utts["dev-clean-2"])


def test_prepare_cli_reports_corpus_errors(corpus, tmp_path, caplog) -> None:
    corpus_dir, _ = corpus
    (corpus_dir / "dev-clean-2/2001/30/2001-30-0001.flac").unlink()
    code = main(["prepare", "manifests", "--corpus-dir", str(corpus_dir), "--output-dir",
                 str(tmp_path / "m"), "--parts", "dev-clean-2"])
    assert code == 2  # a bad input, as in every command
    assert "2001-30.trans.txt:2:" in caplog.text and "is missing" in caplog.text
    code = main(["prepare", "fbank", "--manifest-dir", str(tmp_path / "none"), "--output-dir",
                 str(tmp_path / "f"), "--parts", "dev-clean-2"])
    assert code == 2 and "librispeech_cuts_dev-clean-2.jsonl.gz" in caplog.text
    assert "do not exist" in caplog.text
