"""Server settings: one frozen dataclass, checked on construction."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_HOTWORD_LIMITS", "HotwordLimits", "ServerConfig"]


@dataclass(frozen=True)
class HotwordLimits:
    """How many hotwords one stream may send (:mod:`asr.serve.protocol`).

    Attributes:
        max_hotwords: phrases.
        max_hotword_chars: characters of one phrase.
        max_hotwords_bytes: UTF-8 bytes of the whole list (it bounds the hotword graph: about
            one state per character, each a row of the vocabulary in its dense tables).
    """

    max_hotwords: int = 100
    max_hotword_chars: int = 100
    max_hotwords_bytes: int = 4096


#: The server's default limits.
DEFAULT_HOTWORD_LIMITS = HotwordLimits()


@dataclass(frozen=True)
class ServerConfig:
    """Settings of :class:`asr.serve.server.RecognitionServer`.

    Attributes:
        host: interface to bind (an IPv6 address without brackets: ::1); the loopback
            interface unless asked otherwise.
        port: TCP port (0: any free port; the server logs the one it got).
        max_connections: websocket sessions served at once; more are refused with HTTP 503.
        max_message_bytes: largest websocket message accepted; larger ones close the
            connection with code 1009 (message too big).
        idle_timeout: seconds a client may stay silent (no message; empty audio frames do not
            count) before it is closed.
        max_buffered_seconds: audio a connection may have waiting to be decoded; beyond it the
            server stops reading from that connection until the decoder catches up, so a client
            sending faster than real time is slowed to the decoding speed (audio short of a
            whole chunk waits for more audio, not for the decoder: it does not count).
        max_session_seconds: total audio one connection may send (0: no limit).
        max_pending_messages: results a slow-reading client may leave unsent before it is closed.
        shutdown_timeout: seconds a graceful shutdown waits for streams to finish; also how
            long a stream that ended may go without a decode step before its client is told
            (while its backlog is decoding, the final result is waited for however long it takes),
            and how long a client may leave its final result untaken (it stopped reading)
            before it is closed.
        min_sample_rate: lowest sample rate a client may announce.
        max_sample_rate: highest sample rate a client may announce.
        max_hotwords: phrases one stream may send in its ``hotwords``.
        max_hotword_chars: characters of one of those phrases.
        max_hotwords_bytes: UTF-8 bytes of a stream's whole hotword list.
    """

    host: str = "127.0.0.1"
    port: int = 6006
    max_connections: int = 32
    max_message_bytes: int = 1 << 20
    idle_timeout: float = 30.0
    max_buffered_seconds: float = 10.0
    max_session_seconds: float = 3600.0
    max_pending_messages: int = 256
    shutdown_timeout: float = 10.0
    min_sample_rate: int = 4000
    max_sample_rate: int = 192000
    max_hotwords: int = DEFAULT_HOTWORD_LIMITS.max_hotwords
    max_hotword_chars: int = DEFAULT_HOTWORD_LIMITS.max_hotword_chars
    max_hotwords_bytes: int = DEFAULT_HOTWORD_LIMITS.max_hotwords_bytes

    @property
    def hotword_limits(self) -> HotwordLimits:
        """The hotword limits of a stream."""
        return HotwordLimits(self.max_hotwords, self.max_hotword_chars, self.max_hotwords_bytes)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.host.startswith("["):  # as a URL writes it: no interface has that name
            raise ValueError(f"host {self.host}: give the address without brackets ("
                             f"{self.host.strip('[]')}); only URLs bracket an IPv6 address")
        positive = {
            "max_connections": self.max_connections,
            "max_message_bytes": self.max_message_bytes,
            "idle_timeout": self.idle_timeout,
            "max_buffered_seconds": self.max_buffered_seconds,
            "max_pending_messages": self.max_pending_messages,
            "shutdown_timeout": self.shutdown_timeout,
            "min_sample_rate": self.min_sample_rate,
            "max_hotwords": self.max_hotwords,
            "max_hotword_chars": self.max_hotword_chars,
            "max_hotwords_bytes": self.max_hotwords_bytes,
        }
        for name, value in positive.items():
            if not value > 0:  # NaN too: max_buffered_seconds NaN paused every reader forever
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.max_message_bytes < 4:
            raise ValueError(
                f"max_message_bytes must hold one sample (>= 4), got {self.max_message_bytes}"
            )
        if not self.max_session_seconds >= 0:
            raise ValueError(f"max_session_seconds must be >= 0, got {self.max_session_seconds}")
        if self.max_sample_rate < self.min_sample_rate:
            raise ValueError(
                f"max_sample_rate ({self.max_sample_rate}) < "
                f"min_sample_rate ({self.min_sample_rate})"
            )
