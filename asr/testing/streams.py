"""Decoding one stream to its end as an application does, for tests of either streaming engine.

:func:`decode_with_endpoints` drives our :class:`asr.runtime.streaming.StreamingRecognizer` and
the sherpa-onnx engine's :class:`asr.export.sherpa_streaming.SherpaStreamingRecognizer` alike:
both take audio, decode while a chunk is ready and start a new segment at each endpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from asr.export.sherpa_streaming import SherpaStream, SherpaStreamingRecognizer
    from asr.results import Segment
    from asr.runtime.streaming import Stream, StreamingRecognizer

__all__ = ["decode_with_endpoints"]


def decode_with_endpoints(
    recognizer: StreamingRecognizer | SherpaStreamingRecognizer,
    stream: Stream | SherpaStream,
    wave: np.ndarray,
    sample_rate: int,
    piece: int | None = None,
) -> list[Segment]:
    """Feeds ``wave`` to ``stream`` and decodes it to its end, resetting the stream at each
    endpoint (what a server does to start a new segment).

    Args:
        recognizer: the engine ``stream`` belongs to.
        stream: a new stream of ``recognizer``.
        wave: (N,) float samples at ``sample_rate``.
        sample_rate: Hz of ``wave``.
        piece: samples fed per call, each followed by the decoding of every ready chunk (None:
            the whole wave at once); the input is finished with the last piece.

    Returns:
        Every segment of the stream in order: those ended at endpoints
        (``stream.finished_segments``), then the result of the last one.
    """
    step = wave.shape[0] if piece is None else piece
    for begin in range(0, max(wave.shape[0], 1), max(step, 1)):
        recognizer.accept_waveform(stream, wave[begin: begin + step], sample_rate)
        if begin + step >= wave.shape[0]:
            recognizer.input_finished(stream)
        while recognizer.is_ready(stream):
            recognizer.decode([stream])
            if recognizer.is_endpoint(stream):
                recognizer.reset(stream)
    return [*stream.finished_segments, recognizer.result(stream)]
