"""Signal effects: exact levels, SNR, decay rate and trimming on constructed signals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asr.synth.audio_effects import (
    _smooth_size,
    add_noise,
    add_reverb,
    fft_convolve,
    normalize_peak,
    pad_silence,
    resample,
    room_impulse_response,
    speed_perturb,
    to_pcm16,
    trim_silence,
)

SR = 16000


def _tone(seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return amplitude * np.sin(2 * np.pi * 440.0 * t)


def test_trim_silence_cuts_to_frame_bounds() -> None:
    frame = SR // 100  # 10 ms
    signal = np.concatenate([np.zeros(30 * frame), _tone(0.5), np.zeros(20 * frame)])
    trimmed = trim_silence(signal, SR)
    assert len(trimmed) == len(_tone(0.5))
    np.testing.assert_array_equal(trimmed, signal[30 * frame : 30 * frame + len(trimmed)])
    assert trim_silence(np.zeros(1000), SR).shape == (1000,)


def test_pad_silence_lengths() -> None:
    out = pad_silence(np.ones(10), SR, 0.25, 0.5)
    assert len(out) == 4000 + 10 + 8000
    assert out[:4000].sum() == 0 and out[-8000:].sum() == 0 and out[4000:4010].sum() == 10


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 30.0])
@pytest.mark.parametrize("color", [0.0, 0.9, -0.3])
def test_add_noise_hits_requested_snr(snr_db: float, color: float) -> None:
    clean = pad_silence(_tone(1.0), SR, 0.5, 0.5)
    noisy = add_noise(clean, np.random.default_rng(0), snr_db, color)
    active = clean[np.abs(clean) > 0.01 * np.abs(clean).max()]
    noise = noisy - clean
    measured = 10 * np.log10(np.mean(active**2) / np.mean(noise**2))
    assert measured == pytest.approx(snr_db, abs=1e-9)


def test_noise_color_shapes_spectrum() -> None:
    rng = np.random.default_rng(1)
    clean = _tone(2.0)
    low = np.abs(np.fft.rfft(add_noise(clean, rng, 0.0, 0.95) - clean)) ** 2
    high = np.abs(np.fft.rfft(add_noise(clean, rng, 0.0, -0.9) - clean)) ** 2
    half = len(low) // 2
    assert low[:half].sum() > 10 * low[half:].sum()
    assert high[half:].sum() > 10 * high[:half].sum()


def test_room_impulse_response_decay_and_drr() -> None:
    rt60, drr = 0.6, 5.0
    response = room_impulse_response(np.random.default_rng(0), SR, rt60, drr)
    assert len(response) == int(rt60 * SR) and response[0] == 1.0
    assert 10 * np.log10(1.0 / np.sum(response[1:] ** 2)) == pytest.approx(drr, abs=1e-9)
    # Energy per 50 ms window decays by 60 dB over rt60: fit the slope of the log energy.
    window = SR // 20
    energy = (response[1 : 1 + 11 * window].reshape(11, window) ** 2).sum(axis=1)
    slope_db_per_s = np.polyfit(np.arange(11) * 0.05, 10 * np.log10(energy), 1)[0]
    assert slope_db_per_s == pytest.approx(-60.0 / rt60, rel=0.1)


def test_add_reverb_keeps_length_and_direct_path() -> None:
    impulse = np.zeros(8000)
    impulse[100] = 1.0
    out = add_reverb(impulse, np.random.default_rng(0), SR, 0.2, 10.0)
    assert out.shape == impulse.shape
    assert out[100] == pytest.approx(1.0) and np.abs(out[:100]).max() < 1e-12
    assert np.abs(out[101:]).sum() > 0


def test_levels_and_pcm16() -> None:
    out = normalize_peak(np.array([0.1, -0.4, 0.2]), -6.0)
    assert np.abs(out).max() == pytest.approx(10 ** (-6 / 20))
    np.testing.assert_array_equal(
        to_pcm16(np.array([0.0, 0.5, -1.0, 1.0, 2.0, -3.0, 1 / 65536])),
        np.array([0, 16384, -32768, 32767, 32767, -32768, 0], dtype=np.int16),
    )
    with pytest.raises(ValueError, match="peak_db"):
        normalize_peak(out, 1.0)


@pytest.mark.parametrize("length", [98, 99, 100, 101, 64, 881, 4409, 20011])
@pytest.mark.parametrize("rates", [(22050, 16000), (8000, 16000), (16000, 8000), (16000, 16000)])
def test_resample_matches_scipy_fourier_resampling(length: int, rates: tuple[int, int]) -> None:
    from scipy.signal import resample as scipy_resample

    samples = np.random.default_rng(length).standard_normal(length)
    out = resample(samples, *rates)
    assert len(out) == round(length * rates[1] / rates[0])
    # Fourier resampling of the input zero-padded to m * orig/g samples, m = 2^a 3^b 5^c.
    g = math.gcd(*rates)
    blocks = -(-length // (rates[0] // g))
    while max(_prime_factors(blocks), default=1) > 5:
        blocks += 1
    padded = np.concatenate([samples, np.zeros(blocks * rates[0] // g - length)])
    expected = scipy_resample(padded, blocks * rates[1] // g)[: len(out)]
    np.testing.assert_allclose(out, expected, atol=1e-12)


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors + ([n] if n > 1 else [])


@pytest.mark.parametrize("length", [1, 2, 7, 97, 1000, 4099, 65537, 123457])
def test_smooth_fft_size_is_the_next_5_smooth_number(length: int) -> None:
    size = _smooth_size(length)
    assert size >= length and max(_prime_factors(size), default=1) <= 5
    assert all(max(_prime_factors(n), default=1) > 5 for n in range(length, size))


def test_resample_keeps_a_low_tone() -> None:
    # One second of a 300 Hz tone (a whole number of periods) resampled 22.05 -> 16 kHz.
    tone_22k = 0.5 * np.sin(2 * np.pi * 300.0 * np.arange(22050) / 22050)
    tone_16k = 0.5 * np.sin(2 * np.pi * 300.0 * np.arange(16000) / 16000)
    np.testing.assert_allclose(resample(tone_22k, 22050, 16000), tone_16k, atol=1e-9)


def test_fft_convolve_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    signal, kernel = rng.standard_normal(1000), rng.standard_normal(77)
    np.testing.assert_allclose(
        fft_convolve(signal, kernel), np.convolve(signal, kernel), atol=1e-10
    )


@pytest.mark.parametrize("factor", [0.9, 0.95, 1.1])
def test_speed_perturb_scales_frequency_and_duration(factor: float) -> None:
    """A 1 s, 500 Hz tone played ``factor`` times faster: 500 * f Hz for 1 / f s, the factor
    rounded to a 100 Hz grid of the intermediate rate."""
    tone = 0.5 * np.sin(2 * np.pi * 500.0 * np.arange(SR) / SR)
    out = speed_perturb(tone, factor, SR)
    actual = SR / (round(SR / factor / 100) * 100)  # the factor after rounding
    assert abs(actual - factor) < 0.004
    assert len(out) == round(SR / actual)
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    peak_hz = np.argmax(spectrum) * SR / len(out)
    assert peak_hz == pytest.approx(500.0 * actual, abs=1.5)
    np.testing.assert_array_equal(speed_perturb(tone, 1.0, SR), tone)
    with pytest.raises(ValueError, match="speed factor must be > 0, got 0"):
        speed_perturb(tone, 0, SR)
