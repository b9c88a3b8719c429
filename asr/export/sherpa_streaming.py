"""sherpa-onnx as a streaming engine: an exported streaming transducer (``asr export-onnx
--streaming``) behind the interface of :class:`asr.runtime.streaming.StreamingRecognizer`, so
that the server (:mod:`asr.serve`) runs it as it runs our PyTorch recognizer (``asr serve
--engine sherpa-onnx``).

:class:`SherpaStreamingRecognizer` keeps one ``sherpa_onnx.OnlineStream`` per
:class:`SherpaStream`; :meth:`~SherpaStreamingRecognizer.decode` runs ONE ``decode_streams`` call
over the ready streams (sherpa-onnx batches their encoder states). What differs from our runtime:

* audio is resampled to the model rate by :class:`asr.audio.StreamingResampler` before sherpa-onnx
  sees it (so the end-of-input padding of :mod:`asr.export.sherpa_decode` is counted in
  feature frames, and a stream cannot change its rate, as in our recognizer);
* at the end of input the stream is padded with :func:`asr.export.sherpa_decode.flush_samples`
  samples of its quietest 0.1 s stretch (:func:`~asr.export.sherpa_decode.room_tone`), since
  sherpa-onnx never decodes a partial last chunk; tokens it puts on the padded frames get the
  time of the input's last encoder frame (the one our runtime decodes last; in a segment that
  an endpoint on the padding began, the input's end, where it began), so no time is
  past the input's end (:class:`asr.results.ResultBuilder`'s ``last_frame_end``);
* sherpa-onnx's searches (``greedy_search``, at most one symbol per frame, by default, or
  ``modified_beam_search``: :func:`~asr.export.sherpa_decode.sherpa_search_options` maps our
  searcher names and ``search.*`` options onto them or refuses them) and sherpa-onnx's own
  endpointing with our :class:`asr.runtime.endpoint.EndpointConfig` rules (its three rules
  have our shapes), each duration given as :func:`sherpa_rule_seconds` so that a rule fires at
  the frame where ours does; after an endpoint sherpa-onnx keeps the predictor's context, we
  start blank;
* after an endpoint that ended a segment without tokens, sherpa-onnx's greedy search starts the
  next one from the blank context but keeps the predictor output it cached for the old one
  (its ``Reset`` copies a result without that output over the stream's, which keeps it). A
  ``decode_streams`` call uses the cached outputs only when every stream of the batch has one
  and recomputes all of them from the contexts otherwise, so what such a stream recognized
  depended on the streams it was batched with (a server's result differed from the same input
  decoded alone). :meth:`~SherpaStreamingRecognizer.decode` adds a fresh silent stream to the
  batch of such a stream's next chunk, which makes sherpa-onnx recompute them: the stream goes
  on from the blank context, batched or alone. That is one more row in one batch per such
  reset (at most one per rule 1's trailing silence or rule 3's length, the shorter, of a
  stream without tokens); ``modified_beam_search`` decodes such a stream alike alone and
  batched without it.

Example (the server, as ``asr serve --engine sherpa-onnx --model exp/onnx-streaming`` runs it):
    >>> recognizer = load_streaming_recognizer("exp/onnx-streaming", int8=True)
    >>> asyncio.run(RecognitionServer(recognizer, ServerConfig(port=6006)).serve_forever())
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asr.audio import StreamingResampler, to_model_rate
from asr.encoders.subsampling import SUBSAMPLING_FACTOR, subsampled_length
from asr.export.graphs import chunk_frames
from asr.export.sherpa_decode import (
    ROOM_TONE_SECONDS,
    SherpaRecognizer,
    flush_samples,
    load_recognizer,
    room_tone,
)
from asr.features.fbank import encoder_frame_seconds, num_frames
from asr.results import ResultBuilder, Segment
from asr.runtime.endpoint import ENDPOINT_TOLERANCE_SECONDS, EndpointConfig

__all__ = [
    "SHERPA_ENDPOINT_FRAME_SECONDS", "SherpaStream", "SherpaStreamingRecognizer", "TokenTable",
    "load_streaming_recognizer", "sherpa_rule_seconds",
]

#: The frame sherpa-onnx's endpointing counts a stream's length and trailing silence in: feature
#: frames of 10 ms (its ``frame_shift_in_seconds = 0.01``, the shift an export's features must
#: have), whose count it multiplies by 0.01 in float32 before comparing it with a rule's seconds.
SHERPA_ENDPOINT_FRAME_SECONDS = 0.01


def sherpa_rule_seconds(seconds: float) -> float:
    """A rule duration (seconds) as sherpa-onnx must be given it to fire where ours does.

    sherpa-onnx tests ``float32(frames) * float32(0.01) >= float32(seconds)``, and the float32
    product falls short of the real one: 80 frames give 0.79999995 < 0.8, so a rule of 0.8 s
    given as written (also 1.2, 1.6, 2.4 s: rule 1's and rule 2's defaults) would fire a chunk
    later than ours (:func:`asr.runtime.endpoint.detect_endpoint`, which meets the value within
    :data:`~asr.runtime.endpoint.ENDPOINT_TOLERANCE_SECONDS`). The value returned is
    sherpa-onnx's own product at the first frame count that meets ``seconds`` by our rule, so
    its test holds from exactly that count on.

    Args:
        seconds: a rule's ``min_trailing_silence`` or ``min_utterance_length`` (>= 0; inf is
            given back: a rule that never fires).
    """
    if not math.isfinite(seconds):
        return seconds
    frames = math.ceil((seconds - ENDPOINT_TOLERANCE_SECONDS) / SHERPA_ENDPOINT_FRAME_SECONDS)
    if frames <= 0:
        return 0.0
    return float(np.float32(frames) * np.float32(SHERPA_ENDPOINT_FRAME_SECONDS))


class TokenTable:
    """``tokens.txt`` as a :class:`asr.results.Detokenizer` (its pieces in id order)."""

    def __init__(self, pieces: Sequence[str]) -> None:
        self.pieces = list(pieces)

    def id_to_piece(self, token_id: int) -> str:
        return self.pieces[int(token_id)]


@dataclass(eq=False)
class SherpaStream:
    """One audio stream (mutable handle; create with
    :meth:`SherpaStreamingRecognizer.new_stream`).

    Attributes:
        id: unique id within the process.
        stream: the ``sherpa_onnx.OnlineStream``.
        num_samples: samples (at the model rate) given to sherpa-onnx, the flush excluded.
        chunks: chunks decoded.
        quiet: the quietest complete 0.1 s block seen so far (the end-of-input filler).
        block: samples of the block being collected.
        segment: current segment index.
        input_done: the input ended (the flush is in).
        done: every chunk is decoded.
        finished_segments: final results of the segments ended by ``reset``.
        resampler: the stream's rate -> the model rate (an identity when they are equal), from
            its first piece.
        stale_predictor: an endpoint ended a segment without tokens, and sherpa-onnx's greedy
            search still holds the predictor output of the context before it (see the module's
            notes); the next decode call makes it recompute it.
    """

    id: int
    stream: Any
    num_samples: int = 0
    chunks: int = 0
    quiet: np.ndarray | None = None
    block: list[np.ndarray] = field(default_factory=list)
    segment: int = 0
    input_done: bool = False
    done: bool = False
    finished_segments: list[Segment] = field(default_factory=list)
    resampler: StreamingResampler | None = None
    stale_predictor: bool = False


class SherpaStreamingRecognizer:
    """Batched chunk-by-chunk recognition in sherpa-onnx over many streams.

    Args:
        recognizer: a :class:`asr.export.sherpa_decode.SherpaRecognizer` of a streaming layout,
            whose ``sherpa_onnx.OnlineRecognizer`` was built with the endpoint rules wanted.
        tokens: the export's ``tokens.txt`` pieces in id order.
    """

    def __init__(self, recognizer: SherpaRecognizer, tokens: Sequence[str]) -> None:
        if not recognizer.streaming:
            raise ValueError(f"not a streaming export (layout {recognizer.layout})")
        self.sherpa = recognizer
        self.searcher_name = f"sherpa-onnx {recognizer.decoding_method}"
        self.online = recognizer.recognizer
        self.fbank = recognizer.fbank
        self.chunk_size = recognizer.chunk_size
        self.frame_seconds = encoder_frame_seconds(self.fbank, SUBSAMPLING_FACTOR)
        self.results = ResultBuilder(TokenTable(tokens), self.frame_seconds)
        self._block = round(ROOM_TONE_SECONDS * self.sample_rate)
        self._ids = itertools.count()

    @property
    def sample_rate(self) -> int:
        """Rate (Hz) the model's features expect."""
        return self.sherpa.sample_rate

    # ------------------------------------------------------------------------- streams

    def new_stream(self) -> SherpaStream:
        """A fresh stream at segment 0."""
        return SherpaStream(next(self._ids), self.online.create_stream())

    def accept_waveform(self, stream: SherpaStream, samples: Any, sample_rate: int) -> None:
        """Appends samples at ``sample_rate`` Hz, as
        :meth:`asr.runtime.streaming.StreamingRecognizer.accept_waveform` does.

        Raises:
            ValueError: after :meth:`input_finished`, for samples that are not audio, or when the
                rate changes within a stream.
        """
        if stream.input_done:
            raise ValueError(f"stream {stream.id}: accept_waveform after input_finished")
        wave, stream.resampler = to_model_rate(
            samples, sample_rate, self.sample_rate, stream.resampler, f"stream {stream.id}")
        self._feed(stream, wave)

    def _feed(self, stream: SherpaStream, wave: np.ndarray) -> None:
        if not wave.shape[0]:
            return
        stream.stream.accept_waveform(self.sample_rate, wave)
        stream.num_samples += wave.shape[0]
        stream.block.append(wave)
        have = sum(b.shape[0] for b in stream.block)
        if have >= self._block:  # keep the quietest complete block, drop the rest
            joined = np.concatenate(stream.block)
            whole = have // self._block * self._block
            for start in range(0, whole, self._block):
                block = joined[start: start + self._block]
                if stream.quiet is None or np.mean(block ** 2) < np.mean(stream.quiet ** 2):
                    stream.quiet = block.copy()
            stream.block = [joined[whole:]]

    def input_finished(self, stream: SherpaStream) -> None:
        """No more audio for ``stream``: appends the flush and tells sherpa-onnx."""
        if stream.input_done:
            return
        if stream.resampler is not None:
            self._feed(stream, stream.resampler.flush())
        count = flush_samples(stream.num_samples, self.chunk_size, self.fbank)
        source = stream.quiet if stream.quiet is not None else np.concatenate(
            stream.block or [np.zeros(0, np.float32)])
        if count:
            stream.stream.accept_waveform(self.sample_rate, room_tone(source, count, self._block))
        stream.stream.input_finished()
        stream.block = []
        stream.input_done = True

    def is_ready(self, stream: SherpaStream) -> bool:
        """Whether :meth:`decode` would make progress on ``stream``."""
        return not stream.done and (stream.input_done or self.online.is_ready(stream.stream))

    def pending_seconds(self, stream: SherpaStream) -> float:
        """Audio received and not yet decoded, in seconds (for the server's back-pressure)."""
        frames = num_frames(stream.num_samples, self.fbank)
        shift = 4 * self.chunk_size
        return max(0, frames - stream.chunks * shift) * self.fbank.frame_shift

    # ------------------------------------------------------------------------- decoding

    def decode(self, streams: Sequence[SherpaStream]) -> None:
        """One batched ``decode_streams`` call over the ready streams among ``streams``; a
        stream whose input has ended and that has no whole chunk left is done, at once after
        its last chunk, as in our runtime (so its last segment ends with the stream, not at an
        endpoint followed by an empty segment). When ``decode_streams`` raises, no stream's
        count of chunks changes (what sherpa-onnx's streams hold is theirs: a failed batch
        cannot be undone there).

        Raises:
            ValueError: when a stream is given twice.
        """
        if len({id(s) for s in streams}) != len(streams):
            raise ValueError("decode: a stream is given twice; pass each stream once per call")
        ready = [s for s in streams if not s.done and self.online.is_ready(s.stream)]
        if ready:
            batch = [s.stream for s in ready]
            if any(s.stale_predictor for s in ready):
                batch.append(self._fresh_silent_stream())
            self.online.decode_streams(batch)
            for stream in ready:
                stream.chunks += 1
                stream.stale_predictor = False
        for stream in streams:
            if stream.input_done and not stream.done:
                stream.done = not self.online.is_ready(stream.stream)

    def _fresh_silent_stream(self) -> Any:
        """A new ``sherpa_onnx.OnlineStream`` holding one chunk of silence, ready to decode: in
        a batch, a stream without a cached predictor output makes sherpa-onnx's greedy search
        compute every stream's from its context (the decoded silence is thrown away)."""
        window, _ = chunk_frames(self.chunk_size)
        silent = self.online.create_stream()
        silent.accept_waveform(self.sample_rate,
                               np.zeros((window + 1) * self.fbank.hop_samples, np.float32))
        silent.input_finished()
        if not self.online.is_ready(silent):
            raise RuntimeError(f"a silent stream of {window + 1} feature frames is not ready to "
                               f"decode a chunk of {window}: sherpa-onnx's IsReady changed")
        return silent

    # ------------------------------------------------------------------------- results

    def is_endpoint(self, stream: SherpaStream) -> bool:
        """Whether sherpa-onnx's endpoint rules fire for the current segment."""
        return not stream.done and bool(self.online.is_endpoint(stream.stream))

    def result(self, stream: SherpaStream) -> Segment:
        """The stream's current segment (``is_final`` once it has ended), times in seconds."""
        result = self.online.get_result_all(stream.stream)
        ids = self.sherpa.token_ids(result.tokens)
        start = float(result.start_time)
        times = [start + float(t) for t in result.timestamps]
        return self.results.segment(ids, times, start, stream.segment,
                                    stream.done or self.is_endpoint(stream),
                                    last_frame_end=self.last_frame_end(stream))

    def last_frame_end(self, stream: SherpaStream) -> float:
        """Where the last encoder frame of the stream's audio so far ends, in seconds (the
        frames our runtime decodes for it; the flush excluded)."""
        frames = subsampled_length(num_frames(stream.num_samples, self.fbank))
        return frames * self.frame_seconds

    def reset(self, stream: SherpaStream) -> Segment:
        """Ends the current segment and starts the next; returns the ended segment's final
        result, also kept in ``stream.finished_segments``.

        Raises:
            ValueError: for a stream that is done, as
                :meth:`asr.runtime.streaming.StreamingRecognizer.reset`.
        """
        if stream.done:
            raise ValueError(
                f"stream {stream.id}: reset after the stream is done (its last segment is "
                f"already final: result() gives it)"
            )
        final = dataclasses.replace(self.result(stream), is_final=True)
        stream.finished_segments.append(final)
        stream.segment += 1
        self.online.reset(stream.stream)
        if not final.token_ids and self.sherpa.decoding_method == "greedy_search":
            stream.stale_predictor = True
        return final


