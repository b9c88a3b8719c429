"""Word and character error rates with Levenshtein alignments and Kaldi/icefall-style reports.

Levenshtein (1966), "Binary codes capable of correcting deletions, insertions, and reversals":
the edit distance is the least number of insertions, deletions and substitutions turning the
reference into the hypothesis. Each DP row is computed with numpy: substitutions/deletions come
from the previous row, and the insertion recurrence ``d[j] = min(t[j], d[j-1] + 1)`` is the running
minimum ``d[j] = j + min_{k<=j}(t[k] - k)``. Utterances of similar length are padded into one
batch so a corpus costs about one numpy call per reference position of each batch, not per
utterance. The alignment is recovered by backtracking from the end with the tie-breaking of
Kaldi's ``compute-wer`` and of icefall's error files (both through Kaldi's
``LevenshteinEditDistance`` / kaldialign): a match or substitution only when it costs strictly
less than a deletion and an insertion, a deletion only when strictly cheaper than an insertion.
Minimum-edit alignments can split the same distance differently (``A B`` -> ``B C`` is two
substitutions or a deletion and an insertion), so this choice fixes the reported counts.

Conventions:

* Text is split on whitespace into words (WER) or taken character by character (CER, where a
  run of whitespace is the one unit ``▁`` unless ``keep_spaces=False`` drops it). Units are
  compared exactly, the same rule for both sides: case-sensitive, with no Unicode normalisation
  (an NFC and an NFD ``é`` differ; a CER unit is one code point) and no punctuation removal, so
  references and hypotheses must be normalised alike.
* Error rates are fractions (``0.05`` = 5 %); reports print percentages.
* An empty reference has ``wer == 0.0`` when the hypothesis is empty too and ``inf`` otherwise;
  corpus totals sum counts first, so empty references only add their insertions.
"""

from __future__ import annotations

import ast
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr.fileio import read_lines, write_text_atomic

logger = logging.getLogger(__name__)

#: One aligned pair: ``(ref, hyp)``, ``(ref, None)`` a deletion, ``(None, hyp)`` an insertion.
AlignedPair = tuple[str | None, str | None]
#: The CER unit for a space between words.
CHAR_SPACE = "\u2581"
_EPS = "*"
_NEVER = 1 << 62  # a move out of the table


_MAX_CELLS = 1 << 22  # DP cells (int32) per batch of utterances: 16 MiB


def _edit_distance_tables(
    ref_ids: Sequence[np.ndarray], hyp_ids: Sequence[np.ndarray]
) -> np.ndarray:
    """Levenshtein tables of B utterances at once, padded to the longest reference/hypothesis.

    Args:
        ref_ids: B int arrays of unit ids (N_b each, ids >= 0).
        hyp_ids: B int arrays of unit ids (M_b each).

    Returns:
        (B, N+1, M+1) int32 tables; ``[b, :N_b+1, :M_b+1]`` is utterance b's table (a cell only
        depends on the prefixes it covers, so the padding beyond never changes it).
    """
    batch = len(ref_ids)
    max_ref = max((len(r) for r in ref_ids), default=0)
    max_hyp = max((len(h) for h in hyp_ids), default=0)
    refs = np.full((batch, max_ref), -1, dtype=np.int64)  # pads of ref and hyp never match
    hyps = np.full((batch, max_hyp), -2, dtype=np.int64)
    for b in range(batch):
        refs[b, : len(ref_ids[b])] = ref_ids[b]
        hyps[b, : len(hyp_ids[b])] = hyp_ids[b]
    cols = np.arange(max_hyp + 1, dtype=np.int32)
    table = np.empty((batch, max_ref + 1, max_hyp + 1), dtype=np.int32)
    table[:, 0] = cols
    row = np.empty((batch, max_hyp + 1), dtype=np.int32)
    for i in range(1, max_ref + 1):
        prev = table[:, i - 1]
        row[:, 0] = i
        cost = (hyps != refs[:, i - 1 : i]).astype(np.int32)
        np.minimum(prev[:, :-1] + cost, prev[:, 1:] + 1, out=row[:, 1:])
        table[:, i] = np.minimum.accumulate(row - cols, axis=1) + cols
    return table


