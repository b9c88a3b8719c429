"""asr.testing.signals: where a reference lies in its copy, and how faithfully it is carried."""

from __future__ import annotations

import numpy as np
import pytest

from asr.testing.signals import aligned_snr_db, blockwise_snr_db, find_offset


@pytest.fixture
def noise() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(4000).astype(np.float32)


@pytest.mark.parametrize("offset", [0, 7, 1234, -5, -300])
def test_the_offset_of_a_shifted_copy_is_found(noise, offset):
    copy = np.concatenate([np.zeros(offset, np.float32), noise]) if offset >= 0 else noise[-offset:]
    assert find_offset(noise, copy) == offset
    assert aligned_snr_db(noise[max(0, -offset):], copy) == float("inf")


def test_the_snr_counts_noise_a_missing_start_and_a_dropped_stretch(noise):
    rng = np.random.default_rng(1)
    noisy = noise + 0.1 * rng.standard_normal(noise.size).astype(np.float32)
    assert aligned_snr_db(noise, np.concatenate([np.zeros(50, np.float32), noisy])) == (
        pytest.approx(20.0, abs=0.5))
    assert aligned_snr_db(noise, noise[:3000]) == pytest.approx(10 * np.log10(4 / 1), abs=0.3)
    dropped = np.concatenate([noise[:2000], noise[2100:]])  # the rest one stretch early
    assert aligned_snr_db(noise, dropped) < 4.0


def _speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise under a syllable-rate envelope with pauses: blocks that lie in one place only."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    envelope = np.clip(np.sin(np.arange(n) * 2 * np.pi * 4 / 16000), 0.05, None)
    return (0.3 * envelope * rng.standard_normal(n)).astype(np.float32)


def _drop(wave: np.ndarray, starts, length: int) -> np.ndarray:
    keep = np.ones(wave.size, bool)
    for start in starts:
        keep[start: start + length] = False
    return wave[keep]


def test_a_copy_missing_capture_blocks_passes_blockwise_where_one_alignment_fails():
    """A browser's capture under load dropped a few 128-sample blocks (at 48 kHz; 43 at 16
    kHz): one alignment put the rest early and read 10.5 dB. Block by block, every block away
    from a gap is carried exactly, in order, and the copy holds nearly all the speech."""
    reference = _speech_like(3.0)
    copy = np.concatenate([np.zeros(700, np.float32),
                           _drop(reference, (9000, 21000, 33000), 3 * 43)])
    assert aligned_snr_db(reference, copy) < 15.0
    match = blockwise_snr_db(reference, copy, 800)
    assert match.share_above(15.0) >= 0.9
    assert match.in_order and match.coverage > 0.95


def test_a_scaled_reordered_or_repeated_copy_fails_blockwise():
    """What the page could do wrong still shows: samples scaled (every block poor), blocks
    swapped or repeated (out of order)."""
    reference = _speech_like(3.0)
    assert blockwise_snr_db(reference, 0.5 * reference, 800).share_above(15.0) == 0.0
    swapped = np.concatenate([reference[24000:], reference[:24000]])
    match = blockwise_snr_db(reference, swapped, 800)
    assert match.share_above(15.0) >= 0.9 and not match.in_order
    repeated = np.concatenate([reference[:24000], reference[16000:]])
    assert not blockwise_snr_db(reference, repeated, 800).in_order
