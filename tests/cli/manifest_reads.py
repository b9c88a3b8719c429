"""Counting the reads of cut manifests, for tests that a command reads each one once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


class _CountedFile:
    """A file opened by asr's reader that counts one read of ``path`` in ``reads`` when its
    lines are read to the end (a first-line check, which stops before, is no read)."""

    def __init__(self, f, path: Path, reads: Counter) -> None:
        self.f, self.path, self.reads = f, path, reads

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def __iter__(self):
        yield from self.f
        self.reads[self.path] += 1

    def __getattr__(self, name: str):
        return getattr(self.f, name)


def count_manifest_reads(monkeypatch) -> Counter:
    """Path -> how often it was read: to its end by asr's manifest reader
    (:func:`asr.data.dataset.numbered_cut_lines`, through ``open_maybe_gzip``), or by lhotse's
    JSONL reader (each pass it starts)."""
    import lhotse.lazy

    from asr.data import dataset

    reads: Counter = Counter()
    opener = dataset.open_maybe_gzip
    lhotse_iter = lhotse.lazy.LazyJsonlIterator.__iter__

    def counted_open(path, *args, **kwargs):
        return _CountedFile(opener(path, *args, **kwargs), Path(path), reads)

    def counted_lhotse_iter(self):
        reads[Path(self.path)] += 1
        yield from lhotse_iter(self)

    monkeypatch.setattr(dataset, "open_maybe_gzip", counted_open)
    monkeypatch.setattr(lhotse.lazy.LazyJsonlIterator, "__iter__", counted_lhotse_iter)
    return reads


def count_manifest_opens(monkeypatch) -> Counter:
    """Path -> how often asr's manifest reader opened it (a first-line check or a full read)."""
    from asr.data import dataset

    opens: Counter = Counter()
    opener = dataset.open_maybe_gzip

    def counted_open(path, *args, **kwargs):
        opens[Path(path)] += 1
        return opener(path, *args, **kwargs)

    monkeypatch.setattr(dataset, "open_maybe_gzip", counted_open)
    return opens
