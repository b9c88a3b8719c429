"""FbankConfig / compute_fbank against torchaudio's Kaldi-compliant fbank."""

from __future__ import annotations

import pytest
import torch
import torchaudio

from asr.config import ConfigError, from_dict
from asr.features.fbank import FbankConfig, compute_fbank, make_lhotse_fbank, num_frames


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


def test_resamples_other_rates() -> None:
    wave = 0.1 * torch.randn(8000)  # 1 s at 8 kHz
    feats = compute_fbank(wave, 8000)
    expected = compute_fbank(torchaudio.functional.resample(wave, 8000, 16000), 16000)
    assert feats.shape == (100, 80)
    torch.testing.assert_close(feats, expected)


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
