"""VTLP of log-mel features: the warp function, tone peaks move where the physics says, wiring."""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording
from lhotse.dataset import SpecAugment
from lhotse.supervision import SupervisionSegment
from librispeech_tree import CharEncoder

from asr.config import ConfigError, from_dict
from asr.data.augment import (
    FrequencyWarp,
    NoiseMixing,
    SpeedPerturbation,
    UtteranceSpecAugment,
    draw_seed,
    preserved_rngs,
    seed_rngs,
    vtlp_warp,
)
from asr.data.config import DataConfig, FreqWarpConfig, SpecAugmentConfig
from asr.data.dataset import AsrDataset
from asr.data.filtering import check_cut_audio
from asr.features.fbank import FbankConfig, compute_fbank, mel_filter_centers, slaney_mel


def test_vtlp_warp_is_the_papers_piecewise_linear_map() -> None:
    top, knee = 7600.0, 4800.0
    freq = torch.linspace(0.0, top, 1001, dtype=torch.float64)
    for alpha in (0.8, 0.9, 1.0, 1.1, 1.2):
        warped = vtlp_warp(freq, alpha, knee, top)
        edge = knee * min(alpha, 1.0) / alpha
        below = freq <= edge
        assert torch.allclose(warped[below], alpha * freq[below])
        assert float(warped[0]) == 0.0 and math.isclose(float(warped[-1]), top)
        assert torch.all(torch.diff(warped) > 0)  # monotone: no band is folded or lost
        # continuous at the knee
        at_edge = vtlp_warp(torch.tensor([edge - 1e-6, edge + 1e-6], dtype=torch.float64),
                            alpha, knee, top)
        assert abs(float(at_edge[1] - at_edge[0])) < 1e-4
    with pytest.raises(ValueError, match="> 0"):
        vtlp_warp(freq, 0.0, knee, top)


#: Kaldi's filters, and librosa's as sherpa-onnx's NeMo front end sets them up.
FILTER_BANKS = [FbankConfig(), FbankConfig(mel_filters="librosa", low_freq=0.0)]


@pytest.mark.parametrize("cfg", FILTER_BANKS, ids=["kaldi", "librosa"])
def test_warp_centres_are_the_filter_peaks(cfg: FbankConfig) -> None:
    """The warp's centre k is where filter k of the features' own bank peaks: a tone there
    maximises bin k."""
    centres = FrequencyWarp.from_fbank(cfg, FreqWarpConfig()).centres
    assert centres.shape == (80,) and torch.all(torch.diff(centres) > 0)
    assert cfg.low_freq < float(centres[0]) and float(centres[-1]) < 7600.0
    t = np.arange(16000) / 16000.0
    for k in (10, 30, 50, 70):
        feats = compute_fbank(0.5 * np.sin(2 * np.pi * float(centres[k]) * t), 16000, cfg)
        assert int(feats.mean(0).argmax()) == k


def test_librosa_warp_reads_the_warped_frequency_on_the_slaney_scale() -> None:
    """Output bin k reads fractional input bin p with slaney_mel(W(f_k)) at p's place on the
    bank's equally spaced Slaney mel axis: the centre of filter p when p is whole. (On Kaldi's
    HTK scale p was up to 0.8 bins off: a warp off by up to 32% of alpha - 1.)"""
    cfg = FbankConfig(mel_filters="librosa", low_freq=0.0)
    warp = FrequencyWarp.from_fbank(cfg, FreqWarpConfig(max_warp=0.2))
    centres, mel_low, spacing = mel_filter_centers(cfg)
    peaks = mel_low + spacing * torch.arange(1.0, 81.0, dtype=torch.float64)
    assert torch.allclose(slaney_mel(centres), peaks, rtol=0, atol=1e-9)
    for alpha in (0.85, 1.15):
        pos = warp.source_positions(alpha)
        warped = vtlp_warp(centres, alpha, warp.cfg.knee_hz, warp.top)
        inside = (pos > 0) & (pos < 79)
        assert int(inside.sum()) > 70
        expected = (slaney_mel(warped) - mel_low) / spacing - 1.0
        assert torch.allclose(pos[inside], expected[inside], rtol=0, atol=1e-9)


