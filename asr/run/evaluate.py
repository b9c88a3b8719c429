"""Recognising a dataset with a searcher, scoring it, and writing icefall-style result files.

Used by ``asr train`` (dev WER after each epoch, for the plot) and by ``asr decode`` (test sets).
The searchers come from :mod:`asr.decoding` (``build_searcher(name, model, cfg)``, called as
``searcher(enc (B, T, D), enc_lens (B,)) -> list[list[Hypothesis]]``, best hypothesis first).

Result files of one test set ``part`` and searcher ``name`` (icefall's layout), in
``<exp_dir>/<name>/``:

* ``recogs-<part>-<name>.txt``: ``utt_id:\\tref=[...]`` / ``utt_id:\\thyp=[...]`` lines,
* ``errs-<part>-<name>.txt``: the WER line, per-utterance alignments and error counts,
* ``wer-summary-<part>-<name>.txt``: ``settings\\tWER`` table (one row).

Each file is written atomically, and the three as a set by one rule: :func:`write_results` first
removes the summary an earlier run left, then writes the recogs, the errs and, last, the summary.
A run stopped between them (killed, or a failed write) leaves no summary, so a summary file means
that the recogs and errs beside it are complete and of the run that wrote it; without one, the
other two may be any mix of an earlier run's and a stopped one's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from asr.data.dataset import make_dataloader
from asr.data.librispeech import load_test_part
from asr.decoding import Searcher
from asr.experiment import ExperimentConfig
from asr.fileio import write_text_atomic
from asr.metrics.wer import (
    CorpusResult,
    compute_wer,
    warn_if_undefined,
    write_error_report,
    write_recognitions,
)
from asr.model import ASRModel
from asr.tokenizers import Tokenizer
from asr.types import Batch

if TYPE_CHECKING:  # pragma: no cover
    from lhotse import CutSet

logger = logging.getLogger(__name__)

__all__ = [
    "Recognition",
    "decode_part",
    "recognize",
    "result_paths",
    "score_recognitions",
    "write_results",
]


@dataclass(frozen=True)
class Recognition:
    """One decoded utterance.

    Attributes:
        cut_id: lhotse cut id (LibriSpeech utterance id).
        ref: reference transcript.
        hyp: best hypothesis text.
        frames: encoder frame of each hypothesis token (empty for the AED searchers).
    """

    cut_id: str
    ref: str
    hyp: str
    frames: tuple[int, ...] = ()


@torch.no_grad()
def recognize(
    model: ASRModel,
    searcher: Searcher,
    batches: Iterable[Batch],
    tokenizer: Tokenizer,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[list[Recognition], float]:
    """Decodes every batch with ``searcher``; returns the recognitions and the decode seconds.

    Args:
        model: an :class:`asr.model.ASRModel` (``encode(feats, feat_lens)``); put in eval mode.
        searcher: ``searcher(enc, enc_lens) -> list[list[Hypothesis]]``.
        batches: evaluation batches (texts and cut ids filled).
        tokenizer: ``decode(ids) -> str``.
        device: where the encoder runs.
        progress: show a tqdm bar.
    """
    was_training = model.training
    model.eval()
    results: list[Recognition] = []
    started = time.perf_counter()
    try:
        for batch in tqdm(batches, desc="decode", unit="batch", disable=not progress,
                          dynamic_ncols=True):
            batch = batch.to(device)
            enc, enc_lens = model.encode(batch.feats, batch.feat_lens)
            nbest_lists = searcher(enc, enc_lens)
            if len(nbest_lists) != batch.batch_size:
                raise RuntimeError(
                    f"searcher returned {len(nbest_lists)} results "
                    f"for {batch.batch_size} utterances"
                )
            for cut_id, ref, nbest in zip(batch.cut_ids, batch.texts, nbest_lists):
                best = nbest[0] if nbest else None
                hyp = tokenizer.decode(best.tokens) if best is not None else ""
                frames = tuple(best.frames) if best is not None else ()
                results.append(Recognition(cut_id, ref, " ".join(hyp.split()), frames))
    finally:
        model.train(was_training)
    return results, time.perf_counter() - started


def score_recognitions(recognitions: Iterable[Recognition]) -> CorpusResult:
    """WER (:class:`asr.metrics.wer.CorpusResult`) of recognitions, sorted by cut id."""
    ordered = sorted(recognitions, key=lambda r: r.cut_id)
    return compute_wer(
        [r.ref for r in ordered], [r.hyp for r in ordered], [r.cut_id for r in ordered]
    )


def result_paths(out_dir: str | Path, part: str, searcher_name: str) -> dict[str, Path]:
    """The result files of test set ``part`` and searcher ``searcher_name`` in ``out_dir``:
    ``recogs``, ``errs`` and ``wer_summary`` (removed first and written last) -> path."""
    out_dir = Path(out_dir)
    return {
        "recogs": out_dir / f"recogs-{part}-{searcher_name}.txt",
        "errs": out_dir / f"errs-{part}-{searcher_name}.txt",
        "wer_summary": out_dir / f"wer-summary-{part}-{searcher_name}.txt",
    }


def write_results(
    out_dir: str | Path,
    part: str,
    searcher_name: str,
    recognitions: Iterable[Recognition],
    settings: Mapping[str, Any] | None = None,
) -> tuple[float, dict[str, Path]]:
    """Writes the recogs / errs / wer-summary files of one test set; returns (WER %, paths).

    A test set without a reference word (every transcript empty) has an undefined WER, written
    as ``0.00`` or ``inf`` as ``asr wer`` prints it, with its warning
    (:func:`asr.metrics.wer.warn_if_undefined`).

    The earlier summary is removed first and the new one written last (the module's rule: a
    summary present means its set is complete and current).

    Args:
        out_dir: directory for the files (``<exp_dir>/<searcher_name>``).
        part: test set name, e.g. ``test-clean``.
        searcher_name: used in the file names.
        recognitions: decoded utterances.
        settings: shown in the summary's settings column (e.g. epoch, avg, beam size).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = score_recognitions(recognitions)
    warn_if_undefined(result, f"test set {part}")  # all transcripts empty: not just "inf"
    wer = 100.0 * result.stats.wer
    paths = result_paths(out_dir, part, searcher_name)
    # first: from here until the new one is written, no summary vouches for the set (the
    # directory sync of the recogs' atomic write makes the removal durable before them)
    paths["wer_summary"].unlink(missing_ok=True)
    write_recognitions(paths["recogs"], result)
    write_error_report(paths["errs"], result)
    tag = "_".join(f"{k}-{v}" for k, v in (settings or {}).items()) or searcher_name
    write_text_atomic(
        paths["wer_summary"], f"settings\tWER\n{tag}\t{wer:.2f}\n# {result.stats.summary('WER')}\n"
    )
    return wer, paths


