"""filter_cuts: empty text, duration range, more tokens than encoder frames."""

from __future__ import annotations

import logging

import pytest
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.audio import AudioSource
from librispeech_tree import CharEncoder

from asr.data.augment import SpeedPerturbation, draw_seed
from asr.data.filtering import (
    SPEED_COPY_FIELD,
    SPEEDS_FIELD,
    FilterStats,
    allowed_speeds,
    drop_reason,
    filter_cuts,
    is_speed_copy,
    with_speed_copy_record,
)
from asr.encoders.subsampling import subsampled_length
from asr.tokenizers.char import build_char_tokenizer


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
                             _cut("umlaut", 1.0, "HÄLLO"), _cut("first", 1.0, "ÄBC")])
    with caplog.at_level(logging.INFO):
        kept, stats = filter_cuts(cuts, _UnkCharEncoder(), subsampled_length)
    assert stats == FilterStats(kept=4, with_unk=3) and len(kept) == 4
    assert "3 kept cuts have text the tokenizer encodes as <unk>" in caplog.text
    assert "lower: 'hello'" in caplog.text


def test_a_cut_is_kept_at_the_speeds_it_passes_at_and_dropped_if_it_passes_at_none(
        caplog) -> None:
    """On-the-fly speed perturbation draws 0.9, 1.0 or 1.1 per cut and epoch, after filtering.
    The filter dropped every cut that failed at ONE speed (all cuts over ~18 s under a 20 s
    limit), where icefall's stored copies keep the speeds that pass; now such a cut is kept and
    marked with its passing speeds, and only a cut that fails at all of them is dropped."""
    cuts = CutSet.from_cuts([
        _cut("ok", 1.0, "HELLO"),
        # 100 frames -> 24 encoder frames; at 1.1 0.909 s, 91 frames -> 22 < 23 tokens
        _cut("fast-text", 1.0, "A" * 23),
        _cut("fast-short", 0.52, "A"),  # 0.473 s at 1.1 < 0.5
        _cut("slow-long", 19.0, "A"),  # 21.1 s at 0.9 > 20, 17.3 s at 1.1
        # 24 encoder frames at 1.0, 27 at 0.9 (1.111 s), 22 at 1.1: < 28 tokens at every speed
        _cut("text-everywhere", 1.0, "A" * 28),
        _cut("long-everywhere", 23.0, "A"),  # 20.9 s at 1.1
    ])
    kept, stats = filter_cuts(cuts, CharEncoder(), subsampled_length, min_duration=0.5,
                              max_duration=20.0)
    assert stats == FilterStats(kept=4, too_many_tokens=1, too_long=1)  # speed 1 alone
    assert all(allowed_speeds(c) is None for c in kept)
    with caplog.at_level(logging.INFO):
        kept, stats = filter_cuts(cuts, CharEncoder(), subsampled_length, min_duration=0.5,
                                  max_duration=20.0, speed_factors=(1.0, 0.9, 1.1))
    assert {c.id: allowed_speeds(c) for c in kept} == {
        "ok": None, "fast-text": (1.0, 0.9), "fast-short": (1.0, 0.9), "slow-long": (1.0, 1.1)}
    assert stats == FilterStats(kept=4, too_many_tokens=1, too_long=1, some_speeds=3)
    assert "too_many_tokens (e.g. text-everywhere at every speed 0.9/1/1.1)" in caplog.text
    assert "too_long (e.g. long-everywhere at every speed 0.9/1/1.1)" in caplog.text
    assert "3 cuts kept at only the speeds they pass at, e.g. fast-text at speed 0.9/1" in \
        caplog.text
    assert "kept 4 of 6 cuts (dropped 2) judged at each speed 0.9/1/1.1" in caplog.text
    assert not any(c.custom for c in cuts)  # the caller's cuts are left as they were
    with pytest.raises(ValueError, match="speed_factors must be > 0"):
        filter_cuts(cuts, CharEncoder(), subsampled_length, speed_factors=(1.0, 0.0))


