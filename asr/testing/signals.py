"""How faithfully a copy of a signal (through a codec, a resampler, a browser) carries it.

Tests of audio paths compare what came out with what went in instead of with what a trained
model happens to hear in it: :func:`aligned_snr_db` finds where the reference lies in the copy (a
codec's delay, a capture that started late) and measures the error there. Speech through the
lossy codecs at their default bitrates (Vorbis, MP3, AAC) keeps above 20 dB; read at a wrong
rate, with a 50 ms stretch dropped or with one channel of a downmix lost it falls below 10 dB.

A real-time capture (a browser's microphone under load) may drop whole blocks, after which the
rest of the copy sits earlier than one alignment puts it: :func:`blockwise_snr_db` aligns each
block of the copy on its own, so the blocks kept are measured as carried, and says which
stretches of the reference the copy holds, in order, so that a copy with blocks reordered,
repeated or scaled still fails where one with blocks missing passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BlockwiseMatch", "aligned_snr_db", "blockwise_snr_db", "find_offset"]


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


#: The SNR above which a block counts as found where it lies, for the order of the blocks.
ORDER_DB = 10.0


@dataclass(frozen=True)
class BlockwiseMatch:
    """How the blocks of a copy lie in its reference (:func:`blockwise_snr_db`).

    Attributes:
        snr_db: (K,) signal-to-error ratio of each block of the copy at its own best offset in
            the reference, for the K blocks with sound (``inf`` where exact).
        offsets: (K,) where each of those blocks begins in the reference.
        in_order: whether each block carried at more than :data:`ORDER_DB` lies after the one
            before it (no block reordered or repeated; a dropped block only leaves a gap; a
            block straddling a gap, matched nowhere well, is not counted).
        coverage: the share of the reference's energy inside the blocks found, 0 to 1.
    """

    snr_db: np.ndarray
    offsets: np.ndarray
    in_order: bool
    coverage: float

    def share_above(self, db: float) -> float:
        """The share of the copy's blocks with sound carried at more than ``db`` dB."""
        return float(np.mean(self.snr_db > db)) if self.snr_db.size else 0.0


def blockwise_snr_db(reference: np.ndarray, copy: np.ndarray, block: int,
                     silence: float = 1e-3) -> BlockwiseMatch:
    """Aligns each ``block``-sample block of ``copy`` that has sound (mean square above
    ``silence`` times its loudest block's) on its own to the place in ``reference`` most like it
    (normalized cross-correlation, over the places where a whole block fits) and measures its
    error there (:func:`aligned_snr_db`'s ratio, per block). A copy that lost whole blocks
    keeps every other block at its SNR (only a block straddling a gap is poor); one scaled has
    every block poor; one whose blocks are reordered or repeated is not ``in_order``.

    Args:
        reference: (N,) samples.
        copy: (M,) samples at the same rate and scale.
        block: samples per block (> 0); a last partial block is left out.
        silence: blocks quieter than this share of the loudest block's mean square are not
            aligned (silence, and a resampler's faint ringing, lie anywhere equally well).

    Returns:
        The :class:`BlockwiseMatch`.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1 sample, got {block}")
    reference = reference.astype(np.float64)
    copy = copy.astype(np.float64)
    blocks = [copy[i: i + block] for i in range(0, copy.shape[0] - block + 1, block)]
    powers = [float(np.mean(piece**2)) for piece in blocks]
    floor = silence * max(powers, default=0.0)
    snrs: list[float] = []
    offsets: list[int] = []
    if reference.shape[0] < block:
        return BlockwiseMatch(np.zeros(0), np.zeros(0, np.int64), True, 0.0)
    size = 1 << int(np.ceil(np.log2(reference.shape[0] + block)))
    spectrum = np.fft.rfft(reference, size)
    squares = np.concatenate([[0.0], np.cumsum(reference**2)])
    energy = squares[block:] - squares[:-block]  # (N - block + 1,) of each place
    for piece, power in zip(blocks, powers):
        if power <= floor:
            continue
        k = _best_place(piece, reference, spectrum, size, energy)
        target = reference[k: k + block]
        error = float(np.sum((piece - target) ** 2))
        signal = float(np.sum(target**2))
        snrs.append(float("inf") if error == 0 else
                    -float("inf") if signal == 0 else 10.0 * float(np.log10(signal / error)))
        offsets.append(k)
    found = np.zeros(reference.shape[0], bool)
    for k in offsets:
        found[k: k + block] = True
    total = float(np.sum(reference**2))
    coverage = float(np.sum(reference[found] ** 2)) / total if total else 0.0
    carried = [k for k, db in zip(offsets, snrs) if db > ORDER_DB]
    steps = np.diff(np.asarray(carried, np.int64))
    return BlockwiseMatch(np.asarray(snrs), np.asarray(offsets, np.int64),
                          bool(np.all(steps > 0)), coverage)


def _best_place(piece: np.ndarray, reference: np.ndarray, spectrum: np.ndarray, size: int,
                energy: np.ndarray) -> int:
    """The ``k`` in ``[0, N - B]`` where ``reference[k: k + B]`` is most like the (B,) ``piece``
    (normalized cross-correlation, over places of at least a thousandth of the block's energy:
    a quiet block is found where it lies, not where the reference is loudest or silent);
    ``spectrum`` is the reference's rfft of ``size``, ``energy`` its (N - B + 1,)
    sums of squares."""
    correlation = np.fft.irfft(spectrum * np.conj(np.fft.rfft(piece, size)), size)
    # a place far quieter than the block cannot be it (and near-silence would divide by ~0)
    plausible = energy > 1e-3 * float(np.sum(piece**2))
    if not np.any(plausible):
        return 0
    scores = np.where(plausible, correlation[: energy.shape[0]]
                      / np.sqrt(np.where(plausible, energy, 1.0)), -np.inf)
    return int(np.argmax(scores))
