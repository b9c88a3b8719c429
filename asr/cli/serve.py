"""``asr serve``: streaming recognition over websockets, with a microphone page on the same port.

The server options (``--host``, ``--port``, ``--max-connections``, ...) are generated from
:class:`asr.serve.config.ServerConfig`: its fields, defaults and docstring.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from asr.cli.options import (
    add_dataclass_arguments,
    add_device_argument,
    add_num_threads_argument,
    add_search_arguments,
    add_streaming_arguments,
    dataclass_from_args,
    device_from_args,
    set_num_threads,
)
from asr.export.sherpa_decode import sherpa_search_options
from asr.export.sherpa_streaming import load_streaming_recognizer
from asr.package import PackageError
from asr.runtime.endpoint import EndpointConfig
from asr.runtime.offline import load_model
from asr.serve.config import ServerConfig
from asr.serve.server import RecognitionServer, host_port

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True,
        help="model package directory (asr export-package); with --engine sherpa-onnx, the "
        "directory of `asr export-onnx --streaming`",
    )
    parser.add_argument(
        "--engine", choices=("pytorch", "sherpa-onnx"), default="pytorch",
        help="decode with our PyTorch runtime (default) or in sherpa-onnx (its greedy_search, "
        "or modified_beam_search with --searcher beam; sherpa's endpointing with the same "
        "rules; docs/ONNX.md)",
    )
    parser.add_argument(
        "--int8", action="store_true",
        help="--engine sherpa-onnx: the int8 graphs (an error with the pytorch engine)"
    )
    add_dataclass_arguments(parser, ServerConfig)
    add_search_arguments(
        parser, "the package's searcher if it streams, else a trained head's streaming greedy one; "
        "--engine sherpa-onnx: greedy (sherpa-onnx's greedy_search) or beam / transducer_beam "
        "(its modified_beam_search), with only search.beam_size (its max_active_paths), "
        "search.blank_penalty, search.hotwords_file, search.hotwords_score and "
        "search.max_symbols_per_frame=1 (others are an error; of the package's search options "
        "the export carries only search.blank_penalty, the default of the one given here)"
    )
    add_device_argument(parser)
    add_streaming_arguments(parser)
    add_num_threads_argument(
        parser, 1, "; streams are batched instead, and on a busy 2-core machine 2 threads raised "
        "the p95 latency from ~20 ms to ~250 ms in tools/bench/serve.py; --engine sherpa-onnx: "
        "its onnxruntime threads, at least 1",
    )
    parser.add_argument(
        "--no-endpoint",
        action="store_true",
        help="disable endpointing (one segment per connection; with cif_greedy, "
             "attention_rescoring or cif_rescoring the connection's encoder frames are then all "
             "kept, memory growing with it, for its final result)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = dataclass_from_args(ServerConfig, args)
    except ValueError as err:
        logger.error("asr serve: %s", err)
        return 2
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("websockets").setLevel(
            logging.WARNING
        )  # one line per connection otherwise
    try:
        set_num_threads(args.num_threads)
    except ValueError as err:
        logger.error("asr serve: %s", err)
        return 2
    endpoint = EndpointConfig(enabled=not args.no_endpoint)
    try:
        if args.int8 and args.engine != "sherpa-onnx":  # it would serve float32, unsaid
            raise ValueError("--int8 selects the int8 graphs of --engine sherpa-onnx; the "
                             "PyTorch runtime has no int8 model: add --engine sherpa-onnx or "
                             "drop --int8")
        if args.engine == "sherpa-onnx":
            if (args.chunk_size is not None or args.left_chunks is not None
                    or args.max_left_seconds is not None):
                raise ValueError("--engine sherpa-onnx: the chunking is fixed in the exported "
                                 "graphs (asr export-onnx --streaming --chunk-size/--left-chunks"
                                 "); drop --chunk-size, --left-chunks and --max-left-seconds")
            if args.device not in ("auto", "cpu"):
                raise ValueError(f"--device {args.device}: --engine sherpa-onnx runs on the CPU "
                                 "(onnxruntime's); drop --device")
            recognizer = load_streaming_recognizer(
                args.model, int8=args.int8, num_threads=max(1, args.num_threads),
                endpoint=endpoint,
                search=sherpa_search_options(args.searcher, args.search_overrides))
        else:
            model = load_model(args.model, device=device_from_args(args.device),
                               search=args.search_overrides)
            recognizer = model.streaming_recognizer(args.searcher, endpoint=endpoint,
                                                    chunk_size=args.chunk_size,
                                                    left_chunks=args.left_chunks,
                                                    max_left_seconds=args.max_left_seconds)
    except PackageError as err:
        logger.error("asr serve: cannot load model package: %s", err)
        return 2
    except (OSError, ValueError) as err:
        logger.error("asr serve: %s", err)
        return 2
    logger.info("streaming searcher %s", recognizer.searcher_name)
    if args.engine != "sherpa-onnx":
        chunk_seconds = recognizer.chunk_size * recognizer.frame_seconds
        if recognizer.left_chunks >= 0:
            context = f"left context {recognizer.left_chunks} chunks"
        elif recognizer.max_left_chunks is None:
            context = "unlimited left context (no bound: a stream's cache grows while it lives)"
        else:
            context = (f"unlimited left context up to {recognizer.max_left_chunks} chunks "
                       f"(--max-left-seconds {recognizer.max_left_seconds:g}), then sliding")
        logger.info("chunks of %d frames (%.2f s), %s", recognizer.chunk_size, chunk_seconds,
                    context)
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding %s: the server is reachable from the network", config.host)
    try:
        asyncio.run(RecognitionServer(recognizer, config).serve_forever())
    except OSError as err:
        logger.error("asr serve: cannot serve on %s: %s", host_port(config.host, config.port), err)
        return 1
    return 0