def test_lazy_filter_marks_the_same_speeds_and_a_stale_mark_is_replaced(tmp_path) -> None:
    """A lazy CutSet (a Shar reader: ``apply_to``) is filtered and marked on every pass as the
    counting pass found; a cut that arrives with a mark of its own gets the filter's."""
    cuts = CutSet.from_cuts([_cut("ok", 1.0, "HELLO").with_custom(SPEEDS_FIELD, [0.9]),
                             _cut("slow-long", 19.0, "A"), _cut("never", 23.0, "A")])
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    lazy = CutSet.from_jsonl_lazy(tmp_path / "cuts.jsonl.gz")
    for apply_to in (None, CutSet.from_jsonl_lazy(tmp_path / "cuts.jsonl.gz")):
        kept, stats = filter_cuts(lazy, CharEncoder(), subsampled_length, max_duration=20.0,
                                  speed_factors=(1.0, 0.9, 1.1), apply_to=apply_to)
        assert kept.is_lazy and stats == FilterStats(kept=2, too_long=1, some_speeds=1)
        for _ in range(2):
            assert {c.id: allowed_speeds(c) for c in kept} == {
                "ok": (1.0, 0.9, 1.1), "slow-long": (1.0, 1.1)}


def test_a_marked_cut_is_drawn_only_at_its_speeds() -> None:
    """A 19 s cut kept under a 20 s limit is trained at 1.0 and 1.1, never at 0.9; an unmarked
    cut keeps the draws it always had (seed, epoch and cut id alone)."""
    (long,), _ = filter_cuts(CutSet.from_cuts([_cut("slow-long", 19.0, "A")]), CharEncoder(),
                             subsampled_length, max_duration=20.0, speed_factors=(1.0, 0.9, 1.1))
    speed = SpeedPerturbation(7, (0.9, 1.1))
    drawn, durations = set(), set()
    for epoch in range(1, 41):
        speed.set_epoch(epoch)
        drawn.add(speed.factor(long.id, allowed_speeds(long)))
        durations.add(round(speed(long).duration, 2))
        assert speed.factor("plain") == (1.0, 0.9, 1.1)[draw_seed(7, epoch, "plain") % 3]
    assert drawn == {1.0, 1.1} and durations == {19.0, 17.27}
    with pytest.raises(ValueError, match=r"cut 'x' may be trained only at speeds \[1.2\]"):
        speed.factor("x", (1.2,))


class _LettersOnlyEncoder(CharEncoder):
    """Spells letters and spaces; drops every other character (as a tokenizer may drop
    punctuation)."""

    def encode(self, text: str) -> list[int]:
        return [t for t in super().encode(text) if t != 28]


def test_the_duration_range_is_inclusive_and_text_without_tokens_is_empty() -> None:
    """A cut of exactly min_duration or max_duration seconds is kept (one just outside is not);
    text the tokenizer encodes as no token at all is dropped as empty, however long the cut."""
    cuts = CutSet.from_cuts([
        _cut("at-min", 0.5, "A"), _cut("below-min", 0.49, "A"),
        _cut("at-max", 20.0, "A"), _cut("above-max", 20.01, "A"),
        _cut("punctuation", 1.0, "?!"),
    ])
    kept, stats = filter_cuts(cuts, _LettersOnlyEncoder(), subsampled_length, min_duration=0.5,
                              max_duration=20.0)
    assert sorted(c.id for c in kept) == ["at-max", "at-min"]
    assert stats == FilterStats(kept=2, too_short=1, too_long=1, empty_text=1)


def test_a_cut_dropped_at_every_speed_is_counted_under_its_reason_at_the_first() -> None:
    """0.52 s of 23 tokens: too many tokens at speed 1 (24 encoder frames), too short at 1.1
    (0.473 s): the reason counted is that of the first speed judged."""
    cut = _cut("both", 0.52, "A" * 23)
    for speeds, reason in [((1.0, 1.1), "too_many_tokens"), ((1.1, 1.0), "too_short")]:
        assert drop_reason(cut, CharEncoder(), subsampled_length, min_duration=0.5,
                           speed_factors=speeds) == reason


def _with_supervisions(cut_id: str, duration: float, *spans: tuple[float, float, str]) -> MonoCut:
    """A cut of ``duration`` s with one supervision per ``(start, duration, text)``, listed in
    the order given."""
    cut = _cut(cut_id, duration, "")
    cut.supervisions = [SupervisionSegment(f"{cut_id}-{i}", cut_id, start, length, channel=0,
                                           text=text)
                        for i, (start, length, text) in enumerate(spans)]
    return cut