def _backtrace(table: np.ndarray, ref: Sequence[str], hyp: Sequence[str]) -> list[AlignedPair]:
    """A minimum-edit alignment, from the end, with Kaldi's ``compute-wer`` tie-breaking (module
    docstring): so its insertion, deletion and substitution counts are compute-wer's."""
    pairs: list[AlignedPair] = []
    i, j = len(ref), len(hyp)
    while i > 0 or j > 0:
        diagonal = deletion = insertion = _NEVER
        if i > 0 and j > 0:
            diagonal = table[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1])
        if i > 0:
            deletion = table[i - 1, j] + 1
        if j > 0:
            insertion = table[i, j - 1] + 1
        if diagonal < min(deletion, insertion):
            pairs.append((ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
        elif deletion < insertion:
            pairs.append((ref[i - 1], None))
            i -= 1
        else:
            pairs.append((None, hyp[j - 1]))
            j -= 1
    pairs.reverse()
    return pairs


def _to_ids(seqs: Sequence[Sequence[str]], vocab: dict[str, int]) -> list[np.ndarray]:
    return [
        np.array([vocab.setdefault(t, len(vocab)) for t in seq], dtype=np.int64) for seq in seqs
    ]


def edit_distance_matrix(ref: Sequence[str], hyp: Sequence[str]) -> np.ndarray:
    """The (N+1, M+1) Levenshtein table: entry ``[i, j]`` is the distance of ``ref[:i]``,
    ``hyp[:j]``.

    Args:
        ref: N reference units.
        hyp: M hypothesis units.
    """
    vocab: dict[str, int] = {}
    return _edit_distance_tables(_to_ids([ref], vocab), _to_ids([hyp], vocab))[0]


def align_batch(
    refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]]
) -> list[list[AlignedPair]]:
    """:func:`align` of many utterances; utterances of similar length share one numpy DP."""
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} hypotheses")
    vocab: dict[str, int] = {}
    ref_ids, hyp_ids = _to_ids(refs, vocab), _to_ids(hyps, vocab)
    order = sorted(range(len(refs)), key=lambda k: (len(refs[k]), len(hyps[k])))
    out: list[list[AlignedPair]] = [[] for _ in refs]
    start = 0
    while start < len(order):
        stop, max_ref, max_hyp = start, 0, 0
        while stop < len(order):
            k = order[stop]
            new_ref, new_hyp = max(max_ref, len(refs[k])), max(max_hyp, len(hyps[k]))
            if stop > start and (stop - start + 1) * (new_ref + 1) * (new_hyp + 1) > _MAX_CELLS:
                break
            max_ref, max_hyp, stop = new_ref, new_hyp, stop + 1
        chunk = order[start:stop]
        tables = _edit_distance_tables([ref_ids[k] for k in chunk], [hyp_ids[k] for k in chunk])
        for b, k in enumerate(chunk):
            out[k] = _backtrace(tables[b], refs[k], hyps[k])
        start = stop
    return out


def align(ref: Sequence[str], hyp: Sequence[str]) -> list[AlignedPair]:
    """A minimum-edit alignment of ``ref`` and ``hyp``.

    Returns:
        Pairs in order; ``(r, h)`` with ``r == h`` is a match, ``r != h`` a substitution,
        ``(r, None)`` a deletion and ``(None, h)`` an insertion.
    """
    return align_batch([ref], [hyp])[0]


@dataclass(frozen=True)
class ErrorStats:
    """Error counts of one utterance or a corpus.

    Attributes:
        num_ref: number of reference units (words or characters).
        ins: insertions.
        dels: deletions.
        subs: substitutions.
    """

    num_ref: int = 0
    ins: int = 0
    dels: int = 0
    subs: int = 0

    @property
    def errors(self) -> int:
        return self.ins + self.dels + self.subs

    @property
    def correct(self) -> int:
        return self.num_ref - self.dels - self.subs

    @property
    def wer(self) -> float:
        """``errors / num_ref`` (0.0 for an empty reference and hypothesis, else inf if empty
        ref)."""
        if self.num_ref == 0:
            return 0.0 if self.errors == 0 else math.inf
        return self.errors / self.num_ref

    def __add__(self, other: ErrorStats) -> ErrorStats:
        return ErrorStats(
            self.num_ref + other.num_ref, self.ins + other.ins, self.dels + other.dels,
            self.subs + other.subs,
        )

    @classmethod
    def from_alignment(cls, pairs: Sequence[AlignedPair]) -> ErrorStats:
        ins = sum(1 for r, _ in pairs if r is None)
        dels = sum(1 for _, h in pairs if h is None)
        subs = sum(1 for r, h in pairs if r is not None and h is not None and r != h)
        return cls(num_ref=len(pairs) - ins, ins=ins, dels=dels, subs=subs)

    def summary(self, name: str = "WER") -> str:
        """Kaldi ``compute-wer`` line, e.g. ``%WER 4.17 [ 2 / 48, 1 ins, 0 del, 1 sub ]``."""
        return (
            f"%{name} {100.0 * self.wer:.2f} [ {self.errors} / {self.num_ref}, "
            f"{self.ins} ins, {self.dels} del, {self.subs} sub ]"
        )