def test_identity_warp_and_shape_checks() -> None:
    warp = FrequencyWarp.from_fbank(FbankConfig(), FreqWarpConfig(max_warp=0.1))
    x = torch.randn(9, 80)
    assert torch.equal(warp.apply(x, 1.0), x)
    with pytest.raises(ValueError, match="80"):
        warp.apply(torch.randn(9, 40), 1.1)
    with pytest.raises(ValueError, match="max_warp"):
        FrequencyWarp.from_fbank(FbankConfig(), FreqWarpConfig(max_warp=1.5))
    with pytest.raises(ValueError, match="knee"):
        FrequencyWarp.from_fbank(FbankConfig(), FreqWarpConfig(max_warp=0.5, knee_hz=6000.0))


@pytest.mark.parametrize("alpha", [0.85, 0.92, 1.08, 1.15])
def test_warped_tone_peaks_where_a_shifted_tone_would(alpha: float) -> None:
    """Output bin k reads the input at alpha * f_k, so a tone at f0 shows up at f0 / alpha (below
    the knee): its warped features peak in the bin of a real f0 / alpha tone."""
    cfg = FbankConfig()
    warp = FrequencyWarp.from_fbank(cfg, FreqWarpConfig(max_warp=0.2))
    t = np.arange(16000) / 16000.0
    for f0 in (400.0, 1000.0, 2500.0):
        tone = compute_fbank(0.5 * np.sin(2 * np.pi * f0 * t), 16000, cfg)
        moved = compute_fbank(0.5 * np.sin(2 * np.pi * (f0 / alpha) * t), 16000, cfg)
        warped = warp.apply(tone, alpha)
        assert int(warped.mean(0).argmax()) == int(moved.mean(0).argmax()), (f0, alpha)
        assert int(warped.mean(0).argmax()) != int(tone.mean(0).argmax())


def test_random_warp_follows_python_random_and_probability() -> None:
    warp = FrequencyWarp.from_fbank(FbankConfig(), FreqWarpConfig(max_warp=0.1))
    x = torch.randn(5, 80)
    random.seed(3)
    a = warp(x)
    random.seed(3)
    assert torch.equal(warp(x), a) and not torch.equal(a, x)
    never = FrequencyWarp.from_fbank(FbankConfig(), FreqWarpConfig(max_warp=0.1, probability=0.0))
    assert torch.equal(never(x), x)


def test_config_validation() -> None:
    assert from_dict(DataConfig, {"freq_warp": {"enabled": True, "max_warp": 0.15}}).freq_warp == (
        FreqWarpConfig(enabled=True, max_warp=0.15)
    )
    for bad in ({"max_warp": 0.0}, {"max_warp": 1.0}, {"probability": 1.5}, {"knee_hz": 0.0}):
        with pytest.raises((ValueError, ConfigError)):
            from_dict(DataConfig, {"freq_warp": bad})


def test_a_frequency_mask_wider_than_the_spectrum_is_refused() -> None:
    """lhotse draws a negative start for a mask wider than the bins: it would mask the top."""
    narrow = {"fbank": {"num_mel_bins": 20}}
    with pytest.raises(ValueError,
                       match="max_freq_mask_width \\(27\\) exceeds .*num_mel_bins \\(20\\)"):
        from_dict(DataConfig, narrow)
    assert from_dict(DataConfig, {**narrow, "spec_augment": {"max_freq_mask_width": 20}})
    assert from_dict(DataConfig, {**narrow, "spec_augment": {"enabled": False}})


