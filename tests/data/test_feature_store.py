"""Stored (lilcom) fbank features: shapes, equality with on-the-fly features."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording

from asr.data.dataset import DataError
from asr.data.fbank import compute_fbank_for_cuts, compute_fbank_for_parts
from asr.features.fbank import FbankConfig, compute_fbank

# lilcom stores log energies with a quantisation step of 2**-5 in the log domain.
LILCOM_ATOL = 0.02


def test_stored_features_shapes_and_values(prepared: dict) -> None:
    for part, utts in prepared["utts"].items():
        cuts = CutSet.from_file(prepared["fbank"][part])
        assert len(cuts) == len(utts)
        lengths = {u.utt_id: u.num_samples for u in utts}
        for cut in cuts:
            feats = torch.from_numpy(cut.load_features())
            assert feats.shape == (cut.num_frames, 80) == ((lengths[cut.id] + 80) // 160, 80)
            audio = torch.from_numpy(cut.load_audio()[0])
            torch.testing.assert_close(feats, compute_fbank(audio, 16000), atol=LILCOM_ATOL, rtol=0)


def test_existing_outputs_are_skipped_unless_overwrite(prepared: dict) -> None:
    root = prepared["root"]
    path = prepared["fbank"]["dev-clean-2"]
    before = path.stat().st_mtime_ns
    compute_fbank_for_parts(root / "manifests", root / "fbank", ["dev-clean-2"])
    assert path.stat().st_mtime_ns == before


def test_errors_name_missing_inputs(prepared, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="librispeech_cuts_nope.jsonl.gz"):
        compute_fbank_for_parts(prepared["root"] / "manifests", tmp_path, ["nope"])
    with pytest.raises(ValueError, match="perturb_parts"):
        compute_fbank_for_parts(prepared["root"] / "manifests", tmp_path, ["dev-clean-2"],
                                perturb_parts=["train-clean-5"])
    with pytest.raises(ValueError, match="not at 8000 Hz"):
        from asr.data.fbank import compute_fbank_for_cuts

        cuts = CutSet.from_file(prepared["manifests"]["dev-clean-2"])
        compute_fbank_for_cuts(cuts, tmp_path / "x", FbankConfig(sample_rate=8000))


def test_multi_channel_cuts_are_refused_not_read_from_their_first_channel(tmp_path) -> None:
    """lhotse stores a stereo cut's features from channel 0 alone; asr transcribe averages."""
    stereo = np.random.default_rng(0).standard_normal((1600, 2)).astype(np.float32) * 0.1
    sf.write(tmp_path / "stereo.wav", stereo, 16000)
    cut = Recording.from_file(tmp_path / "stereo.wav", recording_id="st").to_cut()
    with pytest.raises(ValueError, match=r"1 cuts hold several audio channels, e.g. cut 'st' "
                                         r"with 2 \(audio .*stereo\.wav\).*downmix"):
        compute_fbank_for_cuts(CutSet.from_cuts([cut]), tmp_path / "x.lca", progress_bar=False)
    assert not (tmp_path / "x.lca").exists()


def test_two_worker_processes_store_the_same_features(prepared, tmp_path, monkeypatch) -> None:
    """lhotse's process pool (one thread per worker, see ``_one_thread_per_worker``) stores the
    features one process does, and the caller's thread settings are left as they were."""
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    out = compute_fbank_for_parts(prepared["root"] / "manifests", tmp_path, ["dev-clean-2"],
                                  num_jobs=2)
    assert "OMP_NUM_THREADS" not in os.environ and os.environ["MKL_NUM_THREADS"] == "3"
    pooled = {c.id: c.load_features() for c in CutSet.from_file(out["dev-clean-2"])}
    for cut in CutSet.from_file(prepared["fbank"]["dev-clean-2"]):
        torch.testing.assert_close(torch.from_numpy(pooled[cut.id]),
                                   torch.from_numpy(cut.load_features()), rtol=0, atol=0)


def test_a_cut_whose_audio_is_gone_fails_the_part_and_leaves_no_archive(tmp_path) -> None:
    """lhotse leaves a cut whose audio cannot be read out with a warning: the part fails naming
    it, and the archive of the others' features (which no manifest will name) is removed."""
    from lhotse import AudioSource
    from lhotse.cut import MonoCut

    sf.write(tmp_path / "ok.wav", np.zeros(16000, dtype=np.float32), 16000)
    good = Recording.from_file(tmp_path / "ok.wav", recording_id="ok").to_cut()
    gone = Recording(id="gone", sources=[AudioSource("file", [0], str(tmp_path / "gone.flac"))],
                     sampling_rate=16000, num_samples=16000, duration=1.0)
    cuts = CutSet.from_cuts([good, MonoCut("c-gone", 0.0, 1.0, 0, recording=gone)])
    with pytest.raises(DataError, match=r"1 of 2 cuts; the first: cannot read the recording of "
                                        r"cut 'c-gone' .*gone\.flac does not exist \(the "
                                        r"features computed for the others were removed\)"):
        compute_fbank_for_cuts(cuts, tmp_path / "feats.lca", progress_bar=False)
    assert not (tmp_path / "feats.lca").exists()


def test_fbank_and_shar_give_one_reason_for_a_cut_they_cannot_read(tmp_path) -> None:
    """``asr prepare fbank`` and ``asr shar`` say why a cut's data cannot be read with the same
    helper: a missing file is named as such, else the loader's error in one line."""
    from lhotse import AudioSource
    from lhotse.cut import MonoCut

    from asr.data.filtering import unreadable_field
    from asr.data.shar import export_shar

    sf.write(tmp_path / "ok.wav", np.zeros(16000, dtype=np.float32), 16000)
    good = Recording.from_file(tmp_path / "ok.wav", recording_id="ok").to_cut()
    (tmp_path / "junk.wav").write_bytes(b"RIFF, but no audio after it\n" * 4)
    cuts = {}
    for name in ("junk", "gone"):
        rec = Recording(id=name, sources=[AudioSource("file", [0], str(tmp_path / f"{name}.wav"))],
                        sampling_rate=16000, num_samples=16000, duration=1.0)
        cuts[name] = MonoCut(f"c-{name}", 0.0, 1.0, 0, recording=rec)
    assert unreadable_field(good, ["features", "recording", "custom"]) is None
    assert unreadable_field(cuts["gone"], ["recording"]) == (
        "recording", f"{tmp_path / 'gone.wav'} does not exist")
    field, reason = unreadable_field(cuts["junk"], ["features", "recording"])
    assert field == "recording" and "\n" not in reason and len(reason) <= 400
    for name, cut in cuts.items():
        why = unreadable_field(cut, ["recording"])[1]
        with pytest.raises(DataError) as fbank_err:
            compute_fbank_for_cuts(CutSet.from_cuts([good, cut]), tmp_path / "feats.lca",
                                   progress_bar=False)
        CutSet.from_cuts([good, cut]).to_file(tmp_path / "cuts.jsonl.gz")
        with pytest.raises(DataError) as shar_err:
            export_shar([tmp_path / "cuts.jsonl.gz"], tmp_path / "shar", {"recording": "wav"},
                        progress=False)
        assert str(shar_err.value) == (f"cannot read the recording of cut {cut.id!r} (audio "
                                       f"{tmp_path / name}.wav): {why}")
        # one sentence for the cut (asr.data.filtering.unreadable_cut_error), in both
        assert str(fbank_err.value) == (f"cannot compute the features of 1 of 2 cuts; the "
                                        f"first: {shar_err.value} (the features computed for "
                                        "the others were removed)")
