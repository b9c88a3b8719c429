"""FbankConfig / compute_fbank against torchaudio's Kaldi-compliant fbank."""

from __future__ import annotations

import math

import kaldi_native_fbank as knf
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from lhotse import Recording

from asr.audio import AudioError
from asr.config import ConfigError, from_dict
from asr.features.fbank import (
    FbankConfig,
    compute_fbank,
    make_lhotse_fbank,
    num_frames,
    slaney_mel_filters,
)
from asr.testing.tiny import random_speech_like


def _reference(wave: torch.Tensor, cfg: FbankConfig) -> torch.Tensor:
    return torchaudio.compliance.kaldi.fbank(wave.unsqueeze(0), **cfg.torchaudio_kwargs())


@pytest.mark.parametrize("num_samples", [400, 401, 4321, 16000, 23999])
def test_matches_torchaudio_kaldi_fbank(num_samples: int) -> None:
    cfg = FbankConfig()
    t = torch.arange(num_samples) / 16000
    wave = 0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.05 * torch.randn(num_samples)
    feats = compute_fbank(wave, 16000, cfg)
    ref = _reference(wave, cfg)
    assert feats.dtype == torch.float32
    assert feats.shape == ref.shape == (num_frames(num_samples, cfg), 80)
    torch.testing.assert_close(feats, ref, atol=1e-4, rtol=1e-4)


def test_matches_torchaudio_with_other_options() -> None:
    cfg = FbankConfig(num_mel_bins=40, frame_length_ms=20.0, frame_shift_ms=12.5, low_freq=60.0,
                      high_freq=7000.0, window_type="hamming")
    wave = 0.1 * torch.randn(7777)
    feats = compute_fbank(wave.numpy(), 16000, cfg)
    ref = _reference(wave, cfg)
    assert feats.shape == ref.shape == (num_frames(7777, cfg), 40)
    torch.testing.assert_close(feats, ref, atol=1e-4, rtol=1e-4)