def test_dataset_warps_training_batches_only(prepared: dict) -> None:
    cuts = CutSet.from_file(prepared["fbank"]["train-clean-5"])
    cfg = DataConfig(manifest_dir=prepared["root"] / "fbank", max_duration=30.0, num_buckets=1,
                     num_workers=0, spec_augment=SpecAugmentConfig(enabled=False),
                     freq_warp=FreqWarpConfig(enabled=True, max_warp=0.2))
    reference = AsrDataset.from_config(cfg, CharEncoder(), train=False)[cuts]
    train = AsrDataset.from_config(cfg, CharEncoder(), train=True)[cuts]
    assert train.cut_ids == reference.cut_ids
    for i, n in enumerate(train.feat_lens.tolist()):
        assert not torch.equal(train.feats[i, :n], reference.feats[i, :n])
        assert torch.all(train.feats[i, n:] == 0)
        # a warp moves energy between bins; it does not rescale the utterance's level
        assert abs(float(train.feats[i, :n].mean() - reference.feats[i, :n].mean())) < 1.0
    off = replace(cfg, freq_warp=FreqWarpConfig(enabled=False))
    assert torch.equal(AsrDataset.from_config(off, CharEncoder(), train=True)[cuts].feats,
                       reference.feats)


@pytest.mark.parametrize("key", ["max_time_mask_width", "max_freq_mask_width"])
def test_a_mask_width_of_one_is_refused_when_training_starts(prepared: dict, key: str) -> None:
    """lhotse draws mask widths from [0, width): a width of 1 never masked, silently. Training
    now refuses it naming the key; the config still loads (packages trained with it keep
    working) and evaluation does not augment; with no masks of that axis it is harmless."""
    cfg = from_dict(DataConfig, {"spec_augment": {key: 1}, "num_workers": 0})
    with pytest.raises(ValueError, match=rf"data\.spec_augment\.{key}=1 never masks: .*"
                                         rf"\[0, {key}\).*\.num_\w+_masks: 0"):
        AsrDataset.from_config(cfg, CharEncoder(), train=True)
    cuts = CutSet.from_file(prepared["fbank"]["train-clean-5"])
    assert AsrDataset.from_config(cfg, CharEncoder(), train=False)[cuts].feats.shape[0] == 8
    count = "num_time_masks" if "time" in key else "num_freq_masks"
    off = replace(cfg, spec_augment=replace(cfg.spec_augment, **{count: 0}))
    assert AsrDataset.from_config(off, CharEncoder(), train=True)[cuts].feats.shape[0] == 8


def test_no_time_masks_is_num_time_masks_zero(prepared: dict) -> None:
    """num_time_masks: 0 was refused (lhotse divides by it), so recipes wrote a 1-frame time
    mask for "none" -- which masks nothing only because of lhotse's exclusive bound. Now 0 is
    "no time masks": frequency masks span whole utterances, and with neither nothing moves."""
    cuts = CutSet.from_file(prepared["fbank"]["train-clean-5"])
    masks = SpecAugmentConfig(time_warp_factor=0, num_freq_masks=2, max_freq_mask_width=15,
                              num_time_masks=0, probability=1.0)
    cfg = DataConfig(spec_augment=masks, num_workers=0)
    clean = AsrDataset.from_config(cfg, CharEncoder(), train=False)[cuts]
    train = AsrDataset.from_config(cfg, CharEncoder(), train=True)[cuts]
    for i, n in enumerate(train.feat_lens.tolist()):
        changed = train.feats[i, :n] != clean.feats[i, :n]
        bins = changed.any(dim=0)
        assert 0 < int(bins.sum()) <= 2 * 14 and bool(changed[:, bins].all())
    none = replace(cfg, spec_augment=replace(masks, num_freq_masks=0))
    assert torch.equal(AsrDataset.from_config(none, CharEncoder(), train=True)[cuts].feats,
                       clean.feats)


