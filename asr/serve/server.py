"""The recognition server: one asyncio process, websockets for audio, HTTP for the web page.

:class:`RecognitionServer` accepts websocket connections speaking the protocol of
:mod:`asr.serve.protocol` and hands their audio to one :class:`asr.serve.engine.DecodeEngine`.
Plain HTTP GET requests on the same port get the microphone page (:mod:`asr.serve.web`):
``/`` (``/?autostart=1`` starts capturing on load), its two scripts, and ``/stats`` (JSON
counters: live sessions, decode steps, batch sizes, busy time, audio seconds, real-time factor).

Per connection limits (:class:`asr.serve.config.ServerConfig`): message size (websockets closes
with 1009), idle time, audio buffered ahead of the decoder (the reader pauses: back-pressure
through TCP), total audio, unread results. Connections beyond ``max_connections`` get HTTP 503.
A client that sent ``Done`` and does not read (its results fill the connection's buffers) holds
its session for at most ``shutdown_timeout`` seconds after its final result is made, then
:data:`CLOSE_TIMEOUT` more while the server closes the connection (1008, "client stopped
reading"); any close the client does not take in that time is cut off.

Graceful shutdown (SIGINT / SIGTERM, or :meth:`RecognitionServer.shutdown`): the listening socket
closes, every live stream is finished as if its client had sent ``Done`` (its final result is
sent) and its connection closed with code 1001; after ``shutdown_timeout`` seconds the rest are
closed regardless.

Example:
    >>> recognizer = asr.load_model("pkg").streaming_recognizer()
    >>> asyncio.run(RecognitionServer(recognizer, ServerConfig(port=6006)).serve_forever())
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from asr.decoding.registry import BIASING_STREAMING_SEARCHERS
from asr.serve.config import ServerConfig
from asr.serve.engine import DecodeEngine, Session
from asr.serve.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_INVALID_DATA,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    DEFAULT_SAMPLE_RATE,
    DONE,
    ProtocolError,
    StreamSettings,
    check_rate_ratio,
    error_message,
    parse_audio,
    parse_text,
    sample_rate_from_path,
)
from asr.serve.web import load_static_site

__all__ = ["BackgroundServer", "RecognitionServer", "host_port"]

logger = logging.getLogger(__name__)

#: Seconds the server gives a connection to take its last messages and the close handshake
#: before it drops it (a client that does not read would hold it until the ping timeout).
CLOSE_TIMEOUT = 5.0


def host_port(host: str, port: int | None) -> str:
    """``host:port`` as a URL writes it: an IPv6 address in brackets (``[::1]:6006``; the
    ``ws://::1:6006`` written before was no URL a client or browser could open)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(text: str) -> str:
    """A close reason that fits the 123-byte limit of websocket close frames."""
    data = text.encode()[:120]
    return data.decode(errors="ignore")


class RecognitionServer:
    """Streaming recognition over websockets for many concurrent clients.

    Args:
        recognizer: a :class:`asr.runtime.streaming.StreamingRecognizer`.
        config: limits and address.
    """

    def __init__(self, recognizer: Any, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.recognizer = recognizer
        self.engine: DecodeEngine | None = None
        self._site = load_static_site(self.stats)
        self._server: Server | None = None
        self._engine_task: asyncio.Task | None = None
        self._stopping: asyncio.Event | None = None
        self._closed: asyncio.Event | None = None
        self._connections: set[ServerConnection] = set()
        self._shutdown_started = False
        self.port: int | None = None

    # ------------------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """``ws://host:port`` of the running server."""
        return f"ws://{host_port(self.config.host, self.port)}"

    @property
    def num_sessions(self) -> int:
        """Live websocket sessions (recognizer streams)."""
        return self.engine.num_sessions if self.engine is not None else 0

    def stats(self) -> dict:
        """Counters served at ``/stats``."""
        engine = self.engine
        if engine is None:
            return {"sessions": 0}
        s = engine.stats
        return {
            "sessions": engine.num_sessions,
            "sessions_opened": s.sessions_opened,
            "steps": s.steps,
            "streams_decoded": s.streams_decoded,
            "max_batch": s.max_batch,
            "busy_seconds": round(s.busy_seconds, 4),
            "audio_seconds": round(s.audio_seconds, 4),
            "real_time_factor": round(s.real_time_factor, 5),
        }

    async def start(self) -> None:
        """Starts the decode loop and listens."""
        cfg = self.config
        self._stopping = asyncio.Event()
        self._closed = asyncio.Event()
        self.engine = DecodeEngine(
            self.recognizer, cfg.max_buffered_seconds, cfg.max_pending_messages
        )
        self._engine_task = asyncio.create_task(self.engine.run(), name="asr-decode-loop")
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            max_size=cfg.max_message_bytes,
            max_queue=16,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=CLOSE_TIMEOUT,
            server_header="asr",
            compression=None,  # audio does not deflate; saves ~100 KiB per connection
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        logger.info("serving on http://%s (websocket %s)", host_port(cfg.host, self.port), self.url)

    async def shutdown(self) -> None:
        """Graceful shutdown: finish every stream, close connections, stop the decode loop."""
        assert self._stopping is not None and self._closed is not None, "server not started"
        if self._shutdown_started:
            await self._closed.wait()
            return
        self._shutdown_started = True
        logger.info("shutting down: finishing %d stream(s)", self.num_sessions)
        self._stopping.set()
        server = self._server
        server.close(close_connections=False)
        try:
            async with asyncio.timeout(self.config.shutdown_timeout + 1.0):
                await server.wait_closed()
        except TimeoutError:
            logger.warning(
                "shutdown: closing %d connection(s) that did not finish", len(self._connections)
            )
            for conn in list(self._connections):
                conn.transport.abort()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await server.wait_closed()
        await self.engine.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await self._engine_task
        self._closed.set()
        logger.info("server stopped")

    async def serve_forever(self, handle_signals: bool = True) -> None:
        """Starts, serves until SIGINT / SIGTERM (or :meth:`request_shutdown`), shuts down."""
        await self.start()
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.request_shutdown)
        try:
            await self._stopping.wait()
        finally:
            await self.shutdown()

    def request_shutdown(self) -> None:
        """Asks :meth:`serve_forever` to shut down (call from the event loop thread).

        A second request while streams are still finishing drops their connections at once.
        """
        if self._stopping is None:
            return
        if not self._stopping.is_set():
            logger.info("shutdown requested")
            self._stopping.set()
        elif self._connections:
            logger.warning(
                "second shutdown request: dropping %d connection(s)", len(self._connections)
            )
            for conn in list(self._connections):
                conn.transport.abort()

    # ------------------------------------------------------------------------- HTTP

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            return self._site.respond(request)
        if self._stopping.is_set():
            return connection.respond(503, "server is shutting down\n")
        if self.num_sessions >= self.config.max_connections:
            logger.warning(
                "refusing a connection: %d sessions (limit %d)",
                self.num_sessions,
                self.config.max_connections,
            )
            return connection.respond(503, "too many connections\n")
        return None

    # ------------------------------------------------------------------------- websocket

    async def _handle(self, ws: ServerConnection) -> None:
        cfg = self.config
        if self.num_sessions >= cfg.max_connections or self._stopping.is_set():
            await ws.close(CLOSE_TRY_AGAIN, "server busy")
            return
        try:
            rate = sample_rate_from_path(ws.request.path, cfg.min_sample_rate, cfg.max_sample_rate)
            if rate is not None:
                check_rate_ratio(rate, self.recognizer.sample_rate, "query")
        except ProtocolError as err:
            await self._close_with_error(ws, err)
            return
        session = self.engine.open_session(rate or DEFAULT_SAMPLE_RATE)
        self._connections.add(ws)
        logger.info("session %d: connected from %s", session.id, ws.remote_address)
        sender = asyncio.create_task(self._send_loop(ws, session))
        receiver = asyncio.create_task(self._receive_loop(ws, session))
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({receiver, stopping, sender}, return_when=asyncio.FIRST_COMPLETED)
            code, reason = CLOSE_NORMAL, "done"
            if sender.done():
                sender.result()  # the connection failed while sending
            elif receiver.done():
                receiver.result()  # raises ProtocolError / ConnectionClosed
            else:
                receiver.cancel()
                code, reason = CLOSE_GOING_AWAY, "server shutting down"
            self.engine.finish(session)
            await self._await_final(session)
            if not await self._delivered(sender):
                why = (f"client stopped reading: its results were not taken for "
                       f"{cfg.shutdown_timeout} s")
                await self._close_with_error(ws, ProtocolError(why, CLOSE_POLICY), session,
                                             tell=False)
                return
            if session.error is not None:
                raise session.error
            await self._close(ws, code, reason)
        except ProtocolError as err:  # the engine logged its own (session.error)
            await self._close_with_error(ws, err, session, logged=err is session.error)
        except TimeoutError:
            if self._stopping.is_set():
                why = f"server shutting down: no final result within {cfg.shutdown_timeout} s"
                error = ProtocolError(why, CLOSE_GOING_AWAY)
            else:
                why = f"no final result: no decoding progress for {cfg.shutdown_timeout} s"
                error = ProtocolError(why, CLOSE_INTERNAL)
            await self._close_with_error(ws, error, session)
        except ConnectionClosed as err:
            logger.info("session %d: client left (%s)", session.id, str(err))
        finally:
            for task in (sender, receiver, stopping):
                task.cancel()
            self.engine.close_session(session)
            self._connections.discard(ws)
            logger.info(
                "session %d: closed (%.2f s of audio)", session.id, session.received_seconds
            )

    async def _await_final(self, session: Session) -> None:
        """Waits for a finishing session's final result for as long as its decoding progresses
        (its backlog may take longer than any fixed wait on a busy server), until
        ``shutdown_timeout`` seconds pass without a decode step for it, or in all once the
        server is shutting down.

        Raises:
            TimeoutError: when that time has passed without the final result.
        """
        while True:
            seen = session.decoded_steps
            try:
                async with asyncio.timeout(self.config.shutdown_timeout):
                    await session.completed.wait()
                return
            except TimeoutError:
                if session.decoded_steps == seen or self._stopping.is_set():
                    raise

    async def _delivered(self, sender: asyncio.Task) -> bool:
        """Whether ``sender`` sent the final result within ``shutdown_timeout`` seconds (it
        is cancelled otherwise: the client stopped reading, and the connection's buffers are
        full). Raises what the sender raised (ConnectionClosed: the client left)."""
        try:
            async with asyncio.timeout(self.config.shutdown_timeout):
                await sender
        except TimeoutError:
            return False
        return True

    async def _close_with_error(
        self, ws: ServerConnection, err: ProtocolError, session: Session | None = None,
        logged: bool = False, tell: bool = True,
    ) -> None:
        """Sends ``err`` to the client (unless ``tell`` is false: a client that does not read
        would not get it) and closes the connection with its code; logs it unless it was
        ``logged`` where it happened (a stream's failure is one log line)."""
        if not logged:
            name = f"session {session.id}" if session is not None else "connection"
            logger.warning("%s: %s", name, str(err))
        await self._close(ws, err.code, _reason(str(err)),
                          error_message(str(err)) if tell else None)

    async def _close(
        self, ws: ServerConnection, code: int, reason: str, message: str | None = None
    ) -> None:
        """Sends ``message`` (if any) and closes the connection with ``code``; a client that
        has not taken them within :data:`CLOSE_TIMEOUT` seconds (one that stopped reading:
        the writes wait for room in its buffers) is cut off."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                if message is not None:
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(message)
                await ws.close(code, reason)
        except TimeoutError:
            logger.info("connection from %s: not closed within %s s, dropped",
                        ws.remote_address, CLOSE_TIMEOUT)
            ws.transport.abort()

    async def _receive_loop(self, ws: ServerConnection, session: Session) -> None:
        """Reads audio until ``Done``; raises ProtocolError / ConnectionClosed."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.idle_timeout
        while True:
            if not session.drained.is_set():  # back-pressure: the decoder must catch up first
                await session.drained.wait()
                deadline = loop.time() + cfg.idle_timeout  # the server was behind, not the client
            if session.error is not None:
                return
            try:
                async with asyncio.timeout_at(deadline):
                    message = await ws.recv()
            except TimeoutError:
                raise ProtocolError(f"no message for {cfg.idle_timeout} s (idle timeout)") from None
            if message == b"":  # an empty audio frame is no message: it does not hold the session
                continue
            deadline = loop.time() + cfg.idle_timeout
            if isinstance(message, str):
                parsed = parse_text(
                    message, cfg.min_sample_rate, cfg.max_sample_rate, cfg.hotword_limits
                )
                if parsed == DONE:
                    return
                if session.received_samples:
                    raise ProtocolError(
                        "settings (sample_rate, hotwords) must come before the first audio"
                    )
                await self._apply_settings(session, parsed)
                continue
            samples = parse_audio(message)
            limit = cfg.max_session_seconds
            if limit and session.received_seconds + samples.size / session.sample_rate > limit:
                raise ProtocolError(f"more than {limit} s of audio in one connection", CLOSE_POLICY)
            self.engine.push_audio(session, samples)

    async def _apply_settings(self, session: Session, settings: StreamSettings) -> None:
        """A client's stream settings: its sample rate, its hotword graph (built off the event
        loop, checked against the tokenizer).

        Raises:
            ProtocolError: for a sample rate too costly to resample (:func:`check_rate_ratio`),
                for hotwords given twice, to a searcher that does not bias, or that the
                tokenizer cannot spell.
        """
        if settings.sample_rate is not None:
            session.sample_rate = check_rate_ratio(
                settings.sample_rate, self.recognizer.sample_rate, "text message"
            )
        if settings.hotwords is None and settings.hotwords_score is None:
            return
        if session.hotwords_given:
            raise ProtocolError("hotwords may be given once per connection")
        session.hotwords_given = True
        recognizer = self.recognizer
        if not getattr(recognizer, "biases", False):
            name = getattr(recognizer, "searcher_name", "greedy")
            raise ProtocolError(
                f"this server's searcher {name} does not take hotwords (`asr serve` biases with "
                f"its PyTorch engine and --searcher {' / '.join(BIASING_STREAMING_SEARCHERS)})"
            )
        try:
            graph = await asyncio.to_thread(
                recognizer.hotword_graph, list(settings.hotwords or ()), settings.hotwords_score
            )
        except ValueError as err:  # HotwordError: unknown characters, too long
            raise ProtocolError(f"hotwords: {err}", CLOSE_INVALID_DATA) from None
        self.engine.set_hotwords(session, graph)
        logger.info("session %d: %d hotword(s)", session.id, len(settings.hotwords or ()))

    async def _send_loop(self, ws: ServerConnection, session: Session) -> None:
        """Sends queued results; returns once the final result is sent."""
        while True:
            await session.has_mail.wait()
            session.has_mail.clear()
            if session.error is not None or session.closed:
                return
            while session.outbox:
                text, _ = session.outbox.popleft()
                await ws.send(text)
            if session.completed.is_set():
                return


class BackgroundServer:
    """A :class:`RecognitionServer` on its own event loop in a daemon thread (tests, notebooks).

    Example:
        >>> with BackgroundServer(recognizer, ServerConfig(port=0)) as server:
        ...     run_client(server.url)
    """

    def __init__(self, recognizer: Any, config: ServerConfig | None = None) -> None:
        self.server = RecognitionServer(recognizer, config or ServerConfig(port=0))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="asr-serve", daemon=True
        )

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def http_url(self) -> str:
        return f"http://{host_port(self.server.config.host, self.server.port)}"

    def call(self, fn, timeout: float = 10.0):
        """Runs ``fn()`` in the server's loop thread and returns its result."""

        async def wrapper():
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self._loop).result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
