"""AsrDataset / make_dataloader: Batch contents, augmentation only in training."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording
from lhotse.dataset import PerturbSpeed
from lhotse.testing.dummies import dummy_cut, dummy_supervision
from librispeech_tree import CharEncoder
from torch import Tensor

from asr.config import ConfigError, from_dict
from asr.data.augment import SpeedPerturbation
from asr.data.config import DataConfig, FreqWarpConfig, NoiseConfig, SpecAugmentConfig
from asr.data.dataset import (
    ON_THE_FLY_SPEED_FACTORS,
    AsrDataset,
    DataError,
    checked_manifests,
    load_cuts,
    make_dataloader,
    pad_tokens,
    speed_factors,
)
from asr.data.filtering import filter_cuts, unreadable_cut_error
from asr.encoders.subsampling import subsampled_length
from asr.features.fbank import FbankConfig
from asr.tokenizers.char import build_char_tokenizer
from asr.types import Batch

LILCOM_ATOL = 0.02


def _cfg(prepared: dict, **kw) -> DataConfig:
    base = dict(manifest_dir=prepared["root"] / "fbank",
                train_cuts=("librispeech_cuts_train-clean-5.jsonl.gz",),
                dev_cuts=("librispeech_cuts_dev-clean-2.jsonl.gz",),
                max_duration=30.0, num_buckets=1, num_workers=0, max_cut_duration=20.0)
    base.update(kw)
    return DataConfig(**base)


def _train_cuts(prepared: dict) -> CutSet:
    return CutSet.from_file(prepared["fbank"]["train-clean-5"])


def test_pad_tokens() -> None:
    tokens, lens = pad_tokens([[3, 1], [], [5, 6, 7]])
    assert tokens.tolist() == [[3, 1, 0], [0, 0, 0], [5, 6, 7]] and lens.tolist() == [2, 0, 3]
    assert tokens.dtype == lens.dtype == torch.int64  # as Batch documents them


def test_eval_batch_contents(prepared: dict) -> None:
    cuts = _train_cuts(prepared)
    batch = AsrDataset.from_config(_cfg(prepared), CharEncoder(), train=False)[cuts]
    assert isinstance(batch, Batch)
    by_id = {c.id: c for c in cuts}
    durations = [by_id[i].duration for i in batch.cut_ids]
    assert durations == sorted(durations, reverse=True) and len(durations) == 8
    assert batch.feats.dtype == torch.float32 and batch.feats.shape == (8, 210, 80)
    assert batch.feat_lens.dtype == torch.int64
    enc = CharEncoder()
    for i, cut_id in enumerate(batch.cut_ids):
        cut = by_id[cut_id]
        n = int(batch.feat_lens[i])
        assert n == cut.num_frames
        torch.testing.assert_close(batch.feats[i, :n], torch.from_numpy(cut.load_features()))
        assert torch.all(batch.feats[i, n:] == 0)
        text = cut.supervisions[0].text
        assert batch.texts[i] == text
        u = int(batch.token_lens[i])
        assert batch.tokens[i, :u].tolist() == enc.encode(text)
        assert torch.all(batch.tokens[i, u:] == 0)
    assert batch.tokens.shape[1] == max(len(t) for t in batch.texts)


def test_on_the_fly_equals_stored_features(prepared: dict) -> None:
    cuts = _train_cuts(prepared)
    stored = AsrDataset.from_config(_cfg(prepared), CharEncoder(), train=False)[cuts]
    otf_cuts = CutSet.from_file(prepared["manifests"]["train-clean-5"])  # no features attached
    otf = AsrDataset.from_config(_cfg(prepared, on_the_fly_feats=True), CharEncoder(),
                                 train=False)[otf_cuts]
    assert otf.cut_ids == stored.cut_ids
    assert torch.equal(otf.feat_lens, stored.feat_lens)
    torch.testing.assert_close(otf.feats, stored.feats, atol=LILCOM_ATOL, rtol=0)
    assert torch.equal(otf.tokens, stored.tokens)



def test_stored_speed_copies_equal_on_the_fly_perturbation(prepared: dict, tmp_path) -> None:
    """``asr prepare fbank --speed-perturb`` stores copies at 0.9 and 1.1 that training with
    ``data.speed_perturb`` computes on the fly instead: the same frames and features."""
    from asr.data.fbank import compute_fbank_for_cuts, speed_perturb_cuts

    cuts = CutSet.from_file(prepared["manifests"]["train-clean-5"]).subset(first=3)
    stored = compute_fbank_for_cuts(speed_perturb_cuts(cuts), tmp_path / "sp.lca",
                                    progress_bar=False)
    from_store = AsrDataset.from_config(_cfg(prepared), CharEncoder(), train=False)
    on_the_fly = AsrDataset.from_config(_cfg(prepared, on_the_fly_feats=True), CharEncoder(),
                                        train=False)
    for factor in (0.9, 1.1):
        copies = from_store[CutSet.from_cuts(c for c in stored if c.id.endswith(f"_sp{factor}"))]
        computed = on_the_fly[CutSet.from_cuts(c.perturb_speed(factor) for c in cuts)]
        assert copies.cut_ids == computed.cut_ids and copies.texts == computed.texts
        assert torch.equal(copies.feat_lens, computed.feat_lens)
        torch.testing.assert_close(copies.feats, computed.feats, atol=LILCOM_ATOL, rtol=0)

def test_spec_augment_only_in_training(prepared: dict) -> None:
    cuts = _train_cuts(prepared)
    strong = SpecAugmentConfig(time_warp_factor=0, num_freq_masks=2, max_freq_mask_width=20,
                               num_time_masks=2, max_time_mask_width=20, probability=1.0)
    cfg = _cfg(prepared, spec_augment=strong)
    reference = AsrDataset.from_config(cfg, CharEncoder(), train=False)[cuts]
    again = AsrDataset.from_config(cfg, CharEncoder(), train=False)[cuts]
    assert torch.equal(reference.feats, again.feats)
    train = AsrDataset.from_config(cfg, CharEncoder(), train=True)[cuts]
    assert train.cut_ids == reference.cut_ids and torch.equal(train.feat_lens, reference.feat_lens)
    assert not torch.equal(train.feats, reference.feats)
    for i, n in enumerate(train.feat_lens.tolist()):
        # masks hit the valid frames of every utterance; padding stays zero
        assert not torch.equal(train.feats[i, :n], reference.feats[i, :n])
        assert torch.all(train.feats[i, n:] == 0)
    off = _cfg(prepared, spec_augment=replace(strong, enabled=False))
    assert torch.equal(AsrDataset.from_config(off, CharEncoder(), train=True)[cuts].feats,
                       reference.feats)



def test_time_masks_keep_within_each_utterances_own_length_and_budget(prepared: dict) -> None:
    """Time masks are drawn on each utterance's valid frames: the frames they change lie within
    its length and number at most ``max_time_mask_fraction`` of that length, not of the padded
    batch's (a short utterance beside a 2.1 s one would otherwise lose most of its frames, or
    have its masks fall into the padding, which is zeroed after)."""
    cuts = _train_cuts(prepared)  # 60 to 210 frames
    masks = SpecAugmentConfig(time_warp_factor=0, num_freq_masks=0, num_time_masks=10,
                              max_time_mask_width=100, max_time_mask_fraction=0.3,
                              probability=1.0)
    cfg = _cfg(prepared, spec_augment=masks)
    clean = AsrDataset.from_config(cfg, CharEncoder(), train=False)[cuts]
    masked_any = 0
    for seed in range(4):
        batch = AsrDataset.from_config(replace(cfg, seed=seed), CharEncoder(), train=True)[cuts]
        assert batch.cut_ids == clean.cut_ids
        for i, n in enumerate(batch.feat_lens.tolist()):
            changed = (batch.feats[i] != clean.feats[i]).any(dim=1).nonzero().flatten()
            assert len(changed) <= int(0.3 * n), (batch.cut_ids[i], n, len(changed))
            assert len(changed) == 0 or int(changed.max()) < n
            masked_any += len(changed) > 0
    assert masked_any > 16  # most of the 32 utterances got a mask

def test_spec_augment_starts_at_its_epoch(prepared: dict) -> None:
    cuts = _train_cuts(prepared)
    masks = SpecAugmentConfig(time_warp_factor=0, num_freq_masks=2, max_freq_mask_width=20,
                              num_time_masks=0, probability=1.0,
                              start_epoch=3)
    cfg = _cfg(prepared, spec_augment=masks)
    clean = AsrDataset.from_config(cfg, CharEncoder(), train=False)[cuts].feats
    dataset = AsrDataset.from_config(cfg, CharEncoder(), train=True)
    assert not dataset.spec_augment_active  # a new dataset is at epoch 1
    for epoch in (1, 2):
        dataset.set_epoch(epoch)
        assert torch.equal(dataset[cuts].feats, clean)
    for epoch in (3, 4):
        dataset.set_epoch(epoch)
        assert not torch.equal(dataset[cuts].feats, clean)
    with pytest.raises(ValueError, match="start_epoch"):
        SpecAugmentConfig(start_epoch=0)


def test_trainer_batches_follow_spec_augment_start_epoch(prepared: dict) -> None:
    from asr.data.epochs import EpochBatches

    masks = SpecAugmentConfig(time_warp_factor=0, num_freq_masks=2, max_freq_mask_width=20,
                              num_time_masks=0, probability=1.0,
                              start_epoch=2)
    data = _cfg(prepared, spec_augment=masks, drop_last=False)
    cuts = _train_cuts(prepared)
    clean = AsrDataset.from_config(data, CharEncoder(), train=False)[cuts]
    batches = EpochBatches(cuts, data, CharEncoder())

    def valid_feats(batch: Batch) -> dict:
        return {cut_id: batch.feats[i, :n]
                for i, (cut_id, n) in enumerate(zip(batch.cut_ids, batch.feat_lens.tolist()))}

    def epoch_feats(epoch: int) -> dict:
        return {k: v for batch in batches(epoch, 0) for k, v in valid_feats(batch).items()}

    reference = valid_feats(clean)
    first, second = epoch_feats(1), epoch_feats(2)
    assert first.keys() == second.keys() == reference.keys()
    assert all(torch.equal(first[k], reference[k]) for k in reference)
    assert sum(not torch.equal(second[k], reference[k]) for k in reference) >= len(reference) // 2


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_scales_duration(prepared: dict, factor: float) -> None:
    cuts = CutSet.from_file(prepared["manifests"]["train-clean-5"])
    cfg = _cfg(prepared, on_the_fly_feats=True)
    plain = AsrDataset.from_config(cfg, CharEncoder(), train=False)[cuts]
    base = AsrDataset.from_config(cfg, CharEncoder(), train=False)
    perturbed = AsrDataset(CharEncoder(), base.input_strategy,
                           [PerturbSpeed(factors=[factor], p=1.0, preserve_id=True)])[cuts]
    assert perturbed.cut_ids == plain.cut_ids
    expected = plain.feat_lens.double() / factor
    assert torch.all((perturbed.feat_lens.double() - expected).abs() <= 1.0)
    assert perturbed.texts == plain.texts


def test_on_the_fly_speed_perturb_from_config(prepared: dict) -> None:
    cuts = CutSet.from_file(prepared["manifests"]["train-clean-5"])
    cfg = _cfg(prepared, on_the_fly_feats=True, speed_perturb=True, drop_last=False,
               spec_augment=SpecAugmentConfig(enabled=False))
    plain = AsrDataset.from_config(cfg, CharEncoder(), train=False)[cuts]
    lens = dict(zip(plain.cut_ids, plain.feat_lens.tolist()))
    seen = set()
    loader = make_dataloader(cuts, cfg, CharEncoder(), train=True)
    for epoch in range(1, 4):
        loader.dataset.set_epoch(epoch)
        for batch in loader:
            assert sorted(batch.texts) == sorted(plain.texts)  # transcripts kept
            for cut_id, n in zip(batch.cut_ids, batch.feat_lens.tolist()):
                ratio = lens[cut_id] / n
                match = [f for f in (0.9, 1.0, 1.1) if abs(ratio - f) < 0.02]
                assert len(match) == 1, (cut_id, ratio)
                assert match[0] == loader.dataset.speed_perturbation.factor(cut_id)
                seen.add(match[0])
    assert seen == {0.9, 1.0, 1.1}


def test_speed_perturbed_batches_keep_to_max_duration_on_every_rank(prepared: dict) -> None:
    """Perturbing sampled batches took them up to 1 / 0.9 over max_duration; the cuts are
    perturbed before sampling, the same on every rank, and a resumed epoch gets the same factors
    with DataLoader workers too."""
    from asr.data.epochs import EpochBatches

    # 8 cuts of 0.6 s (0.545, 0.6 or 0.667 s perturbed): lhotse closes a batch once one more
    # cut as long as its longest would exceed 1.8 s, so the batches it sees hold at most
    # 1.8 s + 0.667 - 0.545 s (its last cut may be longer than those before); perturbing after
    # sampling gave batches of 3 x 0.667 s.
    cuts = CutSet.from_cuts(c.truncate(duration=0.6, preserve_id=True)
                            for c in CutSet.from_file(prepared["fbank"]["train-clean-5"]))
    cfg = _cfg(prepared, on_the_fly_feats=True, speed_perturb=True, drop_last=False,
               max_duration=1.8, max_cut_duration=0.6, num_buckets=1, num_workers=0,
               spec_augment=SpecAugmentConfig(enabled=False))
    for epoch in range(1, 5):
        per_rank = []
        for rank in (0, 1):
            batches = list(EpochBatches(cuts, cfg, CharEncoder(), rank, 2)(epoch, 0))
            for batch in batches:
                assert int(batch.feat_lens.sum()) <= 192, batch.feat_lens
            per_rank.append(batches)
        assert len(per_rank[0]) == len(per_rank[1])
        ids = [i for batches in per_rank for b in batches for i in b.cut_ids]
        assert sorted(ids) == sorted(c.id for c in cuts)
    loader = make_dataloader(cuts, cfg, CharEncoder(), train=True)
    loader.dataset.set_epoch(3)
    loader.sampler.set_epoch(3)
    sampled = {c.id: round(100 * c.duration) for cuts in loader.sampler for c in cuts}
    loaded = {i: n for b in loader for i, n in zip(b.cut_ids, b.feat_lens.tolist())}
    assert sampled == loaded and len(set(loaded.values())) > 1  # batched as perturbed
    with_workers = EpochBatches(cuts, replace(cfg, num_workers=1), CharEncoder())
    full = [dict(zip(b.cut_ids, b.feat_lens.tolist())) for b in with_workers(2, 0)]
    assert [dict(zip(b.cut_ids, b.feat_lens.tolist())) for b in with_workers(2, 2)] == full[2:]


def test_training_filter_keeps_no_cut_that_a_drawn_speed_makes_infeasible(prepared: dict,
                                                                          tmp_path) -> None:
    """Speed perturbation happens after filtering: a cut with as many tokens as encoder frames
    at speed 1 passed the training filter, then reached the loss with more tokens than frames
    in every epoch that drew 1.1 for it. The filter judges the frames each speed gives, exactly
    as many as the on-the-fly features of the perturbed cut have; such a cut was then dropped
    although 1.0 and 0.9 suit it, and is now kept and never drawn at 1.1."""
    from types import SimpleNamespace

    from lhotse.utils import compute_num_frames, fastcopy

    from asr.data.epochs import EpochBatches
    from asr.data.filtering import allowed_speeds
    from asr.experiment import ExperimentConfig
    from asr.run.train import _load_filtered

    def spelled(cut, extra: int):  # a text of as many characters as encoder frames, plus extra
        frames = subsampled_length(compute_num_frames(cut.duration, 0.01, 16000))
        sup = fastcopy(cut.supervisions[0], text="A" * (frames + extra))
        return fastcopy(cut, supervisions=[sup])

    cuts = list(CutSet.from_file(prepared["manifests"]["train-clean-5"]))
    tight = CutSet.from_cuts([spelled(c, 0) for c in cuts[:4]] + [spelled(c, -4) for c in cuts[4:]])
    tight.to_file(tmp_path / "tight.jsonl.gz")
    data = _cfg(prepared, manifest_dir=tmp_path, train_cuts=("tight.jsonl.gz",),
                on_the_fly_feats=True, speed_perturb=True, drop_last=False, min_cut_duration=0.0,
                spec_augment=SpecAugmentConfig(enabled=False))
    model = SimpleNamespace(encoder=SimpleNamespace(output_length=subsampled_length))
    kept = _load_filtered(ExperimentConfig(data=data), model, data.train_cuts, CharEncoder(),
                          "training", train=True)
    assert {c.id: allowed_speeds(c) for c in kept} == {
        **{c.id: (1.0, 0.9) for c in cuts[:4]}, **{c.id: None for c in cuts[4:]}}
    by_id = {c.id: c for c in kept}
    frames_at_1 = {c.id: compute_num_frames(c.duration, 0.01, 16000) for c in kept}
    batches = EpochBatches(kept, data, CharEncoder())
    speed = batches.loader.dataset.speed_perturbation
    speeds, tight_speeds = set(), set()
    for epoch in range(1, 5):
        for batch in batches(epoch, 0):
            assert torch.all(batch.token_lens <= subsampled_length(batch.feat_lens)), batch.cut_ids
            drawn = {i: speed.factor(i, allowed_speeds(by_id[i])) for i in batch.cut_ids}
            for i, frames in zip(batch.cut_ids, batch.feat_lens.tolist()):  # as drawn
                assert abs(frames_at_1[i] / drawn[i] / frames - 1) < 0.02
            speeds |= set(drawn.values())
            tight_speeds |= {drawn[c.id] for c in cuts[:4] if c.id in drawn}
    assert speeds == {0.9, 1.0, 1.1} and tight_speeds == {0.9, 1.0}


def _write_noise_cuts(tmp_path) -> Path:
    """A manifest of one 3 s white-noise recording; returns its path."""
    rng = np.random.default_rng(1)
    noise_wav = tmp_path / "noise.flac"
    sf.write(noise_wav, (0.3 * rng.standard_normal(48000)).astype(np.float32), 16000)
    noise_cuts = CutSet.from_manifests(recordings=[Recording.from_file(noise_wav)])
    noise_cuts.to_file(tmp_path / "noise_cuts.jsonl.gz")
    return tmp_path / "noise_cuts.jsonl.gz"


def test_noise_mixing_in_training_only(prepared: dict, tmp_path) -> None:
    cuts = CutSet.from_file(prepared["manifests"]["train-clean-5"])
    cfg = _cfg(prepared, on_the_fly_feats=True, spec_augment=SpecAugmentConfig(enabled=False),
               noise=NoiseConfig(cuts_path=_write_noise_cuts(tmp_path), snr_db=(0.0, 5.0),
                                 probability=1.0))
    clean = AsrDataset.from_config(cfg, CharEncoder(), train=False)[cuts]
    noisy = AsrDataset.from_config(cfg, CharEncoder(), train=True)[cuts]
    assert noisy.cut_ids == clean.cut_ids and torch.equal(noisy.feat_lens, clean.feat_lens)
    for i, n in enumerate(clean.feat_lens.tolist()):
        # white noise at 0-5 dB SNR raises the energy of the (tonal) high-frequency bins a lot
        assert (noisy.feats[i, :n, 60:] - clean.feats[i, :n, 60:]).mean() > 1.0


def test_noise_without_stored_features_is_refused_for_stored_training_features(
        prepared: dict, tmp_path) -> None:
    """With stored features lhotse mixes noise in the feature domain: noise cuts without
    features failed the first training batch with an AttributeError naming no file; they are
    refused when the dataset is made, naming the option and a noise cut, and noise with stored
    features is mixed."""
    import warnings

    from lhotse import LilcomChunkyWriter

    from asr.features.fbank import make_lhotse_fbank

    cuts = _train_cuts(prepared)
    no_features = _write_noise_cuts(tmp_path)
    quiet = dict(spec_augment=SpecAugmentConfig(enabled=False))
    cfg = _cfg(prepared, noise=NoiseConfig(cuts_path=no_features, probability=1.0), **quiet)
    with pytest.raises(ValueError, match=rf"data.noise.cuts_path {no_features}: .*feature "
                                         r"domain: 1 cuts have no stored features, e.g. cut .*"
                                         r"noise\.flac"):
        AsrDataset.from_config(cfg, CharEncoder(), train=True)
    AsrDataset.from_config(cfg, CharEncoder(), train=False)  # evaluation mixes no noise
    stored = CutSet.from_file(no_features).compute_and_store_features(
        make_lhotse_fbank(FbankConfig()), tmp_path / "noise_feats",
        storage_type=LilcomChunkyWriter)
    stored.to_file(tmp_path / "stored_noise.jsonl.gz")
    cfg = _cfg(prepared, noise=NoiseConfig(cuts_path=tmp_path / "stored_noise.jsonl.gz",
                                           probability=1.0, snr_db=(0.0, 5.0)), **quiet)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor lhotse's warning about a lambda in a lazy map
        dataset = AsrDataset.from_config(cfg, CharEncoder(), train=True)
    noisy = dataset[cuts]
    clean = AsrDataset.from_config(cfg, CharEncoder(), train=False)[cuts]
    assert noisy.cut_ids == clean.cut_ids and torch.equal(noisy.feat_lens, clean.feat_lens)
    assert noisy.texts == clean.texts
    for i, n in enumerate(clean.feat_lens.tolist()):  # the noise raises the high bins' energy
        assert (noisy.feats[i, :n, 60:] - clean.feats[i, :n, 60:]).mean() > 0.1


def test_noise_without_audio_is_refused_for_on_the_fly_training_features(
        prepared: dict, tmp_path) -> None:
    """On-the-fly features mix the noise into the audio: noise cuts with stored features alone
    failed the first training batch with an AttributeError on a NoneType, naming the training
    cut's audio file as the one that cannot be read. They are refused when the dataset is
    made, naming the option and a noise cut; evaluation (no noise) still builds."""
    from lhotse import LilcomChunkyWriter

    from asr.features.fbank import make_lhotse_fbank

    with_audio = CutSet.from_file(_write_noise_cuts(tmp_path))
    features_only = with_audio.compute_and_store_features(
        make_lhotse_fbank(FbankConfig()), tmp_path / "noise_feats",
        storage_type=LilcomChunkyWriter).drop_recordings()
    features_only.to_file(tmp_path / "features_only.jsonl.gz")
    cfg = _cfg(prepared, on_the_fly_feats=True, spec_augment=SpecAugmentConfig(enabled=False),
               noise=NoiseConfig(cuts_path=tmp_path / "features_only.jsonl.gz",
                                 probability=1.0))
    with pytest.raises(ValueError, match=r"data\.noise\.cuts_path .*features_only\.jsonl\.gz: "
                                         r".*1 noise cuts have no audio, e\.g\. cut .*noise_feats"):
        AsrDataset.from_config(cfg, CharEncoder(), train=True)
    AsrDataset.from_config(cfg, CharEncoder(), train=False)


def test_multichannel_noise_is_refused_for_on_the_fly_training_features(
        prepared: dict, tmp_path) -> None:
    """A stereo noise recording was mixed into the mono training audio as it came: the mixed
    cut had two channels, whose features lhotse computes from the first alone, so the
    noise's other channel (and the SNR drawn for both) was silently not what training heard;
    stored training cuts of several channels are refused for the same reason
    (:func:`asr.data.filtering.check_cut_audio`), and noise corpora (MUSAN) are mono. It is
    refused when the dataset is made, naming the option and the noise cut."""
    rng = np.random.default_rng(2)
    stereo = tmp_path / "stereo.flac"
    sf.write(stereo, (0.3 * rng.standard_normal((32000, 2))).astype(np.float32), 16000)
    mono = CutSet.from_file(_write_noise_cuts(tmp_path))
    noise = mono + CutSet.from_manifests(
        recordings=[Recording.from_file(stereo, recording_id="stereo")])
    noise.to_file(tmp_path / "mixed_noise.jsonl.gz")
    cfg = _cfg(prepared, on_the_fly_feats=True, spec_augment=SpecAugmentConfig(enabled=False),
               noise=NoiseConfig(cuts_path=tmp_path / "mixed_noise.jsonl.gz", probability=1.0))
    with pytest.raises(ValueError, match=r"data\.noise\.cuts_path .*mixed_noise\.jsonl\.gz: "
                                         r".*: 1 cuts hold several audio channels, e\.g\. "
                                         r"cut 'stereo.*' with 2 \(audio .*stereo\.flac\)"):
        AsrDataset.from_config(cfg, CharEncoder(), train=True)
    AsrDataset.from_config(cfg, CharEncoder(), train=False)


def test_make_dataloader_and_strict_config(prepared: dict) -> None:
    data = {"manifest_dir": str(prepared["root"] / "fbank"),
            "train_cuts": ["librispeech_cuts_train-clean-5.jsonl.gz"],
            "dev_cuts": ["librispeech_cuts_dev-clean-2.jsonl.gz"],
            "max_duration": 3.0, "max_cut_duration": 3.0, "num_buckets": 2, "num_workers": 0,
            "drop_last": False,
            "spec_augment": {"num_time_masks": 1}}
    cfg = from_dict(DataConfig, data)
    assert cfg.spec_augment.num_time_masks == 1 and cfg.fbank.num_mel_bins == 80
    with pytest.raises(ConfigError, match="data_dir"):
        from_dict(DataConfig, {"data_dir": "x"})
    assert from_dict(DataConfig, {"spec_augment": {"num_time_masks": 0}})  # no time masks
    cuts, stats = filter_cuts(load_cuts(cfg.manifest_dir, cfg.train_cuts), CharEncoder(),
                              subsampled_length, min_duration=cfg.min_cut_duration,
                              max_duration=cfg.max_cut_duration)
    assert stats.kept == 8
    loader = make_dataloader(cuts, cfg, CharEncoder(), train=True)
    batches = list(loader)
    assert all(isinstance(b, Batch) for b in batches)
    assert sorted(i for b in batches for i in b.cut_ids) == sorted(u.utt_id for u in
                                                                 prepared["utts"]["train-clean-5"])
    dev = make_dataloader(load_cuts(cfg.manifest_dir, cfg.dev_cuts), cfg, CharEncoder(), False)
    assert sum(b.batch_size for b in dev) == 3


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="speed_perturb=true needs data.on_the_fly_feats"):
        DataConfig(speed_perturb=True)
    with pytest.raises(ValueError, match="max_cut_duration"):
        DataConfig(max_duration=10.0, max_cut_duration=20.0)
    with pytest.raises(ValueError, match="snr_db"):
        NoiseConfig(snr_db=(20.0, 10.0))
    with pytest.raises(FileNotFoundError, match="nope.jsonl.gz"):
        load_cuts("/nonexistent", ["nope.jsonl.gz"])


def test_dataloader_with_workers_matches_eval_batches(prepared: dict) -> None:
    cfg = _cfg(prepared, max_duration=4.0, max_cut_duration=4.0, num_workers=2)
    cuts = load_cuts(cfg.manifest_dir, cfg.dev_cuts)
    with_workers = list(make_dataloader(cuts, cfg, CharEncoder(), train=False))
    in_process = list(make_dataloader(cuts, replace(cfg, num_workers=0), CharEncoder(), False))
    assert [b.cut_ids for b in with_workers] == [b.cut_ids for b in in_process]
    for a, b in zip(with_workers, in_process):
        assert torch.equal(a.feats, b.feats) and torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize("on_the_fly", [False, True])
def test_a_cut_that_cannot_be_loaded_is_named_with_its_file(prepared: dict, tmp_path,
                                                              on_the_fly: bool) -> None:
    """A corrupt feature archive entry / a truncated audio file in the middle of a batch: the
    error names that cut and its file, not just what lilcom or lhotse say."""
    cuts = list(_train_cuts(prepared))[:3]
    victim = cuts[1]
    if on_the_fly:
        source = victim.recording.sources[0].source
        truncated = tmp_path / "truncated.flac"
        data = open(source, "rb").read()
        truncated.write_bytes(data[: len(data) // 3])
        victim.recording.sources[0].source = str(truncated)
        expected = r"truncated\.flac"
    else:
        victim.features.storage_key = "999999999,100"  # beyond the end of the archive
        expected = r"\.lca"
    cfg = _cfg(prepared, on_the_fly_feats=on_the_fly)
    dataset = AsrDataset.from_config(cfg, CharEncoder(), train=False)
    with pytest.raises(DataError, match=rf"cut {victim.id!r} \(.*{expected}") as err:
        dataset[CutSet.from_cuts(cuts)]
    # one wording with Shar export and the other readers of cut data
    field = "recording" if on_the_fly else "features"
    assert str(err.value) == unreadable_cut_error(victim, [field])
    assert str(err.value).startswith(f"cannot read the {field} of cut {victim.id!r} (")


def test_a_corrupt_audio_file_under_noise_is_named_with_its_cut_and_file(prepared: dict,
                                                                          tmp_path) -> None:
    """With noise mixing a training cut is a mixed cut (its audio and the noise's): the message
    about one that cannot be loaded failed itself (AttributeError: a mixed cut has no
    ``recording`` or ``features`` of its own) instead of naming the cut and its files."""
    cuts = list(CutSet.from_file(prepared["manifests"]["train-clean-5"]))[:3]
    victim = cuts[1]
    truncated = tmp_path / "truncated.flac"
    data = Path(victim.recording.sources[0].source).read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    victim.recording.sources[0].source = str(truncated)
    noise = _write_noise_cuts(tmp_path)
    cfg = _cfg(prepared, on_the_fly_feats=True, spec_augment=SpecAugmentConfig(enabled=False),
               noise=NoiseConfig(cuts_path=noise, probability=1.0))
    dataset = AsrDataset.from_config(cfg, CharEncoder(), train=True)
    with pytest.raises(DataError, match=rf"cut {victim.id!r} \(audio .*truncated\.flac, "
                                        r"audio .*noise\.flac\)"):
        dataset[CutSet.from_cuts(cuts)]


def test_a_cut_without_supervision_is_named_with_its_file(prepared: dict) -> None:
    """An unfiltered set (filter_cuts drops them as empty_text) with a cut that has nothing to
    transcribe: the error named the cut alone, not where it comes from."""
    cuts = list(_train_cuts(prepared))[:2]
    cuts[1].supervisions = []
    dataset = AsrDataset.from_config(_cfg(prepared), CharEncoder(), train=False)
    with pytest.raises(ValueError, match=rf"cut {cuts[1].id!r} \(features .*\.lca, audio .*"
                                         rf"{cuts[1].id}\.flac\) has no supervision"):
        dataset[CutSet.from_cuts(cuts)]


def test_a_text_the_tokenizer_refuses_names_its_cut(prepared: dict) -> None:
    """A dataset built without the filter (which refuses such a text first) encoded the texts
    bare: the tokenizer's error named the text, not the cut nor where the text comes from."""
    cuts = list(_train_cuts(prepared))[:3]
    cuts[1].supervisions = [replace(cuts[1].supervisions[0], text="A\u2581B")]
    dataset = AsrDataset.from_config(_cfg(prepared), build_char_tokenizer(["AB"]), train=False)
    with pytest.raises(ValueError, match=rf"^cut {cuts[1].id!r}, its supervisions' text: "
                                         "text 'A\u2581B' holds '\u2581'"):
        dataset[CutSet.from_cuts(cuts)]


def test_cuts_at_another_sample_rate_are_refused_before_any_batch(prepared: dict,
                                                                   tmp_path) -> None:
    cuts = list(_train_cuts(prepared).drop_features())[:3]
    path = tmp_path / "8k.wav"
    sf.write(path, np.zeros(8000, dtype=np.float32), 8000)
    odd = cuts[2].with_recording_path_prefix("")  # a copy
    odd.recording = Recording.from_file(path, recording_id=odd.recording.id)
    odd.duration = odd.recording.duration
    odd.supervisions = [replace(odd.supervisions[0], duration=odd.duration)]
    cfg = _cfg(prepared, on_the_fly_feats=True)
    with pytest.raises(ValueError, match=rf"1 cuts are not at 16000 Hz, e.g. cut {odd.id!r} at "
                                         r"8000 Hz \(audio .*8k\.wav\)"):
        make_dataloader(CutSet.from_cuts([*cuts[:2], odd]), cfg, CharEncoder(), train=True)


def test_multi_channel_cuts_are_refused_before_any_batch(prepared: dict, tmp_path) -> None:
    """lhotse would compute a stereo cut's on-the-fly features from channel 0 alone, while
    recognition averages the channels: the training data path refuses such cuts by name."""
    cuts = list(_train_cuts(prepared).drop_features())[:3]
    path = tmp_path / "stereo.wav"
    sf.write(path, np.zeros((16000, 2), dtype=np.float32), 16000)
    stereo = Recording.from_file(path, recording_id="stereo").to_cut()
    cfg = _cfg(prepared, on_the_fly_feats=True)
    with pytest.raises(ValueError, match=r"1 cuts hold several audio channels, e.g. cut "
                                         rf"{stereo.id!r} with 2 \(audio .*stereo\.wav\)"):
        make_dataloader(CutSet.from_cuts([*cuts[:2], stereo]), cfg, CharEncoder(), train=True)


@pytest.mark.parametrize("fbank, field", [
    (FbankConfig(num_mel_bins=40), r"other than 40 mel bins \(data\.fbank\.num_mel_bins\), "
                                   r"e\.g\. cut '[^']+' with 80"),
    (FbankConfig(frame_shift_ms=20.0), r"a frame shift other than 20 ms "
                                       r"\(data\.fbank\.frame_shift_ms\), e\.g\. cut '[^']+' with "
                                       r"10 ms"),
])
def test_stored_features_made_with_other_fbank_options_are_refused_before_any_batch(
        prepared: dict, fbank: FbankConfig, field: str) -> None:
    """Features stored by `asr prepare fbank` with other options than data.fbank were read as
    they were: a frame shift of 10 ms under a 20 ms config trained silently (inference then
    feeds the model 20 ms frames); other mel bins failed in the encoder, naming no file. Both
    are refused when the loader is made, naming the cut, its feature file and the option."""
    cfg = _cfg(prepared, fbank=fbank, spec_augment=SpecAugmentConfig(max_freq_mask_width=10))
    for train in (True, False):
        with pytest.raises(ValueError, match=rf"8 cuts have stored features with {field} "
                                             r"\(features .*librispeech_feats_train-clean-5\.lca"):
            make_dataloader(_train_cuts(prepared), cfg, CharEncoder(), train=train)


def test_cuts_without_stored_features_are_refused_unless_computed_on_the_fly(
        prepared: dict) -> None:
    """Cuts of `asr prepare manifests` (no features) under data.on_the_fly_feats=false failed
    at their first batch with a bare AssertionError; now the loader names the setting."""
    cuts = CutSet.from_file(prepared["manifests"]["train-clean-5"])
    first = next(iter(cuts))
    with pytest.raises(ValueError, match=rf"8 cuts have no stored features, e.g. cut "
                                         rf"{first.id!r} \(audio .*\.flac\).*"
                                         r"data\.on_the_fly_feats=true"):
        make_dataloader(cuts, _cfg(prepared), CharEncoder(), train=True)
    batches = list(make_dataloader(cuts, _cfg(prepared, on_the_fly_feats=True), CharEncoder(),
                                   train=False))
    assert sum(len(batch.cut_ids) for batch in batches) == 8


def test_evaluation_batches_of_on_the_fly_features_get_no_dither(prepared: dict) -> None:
    """data.fbank.dither is training noise: dev batches (validation loss, dev WER) and
    `asr decode` on on-the-fly features got it too, so their features and scores moved with the
    seed. Evaluation batches now equal those of dither 0; training batches keep the dither."""
    cuts = CutSet.from_file(prepared["manifests"]["train-clean-5"]).subset(first=4)
    plain = AsrDataset.from_config(_cfg(prepared, on_the_fly_feats=True), CharEncoder(),
                                   train=False)[cuts]
    dithered = _cfg(prepared, on_the_fly_feats=True, fbank=FbankConfig(dither=0.1),
                    spec_augment=SpecAugmentConfig(enabled=False))
    for seed in (1, 2):
        evaluation = AsrDataset.from_config(replace(dithered, seed=seed), CharEncoder(),
                                            train=False)[cuts]
        assert evaluation.cut_ids == plain.cut_ids and torch.equal(evaluation.feats, plain.feats)
    training = AsrDataset.from_config(dithered, CharEncoder(), train=True)[cuts]
    assert torch.equal(training.feat_lens, plain.feat_lens)
    assert not torch.equal(training.feats, plain.feats)


def test_training_with_dither_on_stored_features_is_refused_naming_the_fields(
        prepared: dict) -> None:
    """Stored features were computed without dither, and the training batches read them as
    they are: data.fbank.dither was ignored without a word. Evaluation batches (which drop
    dither anyway) still load."""
    cfg = _cfg(prepared, fbank=FbankConfig(dither=0.1))
    with pytest.raises(ValueError, match=r"data\.fbank\.dither=0\.1 needs "
                                         r"data\.on_the_fly_feats=true"):
        AsrDataset.from_config(cfg, CharEncoder(), train=True)
    cuts = _train_cuts(prepared).subset(first=2)
    assert len(AsrDataset.from_config(cfg, CharEncoder(), train=False)[cuts].cut_ids) == 2


def _augmented(prepared: dict, noise_cuts: Path | None, **kw) -> DataConfig:
    """On-the-fly features with every random augmentation on: speed perturbation, noise, dither,
    frequency warp and SpecAugment (time warp, frequency and time masks)."""
    every = SpecAugmentConfig(time_warp_factor=5, num_freq_masks=2, max_freq_mask_width=15,
                              num_time_masks=2, max_time_mask_width=10, probability=1.0)
    base = dict(on_the_fly_feats=True, speed_perturb=True, drop_last=False, max_duration=2.5,
                max_cut_duration=2.5, spec_augment=every,
                freq_warp=FreqWarpConfig(enabled=True, max_warp=0.1),
                noise=NoiseConfig(cuts_path=noise_cuts, snr_db=(5.0, 15.0), probability=0.5),
                fbank=FbankConfig(dither=0.1))
    base.update(kw)
    return _cfg(prepared, **base)


def test_augmented_batches_do_not_depend_on_workers_or_the_resume_point(prepared: dict,
                                                                       tmp_path) -> None:
    """The draws of a batch were each worker's own RNG stream (seeded per worker, advanced by
    every batch it made) or, in process, the training loop's: a batch got other masks, warps,
    noise and dither with 2 workers than with none, and after a resumption mid-epoch. Now an
    epoch's augmented batches are the same with 0 or 2 workers, a resumed epoch's are the
    uninterrupted one's, and making them leaves the caller's RNGs where they were."""
    from asr.data.epochs import EpochBatches

    cuts = CutSet.from_file(prepared["manifests"]["train-clean-5"])
    cfg = _augmented(prepared, _write_noise_cuts(tmp_path))
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    # one thread, as in a DataLoader worker: with two, some CPUs sum the fbank's products in
    # another order (1e-4 apart), which is not what this test is about
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        in_process = list(EpochBatches(cuts, cfg, CharEncoder())(2, 0))
    finally:
        torch.set_num_threads(threads)
    after = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    with_workers = EpochBatches(cuts, replace(cfg, num_workers=2), CharEncoder())
    assert len(in_process) >= 4
    for batches in (list(with_workers(2, 0)), [None, None, *with_workers(2, 2)]):
        assert len(batches) == len(in_process)
        for a, b in zip(in_process, batches):
            if b is not None:
                assert a.cut_ids == b.cut_ids and torch.equal(a.feat_lens, b.feat_lens)
                assert torch.equal(a.feats, b.feats), a.cut_ids
    # the augmentations did draw: nothing like the clean features of the same cuts
    clean = AsrDataset.from_config(cfg, CharEncoder(), train=False)
    for batch in in_process:
        plain = clean[CutSet.from_cuts(c for c in cuts if c.id in batch.cut_ids)]
        if torch.equal(plain.feat_lens, batch.feat_lens):  # speed factor 1 throughout
            assert not torch.equal(plain.feats, batch.feats)
    assert before[0] == after[0] and np.array_equal(before[1], after[1])
    assert torch.equal(before[2], after[2])


def test_an_utterances_draws_follow_seed_epoch_and_cut_id_not_its_batch(prepared: dict,
                                                                         tmp_path) -> None:
    """Frequency warp and SpecAugment of a cut are drawn from (seed, epoch, cut id): the same in
    any batch (e.g. with another max_duration or number of ranks), different in another epoch or
    with another seed; noise and dither, drawn per batch, differ between epochs and seeds too."""
    cuts = list(_train_cuts(prepared))
    no_noise = dict(speed_perturb=False, noise=NoiseConfig(), fbank=FbankConfig())
    per_utterance = _augmented(prepared, None, on_the_fly_feats=False, **no_noise)

    def feats_of(cfg: DataConfig, cut_id: str, batch_cuts: list, epoch: int,
                 seed: int = 42) -> Tensor:
        dataset = AsrDataset.from_config(replace(cfg, seed=seed), CharEncoder(), train=True)
        dataset.set_epoch(epoch)
        batch = dataset[CutSet.from_cuts(batch_cuts)]
        i = batch.cut_ids.index(cut_id)
        return batch.feats[i, : batch.feat_lens[i]]

    target = cuts[1].id
    alone = feats_of(per_utterance, target, cuts[1:2], epoch=3)
    assert torch.equal(feats_of(per_utterance, target, cuts[:3], epoch=3), alone)
    assert torch.equal(feats_of(per_utterance, target, cuts[1:6], epoch=3), alone)
    assert not torch.equal(feats_of(per_utterance, target, cuts[1:2], epoch=4), alone)
    assert not torch.equal(feats_of(per_utterance, target, cuts[1:2], epoch=3, seed=43), alone)

    per_batch = _augmented(prepared, _write_noise_cuts(tmp_path), speed_perturb=False,
                           spec_augment=SpecAugmentConfig(enabled=False),
                           freq_warp=FreqWarpConfig(enabled=False))
    audio_cuts = list(CutSet.from_file(prepared["manifests"]["train-clean-5"]))[:3]
    noisy = feats_of(per_batch, target, audio_cuts, epoch=3)
    assert torch.equal(feats_of(per_batch, target, audio_cuts, epoch=3), noisy)
    assert not torch.equal(feats_of(per_batch, target, audio_cuts, epoch=4), noisy)
    assert not torch.equal(feats_of(per_batch, target, audio_cuts, epoch=3, seed=43), noisy)


def _misnamed_manifests(prepared: dict, directory: Path) -> tuple[Path, Path]:
    """(a gzip manifest named ``.jsonl``, a plain one named ``.jsonl.gz``) of the dev cuts."""
    import gzip

    data = prepared["fbank"]["dev-clean-2"].read_bytes()
    compressed, plain = directory / "gzip.jsonl", directory / "plain.jsonl.gz"
    compressed.write_bytes(data)
    plain.write_bytes(gzip.decompress(data))
    return compressed, plain


def test_lhotse_tells_a_gzip_manifest_by_its_name(prepared: dict, tmp_path) -> None:
    """What :func:`asr.fileio.check_gzip_name` guards against: lhotse opens ``*.gz`` with gzip
    and anything else as text, and fails with errors that name no file. (If lhotse comes to go
    by the bytes, this fails: the check can then let such names through.)"""
    import gzip

    compressed, plain = _misnamed_manifests(prepared, tmp_path)
    with pytest.raises(UnicodeDecodeError):
        list(CutSet.from_jsonl_lazy(compressed))
    with pytest.raises(gzip.BadGzipFile):
        list(CutSet.from_jsonl_lazy(plain))


def test_a_manifest_whose_name_belies_its_compression_is_refused_naming_it(prepared: dict,
                                                                            tmp_path) -> None:
    """The project's own readers take both (by the bytes); where lhotse reads the manifest
    (``load_cuts``), its name must tell gzip: an error naming the file and the fix, not a bare
    'utf-8 codec can't decode' or 'Not a gzipped file'."""
    from asr.data.cut_ids import manifest_ids

    compressed, plain = _misnamed_manifests(prepared, tmp_path)
    ids = [cut_id for _, cut_id in manifest_ids(prepared["fbank"]["dev-clean-2"])]
    assert [cut_id for _, cut_id in manifest_ids(compressed)] == ids
    assert [cut_id for _, cut_id in manifest_ids(plain)] == ids
    with pytest.raises(ValueError, match=rf"cut manifest {compressed} is gzip-compressed but its "
                                         r"name does not end in \.gz.*rename it gzip\.jsonl\.gz"):
        load_cuts(tmp_path, [compressed.name])
    with pytest.raises(ValueError, match=rf"cut manifest {plain} is not gzip-compressed but its "
                                         r"name ends in \.gz"):
        load_cuts(tmp_path, [plain.name])



def test_a_misnamed_evaluation_set_is_refused_saying_asr_reads_it(prepared: dict,
                                                                   tmp_path) -> None:
    """A test or dev set is read by asr, by its bytes (``load_eval_cuts``), not by lhotse: the
    name check, the same rule as for training manifests, said "lhotse, which reads it"."""
    from asr.data.cut_ids import load_eval_cuts

    for path in _misnamed_manifests(prepared, tmp_path):
        with pytest.raises(ValueError, match=rf"cut manifest {path} is .*, and asr, which reads "
                                             r"this evaluation set, goes by its bytes, but "
                                             r"lhotse, which reads training manifests, goes by "
                                             r"the name") as err:
            load_eval_cuts(tmp_path, [path.name])
        assert "lhotse, which reads it" not in str(err.value)
        with pytest.raises(ValueError, match="lhotse, which reads it, goes by the name"):
            load_cuts(tmp_path, [path.name])

def test_a_corrupt_gzip_manifest_is_an_error_naming_it(prepared: dict, tmp_path) -> None:
    """Corrupt compressed data (not cut short) raised a bare ``zlib.error`` naming no file from
    the manifest reader; the ARPA reader named its file for the same error."""
    from asr.data.cut_ids import manifest_ids

    data = prepared["fbank"]["train-clean-5"].read_bytes()
    path = tmp_path / "corrupt.jsonl.gz"
    path.write_bytes(data[:10] + bytes(b ^ 0x55 for b in data[10:-8]) + data[-8:])
    with pytest.raises(ValueError, match=rf"cut manifest {path} cannot be read: "):
        list(manifest_ids(path))


class _HeldFeatures:
    """An input strategy that hands out (and keeps) one float32 tensor: frame t of cut i holds
    i + t / 100 in every bin, ``round(100 * duration)`` frames, then padding of 7."""

    def __init__(self) -> None:
        self.held: Tensor | None = None

    def __call__(self, cuts) -> tuple[Tensor, Tensor]:
        lens = torch.tensor([round(100 * cut.duration) for cut in cuts])
        feats = torch.full((len(lens), int(lens.max()), 4), 7.0)
        for i, n in enumerate(lens.tolist()):
            feats[i, :n] = (i + torch.arange(n) / 100).unsqueeze(1)
        self.held = feats
        return feats, lens


def _dummy_cuts(*durations: float) -> CutSet:
    return CutSet.from_cuts(
        dummy_cut(i, duration=d, supervisions=[dummy_supervision(i, duration=d, text="AB")])
        for i, d in enumerate(durations))


def test_feature_transforms_get_the_valid_frames_and_leave_the_loaded_features_alone() -> None:
    """Each utterance's transform sees its feat_lens frames (not the batch's padding), and the
    tensor the input strategy gave stays as it was (the transforms work on a copy)."""
    strategy, seen = _HeldFeatures(), []

    def shift(x: Tensor) -> Tensor:
        seen.append(x.clone())
        return x + 1.0

    batch = AsrDataset(CharEncoder(), strategy, feature_transforms=[shift])[_dummy_cuts(0.3, 0.5)]
    loaded = strategy.held.clone()
    strategy(CutSet.from_cuts(_dummy_cuts(0.5, 0.3).sort_by_duration(ascending=False)))
    assert torch.equal(loaded, strategy.held)  # untouched by the dataset
    assert [x.shape[0] for x in seen] == batch.feat_lens.tolist() == [50, 30]
    for i, n in enumerate(batch.feat_lens.tolist()):
        assert torch.equal(seen[i], loaded[i, :n])
        assert torch.equal(batch.feats[i, :n], loaded[i, :n] + 1.0)
        assert torch.all(batch.feats[i, n:] == 0)


def test_batch_draws_follow_the_batchs_cut_ids() -> None:
    """Cut transforms (noise, dither) draw from RNGs seeded with the batch's cut ids: the same
    batch draws the same, another batch of the same size draws otherwise."""
    draws: list[float] = []

    def record(cuts):
        draws.append(random.random())
        return cuts

    cuts = list(_dummy_cuts(0.3, 0.4, 0.5, 0.6))
    dataset = AsrDataset(CharEncoder(), _HeldFeatures(), cut_transforms=[record])
    for batch in (cuts[:2], cuts[2:], cuts[:2]):
        dataset[CutSet.from_cuts(batch)]
    assert draws[0] == draws[2] and draws[0] != draws[1]


def test_an_empty_batch_and_a_cut_without_transcript_are_errors_naming_them() -> None:
    dataset = AsrDataset(CharEncoder(), _HeldFeatures())
    with pytest.raises(ValueError, match="AsrDataset got an empty CutSet"):
        dataset[CutSet.from_cuts([])]
    silent = dummy_cut(5, duration=0.4, supervisions=[])
    with pytest.raises(ValueError, match=rf"cut {silent.id!r} \(.*\) has no supervision"):
        dataset[CutSet.from_cuts([*_dummy_cuts(0.3), silent])]


def test_manifest_checks_name_what_is_wrong(tmp_path) -> None:
    """A JSON first line without an id is no cut; no manifest names is an error, not an
    IndexError in load_cuts."""
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"duration": 1.0}) + "\n")
    with pytest.raises(ValueError, match=rf"{path} is not a lhotse cut manifest"):
        load_cuts(tmp_path, [path.name])
    for names in ([], ()):
        with pytest.raises(ValueError, match=rf"no cut manifest names given for {tmp_path}"):
            checked_manifests(tmp_path, names)
        with pytest.raises(ValueError, match="no cut manifest names"):
            load_cuts(tmp_path, names)


