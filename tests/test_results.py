"""The result family and its one builder: pieces, words, seconds from frames, segments merged
into transcripts; and the one rule for sample arrays (float as is, integer PCM scaled)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asr.audio import AudioError, as_waveform
from asr.results import ResultBuilder, Segment, Word, words_from_tokens
from asr.types import Hypothesis


class _Pieces:
    """A detokenizer over a fixed piece table (``▁`` starts a word)."""

    table = {3: "\u2581HE", 4: "LLO", 5: "\u2581WOR", 6: "LD", 7: "\u2581"}

    def id_to_piece(self, token_id: int) -> str:
        return self.table[token_id]


def test_words_group_pieces_and_end_one_frame_after_their_last_token():
    words = words_from_tokens(["\u2581HE", "LLO", "\u2581", "\u2581WOR", "LD"],
                              [0.0, 0.08, 0.1, 0.2, 0.32], 0.04)
    assert words == [
        Word("HELLO", 0.0, pytest.approx(0.12)), Word("WORLD", 0.2, pytest.approx(0.36))
    ]


def test_hypothesis_segment_counts_frames_from_its_offset_in_seconds():
    builder = ResultBuilder(_Pieces(), 0.04)
    seg = builder.hypothesis_segment(Hypothesis(tokens=(3, 4), frames=(1, 3)), offset_frames=10,
                                     index=2, is_final=False)
    assert seg.timestamps == pytest.approx((0.44, 0.52))
    assert (seg.text, seg.tokens, seg.token_ids) == ("HELLO", ("\u2581HE", "LLO"), (3, 4))
    assert (seg.start, seg.end, seg.index, seg.is_final) == (pytest.approx(0.44),
                                                             pytest.approx(0.56), 2, False)
    empty = builder.hypothesis_segment(Hypothesis(tokens=()), offset_frames=25)
    assert (empty.text, empty.start, empty.end) == ("", pytest.approx(1.0), pytest.approx(1.0))


def test_tokens_without_times_get_none_invented():
    """A searcher without token times (aed_beam) gives no timestamps, and its words span their
    segment: not every token at the segment's start and every word 40 ms long (which made
    subtitles flash the whole transcript for one frame)."""
    builder = ResultBuilder(_Pieces(), 0.04)
    seg = builder.hypothesis_segment(Hypothesis(tokens=(3, 4, 5, 6)), offset_frames=25,
                                     num_frames=50, index=1)
    assert (seg.text, seg.token_ids, seg.timestamps) == ("HELLO WORLD", (3, 4, 5, 6), ())
    assert seg.words == (Word("HELLO", pytest.approx(1.0), pytest.approx(3.0)),
                         Word("WORLD", pytest.approx(1.0), pytest.approx(3.0)))
    assert (seg.begin, seg.start, seg.end, seg.index) == (pytest.approx(1.0), pytest.approx(1.0),
                                                          pytest.approx(3.0), 1)
    assert seg.to_json()["timestamps"] == []
    with pytest.raises(ValueError, match="without token frames needs the segment's num_frames"):
        builder.hypothesis_segment(Hypothesis(tokens=(5, 6)), offset_frames=25)
    result = builder.transcript("a.wav", 2.0, [builder.untimed_segment([5, 6], 0.0, 2.0)])
    assert (result.text, result.timestamps) == ("WORLD", ())
    assert result.to_dict()["words"] == [{"word": "WORLD", "start": 0.0, "end": 2.0}]


def test_transcript_concatenates_the_non_empty_segments():
    builder = ResultBuilder(_Pieces(), 0.04)
    first = builder.segment([3, 4], [0.0, 0.04])
    blank = builder.segment([], [], start=0.5, index=1)
    second = builder.segment([5, 6], [1.0, 1.04], index=2)
    result = builder.transcript("a.wav", 2.0, [first, blank, second])
    assert result.text == "HELLO WORLD" and result.segments == (first, second)
    assert result.token_ids == (3, 4, 5, 6)
    assert result.timestamps == pytest.approx((0.0, 0.04, 1.0, 1.04))
    assert [w.text for w in result.words] == ["HELLO", "WORLD"]
    data = result.to_dict()
    assert data["segments"][1] == {"text": "WORLD", "start": 1.0, "end": 1.08}
    with pytest.raises(ValueError, match="2 tokens but 1 timestamps"):
        builder.segment([3, 4], [0.0])


def test_streaming_message_is_sherpa_compatible_with_words():
    seg = Segment("HELLO", 0.0, 0.12, ("\u2581HE", "LLO"), (3, 4), (0.0, 0.08),
                  (Word("HELLO", 0.0, 0.12),), index=1, is_final=True)
    assert seg.to_json() == {
        "text": "HELLO", "tokens": ["\u2581HE", "LLO"], "timestamps": [0.0, 0.08], "segment": 1,
        "start_time": 0.0, "is_final": True,
        "words": [{"word": "HELLO", "start": 0.0, "end": 0.12}],
    }


def test_a_streaming_segment_says_where_it_began_as_sherpa_onnx_start_time():
    """A segment after an endpoint begins at the endpoint, before its first word: sherpa-onnx
    sends that as start_time; our timestamps count from the stream start, like it."""
    builder = ResultBuilder(_Pieces(), 0.04)
    hyp = Hypothesis(tokens=(3, 4), frames=(5, 7))
    seg = builder.hypothesis_segment(hyp, offset_frames=50, index=1, is_final=False)
    assert seg.begin == pytest.approx(2.0) and seg.start == pytest.approx(2.2)
    data = seg.to_json()
    assert data["start_time"] == 2.0 and data["timestamps"] == [2.2, 2.28]
    assert builder.hypothesis_segment(Hypothesis(tokens=()), 25).to_json()["start_time"] == 1.0


@pytest.mark.parametrize(
    ("dtype", "values", "expected"),
    [
        (np.int16, [0, 16384, -32768, 32767], [0.0, 0.5, -1.0, 32767 / 32768]),
        (np.int32, [0, 1 << 30, -(1 << 31)], [0.0, 0.5, -1.0]),
        (np.int8, [0, 64, -128], [0.0, 0.5, -1.0]),
        (np.uint8, [128, 192, 0], [0.0, 0.5, -1.0]),
        (np.float64, [0.25, -0.5], [0.25, -0.5]),
    ],
)
def test_integer_pcm_is_scaled_and_floats_kept(dtype, values, expected):
    wave = as_waveform(np.array(values, dtype=dtype), "<array 0>")
    assert wave.dtype == np.float32
    np.testing.assert_allclose(wave, expected, rtol=0, atol=1e-7)
    # torch tensors follow the same rule
    if dtype in (np.int16, np.int32, np.int8, np.uint8):
        torch_wave = as_waveform(torch.from_numpy(np.array(values, dtype=dtype)), "t")
        np.testing.assert_array_equal(torch_wave, wave)


def test_channels_are_averaged_and_bad_arrays_named():
    stereo = np.array([[0, 32767], [16384, 16384]], dtype=np.int16)
    np.testing.assert_allclose(as_waveform(stereo, "x"), [32767 / 65536, 0.5])
    for bad, reason in (
        (np.array([1, 0], dtype=bool), "type bool"),
        (np.array([1, 2], dtype=np.int64), "type int64"),
        (np.zeros((2, 2, 2), np.float32), "shape"),
        (np.zeros(0, np.float32), "empty"),
        (np.array([0.0, np.nan], np.float32), "NaN"),
    ):
        with pytest.raises(AudioError, match=f"<array 3>: .*{reason}"):
            as_waveform(bad, "<array 3>")
    assert as_waveform(np.zeros(0, np.float32), "s", allow_empty=True).shape == (0,)


def test_times_a_decoder_put_on_padding_are_clamped_to_where_the_last_frame_ends():
    """Tokens on frames past the input's audio (sherpa-onnx's flush pads the last chunk) gave
    times past its duration: a 3.0 s input's last word ended at 3.04 s. With ``last_frame_end``
    (the end of its last encoder frame) a token is at most at that frame's start and nothing
    ends after it; times within the audio are kept, and without it nothing is clamped."""
    builder = ResultBuilder(_Pieces(), 0.04)
    times = [2.8, 2.92, 2.96, 3.0]  # the last two on padded frames of an input of 74 frames
    seg = builder.segment([3, 4, 5, 6], times, start=1.0, last_frame_end=2.96)
    assert seg.timestamps == pytest.approx((2.8, 2.92, 2.92, 2.92))
    assert seg.words == (Word("HELLO", pytest.approx(2.8), pytest.approx(2.96)),
                         Word("WORLD", pytest.approx(2.92), pytest.approx(2.96)))
    assert (seg.begin, seg.start, seg.end) == (1.0, pytest.approx(2.8), pytest.approx(2.96))
    assert builder.segment([3, 4, 5, 6], times).end == pytest.approx(3.04)
    late = builder.segment([], [], start=3.2, last_frame_end=2.96)  # began on padding
    assert (late.begin, late.start, late.end) == (2.96, 2.96, 2.96)
    short = builder.segment([5, 6], [0.0, 0.0], last_frame_end=0.02)  # under one frame
    assert short.words == (Word("WORLD", 0.0, 0.02),) and short.end == 0.02


def test_a_segment_begun_on_padding_keeps_its_words_at_or_after_its_begin():
    """An endpoint that fires on the flush's padding (room tone is silence) begins the next
    segment past the input's last frame; a token the decoder then puts on a later padded frame
    was clamped to the last frame's start, before the clamped ``begin``: the segment's first word
    began before the segment (``start`` < ``begin``). Its words are now where it began."""
    builder = ResultBuilder(_Pieces(), 0.04)
    for start in (2.96, 3.2):  # began at the last frame's end, or on padding past it
        seg = builder.segment([5, 6], [3.24, 3.28], start=start, last_frame_end=2.96)
        assert seg.begin == 2.96 and seg.begin <= seg.start <= seg.end <= 2.96
        assert all(seg.begin <= t for t in seg.timestamps)
        assert seg.words == (Word("WORLD", 2.96, 2.96),)
