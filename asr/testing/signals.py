"""How faithfully a copy of a signal (through a codec, a resampler, a browser) carries it.

Tests of audio paths compare what came out with what went in instead of with what a trained
model happens to hear in it: :func:`aligned_snr_db` finds where the reference lies in the copy (a
codec's delay, a capture that started late) and measures the error there. Speech through the
lossy codecs at their default bitrates (Vorbis, MP3, AAC) keeps above 20 dB; read at a wrong
rate, with a 50 ms stretch dropped or with one channel of a downmix lost it falls below 10 dB.
"""

from __future__ import annotations

import numpy as np

__all__ = ["aligned_snr_db", "find_offset"]


def find_offset(reference: np.ndarray, copy: np.ndarray) -> int:
    """Where ``reference`` best lies in ``copy``: the ``k`` maximizing the cross-correlation
    ``sum_i copy[i + k] * reference[i]`` (negative when the copy lacks its start).

    Args:
        reference: (N,) samples.
        copy: (M,) samples at the same rate.

    Returns:
        The offset ``k`` of ``reference[0]`` in ``copy``, in ``(-N, M)``.
    """
    n, m = reference.shape[0], copy.shape[0]
    size = 1 << int(np.ceil(np.log2(n + m)))
    spectrum = np.fft.rfft(copy.astype(np.float64), size) * np.conj(
        np.fft.rfft(reference.astype(np.float64), size))
    correlation = np.fft.irfft(spectrum, size)  # index k: offset k, index size - k: offset -k
    lags = np.concatenate([np.arange(0, m), np.arange(-(n - 1), 0)])
    values = np.concatenate([correlation[:m], correlation[size - (n - 1):]])
    return int(lags[np.argmax(values)])


def aligned_snr_db(reference: np.ndarray, copy: np.ndarray) -> float:
    """Signal-to-error ratio (dB) of ``copy`` against ``reference`` at their best alignment.

    Samples of ``reference`` that fall outside ``copy`` count as errors whole; samples of
    ``copy`` outside ``reference`` (a codec's padding, silence around) are not compared.

    Args:
        reference: (N,) samples.
        copy: (M,) samples at the same rate and scale.

    Returns:
        ``10 * log10(sum(reference**2) / sum(error**2))``; ``inf`` for an exact copy.
    """
    reference = reference.astype(np.float64)
    k = find_offset(reference, copy)
    aligned = np.zeros_like(reference)
    start, stop = max(0, -k), min(reference.shape[0], copy.shape[0] - k)
    if stop > start:
        aligned[start:stop] = copy[start + k: stop + k]
    error = float(np.sum((aligned - reference) ** 2))
    signal = float(np.sum(reference**2))
    return float("inf") if error == 0 else 10.0 * float(np.log10(signal / error))