@dataclass(frozen=True)
class UtteranceResult:
    """Alignment and counts of one utterance.

    Attributes:
        utt_id: the utterance id.
        ref, hyp: the units scored (words, or characters for CER).
        alignment: their minimum-edit alignment.
        stats: its counts.
        ref_words, hyp_words: the words of the texts (the units themselves for WER): what a
            recogs file holds (:func:`write_recognitions`), whatever the metric.
    """

    utt_id: str
    ref: tuple[str, ...]
    hyp: tuple[str, ...]
    alignment: tuple[AlignedPair, ...]
    stats: ErrorStats
    ref_words: tuple[str, ...]
    hyp_words: tuple[str, ...]


@dataclass(frozen=True)
class CorpusResult:
    """Per-utterance results and their total.

    Attributes:
        utterances: one result per input utterance, in input order.
        stats: the summed counts.
        metric: ``"WER"`` or ``"CER"``.
    """

    utterances: tuple[UtteranceResult, ...]
    stats: ErrorStats
    metric: str = "WER"

    @property
    def unit(self) -> str:
        return "characters" if self.metric == "CER" else "words"


def text_to_words(text: str | Sequence[str]) -> tuple[str, ...]:
    """Words of ``text`` (split on whitespace); a sequence is taken as already split."""
    return tuple(text.split()) if isinstance(text, str) else tuple(text)


def text_to_chars(text: str, keep_spaces: bool = True) -> tuple[str, ...]:
    """Characters of ``text``; whitespace runs become one ``▁`` (or nothing), ends are stripped."""
    joiner = CHAR_SPACE if keep_spaces else ""
    return tuple(joiner.join(text.split()))


def _score(
    ref_words: Sequence[tuple[str, ...]], hyp_words: Sequence[tuple[str, ...]],
    utt_ids: Sequence[str] | None, metric: str,
    units: Callable[[tuple[str, ...]], tuple[str, ...]] = lambda words: words,
) -> CorpusResult:
    """Scores the ``units`` of each text's words (the words themselves by default)."""
    refs, hyps = [units(w) for w in ref_words], [units(w) for w in hyp_words]
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} hypotheses")
    if utt_ids is None:
        utt_ids = [str(i) for i in range(len(refs))]
    elif len(utt_ids) != len(refs):
        raise ValueError(f"got {len(utt_ids)} utterance ids for {len(refs)} references")
    results = []
    total = ErrorStats()
    alignments = align_batch(refs, hyps)
    for k, (utt_id, alignment) in enumerate(zip(utt_ids, alignments)):
        pairs = tuple(alignment)
        stats = ErrorStats.from_alignment(pairs)
        total = total + stats
        results.append(UtteranceResult(str(utt_id), refs[k], hyps[k], pairs, stats,
                                       ref_words[k], hyp_words[k]))
    return CorpusResult(tuple(results), total, metric)


def compute_wer(
    refs: Sequence[str | Sequence[str]],
    hyps: Sequence[str | Sequence[str]],
    utt_ids: Sequence[str] | None = None,
) -> CorpusResult:
    """Word error rate of a corpus.

    Args:
        refs: reference transcripts (strings split on whitespace, or word sequences).
        hyps: hypotheses, same length and order as ``refs``.
        utt_ids: utterance ids for reports (default ``"0"``, ``"1"``, ...).
    """
    return _score(
        [text_to_words(r) for r in refs], [text_to_words(h) for h in hyps], utt_ids, "WER"
    )


def compute_cer(
    refs: Sequence[str],
    hyps: Sequence[str],
    utt_ids: Sequence[str] | None = None,
    keep_spaces: bool = True,
) -> CorpusResult:
    """Character error rate of a corpus; spaces count as the unit ``▁`` unless ``keep_spaces``
    is false. Arguments as in :func:`compute_wer`."""
    return _score(
        [text_to_words(r) for r in refs], [text_to_words(h) for h in hyps], utt_ids, "CER",
        lambda words: text_to_chars(" ".join(words), keep_spaces),
    )