def test_mask_widths_are_drawn_below_the_configured_width() -> None:
    """The documented exclusive bound: max_freq_mask_width 3 masks 0, 1 or 2 bins; and
    num_time_masks: 0 gives the batches of the earlier 1-frame time mask."""
    augment = UtteranceSpecAugment.from_config(SpecAugmentConfig(
        time_warp_factor=0, num_freq_masks=1, max_freq_mask_width=3, num_time_masks=0,
        probability=1.0))
    # no time masks draws as the 1-frame mask recipes wrote for "none" (their batches are kept)
    earlier = UtteranceSpecAugment(SpecAugment(
        time_warp_factor=0, num_feature_masks=1, features_mask_size=3, num_frame_masks=1,
        frames_mask_size=1, p=1.0))
    widths = set()
    for seed in range(100):
        feats = torch.randn(1, 50, 80)
        got = []
        for run in (augment, earlier):
            torch.manual_seed(seed)
            random.seed(seed)
            got.append(run(feats.clone()))
        assert torch.equal(got[0], got[1])
        widths.add(int((got[0] != feats)[0].any(dim=0).sum()))
    assert widths == {0, 1, 2}


def test_spec_augment_never_asks_lhotse_for_an_empty_time_mask() -> None:
    """lhotse's SpecAugment raised on utterances whose time-mask budget (0.15 of the frames) is
    smaller than its mask count (narrow masks: up to ~66 frames) or than 1 frame; the wrapper
    gives lhotse's own result wherever lhotse worked, and augments every length."""
    for width, masks in ((1, 10), (100, 10), (3, 4)):
        lhotse_sa = SpecAugment(time_warp_factor=0, num_frame_masks=masks,
                                frames_mask_size=width, p=1.0)
        ours = UtteranceSpecAugment(lhotse_sa)
        for frames in range(1, 120):
            feats = torch.randn(1, frames, 80)
            torch.manual_seed(frames)
            random.seed(frames)
            got = ours(feats.clone())
            assert got.shape == feats.shape
            try:
                torch.manual_seed(frames)
                random.seed(frames)
                expected = lhotse_sa(feats.clone())
            except RuntimeError:  # lhotse's 0-frame mask: the case that is repaired
                continue
            assert torch.equal(got, expected), (width, masks, frames)
        with pytest.raises(RuntimeError):  # what the wrapper avoids
            lhotse_sa(torch.randn(1, 5, 80))


def test_training_batches_of_short_utterances_with_narrow_time_masks(prepared: dict) -> None:
    narrow = SpecAugmentConfig(num_time_masks=10, max_time_mask_width=2, probability=1.0)
    cfg = DataConfig(spec_augment=narrow, num_workers=0)
    cuts = CutSet.from_file(prepared["fbank"]["train-clean-5"])
    short = CutSet.from_cuts(c for c in cuts if c.duration < 0.8)  # 60 and 75 frames
    batch = AsrDataset.from_config(cfg, CharEncoder(), train=True)[short]
    assert batch.feat_lens.tolist() == [75, 60]
    with pytest.raises(ValueError, match="max_time_mask_fraction"):
        SpecAugmentConfig(max_time_mask_fraction=0.0)


def test_draw_seed_is_the_hash_the_speed_factors_always_used() -> None:
    """Speed factors keep the values they had (a run resumed across the change keeps its data)."""
    key = b"42:3:1001-10-0000"
    assert draw_seed(42, 3, "1001-10-0000") == int.from_bytes(
        hashlib.blake2b(key, digest_size=8).digest(), "little")
    speed = SpeedPerturbation(42, (0.9, 1.1))
    speed.set_epoch(3)
    assert speed.factor("1001-10-0000") == (1.0, 0.9, 1.1)[draw_seed(42, 3, "1001-10-0000") % 3]
    assert len({draw_seed(42, epoch, "x") for epoch in range(50)}) == 50