def load_streaming_recognizer(
    onnx_dir: str | Path, int8: bool = False, num_threads: int = 1,
    endpoint: EndpointConfig | None = None, search: Mapping[str, Any] | None = None,
) -> SherpaStreamingRecognizer:
    """The sherpa-onnx streaming recognizer of an ``asr export-onnx --streaming`` directory.

    Args:
        search: :func:`asr.export.sherpa_decode.load_recognizer`'s search arguments
            (``decoding_method``, ``blank_penalty``, ...; as
            :func:`asr.export.sherpa_decode.sherpa_search_options` makes them of our
            ``--searcher`` and ``--set``); by default sherpa-onnx's greedy search.

    Raises:
        FileNotFoundError: as :func:`asr.export.sherpa_decode.load_recognizer`.
        ValueError: for an offline export, endpoint rules sherpa-onnx cannot express (its
            rule 1 and 3 ignore whether something was said, its rule 2 requires it), or search
            options :func:`~asr.export.sherpa_decode.load_recognizer` refuses.
    """
    endpoint = endpoint or EndpointConfig()
    rules = endpoint.rule1, endpoint.rule2, endpoint.rule3
    if [r.must_contain_nonsilence for r in rules] != [False, True, False] or (
            rules[0].min_utterance_length or rules[1].min_utterance_length
            or rules[2].min_trailing_silence):
        raise ValueError("sherpa-onnx endpointing has fixed rule shapes: rule 1 trailing "
                         "silence, rule 2 trailing silence after speech, rule 3 length")
    options = {"enable_endpoint_detection": endpoint.enabled,
               "rule1_min_trailing_silence": sherpa_rule_seconds(rules[0].min_trailing_silence),
               "rule2_min_trailing_silence": sherpa_rule_seconds(rules[1].min_trailing_silence),
               "rule3_min_utterance_length": sherpa_rule_seconds(rules[2].min_utterance_length)}
    recognizer = load_recognizer(onnx_dir, int8=int8, num_threads=num_threads,
                                 online_options=options, **(search or {}))
    if not recognizer.streaming:
        raise ValueError(f"{onnx_dir}: an offline export ({recognizer.layout}); the server "
                         f"needs `asr export-onnx --streaming`")
    return SherpaStreamingRecognizer(recognizer, recognizer.pieces)
