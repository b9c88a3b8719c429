"""StreamingRecognizer: many concurrent audio streams decoded chunk by chunk in batches.

Each :class:`Stream` owns an online fbank (:class:`asr.features.online.OnlineFbank`, the same
frames as the training features), the pending feature frames, an encoder state and a search
state (both batch-1 State dataclasses). :meth:`StreamingRecognizer.decode` takes all ready
streams, stacks their states with :func:`asr.state.stack_states`, runs ONE encoder chunk
(:meth:`asr.model.ASRModel.encode_chunk`, zero beyond each stream's new frames) and ONE searcher
``step`` for the batch, and splits the states back: streams at
different positions share the batch, and each gets exactly what it would get decoded alone.

A stream is *ready* when it holds the feature frames of its next full chunk
(``encoder.frames_needed``: ``4c + 3`` at the start, ``4c`` afterwards), or when its input has
ended and frames (or the final result) are left. Feeding exactly one chunk per step keeps
streaming equal to the offline forward under the same chunk mask.

Unlimited left context (``left_chunks`` -1, WeNet's ``num_decoding_left_chunks=-1``): each
stream's encoder state caches its earlier frames, so its memory and the cost of its chunks grow
with it, and an endpoint resets only the search (the encoder keeps its context across segments).
``max_left_seconds`` (default :data:`DEFAULT_MAX_LEFT_SECONDS`, the offline transcriber's window;
``math.inf``: no bound) bounds it: ``m = floor(max_left_seconds / (chunk_size * frame_seconds))``
chunks. A stream of at most ``m + 1`` chunks decodes exactly as with unlimited left context;
past them its left context slides (logged once per stream): each chunk sees the last ``m``
chunks, exactly the offline forward with ``left_chunks=m``, and the cache stays at ``m``
chunks. (WeNet's runtime instead drops the whole encoder cache at each endpoint, and
sherpa-onnx's streaming transducers keep fixed-size caches, as ``left_chunks`` >= 0 does here.)
Streams of different ages share a batch, their caches padded to the longest.

Endpointing (:mod:`asr.runtime.endpoint`): after ``decode``, a caller checks
:meth:`~StreamingRecognizer.is_endpoint`; on an endpoint it calls
:meth:`~StreamingRecognizer.reset`, which finalizes the segment's search, returns its final
result (an :class:`asr.results.Segment` with ``is_final`` True) and starts a new segment (a
fresh search state; the encoder keeps its context). At an endpoint,
:meth:`~StreamingRecognizer.result` already gives that final result (the search finalized once
for both: a rescoring searcher rescores a segment once). A stream that is done
has no endpoint, and ``reset`` refuses it (ValueError): its last segment is already final.

Example:
    >>> recognizer = asr.load_model("pkg").streaming_recognizer()
    >>> stream = recognizer.new_stream()
    >>> recognizer.accept_waveform(stream, samples, 16000)
    >>> recognizer.input_finished(stream)
    >>> while recognizer.is_ready(stream):
    ...     recognizer.decode([stream])
    >>> recognizer.result(stream).text

Shape legend: B streams in a batch, T feature frames, F mel bins, T' encoder frames.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from asr.audio import DecodedAudio, StreamingResampler, to_model_rate
from asr.constants import DEFAULT_MAX_LEFT_SECONDS
from asr.data.filtering import error_reason
from asr.decoding.context_graph import ContextGraph
from asr.decoding.registry import BIASING_STREAMING_SEARCHERS, resolve_searcher, searcher_biases
from asr.encoders.subsampling import frames_needed
from asr.features.online import OnlineFbank
from asr.results import FailedInput, Segment, TranscriptionError, TranscriptionResult
from asr.runtime.bundle import HotwordsSpec, Runtime
from asr.runtime.endpoint import EndpointConfig, detect_endpoint
from asr.state import stack_states, unstack_states
from asr.types import Hypothesis

__all__ = [
    "DEFAULT_MAX_LEFT_SECONDS",
    "Stream",
    "StreamingRecognizer",
    "check_chunking_options",
    "decode_isolated",
    "decoding_failure",
    "left_context_bound",
    "transcribe_streaming",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_EMPTY = Hypothesis(tokens=())


@dataclass(eq=False)
class Stream:
    """One audio stream (mutable handle; create with :meth:`StreamingRecognizer.new_stream`).

    Attributes:
        id: unique id within the process.
        fbank: online feature extractor.
        feats: (T, F) feature frames not yet fed to the encoder.
        encoder_state: batch-1 encoder state.
        search_state: batch-1 search state of the current segment.
        hypothesis: best hypothesis of the current segment (frames relative to the segment).
        segment: current segment index.
        segment_start_frame: encoder frame where the segment started.
        frames_decoded: encoder frames decoded since the stream started.
        input_done: :meth:`StreamingRecognizer.input_finished` was called.
        done: every frame is decoded and the last segment finalized.
        finished_segments: final results of the segments ended by :meth:`StreamingRecognizer.reset`.
        context: the stream's hotword graph (beam searchers that bias), or None.
        final_cache: the search state whose finalized hypothesis was last computed, and that
            hypothesis: :meth:`StreamingRecognizer.result` at an endpoint and the
            :meth:`~StreamingRecognizer.reset` after it finalize the search once (a rescoring
            searcher's second pass runs once per segment); dropped when the state changes.
    """

    id: int
    fbank: OnlineFbank
    feats: Tensor
    encoder_state: Any
    search_state: Any
    hypothesis: Hypothesis = _EMPTY
    segment: int = 0
    segment_start_frame: int = 0
    frames_decoded: int = 0
    input_done: bool = False
    done: bool = False
    finished_segments: list[Segment] = field(default_factory=list)
    resampler: StreamingResampler | None = None
    context: ContextGraph | None = None
    final_cache: tuple[Any, Hypothesis] | None = None

    @property
    def num_samples(self) -> int:
        """Samples (at the model rate) received so far."""
        return self.fbank.num_samples


@dataclass(frozen=True)
class _StreamStep:
    """What one decode step computed for one stream, before the stream takes it.

    Attributes:
        taken: feature frames the step consumed.
        encoder_state: the stream's batch-1 encoder state after the step.
        search_state: its batch-1 search state after the step.
        num_new: encoder frames the step produced.
        partial: its best hypothesis after the step.
    """

    taken: int
    encoder_state: Any
    search_state: Any
    num_new: int
    partial: Hypothesis


class StreamingRecognizer:
    """Batched chunk-by-chunk recognition over many streams.

    Args:
        runtime: the model bundle (:class:`asr.runtime.bundle.Runtime`); its encoder must stream
            (causal, ``chunk_size > 0``).
        searcher: streaming searcher name or ``greedy`` (default: the runtime's
            ``streaming_searcher``; ``ctc_greedy``, ``transducer_greedy``, ``tdt_greedy``).
        endpoint: endpoint rules.
        chunk_size: encoder frames per chunk (default: the encoder config's).
        left_chunks: chunks of left context (default: the encoder config's); -1 keeps every
            earlier frame, up to ``max_left_seconds`` (:mod:`asr.encoders.chunked`).
        max_left_seconds: with ``left_chunks`` -1, the most left context a chunk sees, in
            seconds (whole chunks, at least one); past it a stream's left context slides (see
            the module doc). None: :data:`DEFAULT_MAX_LEFT_SECONDS`; ``math.inf``: no bound (a
            stream's memory and the cost of its chunks grow with its length). Ignored with a
            bounded ``left_chunks``.

    Raises:
        ValueError: a chunking that does not stream or is not whole numbers of frames and
            chunks, or a ``max_left_seconds`` that is not a
            positive number of seconds, or (with ``left_chunks`` -1) is shorter than one chunk.
    """

    def __init__(
        self,
        runtime: Runtime,
        searcher: str | None = None,
        endpoint: EndpointConfig | None = None,
        chunk_size: int | None = None,
        left_chunks: int | None = None,
        max_left_seconds: float | None = None,
    ) -> None:
        self.runtime = runtime
        self.encoder = runtime.model.encoder
        self.endpoint = endpoint or EndpointConfig()
        self.chunk_size, self.left_chunks = runtime.chunking(chunk_size, left_chunks)
        self.searcher = runtime.build_streaming_searcher(searcher)
        self.searcher_name = resolve_searcher(
            searcher or runtime.streaming_searcher or runtime.searcher, runtime.model)
        self.biases = searcher_biases(self.searcher_name)
        self._ids = itertools.count()
        self.encoder.init_state(1, runtime.device, left_chunks=self.left_chunks,
                                chunk_size=self.chunk_size)  # fails early if not streamable
        self.max_left_seconds = _positive_seconds(
            DEFAULT_MAX_LEFT_SECONDS if max_left_seconds is None else max_left_seconds)
        #: The chunks a stream's growing cache keeps (None: bounded left_chunks, or no bound).
        self.max_left_chunks = (
            left_context_bound(self.max_left_seconds, self.chunk_size * self.frame_seconds)
            if self.left_chunks < 0 else None)

    @property
    def sample_rate(self) -> int:
        """Rate (Hz) the model's features expect."""
        return self.runtime.sample_rate

    @property
    def frame_seconds(self) -> float:
        """Duration of one encoder frame."""
        return self.runtime.frame_seconds

    # ------------------------------------------------------------------------- streams

    def new_stream(
        self, hotwords: HotwordsSpec = None, hotwords_score: float | None = None
    ) -> Stream:
        """A fresh stream at segment 0.

        Args:
            hotwords: phrases this stream is biased toward, added to the search options' own:
                a hotword file, inline phrases ``"ALPHA BETA;GAMMA :2.5"`` or a list of
                phrases (as :meth:`asr.runtime.offline.Transcriber.transcribe` takes them);
                only with a searcher that biases (``transducer_beam``, ``tdt_beam``,
                ``ctc_prefix_beam``).
            hotwords_score: the boost of a phrase without its own (default
                ``search.hotwords_score``).

        Raises:
            ValueError: for hotwords with a searcher that does not bias, and
                :class:`asr.decoding.context_graph.HotwordError` for phrases the tokenizer
                cannot spell, too many or too long ones, or a ``hotwords_score`` beyond
                :data:`~asr.constants.MAX_HOTWORD_SCORE` in magnitude (phrases or not).
        """
        context = getattr(self.searcher, "context", None)
        if hotwords is not None or hotwords_score is not None:
            context = self.hotword_graph(hotwords, hotwords_score)
        return Stream(
            id=next(self._ids),
            fbank=OnlineFbank(self.runtime.fbank, self.runtime.extractor),
            feats=torch.zeros(0, self.runtime.fbank.num_mel_bins),
            encoder_state=self.encoder.init_state(
                1, self.runtime.device, left_chunks=self.left_chunks, chunk_size=self.chunk_size,
                max_left_chunks=self.max_left_chunks,
            ),
            search_state=self._search_state(context),
            context=context,
        )

    def hotword_graph(
        self, hotwords: HotwordsSpec, hotwords_score: float | None = None
    ) -> ContextGraph | None:
        """The hotword graph of a stream (arguments as :meth:`new_stream`'s), without a stream:
        a server builds and checks it before it hands it to :meth:`set_hotword_graph`.

        Raises:
            ValueError, HotwordError: as :meth:`new_stream`.
        """
        if not self.biases:
            raise ValueError(
                f"searcher {self.searcher_name!r} does not take hotwords; these do: "
                f"{', '.join(BIASING_STREAMING_SEARCHERS)}"
            )
        return self.runtime.hotword_graph(hotwords or [], hotwords_score)

    def set_hotword_graph(self, stream: Stream, context: ContextGraph | None) -> None:
        """Gives a stream that has decoded nothing yet the hotword graph ``context``.

        Raises:
            ValueError: for a stream that has decoded frames, or a searcher that does not bias.
        """
        if not self.biases:
            raise ValueError(f"searcher {self.searcher_name!r} does not take hotwords")
        if stream.frames_decoded or stream.segment or stream.done:
            raise ValueError(f"stream {stream.id}: hotwords must come before its audio is decoded")
        stream.context = context
        stream.search_state = self._search_state(context)
        stream.final_cache = None

    def _search_state(self, context: ContextGraph | None) -> Any:
        """A batch-1 search state; a biasing searcher's carries the stream's hotword graph."""
        if self.biases:
            return self.searcher.init_state(1, self.runtime.device, contexts=[context])
        return self.searcher.init_state(1, self.runtime.device)

    def accept_waveform(
        self, stream: Stream, samples: np.ndarray | Tensor, sample_rate: int
    ) -> None:
        """Appends samples at ``sample_rate`` Hz (resampled if needed): (N,) or (N, C), float in
        [-1, 1] or integer PCM (:func:`asr.audio.as_waveform`).

        Raises:
            ValueError: after :meth:`input_finished`, for samples that are not audio
                (:class:`asr.audio.AudioError`), or when the rate changes within a stream.
        """
        if stream.input_done:
            raise ValueError(f"stream {stream.id}: accept_waveform after input_finished")
        wave, stream.resampler = to_model_rate(
            samples, sample_rate, self.sample_rate, stream.resampler, f"stream {stream.id}")
        self._append(stream, stream.fbank.accept_waveform(wave))

    def input_finished(self, stream: Stream) -> None:
        """No more audio for ``stream``: computes its last feature frames."""
        if stream.input_done:
            return
        if stream.resampler is not None:
            self._append(stream, stream.fbank.accept_waveform(stream.resampler.flush()))
        self._append(stream, stream.fbank.input_finished())
        stream.input_done = True

    def _append(self, stream: Stream, frames: Tensor) -> None:
        if frames.shape[0]:
            stream.feats = torch.cat([stream.feats, frames])

    def _frames_to_take(self, stream: Stream) -> int:
        needed = int(self.encoder.frames_needed(stream.encoder_state, self.chunk_size)[0])
        available = stream.feats.shape[0]
        if available >= needed:
            return needed
        return available if stream.input_done else 0

    def pending_seconds(self, stream: Stream) -> float:
        """Audio received and not yet decoded, in seconds (for the server's back-pressure)."""
        return stream.feats.shape[0] * self.runtime.fbank.frame_shift

    def is_ready(self, stream: Stream) -> bool:
        """Whether :meth:`decode` would make progress on ``stream``."""
        if stream.done:
            return False
        return stream.input_done or self._frames_to_take(stream) > 0

    # ------------------------------------------------------------------------- decoding

    @torch.no_grad()
    def decode(self, streams: Sequence[Stream]) -> None:
        """One batched encoder chunk + search step over the ready streams among ``streams``.

        Streams whose input has ended and whose frames are all decoded are finalized. All or
        nothing: every new state and final hypothesis is computed before any stream is changed,
        so when it raises no stream has changed, and a caller may decode each stream alone to
        find the one at fault (as the server does).

        Raises:
            ValueError: when a stream is given twice.
        """
        if len({id(s) for s in streams}) != len(streams):
            raise ValueError("decode: a stream is given twice; pass each stream once per call")
        ready = [s for s in streams if self.is_ready(s)]
        takes = [self._frames_to_take(s) for s in ready]
        batch = [(s, n) for s, n in zip(ready, takes) if n > 0]
        steps = dict(zip((id(s) for s, _ in batch), self._step(batch))) if batch else {}
        finals = {}
        for stream in ready:
            step = steps.get(id(stream))
            left = stream.feats.shape[0] - (step.taken if step is not None else 0)
            encoder_state = step.encoder_state if step is not None else stream.encoder_state
            # done with its last encoder frame: frames too few for another one end no segment
            if stream.input_done and left < self._frames_for_one_more(encoder_state):
                state = step.search_state if step is not None else stream.search_state
                finals[id(stream)] = self._finalized(stream, state)
        for stream in ready:  # nothing failed: every stream takes its step
            step = steps.get(id(stream))
            if step is not None:
                self._advance(stream, step)
            if id(stream) in finals:
                stream.hypothesis = finals[id(stream)]
                stream.feats = stream.feats[:0]
                stream.done = True
                stream.final_cache = None

    def _frames_for_one_more(self, encoder_state: Any) -> int:
        """New feature frames a stream of batch-1 ``encoder_state`` needs for one more encoder
        frame: its next full chunk's, less those of the chunk's other frames (7 at the start,
        then 4: the subsampling keeps the last frames of the previous chunk)."""
        full = int(self.encoder.frames_needed(encoder_state, self.chunk_size)[0])
        return full - (frames_needed(self.chunk_size) - frames_needed(1))

    def _step(self, batch: Sequence[tuple[Stream, int]]) -> list[_StreamStep]:
        """The step of each stream of ``batch`` (stream, frames it takes), in its order; the
        streams are not changed."""
        device = self.runtime.device
        feats = torch.nn.utils.rnn.pad_sequence(
            [s.feats[:n] for s, n in batch], batch_first=True
        ).to(device)
        feat_lens = torch.tensor([n for _, n in batch], device=device)
        enc_state = stack_states([s.encoder_state for s, _ in batch])
        enc, enc_lens, enc_state = self.runtime.model.encode_chunk(feats, feat_lens, enc_state)
        search_state = stack_states([s.search_state for s, _ in batch])
        if enc.shape[1] > 0:
            search_state = self.searcher.step(enc, enc_lens, search_state)
        partials = self.searcher.partial(search_state)
        # copies: a stream waits for audio between batches, and a view would keep the batch;
        # a lone stream's state is its own (copying it cost a copy of every cache per chunk)
        enc_states = self.encoder.unstack_state(enc_state)
        search_states = unstack_states(search_state, copy=len(batch) > 1)
        return [
            _StreamStep(taken, enc_states[i], search_states[i], int(num_new), partials[i])
            for i, ((_, taken), num_new) in enumerate(zip(batch, enc_lens.tolist()))
        ]

    def _advance(self, stream: Stream, step: _StreamStep) -> None:
        """Gives ``stream`` its computed ``step``."""
        stream.feats = stream.feats[step.taken:]
        stream.encoder_state = step.encoder_state
        stream.search_state = step.search_state
        stream.final_cache = None
        self._note_sliding(stream, step.num_new)
        stream.frames_decoded += step.num_new
        stream.hypothesis = step.partial

    def _note_sliding(self, stream: Stream, num_new: int) -> None:
        """Logs the step after which ``stream``'s growing cache first drops a frame."""
        if self.max_left_chunks is None:
            return
        limit = self.max_left_chunks * self.chunk_size
        if stream.frames_decoded <= limit < stream.frames_decoded + num_new:
            logger.info(
                "stream %d: past %.2f s its left context slides (left_chunks -1 bounded by "
                "max_left_seconds %g): each chunk sees the last %d chunks", stream.id,
                limit * self.frame_seconds, self.max_left_seconds, self.max_left_chunks)

    # ------------------------------------------------------------------------- results

    def is_endpoint(self, stream: Stream) -> bool:
        """Whether the current segment has reached an endpoint (see :class:`EndpointConfig`)."""
        if stream.done:
            return False
        hyp = stream.hypothesis
        last = int(hyp.frames[-1]) if hyp.tokens and hyp.frames else None
        if hyp.tokens and last is None:
            last = stream.frames_decoded - stream.segment_start_frame - 1
        return detect_endpoint(
            self.endpoint, stream.frames_decoded - stream.segment_start_frame, last,
            self.frame_seconds,
        )

    def result(self, stream: Stream) -> Segment:
        """The stream's current segment, times in seconds: its partial result, or once it has
        ended (the stream is done, or at an endpoint) its final one (``is_final``)."""
        final = stream.done or self.is_endpoint(stream)
        hyp = self._final_hypothesis(stream) if final else stream.hypothesis
        return self._segment(stream, hyp, final)

    def _final_hypothesis(self, stream: Stream) -> Hypothesis:
        """The current segment's hypothesis if it ends now: its search finalized (a partial
        result may leave frames undecided: TDT searches hold the last frames of a chunk until
        they know where the stream ends)."""
        if stream.done:
            return stream.hypothesis
        hyp = self._finalized(stream, stream.search_state)
        stream.final_cache = (stream.search_state, hyp)
        return hyp

    def _finalized(self, stream: Stream, state: Any) -> Hypothesis:
        """The batch-1 search ``state`` of ``stream`` finalized: the cached hypothesis when it
        is the state last finalized (:attr:`Stream.final_cache`), else computed (not cached)."""
        cached = stream.final_cache
        if cached is not None and cached[0] is state:
            return cached[1]
        return self.searcher.finalize(state)[0]

    def _segment(self, stream: Stream, hyp: Hypothesis, is_final: bool) -> Segment:
        return self.runtime.results.hypothesis_segment(
            hyp, stream.segment_start_frame, stream.segment, is_final,
            num_frames=stream.frames_decoded - stream.segment_start_frame)

    def reset(self, stream: Stream) -> Segment:
        """Ends the current segment and starts the next; returns the ended segment's final
        result (its search finalized), also kept in ``stream.finished_segments``.

        Raises:
            ValueError: for a stream that is done: its last segment is already final (it is
                :meth:`result`, not in ``finished_segments``), and no audio can follow.
        """
        if stream.done:
            raise ValueError(
                f"stream {stream.id}: reset after the stream is done (its last segment is "
                f"already final: result() gives it)"
            )
        final = self._segment(stream, self._final_hypothesis(stream), True)
        stream.finished_segments.append(final)
        stream.segment += 1
        stream.segment_start_frame = stream.frames_decoded
        stream.search_state = self._search_state(stream.context)
        stream.final_cache = None  # it holds the ended segment's state (its kept frames)
        stream.hypothesis = _EMPTY
        return final


def check_chunking_options(streaming: bool, max_left_seconds: float | None = None) -> None:
    """Refuses the bound of a stream's growing left context given for an offline decode
    (:meth:`Transcriber.transcribe <asr.runtime.offline.Transcriber.transcribe>` and
    ``asr transcribe``, which calls it before it loads the model), where it would be ignored.
    A chunk size and left chunks need no such check: offline they set the encoder's chunk mask
    (:meth:`asr.runtime.bundle.Runtime.with_chunking`).

    Raises:
        ValueError: ``max_left_seconds`` set without ``streaming``, naming it and its option.
    """
    if not streaming and max_left_seconds is not None:
        raise ValueError("max_left_seconds bounds the left context a stream keeps: pass "
                         "streaming=True (on the command line, --max-left-seconds: add "
                         "--streaming; offline, --left-chunks -1 sees every earlier frame)")


def left_context_bound(max_left_seconds: float, chunk_seconds: float) -> int | None:
    """The whole chunks of ``chunk_seconds`` that fit in ``max_left_seconds`` (None for
    ``math.inf``: no bound).

    Raises:
        ValueError: ``max_left_seconds`` not a positive number, or shorter than one chunk.
    """
    seconds = _positive_seconds(max_left_seconds)
    if math.isinf(seconds):
        return None
    # 4.64 / (4 * 0.04) is 28.999999999999996
    chunks = math.floor(seconds / chunk_seconds + 1e-9)
    if chunks < 1:
        raise ValueError(f"max_left_seconds (--max-left-seconds) {seconds:g} is shorter than "
                         f"one chunk ({chunk_seconds:g} s): give at least {chunk_seconds:g}")
    return chunks


def _positive_seconds(max_left_seconds: float) -> float:
    """``max_left_seconds`` as a float > 0 (``inf`` included); ValueError otherwise."""
    try:
        seconds = float(max_left_seconds)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(max_left_seconds, bool) or not seconds > 0:
        raise ValueError(f"max_left_seconds (--max-left-seconds) must be a positive number of "
                         f"seconds (inf: no bound), got {max_left_seconds!r}")
    return seconds


def decoding_failure(source: str, err: Exception, on_error: str, where: str = "") -> FailedInput:
    """The :class:`FailedInput` of input ``source``, whose decoding failed alone with ``err``
    (``where``: e.g. which window), its traceback logged at DEBUG; with ``on_error="raise"``, its
    :class:`TranscriptionError` raised instead (``err`` its cause). The message names the input,
    where and why."""
    message = f"{source}: decoding failed{where}: {error_reason(err)}"
    if on_error == "raise":
        raise TranscriptionError(source, message) from err
    logger.debug("%s", message, exc_info=(type(err), err, err.__traceback__))
    return FailedInput(source, message)


def transcribe_streaming(
    recognizer: StreamingRecognizer,
    audios: Sequence[DecodedAudio],
    batch_size: int = 8,
    progress: bool = False,
    feed_seconds: float = 1.0,
    context: ContextGraph | None = None,
    bar: tqdm | None = None,
    on_error: str = "raise",
) -> list[TranscriptionResult | FailedInput]:
    """Decodes whole waveforms as concurrent streams (at most ``batch_size`` at a time).

    Audio is fed ``feed_seconds`` at a time to streams that need frames; endpoints split the
    transcript into segments. The progress bar counts seconds of audio decoded, so one long
    input shows its progress too: ``bar``, a caller's (left open), or one of its own with
    ``progress``. ``context``: a hotword graph for every stream
    (:meth:`StreamingRecognizer.hotword_graph`), or None for the streams' default.

    One input's fault stays its own, as in the server: when a batched :meth:`decode
    <StreamingRecognizer.decode>` raises (it then changes no stream), each stream is decoded
    alone, so the healthy ones get exactly their own step, and a stream whose call fails alone
    (feeding, decoding, its result) fails its input: a :class:`FailedInput` in its place, or
    with ``on_error="raise"`` a :class:`TranscriptionError` naming it
    (:func:`decoding_failure`).

    Returns:
        One result (or ``FailedInput``) per input of ``audios``, in order.
    """
    rate = recognizer.sample_rate
    step = max(1, int(feed_seconds * rate))
    queue = list(range(len(audios)))
    active: dict[int, tuple[Stream, list[int]]] = {}
    results: list[TranscriptionResult | FailedInput | None] = [None] * len(audios)
    shown = [0.0] * len(audios)  # seconds of each input the bar has counted
    own_bar = bar is None
    if bar is None:
        bar = tqdm(total=round(sum(a.duration for a in audios), 2), unit="s", unit_scale=True,
                   desc="stream", disable=not progress, leave=False)

    def fail(index: int, err: Exception) -> None:
        results[index] = decoding_failure(audios[index].source, err, on_error)
        active.pop(index, None)

    def admit(index: int) -> None:
        stream = recognizer.new_stream()
        if context is not None:
            recognizer.set_hotword_graph(stream, context)
        active[index] = (stream, [0])

    def feed(stream: Stream, samples: np.ndarray, cursor: list[int]) -> None:
        while not stream.input_done and not recognizer._frames_to_take(stream):
            recognizer.accept_waveform(stream, samples[cursor[0]: cursor[0] + step], rate)
            cursor[0] += step
            if cursor[0] >= samples.shape[0]:
                recognizer.input_finished(stream)

    def advance(index: int, stream: Stream) -> None:
        audio = audios[index]
        if recognizer.is_endpoint(stream):
            recognizer.reset(stream)
        decoded = (audio.duration if stream.done
                   else min(audio.duration, stream.frames_decoded * recognizer.frame_seconds))
        if decoded > shown[index]:
            bar.update(decoded - shown[index])
            shown[index] = decoded
        if stream.done:
            segments = [*stream.finished_segments, recognizer.result(stream)]
            results[index] = recognizer.runtime.results.transcript(
                audio.source, audio.duration, segments
            )
            del active[index]

    try:
        while queue or active:
            while queue and len(active) < max(1, batch_size):
                index = queue.pop(0)
                try:
                    admit(index)
                except Exception as err:  # noqa: BLE001 - whatever the input's fault, its own
                    fail(index, err)
            for index, (stream, cursor) in list(active.items()):
                try:
                    feed(stream, audios[index].samples, cursor)
                except Exception as err:  # noqa: BLE001 - whatever the input's fault, its own
                    fail(index, err)
            for index, _ in decode_isolated(recognizer.decode, list(active),
                                            lambda i: active[i][0], fail):
                try:
                    advance(index, active[index][0])
                except Exception as err:  # noqa: BLE001 - whatever the input's fault, its own
                    fail(index, err)
    finally:
        if own_bar:
            bar.close()
    return [r for r in results if r is not None]


def decode_isolated(
    decode: Callable[[list[Any]], Sequence[R] | None],
    items: Sequence[T],
    stream_of: Callable[[T], Any],
    fail: Callable[[T, Exception], None],
    what: str = "streams",
    skip: Callable[[T], bool] = lambda item: False,
) -> list[tuple[T, R | None]]:
    """One batched decode, ``decode([stream_of(item) for item in items])``; each item decoded
    with its output (``decode``'s per item, or None when it returns None). When the batch raises
    (:meth:`StreamingRecognizer.decode` then changes no stream), each item is decoded alone,
    so that the healthy ones get exactly their own decode, and ``fail(item, err)`` is called for
    each one that fails alone (or raises, ending the call): one input's fault (a bad input, a
    search that fails on it) fails it alone. An item for which ``skip(item)`` holds when its
    turn comes is not decoded alone (e.g. a window of an input that another window failed).
    The one rule of ``transcribe_streaming``, the server and the offline windows (``what``: the
    items' name in the log line).
    """
    if not items:
        return []
    try:
        outputs = decode([stream_of(item) for item in items])
        return list(zip(items, [None] * len(items) if outputs is None else outputs))
    except Exception as err:  # noqa: BLE001 - found out below, one item at a time
        if len(items) == 1:
            fail(items[0], err)
            return []
        logger.warning("decoding a batch of %d %s failed (%s); decoding each alone",
                       len(items), what, error_reason(err))
    decoded = []
    for item in items:
        if skip(item):
            continue
        try:
            outputs = decode([stream_of(item)])
        except Exception as err:  # noqa: BLE001 - whatever the item's fault, its own
            fail(item, err)
        else:
            decoded.append((item, None if outputs is None else outputs[0]))
    return decoded