def test_seeded_draws_repeat_and_the_callers_rngs_are_put_back() -> None:
    """lhotse's SpecAugment draws from Python's, NumPy's and torch's global RNGs: each is seeded,
    and each gets its state back (also when the body raises)."""

    def draws() -> tuple:
        return random.random(), int(np.random.randint(1 << 30)), float(torch.rand(()))

    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    expected = draws()
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    with preserved_rngs():
        seed_rngs(draw_seed(42, 1, "a"))
        first = draws()
        seed_rngs(draw_seed(42, 1, "a"))
        assert draws() == first
        seed_rngs(draw_seed(42, 2, "a"))
        assert draws() != first
    with pytest.raises(RuntimeError), preserved_rngs():
        seed_rngs(7)
        raise RuntimeError
    assert draws() == expected


@pytest.mark.parametrize("noise_rate", [16000, 8000, 44100])
def test_noise_is_mixed_at_the_stated_snr_whatever_its_sample_rate(tmp_path, noise_rate) -> None:
    """lhotse's mixer refused noise at another rate (an AssertionError at the first batch)."""
    rng = np.random.default_rng(0)
    speech = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    sf.write(tmp_path / "speech.wav", speech, 16000)
    sf.write(tmp_path / "noise.wav", (0.05 * rng.standard_normal(2 * noise_rate)).astype(
        np.float32), noise_rate)
    cut = Recording.from_file(tmp_path / "speech.wav", recording_id="speech").to_cut()
    cut.supervisions = [SupervisionSegment("s", "speech", 0.0, 1.0, text="A")]
    noise = CutSet.from_cuts([Recording.from_file(tmp_path / "noise.wav").to_cut()])
    random.seed(0)
    mixed = NoiseMixing(noise, (10.0, 10.0), 1.0, 16000)(CutSet.from_cuts([cut]))[0]
    assert mixed.id == "speech" and mixed.sampling_rate == 16000 and mixed.duration == 1.0
    # a stretch of the longer noise covers all but lhotse's last 50 ms: the SNR holds over it
    covered = round(mixed.tracks[1].cut.duration * 16000)
    assert covered >= 16000 - 800
    added = (mixed.load_audio()[0] - speech)[:covered]
    snr = 10 * math.log10(float((speech[:covered]**2).mean() / (added**2).mean()))
    assert snr == pytest.approx(10.0, abs=0.05)


def test_noise_is_resampled_once_to_the_dataset_rate_and_mixed_as_lhotse_mixes(tmp_path,
                                                                               monkeypatch):
    """The noise is resampled when the mixer is made, not looked up per batch: a batch mixes
    exactly what lhotse's ``CutSet.mix`` mixes with the noise resampled by hand (bit for bit),
    and a cut at another rate is refused by name instead of failing inside lhotse's mixer."""
    from lhotse.cut import MonoCut

    rng = np.random.default_rng(1)
    cuts = []
    for i in range(3):
        sf.write(tmp_path / f"s{i}.wav", (0.2 * rng.standard_normal(12000 + 2000 * i)).astype(
            np.float32), 16000)
        cut = Recording.from_file(tmp_path / f"s{i}.wav").to_cut()
        cut.supervisions = [SupervisionSegment(f"s{i}", cut.recording_id, 0.0, cut.duration)]
        cuts.append(cut)
    for rate in (8000, 16000):
        sf.write(tmp_path / f"n{rate}.wav", (0.05 * rng.standard_normal(2 * rate)).astype(
            np.float32), rate)
    noise = CutSet.from_cuts([Recording.from_file(tmp_path / f"n{r}.wav").to_cut()
                              for r in (8000, 16000)])
    mixing = NoiseMixing(noise, (0.0, 20.0), 0.7, sample_rate=16000)
    assert [c.sampling_rate for c in mixing.noise] == [16000, 16000]
    resampled = CutSet.from_cuts([noise[0].resample(16000), noise[1]])
    calls, mixed = [], 0
    batch = CutSet.from_cuts(cuts)
    for seed in range(3):
        random.seed(seed)
        with monkeypatch.context() as patch:
            patch.setattr(MonoCut, "resample", lambda *args, **kwargs: calls.append(args))
            got = mixing(batch)
        random.seed(seed)
        want = batch.mix(resampled, snr=(0.0, 20.0), mix_prob=0.7, preserve_id="left",
                         seed=random.getrandbits(32),
                         random_mix_offset=True).to_eager()  # lazy: each pass draws anew
        assert [c.id for c in got] == [c.id for c in want] == [c.id for c in cuts]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.load_audio(), w.load_audio())
            mixed += type(g).__name__ == "MixedCut"
    assert not calls and 0 < mixed < 9
    other = CutSet.from_cuts([cuts[0], noise[0].with_id("s1")])
    with pytest.raises(ValueError) as mixed_err:
        mixing(other)
    # the loaders' own check, in its words: the cut, its rate and its file
    with pytest.raises(ValueError) as loader_err:
        check_cut_audio(other, 16000)
    assert str(mixed_err.value) == str(loader_err.value)
    assert f"cut 's1' at 8000 Hz (audio {tmp_path / 'n8000.wav'})" in str(mixed_err.value)


