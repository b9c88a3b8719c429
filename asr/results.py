"""What recognition returns, offline and streaming: one family of result types and one builder.

* :class:`Word`: a word with start / end in seconds.
* :class:`Segment`: a stretch of an input with its text, token pieces, ids, token times and words.
  Offline decoding makes one segment per input; a streaming recognizer makes one per endpoint,
  and reports the current one (``is_final`` False) while it grows.
* :class:`TranscriptionResult`: the transcript of one whole input, the concatenation of its
  segments; :class:`FailedInput` stands in for an input that could not be read or decoded, and
  :class:`TranscriptionError` is raised for one (naming it) when failures are not returned.

Times: a searcher's :attr:`asr.types.Hypothesis.frames` are encoder frame indices; every time in
these results is in **seconds** from the start of the input (``timestamps`` is the per-token
list, as in sherpa-onnx). :class:`ResultBuilder` is the one place that turns token ids and frames
into these values.

A decoder that runs on padding past the input's audio (sherpa-onnx's streaming engine, whose
flush pads the last chunk: :mod:`asr.export.sherpa_streaming`) may put tokens on those frames,
which would put times past the input's duration. Given where the input's last encoder frame
ends (``last_frame_end``, never past its duration), :meth:`ResultBuilder.segment` clamps them:
a token's time is at most that frame's start (or where its segment began, for one begun on
the padding: an endpoint there); a word's end, the segment's and where it began are at most
``last_frame_end``. Our own runtime decodes no padding, so its times need no clamp.

A searcher without token times (``aed_beam``: its tokens are not tied to frames) gives no
``timestamps`` (empty, as sherpa-onnx's for a model without them), and each of its words spans
its whole segment (``start`` / ``end`` of the segment: all that is known of where it was said),
instead of times that were never decoded.

Shape legend: U tokens of a segment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from asr.tokenizers.base import piece_words
from asr.types import Hypothesis

__all__ = [
    "Detokenizer",
    "FailedInput",
    "ResultBuilder",
    "Segment",
    "TranscriptionError",
    "TranscriptionResult",
    "Word",
    "words_from_tokens",
]


class Detokenizer(Protocol):
    """What results need from a tokenizer (every :class:`asr.tokenizers.base.Tokenizer` is one):
    the pieces; words and text are read from them (:func:`asr.tokenizers.base.piece_words`)."""

    def id_to_piece(self, token_id: int) -> str: ...


@dataclass(frozen=True)
class Word:
    """One recognized word.

    Attributes:
        text: the word.
        start: start time in seconds (time of its first token; without token times, the
            start of its segment).
        end: end time in seconds (time of its last token plus one encoder frame; without token
            times, the end of its segment).
    """

    text: str
    start: float
    end: float

    def to_dict(self) -> dict[str, Any]:
        return {"word": self.text, "start": round(self.start, 3), "end": round(self.end, 3)}


@dataclass(frozen=True)
class Segment:
    """A stretch of an input: ended by an endpoint (streaming) or by the input's end.

    Attributes:
        text: text of the segment.
        start: time of its first word in seconds (where the segment began when it has none).
        end: end of its last word in seconds (``start`` when it has none).
        tokens: (U,) token pieces (e.g. ``▁HE``), blank excluded.
        token_ids: (U,) their ids.
        timestamps: (U,) time of each token in seconds from the start of the input; empty
            when the searcher gives no token times (the module doc).
        words: its words.
        index: 0, 1, ... in the order of the input's segments.
        is_final: the segment is over (streaming partial results are not).
        begin: where the segment began in seconds from the start of the input: the input's
            start, or the endpoint that ended the segment before it (``start`` is the time of
            its first word, at or after ``begin``).
    """

    text: str
    start: float
    end: float
    tokens: tuple[str, ...] = ()
    token_ids: tuple[int, ...] = ()
    timestamps: tuple[float, ...] = ()
    words: tuple[Word, ...] = ()
    index: int = 0
    is_final: bool = True
    begin: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The sherpa-onnx compatible streaming message ``{"text", "tokens", "timestamps",
        "segment", "start_time", "is_final"}`` (``start_time``: :attr:`begin`), plus this
        segment's ``"words"``. Times are seconds from the start of the input (sherpa-onnx
        counts ``timestamps`` from ``start_time``)."""
        return {
            "text": self.text,
            "tokens": list(self.tokens),
            "timestamps": [round(t, 3) for t in self.timestamps],
            "segment": self.index,
            "start_time": round(self.begin, 3),
            "is_final": self.is_final,
            "words": [w.to_dict() for w in self.words],
        }


