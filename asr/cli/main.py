"""Entry point of the ``asr`` console script.

Each subcommand lives in its own module ``asr.cli.<name>`` exposing:

* ``HELP``: one-line description,
* ``add_arguments(parser: argparse.ArgumentParser) -> None``,
* ``run(args: argparse.Namespace) -> int`` (the exit code).

Modules are imported lazily, only for the subcommand being run, so ``asr --help`` stays fast and
a subcommand's heavy dependencies never slow down another.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# name -> module; a subcommand is listed here once its module exists.
SUBCOMMANDS: dict[str, str] = {
    "synthesize": "asr.cli.synthesize",
    "prepare": "asr.cli.prepare",
    "shar": "asr.cli.shar",
    "bpe": "asr.cli.bpe",
    "lm": "asr.cli.lm",
    "wer": "asr.cli.wer",
    "train": "asr.cli.train",
    "average": "asr.cli.average",
    "decode": "asr.cli.decode",
    "transcribe": "asr.cli.transcribe",
    "export-package": "asr.cli.export_package",
    "serve": "asr.cli.serve",
}


def _available() -> dict[str, str]:
    return {
        name: module
        for name, module in SUBCOMMANDS.items()
        if importlib.util.find_spec(module) is not None
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="End-to-end speech recognition toolkit")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in _available().items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
