"""``asr decode``: recognise test sets with a trained experiment and write WER reports.

Examples::

    asr decode --exp-dir exp/transducer --searcher transducer_greedy --epoch 30 --avg 9
    asr decode --exp-dir exp/transducer --searcher transducer_beam --set search.beam_size=4 \\
        --parts test-clean test-other
    asr decode --exp-dir exp/ctc_aed --searcher attention_rescoring \\
        --checkpoint exp/ctc_aed/averaged-epoch-30-avg-9.safetensors

Per test set ``PART`` it writes, into ``<exp-dir>/<searcher>/`` (icefall's layout),
``recogs-PART-<searcher>.txt``, ``errs-PART-<searcher>.txt`` (alignments, per-utterance errors,
most frequent errors) and ``wer-summary-PART-<searcher>.txt``, and logs the WER. Test cuts are
``<manifest-dir>/librispeech_cuts_PART.jsonl.gz``, by default in the experiment's
``data.manifest_dir``. ``--set search.X=..`` sets searcher options (:class:`SearchConfig`); any
other ``--set`` key overrides the experiment config (e.g. ``data.max_duration=300``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from asr.cli.average import add_checkpoint_arguments, selection_from_args

HELP = "decode test sets with a trained model; writes recogs / errs / wer-summary files"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser)
    parser.add_argument("--searcher", nargs="+", required=True, dest="searchers", metavar="NAME",
                        help="search method(s), e.g. transducer_greedy ctc_prefix_beam aed_beam; "
                             "'all': every searcher the model's heads support")
    parser.add_argument("--parts", nargs="+", default=["test-clean"], help="test sets to decode")
    parser.add_argument("--manifest-dir", type=Path, default=None,
                        help="where librispeech_cuts_<part>.jsonl.gz are (default: data.manifest_dir)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE",
                        help="search.<field>=.. for the searcher, other keys for the experiment")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--num-threads", type=int, default=0, help="torch threads (0: all cores)")


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(``search.*`` overrides without the prefix, the other overrides)."""
    search = [o[len("search."):] for o in overrides if o.startswith("search.")]
    other = [o for o in overrides if not o.startswith("search.")]
    return search, other


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def decode_part(model, searcher, cfg, tokenizer, part: str, manifest_dir: Path, device):
    """Recognitions of one test set (all its cuts, unfiltered)."""
    from asr.data.dataset import load_cuts, make_dataloader
    from asr.data.librispeech import cuts_path
    from asr.train.evaluate import recognize

    cuts = load_cuts(manifest_dir, [cuts_path(manifest_dir, part).name]).to_eager()
    loader = make_dataloader(cuts, cfg.data, tokenizer, train=False, rank=0, world_size=1)
    recognitions, seconds = recognize(model, searcher, loader, tokenizer, device)
    audio = sum(c.duration for c in cuts)
    logger.info("%s: %d utterances, %.1f s of audio decoded in %.1f s (RTF %.3f)", part,
                len(recognitions), audio, seconds, seconds / max(audio, 1e-9))
    return recognitions


def run(args: argparse.Namespace) -> int:
    import torch

    from asr.config import ConfigError, load_config
    from asr.train.evaluate import write_results

    try:
        from asr.decoding import SEARCHER_NAMES, SearchConfig, available_searchers, build_searcher
    except ImportError as err:
        logger.error("asr decode: the decoding library is not available: %s", err)
        return 2
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    search_overrides, exp_overrides = split_overrides(args.overrides)
    try:
        from asr.experiment import load_trained_model

        unknown = [n for n in args.searchers if n != "all" and n not in SEARCHER_NAMES]
        if unknown:
            raise ValueError(f"unknown searcher(s) {unknown}; expected 'all' or some of "
                             f"{', '.join(SEARCHER_NAMES)}")
        search_cfg = load_config(SearchConfig, None, search_overrides)
        device = _device(args.device)
        cfg, tokenizer, model, tag = load_trained_model(
            args.exp_dir, selection_from_args(args), exp_overrides, device)
        names = available_searchers(model) if "all" in args.searchers else args.searchers
        manifest_dir = args.manifest_dir or cfg.data.manifest_dir
        settings = {"weights": tag, **dict(o.split("=", 1) for o in search_overrides)}
        for name in names:
            searcher = build_searcher(name, model, search_cfg, tokenizer=tokenizer)
            for part in args.parts:
                recognitions = decode_part(model, searcher, cfg, tokenizer, part, manifest_dir,
                                           device)
                wer, paths = write_results(args.exp_dir / name, part, name, recognitions, settings)
                logger.info("%s %s (%s): WER %.2f%% -> %s", part, name, tag, wer,
                            paths["wer_summary"])
    except (ConfigError, FileNotFoundError, ValueError) as err:
        logger.error("asr decode: %s", err, exc_info=logger.isEnabledFor(logging.DEBUG))
        return 2
    return 0
