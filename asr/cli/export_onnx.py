"""``asr export-onnx --model PKG --output-dir DIR``: the package as ONNX graphs for sherpa-onnx.

Offline transducer (default for a transducer package): ``encoder.onnx``, ``decoder.onnx``,
``joiner.onnx`` and ``tokens.txt`` for ``sherpa_onnx.OfflineRecognizer.from_transducer``;
``--streaming``: the encoder chunk by chunk for ``sherpa_onnx.OnlineRecognizer.from_transducer``
(the package must stream); ``--head ctc``: ``model.onnx`` for
``OfflineRecognizer.from_zipformer_ctc``; a TDT transducer: sherpa-onnx's NeMo transducer layout
(``from_transducer(..., model_type="nemo_transducer")``, offline; it computes other features: see
docs/ONNX.md); ``--int8``: ``*.int8.onnx`` as well. Every graph is
checked against PyTorch before the directory is written (:mod:`asr.export.sherpa`).
``--if-supported``: a package sherpa-onnx has no layout for in the mode asked (a streaming CTC or
TDT model with ``--streaming``...) logs why and exits 0 without writing or printing anything.
Exit status 2: a bad option or input (a missing or corrupt package, an output in the way or
being written by another run, a head or chunking the package cannot export, a package without a
layout); 1: an export that failed (the exporter, a self-check against PyTorch).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from asr.constants import add_overwrite_argument
from asr.export.sherpa import (
    DEFAULT_OPSET,
    NoLayoutError,
    OnnxExportError,
    OnnxInputError,
    export_onnx,
)

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model package directory")
    parser.add_argument("--output-dir", type=Path, required=True,
                        help="output directory to create")
    parser.add_argument("--streaming", action="store_true",
                        help="streaming transducer (OnlineRecognizer) instead of offline")
    parser.add_argument("--int8", action="store_true",
                        help="also write int8 graphs (onnxruntime dynamic quantization, QInt8)")
    parser.add_argument("--head", choices=("transducer", "ctc"), default=None,
                        help="head to export (default: the package's first trained one)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default: {DEFAULT_OPSET})")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="streaming chunk in encoder frames (default: the package's)")
    parser.add_argument("--left-chunks", type=int, default=None,
                        help="streaming left context in chunks (default: the package's)")
    add_overwrite_argument(parser, "replace an earlier export in --output-dir (never the "
                                   "package or another directory)")
    parser.add_argument("--if-supported", action="store_true",
                        help="a package that sherpa-onnx has no layout for in this mode (its "
                             "heads, its features, streaming) is no error: say why, write "
                             "nothing, exit 0 (the recipes export whatever their model allows)")


def run(args: argparse.Namespace) -> int:
    try:
        report = export_onnx(
            args.model, args.output_dir, streaming=args.streaming, int8=args.int8, opset=args.opset,
            head=args.head, force=args.overwrite, chunk_size=args.chunk_size,
            left_chunks=args.left_chunks,
        )
    except NoLayoutError as err:
        if not args.if_supported:
            logger.error("asr export-onnx: %s", err)
            return 2
        logger.warning("asr export-onnx: nothing written: %s", err)
        return 0
    except OnnxInputError as err:
        logger.error("asr export-onnx: %s", err)
        return 2
    except OnnxExportError as err:
        logger.error("asr export-onnx: %s", err)
        return 1
    print(report.summary())
    return 0
