"""The training application's own pieces: the dev subset spans every dev set."""

from __future__ import annotations

from lhotse import CutSet
from lhotse.testing.dummies import dummy_cut

from asr.run.train import spread_subset


def test_dev_subset_spreads_over_all_dev_sets():
    clean = [dummy_cut(i).with_id(f"clean-{i}") for i in range(30)]
    other = [dummy_cut(i).with_id(f"other-{i}") for i in range(30)]
    cuts = CutSet.from_cuts(clean + other)
    chosen = [c.id for c in spread_subset(cuts, 6)]
    assert len(chosen) == 6
    assert sum(c.startswith("other") for c in chosen) == 3  # the first 6 would all be clean
    assert len(spread_subset(cuts, 0)) == 60 and len(spread_subset(cuts, 100)) == 60
