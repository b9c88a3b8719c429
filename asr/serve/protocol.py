"""The websocket protocol (sherpa-onnx streaming server compatible), without any networking.

Client to server:

* **binary** messages: mono float32 little-endian PCM in [-1, 1], any number of samples per
  message (a multiple of 4 bytes; NaN and infinite values are rejected);
* the **text** ``Done``: no more audio; the server decodes what is left, sends the final result
  and closes the connection with code 1000;
* optionally, **before the first audio**, a text JSON object ``{"sample_rate": 8000}``
  announcing the rate of the audio (default 16000 Hz); the query parameter
  ``ws://host:port/?sample_rate=8000`` does the same. The server resamples to the model rate.

Server to client, text JSON after decode steps::

    {"text": "HELLO WORLD", "tokens": ["H", ...], "timestamps": [0.04, ...],
     "segment": 0, "is_final": false, "audio_end": 1.28}

``segment`` counts endpointed segments (0, 1, ...); ``is_final`` is true for the last message of
a segment; ``audio_end`` (an extension) is the stream time in seconds of the audio received
before the decode step that produced the message. On a protocol error the server sends
``{"error": "..."}`` and closes with the code of :class:`ProtocolError`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

__all__ = [
    "CLOSE_INVALID_DATA",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_UNSUPPORTED",
    "DEFAULT_SAMPLE_RATE",
    "DONE",
    "ProtocolError",
    "SampleRate",
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


@dataclass(frozen=True)
class SampleRate:
    """A text message announcing the sample rate of the audio that follows."""

    rate: int


def _check_rate(value: Any, low: int, high: int, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ProtocolError(f"{source}: sample_rate must be an integer, got {value!r}")
    try:
        rate = float(value)
    except ValueError:
        raise ProtocolError(f"{source}: sample_rate must be an integer, got {value!r}") from None
    if not math.isfinite(rate) or rate != int(rate) or not low <= rate <= high:
        raise ProtocolError(
            f"{source}: sample_rate must be an integer in [{low}, {high}], got {value!r}"
        )
    return int(rate)


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
        raise ProtocolError(f"binary message has {bad} NaN or infinite samples", CLOSE_INVALID_DATA)
    return samples


def parse_text(text: str, min_rate: int = 4000, max_rate: int = 192000) -> str | SampleRate:
    """Decodes a text message: :data:`DONE` or a :class:`SampleRate` announcement.

    Raises:
        ProtocolError: for anything else.
    """
    if text == DONE:
        return DONE
    preview = text[:40] + ("..." if len(text) > 40 else "")
    try:
        data = json.loads(text)
    except ValueError:
        raise ProtocolError(
            f"text message {preview!r}: expected 'Done' or a JSON object {{\"sample_rate\": N}}",
            CLOSE_UNSUPPORTED,
        ) from None
    if not isinstance(data, dict) or set(data) != {"sample_rate"}:
        raise ProtocolError(
            f'text message {preview!r}: the only JSON message is {{"sample_rate": N}}',
            CLOSE_UNSUPPORTED,
        )
    return SampleRate(_check_rate(data["sample_rate"], min_rate, max_rate, "text message"))


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


def result_message(result: Any, audio_end: float) -> str:
    """The JSON text for a streaming :class:`asr.results.Segment`."""
    data = result.to_json()
    data["audio_end"] = round(float(audio_end), 3)
    return json.dumps(data, ensure_ascii=False)


def error_message(error: str) -> str:
    """The JSON text telling a client what it did wrong."""
    return json.dumps({"error": error}, ensure_ascii=False)
