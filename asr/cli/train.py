"""``asr train``: train the experiment of a recipe YAML into an experiment directory.

Examples::

    asr train --config recipes/mini_tts/conformer_transducer.yaml --exp-dir exp/transducer
    asr train --config recipes/librispeech/conformer_ctc_aed.yaml --exp-dir exp/ctc_aed \\
        --set train.max_epochs=30 optim.lr=2e-3
    torchrun --nproc-per-node 2 -m asr.cli.main train --config ... --exp-dir ...   # DDP
    asr train --config R.yaml --exp-dir E --set ... --searchers greedy aed_beam --check-only
    asr train --config R.yaml --exp-dir E --check-only --decode-arg=--searcher --decode-arg=beam \\
        --decode-arg=--set --decode-arg=search.beam_size=8

The resolved configuration (YAML plus ``--set`` overrides) is written to ``<exp-dir>/config.yaml``
(a run that fails before it writes a checkpoint puts the earlier one back, the one the directory's
checkpoints fit); training resumes from the newest ``checkpoint-N.pt`` in the directory, so
re-running the same command after a kill continues where it stopped. What rank 0 logs while it
trains goes to ``<exp-dir>/train.log`` too; a resumed run first moves the lines the killed run
logged after its checkpoint (and a run from step 0 an earlier run's whole log) to
``train-superseded.log``, so that ``train.log`` reads as one uninterrupted run, as the
TensorBoard logs do. One run at a time
trains into a directory: while one does (its rank 0 holds the lock ``.<exp-dir name>.lock``
beside it, :func:`asr.fileio.output_lock`), a second is refused at once, exit 2 naming it. A
checkpoint that does not fit is refused (exit 1 naming it, nothing written): an unreadable file,
another model's parameters, or another vocabulary than ``tokenizer_dir``'s (each checkpoint records
its tokens, so a tokenizer made again with as many but other pieces is caught too).

The configuration is checked before anything is read or written (exit 2 naming the key): with
``--searchers`` also that its heads have those searchers (as ``asr decode --searcher`` takes them;
:func:`asr.decoding.registry.select_searchers`; a searcher whose head has loss weight 0, untrained,
is warned of, once per searcher of ``--searchers``, ``--biasing-searchers`` and ``--decode-arg``),
with ``--biasing-searchers`` also that those take hotwords, with ``--decode-arg`` an ``asr decode``
command line against this config (:func:`asr.cli.decode_options.check_arguments`: its own parser,
its ``--set``, its searchers, its ``--device`` on this machine, its ``--num-threads``, its
``--epoch`` against ``train.max_epochs`` and its ``--val-best`` against it and an empty
``data.dev_cuts``; with ``--decode-prepared-parts`` its ``--parts`` against the test sets the
recipe prepares, with ``--decode-data-ready`` that their manifests and its ``search.lm_path`` are
there, a missing LM named with the stage that makes it where ``--decode-lm-made-by`` gives that
path), with ``--tokenizer-made-by STAGE`` that ``tokenizer_dir`` holds a tokenizer (a recipe that
starts after STAGE, which makes it), and ``--check-only`` stops there (exit 0 when it fits): the
recipe scripts check a recipe, their ``--train-args`` and their decoding options that way before
their first stage.

A config error exits with 2 naming the key. After ``--check-only``'s stop, a missing or unreadable
training, dev or noise manifest (or Shar directory) and a dev manifest (``data.dev_cuts``) that
names a cut id twice exit with 2 naming the config field, before anything is written; a relative
path of the config that is not found (``data.manifest_dir``, ``data.train_shar_dirs``,
``tokenizer_dir``...) also names the working directory it was looked for in, and says to run from
the one the config's paths are relative to (:func:`asr.config.config_path_hint`). ``--check-only``
reads no data: the recipes run it before their data stages, when the manifests of an earlier run
may be stale and about to be rewritten. Training manifests may repeat cuts (oversampling, e.g. a
manifest listed twice in ``data.train_cuts``): each repeat is trained as ``<id>_repeat<k>``, with
its own augmentation draws (:mod:`asr.data.cut_ids`).

Preemption: SIGTERM (SLURM, Kubernetes, spot instances) or SIGUSR1 (SLURM's
``--signal=USR1@90``) during training lets the step in progress finish, writes the checkpoint of
that step (every rank stops at the same one, whichever got the signal) and exits with
``128 + signal``: 143 for SIGTERM, 138 for SIGUSR1, told apart from a failure (1, 2) by a requeue
script, which runs the same command again to resume exactly there
(:mod:`asr.train.preemption`). Ctrl-C (SIGINT without torchrun) stops at once, writes nothing
and exits with 130, naming the newest checkpoint that the same command resumes from.

Under ``torchrun`` each process ends with its exit status once everything is written (the
checkpoints, the TensorBoard logs, ``train.log``; its ``atexit`` handlers run, its log and output
flushed), without the
interpreter's finalization, which torch's process-group threads could abort
(:mod:`asr.process_exit`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
from pathlib import Path

import yaml

from asr.checkpoints.io import CheckpointError, latest_checkpoint, list_checkpoints
from asr.cli.decode_options import check_arguments as check_decode_arguments
from asr.cli.options import add_num_threads_argument, check_experiment_dir, set_num_threads
from asr.config import ConfigError, load_config, save_config, to_dict
from asr.constants import torchrun_place
from asr.decoding.registry import select_searchers
from asr.experiment import CONFIG_FILE, ExperimentConfig
from asr.fileio import (
    OutputBusyError,
    OutputUnwritableError,
    output_lock,
    write_bytes_atomic,
)
from asr.run.train import (
    check_data_inputs,
    check_dev_cuts,
    check_training_config,
    train_experiment,
)
from asr.tokenizers import tokenizer_file
from asr.train.preemption import TrainingPreempted

logger = logging.getLogger(__name__)


#: ``asr train --help``'s epilog: the exit statuses a requeue script tells apart.
EXIT_STATUS_HELP = """\
exit status:
  0    trained to the end (train.max_epochs, train.max_steps or train.time_budget_s)
  1    training failed (a refused checkpoint, bad data, an error)
  2    bad arguments, config, data files, or a busy experiment directory
  143  preempted by SIGTERM, 138 by SIGUSR1 (128 + signal): the step in progress finished and
       its checkpoint was written (on every rank the same step); run the same command again to
       resume exactly there
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_STATUS_HELP
    parser.add_argument("--config", type=Path, required=True, help="recipe YAML (ExperimentConfig)")
    parser.add_argument("--exp-dir", type=Path, required=True,
                        help="experiment directory: config.yaml, checkpoints, logs, plot")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE",
                        help="config overrides, e.g. train.max_epochs=2 (default: none)")
    parser.add_argument("--searchers", nargs="+", default=[], metavar="NAME",
                        help="also check that the config's heads have these searchers, as asr "
                             "decode --searcher takes them (names, greedy / beam, all): exit 2 "
                             "before training otherwise (default: none)")
    parser.add_argument("--biasing-searchers", nargs="+", default=[], metavar="NAME",
                        help="as --searchers, and each must take hotwords (contextual biasing: "
                             "search.hotwords_file): exit 2 before training otherwise "
                             "(default: none)")
    parser.add_argument("--decode-arg", dest="decode_args", action="append", default=[],
                        metavar="ARG",
                        help="one argument of an asr decode command line to check against this "
                             "config before training (repeat it for each, written "
                             "--decode-arg=--set for one that starts with -; --exp-dir is this "
                             "one, and another is refused): parsed by asr decode's own parser, "
                             "its --set applied after this --set, its --searcher selected for "
                             "the heads, its --device resolved on this machine, its --epoch not "
                             "past train.max_epochs; exit 2 otherwise (default: none)")
    parser.add_argument("--decode-prepared-parts", nargs="+", default=[], metavar="PART",
                        help="the test sets a recipe's data stages will write into "
                             "data.manifest_dir: a --decode-arg line without --manifest-dir of "
                             "its own may decode only these --parts (but with "
                             "--decode-data-ready); exit 2 otherwise (default: any)")
    parser.add_argument("--decode-data-ready", action="store_true",
                        help="the data of the --decode-arg line exists already (a recipe "
                             "that starts after its data stages): its --manifest-dir (default "
                             "data.manifest_dir) must hold librispeech_cuts_<part>.jsonl.gz of "
                             "each --parts, and its search.lm_path must exist; exit 2 otherwise")
    parser.add_argument("--decode-lm-made-by", nargs=2, default=None, metavar=("PATH", "STAGE"),
                        help="the recipe's stage STAGE makes the LM file PATH: with "
                             "--decode-data-ready, a missing search.lm_path that is PATH is "
                             "named with STAGE (default: named alone)")
    parser.add_argument("--tokenizer-made-by", default=None, metavar="STAGE",
                        help="the recipe's stage STAGE makes tokenizer_dir and this run starts "
                             "after it: tokenizer_dir must hold a tokenizer (bpe.model or "
                             "tokens.txt) now; exit 2 naming the missing file and STAGE "
                             "otherwise (default: not checked, training loads it)")
    parser.add_argument("--check-only", action="store_true",
                        help="check the config (with --set and --searchers) and exit: 0 when it "
                             "fits, 2 naming what does not; reads no data and writes nothing")
    add_num_threads_argument(parser, zero="CPU cores / processes on this node")


