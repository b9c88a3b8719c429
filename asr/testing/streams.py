"""Decoding one stream to its end as an application does, for tests of either streaming engine.

:func:`decode_with_endpoints` drives our :class:`asr.runtime.streaming.StreamingRecognizer` and
the sherpa-onnx engine's :class:`asr.export.sherpa_streaming.SherpaStreamingRecognizer` alike:
both take audio, decode while a chunk is ready and start a new segment at each endpoint.
:func:`decode_together` drives several streams of one recognizer in one ``decode`` call per tick,
as a server batches its clients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from asr.export.sherpa_streaming import SherpaStream, SherpaStreamingRecognizer
    from asr.results import Segment
    from asr.runtime.streaming import Stream, StreamingRecognizer

__all__ = ["decode_together", "decode_with_endpoints"]


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


def decode_together(
    recognizer: StreamingRecognizer,
    waves: list[np.ndarray],
    pieces: list[int],
    delays: list[int],
) -> list[Stream]:
    """Decodes ``waves`` (16 kHz) as streams of ``recognizer`` batched together: one
    ``decode`` call per tick over all streams, stream ``i`` fed ``pieces[i]`` samples a tick
    from tick ``delays[i]`` on (so streams join and finish at different ticks); no endpoint
    handling (a recognizer without endpoints gives one segment each).

    Returns:
        The streams, done, in the order of ``waves``.
    """
    streams = [recognizer.new_stream() for _ in waves]
    cursors = [0] * len(waves)
    tick = 0
    while not all(s.done for s in streams):
        for i, (stream, wave) in enumerate(zip(streams, waves)):
            if tick < delays[i] or stream.input_done:
                continue
            recognizer.accept_waveform(stream, wave[cursors[i]: cursors[i] + pieces[i]], 16000)
            cursors[i] += pieces[i]
            if cursors[i] >= wave.shape[0]:
                recognizer.input_finished(stream)
        recognizer.decode(streams)
        tick += 1
    return streams