def warn_if_undefined(result: CorpusResult, source: str) -> bool:
    """Warns when ``result`` has no reference unit (an empty file, the wrong one, a test set of
    empty transcripts): its rate is then undefined, printed as ``0.00`` (no hypothesis unit
    either) or ``inf``, which alone do not say so.

    Args:
        result: the scored corpus.
        source: what held the references, as the warning names it.

    Returns:
        True if the rate is undefined (warned), else False.
    """
    if result.stats.num_ref:
        return False
    logger.warning("%s holds no reference %s: the %s is undefined (printed as %s)", source,
                   result.unit, result.metric, "inf" if result.stats.errors else "0.00")
    return True


def format_alignment(pairs: Sequence[AlignedPair]) -> str:
    """``A (B->C) (D->*) (*->E)``: matches as is, errors as ``(ref->hyp)`` with ``*`` for
    nothing."""
    out = []
    for ref, hyp in pairs:
        if ref == hyp:
            out.append(str(ref))
        else:
            out.append(f"({_EPS if ref is None else ref}->{_EPS if hyp is None else hyp})")
    return " ".join(out)


def _sorted_counts(counter: Counter) -> list[tuple[object, int]]:
    return sorted(counter.items(), key=lambda item: (-item[1], str(item[0])))


def write_error_report(path: str | Path, result: CorpusResult) -> None:
    """Write an icefall-style errors file.

    Sections: the summary line (:meth:`ErrorStats.summary`) and totals, ``PER-UTT DETAILS``
    (``utt_id:\\t`` + :func:`format_alignment`, sorted by id), ``SUBSTITUTIONS``
    (``count ref -> hyp``), ``DELETIONS`` (``count ref``), ``INSERTIONS`` (``count hyp``), most
    frequent first, and ``PER-UNIT STATS`` (``unit correct errors ref_count hyp_count``).
    """
    subs: Counter = Counter()
    dels: Counter = Counter()
    ins: Counter = Counter()
    per_unit: dict[str, list[int]] = {}  # unit -> [correct, errors, in_ref, in_hyp]
    for utt in result.utterances:
        for ref, hyp in utt.alignment:
            if ref is not None:
                per_unit.setdefault(ref, [0, 0, 0, 0])[2] += 1
            if hyp is not None:
                per_unit.setdefault(hyp, [0, 0, 0, 0])[3] += 1
            if ref == hyp:
                per_unit[ref][0] += 1
            elif ref is None:
                ins[hyp] += 1
                per_unit[hyp][1] += 1
            elif hyp is None:
                dels[ref] += 1
                per_unit[ref][1] += 1
            else:
                subs[(ref, hyp)] += 1
                per_unit[ref][1] += 1
                per_unit[hyp][1] += 1
    stats = result.stats
    lines = [
        stats.summary(result.metric),
        f"Errors: {stats.ins} insertions, {stats.dels} deletions, {stats.subs} substitutions, "
        f"over {stats.num_ref} reference {result.unit} ({stats.correct} correct)",
        "Search below for sections starting with PER-UTT DETAILS:, SUBSTITUTIONS:, DELETIONS:, "
        "INSERTIONS:, PER-UNIT STATS:",
        "",
        "PER-UTT DETAILS: corr or (ref->hyp)",
    ]
    for utt in sorted(result.utterances, key=lambda u: u.utt_id):
        lines.append(f"{utt.utt_id}:\t{format_alignment(utt.alignment)}")
    lines += ["", "SUBSTITUTIONS: count ref -> hyp"]
    lines += [f"{n}   {ref} -> {hyp}" for (ref, hyp), n in _sorted_counts(subs)]
    lines += ["", "DELETIONS: count ref"]
    lines += [f"{n}   {ref}" for ref, n in _sorted_counts(dels)]
    lines += ["", "INSERTIONS: count hyp"]
    lines += [f"{n}   {hyp}" for hyp, n in _sorted_counts(ins)]
    lines += ["", "PER-UNIT STATS: unit  corr tot_errs count_in_ref count_in_hyp"]
    ranked = sorted(per_unit.items(), key=lambda item: (-item[1][1], item[0]))
    lines += [f"{unit}   {c} {e} {r} {h}" for unit, (c, e, r, h) in ranked]
    write_text_atomic(path, "\n".join(lines) + "\n")