def _config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    changes = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _config_changes(a, b, path + ".")
        elif a != b:
            changes.append(f"{path}: {a!r} -> {b!r}")
    return changes


def _save_resolved_config(cfg: ExperimentConfig, exp_dir: Path) -> None:
    path = exp_dir / CONFIG_FILE
    if path.is_file():
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        changes = _config_changes(old, to_dict(cfg))
        if changes:
            logger.warning("%s changes the configuration of %s: %s", "this run", path,
                           "; ".join(changes))
    save_config(cfg, path)


def _set_threads(requested: int) -> None:
    """``--num-threads``: 0 shares the node's cores among its processes (ValueError if < 0)."""
    if requested == 0:
        procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        requested = max(1, (os.cpu_count() or 1) // procs)
    set_num_threads(requested)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(ExperimentConfig, args.config, args.overrides)
        check_training_config(cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        logger.error("asr train: %s", err)
        return 2
    warned: set[str] = set()  # each searcher's untrained head is warned of once
    try:
        select_searchers(args.searchers, cfg.heads, search=cfg.search, warned=warned)
    except ValueError as err:
        logger.error("asr train: --searchers: %s", err)
        return 2
    try:
        select_searchers(args.biasing_searchers, cfg.heads, biasing=True, search=cfg.search,
                         warned=warned)
    except ValueError as err:
        logger.error("asr train: --biasing-searchers: %s", err)
        return 2
    try:
        if args.decode_args:
            check_decode_arguments(args.decode_args, args.exp_dir, args.config, args.overrides,
                                   args.decode_prepared_parts, args.decode_data_ready,
                                   None if args.decode_lm_made_by is None
                                   else tuple(args.decode_lm_made_by), warned)
    except ValueError as err:
        logger.error("asr train: --decode-arg: asr decode %s: %s", shlex.join(args.decode_args),
                     err)
        return 2
    if args.tokenizer_made_by is not None:
        try:
            tokenizer_file(cfg.tokenizer_dir)
        except FileNotFoundError as err:
            logger.error("asr train: tokenizer_dir: %s; %s makes it, and this run starts after it",
                         err, args.tokenizer_made_by)
            return 2
    try:
        _set_threads(args.num_threads)
        check_experiment_dir(args.exp_dir, must_exist=False)
    except ValueError as err:
        logger.error("asr train: %s", err)
        return 2
    if args.check_only:
        logger.info("asr train: %s fits (--check-only: nothing trained)", args.config)
        return 0
    try:
        main = torchrun_place()[0] == 0  # the rank setup_distributed sets the group up with
    except ValueError as err:
        logger.error("asr train: %s", err)
        return 2
    try:
        # rank 0 holds the experiment directory's lock until training ends: a second run into
        # it (a stage rerun while the first one still trains) would resume from the same
        # checkpoint and write the same checkpoints, config.yaml and logs beside it
        with output_lock(args.exp_dir) if main else contextlib.nullcontext():
            return _train(args, cfg, main)
    except (OutputBusyError, OutputUnwritableError) as err:
        logger.error("asr train: %s", err)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: unlike a preemption, no checkpoint of this step
        newest = latest_checkpoint(args.exp_dir)
        logger.error("asr train: interrupted; %s", "nothing saved yet: the same command starts "
                     "again" if newest is None else f"the same command resumes from {newest}, "
                     "the newest checkpoint (the steps after it are trained again)")
        return 130


def _train(args: argparse.Namespace, cfg: ExperimentConfig, main: bool) -> int:
    """``asr train`` after its checks of the command line: the data checks, config.yaml and
    training; returns the exit status."""
    try:  # the data stages come after a recipe's --check-only: its manifests may be stale then
        check_data_inputs(cfg)
        dev_cuts = check_dev_cuts(cfg)  # a repeated dev id would be scored twice in every dev WER
    except (FileNotFoundError, ValueError) as err:
        logger.error("asr train: %s", err)
        return 2
    config_path = args.exp_dir / CONFIG_FILE
    previous = config_path.read_bytes() if main and config_path.is_file() else None
    checkpoints = list_checkpoints(args.exp_dir)
    if main:
        args.exp_dir.mkdir(parents=True, exist_ok=True)
        _save_resolved_config(cfg, args.exp_dir)
    try:
        train_experiment(cfg, args.exp_dir, dev_cuts=dev_cuts)
    except TrainingPreempted as stop:  # checkpoint written: a requeue runs the command again
        logger.warning("asr train: %s", stop)
        return stop.exit_status
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        # stopped before this configuration wrote a checkpoint (a refused resume, missing or bad
        # data): config.yaml stays the one the directory's checkpoints fit
        if previous is not None and list_checkpoints(args.exp_dir) == checkpoints:
            write_bytes_atomic(config_path, previous)
        logger.error("asr train: %s", err, exc_info=logger.isEnabledFor(logging.DEBUG))
        return 1
    return 0
