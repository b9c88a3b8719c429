"""Cut ids that occur more than once: an error in an evaluation set, separate copies in training.

An evaluation set (a test set of ``asr decode`` and ``asr decode-onnx``, the dev set of ``asr
train``) names each utterance once: a repeated id would be decoded and scored twice, and written
twice into the recogs and errs files. :func:`load_eval_cuts` loads such a set (eager:
evaluation sets are small) in one pass over its manifests that checks each id to be new (a set
of them); a repeat is a :class:`DuplicateIdError` naming the id, its file(s) and both lines.

Training may repeat a cut on purpose: listing a manifest twice (``data.train_cuts``,
``data.train_shar_dirs``, ``asr prepare shuffle --cuts``, ``asr shar --cuts``) oversamples it.
Every random draw of the data path is seeded from the cut id (:func:`asr.data.augment.draw_seed`:
speed factor, noise, frequency warp, SpecAugment, dither), so copies under one id would be
augmented identically in every epoch and add weight without variety. Training therefore renames
them as lhotse's ``CutSet.repeat`` does: the k-th repeat (k >= 1, in the order the cuts stream)
of an id becomes ``<id>_repeat<k>`` (:meth:`Repeats.rename`), and draws on its own; the first
keeps its id. A suffix that the id of a real cut of the set already has is skipped (a real
``a_repeat1`` beside a repeated ``a``: its repeat becomes ``a_repeat2``), so no two cuts share
an id. Finding the repeats reads the manifests' ids once and keeps a 64-bit hash per cut
(8 bytes: ~7 MB for LibriSpeech 960 h with its speed-perturbed copies, 840k cuts), so a streamed
training set (Lhotse Shar) stays streamed; two different ids with one hash (odds ~1e-8 at that
size) only rename one of them, or skip one more suffix.

Example:
    >>> dev = load_eval_cuts("data/fbank", ["librispeech_cuts_dev-clean.jsonl.gz"])
    >>> names = ["librispeech_cuts_train-clean-100.jsonl.gz"] * 2  # oversampled twice
    >>> train = load_cuts("data/fbank", names)
    >>> repeats = Repeats.of_cuts(train, watch={cut.id for cut in dev})  # and dev cuts held
    >>> train = repeats.rename(train)  # 2nd copies: <id>_repeat1
"""

from __future__ import annotations

import json
import logging
import re
from array import array
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr.data.augment import draw_seed
from asr.data.dataset import checked_manifests, numbered_cut_lines
from asr.data.filtering import speed_copy_source

logger = logging.getLogger(__name__)

__all__ = ["REPEAT_SUFFIX", "DuplicateIdError", "RepeatCounter", "Repeats", "line_cut",
           "line_cut_id", "load_eval_cuts", "manifest_ids"]

#: What joins an id and its repeat number in the name of a repeated training cut (lhotse's).
REPEAT_SUFFIX = "_repeat"

#: A real cut id that has the form of a renamed repeat (``<id>_repeat<k>``).
_REPEAT_NAME = re.compile(re.escape(REPEAT_SUFFIX) + r"[0-9]+\Z")


class DuplicateIdError(ValueError):
    """A cut id that occurs twice in an evaluation set (the message names the id and both
    lines)."""


