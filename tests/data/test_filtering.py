"""filter_cuts: empty text, duration range, more tokens than encoder frames."""

from __future__ import annotations

import logging

import pytest
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.audio import AudioSource
from librispeech_tree import CharEncoder

from asr.data.filtering import FilterStats, filter_cuts
from asr.encoders.subsampling import subsampled_length


def _cut(cut_id: str, duration: float, text: str) -> MonoCut:
    n = int(duration * 16000)
    recording = Recording(cut_id, [AudioSource("file", [0], "/nonexistent.flac")], 16000, n,
                          duration)
    sup = SupervisionSegment(cut_id, cut_id, 0.0, duration, channel=0, text=text)
    return MonoCut(cut_id, 0.0, duration, 0, recording=recording, supervisions=[sup])


def test_subsampled_length_hand_values() -> None:
    # ((T - 1) // 2 - 1) // 2
    assert [subsampled_length(t) for t in (0, 1, 3, 6, 7, 8, 9, 10, 11, 100, 101)] == [
        0, 0, 0, 0, 1, 1, 1, 1, 2, 24, 24]


def _cuts() -> CutSet:
    return CutSet.from_cuts([
        _cut("ok", 1.0, "HELLO"),  # 100 frames -> 24 encoder frames, 5 tokens
        _cut("exactly", 1.0, "A" * 24),  # 24 tokens == 24 frames: kept
        _cut("toolong-text", 1.0, "A" * 25),  # 25 tokens > 24 frames
        _cut("toolong-text2", 0.5, "ABCDEFGHIJKLM"),  # 50 frames -> 11 < 13 tokens
        _cut("empty", 1.0, "   "),
        _cut("short", 0.2, "A"),
        _cut("long", 30.0, "A"),
    ])


def test_filter_counts_each_reason(caplog) -> None:
    with caplog.at_level(logging.INFO):
        kept, stats = filter_cuts(_cuts(), CharEncoder(), subsampled_length, min_duration=0.3,
                                  max_duration=20.0)
    assert sorted(c.id for c in kept) == ["exactly", "ok"]
    assert stats == FilterStats(kept=2, empty_text=1, too_short=1, too_long=1, too_many_tokens=2)
    assert stats.total == 7 and stats.dropped == 5
    assert "dropped 2 cuts: too_many_tokens" in caplog.text


def test_filter_custom_output_length_and_lazy(tmp_path) -> None:
    path = tmp_path / "cuts.jsonl.gz"
    _cuts().to_file(path)
    lazy = CutSet.from_jsonl_lazy(path)
    kept, stats = filter_cuts(lazy, CharEncoder(), output_length=lambda t: t)
    assert kept.is_lazy
    # Without subsampling every non-empty cut has enough frames.
    assert stats == FilterStats(kept=6, empty_text=1)
    assert [c.id for c in kept] == [c.id for c in kept]  # a lazy filter can be re-iterated
    assert len(list(kept)) == 6


@pytest.mark.parametrize("duration", [0.05, 0.06])  # 5 or 6 frames -> 0 encoder frames
def test_too_few_frames_for_any_token(duration: float) -> None:
    kept, stats = filter_cuts(CutSet.from_cuts([_cut("tiny", duration, "A")]), CharEncoder(),
                               subsampled_length)
    assert len(kept) == 0 and stats.too_many_tokens == 1


class _UnkCharEncoder(CharEncoder):
    unk_id = 28  # CharEncoder's id of every character but A-Z and space


def test_text_outside_the_tokenizer_is_counted_and_logged(caplog) -> None:
    cuts = CutSet.from_cuts([_cut("upper", 1.0, "HELLO"), _cut("lower", 1.0, "hello"),
                             _cut("umlaut", 1.0, "HÄLLO")])
    with caplog.at_level(logging.INFO):
        kept, stats = filter_cuts(cuts, _UnkCharEncoder(), subsampled_length)
    assert stats == FilterStats(kept=3, with_unk=2) and len(kept) == 3
    assert "2 kept cuts have text the tokenizer encodes as <unk>" in caplog.text
    assert "lower: 'hello'" in caplog.text


def test_speed_factors_judge_every_speed_a_cut_can_be_drawn_at(caplog) -> None:
    """On-the-fly speed perturbation draws 0.9, 1.0 or 1.1 per cut and epoch, after filtering:
    each check must hold at each speed (1.1: fewest frames, shortest; 0.9: longest)."""
    cuts = CutSet.from_cuts([
        _cut("ok", 1.0, "HELLO"),
        # 100 frames -> 24 encoder frames; at 1.1 0.909 s, 91 frames -> 22 < 23 tokens
        _cut("fast-text", 1.0, "A" * 23),
        _cut("fast-short", 0.52, "A"),  # 0.473 s at 1.1 < 0.5
        _cut("slow-long", 18.5, "A"),  # 20.56 s at 0.9 > 20
    ])
    kept, stats = filter_cuts(cuts, CharEncoder(), subsampled_length, min_duration=0.5,
                              max_duration=20.0)
    assert stats == FilterStats(kept=4)  # at speed 1 alone every cut passes
    with caplog.at_level(logging.INFO):
        kept, stats = filter_cuts(cuts, CharEncoder(), subsampled_length, min_duration=0.5,
                                  max_duration=20.0, speed_factors=(1.0, 0.9, 1.1))
    assert [c.id for c in kept] == ["ok"]
    assert stats == FilterStats(kept=1, too_short=1, too_long=1, too_many_tokens=1)
    assert "too_many_tokens (e.g. fast-text at speed 1.1)" in caplog.text
    assert "too_long (e.g. slow-long at speed 0.9)" in caplog.text
    assert "kept 1 of 4 cuts (dropped 3) judged at each speed 0.9/1/1.1" in caplog.text
    with pytest.raises(ValueError, match="speed_factors must be > 0"):
        filter_cuts(cuts, CharEncoder(), subsampled_length, speed_factors=(1.0, 0.0))