def decode_part(
    model: ASRModel,
    searcher: Searcher,
    cfg: ExperimentConfig,
    tokenizer: Tokenizer,
    part: str,
    manifest_dir: Path,
    device: torch.device | str,
    cuts: CutSet | None = None,
) -> list[Recognition]:
    """Recognitions of one test set ``<manifest_dir>/librispeech_cuts_<part>.jsonl.gz`` (all of
    its cuts, unfiltered).

    Args:
        cuts: the test set's cuts as :func:`asr.data.librispeech.check_test_parts` returns them
            (checked already: the manifest is not read again); by default loaded here
            (:func:`asr.data.librispeech.load_test_part`).

    Raises:
        asr.data.cut_ids.DuplicateIdError: naming a cut id the test set holds twice (before
            anything is decoded).
    """
    if cuts is None:
        cuts = load_test_part(manifest_dir, part)  # each id once: scored once
    loader = make_dataloader(cuts, cfg.data, tokenizer, train=False, rank=0, world_size=1)
    recognitions, seconds = recognize(model, searcher, loader, tokenizer, device)
    audio = sum(c.duration for c in cuts)
    logger.info("%s: %d utterances, %.1f s of audio decoded in %.1f s (RTF %.3f)", part,
                len(recognitions), audio, seconds, seconds / max(audio, 1e-9))
    return recognitions
