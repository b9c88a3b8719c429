"""The Python API: ``asr.load_model(package_dir).transcribe(paths_or_arrays)``.

:class:`Transcriber` decodes with a :class:`asr.runtime.bundle.Runtime` (model, tokenizer,
features, searcher) and transcribes files (paths or binary file objects), encoded bytes or
waveforms into
:class:`asr.results.TranscriptionResult` values (text, tokens, token times in seconds, words with
start/end).

Offline decoding batches many inputs: every input is cut into windows, windows of similar length
are batched (sorted by length), encoded once and searched once per batch. Inputs are read and
decoded in groups of about :data:`GROUP_SECONDS` of audio, in order
(:meth:`Transcriber.transcribe_iter` gives each group's results before it reads the next), so
that many or long inputs do not all sit in memory at once.

The encoder runs under the package's chunk mask (``encoder.chunk_size`` / ``left_chunks``:
full context for a model trained without chunks), or with ``chunk_size`` / ``left_chunks``
(:meth:`Transcriber.with_chunking`, WeNet's ``decoding_chunk_size``) under that one, which then
also sets the windows' grid and context below.

Long inputs: windows of ``window_seconds`` overlapping by at least ``overlap_seconds``, whose
starts lie on the encoder's chunk grid (:attr:`Transcriber.window_grid`: a whole number of
encoder chunks of the offline chunk mask, ``chunk_size`` encoder frames of ``subsampling_factor``
feature frames each): window ``k`` starts at ``k * step``, the step being ``window_seconds -
overlap_seconds`` (the overlap raised for a chunked encoder, see below) rounded down to the
grid, except the last, which starts at the first grid
point from which it fits (so it ends with the input, at most one chunk shorter than a window, and
overlaps its neighbour by at least ``overlap_seconds``). On the grid a window's feature frames
are the whole input's and its chunks are the whole input's chunks (off the grid, every frame of a
later window differed).

Memory grows with the square of ``window_seconds``: the encoder's self-attention scores a
window's every frame against every other (per head, per window of a batch). Measured on the tiny
test conformer (48 dims, 2 layers, 4 heads; CPU, one window a batch), the peak over the loaded
model was 0.07 GB at 30 s, 0.23 GB at 60 s, 0.86 GB at 120 s and 2.26 GB at 200 s, about
0.06 GB times ``(window_seconds / 30) ** 2``; a model of more heads, or a batch of more
windows, needs more. No window length is refused or warned about: no one limit holds for
every model and machine.

**Merge rule**: each window keeps only the tokens whose time falls in its own span, from the
cut with the previous window to the cut with the next (token times are counted in whole encoder
frames from the input's start, so a token on a cut is kept by exactly one window), so no token
is counted twice; a word that straddles a cut keeps the tokens each side decided. Where the cut
lies depends on what an encoder frame sees (:class:`WindowContext`,
:attr:`Transcriber.window_context`):

* an encoder whose frames see the future (full context, or a centred convolution): the middle
  of the overlap, so every instant is decided by the window that sees it with the most context
  on both sides;
* a causal chunked encoder with limited left context (``left_chunks >= 0``): a frame reads
  ``num_layers x (left_chunks + the chunks a causal convolution's kernel reaches back)`` chunks
  before its own, and past its chunk only the few samples its last features read. So a later
  window's frames are those of one window over the whole input from ``left`` samples after its
  start on (those chunks, and the chunk whose first features see the window's edge), an earlier
  window's up to the end of its last chunk that ends ``right`` samples before the window does,
  and the cut is the middle of the stretch between the two, where both windows' frames are the
  one-window decode's. The overlap is raised (logged once) until that stretch exists: to about
  ``left`` (5.4 s for 4 layers of 4 chunks of 0.32 s), rounded to the grid. A greedy search's
  tokens are then those of one window as far as its state at a cut (a transducer's last tokens,
  decided by the later window's own earlier frames) has converged, which on the mini_tts model
  it did everywhere (426 of 426 words at windows of 8-30 s). A beam search's can still differ:
  its final ranking (``length_norm``) and the alternatives its beam keeps for seconds depend on
  where the window starts and ends. When the window cannot hold ``left`` and ``right`` and a chunk,
  the overlap is kept, the cut is the middle of it, and a log line (once) names the shortest window
  that would (unlimited left context, ``left_chunks < 0``, which no window but the whole input
  holds, cuts so too, without a word).

The rule needs token times: with a searcher that gives none (``aed_beam``), an input longer than
one window is an error, and an input of one window has no ``timestamps`` and words that span it
(:mod:`asr.results`).

**Failures are per input**: an input that cannot be read, or whose decoding raises, fails alone.
When a batch of windows raises (a searcher error on one utterance, a bad window of a long
input), each of its windows is decoded alone: the healthy ones get exactly their own decode, and
an input with a window that fails alone is a :class:`asr.results.FailedInput` naming it, the
window and the reason (its other windows are not decoded), or with ``on_error="raise"`` a
:class:`asr.results.TranscriptionError`. Streaming isolates each stream the same way
(:func:`asr.runtime.streaming.transcribe_streaming`).

Streaming (``streaming=True``) runs the inputs through
:class:`asr.runtime.streaming.StreamingRecognizer` (all inputs as concurrent streams, batched),
which needs no windows.

Example:
    >>> model = asr.load_model("pkg/conformer_ctc")
    >>> [result] = model.transcribe(["speech.flac"])
    >>> result.text, [(w.text, w.start, w.end) for w in result.words]
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from asr.audio import (
    STDIN_NAME,
    AudioError,
    DecodedAudio,
    ReadProgress,
    as_waveform,
    decode_audio,
    resample,
)
from asr.constants import DEFAULT_OVERLAP_SECONDS, DEFAULT_WINDOW_SECONDS
from asr.decoding import Searcher
from asr.decoding.registry import uses_given_hotwords
from asr.features.fbank import compute_fbank
from asr.package import load_package
from asr.results import FailedInput, TranscriptionResult
from asr.runtime.bundle import HotwordsSpec, Runtime, SearchOptions
from asr.runtime.endpoint import EndpointConfig
from asr.runtime.streaming import (
    StreamingRecognizer,
    check_chunking_options,
    decode_isolated,
    decoding_failure,
    transcribe_streaming,
)
from asr.types import Hypothesis

__all__ = [
    "GROUP_SECONDS", "AudioInput", "Transcriber", "Window", "WindowContext", "load_model",
    "plan_windows",
]

logger = logging.getLogger(__name__)

#: What :meth:`Transcriber.transcribe` takes: a path (``"-"`` = stdin), a binary file object
#: (``open(path, "rb")``, ``io.BytesIO``: read to its end), encoded bytes, or samples.
AudioInput = str | Path | BinaryIO | bytes | bytearray | memoryview | np.ndarray | Tensor

#: The input types that are one input (an array or bytes are iterable, yet one input; so is a
#: file object, which iterates over its lines: :func:`_is_file_object` tells those); any other
#: iterable given to :meth:`Transcriber.transcribe` holds many.
SINGLE_INPUT_TYPES = (str, Path, bytes, bytearray, memoryview, np.ndarray, Tensor)

#: Seconds of audio that :meth:`Transcriber.transcribe_iter` reads before it decodes them: the
#: inputs are read and decoded in groups of this much (at least one input each), so memory holds
#: one group's samples (30 min: 115 MB at 16 kHz) whatever the number of inputs, and each
#: group's results are given before the next group is read.
GROUP_SECONDS = 1800.0

#: Seconds that reading one input lasts before its progress bar shows (seconds read of its
#: length), so that a folder of short files draws no bar for each.
READ_BAR_DELAY = 1.0


@dataclass(frozen=True)
class Window:
    """One decoding window of an input (samples at the model rate).

    Attributes:
        index: which input.
        start, end: sample span decoded.
        keep_from, keep_to: seconds span whose tokens this window owns (merge rule).
    """

    index: int
    start: int
    end: int
    keep_from: float
    keep_to: float


@dataclass(frozen=True)
class WindowContext:
    """What the frames of a causal chunked encoder read outside their own chunk, in samples at
    the model rate (see the module doc; :attr:`Transcriber.window_context`).

    Attributes:
        left: samples from a window's start after which its frames are those of one window
            over the whole input: the chunks of left context its frames see through every layer,
            and the chunk whose first features see the window's edge (a whole number of
            chunks; ``math.inf`` for unlimited left context).
        right: samples past the end of a chunk that its frames read (the subsampling's and the
            fbank window's reach): an earlier window's frames are one window's up to the end of
            its last chunk that ends at least ``right`` samples before the window does.
    """

    left: float
    right: int

    def exact_step(self, length: int, grid: int) -> float:
        """The longest step between windows of ``length`` samples on a ``grid`` at which the
        later window's exact frames begin no later than the earlier window's end (may be < 1:
        none; ``-inf`` for unlimited left context)."""
        return (length - self.right) // grid * grid - self.left


def plan_windows(
    index: int,
    num_samples: int,
    sample_rate: int,
    window_seconds: float,
    overlap_seconds: float,
    grid: int = 1,
    context: WindowContext | None = None,
) -> list[Window]:
    """Overlapping windows covering ``num_samples`` samples and the span each one owns.

    Args:
        index: the input's index (kept in each window).
        num_samples: the input's length in samples.
        sample_rate: samples per second.
        window_seconds: the longest window.
        overlap_seconds: the least overlap of neighbouring windows.
        grid: samples between the possible window starts (the encoder's chunk in samples,
            :attr:`Transcriber.window_grid`): every start is a multiple of it, the step between
            windows is ``window_seconds - overlap_seconds`` rounded down to it, and the last
            window starts at the first multiple from which it ends with the input.
        context: for a causal chunked encoder, what its frames read outside their chunk
            (:attr:`Transcriber.window_context`): when the window holds it, the step is
            shortened so that neighbours share a stretch where both decide frames as one window
            over the whole input (:func:`window_step`), and each cut is its middle. None
            (frames that see the future), or a window too short to hold the context: the cut is
            the middle of the overlap.

    Raises:
        ValueError: unless ``0 <= overlap_seconds < window_seconds``, both finite, and, in
            samples, the window and its step (window minus overlap) are at least one sample and
            one ``grid``.
    """
    length, overlap = window_samples(sample_rate, window_seconds, overlap_seconds, grid)
    step = window_step(length, overlap, grid, context)
    if num_samples <= length:
        return [Window(index, 0, num_samples, -math.inf, math.inf)]
    # every window starts ``step`` after the previous one, but the last ends with the input:
    # a full window (up to less than one grid step), so that the end is decided with as much
    # left context as any other part; it starts at or before the regular step's start, so it
    # overlaps its neighbour by at least the overlap
    starts = [0]
    while starts[-1] + length < num_samples:
        starts.append(starts[-1] + step)
    starts[-1] = -(-(num_samples - length) // grid) * grid
    spans = [(s, min(s + length, num_samples)) for s in starts]
    cuts = [_cut(spans[k], spans[k + 1][0], grid, context) / sample_rate
            for k in range(len(spans) - 1)]
    bounds = [-math.inf, *cuts, math.inf]
    return [Window(index, s, e, bounds[k], bounds[k + 1]) for k, (s, e) in enumerate(spans)]


def check_window_seconds(window_seconds: float, overlap_seconds: float) -> None:
    """Checks the part of the long-input windows that needs no model (the CLI checks it before
    loading one); :func:`window_samples` checks the rest.

    Raises:
        ValueError: unless ``0 <= overlap_seconds < window_seconds``, both finite.
    """
    if not (0 <= overlap_seconds < window_seconds and math.isfinite(window_seconds)):
        raise ValueError(
            f"need 0 <= overlap ({overlap_seconds}) < window ({window_seconds}) seconds, "
            "both finite"
        )


def window_samples(
    sample_rate: int, window_seconds: float, overlap_seconds: float, grid: int = 1
) -> tuple[int, int]:
    """The window and the least overlap of :func:`plan_windows` in samples, ``(length,
    overlap)``, checked.

    Raises:
        ValueError: unless ``0 <= overlap_seconds < window_seconds``, both finite, and, in
            samples, the window and its step (window minus overlap) are at least one sample and
            one ``grid``.
    """
    check_window_seconds(window_seconds, overlap_seconds)
    if grid < 1:
        raise ValueError(f"plan_windows: grid must be >= 1 sample, got {grid}")
    length = int(round(window_seconds * sample_rate))
    overlap = int(round(overlap_seconds * sample_rate))
    step = length - overlap
    if step < grid:  # the windows would never advance, or not by a whole chunk
        chunk = " (one encoder chunk: windows start on the chunk grid)" if grid > 1 else ""
        raise ValueError(
            f"window ({window_seconds} s) and overlap ({overlap_seconds} s) at {sample_rate} Hz "
            f"leave a step of {step} samples between windows: need at least {grid}{chunk}"
        )
    return length, overlap


def window_step(length: int, overlap: int, grid: int, context: WindowContext | None) -> int:
    """The step (samples) between the starts of windows of ``length`` samples asked to overlap
    by at least ``overlap`` samples (``length - overlap`` at least one ``grid``): ``length -
    overlap`` rounded down to the grid, shortened to the context's exact step when that is
    shorter and still at least one grid (the overlap raised to what the windows need for their
    frames to be one window's)."""
    step = (length - overlap) // grid * grid
    exact = -math.inf if context is None else context.exact_step(length, grid)
    return int(min(step, exact)) if exact >= grid else step


def _cut(earlier: tuple[int, int], later: int, grid: int, context: WindowContext | None) -> float:
    """The sample at which the window spanning ``earlier`` hands over to the one starting at
    ``later`` (the merge rule of the module doc): the middle of the stretch where both decide
    frames as one window, else the middle of their overlap."""
    start, end = earlier
    if context is not None:
        last = start + (end - context.right - start) // grid * grid  # its last exact chunk's end
        first = later + context.left  # the later window's first exact sample
        if first <= last:
            return (first + last) / 2
    return (later + end) / 2


class Transcriber:
    """Offline transcription with a runtime bundle (what :func:`load_model` returns).

    Args:
        runtime: the model, tokenizer, features and default searcher.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._searchers: dict[str, Searcher] = {}
        self._logged_windows: set[tuple[float, float]] = set()
        #: The chunk mask the offline encoder is asked for (:meth:`with_chunking`); empty:
        #: the encoder's own (in eval mode its config's, which ``runtime.chunk_size`` holds).
        self._mask: dict[str, int] = {}

    @property
    def sample_rate(self) -> int:
        """Rate (Hz) the model's features expect."""
        return self.runtime.sample_rate

    @property
    def window_grid(self) -> int:
        """Samples between the starts that long-input windows may take: one chunk of the
        offline chunk mask (``chunk_size`` encoder frames, or one frame under full context),
        each frame ``subsampling_factor`` feature frames of ``hop_samples``."""
        return self.runtime.frame_samples * max(1, self.runtime.chunk_size)

    @property
    def window_context(self) -> WindowContext | None:
        """What an encoder frame reads outside its chunk, for the merge rule (see the module
        doc), or None for an encoder whose frames see the future: full context, or a
        convolution that is not causal (one that cannot stream)."""
        runtime = self.runtime
        encoder = runtime.model.encoder
        if runtime.chunk_size <= 0 or encoder.streaming_problem(encoder.cfg) is not None:
            return None
        # the last feature frame a chunk reads, itself a window of samples from its start
        right = encoder.feature_lookahead * runtime.fbank.hop_samples + runtime.fbank.window_samples
        # the chunks of context through every layer, and the chunk whose first features see
        # the window's edge
        chunks = encoder.context_chunks(runtime.chunk_size, runtime.left_chunks)
        return WindowContext((chunks + 1) * self.window_grid, right)

    def searcher(self, name: str | None = None, hotwords: HotwordsSpec = None) -> Searcher:
        """The offline searcher ``name`` (default: the runtime's; cached), biased toward
        ``hotwords`` when given (built for the call, not cached)."""
        name = name or self.runtime.searcher
        if hotwords is not None:
            return self.runtime.build_searcher(name, hotwords)
        if name not in self._searchers:
            self._searchers[name] = self.runtime.build_searcher(name)
        return self._searchers[name]

    def with_chunking(
        self, chunk_size: int | None = None, left_chunks: int | None = None
    ) -> Transcriber:
        """A transcriber whose offline encoder runs under this chunk mask (WeNet's
        ``decoding_chunk_size`` / ``num_decoding_left_chunks``; None: the package's own), on
        the same model and searchers (:meth:`asr.runtime.bundle.Runtime.with_chunking`). Its
        long-input windows start on that chunking's grid and cut by its left context.

        Raises:
            ValueError: a ``chunk_size`` that is not a whole number > 0, a ``left_chunks``
                that is not a whole number, or an encoder without a chunk mask.
        """
        chunked = Transcriber(self.runtime.with_chunking(chunk_size, left_chunks))
        chunked._searchers = self._searchers  # the same model: the searchers are shared
        chunked._logged_windows = self._logged_windows
        chunked._mask = {"chunk_size": chunked.runtime.chunk_size,
                         "left_chunks": chunked.runtime.left_chunks}
        return chunked

    def streaming_recognizer(
        self,
        searcher: str | None = None,
        endpoint: EndpointConfig | None = None,
        chunk_size: int | None = None,
        left_chunks: int | None = None,
        max_left_seconds: float | None = None,
    ) -> StreamingRecognizer:
        """A :class:`asr.runtime.streaming.StreamingRecognizer` on the same runtime."""
        return StreamingRecognizer(self.runtime, searcher, endpoint, chunk_size, left_chunks,
                                   max_left_seconds)

    # ------------------------------------------------------------------------- input

    def load(
        self, item: AudioInput, sample_rate: int | None = None, index: int = 0,
        progress: ReadProgress | None = None,
    ) -> DecodedAudio:
        """Decodes one input to mono at :attr:`sample_rate`.

        Arrays are (N,) or (N, C) samples at ``sample_rate`` (default: the model rate), float in
        [-1, 1] or integer PCM (:func:`asr.audio.as_waveform`). Messages and the result name an
        array ``<array INDEX>``, encoded bytes ``<bytes INDEX>``, a path itself (``-``:
        ``<stdin>``), a file object by its ``name`` (``open(path, "rb")``: the path) or else
        ``<file INDEX>``.

        Raises:
            AudioError: naming the input, when it cannot be read.
            ValueError: for a ``sample_rate`` that is not a positive whole number of Hz.
        """
        rate = _array_rate(sample_rate, self.sample_rate)
        name = _name_of(item, index)
        if isinstance(item, (np.ndarray, Tensor)):
            mono = as_waveform(item, name)
            if rate != self.sample_rate:
                mono = resample(mono, rate, self.sample_rate, name)
            return DecodedAudio(mono, self.sample_rate, name, 1, rate)
        if isinstance(item, (bytes, bytearray, memoryview)):
            return decode_audio(bytes(item), self.sample_rate, name, progress)
        if _is_file_object(item):
            return decode_audio(_read_binary(item, name), self.sample_rate, name, progress)
        if isinstance(item, (str, Path)):
            return decode_audio(item, self.sample_rate, progress=progress)
        raise AudioError(f"{name}: unsupported type {type(item).__name__}")

    # ------------------------------------------------------------------------- API

    def transcribe(
        self,
        inputs: AudioInput | Iterable[AudioInput],
        sample_rate: int | None = None,
        searcher: str | None = None,
        batch_size: int = 8,
        streaming: bool = False,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
        progress: bool = False,
        on_error: Literal["raise", "return"] = "raise",
        hotwords: HotwordsSpec = None,
        chunk_size: int | None = None,
        left_chunks: int | None = None,
        max_left_seconds: float | None = None,
        endpoint: EndpointConfig | None = None,
    ) -> list[TranscriptionResult | FailedInput]:
        """Transcribes files, encoded bytes or waveforms.

        Args:
            inputs: one input, or many in any iterable (a list, a generator: read as it is
                consumed): paths (``"-"`` = stdin), binary file objects (read to their end;
                one is one input, not its lines), encoded bytes, or (N,) / (N, C) arrays at
                ``sample_rate`` (float in [-1, 1], or integer PCM).
            sample_rate: rate of array inputs in Hz, a positive whole number (default: the
                model rate); files and bytes carry their own.
            searcher: searcher name (default: the runtime's).
            batch_size: windows (offline) or streams (streaming) decoded together.
            streaming: decode chunk by chunk with the streaming recognizer.
            window_seconds, overlap_seconds: long-input windows (offline), see the module doc.
            progress: show tqdm progress bars on stderr: the audio seconds transcribed, and
                while an input is read (decoded and resampled) for over
                :data:`READ_BAR_DELAY` seconds, the seconds of it read.
            on_error: ``raise`` the first :class:`AudioError` (an input that cannot be read)
                or :class:`asr.results.TranscriptionError` (one whose decoding fails), or
                ``return`` a :class:`asr.results.FailedInput` in that input's place (its error
                names it and the reason). Either way a failed decode is the input's own: a
                batch that raises is decoded input by input (see the module doc), so the other
                inputs' results are those they have alone.
            hotwords: phrases to bias recognition toward (contextual biasing, with the beam
                searchers ``transducer_beam``, ``tdt_beam`` and ``ctc_prefix_beam``): a hotword
                file (one phrase per line, optionally ending with `` :SCORE``, sherpa-onnx's
                format), inline phrases ``"ALPHA BETA;GAMMA"``, or a list of phrases; added to
                the search options' own (``search.hotwords_file``); boost
                ``search.hotwords_score``. Streaming too, with those searchers (every stream
                gets them). Another searcher ignores them with a warning, offline or
                streaming (:func:`asr.decoding.registry.uses_given_hotwords`).
            chunk_size, left_chunks: the chunking (encoder frames per chunk, > 0; chunks of
                left context, -1 every earlier frame); default the package's. Streaming, the
                chunks the streams are fed in; offline, the encoder's chunk mask (WeNet's
                ``decoding_chunk_size`` / ``num_decoding_left_chunks``, :meth:`with_chunking`),
                so that a greedy search gives the tokens and times of a stream at that chunking
                without endpoints. Offline, long-input windows start on that chunking's grid.
            max_left_seconds: with ``left_chunks`` -1, the most left context a chunk sees
                (default 30 s; ``math.inf``: no bound; see
                :class:`asr.runtime.streaming.StreamingRecognizer`). Only with ``streaming``
                (offline, ``left_chunks`` -1 sees every earlier frame of a window).
            endpoint: the endpoint rules that split a stream into segments, each searched
                afresh (default: sherpa-onnx's, :class:`asr.runtime.endpoint.EndpointConfig`,
                whose rule 3 ends a segment every 20 s); ``EndpointConfig(enabled=False)``:
                one segment per input, which every streaming searcher decodes as its offline
                search of the same chunk-masked encoder output. Only with ``streaming``.

        Raises:
            AudioError: (``on_error="raise"``) naming an input that cannot be read.
            asr.results.TranscriptionError: (``on_error="raise"``) naming an input whose
                decoding fails alone, and why (the decoder's exception is its cause).
            asr.decoding.context_graph.HotwordError: for phrases the tokenizer cannot spell (a
                ValueError), too many or too long ones; ValueError for a bad ``sample_rate``,
                ``batch_size``, window or chunking (:meth:`with_chunking`), and for an input
                longer than a window with a searcher that gives no token times (``aed_beam``),
                whose windows cannot be joined.

        Returns:
            One :class:`asr.results.TranscriptionResult` (or ``FailedInput``) per input, in order.
        """
        return list(self.transcribe_iter(
            inputs, sample_rate, searcher, batch_size, streaming, window_seconds,
            overlap_seconds, progress, on_error, hotwords, chunk_size, left_chunks,
            max_left_seconds, endpoint))

    def transcribe_iter(
        self,
        inputs: AudioInput | Iterable[AudioInput],
        sample_rate: int | None = None,
        searcher: str | None = None,
        batch_size: int = 8,
        streaming: bool = False,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
        progress: bool = False,
        on_error: Literal["raise", "return"] = "raise",
        hotwords: HotwordsSpec = None,
        chunk_size: int | None = None,
        left_chunks: int | None = None,
        max_left_seconds: float | None = None,
        endpoint: EndpointConfig | None = None,
    ) -> Iterator[TranscriptionResult | FailedInput]:
        """:meth:`transcribe`, its results given one at a time, in input order, as they are
        decoded: the inputs are read and decoded in groups of about :data:`GROUP_SECONDS` of
        audio, and a group's results are given before the next group is read (a caller can
        write each one as it comes; memory holds one group's audio). The arguments are checked
        before any input is read (the errors of :meth:`transcribe`); an input's
        :class:`AudioError` (``on_error="raise"``) comes when its group is read, its
        :class:`asr.results.TranscriptionError` when its group is decoded.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if on_error not in ("raise", "return"):
            raise ValueError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        _array_rate(sample_rate, self.sample_rate)  # a bad rate fails before any input
        check_chunking_options(streaming, max_left_seconds)
        if endpoint is not None and not streaming:
            raise ValueError("endpoint sets the endpointing of a stream: pass streaming=True "
                             "(on the command line, --no-endpoint: add --streaming)")
        offline = self
        if not streaming and (chunk_size is not None or left_chunks is not None):
            offline = self.with_chunking(chunk_size, left_chunks)  # bad values fail here
        if not streaming:  # a bad window fails before any input
            window_samples(self.sample_rate, window_seconds, overlap_seconds, offline.window_grid)
        recognizer = (self.streaming_recognizer(searcher, endpoint, chunk_size=chunk_size,
                                                left_chunks=left_chunks,
                                                max_left_seconds=max_left_seconds)
                      if streaming else None)
        context = None
        if recognizer is not None and hotwords is not None:  # bad phrases fail before any audio
            if uses_given_hotwords(recognizer.searcher_name):
                context = recognizer.hotword_graph(hotwords)
            else:  # checked all the same, as the offline searchers check them
                self.runtime.hotword_graph(hotwords)
        search = searcher
        if hotwords is not None and not streaming:
            search = self.searcher(searcher, hotwords)
        many = (isinstance(inputs, Iterable) and not _is_file_object(inputs)
                and not isinstance(inputs, (*SINGLE_INPUT_TYPES, Mapping)))
        items = inputs if many else [inputs]  # one input of another type: load() names it

        def results() -> Iterator[TranscriptionResult | FailedInput]:
            bar = tqdm(total=0, unit="s", unit_scale=True,
                       desc="stream" if streaming else "transcribe", disable=not progress,
                       leave=False)
            try:
                for group in self._read_groups(items, sample_rate, on_error, progress):
                    good = [a for a in group if isinstance(a, DecodedAudio)]
                    bar.total = round(bar.total + sum(a.duration for a in good), 2)
                    bar.refresh()
                    if streaming:
                        decoded = transcribe_streaming(recognizer, good, batch_size,
                                                       context=context, bar=bar,
                                                       on_error=on_error)
                    else:
                        decoded = offline._transcribe_offline(
                            good, search, batch_size, window_seconds, overlap_seconds, bar,
                            searcher, on_error)
                    if bar.n < bar.total:  # a failed input's undecoded seconds: done with too
                        bar.update(bar.total - bar.n)
                    done = iter(decoded)
                    for audio in group:
                        yield audio if isinstance(audio, FailedInput) else next(done)
            finally:
                bar.close()

        return results()

    def _read_groups(
        self, items: Iterable[AudioInput], sample_rate: int | None, on_error: str,
        progress: bool = False,
    ) -> Iterator[list[DecodedAudio | FailedInput]]:
        """The inputs read in order, in groups of at least :data:`GROUP_SECONDS` of audio (the
        last one shorter), an input that cannot be read a :class:`FailedInput` in its place
        (or its error raised, with ``on_error="raise"``). With ``progress``, an input whose
        reading (decoding and resampling: minutes for hours of audio) lasts over
        :data:`READ_BAR_DELAY` seconds shows a bar of its seconds read, until it is read."""
        group: list[DecodedAudio | FailedInput] = []
        seconds = 0.0
        for index, item in enumerate(items):
            bars: list[tqdm] = []  # made as the first block is read: none for an array

            def show(done: float, total: float | None, name: str = _name_of(item, index),
                     bars: list[tqdm] = bars) -> None:
                if not bars:
                    bars.append(tqdm(total=None, unit="s", unit_scale=True, desc=f"read {name}",
                                     leave=False, delay=READ_BAR_DELAY))
                if total is not None and bars[0].total != round(total, 2):
                    bars[0].total = round(total, 2)
                bars[0].update(round(done - bars[0].n, 2))

            try:
                try:
                    audio = self.load(item, sample_rate, index, show if progress else None)
                finally:
                    for bar in bars:
                        bar.close()
            except AudioError as err:
                if on_error == "raise":
                    raise
                logger.debug("skipping input %d: %s", index, err)
                group.append(FailedInput(_name_of(item, index), str(err)))
                continue
            group.append(audio)
            seconds += audio.duration
            if seconds >= GROUP_SECONDS:
                yield group
                group, seconds = [], 0.0
        if group:
            yield group

    # ------------------------------------------------------------------------- offline

    @torch.no_grad()
    def _transcribe_offline(
        self,
        audios: Sequence[DecodedAudio],
        searcher: str | Searcher | None,
        batch_size: int,
        window_seconds: float,
        overlap_seconds: float,
        bar: tqdm,
        searcher_name: str | None = None,
        on_error: str = "raise",
    ) -> list[TranscriptionResult | FailedInput]:
        """Decodes ``audios`` in windows (see the module doc), counting their seconds on
        ``bar``; an input that fails to decode alone is a :class:`FailedInput` in its place
        (:meth:`_decode_batch`), or its :class:`asr.results.TranscriptionError` is raised with
        ``on_error="raise"``."""
        rate, grid, context = self.sample_rate, self.window_grid, self.window_context
        frame = self.runtime.frame_samples
        results = self.runtime.results
        plans = [plan_windows(i, a.samples.shape[0], rate, window_seconds, overlap_seconds, grid,
                              context)
                 for i, a in enumerate(audios)]
        if any(len(plan) > 1 for plan in plans):
            self._log_window_rule(window_seconds, overlap_seconds)
        windows = [w for plan in plans for w in plan]
        windows.sort(key=lambda w: w.end - w.start, reverse=True)
        kept: list[list[tuple[int, float]]] = [[] for _ in audios]
        untimed: dict[int, tuple[int, ...]] = {}  # one-window inputs' tokens without times
        failed: dict[int, FailedInput] = {}  # input index -> why it failed
        search = searcher if callable(searcher) else self.searcher(searcher)
        searcher_name = searcher_name or self.runtime.searcher
        for begin in range(0, len(windows), batch_size):  # >= 1: transcribe checks it
            # a failed input's other windows are not decoded: it has no result to join them in
            batch = [w for w in windows[begin: begin + batch_size] if w.index not in failed]
            for window, hyp in self._decode_batch(audios, plans, batch, search, failed, on_error):
                # in whole frames (starts lie on the grid), so that every window gives a frame
                # the one-window decode's time: a token at a cut is kept by exactly one window
                offset = window.start // frame
                if hyp.tokens and not hyp.frames and len(plans[window.index]) > 1:
                    # every token would sit at its window's start, outside the span it owns
                    raise ValueError(
                        f"{audios[window.index].source}: {audios[window.index].duration:.1f} s "
                        f"needs {len(plans[window.index])} windows of {window_seconds} s, but "
                        f"searcher {searcher_name} gives no token times to join them by: pass "
                        f"window_seconds (--window-seconds) of at least its length, or use a "
                        f"searcher with token times (attention_rescoring keeps the CTC ones)"
                    )
                if hyp.tokens and not hyp.frames:  # its input's one window (checked above)
                    untimed[window.index] = hyp.tokens
                for token, time in zip(hyp.tokens, results.seconds(hyp.frames, offset)):
                    if window.keep_from <= time < window.keep_to:
                        kept[window.index].append((int(token), time))
                # the seconds this window owns: the windows' spans partition the input, so the
                # bar ends at the inputs' duration (window lengths would count overlaps twice)
                duration = audios[window.index].duration
                bar.update(min(window.keep_to, duration) - max(window.keep_from, 0.0))
        transcripts: list[TranscriptionResult | FailedInput] = []
        for index, (audio, tokens) in enumerate(zip(audios, kept)):
            if index in failed:
                transcripts.append(failed[index])
                continue
            if index in untimed:  # no token times: its words span the input (asr.results)
                segment = results.untimed_segment(untimed[index], 0.0, audio.duration)
            else:
                tokens.sort(key=lambda pair: pair[1])
                segment = results.segment([t for t, _ in tokens], [s for _, s in tokens])
            transcripts.append(results.transcript(audio.source, audio.duration, [segment]))
        return transcripts

    def _decode_batch(
        self,
        audios: Sequence[DecodedAudio],
        plans: Sequence[Sequence[Window]],
        batch: Sequence[Window],
        search: Searcher,
        failed: dict[int, FailedInput],
        on_error: str,
    ) -> list[tuple[Window, Hypothesis]]:
        """The best hypothesis of each window of ``batch``, decoded together; the pairs of the
        windows decoded.

        When the batch raises, each of its windows is decoded alone, so that one input's fault
        (a searcher error on one utterance, a bad window of a long input) fails that input
        alone, and the healthy windows get exactly their own decode. A window that fails alone
        fails its input: a :class:`FailedInput` naming it and the reason is put in ``failed``
        (its later windows are skipped), or, with ``on_error="raise"``, its
        :class:`TranscriptionError` is raised.
        """
        return decode_isolated(
            lambda waves: self._decode_windows(waves, search), batch,
            lambda window: audios[window.index].samples[window.start: window.end],
            lambda window, err: self._fail(audios, plans, window, err, failed, on_error),
            what="windows", skip=lambda window: window.index in failed,  # its input failed
        )

    def _fail(
        self,
        audios: Sequence[DecodedAudio],
        plans: Sequence[Sequence[Window]],
        window: Window,
        err: Exception,
        failed: dict[int, FailedInput],
        on_error: str,
    ) -> None:
        """``window`` failed to decode alone: its input fails, named with the reason (and the
        window's span, for an input of several windows; :func:`decoding_failure`)."""
        where = ""
        if len(plans[window.index]) > 1:
            where = (f" (its window {window.start / self.sample_rate:.2f}-"
                     f"{window.end / self.sample_rate:.2f} s)")
        failed[window.index] = decoding_failure(audios[window.index].source, err, on_error, where)

    def _log_window_rule(self, window_seconds: float, overlap_seconds: float) -> None:
        """Says once per window and overlap when a chunked encoder's windows overlap by more
        than asked, or are too short to decode as one window (see the module doc)."""
        context = self.window_context
        if (context is None or math.isinf(context.left)
                or (window_seconds, overlap_seconds) in self._logged_windows):
            return
        self._logged_windows.add((window_seconds, overlap_seconds))
        rate, grid = self.sample_rate, self.window_grid
        length, overlap = int(round(window_seconds * rate)), int(round(overlap_seconds * rate))
        step = window_step(length, overlap, grid, context)
        if context.exact_step(length, grid) < grid:
            logger.info(
                "offline windows of %g s cannot hold this encoder's left context (%.2f s): "
                "tokens near their cuts can differ from one window's; windows of at least %.2f s "
                "(--window-seconds) decode as one window", window_seconds, context.left / rate,
                (context.left + context.right + grid) / rate)
        elif step < window_step(length, overlap, grid, None):
            logger.info(
                "offline windows of %g s overlap by %.2f s, not %g s: this encoder's frames see "
                "%.2f s of left context, which a window needs before the tokens it keeps for "
                "them to be one window's", window_seconds, (length - step) / rate,
                overlap_seconds, context.left / rate)

    def _decode_windows(self, waves: Sequence[np.ndarray], search: Searcher) -> list[Hypothesis]:
        """The best hypothesis of each of ``waves`` (samples at the model rate), decoded as one
        batch."""
        runtime = self.runtime
        feats = [compute_fbank(w, self.sample_rate, runtime.fbank, runtime.extractor)
                 for w in waves]
        feat_lens = torch.tensor([f.shape[0] for f in feats], device=runtime.device)
        padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(runtime.device)
        enc, enc_lens = runtime.model.encode(padded, feat_lens, **self._mask)
        return [nbest[0] for nbest in search(enc, enc_lens)]


def _name_of(item: object, index: int) -> str:
    """The name of input ``index`` in results and messages (see :meth:`Transcriber.load`)."""
    if isinstance(item, (str, Path)):
        return STDIN_NAME if str(item) == "-" else str(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"<bytes {index}>"
    if isinstance(item, (np.ndarray, Tensor)):
        return f"<array {index}>"
    if _is_file_object(item):
        name = getattr(item, "name", None)  # open(path): the path; a file descriptor: an int
        return name if isinstance(name, str) and name else f"<file {index}>"
    return f"<input {index}>"


def _is_file_object(item: object) -> bool:
    """Whether ``item`` is a file object: an :class:`io.IOBase` or any object with a ``read``
    method (``tempfile.NamedTemporaryFile``'s wrapper, an upload object of a web framework),
    which iterate over their lines yet are one input."""
    return isinstance(item, io.IOBase) or callable(getattr(item, "read", None))


def _read_binary(stream: BinaryIO | io.IOBase, name: str) -> bytes:
    """The rest of a binary file object's bytes (an audio file's encoded bytes).

    Raises:
        AudioError: naming the input, for a text-mode file or one that cannot be read (closed,
            not readable).
    """
    if isinstance(stream, io.TextIOBase):
        raise AudioError(f"{name}: a file opened in text mode: open it in binary mode ('rb')")
    try:
        data = stream.read()
    except (OSError, ValueError) as err:  # closed: ValueError; write-only: io.UnsupportedOperation
        raise AudioError(f"{name}: cannot read the file object: {err}") from err
    if not isinstance(data, (bytes, bytearray)):
        raise AudioError(f"{name}: its read() gave {type(data).__name__}, not bytes")
    return bytes(data)


def _array_rate(sample_rate: float | None, model_rate: int) -> int:
    """The rate of array inputs: ``sample_rate`` (a positive whole number of Hz) or the model's.

    Raises:
        ValueError: naming ``sample_rate`` for zero, negative, fractional or non-numeric rates.
    """
    if sample_rate is None:
        return model_rate
    ok = (isinstance(sample_rate, (int, float, np.integer, np.floating))
          and not isinstance(sample_rate, bool) and math.isfinite(sample_rate)
          and sample_rate > 0 and float(sample_rate).is_integer())
    if not ok:
        raise ValueError(f"sample_rate must be a positive whole number of Hz (the rate of array "
                         f"inputs), got {sample_rate!r}")
    return int(sample_rate)


def load_model(
    directory: str | Path,
    device: torch.device | str = "cpu",
    searcher: str | None = None,
    search: SearchOptions | None = None,
) -> Transcriber:
    """Loads a model package (see :mod:`asr.package`) for transcription.

    Args:
        directory: package directory written by ``asr export-package``.
        device: ``cpu``, ``cuda``, ``auto`` (a GPU when there is one), ...
        searcher: default searcher: a name, or the role ``greedy`` / ``beam`` (default: the
            package's, which decodes as the recipe that exported it tuned it).
        search: search options, or changes to the package's own (which hold its LM), e.g.
            ``{"beam_size": 8}`` or ``["search.beam_size=8"]``.

    Raises:
        asr.package.PackageError: naming the missing / corrupt file.
        ValueError: for an unknown searcher, a bad search option or an unusable device.
    """
    return Transcriber(Runtime.from_package(load_package(directory), device, searcher, search))
