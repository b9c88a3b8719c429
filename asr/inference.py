"""The Python API: ``asr.load_model(package_dir).transcribe(paths_or_arrays)``.

:class:`Transcriber` holds a packaged model, its tokenizer and searcher, and transcribes files,
encoded bytes or waveforms into typed :class:`TranscriptionResult` values (text, tokens, token
times in seconds, words with start/end).

Offline decoding batches many inputs: every input is cut into windows, windows of similar length
are batched (sorted by length), encoded once and searched once per batch.

Long inputs: windows of ``window_seconds`` overlapping by ``overlap_seconds``; window ``k``
starts at ``k * (window_seconds - overlap_seconds)`` (the last one may be shorter). **Merge rule**: the middle of each overlap
is the cut between neighbouring windows; each window keeps only the tokens whose time falls in
its own span (from the previous cut to the next cut), so every instant is decided by the window
that sees it with the most context on both sides, and no token is counted twice. A word that
straddles a cut keeps the tokens each side decided.

Streaming (``streaming=True``) runs the inputs through :class:`asr.streaming.recognizer.
StreamingRecognizer` (all inputs as concurrent streams, batched), which needs no windows.

Example:
    >>> model = asr.load_model("pkg/conformer_ctc")
    >>> [result] = model.transcribe(["speech.flac"])
    >>> result.text, [(w.text, w.start, w.end) for w in result.words]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from asr.audio import AudioError, DecodedAudio, decode_audio, resample, to_mono
from asr.tokenizers.base import WORD_START

if TYPE_CHECKING:  # pragma: no cover
    from asr.package import ModelPackage

__all__ = [
    "FailedInput",
    "Transcriber",
    "TranscriptionResult",
    "Word",
    "load_model",
    "plan_windows",
    "words_from_tokens",
]

logger = logging.getLogger(__name__)


AudioInput = str | Path | bytes | np.ndarray | Tensor


@dataclass(frozen=True)
class Word:
    """One recognized word.

    Attributes:
        text: the word.
        start: start time in seconds (time of its first token).
        end: end time in seconds (time of its last token plus one encoder frame).
    """

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Segment:
    """A stretch of an input ended by an endpoint (streaming) or by the input's end.

    Attributes:
        text: text of the segment.
        start: time of its first token (or of the segment start) in seconds.
        end: time of its end in seconds.
        words: its words.
    """

    text: str
    start: float
    end: float
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class TranscriptionResult:
    """The transcript of one input.

    Attributes:
        source: file name, ``<stdin>`` or ``<array N>``.
        text: the transcript.
        tokens: token pieces (e.g. ``▁HE``), blank excluded.
        token_ids: their ids.
        timestamps: time of each token in seconds from the start of the input.
        words: words with start/end times.
        duration: input length in seconds.
        segments: endpoint-delimited segments (streaming), or one segment (offline).
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
            "words": [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)}
                      for w in self.words],
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


def words_from_tokens(
    pieces: Sequence[str], times: Sequence[float], frame_seconds: float
) -> list[Word]:
    """Groups tokens into words: a piece starting with ``▁`` (or a bare ``▁``) starts a word.

    Args:
        pieces: token pieces in order.
        times: time of each token in seconds.
        frame_seconds: duration of one encoder frame (a word ends one frame after its last token).
    """
    words: list[Word] = []
    text, start, end, new_word = "", 0.0, 0.0, True
    for piece, time in zip(pieces, times):
        if piece.startswith(WORD_START):
            new_word = True
            piece = piece[len(WORD_START):]
            if not piece:
                continue
        if new_word and text:
            words.append(Word(text, start, end))
            text = ""
        if not text:
            start = time
        new_word = False
        text += piece
        end = time + frame_seconds
    if text:
        words.append(Word(text, start, end))
    return words


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


def plan_windows(
    index: int, num_samples: int, sample_rate: int, window_seconds: float, overlap_seconds: float
) -> list[Window]:
    """Overlapping windows covering ``num_samples`` samples and the span each one owns.

    Raises:
        ValueError: unless ``0 <= overlap_seconds < window_seconds``.
    """
    if not 0 <= overlap_seconds < window_seconds:
        raise ValueError(
            f"need 0 <= overlap ({overlap_seconds}) < window ({window_seconds}) seconds"
        )
    length = int(round(window_seconds * sample_rate))
    step = length - int(round(overlap_seconds * sample_rate))
    if num_samples <= length:
        return [Window(index, 0, num_samples, -math.inf, math.inf)]
    # every window starts ``step`` after the previous one; the last may be shorter.
    starts = [0]
    while starts[-1] + length < num_samples:
        starts.append(starts[-1] + step)
    spans = [(s, min(s + length, num_samples)) for s in starts]
    cuts = [(spans[k + 1][0] + spans[k][1]) / 2 / sample_rate for k in range(len(spans) - 1)]
    bounds = [-math.inf, *cuts, math.inf]
    return [Window(index, s, e, bounds[k], bounds[k + 1]) for k, (s, e) in enumerate(spans)]


