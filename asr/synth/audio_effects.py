"""Signal effects that make clean TTS output look more like recorded speech.

All functions are pure numpy/scipy on mono float64 arrays (T,) and take an explicit
``numpy.random.Generator`` when they are random, so a corpus is reproducible from its seed.

* :func:`trim_silence` cuts TTS leading/trailing silence (frame energy below a threshold relative
  to the loudest frame); :func:`pad_silence` adds back a controlled amount, like real recordings.
* :func:`add_reverb` convolves with a synthetic room impulse response: a unit direct path followed
  by Gaussian noise under an exponential envelope that decays by 60 dB in ``rt60`` seconds (the
  classic statistical model of late reverberation, e.g. Lehmann & Johansson 2008, "Prediction of
  energy decay in room impulse responses simulated with an image-source model", JASA 124(1)),
  scaled to a given direct-to-reverberant ratio.
* :func:`add_noise` adds coloured Gaussian noise (white noise shaped by the magnitude response
  of a first-order recursive filter) at a given SNR.
* :func:`normalize_peak` and :func:`to_pcm16` set the level without clipping.
* :func:`resample` changes the sample rate by band-limited (FFT) interpolation.

FFT lengths are rounded up to 2^a 3^b 5^c (:func:`_smooth_size`): numpy's FFT of a prime length
is tens of times slower, and was half the cost of synthesizing an utterance.

Only numpy FFTs are used: importing ``scipy.signal`` costs ~2 s per worker process here.
"""

from __future__ import annotations

import math

import numpy as np


def _fft_size(length: int) -> int:
    return 1 << max(0, (length - 1).bit_length())


