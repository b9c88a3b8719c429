"""asr.testing.signals: where a reference lies in its copy, and how faithfully it is carried."""

from __future__ import annotations

import numpy as np
import pytest

from asr.testing.signals import aligned_snr_db, find_offset


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
