"""The options of ``asr decode`` (:mod:`asr.cli.decode`), and the check of a decode command line
before the experiment it decodes is trained (:func:`check_arguments`), which ``asr train
--check-only --decode-arg`` runs for the recipe scripts. Light: it loads no model, no runtime.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import NoReturn

from asr.cli.main import command_parser
from asr.cli.options import (
    add_checkpoint_arguments,
    add_device_argument,
    add_num_threads_argument,
    check_num_threads,
    device_from_args,
    part_name,
    searcher_name_or_all,
    selection_from_args,
    tag_name,
)
from asr.config import load_config
from asr.constants import IntermixedParser
from asr.data.librispeech import cuts_path
from asr.decoding.lm import check_lm_file
from asr.decoding.registry import select_searchers
from asr.experiment import ExperimentConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``asr decode``."""
    add_checkpoint_arguments(parser)
    parser.add_argument("--searcher", nargs="+", required=True, dest="searchers", metavar="NAME",
                        type=searcher_name_or_all,
                        help="searcher names (e.g. transducer_greedy ctc_prefix_beam aed_beam), "
                             "'greedy' / 'beam' for those of the model's first trained head, or "
                             "'all' for every searcher the model's heads support")
    parser.add_argument("--parts", nargs="+", type=part_name, default=["test-clean"],
                        help="test sets to decode (one without cuts, or with a cut id twice, is "
                             "an error)")
    parser.add_argument("--manifest-dir", type=Path, default=None,
                        help="where librispeech_cuts_<part>.jsonl.gz are "
                             "(default: data.manifest_dir)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE",
                        help="experiment config overrides; search.<field>=.. for the searchers "
                             "(default: none)")
    parser.add_argument("--tag", type=tag_name, default="",
                        help="suffix of the result directory and files, e.g. full-context for "
                             "a decode with --set encoder.chunk_size=0 encoder.left_chunks=-1 "
                             "(default: none)")
    add_device_argument(parser)
    add_num_threads_argument(parser)