def test_speed_factors_are_those_training_draws() -> None:
    """Without speed perturbation a training cut is judged (filtered) at speed 1 alone."""
    assert speed_factors(DataConfig()) == (1.0,)
    perturbed = DataConfig(on_the_fly_feats=True, speed_perturb=True)
    assert speed_factors(perturbed) == (1.0, 0.9, 1.1)
    assert set(speed_factors(perturbed)) == {1.0, *ON_THE_FLY_SPEED_FACTORS}


def test_set_epoch_draws_that_epochs_speed_factors(prepared: dict) -> None:
    cfg = _cfg(prepared, on_the_fly_feats=True, speed_perturb=True)
    dataset = AsrDataset.from_config(cfg, CharEncoder(), train=True)
    ids = [f"cut-{i}" for i in range(20)]
    by_epoch = {}
    for epoch in (1, 2):
        dataset.set_epoch(epoch)
        reference = SpeedPerturbation(cfg.seed, ON_THE_FLY_SPEED_FACTORS)
        reference.set_epoch(epoch)
        by_epoch[epoch] = [dataset.speed_perturbation.factor(i) for i in ids]
        assert by_epoch[epoch] == [reference.factor(i) for i in ids]
    assert by_epoch[1] != by_epoch[2]


def test_speed_perturbed_training_buckets_are_estimated_from_the_cuts_as_they_are(
        prepared: dict) -> None:
    """The duration buckets come from the unperturbed cuts (the factors average out), the same
    buckets as without speed perturbation."""
    cuts = CutSet.from_file(prepared["manifests"]["train-clean-5"])
    cfg = _cfg(prepared, on_the_fly_feats=True, num_buckets=4, max_cut_duration=20.0)
    plain = make_dataloader(cuts, cfg, CharEncoder(), train=True)
    perturbed = make_dataloader(cuts, replace(cfg, speed_perturb=True), CharEncoder(), train=True)
    assert perturbed.sampler.duration_bins == plain.sampler.duration_bins


def test_an_empty_noise_manifest_is_refused_naming_it(prepared: dict, tmp_path) -> None:
    path = tmp_path / "noise_cuts.jsonl.gz"
    CutSet.from_cuts([]).to_file(path)
    cfg = _cfg(prepared, on_the_fly_feats=True, noise=NoiseConfig(cuts_path=path))
    with pytest.raises(ValueError, match=rf"data.noise.cuts_path {path} holds no cuts"):
        AsrDataset.from_config(cfg, CharEncoder(), train=True)
    assert AsrDataset.from_config(cfg, CharEncoder(), train=False).cut_transforms == []
