"""Command-line options shared by several subcommands, and options generated from config
dataclasses (one declaration: the dataclass, its defaults and its docstring)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import os
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

import torch

from asr.checkpoints.selection import WeightSelection
from asr.constants import DEFAULT_MAX_LEFT_SECONDS, METADATA_FILE, hotword_score
from asr.decoding.registry import check_searcher_name
from asr.device import DEVICE_HELP, resolve_device
from asr.fileio import is_control

__all__ = [
    "add_checkpoint_arguments",
    "add_dataclass_arguments",
    "add_device_argument",
    "add_num_threads_argument",
    "add_search_arguments",
    "add_streaming_arguments",
    "attribute_docs",
    "check_experiment_dir",
    "check_num_threads",
    "dataclass_from_args",
    "device_from_args",
    "hotword_score",
    "is_override_word",
    "selection_from_args",
    "set_num_threads",
]

T = TypeVar("T")

logger = logging.getLogger(__name__)


def add_checkpoint_arguments(parser: argparse.ArgumentParser, newest_by_default: bool = True
                             ) -> None:
    """Options that choose model weights in an experiment directory (``asr average``, ``asr
    decode``, ``asr export-package``; see :mod:`asr.checkpoints.selection`).

    Args:
        parser: the subcommand's parser.
        newest_by_default: without ``--epoch``, ``--last`` and ``--checkpoint`` the command uses
            the newest ``checkpoint-N.pt``; False: it needs one of them (``asr average``), as
            the help then says.
    """
    parser.add_argument("--exp-dir", type=Path, required=True, help="experiment directory")
    default = ("default: without --epoch, --last, --val-best and --checkpoint, the newest "
               "checkpoint-N.pt" if newest_by_default
               else "required: this, --last, --val-best or --checkpoint")
    parser.add_argument("--epoch", type=int, default=None,
                        help=f"last epoch to use, epoch-N.pt ({default})")
    parser.add_argument("--avg", type=int, default=1,
                        help="number of epochs averaged (with --epoch; at most --epoch)")
    parser.add_argument("--use-averaged-model", action="store_true",
                        help="with --epoch/--avg: average the running averages over all steps")
    parser.add_argument("--last", type=int, default=None,
                        help="average the newest N step checkpoints, checkpoint-N.pt (default: "
                             "see --epoch)")
    parser.add_argument("--val-best", type=int, default=None, metavar="N",
                        help="average the N epoch checkpoints epoch-E.pt of lowest validation "
                             "loss, as recorded at each epoch's end (WeNet's --val_best) "
                             "(default: see --epoch)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="one checkpoint (.pt) or weights file (.safetensors) instead "
                             "(default: see --epoch)")


def part_name(text: str) -> str:
    """An argparse type for a data set part (``test-clean``): one plain name, since it names
    files (``librispeech_cuts_<part>.jsonl.gz``, ``recogs-<part>-...``) inside the given
    directories; a path (``../x``, ``a/b``) would put them elsewhere."""
    if not text or text in (".", "..") or any(sep in text for sep in ("/", "\\", "\0")):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a part name (one name such as test-clean, no path)")
    return text


def tag_name(text: str) -> str:
    """An argparse type for ``--tag``: empty, or text that suffixes file and directory names
    (``recogs-<part>-<searcher>-<tag>.txt``), so without a path separator (``a/b`` would put
    the results elsewhere) or a control character (a tab or newline in a file name)."""
    if any(sep in text for sep in ("/", "\\")) or any(is_control(ch) for ch in text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a tag (part of a file name: no path separator or control "
            "character)")
    return text


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``, the same in every subcommand that runs a model (resolved by
    :func:`asr.device.resolve_device`)."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def device_from_args(device: str) -> torch.device:
    """The ``--device`` of a command line resolved on this machine
    (:func:`asr.device.resolve_device`), for every command that runs a model and for the
    recipes' early check of ``asr decode``'s options.

    Raises:
        ValueError: naming ``--device``, for a name torch does not know or a device this
            machine lacks.
    """
    try:
        return resolve_device(device)
    except ValueError as err:
        raise ValueError(f"argument --device: {err}") from err


def add_num_threads_argument(parser: argparse.ArgumentParser, default: int = 0,
                             why: str = "", zero: str = "torch's defaults") -> None:
    """``--num-threads N``, the same in every subcommand that runs a model in PyTorch (``asr
    transcribe``, ``asr decode``, ``asr serve``, ``asr train``; applied by
    :func:`set_num_threads`).

    Args:
        parser: the subcommand's parser.
        default: its default.
        why: a reason for that default, said in the help.
        zero: what 0 means for the subcommand (the caller resolves it when not torch's own
            thread counts).
    """
    parser.add_argument("--num-threads", type=int, default=default, metavar="N",
                        help="torch intra-op (torch.set_num_threads) and inter-op threads; 0: "
                             f"{zero} (default: {default}{why})")


def check_num_threads(num_threads: int) -> None:
    """Refuses a ``--num-threads`` that :func:`set_num_threads` cannot apply, without applying
    it (``asr train --check-only --decode-arg`` checks a decode's before training).

    Raises:
        ValueError: a negative ``num_threads``, naming the option.
    """
    if num_threads < 0:
        raise ValueError(f"--num-threads must be >= 0, got {num_threads}")


def set_num_threads(num_threads: int) -> None:
    """Applies ``--num-threads``: N > 0 sets torch's intra-op threads and its inter-op threads
    (these only while this process has run no inter-op parallel work yet; else left as they are,
    logged); 0 leaves torch's defaults.

    Raises:
        ValueError: a negative ``num_threads`` (:func:`check_num_threads`).
    """
    check_num_threads(num_threads)
    if num_threads == 0:
        return
    torch.set_num_threads(num_threads)
    if torch.get_num_interop_threads() == num_threads:
        return
    try:
        torch.set_num_interop_threads(num_threads)
    except RuntimeError as err:  # torch allows it once, before any inter-op work
        logger.debug("inter-op threads left at %d: %s", torch.get_num_interop_threads(), err)


def searcher_name(text: str) -> str:
    """The type of ``--searcher``: a searcher name or a role (``greedy``, ``beam``); another
    is a usage error (exit 2) when the command line is parsed, before a model is read
    (:func:`asr.decoding.registry.check_searcher_name`)."""
    return _checked_searcher_name(text)


def searcher_name_or_all(text: str) -> str:
    """The type of ``asr decode --searcher``'s words: :func:`searcher_name`'s, or ``all``."""
    return _checked_searcher_name(text, ("all",))


def _checked_searcher_name(text: str, also: tuple[str, ...] = ()) -> str:
    try:
        return check_searcher_name(text, also=also)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_search_arguments(parser: argparse.ArgumentParser, searcher_default: str,
                         search_default: str = "the package's own, with its LM") -> None:
    """``--searcher NAME`` and ``--set search.FIELD=VALUE ...``: the search of a model package
    (``asr transcribe``, ``asr serve``, ``asr export-package``), as ``asr decode`` takes them.

    Args:
        parser: the subcommand's parser.
        searcher_default: the default searcher, said in the help (e.g. "the package's").
        search_default: the default options, said in the help.
    """
    parser.add_argument("--searcher", default=None, metavar="NAME", type=searcher_name,
                        help="searcher: greedy / beam (those of the model's first trained head) "
                             "or a name such as transducer_beam, ctc_prefix_beam "
                             f"(default: {searcher_default})")
    overrides = parser.add_argument(
        "--set", dest="search_overrides", nargs="+", action="extend", default=[],
        metavar="search.FIELD=VALUE",
        help="search options, e.g. search.beam_size=8 search.lm_weight=0.3; in a command that "
             "takes files, --set ends at the first word without '=' or that names a file, "
             "which is a file "
             f"(default: {search_default})")
    # asr.constants.IntermixedParser: in a parser with positional arguments --set stops at the
    # first word that is no override, so a file after it stays in its place among the files
    # (asr transcribe a.wav --set X b.wav c.wav)
    overrides.takes_word = is_override_word


def is_override_word(word: str) -> bool:
    """Whether ``word``, after ``--set``, is one of its ``FIELD=VALUE`` overrides: it holds a
    ``=``, starts with no ``-`` (an option) and names no file (``take=1.wav``, a file)."""
    return "=" in word and not word.startswith("-") and not os.path.exists(word)


def add_streaming_arguments(parser: argparse.ArgumentParser) -> None:
    """``--chunk-size N``, ``--left-chunks N`` and ``--max-left-seconds S``: the chunking of a
    streaming decode (``asr transcribe --streaming``, ``asr serve``), as WeNet's
    ``--chunk_size`` and ``--num_decoding_left_chunks``, and the first two the chunk mask of
    an offline ``asr transcribe`` (WeNet's ``decoding_chunk_size``); by default the package's
    own. The bound of ``-1`` is checked by :class:`asr.runtime.streaming.StreamingRecognizer`."""
    parser.add_argument("--chunk-size", type=int, default=None, metavar="N",
                        help="encoder frames per chunk, > 0: the chunks of a stream, or the "
                             "chunk mask of an offline transcribe (default: the package's)")
    parser.add_argument("--left-chunks", type=int, default=None, metavar="N",
                        help="chunks of left context; -1 (any negative) keeps every earlier "
                             "frame (streaming: up to --max-left-seconds) (default: the "
                             "package's)")
    parser.add_argument("--max-left-seconds", type=float, default=None, metavar="S",
                        help="streaming with --left-chunks -1: the most left context a chunk "
                             "sees, in whole chunks (at least one); a stream of at most that "
                             "plus one chunk decodes as with unlimited context, past it its "
                             "context slides (each chunk sees the last S seconds, as "
                             "--left-chunks S/chunk would) so its memory and time stop growing; "
                             "inf: no bound, memory and time grow with the stream (default: "
                             f"{DEFAULT_MAX_LEFT_SECONDS:g})")


def check_experiment_dir(exp_dir: str | Path, must_exist: bool = True) -> None:
    """Checks ``--exp-dir`` before any work: a directory (that exists, with ``must_exist``)
    and not a model package, which ``asr train`` would overwrite and the checkpoint options
    would find no checkpoints in.

    Raises:
        ValueError: naming what ``exp_dir`` is instead.
    """
    exp_dir = Path(exp_dir)
    if not exp_dir.exists():
        if must_exist:
            raise ValueError(f"--exp-dir {exp_dir}: no such experiment directory")
        return
    if not exp_dir.is_dir():
        raise ValueError(f"--exp-dir {exp_dir} is a file, not an experiment directory")
    if (exp_dir / METADATA_FILE).is_file():
        raise ValueError(f"--exp-dir {exp_dir} is a model package (asr export-package), not an "
                         "experiment directory (asr train)")


def selection_from_args(args: argparse.Namespace, check_dir: bool = True) -> WeightSelection:
    """The :class:`WeightSelection` described by the checkpoint options (ValueError if it is
    inconsistent, or with ``check_dir`` if ``--exp-dir`` is not an experiment directory:
    :func:`check_experiment_dir`)."""
    if check_dir:
        check_experiment_dir(args.exp_dir)
    return WeightSelection(epoch=args.epoch, avg=args.avg, last=args.last,
                           checkpoint=args.checkpoint, use_averaged_model=args.use_averaged_model,
                           val_best=args.val_best)


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> its description in the ``Attributes:`` section of ``cls``'s docstring."""
    doc = inspect.getdoc(cls) or ""
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    docs: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        match = re.match(r"^    (\w+): (.*)$", line)
        if match:
            name, text = match.groups()
            docs[name] = text.strip()
        elif name is not None and line.startswith("        "):
            docs[name] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            break
    return docs


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type,
                            exclude: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` option per field of dataclass ``cls`` (bool, int, float or str),
    with the field's default and its docstring line as help."""
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        kind = hints[f.name]
        if kind not in (bool, int, float, str):
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line option for {kind}")
        flag = "--" + f.name.replace("_", "-")
        text = docs.get(f.name, f.name)  # the formatter of asr.cli.main adds the default
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=text)
        else:
            parser.add_argument(flag, type=kind, default=f.default, help=text)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **extra: Any) -> T:
    """``cls`` built from the options :func:`add_dataclass_arguments` added (plus ``extra``);
    its own checks raise ValueError."""
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
    }
    return cls(**{**values, **extra})
