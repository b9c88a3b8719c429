"""``asr wer REF HYP``: score hypotheses against references (Kaldi ``text`` files), or
``asr wer RECOGS`` the references and hypotheses of an ``asr decode`` recogs file; with
``--phrases TSV`` (a biasing set's ``utt_id<TAB>phrase`` lines) also the phrase recall.

Words (characters with ``--cer``) are compared exactly: case-sensitive, no Unicode or
punctuation normalisation (:mod:`asr.metrics.wer`). An utterance of REF missing from HYP is
scored as empty (all deleted; ``--strict``: an error), an id of HYP not in REF is an error (exit
2). An empty reference adds only its insertions; a corpus of empty references has WER 0 when the
hypotheses are empty too, else ``inf``, with a warning that the rate is undefined.

Each file names an utterance once (a recogs file once per side): a repeated id, whose text to
score would be ambiguous, is an error (exit 2) naming the file, the id and both lines."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from asr.fileio import check_writable_file
from asr.metrics.wer import (
    compute_cer,
    compute_wer,
    phrase_recall,
    read_kaldi_text,
    read_phrases,
    read_recognitions,
    warn_if_undefined,
    write_error_report,
    write_recognitions,
)

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", help="reference text file: 'utt_id TEXT' per line, each id once "
                                    "(a repeated id is an error naming both lines)")
    parser.add_argument("hyp", nargs="?", default=None,
                        help="hypothesis text file: 'utt_id TEXT' per line, each id once; without "
                             "it REF is an `asr decode` recogs file holding both")
    parser.add_argument("--phrases",
                        help="'utt_id<TAB>phrase' lines: also print the phrase recall, "
                             "the share of phrases said exactly as whole words (default: none)")
    parser.add_argument("--cer", action="store_true", help="score characters instead of words")
    parser.add_argument("--report",
                        help="write an error report (alignments, frequent errors) here "
                             "(default: none)")
    parser.add_argument("--recogs",
                        help="write 'utt_id:\\tref=[...]' / 'hyp=[...]' lines here: the "
                             "words, also with --cer, so that `asr wer RECOGS` scores them again "
                             "(default: none)")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail when a reference has no hypothesis (default: score it as empty, with a warning)",
    )


def _read_recogs(path: str) -> tuple[dict[str, str], dict[str, str]]:
    """The references and hypotheses of the recogs file ``asr wer REF`` was given alone.

    Raises:
        ValueError: naming the file and line, and saying that a Kaldi text file needs HYP too
            (the likely mistake: a second file forgotten).
    """
    try:
        return read_recognitions(path)
    except ValueError as err:
        raise ValueError(f"{err}; given alone, REF is an `asr decode` recogs file "
                         f"('UTT:\\tref=[...]' and 'UTT:\\thyp=[...]' lines): to score "
                         f"'utt_id TEXT' files, give both, asr wer REF HYP") from err


def _check_inputs(args: argparse.Namespace) -> None:
    """Refuses an input that is not a file, naming its argument (an OSError names the path
    alone: "[Errno 2] No such file or directory: 'hyp.txt'").

    Raises:
        ValueError: naming REF, HYP or --phrases and the path.
    """
    for name, path in (("REF", args.ref), ("HYP", args.hyp), ("--phrases", args.phrases)):
        if path is None:
            continue
        if not Path(path).exists():
            raise ValueError(f"{name} {path}: no such file")
        if Path(path).is_dir():
            raise ValueError(f"{name} {path}: a directory, not a text file")


def run(args: argparse.Namespace) -> int:
    """Print the summary line; utterances missing from HYP count as empty (all deleted)."""
    try:
        _check_inputs(args)
        if args.hyp is None:
            refs, hyps = _read_recogs(args.ref)
        else:
            refs = read_kaldi_text(args.ref)
            hyps = read_kaldi_text(args.hyp)
        phrases = read_phrases(args.phrases) if args.phrases else {}
        for option, output in (("--report", args.report), ("--recogs", args.recogs)):
            if output:
                check_writable_file(output, option)
    except (OSError, ValueError) as err:
        logger.error("asr wer: %s", err)
        return 2
    # what the messages call the two sides (a recogs file holds both)
    ref_name = args.ref if args.hyp else f"the ref= lines of {args.ref}"
    hyp_name = args.hyp or f"the hyp= lines of {args.ref}"
    extra = sorted(set(hyps) - set(refs))
    if extra:
        logger.error("asr wer: %d ids of %s are not in %s, e.g. %s", len(extra), hyp_name,
                     ref_name, extra[:3])
        return 2
    unknown = sorted(set(phrases) - set(refs))
    if unknown:  # another set's phrases: the recall would count them as misses
        logger.error("asr wer: %d ids of %s are not in %s, e.g. %s", len(unknown), args.phrases,
                     ref_name, unknown[:3])
        return 2
    missing = [utt for utt in refs if utt not in hyps]
    if missing:
        if args.strict:
            logger.error("asr wer: %d ids of %s have no hypothesis in %s, e.g. %s",
                         len(missing), ref_name, hyp_name, missing[:3])
            return 2
        logger.warning("%d utterances have no hypothesis; scored as empty, e.g. %s",
                       len(missing), missing[:3])
    utt_ids = list(refs)
    score = compute_cer if args.cer else compute_wer
    result = score([refs[u] for u in utt_ids], [hyps.get(u, "") for u in utt_ids], utt_ids)
    warn_if_undefined(result, ref_name)  # an empty file, or the wrong one: not just "0.00"
    print(result.stats.summary(result.metric))
    if phrases:
        found, total = phrase_recall(phrases, hyps)
        print(f"phrase recall {100.0 * found / max(total, 1):.2f}% ({found}/{total})")
    for output in (args.report, args.recogs):
        if output:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
    if args.report:
        write_error_report(args.report, result)
        logger.info("wrote %s", args.report)
    if args.recogs:
        write_recognitions(args.recogs, result)
        logger.info("wrote %s", args.recogs)
    return 0