def _speech_and_long_noise(tmp_path, noise_text: str | None = None) -> tuple[CutSet, CutSet]:
    """Four 2 s speech cuts (transcript ``A``) and one 60 s noise cut (with a supervision of
    ``noise_text`` when given)."""
    rng = np.random.default_rng(2)
    cuts = []
    for i in range(4):
        sf.write(tmp_path / f"s{i}.wav", (0.2 * rng.standard_normal(32000)).astype(np.float32),
                 16000)
        cut = Recording.from_file(tmp_path / f"s{i}.wav").to_cut()
        cut.supervisions = [SupervisionSegment(f"s{i}", cut.recording_id, 0.0, cut.duration,
                                               text="A")]
        cuts.append(cut)
    sf.write(tmp_path / "noise.wav", (0.05 * rng.standard_normal(60 * 16000)).astype(np.float32),
             16000)
    noise = Recording.from_file(tmp_path / "noise.wav").to_cut()
    if noise_text is not None:
        noise.supervisions = [SupervisionSegment("n", noise.recording_id, 0.0, noise.duration,
                                                 text=noise_text)]
    return CutSet.from_cuts(cuts), CutSet.from_cuts([noise])


def test_a_long_noise_recording_is_drawn_from_all_of_it(tmp_path) -> None:
    """Each cut got the first seconds of a noise recording longer than itself (lhotse mixes
    from offset 0 unless asked otherwise): of a 60 s noise, 2 s cuts only ever heard its first
    2 s. The stretch mixed in now starts anywhere in it, and still covers the whole cut."""
    cuts, noise = _speech_and_long_noise(tmp_path)
    mixing = NoiseMixing(noise, (10.0, 20.0), 1.0, 16000)
    starts = []
    for seed in range(10):
        random.seed(seed)
        for mixed, cut in zip(mixing(cuts), cuts):
            assert mixed.duration == cut.duration
            (track,) = mixed.tracks[1:]
            assert track.cut.duration >= cut.duration - 0.05 - 1e-6  # lhotse leaves 50 ms
            starts.append(track.cut.start)
    assert max(starts) > 30.0 and len(set(starts)) == len(starts)
    assert all(0.0 <= start <= 58.0 for start in starts)


def test_the_text_of_a_noise_cut_never_reaches_a_transcript(tmp_path) -> None:
    """A mixed cut's supervisions are all its tracks': noise cuts with transcripts (babble
    made of speech) added their words to the transcript of every cut they went into."""
    cuts, noise = _speech_and_long_noise(tmp_path, noise_text="BABBLE WORDS")
    dataset = AsrDataset(CharEncoder(), lambda cuts: (torch.zeros(len(cuts), 200, 80),
                                                      torch.full((len(cuts),), 200)),
                         cut_transforms=[NoiseMixing(noise, (10.0, 20.0), 1.0, 16000)])
    batch = dataset[cuts]
    assert batch.texts == ["A"] * 4
    assert noise[0].supervisions  # the caller's noise cuts are left as they are