def _smooth_size(length: int) -> int:
    """The smallest ``n >= length`` of the form 2^a 3^b 5^c (a fast FFT length for pocketfft).

    numpy's FFTs of a prime or near-prime length run tens of times slower than of a nearby smooth
    one; TTS output has arbitrary lengths.
    """
    best = _fft_size(length)
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35 * _fft_size(-(-length // power35))
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def fft_convolve(signal: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Full linear convolution via FFT. (T,), (L,) -> (T + L - 1,)."""
    length = len(signal) + len(kernel) - 1
    size = _fft_size(length)
    spectrum = np.fft.rfft(signal, size) * np.fft.rfft(kernel, size)
    return np.fft.irfft(spectrum, size)[:length]


def speed_perturb(samples: np.ndarray, factor: float, rate: int) -> np.ndarray:
    """Play ``samples`` ``factor`` times faster (sox ``speed``): tempo, pitch and formants scale.

    The audio is resampled to ``rate / factor`` (rounded to 100 Hz, which keeps the FFTs of
    :func:`resample` short; the factor is then within ~0.3% of the one asked) and played at
    ``rate``.

    Args:
        samples: (T,) audio at ``rate``.
        factor: speed factor, > 0 (1.1: 10% faster and higher).
        rate: sample rate of the input and the output.

    Returns:
        (T',) audio at ``rate``, T' ~= T / factor.
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be > 0, got {factor}")
    target = max(100, int(round(rate / factor / 100.0)) * 100)
    return resample(samples, rate, target)


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling by truncating or zero-padding the spectrum.

    The input is first zero-padded to the next length whose FFTs are fast (see the code), so
    the implied periodicity is that of the signal followed by silence; TTS output starts and
    ends in silence anyway. Exact for band-limited signals that are periodic in the padded
    length (a whole number of periods needs no padding when its length is already fast). The
    output length is ``round(T * new_rate / orig_rate)``.

    Args:
        samples: (T,) audio.
        orig_rate: input sample rate.
        new_rate: output sample rate.

    Returns:
        (T',) audio at ``new_rate``.
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be > 0, got {orig_rate} and {new_rate}")
    if orig_rate == new_rate or len(samples) == 0:
        return samples.copy()
    length = max(1, int(round(len(samples) * new_rate / orig_rate)))
    # Zero-pad to m * orig/g input samples (m smooth): the output then has exactly m * new/g
    # samples, and both FFT lengths are fast. A whole number of periods stays unpadded.
    g = math.gcd(orig_rate, new_rate)
    step_in, step_out = orig_rate // g, new_rate // g
    blocks = _smooth_size(-(-len(samples) // step_in))
    num_in, num_out = blocks * step_in, blocks * step_out
    spectrum = np.fft.rfft(samples, num_in)
    shared = min(num_in, num_out)
    out_spectrum = np.zeros(num_out // 2 + 1, dtype=complex)
    out_spectrum[: shared // 2 + 1] = spectrum[: shared // 2 + 1]
    if shared % 2 == 0:
        # The Nyquist bin of the shorter length stands for both +f and -f in the longer one.
        out_spectrum[shared // 2] *= 2.0 if num_out < num_in else 0.5
    return np.fft.irfft(out_spectrum, num_out)[:length] * (num_out / num_in)


def trim_silence(
    samples: np.ndarray, sample_rate: int, threshold_db: float = -45.0, frame_s: float = 0.01
) -> np.ndarray:
    """Remove leading and trailing frames quieter than ``threshold_db`` below the loudest frame.

    Args:
        samples: (T,) audio.
        sample_rate: samples per second.
        threshold_db: frame RMS threshold relative to the loudest frame, in dB (< 0).
        frame_s: frame length in seconds.

    Returns:
        (T',) the trimmed audio (unchanged when it is all silence).
    """
    frame = max(1, int(frame_s * sample_rate))
    num_frames = len(samples) // frame
    if num_frames == 0:
        return samples
    energy = (samples[: num_frames * frame].reshape(num_frames, frame) ** 2).mean(axis=1)
    peak = energy.max()
    if peak <= 0:
        return samples
    loud = np.flatnonzero(energy >= peak * 10.0 ** (threshold_db / 10.0))
    return samples[loud[0] * frame : (loud[-1] + 1) * frame]


def pad_silence(samples: np.ndarray, sample_rate: int, lead_s: float, trail_s: float) -> np.ndarray:
    """Prepend ``lead_s`` and append ``trail_s`` seconds of digital silence. (T,) -> (T',)."""
    lead = np.zeros(int(round(lead_s * sample_rate)))
    trail = np.zeros(int(round(trail_s * sample_rate)))
    return np.concatenate([lead, samples, trail])


def room_impulse_response(
    rng: np.random.Generator, sample_rate: int, rt60_s: float, drr_db: float
) -> np.ndarray:
    """Synthetic room impulse response: unit direct path plus exponentially decaying noise.

    Args:
        rng: random generator.
        sample_rate: samples per second.
        rt60_s: time for the reverberant tail to decay by 60 dB, seconds (> 0).
        drr_db: direct-to-reverberant energy ratio of the response, dB.

    Returns:
        (L,) impulse response, ``L = rt60_s * sample_rate`` samples; ``h[0] == 1``.
    """
    if rt60_s <= 0:
        raise ValueError(f"rt60_s must be > 0, got {rt60_s}")
    length = max(2, int(rt60_s * sample_rate))
    time = np.arange(length) / sample_rate
    envelope = np.exp(-3.0 * np.log(10.0) * time / rt60_s)  # 10^(-3 t / rt60): -60 dB at rt60
    tail = rng.standard_normal(length) * envelope
    tail[0] = 0.0
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / np.sum(tail**2))
    tail[0] = 1.0
    return tail


def add_reverb(
    samples: np.ndarray, rng: np.random.Generator, sample_rate: int, rt60_s: float, drr_db: float
) -> np.ndarray:
    """Convolve with :func:`room_impulse_response`, keeping the input length. (T,) -> (T,)."""
    response = room_impulse_response(rng, sample_rate, rt60_s, drr_db)
    return fft_convolve(samples, response)[: len(samples)]


def add_noise(
    samples: np.ndarray, rng: np.random.Generator, snr_db: float, color: float = 0.0
) -> np.ndarray:
    """Add Gaussian noise at ``snr_db`` relative to the power of the non-silent signal.

    Args:
        samples: (T,) audio.
        rng: random generator.
        snr_db: signal-to-noise ratio in dB; signal power is measured over samples above 1% of
            the peak so leading/trailing silence does not lower it.
        color: coefficient ``a`` in (-1, 1) of the shaping filter ``1 / (1 - a z^-1)``: 0 is
            white, towards 1 low-frequency (brown-ish) noise, towards -1 high-frequency noise.

    Returns:
        (T,) noisy audio.
    """
    if not -1.0 < color < 1.0:
        raise ValueError(f"noise color must be in (-1, 1), got {color}")
    magnitude = np.abs(samples)
    active = samples[magnitude > 0.01 * np.max(magnitude, initial=0.0)]
    if active.size == 0:
        return samples.copy()
    size = _smooth_size(len(samples))  # filtered circularly, then cut to length
    spectrum = np.fft.rfft(rng.standard_normal(size))
    omega = 2.0 * np.pi * np.arange(len(spectrum)) / size
    noise = np.fft.irfft(spectrum / np.abs(1.0 - color * np.exp(-1j * omega)), size)[: len(samples)]
    scale = np.sqrt(np.mean(active**2) / (np.mean(noise**2) * 10.0 ** (snr_db / 10.0)))
    return samples + scale * noise


def normalize_peak(samples: np.ndarray, peak_db: float) -> np.ndarray:
    """Scale so the absolute peak is ``peak_db`` dBFS (<= 0). (T,) -> (T,)."""
    if peak_db > 0:
        raise ValueError(f"peak_db must be <= 0 dBFS to avoid clipping, got {peak_db}")
    peak = np.max(np.abs(samples), initial=0.0)
    if peak == 0:
        return samples.copy()
    return samples * (10.0 ** (peak_db / 20.0) / peak)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Round float samples in [-1, 1] to int16 (values outside are clipped). (T,) -> (T,)."""
    return np.round(np.clip(samples, -1.0, 32767.0 / 32768.0) * 32768.0).astype(np.int16)
