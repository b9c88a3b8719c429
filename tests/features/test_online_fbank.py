"""Online fbank == offline fbank for any split; streaming resampler == offline resampler."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from asr.audio import StreamingResampler, resample
from asr.features.fbank import FbankConfig, compute_fbank
from asr.features.online import OnlineFbank


def _random_splits(num_samples: int, rng: np.random.Generator, max_piece: int) -> list[int]:
    cuts, position = [], 0
    while position < num_samples:
        position += int(rng.integers(1, max_piece + 1))
        cuts.append(min(position, num_samples))
    return cuts


def _online(samples: np.ndarray, cuts: list[int], fbank: OnlineFbank) -> torch.Tensor:
    frames, start = [], 0
    for end in cuts:
        frames.append(fbank.accept_waveform(samples[start:end]))
        start = end
    frames.append(fbank.input_finished())
    return torch.cat(frames)


# edge cases around the left pad (120), the first full frame (280), one window (400), hops.
LENGTHS = [1, 7, 119, 120, 121, 279, 280, 281, 399, 400, 401, 440, 441, 1600, 16000, 23457]


@pytest.mark.parametrize("num_samples", LENGTHS)
def test_online_equals_offline_for_random_splits(num_samples):
    rng = np.random.default_rng(num_samples)
    samples = (rng.standard_normal(num_samples) * 0.1).astype(np.float32)
    offline = compute_fbank(samples, 16000)
    for max_piece in (1 if num_samples < 500 else 37, 160, 1000, num_samples):
        online = _online(samples, _random_splits(num_samples, rng, max_piece), OnlineFbank())
        assert online.shape == offline.shape
        torch.testing.assert_close(online, offline, atol=1e-4, rtol=0)


def test_frames_are_emitted_as_soon_as_final():
    fbank = OnlineFbank()
    assert fbank.accept_waveform(np.zeros(279, np.float32)).shape[0] == 0
    assert fbank.accept_waveform(np.zeros(1, np.float32)).shape[0] == 1  # 280 samples: frame 0
    assert fbank.accept_waveform(np.zeros(159, np.float32)).shape[0] == 0
    assert fbank.accept_waveform(np.zeros(1, np.float32)).shape[0] == 1  # 440: frame 1
    # the end adds the frames touching the mirrored right edge: (440 + 80) // 160 = 3 in all
    assert fbank.input_finished().shape[0] == 1
    assert fbank.num_frames == 3


def test_input_finished_twice_and_accept_after_finish():
    fbank = OnlineFbank()
    fbank.accept_waveform(np.ones(1000, np.float32) * 0.1)
    fbank.input_finished()
    assert fbank.input_finished().shape == (0, 80)
    with pytest.raises(RuntimeError, match="after input_finished"):
        fbank.accept_waveform(np.zeros(10, np.float32))


def test_several_channels_are_refused_as_compute_fbank_refuses_them():
    """(N, 2) stereo was flattened, its channels interleaved into one signal of twice the
    length, and gave features without a word; now it is refused naming the shape, as
    compute_fbank refuses it, and (1, N) is (N,) in both."""
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal(1600) * 0.1).astype(np.float32)
    for stereo in (np.stack([samples, samples], axis=1), np.stack([samples, samples])):
        shape = str(tuple(stereo.shape))
        expected = rf"mono \(N,\) waveform, got shape {re.escape(shape)}"
        with pytest.raises(ValueError, match=expected):
            OnlineFbank().accept_waveform(stereo)
        with pytest.raises(ValueError, match=expected):
            compute_fbank(stereo, 16000)
    fbank = OnlineFbank()
    row = torch.cat([fbank.accept_waveform(torch.from_numpy(samples)[None]),
                     fbank.input_finished()])
    torch.testing.assert_close(row, compute_fbank(samples[None], 16000), atol=1e-4, rtol=0)


def test_rejects_configs_that_cannot_match_offline():
    with pytest.raises(ValueError, match="snip_edges"):
        OnlineFbank(FbankConfig(snip_edges=True))
    with pytest.raises(ValueError, match="dither"):
        OnlineFbank(FbankConfig(dither=1.0))


def test_other_config_matches_too():
    cfg = FbankConfig(num_mel_bins=40, frame_length_ms=20.0, frame_shift_ms=10.0)
    rng = np.random.default_rng(1)
    samples = (rng.standard_normal(5003) * 0.1).astype(np.float32)
    online = _online(samples, _random_splits(5003, rng, 300), OnlineFbank(cfg))
    torch.testing.assert_close(online, compute_fbank(samples, 16000, cfg), atol=1e-4, rtol=0)


@pytest.mark.parametrize("orig_rate", [8000, 22050, 44100, 48000, 16000])
def test_streaming_resampler_equals_offline(orig_rate):
    rng = np.random.default_rng(orig_rate)
    for num_samples in (1, 333, 9001):
        samples = rng.standard_normal(num_samples).astype(np.float32)
        resampler = StreamingResampler(orig_rate, 16000)
        pieces, start = [], 0
        for end in _random_splits(num_samples, rng, 700):
            pieces.append(resampler.accept(samples[start:end]))
            start = end
        pieces.append(resampler.flush())
        streamed = np.concatenate(pieces)
        expected = resample(samples, orig_rate, 16000)
        assert streamed.shape == expected.shape
        np.testing.assert_allclose(streamed, expected, atol=1e-5)


def test_integer_pcm_and_non_finite_samples_follow_compute_fbank() -> None:
    from asr.audio import AudioError

    pcm = (np.random.default_rng(1).standard_normal(3000) * 3000).astype(np.int16)
    fbank = OnlineFbank()
    online = torch.cat([fbank.accept_waveform(pcm[:1234]), fbank.accept_waveform(pcm[1234:]),
                        fbank.input_finished()])
    torch.testing.assert_close(online, compute_fbank(pcm.astype(np.float32) / 32768, 16000))
    with pytest.raises(AudioError, match="OnlineFbank input: NaN"):
        OnlineFbank().accept_waveform(np.array([0.0, np.nan], dtype=np.float32))
