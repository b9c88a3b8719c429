"""Entry point of the ``asr`` console script.

Each subcommand lives in its own module ``asr.cli.<name>`` exposing
``add_arguments(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int`` (the exit code). :data:`SUBCOMMANDS` names them with
their one-line help, so that ``asr --help`` imports no subcommand and ``asr NAME ...`` imports
only ``NAME``'s module (and with it only what that subcommand needs).

Every ``--help`` shows each option's default (:class:`HelpFormatter`), and a subcommand takes
its positional arguments between its options too (:class:`asr.constants.IntermixedParser`). A
failure ends in one ``asr NAME: ...`` line on stderr and a non-zero exit status: the subcommands
report what a user can cause themselves (exit 2 for bad arguments, 1 for failed work); anything
else they raise is reported here in one line (exit 1; ``--log-level DEBUG`` adds the traceback),
and Ctrl-C exits with 130.

Under ``torchrun`` (``asr train`` with DDP: ``RANK`` and ``WORLD_SIZE`` > 1 in the environment,
as :func:`asr.train.distributed.setup_distributed` reads them) rank 0 alone logs INFO lines to
the console (and to ``train.log``, :class:`asr.train.trainer.Trainer`), and alone the warnings
that are the same on every rank (a config's, the data filter's counts, dev cuts that training
holds too), as NeMo and Lightning warn on rank zero; the other ranks log their errors and the
warnings of their own (``extra=``:data:`asr.constants.PER_RANK`, e.g. the batches of a skipped
step that each saved) only, each line naming its rank (``WARNING rank 1 asr...``), so that the
console holds each progress line and each warning once and a failure on any rank still says
where it happened (:func:`console_logging`); any other process logs at ``--log-level``.

A process that set up a torch process group (``asr train`` under ``torchrun``) ends with that
status without the interpreter's finalization, its ``atexit`` handlers run and its logs and
output flushed first (:mod:`asr.process_exit`: torch's threads could abort the finalization).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from asr.constants import LOG_FORMAT, OLD_NAMES, PER_RANK, IntermixedParser, torchrun_place
from asr.process_exit import exit_status
from asr.version import __version__

#: name -> (module, one-line help).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synthesize": ("asr.cli.synthesize",
                   "synthesize a LibriSpeech-layout corpus with espeak-ng / flite voices"),
    "prepare": ("asr.cli.prepare",
                "prepare data: lhotse manifests from a LibriSpeech-layout corpus, then fbank "
                "features"),
    "shar": ("asr.cli.shar", "write cut manifests and their features/audio as Lhotse Shar shards"),
    "bpe": ("asr.cli.bpe", "train a BPE (sentencepiece) or character tokenizer from transcripts"),
    "lm": ("asr.cli.lm",
           "train a token or word n-gram LM (modified Kneser-Ney, ARPA) for shallow fusion"),
    "wer": ("asr.cli.wer",
            "compute WER (or CER) between two Kaldi text files ('utt_id TEXT' lines)"),
    "train": ("asr.cli.train",
              "train a model from a recipe YAML (resumes from the newest checkpoint in --exp-dir)"),
    "average": ("asr.cli.average",
                "average the weights of several checkpoints into a safetensors file"),
    "decode": ("asr.cli.decode",
               "decode test sets with a trained model; writes recogs / errs / wer-summary files"),
    "transcribe": ("asr.cli.transcribe",
                   "transcribe audio files (wav/flac/ogg/mp3, and m4a/aac/... when ffmpeg is "
                   "installed; any rate/channels; '-' = stdin) with a model package"),
    "export-package": ("asr.cli.export_package",
                       "write a model package (config, tokenizer, safetensors weights, metadata) "
                       "from an experiment"),
    "export-onnx": ("asr.cli.export_onnx",
                    "export a model package as ONNX graphs for the sherpa-onnx runtime (offline "
                    "or streaming transducer, CTC; optional int8)"),
    "decode-onnx": ("asr.cli.decode_onnx",
                    "decode test sets through sherpa-onnx with graphs written by asr export-onnx "
                    "(recogs / errs / wer-summary files)"),
    "serve": ("asr.cli.serve",
              "serve a streaming model over websockets (sherpa-onnx protocol) with a microphone "
              "web page"),
}

_LOG_LEVEL_HELP = "logging level: DEBUG, INFO, WARNING, ERROR (default: INFO)"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

logger = logging.getLogger("asr.cli")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Adds ``(default: X)`` to every option whose help does not already say ``(default...``;
    flags (``--overwrite``) and options whose default is None or empty are left as they are:
    their help says in words, ``(default: ...)``, what happens without them
    (``tests/cli/test_options.py`` checks that every option does one or the other)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or not action.option_strings or action.required:
            return text
        if action.default is None or action.default is argparse.SUPPRESS:
            return text
        if action.nargs == 0:  # store_true / store_false / count flags
            return text
        if isinstance(action.default, (list, tuple)) and not action.default:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is one), if any."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--log-level":
            skip = True
        elif word in SUBCOMMANDS:
            return word
        elif not word.startswith("-"):
            return None
    return None


def _log_level(value: str) -> str:
    """``--log-level``, any case; another word is a usage error (it was taken as INFO)."""
    if value.upper() not in _LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{value!r} is none of {', '.join(_LOG_LEVELS[:4])}")
    return value.upper()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``asr`` parser; only ``command``'s module is imported to add its options."""
    parser = argparse.ArgumentParser(prog="asr",
                                     description="End-to-end speech recognition toolkit",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--log-level", default="INFO", type=_log_level, help=_LOG_LEVEL_HELP)
    parser.add_argument("--version", action="version", version=f"asr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=IntermixedParser)
    for name, (_, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=HelpFormatter)
        _add_command_arguments(p, name, name == command)
    return parser


def command_parser(name: str, parser_class: type[IntermixedParser] = IntermixedParser,
                   **kwargs: Any) -> IntermixedParser:
    """The parser of the words after ``asr NAME``, the subcommand's parser of
    :func:`build_parser`, made alone as an instance of ``parser_class`` (with ``kwargs``): for
    a check of a command line that a later ``asr NAME`` will run, parsed by its rules and with
    its errors (``asr train --decode-arg``, :func:`asr.cli.decode_options.check_arguments`)."""
    help_text = SUBCOMMANDS[name][1]
    parser = parser_class(prog=f"asr {name}", description=help_text,
                          formatter_class=HelpFormatter, **kwargs)
    _add_command_arguments(parser, name, True)
    return parser


def _add_command_arguments(parser: argparse.ArgumentParser, name: str, options: bool) -> None:
    """Adds to subcommand ``name``'s ``parser`` its ``--log-level``, and with ``options`` its
    module's options and ``run`` (importing the module)."""
    # accepted after the subcommand too; SUPPRESS keeps the value given before it
    parser.add_argument("--log-level", default=argparse.SUPPRESS, type=_log_level,
                        help=_LOG_LEVEL_HELP)
    if options:
        module = importlib.import_module(SUBCOMMANDS[name][0])
        module.add_arguments(parser)
        parser.set_defaults(_run=module.run)


def console_logging(level: int, environ: Mapping[str, str] | None = None) -> None:
    """Sets up the console log (stderr, :data:`asr.constants.LOG_FORMAT`) at ``level``; under
    ``torchrun`` (``environ``'s, default ``os.environ``, as
    :func:`asr.constants.torchrun_place` reads it: the rank the process group is set up with)
    a rank other than 0 logs, naming itself in each line, its errors and the warnings marked
    :data:`asr.constants.PER_RANK` only (module docstring): its INFO lines and its other
    warnings, the same on every rank, would repeat rank 0's on the console. The root logger
    keeps ``level``, so that ``--log-level DEBUG`` still attaches the traceback of a failure on
    every rank."""
    try:
        rank, world_size, _ = torchrun_place(environ)
    except ValueError:  # not torchrun's: left to setup_distributed, which says so
        rank, world_size = 0, 1
    handler = logging.StreamHandler()
    fmt = LOG_FORMAT
    if world_size > 1 and rank != 0:
        handler.setLevel(max(level, logging.WARNING))
        handler.addFilter(_this_ranks_own)
        fmt = LOG_FORMAT.replace("%(levelname)s ", f"%(levelname)s rank {rank} ", 1)
    handler.setFormatter(logging.Formatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])


def _this_ranks_own(record: logging.LogRecord) -> bool:
    """Whether a rank other than 0 logs ``record``: an error, or a warning of its own
    (:data:`asr.constants.PER_RANK`); rank 0 logs the others, the same on every rank."""
    return record.levelno >= logging.ERROR or any(
        getattr(record, key, False) for key in PER_RANK)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``asr`` command line ``argv`` (default ``sys.argv[1:]``); returns its exit
    status, or ends the process with it where :func:`asr.process_exit.exit_status` does."""
    return exit_status(_main(argv))


def _main(argv: Sequence[str] | None) -> int:
    """:func:`main` up to its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command(argv)
    try:
        parser = build_parser(command)  # imports the subcommand (torch...): seconds
    except KeyboardInterrupt:
        print(f"asr {command or ''}: interrupted".replace(" :", ":"), file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    console_logging(getattr(logging, args.log_level))
    for old, new in getattr(args, OLD_NAMES, ()):  # noted while parsing, before the logging
        logger.warning("asr %s: %s is deprecated; use %s", args.command, old, new)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        logger.error("asr %s: interrupted", args.command)
        return 130
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, no traceback
        debug = logger.isEnabledFor(logging.DEBUG)
        logger.error("asr %s: %s: %s%s", args.command, type(err).__name__, err,
                     "" if debug else " (--log-level DEBUG shows where)", exc_info=debug)
        return 1


if __name__ == "__main__":
    sys.exit(main())
