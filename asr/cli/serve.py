"""``asr serve``: streaming recognition over websockets, with a microphone page on the same port."""

from __future__ import annotations

import argparse
import asyncio
import logging

HELP = "serve a streaming model over websockets (sherpa-onnx protocol) with a microphone web page"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from asr.serve.config import ServerConfig

    d = ServerConfig()
    parser.add_argument(
        "--model", required=True, help="model package directory (asr export-package)"
    )
    parser.add_argument("--host", default=d.host, help=f"interface to bind (default: {d.host})")
    parser.add_argument(
        "--port", type=int, default=d.port, help=f"TCP port, 0: any free (default: {d.port})"
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        help=f"concurrent websocket sessions (default: {d.max_connections})",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=d.max_message_bytes,
        help=f"largest websocket message (default: {d.max_message_bytes})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=d.idle_timeout,
        help=f"seconds without a message before a client is closed (default: {d.idle_timeout})",
    )
    parser.add_argument(
        "--max-buffered-seconds",
        type=float,
        default=d.max_buffered_seconds,
        help="audio a client may have waiting for the decoder before reading pauses "
        f"(default: {d.max_buffered_seconds})",
    )
    parser.add_argument(
        "--max-session-seconds",
        type=float,
        default=d.max_session_seconds,
        help=f"audio per connection, 0: unlimited (default: {d.max_session_seconds})",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=d.shutdown_timeout,
        help=f"seconds to finish streams on shutdown (default: {d.shutdown_timeout})",
    )
    parser.add_argument(
        "--searcher", default=None, help="streaming searcher (default: the package's)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--num-threads",
        type=int,
        default=1,
        help="torch intra-op threads, 0: torch's default (default: 1; streams are "
        "batched instead, and on a busy 2-core machine 2 threads raised the p95 "
        "latency from ~20 ms to ~250 ms in tools/bench/serve.py)",
    )
    parser.add_argument(
        "--no-endpoint",
        action="store_true",
        help="disable endpointing (one segment per connection)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    import asr
    from asr.runtime.endpoint import EndpointConfig
    from asr.serve.config import ServerConfig
    from asr.serve.server import RecognitionServer

    try:
        config = ServerConfig(
            host=args.host,
            port=args.port,
            max_connections=args.max_connections,
            max_message_bytes=args.max_message_bytes,
            idle_timeout=args.idle_timeout,
            max_buffered_seconds=args.max_buffered_seconds,
            max_session_seconds=args.max_session_seconds,
            shutdown_timeout=args.shutdown_timeout,
        )
    except ValueError as err:
        logger.error("%s", err)
        return 2
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("websockets").setLevel(
            logging.WARNING
        )  # one line per connection otherwise
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding %s: the server is reachable from the network", config.host)
    model = asr.load_model(args.model, device=args.device)
    endpoint = EndpointConfig(enabled=not args.no_endpoint)
    recognizer = model.streaming_recognizer(args.searcher, endpoint=endpoint)
    try:
        asyncio.run(RecognitionServer(recognizer, config).serve_forever())
    except OSError as err:
        logger.error("cannot serve on %s:%d: %s", config.host, config.port, err)
        return 1
    return 0
