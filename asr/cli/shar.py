"""``asr shar``: write cut manifests and their data as Lhotse Shar shards for training.

Examples::

    # stored fbank (what `asr prepare fbank` wrote), 1000 cuts per shard
    asr shar --cuts data/fbank/librispeech_cuts_train-clean-100.jsonl.gz \\
        data/fbank/librispeech_cuts_train-clean-360.jsonl.gz --output-dir data/shar/train
    # audio for on-the-fly features (data.on_the_fly_feats: true)
    asr shar --cuts data/manifests/cuts_train.jsonl.gz --fields recording=flac --output-dir D

Train from it with ``--set data.train_shar_dirs=[data/shar/train]`` (see :mod:`asr.data.shar`).
The manifests are concatenated in the order given (cuts that repeat an id are kept: training
gives each repeat its own id and augmentation, :mod:`asr.data.cut_ids`); shuffling happens per
epoch when training.
Run again, it keeps the directory while its fingerprint (``<output-dir>.fingerprint.json``) says
it was made from the same manifest bytes, data files (size and modification time), fields and
shard size, and writes it again otherwise; that check parses no cut (see
:func:`asr.data.shar.export_shar` for the one change it cannot see).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from asr.data.shar import export_shar

logger = logging.getLogger(__name__)

_FORMATS = {"features": ("lilcom", "numpy"), "recording": ("flac", "wav")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cuts",
        type=Path,
        nargs="+",
        required=True,
        help="cut manifests (.jsonl.gz) to write, concatenated in this order; one listed "
        "twice is oversampled (training names each repeat <id>_repeat<k>, with its own "
        "augmentation)",
    )
    parser.add_argument(
        "--output-dir", type=Path, required=True,
        help="Shar directory to create; one made from the same cuts and options is kept, one "
        "made from others is replaced"
    )
    parser.add_argument(
        "--fields",
        nargs="+",
        default=["features=lilcom"],
        help="FIELD=FORMAT pairs: features=lilcom|numpy, recording=flac|wav "
        "(default: features=lilcom)",
    )
    parser.add_argument("--shard-size", type=int, default=1000, help="cuts per shard")
    parser.add_argument("--num-jobs", type=int, default=1, help="parallel writer processes")


def parse_fields(pairs: list[str]) -> dict[str, str]:
    """``["features=lilcom"]`` -> ``{"features": "lilcom"}``; raises ValueError naming a bad
    pair."""
    fields = {}
    for pair in pairs:
        field, sep, fmt = pair.partition("=")
        if not sep or field not in _FORMATS or fmt not in _FORMATS[field]:
            choices = ", ".join(f"{f}={'|'.join(v)}" for f, v in _FORMATS.items())
            raise ValueError(f"--fields: bad entry {pair!r}; expected one of {choices}")
        fields[field] = fmt
    return fields


def run(args: argparse.Namespace) -> int:
    try:
        fields = parse_fields(args.fields)
        written = export_shar(args.cuts, args.output_dir, fields, args.shard_size, args.num_jobs)
    except (OSError, ValueError) as err:
        logger.error("asr shar: %s", err)
        return 2
    # written now or kept from an earlier run (export_shar logged which)
    logger.info("%s holds these shards per field: %s", args.output_dir,
                {f: len(p) for f, p in written.items()})
    return 0
