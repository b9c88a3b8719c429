"""Global CMVN: fixed per-bin mean and variance normalisation of the features, inside the model.

Log-mel fbank values sit around -15..10 with bin-dependent means; the encoder's first convolution
learns faster on inputs of zero mean and unit variance per bin. The statistics are those of the
training features (as in WeNet's ``global_cmvn`` and ESPnet's ``GlobalMVN``), computed once when
training starts (:func:`compute_cmvn_stats`) and kept as buffers of :class:`GlobalCMVN`, so every
checkpoint, averaged model and exported package carries them. The normalisation is per frame, so a
streaming encoder applies it chunk by chunk with the same result.

Shape legend: B batch, T frames, F feature bins.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

STD_FLOOR = 1e-2
"""Smallest standard deviation used (a constant bin must not blow up)."""


class GlobalCMVN(nn.Module):
    """``(feats - mean) / std`` per feature bin with fixed statistics (identity until set).

    Args:
        num_bins: feature bins F.
    """

    def __init__(self, num_bins: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_bins))
        self.register_buffer("inv_std", torch.ones(num_bins))

    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        """Sets the statistics; ``std`` is floored at :data:`STD_FLOOR`.

        Raises:
            ValueError: on a shape other than (F,) or non-finite values.
        """
        num_bins = self.mean.shape[0]
        if mean.shape != (num_bins,) or std.shape != (num_bins,):
            raise ValueError(
                f"CMVN statistics must have shape ({num_bins},), got mean {tuple(mean.shape)} "
                f"and std {tuple(std.shape)}"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("CMVN statistics are not finite")
        self.mean.copy_(mean.to(self.mean))
        self.inv_std.copy_(1.0 / std.to(self.inv_std).clamp(min=STD_FLOOR))

    def forward(self, feats: Tensor) -> Tensor:
        """Normalises (B, T, F) features (padding frames too: callers mask by length)."""
        return (feats - self.mean) * self.inv_std


def compute_cmvn_stats(
    cuts: Iterable, max_cuts: int = 2000, extractor=None
) -> tuple[Tensor, Tensor]:
    """Per-bin mean and standard deviation of the features of up to ``max_cuts`` cuts.

    The cuts of a sequence (an eager CutSet, a list) are taken evenly spaced over the whole
    of it (so speed-perturbed copies and every speaker contribute); a stream without a length
    (a lazy CutSet, e.g. the Lhotse Shar training cuts) gives its first ``max_cuts`` cuts, as
    reading it to its end to spread them would read all its data. The sums are accumulated in
    float64.

    Args:
        cuts: lhotse cuts with features: a sequence or a lazy CutSet.
        max_cuts: how many cuts to read at most (0: all).
        extractor: lhotse feature extractor for cuts without stored features (on-the-fly
            training); None requires stored features.

    Returns:
        (F,) mean and (F,) standard deviation, float32.

    Raises:
        ValueError: when there are no cuts, or a cut has neither features nor an extractor.
    """
    if getattr(cuts, "is_lazy", False):
        chosen = cuts if max_cuts <= 0 else itertools.islice(cuts, max_cuts)
    else:
        total = len(cuts)
        count = total if max_cuts <= 0 else min(total, max_cuts)
        indices = np.linspace(0, total - 1, count).round().astype(int) if total else []
        chosen = (cuts[int(i)] for i in indices)
    count, frames, sums, squares = 0, 0, None, None
    for cut in chosen:
        if cut.has_features:
            feats = np.asarray(cut.load_features(), dtype=np.float64)
        elif extractor is not None:
            feats = np.asarray(cut.compute_features(extractor), dtype=np.float64)
        else:
            raise ValueError(f"cut {cut.id} has no stored features for the CMVN statistics")
        if sums is None:
            sums = np.zeros(feats.shape[1])
            squares = np.zeros(feats.shape[1])
        count += 1
        frames += feats.shape[0]
        sums += feats.sum(axis=0)
        squares += (feats * feats).sum(axis=0)
    if count == 0:
        raise ValueError("no cuts to compute CMVN statistics from")
    mean = sums / max(frames, 1)
    var = np.maximum(squares / max(frames, 1) - mean * mean, 0.0)
    logger.info("CMVN statistics from %d cuts (%d frames)", count, frames)
    return torch.from_numpy(mean).float(), torch.from_numpy(np.sqrt(var)).float()
