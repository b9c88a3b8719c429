"""Python clients of the recognition server (``python -m asr.serve.client``).

* :func:`stream_samples` / :func:`stream_file`: send a waveform in chunks, in real time
  (``realtime=True``: one chunk per chunk duration, like a microphone) or as fast as the server
  reads, then ``Done``; collect every result until the server closes (or, sherpa-onnx's C++
  server, sends ``Done!``: the client then closes, once the final result has come).
* :func:`stream_microphone`: capture with ``sounddevice`` (imported lazily) until Ctrl-C (the
  final result follows; a second Ctrl-C ends the client without it).

Examples::

    python -m asr.serve.client --server ws://127.0.0.1:6006 a.wav b.flac   # as fast as possible
    python -m asr.serve.client --realtime a.wav
    python -m asr.serve.client --microphone

Only numpy, soundfile and websockets are needed (no torch): audio at another rate is sent as is,
after announcing its rate; the server resamples. (sherpa-onnx's own servers take no such
announcement: its C++ server ignores it and reads the audio at its ``--input-sample-rate``, its
Python example server fails on it; give them files at the rate they were started with.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import logging
import math
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asr.constants import IntermixedParser, hotword_score, hotwords_file
from asr.fileio import one_line, read_text

__all__ = ["ClientResult", "read_hotwords", "stream_file", "stream_microphone", "stream_samples",
           "main"]

logger = logging.getLogger(__name__)

DEFAULT_SERVER = "ws://127.0.0.1:6006"
#: The most characters of a refused handshake's response body that the client prints as its
#: reason: ``asr serve`` says one short line, but a proxy in front of it answers with an HTML
#: page of kilobytes.
MAX_REASON_CHARS = 200

#: What sherpa-onnx's C++ websocket server sends after a stream's last result, instead of closing
#: the connection (it waits for its client to close, as sherpa-onnx's clients do on this text).
SHERPA_DONE = "Done!"

#: Seconds the client still waits after :data:`SHERPA_DONE` for a final result (``is_eof``) that
#: has not come: that server sends ``Done!`` from its decoding threads and its results from its
#: network threads, so the final result, sent before ``Done!``, may arrive after it.
DONE_GRACE_SECONDS = 1.0


@dataclass
class ClientResult:
    """What the server sent for one stream.

    Attributes:
        messages: every JSON message, in order, with the arrival time (``time.monotonic``) added
            as ``"received"``.
        send_times: (monotonic time, seconds of audio sent so far) after each audio message.
        close_code: the server's close code.
        close_reason: the server's close reason.
    """

    messages: list[dict[str, Any]] = field(default_factory=list)
    send_times: list[tuple[float, float]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    @property
    def segments(self) -> list[str]:
        """The last text of each segment, in segment order."""
        texts: dict[int, str] = {}
        for msg in self.messages:
            if "segment" in msg:
                texts[int(msg["segment"])] = msg.get("text", "")
        return [texts[k] for k in sorted(texts)]

    @property
    def text(self) -> str:
        """The transcript: the non-empty segments joined with spaces."""
        return " ".join(t for t in self.segments if t)

    @property
    def errors(self) -> list[str]:
        """Error messages sent by the server."""
        return [m["error"] for m in self.messages if "error" in m]

    @property
    def problem(self) -> str | None:
        """Why the transcript may be incomplete, or None: the server's errors, or a connection
        that ended otherwise than with the final result and code 1000 (a message over the
        server's size limit, 1009, is refused that way, without an error message)."""
        if self.errors:
            return "; ".join(self.errors)
        if self.close_code == 1000:
            return None
        reason = f" ({self.close_reason})" if self.close_reason else ""
        hint = "; send less audio per message (--chunk-seconds)" if self.close_code == 1009 else ""
        return f"the server closed the connection with code {self.close_code}{reason}{hint}"


async def _results(ws: Any) -> AsyncIterator[dict[str, Any]]:
    """The JSON messages of a stream until the server closes the connection or sends
    sherpa-onnx's end of results (:data:`SHERPA_DONE`), on which this client closes it (code
    1000), as sherpa-onnx's own clients do: its server would hold it open, and this client,
    which read every message as JSON, failed on the text ("Expecting value") with the
    transcript received. A final result (``is_eof``) that has not come before ``Done!`` is
    waited for, up to :data:`DONE_GRACE_SECONDS`: closing at once lost it, the last words of
    the transcript, with no problem reported.

    Raises:
        websockets.exceptions.ConnectionClosed: when the connection fails before the end.
    """
    from websockets.exceptions import ConnectionClosed

    final = False
    async for text in ws:
        if text == SHERPA_DONE:
            break
        msg = json.loads(text)
        final = final or bool(msg.get("is_eof"))
        yield msg
    else:
        return  # the server closed the connection
    deadline = asyncio.get_running_loop().time() + DONE_GRACE_SECONDS
    while not final:
        try:
            async with asyncio.timeout_at(deadline):
                text = await ws.recv()
        except (TimeoutError, ConnectionClosed):
            break
        msg = json.loads(text)
        final = bool(msg.get("is_eof"))
        yield msg
    await ws.close()


def settings_message(
    sample_rate: int,
    hotwords: str | Sequence[str] | None = None,
    hotwords_score: float | None = None,
) -> str | None:
    """The JSON settings message a client sends first (:mod:`asr.serve.protocol`), or None
    when every setting is the server's default.

    Args:
        sample_rate: the rate of the audio (announced when not 16000).
        hotwords: phrases to bias the stream toward: a list, or one string of phrases
            separated by ``;`` (each may end with `` :SCORE``).
        hotwords_score: the boost of a phrase without its own.
    """
    data: dict[str, Any] = {}
    if sample_rate != 16000:
        data["sample_rate"] = int(sample_rate)
    if hotwords is not None:
        data["hotwords"] = hotwords if isinstance(hotwords, str) else list(hotwords)
    if hotwords_score is not None:
        data["hotwords_score"] = float(hotwords_score)
    return json.dumps(data, ensure_ascii=False) if data else None


async def stream_samples(
    url: str,
    samples: np.ndarray,
    sample_rate: int = 16000,
    chunk_seconds: float = 0.1,
    realtime: bool = False,
    on_message: Callable[[dict[str, Any]], None] | None = None,
    timeout: float = 600.0,
    hotwords: str | Sequence[str] | None = None,
    hotwords_score: float | None = None,
) -> ClientResult:
    """Streams (N,) float samples and returns all results.

    Args:
        url: server address, ``ws://host:port``.
        samples: mono waveform in [-1, 1].
        sample_rate: its rate; announced to the server when not 16000.
        chunk_seconds: audio per message.
        realtime: pace the chunks at the speed of speech.
        on_message: called with each result as it arrives.
        timeout: seconds the whole exchange may take (``math.inf``: no limit).
        hotwords, hotwords_score: phrases this stream is biased toward and their default
            boost (:func:`settings_message`; the server's searcher must bias).

    Raises:
        ValueError: for samples that are not float mono, (N,) or (N, 1): integer PCM or
            several channels (they were sent as they were, to be recognized as noise).
        TimeoutError: after ``timeout`` seconds.
        websockets.exceptions.InvalidStatus: when the server refuses the connection.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    array = np.asarray(samples)
    if array.dtype.kind != "f" or not (array.ndim == 1 or array.ndim == 2 and array.shape[1] == 1):
        raise ValueError(
            f"samples of type {array.dtype} and shape {array.shape}: the server takes float mono "
            "samples in [-1, 1], (N,); convert integer PCM and channels first "
            "(asr.audio.as_waveform, or read files with read_audio)"
        )
    samples = np.ascontiguousarray(array, dtype="<f4").reshape(-1)
    step = max(1, int(round(chunk_seconds * sample_rate)))
    result = ClientResult()

    async def receive(ws) -> None:
        try:
            async for msg in _results(ws):
                msg["received"] = time.monotonic()
                result.messages.append(msg)
                if on_message is not None:
                    on_message(msg)
        except ConnectionClosed:
            pass

    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            async with connect(url, max_size=1 << 22, open_timeout=30) as ws:
                receiver = asyncio.create_task(receive(ws))
                start = time.monotonic()
                try:
                    settings = settings_message(sample_rate, hotwords, hotwords_score)
                    if settings is not None:
                        await ws.send(settings)
                    for begin in range(0, samples.size, step):
                        chunk = samples[begin : begin + step]
                        if realtime:
                            due = start + (begin + chunk.size) / sample_rate
                            await asyncio.sleep(max(0.0, due - time.monotonic()))
                        await ws.send(chunk.tobytes())
                        sent = (begin + chunk.size) / sample_rate
                        result.send_times.append((time.monotonic(), sent))
                    await ws.send("Done")
                except ConnectionClosed:  # the server ended the stream early (error or shutdown)
                    pass
                await receiver
                result.close_code = ws.close_code
                result.close_reason = ws.close_reason or ""
    except TimeoutError:
        if not deadline.expired():  # the connection's own (its opening handshake), with its words
            raise
        # asyncio's has no message: the command line printed "a.wav: error: " and nothing more
        raise TimeoutError(f"no final result from {url} within {timeout:g} s") from None
    return result


def read_hotwords(spec: str | None) -> str | list[str] | None:
    """``--hotwords`` as the server takes it: the lines of the file ``spec`` names (one phrase
    per line, each may end with `` :SCORE``: the file ``asr transcribe --hotwords`` and
    sherpa-onnx's ``hotwords_file`` read), or ``spec`` itself, phrases separated by ``;``
    (:func:`asr.constants.hotwords_file` tells which). A file was sent as a phrase, its path,
    which the server refused as characters the model cannot spell.

    Raises:
        ValueError: for a ``.txt`` name that is no file, or a file that is not UTF-8 text.
        OSError: for a file that cannot be read.
    """
    if spec is None:
        return None
    path = hotwords_file(spec)
    if path is None:
        return spec
    phrases = [line for line in read_text(path).splitlines() if line.strip()]
    if not phrases:  # the server biases nothing: said here, where the file is known
        logger.warning("hotwords file %s holds no phrases: nothing is biased", path)
    return phrases


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """(N,) float32 mono samples and the rate of an audio file (soundfile).

    Raises:
        FileNotFoundError: for a path that is not a file (soundfile says 'System error').
        ValueError: for a file libsndfile cannot read (m4a/aac, say, which ``asr transcribe``
            reads through ffmpeg), saying so and how to convert it.
    """
    import soundfile

    if not Path(path).is_file():  # the message of the one path the caller gave
        raise FileNotFoundError("not a file" if Path(path).exists() else "no such file")
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as err:
        raise ValueError(
            f"cannot read it as audio: {err.error_string.rstrip('.')} (this client reads what "
            f"libsndfile reads: wav, flac, ogg, mp3, ...; convert other formats first, e.g. "
            f"ffmpeg -i IN -ar 16000 OUT.wav)") from err
    return data.mean(axis=1, dtype=np.float32), int(rate)


async def stream_file(url: str, path: str, **kwargs: Any) -> ClientResult:
    """Streams an audio file (any format soundfile reads); see :func:`stream_samples`."""
    samples, rate = read_audio(path)
    return await stream_samples(url, samples, rate, **kwargs)


async def stream_microphone(
    url: str,
    sample_rate: int = 16000,
    chunk_seconds: float = 0.1,
    device: str | int | None = None,
    on_message: Callable[[dict[str, Any]], None] | None = None,
    stop: asyncio.Event | None = None,
    hotwords: str | Sequence[str] | None = None,
    hotwords_score: float | None = None,
) -> ClientResult:
    """Streams the microphone until ``stop`` is set, the server closes the connection, or the
    task is cancelled (e.g. by Ctrl-C); ``hotwords``, ``hotwords_score`` as
    :func:`stream_samples`'s. The result records how the connection closed
    (:attr:`ClientResult.problem`). Audio captured while 100 blocks wait unsent (a server that
    reads slower than real time) is dropped, with a warning: a microphone cannot wait.

    Raises:
        RuntimeError: when the ``sounddevice`` package is not installed.
    """
    try:
        import sounddevice
    except (ImportError, OSError) as err:  # OSError: PortAudio library missing
        raise RuntimeError(
            f"microphone capture needs the 'sounddevice' package and PortAudio ({err}); "
            "install them with: pip install sounddevice && apt-get install libportaudio2"
        ) from err
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=100)
    stop = stop or asyncio.Event()
    result = ClientResult()

    dropped = [0]  # samples captured that found the queue full

    def enqueue(block: np.ndarray) -> None:
        if not queue.full():
            queue.put_nowait(block)
            return
        if not dropped[0]:
            logger.warning("the server reads slower than the microphone captures: dropping audio")
        dropped[0] += block.size

    def callback(indata, frames, time_info, status) -> None:  # PortAudio thread
        block = indata[:, 0].copy()
        loop.call_soon_threadsafe(enqueue, block)

    async def receive(ws) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for msg in _results(ws):
                result.messages.append(msg)
                if on_message is not None:
                    on_message(msg)

    async with connect(url) as ws:
        receiver = asyncio.create_task(receive(ws))
        settings = settings_message(sample_rate, hotwords, hotwords_score)
        if settings is not None:
            await ws.send(settings)
        blocksize = int(chunk_seconds * sample_rate)
        with sounddevice.InputStream(
            channels=1,
            samplerate=sample_rate,
            dtype="float32",
            blocksize=blocksize,
            device=device,
            callback=callback,
        ):
            stopper = asyncio.create_task(stop.wait())
            try:
                while not stop.is_set() and not receiver.done():  # done: the server closed
                    getter = asyncio.create_task(queue.get())
                    await asyncio.wait({getter, stopper, receiver},
                                       return_when=asyncio.FIRST_COMPLETED)
                    if getter.done():
                        await ws.send(getter.result().tobytes())
                    else:
                        getter.cancel()
            except ConnectionClosed:  # the server ended the stream
                pass
            finally:
                stopper.cancel()
        with contextlib.suppress(ConnectionClosed):
            await ws.send("Done")
        await receiver
        result.close_code = ws.close_code
        result.close_reason = ws.close_reason or ""
    if dropped[0]:
        logger.warning("dropped %.2f s of microphone audio the server could not take in time "
                       "(it was not recognized)", dropped[0] / sample_rate)
    return result


class _Printer:
    """Prints partial results on one line (a terminal) and final ones on their own lines:
    ``[SEGMENT START_TIME s] TEXT``; a final result without text clears the partial one.
    ``errors``: also the server's error messages as they come (the microphone client; the file
    client prints each file's errors once, with its name, when the file is done)."""

    def __init__(self, prefix: str = "", errors: bool = True) -> None:
        self.prefix = prefix
        self.errors = errors
        self.tty = sys.stdout.isatty()

    def __call__(self, msg: dict[str, Any]) -> None:
        if "error" in msg:
            if self.errors:
                print(f"{self.prefix}error: {msg['error']}", file=sys.stderr)
        elif msg.get("is_final"):
            if msg.get("text"):
                start = f" {float(msg['start_time']):.2f}s" if "start_time" in msg else ""
                line = f"{self.prefix}[{msg['segment']}{start}] {msg['text']}"
                print(f"\r{line}\033[K" if self.tty else line, flush=True)
            elif self.tty:  # nothing was said after all: clear the partial result shown
                print("\r\033[K", end="", flush=True)
        elif self.tty:
            print(f"\r{self.prefix}{msg.get('text', '')}\033[K", end="", flush=True)


def _positive_seconds(text: str, unlimited: bool = False) -> float:
    """An argparse type: a finite number of seconds above 0 (``unlimited``: or ``inf``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and (unlimited or math.isfinite(value))):  # NaN fails
        what = "above 0, or inf for no limit" if unlimited else "above 0"
        raise argparse.ArgumentTypeError(f"must be a number of seconds {what}, got {text!r}")
    return value


def _timeout_seconds(text: str) -> float:
    """An argparse type for ``--timeout``: seconds above 0, ``inf`` for no limit (an asyncio
    deadline at inf never passes)."""
    return _positive_seconds(text, unlimited=True)


def build_parser() -> argparse.ArgumentParser:
    # files between options too (``a.flac --realtime b.flac``), as ``asr transcribe`` takes them
    parser = IntermixedParser(
        prog="python -m asr.serve.client", description=__doc__.split("\n")[0]
    )
    parser.add_argument("files", nargs="*", help="audio files to stream (concurrently)")
    parser.add_argument(
        "--server", default=DEFAULT_SERVER, help=f"server address (default: {DEFAULT_SERVER})"
    )
    parser.add_argument("--realtime", action="store_true", help="send audio at the speed of speech")
    parser.add_argument(
        "--chunk-seconds", type=_positive_seconds, default=0.1,
        help="audio per message (default: 0.1)"
    )
    parser.add_argument("--microphone", action="store_true", help="stream the default microphone")
    parser.add_argument("--device", default=None, help="sounddevice input device")
    parser.add_argument(
        "--timeout", type=_timeout_seconds, default=600.0,
        help="seconds per file; inf: no limit (default: 600)"
    )
    parser.add_argument(
        "--hotwords", metavar="FILE|PHRASES", default=None,
        help="bias each stream toward these phrases: a file (one phrase per line, optionally "
        "ending with ' :SCORE', as asr transcribe --hotwords reads it) or phrases separated by "
        "';' (\"JOHN SMITH;ACME :3\"); "
        "the server must run its PyTorch engine with a searcher that biases (asr serve "
        "--searcher transducer_beam, tdt_beam or ctc_prefix_beam; --engine sherpa-onnx refuses "
        "a client's hotwords)",
    )
    parser.add_argument(
        "--hotwords-score", type=hotword_score, metavar="S", default=None,
        help="per-token boost of a phrase without its own (default: the server's)",
    )
    return parser


def _failure(err: Exception, server: str) -> str:
    """The command line's words for a stream that raised ``err``: a refused connection says
    where it tried and that a server may not be running there (the system's own words name
    only an address, "[Errno 111] Connect call failed ('127.0.0.1', 6006)"), and a refused
    handshake says the server's reason, from the response body ("HTTP 503" alone did not say
    whether the server was full or shutting down), as one bounded line (:func:`_response_reason`:
    a proxy's HTML page by its text, cut)."""
    if isinstance(err, ConnectionRefusedError):
        return f"cannot connect to {server}: {err} (is `asr serve` running there?)"
    response = getattr(err, "response", None)  # websockets' InvalidStatus: the HTTP response
    body = getattr(response, "body", None)
    # a bytearray as received; a page of markup alone (<html><body></body></html>) says nothing
    reason = _response_reason(bytes(body)) if isinstance(body, (bytes, bytearray)) else ""
    if reason:
        hint = (" (asr serve --max-connections)" if reason == "too many connections" else "")
        return f"{err}: {reason}{hint}"
    return str(err)


def _response_reason(body: bytes) -> str:
    """A refused handshake's response body as one line of at most :data:`MAX_REASON_CHARS`
    characters (then ``...`` and how long it was): an HTML page (a proxy's error page) by its
    text without markup, scripts or styles; every run of white space (newlines too) one space,
    and other control characters escaped (:func:`asr.fileio.one_line`); empty for a body
    without text."""
    text = body.decode("utf-8", "replace")
    if text.lstrip().startswith("<"):
        text = re.sub(r"<(script|style)\b.*?</\1\s*>", " ", text, flags=re.S | re.I)
        text = html.unescape(re.sub(r"<[^>]*>", " ", text))
    text = " ".join(text.split())
    if len(text) <= MAX_REASON_CHARS:
        return one_line(text)
    return (f"{one_line(text[:MAX_REASON_CHARS].rstrip())}... (cut: the response body's text "
            f"is {len(text)} characters)")


async def _run_files(args: argparse.Namespace) -> int:
    async def one(path: str) -> tuple[str, ClientResult | Exception]:
        prefix = f"{path}: " if len(args.files) > 1 else ""
        try:
            return path, await stream_file(
                args.server,
                path,
                chunk_seconds=args.chunk_seconds,
                realtime=args.realtime,
                on_message=_Printer(prefix, errors=False) if len(args.files) == 1 else None,
                timeout=args.timeout,
                hotwords=args.hotwords,
                hotwords_score=args.hotwords_score,
            )
        except Exception as err:  # report per file, keep the others going
            return path, err

    status = 0
    for path, outcome in await asyncio.gather(*(one(p) for p in args.files)):
        if isinstance(outcome, Exception):
            print(f"{path}: error: {_failure(outcome, args.server)}", file=sys.stderr)
            status = 1
        elif outcome.problem is not None:
            print(f"{path}: error: {outcome.problem}", file=sys.stderr)
            status = 1
        elif len(args.files) > 1:
            print(f"{one_line(str(path))}\t{outcome.text}")  # a tab in a name: \t
    return status


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.microphone == bool(args.files):
        print("give audio files or --microphone (not both)", file=sys.stderr)
        return 2
    try:
        args.hotwords = read_hotwords(args.hotwords)  # read once, before any connection
    except (OSError, ValueError) as err:
        print(f"error: --hotwords: {err}", file=sys.stderr)
        return 2
    if args.microphone:
        device = int(args.device) if args.device and args.device.isdigit() else args.device

        async def microphone() -> ClientResult:
            stop = asyncio.Event()  # Ctrl-C ends the capture; the final result still arrives
            task = asyncio.current_task()

            def interrupt() -> None:  # a second Ctrl-C: no waiting for the final result
                if stop.is_set():
                    task.cancel()
                stop.set()

            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, interrupt)
            print("listening; Ctrl-C to stop (twice: without the final result)", file=sys.stderr)
            return await stream_microphone(
                args.server,
                chunk_seconds=args.chunk_seconds,
                device=device,
                on_message=_Printer(),
                stop=stop,
                hotwords=args.hotwords,
                hotwords_score=args.hotwords_score,
            )

        try:
            result = asyncio.run(microphone())
        except asyncio.CancelledError:
            print("error: interrupted before the final result", file=sys.stderr)
            return 130
        except Exception as err:  # no sounddevice, no server (refused, 503): as for files
            print(f"error: {_failure(err, args.server)}", file=sys.stderr)
            return 1
        if result.problem is not None:  # the server's errors were printed as they came
            print(f"error: {result.problem}", file=sys.stderr)
            return 1
        return 0
    return asyncio.run(_run_files(args))


if __name__ == "__main__":
    sys.exit(main())