class Transcriber:
    """A packaged model ready to transcribe (what :func:`load_model` returns).

    Args:
        package: a loaded :class:`asr.package.ModelPackage`.
        device: where the model runs.
        searcher: searcher name (default: the package's ``metadata.searcher``).
        search: :class:`asr.decoding.SearchConfig` options.
    """

    def __init__(
        self,
        package: ModelPackage,
        device: torch.device | str = "cpu",
        searcher: str | None = None,
        search: Any = None,
    ) -> None:
        from asr.decoding import SearchConfig
        from asr.features.fbank import make_lhotse_fbank

        self.package = package
        self.device = torch.device(device)
        self.model = package.build_model(self.device)
        self.tokenizer = package.tokenizer
        self.fbank_config = package.config.data.fbank
        self.searcher_name = searcher or package.metadata.searcher
        self.search_config = search or SearchConfig()
        self._extractor = make_lhotse_fbank(self.fbank_config)
        self._searchers: dict[str, Any] = {}

    @property
    def sample_rate(self) -> int:
        """Rate (Hz) the model's features expect."""
        return self.fbank_config.sample_rate

    @property
    def frame_seconds(self) -> float:
        """Duration of one encoder frame (4x subsampled features)."""
        from asr.decoding import frames_to_seconds

        return float(frames_to_seconds(1, self.fbank_config.frame_shift))

    def searcher(self, name: str | None = None) -> Any:
        """The offline searcher ``name`` (cached)."""
        from asr.decoding import build_searcher

        name = name or self.searcher_name
        if name not in self._searchers:
            self._searchers[name] = build_searcher(
                name, self.model, self.search_config, tokenizer=self.tokenizer
            )
        return self._searchers[name]

    def streaming_recognizer(self, searcher: str | None = None, **kwargs: Any) -> Any:
        """A :class:`asr.streaming.recognizer.StreamingRecognizer` on this model."""
        from asr.streaming.recognizer import StreamingRecognizer

        return StreamingRecognizer(self, searcher=searcher or self.searcher_name, **kwargs)

    # ------------------------------------------------------------------------- input

    def load(self, item: AudioInput, sample_rate: int | None = None, index: int = 0) -> DecodedAudio:
        """Decodes one input to mono at :attr:`sample_rate`.

        Arrays are (N,) or (N, C) float samples at ``sample_rate`` (default: the model rate).
        """
        if isinstance(item, (np.ndarray, Tensor)):
            samples = item.detach().cpu().numpy() if isinstance(item, Tensor) else item
            rate = int(sample_rate or self.sample_rate)
            mono = to_mono(np.asarray(samples, dtype=np.float32))
            name = f"<array {index}>"
            if mono.size == 0:
                raise AudioError(f"{name}: empty waveform")
            if not np.isfinite(mono).all():
                raise AudioError(f"{name}: NaN or infinite samples")
            if rate != self.sample_rate:
                mono = resample(mono, rate, self.sample_rate)
            return DecodedAudio(mono, self.sample_rate, name, 1, rate)
        if isinstance(item, (str, Path, bytes, bytearray)):
            return decode_audio(item, self.sample_rate)
        raise AudioError(f"input {index}: unsupported type {type(item).__name__}")

    # ------------------------------------------------------------------------- API

    def transcribe(
        self,
        inputs: AudioInput | Sequence[AudioInput],
        sample_rate: int | None = None,
        searcher: str | None = None,
        batch_size: int = 8,
        streaming: bool = False,
        window_seconds: float = 30.0,
        overlap_seconds: float = 2.0,
        progress: bool = False,
        on_error: Literal["raise", "return"] = "raise",
    ) -> list[Any]:
        """Transcribes files, encoded bytes or waveforms.

        Args:
            inputs: one input or a list: paths (``"-"`` = stdin), encoded bytes, or (N,) /
                (N, C) float arrays at ``sample_rate``.
            sample_rate: rate of array inputs (default: the model rate); files carry their own.
            searcher: searcher name (default: the package's).
            batch_size: windows (offline) or streams (streaming) decoded together.
            streaming: decode chunk by chunk with the streaming recognizer.
            window_seconds, overlap_seconds: long-input windows (offline), see the module doc.
            progress: show a tqdm progress bar.
            on_error: ``raise`` the first :class:`AudioError`, or ``return`` a
                :class:`FailedInput` in that input's place.

        Returns:
            One :class:`TranscriptionResult` (or :class:`FailedInput`) per input, in order.
        """
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        audios: list[DecodedAudio | FailedInput] = []
        for index, item in enumerate(items):
            try:
                audios.append(self.load(item, sample_rate, index))
            except AudioError as err:
                if on_error == "raise":
                    raise
                logger.debug("skipping input %d: %s", index, err)
                audios.append(FailedInput(_name_of(item, index), str(err)))
        good = [a for a in audios if isinstance(a, DecodedAudio)]
        if streaming:
            from asr.streaming.recognizer import transcribe_streaming

            decoded = transcribe_streaming(
                self.streaming_recognizer(searcher), good, batch_size, progress
            )
        else:
            decoded = self._transcribe_offline(
                good, searcher, batch_size, window_seconds, overlap_seconds, progress
            )
        results = iter(decoded)
        return [a if isinstance(a, FailedInput) else next(results) for a in audios]

    # ------------------------------------------------------------------------- offline

    @torch.no_grad()
    def _transcribe_offline(
        self,
        audios: Sequence[DecodedAudio],
        searcher: str | None,
        batch_size: int,
        window_seconds: float,
        overlap_seconds: float,
        progress: bool,
    ) -> list[TranscriptionResult]:
        from tqdm import tqdm

        rate = self.sample_rate
        windows = [
            w for i, a in enumerate(audios)
            for w in plan_windows(i, a.samples.shape[0], rate, window_seconds, overlap_seconds)
        ]
        windows.sort(key=lambda w: w.end - w.start, reverse=True)
        kept: list[list[tuple[int, float]]] = [[] for _ in audios]
        search = self.searcher(searcher)
        bar = tqdm(total=sum(a.duration for a in audios), unit="s", unit_scale=True,
                   desc="transcribe", disable=not progress, leave=False)
        for begin in range(0, len(windows), max(1, batch_size)):
            batch = windows[begin: begin + max(1, batch_size)]
            hyps = self._decode_windows([audios[w.index].samples[w.start: w.end] for w in batch],
                                        search)
            for window, hyp in zip(batch, hyps):
                offset = window.start / rate
                for token, frame in zip(hyp.tokens, hyp.timestamps or [0] * len(hyp.tokens)):
                    time = offset + frame * self.frame_seconds
                    if window.keep_from <= time < window.keep_to:
                        kept[window.index].append((int(token), time))
                bar.update((window.end - window.start) / rate)
        bar.close()
        results = []
        for audio, tokens in zip(audios, kept):
            tokens.sort(key=lambda pair: pair[1])
            results.append(self.make_result(
                audio.source, [t for t, _ in tokens], [s for _, s in tokens], audio.duration
            ))
        return results

    def _decode_windows(self, waves: Sequence[np.ndarray], search: Any) -> list[Any]:
        from asr.features.fbank import compute_fbank

        feats = [compute_fbank(w, self.sample_rate, self.fbank_config, self._extractor)
                 for w in waves]
        feat_lens = torch.tensor([f.shape[0] for f in feats], device=self.device)
        padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(self.device)
        enc, enc_lens = self.model.encode(padded, feat_lens)
        return [nbest[0] for nbest in search(enc, enc_lens)]

    def make_result(
        self,
        source: str,
        token_ids: Sequence[int],
        times: Sequence[float],
        duration: float,
        segments: Iterable[Segment] | None = None,
    ) -> TranscriptionResult:
        """Builds a result (text, pieces, words) from token ids and their times in seconds."""
        ids = [int(t) for t in token_ids]
        pieces = [self.tokenizer.id_to_piece(t) for t in ids]
        words = words_from_tokens(pieces, times, self.frame_seconds)
        text = self.tokenizer.decode(ids)
        if segments is None:
            end = words[-1].end if words else duration
            segments = [Segment(text, words[0].start if words else 0.0, end, tuple(words))] \
                if text else []
        return TranscriptionResult(
            source=source, text=text, tokens=tuple(pieces), token_ids=tuple(ids),
            timestamps=tuple(float(t) for t in times), words=tuple(words), duration=duration,
            segments=tuple(segments),
        )


def _name_of(item: Any, index: int) -> str:
    if isinstance(item, (str, Path)):
        return "<stdin>" if str(item) == "-" else str(item)
    if isinstance(item, (bytes, bytearray)):
        return "<stdin>"
    return f"<input {index}>"


def load_model(
    directory: str | Path,
    device: torch.device | str = "cpu",
    searcher: str | None = None,
    search: Any = None,
) -> Transcriber:
    """Loads a model package (see :mod:`asr.package`) for transcription.

    Args:
        directory: package directory written by ``asr export-package``.
        device: ``cpu``, ``cuda``, ...
        searcher: default searcher name (default: the package's).
        search: :class:`asr.decoding.SearchConfig`.

    Raises:
        asr.package.PackageError: naming the missing / corrupt file.
    """
    from asr.package import load_package

    return Transcriber(load_package(directory), device=device, searcher=searcher, search=search)
