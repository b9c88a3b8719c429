"""``asr decode-onnx --onnx-dir DIR --manifest-dir M --parts test-clean``: test-set WERs through
sherpa-onnx, for graphs written by ``asr export-onnx``.

Writes the files ``asr decode`` writes (``recogs-``, ``errs-``, ``wer-summary-<part>-<name>.txt``,
with ``name`` = ``sherpa-onnx-<layout>[-int8]``, e.g. ``sherpa-onnx-streaming-transducer``) into
``--output-dir`` (default: the ONNX directory) and prints each summary's path. Greedy search (at
most one symbol per frame) unless ``--decoding-method modified_beam_search`` (transducers;
``--hotwords-file`` then biases it with sherpa-onnx's own hotwords, read with the export's
``bpe.vocab``); streaming directories are decoded chunk by chunk with their chunk size. A
transducer export is decoded with the blank penalty its ``export.json`` records (its package's
``search.blank_penalty``, as ``asr transcribe`` decodes the package) unless ``--blank-penalty``
gives another; the summary's settings name the one applied.

As ``asr decode``, a run takes the lock of each summary file it will write
(:func:`asr.fileio.output_lock`) before it decodes anything: a second run on one of them is
refused (exit 2, naming it), as is an ``--output-dir`` that cannot be written, a broken export
directory, a search option its layout has not (a CTC export: greedy search, no blank penalty; a
negative ``--blank-penalty``, which sherpa-onnx would ignore) or
that the search chosen would not use (``--max-active-paths`` with greedy search,
``--hotwords-score`` without ``--hotwords-file``: an option given is applied or refused),
a test set without cuts (its WER would read ``0.00``; naming the file) or that holds a cut id
twice (naming the file, the id and both lines), one with a cut of
several audio channels or without a supervision (naming it; as ``asr decode``), and one with a
cut whose audio file is missing (naming the cut and the file; every part is checked before any is
decoded). A cut whose audio cannot be loaded is named with its files (exit 2).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from asr.cli.options import hotword_score, part_name, tag_name
from asr.data.librispeech import check_test_parts
from asr.export.sherpa_decode import (
    DEFAULT_HOTWORDS_SCORE,
    DEFAULT_MAX_ACTIVE_PATHS,
    check_part_audio,
    decode_part_sherpa,
    load_recognizer,
)
from asr.fileio import OutputBusyError, output_locks
from asr.run.evaluate import result_paths, write_results

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx-dir", type=Path, required=True,
                        help="directory written by asr export-onnx")
    parser.add_argument("--manifest-dir", type=Path, required=True,
                        help="where librispeech_cuts_<part>.jsonl.gz are")
    parser.add_argument("--parts", nargs="+", type=part_name, default=["test-clean"],
                        help="test sets to decode (one without cuts, or with a cut id twice, is "
                             "an error)")
    parser.add_argument("--int8", action="store_true", help="the *.int8.onnx graphs")
    parser.add_argument("--num-threads", type=int, default=1, help="onnxruntime threads")
    parser.add_argument("--batch-size", type=int, default=32, help="streams decoded together")
    parser.add_argument("--decoding-method", choices=["greedy_search", "modified_beam_search"],
                        default="greedy_search", help="sherpa-onnx's search (transducers)")
    parser.add_argument("--max-active-paths", type=int, default=None,
                        help="beam of modified_beam_search (default: 4; an error with "
                             "greedy_search)")
    parser.add_argument("--hotwords-file", type=Path, default=None,
                        help="sherpa-onnx's hotwords (modified_beam_search; needs the export's "
                             "bpe.vocab); the file format of `asr decode --set "
                             "search.hotwords_file=` (default: none)")
    parser.add_argument("--hotwords-score", type=hotword_score, default=None,
                        help="sherpa-onnx's per-token hotword boost (default: 1.5; an error "
                             "without --hotwords-file)")
    parser.add_argument("--blank-penalty", type=float, default=None,
                        help="subtracted from the blank logit, transducers only (default: the "
                             "export's, its package's search.blank_penalty)")
    parser.add_argument("--tag", type=tag_name, default="", help="suffix of the result files' name")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where the result files go (default: --onnx-dir)")


def result_name(layout: str, args: argparse.Namespace) -> str:
    """The searcher name of the result files: ``sherpa-onnx-<layout>[-int8]``, then
    ``-modified-beam-search`` for that method (as ``asr decode`` names each searcher's files),
    then ``-<tag>``. Other settings (beam, hotwords, blank penalty) are in the summary's
    settings, as ``asr decode``'s ``--set`` values are: runs that differ only there need their
    own ``--tag`` or ``--output-dir``."""
    name = "sherpa-onnx-" + layout.replace("_", "-") + ("-int8" if args.int8 else "")
    if args.decoding_method != "greedy_search":
        name += "-" + args.decoding_method.replace("_", "-")
    return name + (f"-{args.tag}" if args.tag else "")


def result_settings(name: str, args: argparse.Namespace,
                    blank_penalty: float = 0.0) -> dict[str, object]:
    """The summary's settings column: the engine and every search option that was set
    (``blank_penalty``: the one the recognizer applies, given or the export's)."""
    settings: dict[str, object] = {"engine": name, "method": args.decoding_method}
    if args.decoding_method == "modified_beam_search":
        settings["max_active_paths"] = (DEFAULT_MAX_ACTIVE_PATHS if args.max_active_paths is None
                                        else args.max_active_paths)
    if args.hotwords_file is not None:
        settings["hotwords"] = args.hotwords_file.name
        settings["hotwords_score"] = (DEFAULT_HOTWORDS_SCORE if args.hotwords_score is None
                                      else args.hotwords_score)
    if blank_penalty:
        settings["blank_penalty"] = blank_penalty
    return settings


def run(args: argparse.Namespace) -> int:
    try:
        recognizer = load_recognizer(
            args.onnx_dir, int8=args.int8, num_threads=args.num_threads,
            decoding_method=args.decoding_method, max_active_paths=args.max_active_paths,
            hotwords_file=args.hotwords_file, hotwords_score=args.hotwords_score,
            blank_penalty=args.blank_penalty,
        )
        name = result_name(recognizer.layout, args)
        out_dir = args.output_dir or args.onnx_dir
        parts = list(dict.fromkeys(args.parts))  # one lock, and one decode, per part
        with output_locks(result_paths(out_dir, part, name)["wer_summary"] for part in parts):
            # a repeated id, before any part is written; each manifest read once
            test_sets = check_test_parts(args.manifest_dir, parts)
            for part in parts:  # a missing audio file, before any part is decoded
                check_part_audio(test_sets[part], part, recognizer.sample_rate)
            for part in parts:
                recognitions = decode_part_sherpa(recognizer, args.manifest_dir, part,
                                                  args.batch_size, test_sets[part])
                wer, paths = write_results(out_dir, part, name, recognitions,
                                           result_settings(name, args,
                                                           recognizer.blank_penalty))
                logger.info("%s %s: WER %.2f%% -> %s", part, name, wer, paths["wer_summary"])
                print(paths["wer_summary"], flush=True)
    except (FileNotFoundError, ValueError, KeyError, OutputBusyError) as err:
        logger.error("asr decode-onnx: %s", err)
        return 2
    return 0
