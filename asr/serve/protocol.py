"""The websocket protocol (sherpa-onnx streaming server compatible), without any networking.

Client to server:

* **binary** messages: mono float32 little-endian PCM in [-1, 1], any number of samples per
  message (a multiple of 4 bytes; NaN and infinite values are rejected, 1007, and so are
  samples beyond :data:`asr.audio.MAX_SAMPLE_MAGNITUDE`, 1008: not audio);
* the **text** ``Done``: no more audio; the server decodes what is left, sends the final result
  and closes the connection with code 1000;
* optionally, **before the first audio**, a text JSON object of stream settings, each key
  optional::

      {"sample_rate": 8000, "hotwords": ["JOHN SMITH", "ACME :3.0"], "hotwords_score": 2.0}

  ``sample_rate`` announces the rate of the audio (default 16000 Hz; the query parameter
  ``ws://host:port/?sample_rate=8000`` does the same; the server resamples to the model rate).
  The rate's ratio to the model rate, reduced, must have terms of at most
  :data:`MAX_RATE_RATIO_TERM` (every common rate does: 44100 : 16000 is 441 : 160), since the
  resampling filter grows with their product (:func:`check_rate_ratio`).
  ``hotwords`` biases this stream toward phrases (contextual biasing,
  :mod:`asr.decoding.context_graph`): a list of phrases or one string of phrases separated by
  ``;`` (``"JOHN SMITH;ACME"``), each optionally ending with `` :SCORE``, its per-token boost
  (sherpa-onnx's hotword format), added to the server's own list; ``hotwords_score`` is the
  boost of a phrase without its own (default: the server's ``search.hotwords_score``); a boost
  is at most 100 in magnitude.
  Hotwords may be given once per connection and need a server whose searcher biases
  (``asr serve`` with its PyTorch engine and ``--searcher transducer_beam``, ``tdt_beam`` or
  ``ctc_prefix_beam``; ``--engine sherpa-onnx`` takes no client's hotwords: it biases, with
  ``--searcher beam``, only toward the server's own ``search.hotwords_file``); the number
  of phrases, the characters of a phrase and the bytes of the whole list are limited
  (:class:`asr.serve.config.ServerConfig`), and every character must be one the model's
  tokenizer spells. Anything else is answered with an error and the connection closed (1007
  for malformed or unspellable hotwords, 1008 for limits and for a server that cannot bias).

Server to client, text JSON after decode steps::

    {"text": "HELLO WORLD", "tokens": ["H", ...], "timestamps": [2.04, ...],
     "segment": 1, "start_time": 1.96, "is_final": false, "is_eof": false,
     "words": [{"word": "HELLO", "start": 2.04, "end": 2.4}, ...], "audio_end": 3.28}

``segment`` counts endpointed segments (0, 1, ...); ``start_time`` is where the segment began
(0 for the first, then the endpoint that ended the one before), in seconds from the start of
the stream; ``is_final`` is true for the last message of a segment; ``is_eof`` is true for the
last message of the stream (after ``Done``, all its audio decoded; ``is_final`` too); the
server then closes the connection with code 1000. These are the fields of sherpa-onnx's
websocket server, which its clients read, with these differences:

* ``timestamps`` count from the start of the stream, as ``start_time`` does (sherpa-onnx counts
  them from ``start_time``);
* ``words`` holds the segment's words with their times (sherpa-onnx: word ids);
* ``tokens`` are the model's pieces as written, the word boundary ``▁`` included (sherpa-onnx
  writes it as a space);
* ``segment`` counts every endpoint, so a stretch of silence that an endpoint rule ends is a
  segment of its own, with an empty ``text`` (sherpa-onnx numbers only segments with tokens:
  after silence its next message has the same ``segment`` again);
* after the last message sherpa-onnx's C++ server sends the text ``Done!`` (its clients close
  on it); this one sends only JSON and closes the connection itself, so a client reads
  messages until the close (sherpa-onnx's clients end on that close too; ours,
  :mod:`asr.serve.client`, also closes on a sherpa-onnx server's ``Done!``);
* sherpa-onnx's per-token scores (``ys_probs``, ``lm_probs``, ``context_scores``) and its
  ``num_trailing_blanks`` are not sent.

``audio_end`` (an extension) is the stream time in seconds of the audio received before the
decode step that produced the message. On a protocol error the server sends
``{"error": "..."}`` and closes with the code of :class:`ProtocolError`; a stream whose decoding
fails gets the same with 1011 (``decoding this stream failed (...)``), while the streams
decoded beside it go on.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from asr.audio import MAX_RATE_RATIO_TERM, resampling_problem
from asr.serve.config import DEFAULT_HOTWORD_LIMITS, HotwordLimits

__all__ = [
    "CLOSE_INVALID_DATA",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_UNSUPPORTED",
    "DEFAULT_SAMPLE_RATE",
    "DONE",
    "HOTWORD_SEPARATORS",
    "ProtocolError",
    "MAX_RATE_RATIO_TERM",
    "StreamSettings",
    "check_rate_ratio",
    "error_message",
    "parse_audio",
    "parse_text",
    "result_message",
    "sample_rate_from_path",
]

DONE = "Done"
DEFAULT_SAMPLE_RATE = 16000

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013


class ProtocolError(ValueError):
    """A client message that breaks the protocol.

    Attributes:
        code: websocket close code to end the connection with.
    """

    def __init__(self, message: str, code: int = CLOSE_POLICY) -> None:
        super().__init__(message)
        self.code = code


#: What separates the phrases of a ``hotwords`` string (sherpa-onnx's ``/`` too).
HOTWORD_SEPARATORS = (";", "/")


@dataclass(frozen=True)
class StreamSettings:
    """A text message announcing settings of the stream, before its audio.

    Attributes:
        sample_rate: the rate of the audio that follows, or None (unchanged).
        hotwords: phrases to bias the stream toward (each may end with `` :SCORE``), or None.
        hotwords_score: the boost of a phrase without its own, or None (the server's).
    """

    sample_rate: int | None = None
    hotwords: tuple[str, ...] | None = None
    hotwords_score: float | None = None


def _preview(text: str) -> str:
    """``text`` cut to 40 characters for a message (a client's value may be megabytes)."""
    return text[:40] + ("..." if len(text) > 40 else "")


def _check_rate(value: Any, low: int, high: int, source: str) -> int:
    shown = _preview(repr(value))
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ProtocolError(f"{source}: sample_rate must be an integer, got {shown}")
    try:
        rate = float(value)
    except (ValueError, OverflowError):  # OverflowError: an integer beyond any float
        raise ProtocolError(f"{source}: sample_rate must be an integer, got {shown}") from None
    if not math.isfinite(rate) or rate != int(rate) or not low <= rate <= high:
        raise ProtocolError(
            f"{source}: sample_rate must be an integer in [{low}, {high}], got {shown}"
        )
    return int(rate)


def check_rate_ratio(
    rate: int, model_rate: int, source: str, max_term: int = MAX_RATE_RATIO_TERM
) -> int:
    """``rate`` when audio at that rate can be resampled to ``model_rate`` at a bounded cost
    (:func:`asr.audio.resampling_problem`, the rule of every resampling path): a costly filter
    would be built in the decode thread that every stream of the server waits on.

    Raises:
        ProtocolError: naming ``source`` when the reduced ratio has a term above ``max_term``.
    """
    problem = resampling_problem(rate, model_rate, max_term)
    if problem is not None:
        raise ProtocolError(f"{source}: {problem.replace('sample rate', 'sample_rate', 1)}")
    return rate


def parse_audio(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Decodes a binary message into (N,) float32 samples.

    Raises:
        ProtocolError: when the byte count is not a multiple of 4 or a sample is NaN / infinite.
    """
    if len(data) % 4:
        raise ProtocolError(
            f"binary message of {len(data)} bytes: "
            "expected float32 samples (a multiple of 4 bytes)",
            CLOSE_INVALID_DATA,
        )
    samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.isfinite(samples).all():
        bad = int((~np.isfinite(samples)).sum())
        # what 16-bit PCM (WeNet's protocol, a raw .wav) read as float32 almost always holds
        raise ProtocolError(
            f"binary message has {bad} NaN or infinite samples: expected float32 samples in "
            "[-1, 1] (16-bit PCM? convert it: samples / 32768)",
            CLOSE_INVALID_DATA,
        )
    return samples


def parse_text(
    text: str,
    min_rate: int = 4000,
    max_rate: int = 192000,
    limits: HotwordLimits = DEFAULT_HOTWORD_LIMITS,
) -> str | StreamSettings:
    """Decodes a text message: :data:`DONE` or the :class:`StreamSettings` JSON object.

    Raises:
        ProtocolError: for anything else, and for settings out of range or over ``limits``.
    """
    if text == DONE:
        return DONE
    preview = _preview(text)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        raise ProtocolError(
            f"text message {preview!r}: expected 'Done' or a JSON object {{\"sample_rate\": N}}",
            CLOSE_UNSUPPORTED,
        ) from None
    keys = {"sample_rate", "hotwords", "hotwords_score"}
    if not isinstance(data, dict) or not data or not set(data) <= keys:
        raise ProtocolError(
            f"text message {preview!r}: the only JSON message is {{\"sample_rate\": N, "
            f'"hotwords": ["PHRASE", ...], "hotwords_score": S}} (each key optional)',
            CLOSE_UNSUPPORTED,
        )
    rate = data.get("sample_rate")
    score = data.get("hotwords_score")
    if score is not None:
        score = _check_score(score)
    hotwords = data.get("hotwords")
    return StreamSettings(
        None if rate is None else _check_rate(rate, min_rate, max_rate, "text message"),
        None if hotwords is None else _check_hotwords(hotwords, limits),
        score,
    )


def _check_score(value: Any) -> float:
    """A ``hotwords_score`` value as a finite float."""
    score = math.nan
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        with contextlib.suppress(OverflowError):  # an integer beyond any float
            score = float(value)
    if not math.isfinite(score):
        raise ProtocolError(
            f"hotwords_score must be a finite number, got {_preview(repr(value))}",
            CLOSE_INVALID_DATA,
        )
    return score


def _check_hotwords(value: Any, limits: HotwordLimits) -> tuple[str, ...]:
    """The phrases of a ``hotwords`` value (a list of strings, or one string of phrases
    separated by :data:`HOTWORD_SEPARATORS`), within ``limits``."""
    if isinstance(value, str):
        for sep in HOTWORD_SEPARATORS[1:]:
            value = value.replace(sep, HOTWORD_SEPARATORS[0])
        phrases = value.split(HOTWORD_SEPARATORS[0])
    elif isinstance(value, list) and all(isinstance(p, str) for p in value):
        phrases = list(value)
    else:
        raise ProtocolError(
            "hotwords must be a list of strings or one string of phrases separated by ';', got "
            f"{type(value).__name__}",
            CLOSE_INVALID_DATA,
        )
    size = sum(len(p.encode("utf-8", "surrogatepass")) for p in phrases)
    if size > limits.max_hotwords_bytes:
        raise ProtocolError(
            f"hotwords: {size} bytes, at most {limits.max_hotwords_bytes} are allowed",
            CLOSE_POLICY,
        )
    phrases = [" ".join(p.split()) for p in phrases]
    phrases = [p for p in phrases if p]
    if len(phrases) > limits.max_hotwords:
        raise ProtocolError(
            f"hotwords: {len(phrases)} phrases, at most {limits.max_hotwords} are allowed",
            CLOSE_POLICY,
        )
    for phrase in phrases:
        if len(phrase) > limits.max_hotword_chars:
            raise ProtocolError(
                f"hotword {phrase[:40]!r}...: {len(phrase)} characters, at most "
                f"{limits.max_hotword_chars} are allowed",
                CLOSE_POLICY,
            )
        if not phrase.isprintable():
            raise ProtocolError(
                f"hotword {phrase[:40]!r}: control characters are not allowed", CLOSE_INVALID_DATA
            )
    return tuple(phrases)


def sample_rate_from_path(path: str, min_rate: int = 4000, max_rate: int = 192000) -> int | None:
    """The ``sample_rate`` query parameter of a request path, or None when absent.

    Raises:
        ProtocolError: for a malformed or out-of-range value.
    """
    values = parse_qs(urlsplit(path).query).get("sample_rate")
    if not values:
        return None
    if len(values) > 1:
        raise ProtocolError(f"query: sample_rate given {len(values)} times")
    return _check_rate(values[0], min_rate, max_rate, "query")


def result_message(result: Any, audio_end: float, is_eof: bool = False) -> str:
    """The JSON text for a streaming :class:`asr.results.Segment`; ``is_eof``: the stream's
    last message."""
    data = result.to_json()
    data["is_eof"] = bool(is_eof)
    data["audio_end"] = round(float(audio_end), 3)
    return json.dumps(data, ensure_ascii=False)


def error_message(error: str) -> str:
    """The JSON text telling a client what it did wrong."""
    return json.dumps({"error": error}, ensure_ascii=False)