def manifest_ids(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, cut id) of every cut of the manifest ``path``, in one pass over its lines.

    Raises:
        ValueError: naming the file (and the line) when it cannot be read or a line is no
            JSON cut.
    """
    path = Path(path)
    for line_no, line in numbered_cut_lines(path):
        yield line_no, line_cut_id(line, path, line_no)


def line_cut_id(line: bytes, path: str | Path, line_no: int) -> str:
    """The id of the cut on ``line`` (line ``line_no`` of the manifest ``path``).

    Raises:
        ValueError: as :func:`line_cut`.
    """
    return line_cut(line, path, line_no)["id"]


def line_cut(line: bytes, path: str | Path, line_no: int) -> dict[str, Any]:
    """The JSON cut on ``line`` (line ``line_no`` of the manifest ``path``), with a string id.

    Raises:
        ValueError: naming ``path`` and the line when it is no JSON cut with an id.
    """
    try:
        cut = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        cut = None
    if not isinstance(cut, dict) or not isinstance(cut.get("id"), str):
        raise ValueError(f"{path}:{line_no}: not a JSON cut with an id: "
                         f"{line.decode('utf-8', 'replace').strip()[:80]!r}")
    return cut


def _unique_cuts(paths: Sequence[Path]) -> Iterator[dict[str, Any]]:
    """The JSON cuts of the manifests ``paths`` (one evaluation set, existing files), in order,
    read once, each id checked to be new.

    Raises:
        DuplicateIdError: naming the first repeated id, the file(s) and both line numbers.
        ValueError: as :func:`manifest_ids`.
    """
    first: dict[str, tuple[Path, int]] = {}
    for path in paths:
        for line_no, line in numbered_cut_lines(path):
            cut = line_cut(line, path, line_no)
            cut_id = cut["id"]
            seen = first.setdefault(cut_id, (path, line_no))
            if seen != (path, line_no):
                where = (f"lines {seen[1]} and {line_no} of {path}" if seen[0] == path else
                         f"{seen[0]} line {seen[1]} and {path} line {line_no}")
                raise DuplicateIdError(
                    f"cut id {cut_id!r} occurs twice in an evaluation set: {where}; a test or "
                    "dev set names each utterance once (a repeat would be decoded and scored "
                    "twice)")
            yield cut


def load_eval_cuts(manifest_dir: str | Path, names: Sequence[str]):
    """The cuts of an evaluation set, the manifests ``manifest_dir/name`` concatenated in
    order, as an eager lhotse CutSet, each id checked to be unique in the one pass that reads
    them. The manifests are checked first as
    :func:`asr.data.dataset.load_cuts` checks them (:func:`~asr.data.dataset.checked_manifests`;
    a name error says that asr reads them, by their bytes).

    Raises:
        FileNotFoundError / ValueError: as ``load_cuts``, and naming a line that is no JSON cut.
        DuplicateIdError: naming a repeated id, its file(s) and both lines.
    """
    from lhotse import CutSet
    from lhotse.serialization import deserialize_item  # what lhotse's own jsonl reader uses

    paths = checked_manifests(manifest_dir, names, read_by_lhotse=False)
    return CutSet([deserialize_item(cut) for cut in _unique_cuts(paths)])


def _id_key(cut_id: str) -> int:
    """The 64-bit hash that stands for ``cut_id`` (the same in every process)."""
    return draw_seed(cut_id)


@dataclass(frozen=True)
class Repeats:
    """The cut ids of a training set that occur more than once, as sorted 64-bit hashes.

    Attributes:
        keys: (N,) uint64, sorted: the hashes of the ids that repeat.
        copies: how many cuts repeat an id seen before (``0``: none).
        taken: (M,) uint64, sorted: the hashes of the set's ids that have the form of a
            renamed repeat, ``<id>_repeat<k>``: names a repeat must not take.
        shared: the ids of ``watch`` (:meth:`of_ids`) that the set holds too, sorted (with
            :meth:`of_cuts`, as they are or as speed copies).
    """

    keys: np.ndarray
    copies: int
    taken: np.ndarray
    shared: tuple[str, ...] = ()

    @classmethod
    def of_ids(cls, ids: Iterable[str], watch: Collection[str] = frozenset()) -> Repeats:
        """The repeats among ``ids`` (read once; 8 bytes kept per id), and which ids of
        ``watch`` (e.g. the dev set's) they hold."""
        counter = RepeatCounter(watch)
        for cut_id in ids:
            counter.add(cut_id)
        return counter.repeats()

    @classmethod
    def of_cuts(cls, cuts: Iterable, watch: Collection[str] = frozenset()) -> Repeats:
        """:meth:`of_ids` of the ids of ``cuts`` (read once), where a speed copy of a cut of
        ``watch`` (``<id>_sp0.9``, :func:`asr.data.filtering.speed_copy_source`) holds that
        cut too: the dev cuts that training holds, as they are or perturbed
        (:meth:`RepeatCounter.add_cut`)."""
        counter = RepeatCounter(watch)
        for cut in cuts:
            counter.add_cut(cut)
        return counter.repeats()

    def log(self, where: str) -> None:
        """Logs (at INFO) how many ids repeat in ``where`` and what training makes of them,
        when any does."""
        if self.copies:
            logger.info("%d cut ids occur more than once in %s (%d repeats): training names "
                        "each repeat <id>%s<k>, so that it gets its own augmentation draws",
                        len(self.keys), where, self.copies, REPEAT_SUFFIX)

    def rename(self, cuts):
        """``cuts`` (a lhotse CutSet) with the k-th repeat of each repeated id renamed
        ``<id>_repeat<k>`` (k from 1, in iteration order; a ``k`` whose name is the id of a real
        cut, one of :attr:`taken`, is skipped): an eager CutSet for an eager one, a lazy one,
        renamed as it streams, for a lazy one; ``cuts`` itself without repeats."""
        from lhotse import CutSet

        if not self.copies:
            return cuts
        if cuts.is_lazy:
            return CutSet(_RenamedRepeats(cuts, self))
        return CutSet(list(_renamed(cuts, self)))


def _contains(keys: np.ndarray, key: np.uint64) -> tuple[bool, int]:
    """(whether the sorted ``keys`` hold ``key``, its index there if so)."""
    index = int(keys.searchsorted(key))
    return index < len(keys) and keys[index] == key, index


def _renamed(cuts: Iterable, repeats: Repeats) -> Iterator:
    """The cuts with each repeat (after the first) of an id in ``repeats.keys`` renamed
    ``<id>_repeat<k>``, k the next suffix of that id (from 1) whose name is not taken."""
    next_suffix = np.ones(len(repeats.keys), dtype=np.int64)
    met = np.zeros(len(repeats.keys), dtype=bool)
    for cut in cuts:
        repeated, index = _contains(repeats.keys, np.uint64(_id_key(cut.id)))
        if repeated:
            if met[index]:
                suffix = int(next_suffix[index])
                while _contains(repeats.taken,
                                np.uint64(_id_key(f"{cut.id}{REPEAT_SUFFIX}{suffix}")))[0]:
                    suffix += 1
                next_suffix[index] = suffix + 1
                cut = cut.with_id(f"{cut.id}{REPEAT_SUFFIX}{suffix}")
            met[index] = True
        yield cut


class _RenamedRepeats:
    """A lazy lhotse source: ``cuts`` with their repeats renamed, counted anew on each
    iteration (so every pass over one epoch's stream names the same cuts alike)."""

    def __init__(self, cuts, repeats: Repeats) -> None:
        self.cuts = cuts
        self.repeats = repeats

    def __iter__(self) -> Iterator:
        return _renamed(self.cuts, self.repeats)


class RepeatCounter:
    """:class:`Repeats` gathered one id at a time (8 bytes kept per id), so that a pass over
    the cuts made for another purpose counts them too: the training filter's own pass over
    Lhotse Shar manifests, which a second pass would parse (and judge) again.

    Args:
        watch: ids (e.g. the dev set's) whose presence is recorded (:attr:`Repeats.shared`).
    """

    def __init__(self, watch: Collection[str] = frozenset()) -> None:
        self._watch = watch
        self._keys = array("Q")
        self._taken = array("Q")
        self._shared: set[str] = set()

    def add(self, cut_id: str, source: str | None = None) -> None:
        """Counts the id ``cut_id``; ``source``: the id whose speed copy the cut is, if any."""
        key = _id_key(cut_id)
        self._keys.append(key)
        if _REPEAT_NAME.search(cut_id):
            self._taken.append(key)
        if cut_id in self._watch:
            self._shared.add(cut_id)
        elif source is not None and source in self._watch:
            self._shared.add(source)

    def add_cut(self, cut) -> None:
        """Counts ``cut``'s id, a speed copy of a watched cut as that cut too
        (:func:`asr.data.filtering.speed_copy_source`, looked up only while anything is
        watched)."""
        self.add(cut.id, speed_copy_source(cut) if self._watch else None)

    def repeats(self) -> Repeats:
        """The :class:`Repeats` of the ids counted so far."""
        unique, counts = np.unique(np.frombuffer(self._keys, dtype=np.uint64),
                                   return_counts=True)
        return Repeats(unique[counts > 1], len(self._keys) - len(unique),
                       np.unique(np.frombuffer(self._taken, dtype=np.uint64)),
                       tuple(sorted(self._shared)))