def write_recognitions(path: str | Path, result: CorpusResult) -> None:
    """Write ``utt_id:\\tref=[...]`` and ``utt_id:\\thyp=[...]`` lines (Python list syntax),
    sorted by utterance id: the words of the texts, also for a CER result (its characters and
    ``▁`` would read back as other texts), so that :func:`read_recognitions` gives the texts
    back and either metric can score them again."""
    lines = []
    for utt in sorted(result.utterances, key=lambda u: u.utt_id):
        lines.append(f"{utt.utt_id}:\tref={list(utt.ref_words)!r}")
        lines.append(f"{utt.utt_id}:\thyp={list(utt.hyp_words)!r}")
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def read_kaldi_text(path: str | Path) -> dict[str, str]:
    """Read a Kaldi ``text`` file (``utt_id TEXT`` lines; the text may be empty).

    Raises:
        ValueError: for a duplicated utterance id (naming the file and both lines: which of
            the two texts to score is ambiguous).
    """
    path = Path(path)
    texts: dict[str, str] = {}
    first: dict[str, int] = {}
    for line_no, line in enumerate(read_lines(path), start=1):
        fields = line.split(maxsplit=1)
        if not fields:
            continue
        utt_id = fields[0]
        _check_new_id(path, line_no, utt_id, first)
        texts[utt_id] = " ".join(fields[1].split()) if len(fields) > 1 else ""
    return texts


def _check_new_id(path: Path, line_no: int, utt_id: str, first: dict[str, int]) -> None:
    """Records that ``utt_id`` is on line ``line_no`` of ``path`` in ``first`` (id -> line).

    Raises:
        ValueError: naming the file, the id and both lines when ``first`` already has it.
    """
    earlier = first.setdefault(utt_id, line_no)
    if earlier != line_no:
        raise ValueError(f"{path}:{line_no}: duplicated utterance id {utt_id!r} (first on "
                         f"line {earlier})")


def read_recognitions(path: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """Read a file of :func:`write_recognitions` (``asr decode``'s ``recogs-*.txt``) back into
    references and hypotheses, ``utt_id -> text``.

    Raises:
        ValueError: for a line that is neither ``utt_id:\\tref=[...]`` nor ``hyp=[...]`` with
            a list of quoted words (naming the file and line), or a second ``ref=`` (or
            ``hyp=``) line of one utterance id (naming both lines).
    """
    path = Path(path)
    texts: dict[str, dict[str, str]] = {"ref": {}, "hyp": {}}
    first: dict[str, dict[str, int]] = {"ref": {}, "hyp": {}}
    for line_no, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        utt, _, rest = line.partition(":\t")
        kind, _, words = rest.partition("=")
        if kind not in texts or not words.startswith("["):
            raise ValueError(f"{path}:{line_no}: not a recognition line: {line!r}")
        _check_new_id(path, line_no, utt, first[kind])
        texts[kind][utt] = " ".join(_word_list(path, line_no, words))
    return texts["ref"], texts["hyp"]


def _word_list(path: Path, line_no: int, literal: str) -> list[str]:
    """The words of a recogs line's ``[...]`` (a Python list of strings).

    Raises:
        ValueError: naming the file and line when it is not one (e.g. a line cut short).
    """
    try:
        words = ast.literal_eval(literal)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        words = None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError(f"{path}:{line_no}: expected a list of quoted words, got {literal!r}")
    return words


def read_phrases(path: str | Path) -> dict[str, str]:
    """Read a biasing set's ``phrases.tsv`` (``utt_id<TAB>phrase`` lines) into ``utt_id -> phrase``.

    Raises:
        ValueError: for a line without a tab or without a phrase, or a duplicated utterance id
            (naming the file and both lines).
    """
    path = Path(path)
    phrases: dict[str, str] = {}
    first: dict[str, int] = {}
    for line_no, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        utt_id, tab, phrase = line.partition("\t")
        utt_id, phrase = utt_id.strip(), " ".join(phrase.split())
        if not tab or not utt_id or not phrase:
            raise ValueError(f"{path}:{line_no}: expected 'utt_id<TAB>phrase', got {line!r}")
        _check_new_id(path, line_no, utt_id, first)
        phrases[utt_id] = phrase
    return phrases


def phrase_recall(phrases: Mapping[str, str], hyps: Mapping[str, str]) -> tuple[int, int]:
    """How many utterances' phrase the hypothesis says exactly: as a run of whole words.

    Args:
        phrases: ``utt_id -> phrase`` (a biasing set's ``phrases.tsv``).
        hyps: ``utt_id -> hypothesis text`` (a missing one counts as empty).

    Returns:
        ``(recognised, total)``.
    """
    found = 0
    for utt, phrase in phrases.items():
        words, hyp = phrase.split(), hyps.get(utt, "").split()
        n = len(words)
        found += any(hyp[i : i + n] == words for i in range(len(hyp) - n + 1))
    return found, len(phrases)
