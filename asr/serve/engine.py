"""The batching decode loop shared by every connection of a server.

Each websocket connection owns a :class:`Session`: a recognizer stream, the audio received but not
yet handed to the recognizer, and an outbox of result messages. :class:`DecodeEngine` runs ONE
loop for all sessions: whenever audio arrives it takes every session's pending audio, and in a
single worker thread (so the event loop stays responsive) feeds it to the streams, runs ONE
:meth:`StreamingRecognizer.decode` step over all ready streams, applies endpointing, and queues
each decoded stream's result. It repeats while any stream made progress, then sleeps until the
next audio.

A stream's fault stays its own: a call on one stream that raises (feeding its audio, its result)
closes that stream's connection alone (1011, saying what failed), and when a batched decode step
raises, each of its streams is decoded alone (:meth:`StreamingRecognizer.decode
<asr.runtime.streaming.StreamingRecognizer.decode>` changes no stream when it raises): the
healthy ones get exactly the step they would get alone, and only the streams that fail alone
are closed. (sherpa-onnx cannot undo what a failed batch did to its streams.) A failed session's
stream is decoded no more. A stream's failure is one log line, naming its session (ERROR with the
traceback for a fault of the server, WARNING for the client's); a batch that is retried stream by
stream is one WARNING.

All recognizer calls happen in the worker thread, one step at a time, a session's
``new_stream`` included (a transducer's start state runs the predictor); the event loop only
moves numpy buffers and messages, so the model runs in one thread and streams are never touched
by two at once. (The server builds a client's hotword graph with ``recognizer.hotword_graph``,
from the tokenizer alone, in a thread of its own.)

Bounds: pending audio per session is limited by the server (it stops reading a connection whose
backlog exceeds ``max_buffered_seconds``); the outbox keeps only the latest partial result of a
segment (partials supersede each other) plus the final ones, and a client leaving more than
``max_pending_messages`` unsent is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asr.data.filtering import error_reason
from asr.runtime.streaming import decode_isolated
from asr.serve.protocol import CLOSE_INTERNAL, CLOSE_POLICY, ProtocolError, result_message

__all__ = ["DecodeEngine", "EngineStats", "Session"]

logger = logging.getLogger(__name__)


@dataclass
class EngineStats:
    """Counters of a :class:`DecodeEngine` (read them from the event loop thread).

    Attributes:
        steps: decode steps run.
        streams_decoded: sum over steps of the streams in the batch.
        max_batch: largest batch.
        busy_seconds: wall time spent in decode steps (feature extraction included).
        audio_seconds: audio handed to the recognizer.
        sessions_opened: sessions ever opened.
    """

    steps: int = 0
    streams_decoded: int = 0
    max_batch: int = 0
    busy_seconds: float = 0.0
    audio_seconds: float = 0.0
    sessions_opened: int = 0

    @property
    def real_time_factor(self) -> float:
        """Decoding time per second of audio (0 before any audio)."""
        return self.busy_seconds / self.audio_seconds if self.audio_seconds else 0.0


@dataclass(eq=False)
class Session:
    """Per-connection state (mutable; owned by the event loop except where noted).

    Attributes:
        id: session number.
        stream: the recognizer stream, made and touched only by the worker thread (None until
            the session's first decode step).
        sample_rate: rate of the client's audio.
        pending: audio received and not yet handed to the worker.
        pending_samples: samples in ``pending``.
        received_samples: all samples received.
        finish_requested: the client sent Done (or the server is shutting down).
        finish_sent: the worker was told the input ended.
        accepted_samples: samples fed to the stream (worker thread).
        backlog_seconds: audio the recognizer holds undecoded and could decode now (written
            by the worker; 0 while the stream waits for more audio to fill its next chunk).
        decoded_steps: decode steps that produced a result for this stream.
        outbox: JSON messages not yet sent, as (text, is_final).
        closed: the connection is gone; results are dropped.
        error: why the engine gave up on the session (None: fine).
        hotwords: the stream's hotword graph (``ContextGraph`` or None) still to be handed to
            the stream by the worker, in a 1-tuple; None when there is none to hand.
        hotwords_given: the client has sent its hotwords (once per connection).
    """

    id: int
    sample_rate: int
    stream: Any = None
    pending: list[np.ndarray] = field(default_factory=list)
    pending_samples: int = 0
    received_samples: int = 0
    finish_requested: bool = False
    finish_sent: bool = False
    accepted_samples: int = 0
    backlog_seconds: float = 0.0
    decoded_steps: int = 0
    outbox: collections.deque = field(default_factory=collections.deque)
    closed: bool = False
    error: ProtocolError | None = None
    hotwords: tuple[Any] | None = None
    hotwords_given: bool = False
    has_mail: asyncio.Event = field(default_factory=asyncio.Event)
    completed: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.drained.set()

    @property
    def received_seconds(self) -> float:
        """Seconds of audio received."""
        return self.received_samples / self.sample_rate


@dataclass
class _Work:
    session: Session
    chunks: list[np.ndarray]
    finish: bool
    error: ProtocolError | None = None  # the stream failed: its client is closed with this
    logged: bool = False  # its error is logged already (with the other streams of its step)
    hotwords: tuple[Any] | None = None  # a hotword graph for the stream, before its audio


@dataclass(frozen=True)
class _Output:
    session: Session
    message: str
    is_final: bool
    done: bool


class DecodeEngine:
    """One batching decode loop over all live sessions.

    Args:
        recognizer: a :class:`asr.runtime.streaming.StreamingRecognizer`, or an engine with
            its interface (:class:`asr.export.sherpa_streaming.SherpaStreamingRecognizer`).
        max_buffered_seconds: backlog above which a session's reader is paused.
        max_pending_messages: unsent results above which a session is failed.

    Call :meth:`run` as a task in the server's event loop; :meth:`stop` ends it.
    """

    def __init__(
        self, recognizer: Any, max_buffered_seconds: float = 10.0, max_pending_messages: int = 256
    ) -> None:
        self.recognizer = recognizer
        self.max_buffered_seconds = max_buffered_seconds
        self.max_pending_messages = max_pending_messages
        self.stats = EngineStats()
        self._sessions: dict[int, Session] = {}
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._stopped = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr-decode")

    # ------------------------------------------------------------------------- sessions

    @property
    def num_sessions(self) -> int:
        """Live sessions (each holds one recognizer stream)."""
        return len(self._sessions)

    def open_session(self, sample_rate: int) -> Session:
        """A new session; the worker gives it a fresh recognizer stream on its first step."""
        session = Session(next(self._ids), sample_rate)
        self._sessions[session.id] = session
        self.stats.sessions_opened += 1
        return session

    def close_session(self, session: Session) -> None:
        """Forgets a session (its connection is gone); safe to call twice."""
        session.closed = True
        session.pending.clear()
        session.outbox.clear()
        self._sessions.pop(session.id, None)
        session.completed.set()
        session.drained.set()
        session.has_mail.set()

    def push_audio(self, session: Session, samples: np.ndarray) -> None:
        """Queues (N,) float32 samples of ``session`` for the next decode step."""
        if session.closed or session.finish_requested or not samples.size:
            return
        session.pending.append(samples)
        session.pending_samples += samples.size
        session.received_samples += samples.size
        self._update_drained(session)
        self._wake.set()

    def set_hotwords(self, session: Session, context: Any) -> None:
        """Gives the session's stream the hotword graph ``context`` (built and checked by the
        caller with ``recognizer.hotword_graph``) before any of its audio is decoded."""
        if not session.closed:
            session.hotwords = (context,)

    def finish(self, session: Session) -> None:
        """The session's input ended: decode the rest and send the final result."""
        if not session.closed and not session.finish_requested:
            session.finish_requested = True
            self._wake.set()

    def backlog_seconds(self, session: Session) -> float:
        """Audio of ``session`` received and not yet decoded, in seconds."""
        return session.pending_samples / session.sample_rate + session.backlog_seconds

    def _update_drained(self, session: Session) -> None:
        if session.closed or self.backlog_seconds(session) < self.max_buffered_seconds:
            session.drained.set()
        else:
            session.drained.clear()

    # ------------------------------------------------------------------------- loop

    async def run(self) -> None:
        """The decode loop; returns after :meth:`stop`."""
        while not self._stopped:
            await self._wake.wait()
            self._wake.clear()
            if not self._stopped and await self._run_once():
                self._wake.set()

    async def _run_once(self) -> bool:
        """One decode step over all sessions; whether any stream made progress.

        (A separate coroutine so that no batch stays referenced while the loop sleeps.)
        """
        work = self._collect()
        if not work:
            return False
        loop = asyncio.get_running_loop()
        try:
            outputs, progressed = await loop.run_in_executor(self._executor, self._step, work)
        except Exception:  # a bug in a step must not take the server down
            logger.exception("decode step failed; closing its %d session(s)", len(work))
            for item in work:
                self._fail(item.session, ProtocolError("internal decoding error", CLOSE_INTERNAL))
            return False
        self._dispatch(work, outputs)
        return progressed

    async def stop(self) -> None:
        """Ends :meth:`run` after the current step and releases the worker thread."""
        self._stopped = True
        self._wake.set()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    def _collect(self) -> list[_Work]:
        work = []
        for session in self._sessions.values():
            if session.error is not None:  # failed: its stream is decoded no more
                session.pending, session.pending_samples = [], 0
                continue
            finish = session.finish_requested and not session.finish_sent
            session.finish_sent = session.finish_sent or finish
            work.append(_Work(session, session.pending, finish, hotwords=session.hotwords))
            session.hotwords = None
            session.pending = []
            session.pending_samples = 0
        return work

    def _step(self, work: list[_Work]) -> tuple[list[_Output], bool]:
        """Worker thread: feed audio, one batched decode step, endpointing.

        A stream whose call fails is isolated: its item gets the error and the others go on
        (:meth:`_decode`), so one faulty client never closes the clients it shares a batch with.
        """
        rec = self.recognizer
        start = time.perf_counter()
        audio = sum(self._feed(item) for item in work)
        ready = [i for i in work if i.error is None and self._is_ready(i)]
        decoded = self._decode(ready) if ready else []
        outputs = [out for out in map(self._output, decoded) if out is not None]
        for item in work:
            stream = item.session.stream
            if stream is not None:
                try:
                    # audio that waits for more audio (less than a chunk) is no backlog: counted,
                    # it paused the reader that must bring that audio, for good
                    item.session.backlog_seconds = (
                        rec.pending_seconds(stream) if rec.is_ready(stream) else 0.0)
                except Exception as err:  # noqa: BLE001 - whatever the stream's fault, its own
                    self._isolate(item, "measuring its backlog", err)
        elapsed = time.perf_counter() - start
        self.stats.busy_seconds += elapsed
        self.stats.audio_seconds += audio
        if decoded:
            self.stats.steps += 1
            self.stats.streams_decoded += len(decoded)
            self.stats.max_batch = max(self.stats.max_batch, len(decoded))
        return outputs, bool(decoded)

    def _feed(self, item: _Work) -> float:
        """Worker thread: hands ``item``'s hotwords, audio and end of input to its stream (made
        here: the model runs in this thread only); the seconds of audio handed."""
        rec, session = self.recognizer, item.session
        audio = 0.0
        try:
            if session.stream is None:
                session.stream = rec.new_stream()
            if item.hotwords is not None:
                rec.set_hotword_graph(session.stream, item.hotwords[0])
            for chunk in item.chunks:
                rec.accept_waveform(session.stream, chunk, session.sample_rate)
                session.accepted_samples += chunk.size
                audio += chunk.size / session.sample_rate
            if item.finish:
                rec.input_finished(session.stream)
        except ValueError as err:  # the client's: samples that are not audio, a rate change
            item.error = ProtocolError(str(err))
        except Exception as err:  # noqa: BLE001 - whatever the stream's fault, its own
            self._isolate(item, "feeding its audio", err)
        return audio

    def _is_ready(self, item: _Work) -> bool:
        try:
            return bool(self.recognizer.is_ready(item.session.stream))
        except Exception as err:  # noqa: BLE001 - whatever the stream's fault, its own
            self._isolate(item, "checking it", err)
            return False

    def _decode(self, ready: list[_Work]) -> list[_Work]:
        """Worker thread: ONE batched decode step over ``ready``; the items it decoded.

        When the batched step raises, each stream is decoded alone (our recognizer's ``decode``
        changes no stream when it raises), so that the healthy ones get exactly their step and
        only the streams that fail alone are given the error. When every stream of a batch
        fails alone, the fault is the step's rather than each stream's: it is logged here once
        per reason, naming the sessions, instead of once per session.
        """
        decoded = decode_isolated(self.recognizer.decode, ready,
                                  lambda item: item.session.stream,
                                  lambda item, err: self._isolate(item, "decoding it", err))
        if len(ready) > 1 and not decoded:
            self._log_step_failure(ready)
        return [item for item, _ in decoded]

    def _log_step_failure(self, failed: list[_Work]) -> None:
        """Worker thread: every stream of a batch failed alone; one ERROR line per reason
        (one for a fault of the step), naming its sessions, with the traceback of the first
        of them; the items are marked ``logged`` (:meth:`_fail` logs them at DEBUG only)."""
        by_reason: dict[str, list[_Work]] = {}
        for item in failed:
            by_reason.setdefault(str(item.error), []).append(item)
            item.logged = True
        for reason, items in by_reason.items():
            cause = items[0].error.__cause__
            logger.error("sessions %s (every stream of a batch of %d): %s",
                         ", ".join(str(item.session.id) for item in items), len(failed), reason,
                         exc_info=None if cause is None else (type(cause), cause,
                                                              cause.__traceback__))

    def _output(self, item: _Work) -> _Output | None:
        """Worker thread: the result message of a decoded stream (at an endpoint, reset's final
        result: result() would finalize the same search once more); None if that failed."""
        rec, session = self.recognizer, item.session
        stream = session.stream
        try:
            ended = not stream.done and rec.is_endpoint(stream)
            result = rec.reset(stream) if ended else rec.result(stream)
            audio_end = session.accepted_samples / session.sample_rate
            return _Output(session, result_message(result, audio_end, stream.done),
                           result.is_final, stream.done)
        except Exception as err:  # noqa: BLE001 - whatever the stream's fault, its own
            self._isolate(item, "making its result", err)
            return None

    def _isolate(self, item: _Work, doing: str, err: BaseException) -> None:
        """Worker thread: ``item``'s stream failed while ``doing``; gives the item the error
        its client is closed with (1011), caused by ``err`` (whose traceback :meth:`_fail`
        logs)."""
        error = ProtocolError(f"decoding this stream failed ({doing}: {error_reason(err)})",
                              CLOSE_INTERNAL)
        error.__cause__ = err
        item.error = error

    def _dispatch(self, work: list[_Work], outputs: list[_Output]) -> None:
        for item in work:
            if item.error is not None:
                self._fail(item.session, item.error, logged=item.logged)
            else:
                self._update_drained(item.session)
        for out in outputs:
            session = out.session
            if session.closed or session.error is not None:
                continue
            session.decoded_steps += 1
            outbox = session.outbox
            if outbox and not outbox[-1][1]:
                outbox.pop()  # an unsent partial is superseded by the newer result
            outbox.append((out.message, out.is_final))
            if len(outbox) > self.max_pending_messages:
                self._fail(
                    session,
                    ProtocolError(
                        f"{len(outbox)} results left unread (limit {self.max_pending_messages})",
                        CLOSE_POLICY,
                    ),
                )
                continue
            session.has_mail.set()
            if out.done:
                session.completed.set()

    def _fail(self, session: Session, error: ProtocolError, logged: bool = False) -> None:
        """Gives up on ``session`` with ``error``, in the one log line of its failure: ERROR
        for a fault of the server (1011, with the traceback of its cause), WARNING for the
        client's; the server closes the connection without logging it again. Logged even when
        the client has left (the failure happened); a session fails once. ``logged``: the
        failure is in a line already (:meth:`_log_step_failure`): this one is DEBUG, without
        the traceback."""
        if session.error is not None:
            return
        cause = error.__cause__
        level = logging.ERROR if error.code == CLOSE_INTERNAL else logging.WARNING
        traceback = None if cause is None or logged else (type(cause), cause, cause.__traceback__)
        logger.log(logging.DEBUG if logged else level, "session %d: %s", session.id, str(error),
                   exc_info=traceback)
        session.error = error
        session.completed.set()
        session.has_mail.set()
        session.drained.set()
