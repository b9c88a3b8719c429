"""Global CMVN: the normalisation, its statistics against numpy over all frames, bad input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from asr.features.cmvn import STD_FLOOR, GlobalCMVN, compute_cmvn_stats


@dataclass
class FakeCut:
    """Duck-typed lhotse cut: stored features, or audio an extractor turns into features."""

    id: str
    feats: np.ndarray
    has_features: bool = True

    def load_features(self) -> np.ndarray:
        assert self.has_features
        return self.feats

    def compute_features(self, extractor) -> np.ndarray:
        return extractor(self.feats)


def _cuts(count: int, bins: int = 5, seed: int = 0) -> list[FakeCut]:
    rng = np.random.default_rng(seed)
    return [FakeCut(f"c{i}", rng.normal(i, 1 + i % 3, size=(int(rng.integers(3, 9)), bins)))
            for i in range(count)]


def test_normalises_with_set_statistics_and_is_identity_before():
    norm = GlobalCMVN(3)
    x = torch.randn(2, 4, 3)
    assert torch.equal(norm(x), x)
    norm.set_stats(torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, 0.5, 0.0]))
    expected = (x - torch.tensor([1.0, -2.0, 0.5])) / torch.tensor([2.0, 0.5, STD_FLOOR])
    torch.testing.assert_close(norm(x), expected)
    assert set(norm.state_dict()) == {"mean", "inv_std"}  # saved with the weights
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        norm.set_stats(torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="not finite"):
        norm.set_stats(torch.tensor([0.0, float("nan"), 0.0]), torch.ones(3))


def test_statistics_equal_numpy_over_every_frame():
    cuts = _cuts(7)
    mean, std = compute_cmvn_stats(cuts, max_cuts=0)
    frames = np.concatenate([c.feats for c in cuts])
    np.testing.assert_allclose(mean.numpy(), frames.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), frames.std(0), rtol=1e-5, atol=1e-6)


def test_a_subset_is_spread_over_the_whole_list():
    cuts = _cuts(10)
    mean, _ = compute_cmvn_stats(cuts, max_cuts=3)  # cuts 0, 4 (4.5 rounds to even) and 9
    frames = np.concatenate([cuts[i].feats for i in (0, 4, 9)])
    np.testing.assert_allclose(mean.numpy(), frames.mean(0), rtol=1e-5, atol=1e-6)


def test_cuts_without_features_need_an_extractor():
    cuts = [FakeCut(c.id, c.feats, has_features=False) for c in _cuts(3)]
    with pytest.raises(ValueError, match="cut c0 has no stored features"):
        compute_cmvn_stats(cuts)
    mean, _ = compute_cmvn_stats(cuts, extractor=lambda f: 2.0 * f)
    frames = np.concatenate([2.0 * c.feats for c in cuts])
    np.testing.assert_allclose(mean.numpy(), frames.mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no cuts"):
        compute_cmvn_stats([])


class _Stream:
    """A lazy CutSet's interface: iterable once through, no length, no indexing."""

    is_lazy = True

    def __init__(self, cuts: list[FakeCut]) -> None:
        self.cuts = cuts

    def __iter__(self):
        return iter(self.cuts)


def test_a_lazy_stream_gives_its_first_cuts():
    cuts = _cuts(10)
    mean, std = compute_cmvn_stats(_Stream(cuts), max_cuts=3)
    frames = np.concatenate([c.feats for c in cuts[:3]])
    np.testing.assert_allclose(mean.numpy(), frames.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), frames.std(0), rtol=1e-5, atol=1e-6)
    everything, _ = compute_cmvn_stats(_Stream(cuts), max_cuts=0)
    frames = np.concatenate([c.feats for c in cuts])
    np.testing.assert_allclose(everything.numpy(), frames.mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no cuts"):
        compute_cmvn_stats(_Stream([]))


def test_a_constant_bin_has_a_standard_deviation_of_zero_not_nan():
    """A bin of one value in every frame (digital silence's log floor, -15.94) has variance 0,
    which the sum of squares minus the squared mean computes as -2.8e-14 in float64: its square
    root was NaN, which the normalisation's statistics refuse."""
    cuts = [FakeCut(f"c{i}", np.full((500, 2), -15.9423851)) for i in range(2)]
    cuts[1].feats[:, 1] = np.linspace(-1.0, 1.0, 500)
    mean, std = compute_cmvn_stats(cuts)
    assert std[0] == 0.0 and mean[0] == pytest.approx(-15.9423851)
    norm = GlobalCMVN(2)
    norm.set_stats(mean, std)  # the constant bin's std is floored
    assert norm.inv_std[0] == pytest.approx(1 / STD_FLOOR)