@dataclass(frozen=True)
class TranscriptionResult:
    """The transcript of one input.

    Attributes:
        source: file name, ``<stdin>``, ``<array N>`` or ``<bytes N>`` (N: its place in the
            input list).
        text: the transcript (the segments' texts joined by spaces).
        tokens: token pieces (e.g. ``▁HE``), blank excluded.
        token_ids: their ids.
        timestamps: time of each token in seconds from the start of the input; empty when the
            searcher gives no token times (the module doc).
        words: words with start/end times.
        duration: input length in seconds.
        segments: the non-empty segments (one offline; one per endpoint when streaming).
    """

    source: str
    text: str
    tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    timestamps: tuple[float, ...]
    words: tuple[Word, ...]
    duration: float
    segments: tuple[Segment, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return {
            "source": self.source,
            "text": self.text,
            "duration": round(self.duration, 3),
            "tokens": list(self.tokens),
            "token_ids": list(self.token_ids),
            "timestamps": [round(t, 3) for t in self.timestamps],
            "words": [w.to_dict() for w in self.words],
            "segments": [{"text": s.text, "start": round(s.start, 3), "end": round(s.end, 3)}
                         for s in self.segments],
        }


@dataclass(frozen=True)
class FailedInput:
    """An input that could not be transcribed.

    Attributes:
        source: the input's name.
        error: what went wrong (names the input).
    """

    source: str
    error: str


class TranscriptionError(RuntimeError):
    """Decoding an input failed (its own fault, found by decoding it alone); the message names
    the input and what failed, and the decoder's exception is the cause.

    Attributes:
        source: the input's name.
    """

    def __init__(self, source: str, message: str) -> None:
        super().__init__(message)
        self.source = source


def words_from_tokens(
    pieces: Sequence[str], times: Sequence[float], frame_seconds: float
) -> list[Word]:
    """The words of token pieces (:func:`asr.tokenizers.base.piece_words`: ``▁`` separates
    words) with their times; their texts joined by spaces are the text of the pieces.

    Args:
        pieces: (U,) token pieces in order.
        times: (U,) time of each token in seconds.
        frame_seconds: duration of one encoder frame (a word ends one frame after its last token).
    """
    return [Word(text, times[first], times[last] + frame_seconds)
            for text, first, last in piece_words(pieces)]


class ResultBuilder:
    """Makes segments and transcripts from token ids and times (the one place that does).

    Args:
        tokenizer: ids -> text and pieces.
        frame_seconds: duration of one encoder frame (feature frame shift x the encoder's
            subsampling factor).
    """

    def __init__(self, tokenizer: Detokenizer, frame_seconds: float) -> None:
        if frame_seconds <= 0:
            raise ValueError(f"frame_seconds must be > 0, got {frame_seconds}")
        self.tokenizer = tokenizer
        self.frame_seconds = float(frame_seconds)

    def seconds(self, frames: Iterable[int], offset_frames: int = 0) -> list[float]:
        """Encoder frame indices (relative to ``offset_frames``) -> seconds."""
        return [(offset_frames + int(f)) * self.frame_seconds for f in frames]

    def segment(
        self,
        token_ids: Sequence[int],
        timestamps: Sequence[float],
        start: float = 0.0,
        index: int = 0,
        is_final: bool = True,
        last_frame_end: float | None = None,
    ) -> Segment:
        """A segment of ``token_ids`` whose tokens fall at ``timestamps`` (seconds).

        Args:
            token_ids: (U,) ids, blank excluded.
            timestamps: (U,) seconds from the start of the input.
            start: where the segment began, its start when it has no words.
            index: the segment's place in its input.
            is_final: whether the segment is over.
            last_frame_end: where the input's last encoder frame ends, in seconds; times a
                decoder put on padding past it are clamped (the module doc). None: no bound.
        """
        ids = tuple(int(t) for t in token_ids)
        if len(timestamps) != len(ids):
            raise ValueError(f"{len(ids)} tokens but {len(timestamps)} timestamps")
        pieces = tuple(self.tokenizer.id_to_piece(t) for t in ids)
        times = tuple(float(t) for t in timestamps)
        if last_frame_end is not None:
            start = min(start, last_frame_end)
            # a segment begun on padding (an endpoint there) has its tokens where it began
            latest = max(0.0, last_frame_end - self.frame_seconds, start)
            times = tuple(min(t, latest) for t in times)
        words = tuple(words_from_tokens(pieces, times, self.frame_seconds))
        if last_frame_end is not None:  # under one frame: a token at 0 would end past it
            words = tuple(Word(w.text, w.start, min(w.end, last_frame_end)) for w in words)
        return Segment(
            text=" ".join(w.text for w in words),  # = the tokenizer's decode(ids)
            start=words[0].start if words else start,
            end=words[-1].end if words else start,
            tokens=pieces, token_ids=ids, timestamps=times, words=words, index=index,
            is_final=is_final, begin=start,
        )  # fmt: skip

    def untimed_segment(
        self,
        token_ids: Sequence[int],
        start: float,
        end: float,
        index: int = 0,
        is_final: bool = True,
    ) -> Segment:
        """The segment, from ``start`` to ``end`` seconds, of tokens without times (a searcher
        that gives none): no ``timestamps``, and every word spans the segment.

        Args:
            token_ids: (U,) ids, blank excluded.
            start, end: where the segment begins and ends, in seconds from the input's start.
            index: the segment's place in its input.
            is_final: whether the segment is over.
        """
        if end < start:
            raise ValueError(f"a segment cannot end ({end} s) before it starts ({start} s)")
        ids = tuple(int(t) for t in token_ids)
        pieces = tuple(self.tokenizer.id_to_piece(t) for t in ids)
        words = tuple(Word(text, start, end) for text, _, _ in piece_words(pieces))
        return Segment(
            text=" ".join(w.text for w in words), start=start, end=end if words else start,
            tokens=pieces, token_ids=ids, timestamps=(), words=words, index=index,
            is_final=is_final, begin=start,
        )  # fmt: skip

    def hypothesis_segment(
        self,
        hyp: Hypothesis,
        offset_frames: int = 0,
        index: int = 0,
        is_final: bool = True,
        num_frames: int | None = None,
    ) -> Segment:
        """The segment of a searcher's hypothesis whose frames count from ``offset_frames``.

        A hypothesis without token frames (a searcher that gives none) is an
        :meth:`untimed_segment` over the segment's ``num_frames`` frames.

        Raises:
            ValueError: for tokens without frames and no ``num_frames`` (no time to give them).
        """
        start = offset_frames * self.frame_seconds
        if hyp.tokens and not hyp.frames:
            if num_frames is None:
                raise ValueError("a hypothesis without token frames needs the segment's "
                                 "num_frames for its times")
            end = (offset_frames + num_frames) * self.frame_seconds
            return self.untimed_segment(hyp.tokens, start, end, index, is_final)
        return self.segment(hyp.tokens, self.seconds(hyp.frames, offset_frames), start, index,
                            is_final)

    def transcript(
        self, source: str, duration: float, segments: Iterable[Segment]
    ) -> TranscriptionResult:
        """The result of a whole input: its non-empty segments, concatenated."""
        kept = tuple(s for s in segments if s.text)
        return TranscriptionResult(
            source=source,
            text=" ".join(s.text for s in kept),
            tokens=tuple(p for s in kept for p in s.tokens),
            token_ids=tuple(t for s in kept for t in s.token_ids),
            timestamps=tuple(t for s in kept for t in s.timestamps),
            words=tuple(w for s in kept for w in s.words),
            duration=duration,
            segments=kept,
        )