def test_a_cuts_transcript_is_its_supervisions_in_the_order_they_start() -> None:
    """The texts were joined in the order the supervisions were listed: a manifest (or a mixed
    cut) listing the later one first trained the cut on 'WORLD HELLO'."""
    from asr.data.filtering import cut_text

    listed_late_first = _with_supervisions("two", 2.0, (1.0, 1.0, "WORLD"), (0.0, 1.0, "HELLO"))
    assert cut_text(listed_late_first) == "HELLO WORLD"
    same_start = _with_supervisions("tie", 2.0, (0.0, 1.0, "A"), (0.0, 2.0, "B"), (0.5, 1, " "))
    assert cut_text(same_start) == "A B"  # ties keep their order, blank texts are left out


def test_a_supervision_outside_its_cut_drops_the_cut_and_is_counted(caplog) -> None:
    """A cut truncated within its utterance kept the whole utterance's transcript for part of
    its audio and was trained on it; a supervision shorter than the cut, or several within it,
    are fine."""
    whole = _cut("whole", 2.0, "HELLO WORLD")
    cuts = CutSet.from_cuts([
        whole.truncate(duration=1.0, preserve_id=True),  # the supervision ends at 2 s
        whole.truncate(offset=0.5, duration=1.5, preserve_id=False),  # it starts at -0.5 s
        _with_supervisions("inside", 3.0, (0.5, 1.0, "HELLO")),
        _with_supervisions("several", 3.0, (2.0, 1.0, "WORLD"), (0.0, 1.5, "HELLO")),
        _with_supervisions("rounding", 1.0, (-0.001, 1.002, "HELLO")),
        whole,
    ])
    with caplog.at_level(logging.WARNING):
        kept, stats = filter_cuts(cuts, CharEncoder(), subsampled_length,
                                  speed_factors=(0.9, 1.0, 1.1))
    assert [c.id for c in kept] == ["inside", "several", "rounding", "whole"]
    assert stats == FilterStats(kept=4, outside_cut=2) and stats.dropped == 2
    assert "dropped 2 cuts: outside_cut (e.g. whole at every speed" in caplog.text
    assert drop_reason(cuts[0], CharEncoder(), subsampled_length) == "outside_cut"


def test_a_perturbed_duration_is_lhotses_sample_count_at_that_speed() -> None:
    """2.2 s at 16 kHz is 35200 samples; lhotse's perturb_speed makes 32000 of them at 1.1:
    2.0 s exactly (35200 / 1.1 / 16000 is 1.9999999999999998), inside an inclusive
    min_duration of 2.0, so the cut is kept at both speeds."""
    cut = _cut("c", 2.2, "A")
    assert cut.perturb_speed(1.1).duration == 2.0
    kept, stats = filter_cuts(CutSet.from_cuts([cut]), CharEncoder(), subsampled_length,
                              min_duration=2.0, max_duration=2.2, speed_factors=(1.0, 1.1))
    assert stats == FilterStats(kept=1) and allowed_speeds(next(iter(kept))) is None


def test_a_text_the_tokenizer_refuses_is_named_with_its_cut() -> None:
    """A transcript that writes ``▁`` is refused by the tokenizer, naming the text only; the
    filter, which encodes every training text first, adds the cut."""
    cuts = CutSet.from_cuts([_cut("fine", 2.0, "AB"), _cut("mark", 2.0, "A\u2581B")])
    with pytest.raises(ValueError, match="^cut 'mark', its supervisions' text: "
                                         "text 'A\u2581B' holds '\u2581'"):
        filter_cuts(cuts, build_char_tokenizer(["AB"]), subsampled_length)


