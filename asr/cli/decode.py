"""``asr decode``: recognise test sets with a trained experiment and write WER reports.

Examples::

    asr decode --exp-dir exp/transducer --searcher greedy beam --epoch 30 --avg 9
    asr decode --exp-dir exp/transducer --searcher transducer_beam --set search.beam_size=4 \\
        --parts test-clean test-other
    asr decode --exp-dir exp/ctc_aed --searcher attention_rescoring \\
        --checkpoint exp/ctc_aed/averaged-epoch-30-avg-9.safetensors

``--searcher`` takes searcher names, the roles ``greedy`` / ``beam`` (the greedy or beam searcher
of the model's first trained head, ``heads.loss_weights`` > 0:
:func:`asr.decoding.registry.searcher_for`) or ``all`` (every searcher
the heads support); a name the model's heads do not support is refused (exit 2) before anything
is decoded, and before any weights are read (checked against the experiment's ``config.yaml``
first, then against the config of the weights read; a missing test set too), and one whose
head the experiment's ``heads.loss_weights`` leaves at 0 (built, not trained) is warned of, as
``asr train --check-only`` does. Per test set ``PART`` and searcher it
writes, into ``<exp-dir>/<searcher>/`` (icefall's layout; ``<searcher>-<tag>`` with ``--tag``),
``recogs-PART-<searcher>.txt``, ``errs-PART-<searcher>.txt`` (alignments, per-utterance errors,
most frequent errors) and ``wer-summary-PART-<searcher>.txt``, logs the WER and prints the
summary file's path. Test cuts are ``<manifest-dir>/librispeech_cuts_PART.jsonl.gz``, by default
in the experiment's ``data.manifest_dir``. Relative paths of the experiment's config
(the recipes' ``tokenizer_dir: data/lang_bpe_500``) are read from the current directory: one not
found there is an error that says so, to run from the directory training ran in or to pass
``--set tokenizer_dir=DIR`` / ``--manifest-dir DIR`` (a relative path that this command line's
``--set`` gave is the user's own: its error names the current directory it was read from).
``--set`` overrides the experiment config: ``search.X=..`` the searchers' options (the config's
``search`` section), any other key the rest (e.g. ``data.max_duration=300``).

The result files of one test set and searcher are made by one run at a time: a run takes the
lock of each summary file it will write (:func:`asr.fileio.output_lock`) before it decodes
anything, and a second run on one of them is refused (exit 2, naming it); each file is written
atomically, after the earlier summary is removed, and the summary last: a run stopped on the way
leaves no summary, so a summary file means that the recogs and errs beside it are complete and
of its run (:mod:`asr.run.evaluate`). A test set that holds a cut id twice (it would be decoded
and scored twice) is refused before anything is decoded or written: exit 2, naming the file, the
id and both lines; so is a test set without cuts (its WER would read ``0.00``). A test set whose
transcripts are all empty is decoded and written, its WER (``0.00`` or ``inf``) with the warning
``asr wer`` gives that the rate is undefined.

Its options, and :func:`asr.cli.decode_options.check_arguments` that checks a decode command
line before the experiment is trained with them (``asr train --check-only --decode-arg``: the
recipe scripts' check of their decode stage), are in :mod:`asr.cli.decode_options`, which loads
no model and no runtime.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from asr.checkpoints.io import CheckpointError
from asr.cli.decode_options import add_arguments, check_arguments
from asr.cli.options import device_from_args, selection_from_args, set_num_threads
from asr.config import ConfigError
from asr.data.dataset import checked_manifests
from asr.data.filtering import check_cut_files
from asr.data.librispeech import check_test_parts, cuts_path
from asr.decoding import build_searcher
from asr.decoding.registry import select_searchers
from asr.experiment import load_experiment_config, load_trained_model, relative_path_advice
from asr.fileio import OutputBusyError, output_locks
from asr.run.evaluate import decode_part, result_paths, write_results

__all__ = ["add_arguments", "check_arguments", "run"]

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    try:
        set_num_threads(args.num_threads)
    except ValueError as err:
        logger.error("asr decode: %s", err)
        return 2
    search_settings = dict(o[len("search."):].split("=", 1) for o in args.overrides
                           if o.startswith("search.") and "=" in o)
    try:
        device = device_from_args(args.device)
        selection = selection_from_args(args)
        warned: set[str] = set()  # each searcher's untrained head is warned of once
        parts = list(dict.fromkeys(args.parts))  # one lock, and one decode, per part
        try:  # before any weights are read: the searchers fit the heads of config.yaml, and
            # the test sets' manifests are there (their first lines: they are read below)
            planned = load_experiment_config(args.exp_dir, args.overrides)
        except FileNotFoundError:  # no config.yaml: the checkpoint's own config, below
            pass
        else:
            select_searchers(args.searchers, planned.heads, search=planned.search, warned=warned)
            test_dir = args.manifest_dir or planned.data.manifest_dir
            with _advised(args, test_dir):
                checked_manifests(test_dir, [cuts_path(test_dir, part).name for part in parts],
                                  read_by_lhotse=False)
        cfg, tokenizer, model, tag = load_trained_model(
            args.exp_dir, selection, args.overrides, device)
        # all checked before any decoding; by the config the model is built from, whose
        # heads.loss_weights tell a searcher of an untrained head (warned of)
        names = select_searchers(args.searchers, cfg.heads, search=cfg.search, warned=warned)
        manifest_dir = args.manifest_dir or cfg.data.manifest_dir
        settings = {"weights": tag, **search_settings}
        labels = {name: f"{name}-{args.tag}" if args.tag else name for name in names}
        with output_locks(result_paths(args.exp_dir / label, part, label)["wer_summary"]
                          for label in labels.values() for part in parts):  # before any work
            # a repeated id, before any part is written; each manifest read once
            with _advised(args, manifest_dir):
                test_sets = check_test_parts(manifest_dir, parts)
            field = "recording" if cfg.data.on_the_fly_feats else "features"
            for part in parts:  # a missing audio or feature file, before any part is decoded
                check_cut_files(test_sets[part], field, f"test set {part}")
            for name, label in labels.items():
                searcher = build_searcher(name, model, cfg.search, tokenizer=tokenizer)
                for part in parts:
                    recognitions = decode_part(model, searcher, cfg, tokenizer, part,
                                               manifest_dir, device, test_sets[part])
                    wer, paths = write_results(args.exp_dir / label, part, label, recognitions,
                                               settings)
                    logger.info("%s %s (%s): WER %.2f%% -> %s", part, name, tag, wer,
                                paths["wer_summary"])
                    print(paths["wer_summary"], flush=True)
    except (ConfigError, FileNotFoundError, ValueError, CheckpointError, OutputBusyError) as err:
        logger.error("asr decode: %s", err, exc_info=logger.isEnabledFor(logging.DEBUG))
        return 2
    return 0


@contextlib.contextmanager
def _advised(args: argparse.Namespace, manifest_dir: str | Path) -> Iterator[None]:
    """Adds to a missing test set of the experiment's ``data.manifest_dir`` (not of
    ``--manifest-dir``) where its relative path was looked for, and what to pass."""
    try:
        yield
    except FileNotFoundError as err:
        if args.manifest_dir is not None:
            raise
        advice = relative_path_advice(args.exp_dir, "data.manifest_dir", manifest_dir,
                                      "--manifest-dir DIR", args.overrides)
        raise FileNotFoundError(f"{err}{advice}") from err