class _RaisingParser(IntermixedParser):
    """``asr decode``'s kind of parser, raising ValueError with argparse's message where
    argparse would exit."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def check_arguments(
    argv: Sequence[str],
    exp_dir: Path,
    config: Path,
    train_overrides: Sequence[str] = (),
    prepared_parts: Collection[str] = (),
    data_ready: bool = False,
    lm_made_by: tuple[str, str] | None = None,
    warned: set[str] | None = None,
) -> None:
    """Checks an ``asr decode`` command line before the experiment it decodes is trained: what
    a recipe script will decode with, checked before its first stage (``asr train --check-only
    --decode-arg``).

    The line (``--exp-dir`` may be left out: ``exp_dir``; another one is refused, as the line
    would decode another experiment than the one checked) is parsed by the command's own parser,
    its weight selection checked, its ``--set`` applied to the recipe ``config`` after
    ``train_overrides`` (as they will be applied to the trained experiment's config), its
    ``--epoch`` checked to be one that training writes (not past ``train.max_epochs``), its
    ``--val-best`` to choose among as many epochs and from validation losses that training
    records (``data.dev_cuts`` not empty), and its
    ``--searcher`` selected for that config's heads. Its ``--device`` is resolved by the rule
    the decode applies (:func:`asr.device.resolve_device`: a name torch does not know, CUDA
    without a GPU, ``cuda:N`` past this machine's GPUs) and its ``--num-threads`` checked
    (:func:`asr.cli.options.check_num_threads`), on this machine, where the recipe decodes.
    Its test sets (``--parts`` in ``--manifest-dir``, default the config's
    ``data.manifest_dir``) and its ``search.lm_path`` are checked as far as they are known
    before the recipe's data stages ran: see ``prepared_parts`` and ``data_ready``.

    Args:
        argv: the ``asr decode`` arguments.
        exp_dir: the experiment directory the recipe trains.
        config: the recipe YAML.
        train_overrides: the ``--set`` of training, applied before the line's own ``--set``.
        prepared_parts: the test sets the recipe's data stages will write into
            ``data.manifest_dir`` (empty: not known). A line without ``--manifest-dir`` of
            its own may decode only these, unless ``data_ready``.
        data_ready: the recipe's data stages ran already (it starts after them): the
            manifest directory must hold each part's ``librispeech_cuts_<part>.jsonl.gz``,
            and the n-gram LM ``search.lm_path`` (where set) must exist.
        lm_made_by: (PATH, STAGE): the recipe's stage STAGE makes the LM file PATH; a missing
            ``search.lm_path`` (with ``data_ready``) that is PATH is named with STAGE, one of
            the line's own (e.g. a ``--set search.lm_path`` of the user's) as it is.
        warned: the searchers already warned of for an untrained head
            (:func:`asr.decoding.registry.select_searchers`): not warned of again.

    Raises:
        ValueError: for an option the command does not have or a bad value (argparse's
            message, or one naming ``--device`` / ``--num-threads`` / ``--epoch`` /
            ``--val-best`` / ``--parts`` / ``--manifest-dir`` / ``search.lm_path``), an
            inconsistent weight selection, a bad ``--set`` key or value (ConfigError), or
            searchers the heads do not have.
    """
    # asr decode's own parser, by its rules (the --log-level it takes too), without --help
    parser = command_parser("decode", _RaisingParser, add_help=False)
    args = parser.parse_args(["--exp-dir", str(exp_dir), *argv])
    if Path(args.exp_dir).resolve() != Path(exp_dir).resolve():  # its own, given after ours
        raise ValueError(f"argument --exp-dir: {args.exp_dir} is not the experiment this run "
                         f"trains ({exp_dir}), whose config the line is checked against: leave "
                         "--exp-dir out of the line")
    device_from_args(args.device)
    check_num_threads(args.num_threads)
    selection_from_args(args, check_dir=False)
    cfg = load_config(ExperimentConfig, config, [*train_overrides, *args.overrides])
    select_searchers(args.searchers, cfg.heads, search=cfg.search, warned=warned)
    if args.epoch is not None and args.epoch > cfg.train.max_epochs:
        raise ValueError(f"argument --epoch: {args.epoch} is past train.max_epochs "
                         f"{cfg.train.max_epochs}: training writes no epoch-{args.epoch}.pt")
    if args.val_best is not None:
        if args.val_best > cfg.train.max_epochs:
            raise ValueError(f"argument --val-best: {args.val_best} is more epochs than "
                             f"train.max_epochs {cfg.train.max_epochs}: training writes only "
                             f"{cfg.train.max_epochs} epoch-N.pt")
        if not cfg.data.dev_cuts:
            raise ValueError("argument --val-best: data.dev_cuts is empty: training records no "
                             "validation loss to choose its epochs by")
    _check_test_sets(args.parts, args.manifest_dir, Path(cfg.data.manifest_dir), prepared_parts,
                     data_ready)
    if data_ready:
        lm_path = cfg.search.lm_path
        if lm_made_by is not None and lm_path is not None and Path(lm_made_by[0]) == Path(lm_path):
            try:  # the recipe's own LM: the stage that makes it says where, not the config hint
                check_lm_file(lm_path, hint=False)
            except ValueError as err:
                raise ValueError(f"{err} (in {Path.cwd()}), which {lm_made_by[1]} makes; this "
                                 "run starts after it") from None
        check_lm_file(lm_path)


def _check_test_sets(parts: Sequence[str], manifest_dir: Path | None, prepared_dir: Path,
                     prepared_parts: Collection[str], data_ready: bool) -> None:
    """:func:`check_arguments`' check of ``--parts`` in ``manifest_dir`` (None: the recipe's
    ``prepared_dir``, which its data stages fill with ``prepared_parts``)."""
    directory = prepared_dir if manifest_dir is None else manifest_dir
    option = "data.manifest_dir" if manifest_dir is None else "argument --manifest-dir"
    if data_ready:
        if not directory.is_dir():
            raise ValueError(f"{option}: no directory {directory}")
        missing = [str(cuts_path(directory, part)) for part in parts
                   if not cuts_path(directory, part).is_file()]
        if missing:
            raise ValueError(f"argument --parts: no test set {', '.join(missing)} (in {option} "
                             f"{directory})")
    elif prepared_parts and manifest_dir is None:
        unknown = [part for part in parts if part not in prepared_parts]
        if unknown:
            raise ValueError(
                f"argument --parts: {', '.join(unknown)}: not among the test sets the recipe "
                f"prepares in {prepared_dir} ({', '.join(prepared_parts)}); give --manifest-dir "
                f"for test sets of your own")