def test_a_stored_speed_copy_is_refused_for_on_the_fly_speed_perturbation() -> None:
    """The recipe's training manifests hold the 0.9/1.1 copies of `asr prepare fbank
    --speed-perturb`; with data.speed_perturb on the fly perturbed them again: a copy at 0.9
    was trained at 0.81 (and 0.99) in some epochs. The filter's pass now refuses such a cut,
    naming it; judged at speed 1 alone (no perturbation) the copies are cuts like any other."""
    plain = _cut("a", 2.0, "HELLO")
    cuts = CutSet.from_cuts([plain, plain.perturb_speed(0.9), plain.perturb_tempo(1.1)])
    with pytest.raises(ValueError, match=r"cut 'a_sp0\.9' \(audio /nonexistent\.flac\) is "
                                         r"speed-perturbed already \(Speed\(factor=0\.9\)"):
        filter_cuts(cuts, CharEncoder(), subsampled_length, speed_factors=(1.0, 0.9, 1.1))
    with pytest.raises(ValueError, match=r"cut 'a_tp1\.1' .* already \(Tempo\(factor=1\.1\)"):
        filter_cuts(CutSet.from_cuts([cuts[2]]), CharEncoder(), subsampled_length,
                    speed_factors=(1.0, 0.9, 1.1))
    kept, stats = filter_cuts(cuts, CharEncoder(), subsampled_length)
    assert stats.kept == 3 and [c.id for c in kept] == ["a", "a_sp0.9", "a_tp1.1"]
    resampled = CutSet.from_cuts([plain.resample(8000)])  # not a speed: judged as before
    assert filter_cuts(resampled, CharEncoder(), subsampled_length,
                       speed_factors=(1.0, 0.9, 1.1))[1].kept == 1


def _shar_manifest_cut(recording_id: str, custom: dict | None = None) -> MonoCut:
    """A cut as a Shar cut manifest holds it: its recording a placeholder (source type
    ``shar``, lhotse's ``to_shar_placeholder``: no transforms)."""
    recording = Recording(recording_id, [AudioSource("shar", [0], "")], 16000, 16000, 1.0)
    return MonoCut(recording_id, 0.0, 1.0, 0, recording=recording, custom=custom)


def test_a_shar_recording_id_ending_in_sp_is_a_copy_only_without_a_record() -> None:
    """A Shar cut whose recording id merely ended in ``_sp<number>`` was taken for a speed copy.
    Shar drops the transforms (lhotse keeps no other trace of them), so ``asr shar`` records on
    every cut whether it is a copy (:func:`with_speed_copy_record`); only a cut without that
    record (lhotse's ``to_shar`` alone) is judged by the id, and only a float factor counts."""
    plain = _cut("meeting_sp1.5", 1.0, "HELLO")
    copy = _cut("a", 1.0, "HELLO").perturb_speed(0.9)
    recorded = [with_speed_copy_record(cut) for cut in (plain, copy)]
    assert [cut.custom[SPEED_COPY_FIELD] for cut in recorded] == [None, "Speed(factor=0.9)"]
    # as a Shar manifest reads back (the record kept, the transforms gone)
    read_back = [_shar_manifest_cut(cut.recording.id, MonoCut.from_dict(cut.to_dict()).custom)
                 for cut in recorded]
    assert [is_speed_copy(cut) for cut in read_back] == [False, True]
    # without a record, the id: lhotse's float suffix alone
    assert [is_speed_copy(_shar_manifest_cut(rid)) for rid in
            ("meeting_sp1.5", "a_sp0.9", "a_tp1.1", "meeting_sp1", "meeting_sp12")] == [
        True, True, True, False, False]
    assert with_speed_copy_record(recorded[1]) is recorded[1]  # recorded once


def test_the_filters_log_names_the_cuts_and_says_why_in_words(caplog) -> None:
    """Training filtered its training and its dev cuts with the same unnamed lines ("dropped 1
    cuts: too_many_tokens (e.g. x)"): a dev cut shorter than the subsampling window, which the
    dev WER then never scores, read as one of the training cuts, and the reason as one of the
    transcript's length."""
    cuts = CutSet.from_cuts([_cut("ok", 1.0, "HELLO"), _cut("blip", 0.05, "A")])
    with caplog.at_level(logging.INFO, logger="asr.data.filtering"):
        kept, stats = filter_cuts(cuts, CharEncoder(), subsampled_length, name="dev cuts")
    assert [c.id for c in kept] == ["ok"] and stats.too_many_tokens == 1
    assert ("dev cuts: dropped 1 cuts: too_many_tokens (e.g. blip): more tokens than encoder "
            "frames after subsampling (a cut shorter than the subsampling window has none)"
            in caplog.text)
    assert "dev cuts: kept 1 of 2 cuts (dropped 1)" in caplog.text