def test_frame_count_formula() -> None:
    cfg = FbankConfig()
    assert cfg.hop_samples == 160 and cfg.window_samples == 400
    # Hand-computed (N + 80) // 160 for snip_edges=False.
    assert [num_frames(n, cfg) for n in (0, 79, 80, 239, 240, 16000, 16079, 16080)] == [
        0, 0, 1, 1, 2, 100, 100, 101]
    extractor = make_lhotse_fbank(cfg)
    for n in (1, 80, 139, 140, 399, 400, 560, 1601, 3219):
        feats = compute_fbank(0.1 * torch.randn(n), 16000, cfg, extractor=extractor)
        assert feats.shape == ((n + 80) // 160, 80), n


def test_snip_edges_frame_count_matches_torchaudio() -> None:
    cfg = FbankConfig(snip_edges=True)
    for n in (400, 559, 560, 4000):
        ref = _reference(0.1 * torch.randn(n), cfg)
        assert ref.shape[0] == num_frames(n, cfg) == 1 + (n - 400) // 160
    assert num_frames(399, cfg) == 0


@pytest.mark.parametrize("rate", [8000, 22050, 48000])
def test_resamples_other_rates_as_the_stored_features_of_a_resampled_cut(tmp_path, rate) -> None:
    """compute_fbank on audio at another rate == the features lhotse stores for the recording
    resampled to 16 kHz (its resampler is asr.audio's; torchaudio.functional.resample differs
    in the last bits, which the log of the empty band above the input's Nyquist magnifies)."""
    wave = (0.1 * np.random.default_rng(rate).standard_normal(rate)).astype(np.float32)  # 1 s
    sf.write(tmp_path / "a.wav", wave, rate, subtype="FLOAT")
    cut = Recording.from_file(tmp_path / "a.wav").resample(16000).to_cut()
    stored = torch.as_tensor(cut.compute_features(make_lhotse_fbank()))
    feats = compute_fbank(wave, rate)
    assert feats.shape == stored.shape == (100, 80)
    assert torch.equal(feats, stored)


def test_dither_changes_features_only_when_enabled() -> None:
    wave = 0.1 * torch.randn(3200)
    plain = compute_fbank(wave, 16000)
    torch.testing.assert_close(plain, compute_fbank(wave, 16000))
    dithered = compute_fbank(wave, 16000, FbankConfig(dither=0.01))
    assert dithered.shape == plain.shape and not torch.allclose(dithered, plain)


def test_rejects_bad_input_and_config() -> None:
    with pytest.raises(ValueError, match="mono"):
        compute_fbank(torch.zeros(2, 1000), 16000)
    with pytest.raises(ValueError, match="frame_shift_ms"):
        FbankConfig(frame_shift_ms=30.0)
    with pytest.raises(ConfigError, match="num_mel_bin"):
        from_dict(FbankConfig, {"num_mel_bin": 80})
    assert from_dict(FbankConfig, {"dither": 0.1}).dither == 0.1


@pytest.mark.parametrize("options", [
    {"sample_rate": 8000}, {"sample_rate": 8000, "high_freq": 3800.0}, {"snip_edges": True},
    {"low_freq": 0.0, "high_freq": 0.0}, {"window_type": "blackman"},
    {"window_type": "rectangular"}, {"window_type": "hanning"}, {"remove_dc_offset": False},
    {"preemph_coeff": 0.0}, {"round_to_power_of_two": False},
])
def test_matches_torchaudio_for_each_kaldi_option(options: dict) -> None:
    cfg = FbankConfig(**options)
    wave = 0.1 * torch.randn(cfg.sample_rate // 2)
    torch.testing.assert_close(compute_fbank(wave, cfg.sample_rate, cfg), _reference(wave, cfg),
                               atol=2e-4, rtol=1e-4)


def test_digital_silence_gives_the_epsilon_log_floor_whatever_the_energy_floor() -> None:
    """Mel energies are floored at float32 epsilon (Kaldi, torchaudio); energy_floor is the
    floor of Kaldi's energy term, which the features do not hold."""
    floor = math.log(torch.finfo(torch.float32).eps)
    for cfg in (FbankConfig(), FbankConfig(energy_floor=1.0), FbankConfig(sample_rate=8000)):
        feats = compute_fbank(torch.zeros(cfg.sample_rate), cfg.sample_rate, cfg)
        assert feats.shape == (100, 80)
        torch.testing.assert_close(feats, torch.full_like(feats, floor))
        torch.testing.assert_close(feats, _reference(torch.zeros(cfg.sample_rate), cfg))


def test_integer_pcm_is_scaled_by_the_one_rule_for_sample_arrays() -> None:
    """int16 samples are int16 / 32768 (asr.audio.as_waveform), not 32768 times louder."""
    pcm = (np.random.default_rng(0).standard_normal(4000) * 3000).astype(np.int16)
    expected = compute_fbank(pcm.astype(np.float32) / 32768, 16000)
    torch.testing.assert_close(compute_fbank(pcm, 16000), expected)
    torch.testing.assert_close(compute_fbank(torch.from_numpy(pcm)[None], 16000), expected)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_samples_are_refused_not_turned_into_nan_features(bad: float) -> None:
    wave = 0.1 * torch.randn(4000)
    wave[123] = bad
    with pytest.raises(AudioError, match="compute_fbank input: NaN or infinite"):
        compute_fbank(wave, 16000)


@pytest.mark.parametrize(("options", "field"), [
    ({"high_freq": 9000.0}, "high_freq=9000"), ({"low_freq": -5.0}, "low_freq=-5"),
    ({"low_freq": 8000.0}, "low_freq=8000"), ({"high_freq": -9000.0}, "high_freq=-9000"),
    ({"sample_rate": 8000, "high_freq": 7600.0}, "Nyquist \\(4000 Hz"),
    ({"window_type": "hann"}, "window_type"),
    ({"low_freq": 7600.0}, "low_freq=7600"),  # an empty band: low_freq must be below high_freq
])
def test_band_edges_and_window_are_checked_by_the_config(options: dict, field: str) -> None:
    """A bad option fails where the config is read, naming the field -- not as lhotse's
    AssertionError at the first feature extraction."""
    with pytest.raises(ValueError, match=field):
        FbankConfig(**options)


@pytest.mark.parametrize(("options", "empty", "most"), [
    ({"num_mel_bins": 256}, 27, 124),
    ({"sample_rate": 8000, "num_mel_bins": 128}, 6, 90),
    ({"num_mel_bins": 256, "mel_filters": "librosa", "low_freq": 0.0}, 26, 188),
])
def test_mel_filters_without_an_fft_bin_are_refused(options: dict, empty: int, most: int) -> None:
    """Too many mel bins for the band leave filters between two FFT bins: they were accepted and
    gave constant feature bins (27 of 256 at 16 kHz); Kaldi refuses them, and so does the
    config, naming num_mel_bins, the band and the largest count that works."""
    with pytest.raises(ValueError, match=rf"num_mel_bins={options['num_mel_bins']} .* band "
                                         rf".* {empty} of the filters .* at most {most} bins"):
        FbankConfig(**options)
    fitting = FbankConfig(**{**options, "num_mel_bins": most})
    feats = compute_fbank(random_speech_like(16000, seed=2), fitting.sample_rate, fitting)
    assert feats.shape[1] == most and bool((feats.std(dim=0) > 0).all())
    with pytest.raises(ConfigError, match="num_mel_bins=256"):
        from_dict(FbankConfig, {"num_mel_bins": 256})


@pytest.mark.parametrize("options", [{"num_mel_bins": 1, "low_freq": 100.0, "high_freq": 101.0},
                                     {"num_mel_bins": 80, "low_freq": 100.0, "high_freq": 110.0},
                                     {"num_mel_bins": 2, "low_freq": 100.0, "high_freq": 110.0,
                                      "mel_filters": "librosa"}])
def test_a_band_too_narrow_for_any_filter_is_refused_naming_it(options: dict) -> None:
    """A band between two FFT bins fits no filter at all: the search for the largest count that
    fits raised a bare StopIteration (no message) from the config."""
    with pytest.raises(ValueError, match=r"num_mel_bins=\d+ is too many for the band 100-1\d+ "
                                         r"Hz .*; use a wider band$"):
        FbankConfig(**options)


@pytest.mark.parametrize("options", [
    {}, {"low_freq": 20.0, "high_freq": 7000.0, "num_mel_bins": 64},
    {"sample_rate": 8000, "high_freq": 0.0, "num_mel_bins": 40},
    {"frame_length_ms": 32.0},  # a window of 512 samples: a 512-point FFT, not 1024
])
def test_librosa_filters_are_kaldi_native_fbanks(options: dict) -> None:
    """``mel_filters: librosa`` is kaldi-native-fbank's ``is_librosa`` filter bank (sherpa-onnx's
    front end for NeMo-style models): the same Slaney-scale, area-normalised triangles at every
    FFT bin, Nyquist included."""
    cfg = FbankConfig(**{"mel_filters": "librosa", "low_freq": 0.0, **options})
    mel = knf.MelBanksOptions()
    mel.num_bins, mel.is_librosa = cfg.num_mel_bins, True
    mel.low_freq, mel.high_freq = cfg.low_freq, cfg.high_freq
    frames = knf.FrameExtractionOptions()
    frames.samp_freq, frames.frame_length_ms = cfg.sample_rate, cfg.frame_length_ms
    expected = np.array(knf.MelBanks(mel, frames, 1.0).get_matrix()).T
    assert cfg.fft_size == 2 * (expected.shape[0] - 1)
    np.testing.assert_allclose(slaney_mel_filters(cfg).numpy(), expected, rtol=0, atol=1e-6)
