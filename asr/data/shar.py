"""Lhotse Shar: training data in sequential shards, read lazily with a per-epoch shard order.

Lhotse Shar (Żelasko et al., lhotse documentation, "Lhotse Shar") stores a corpus as numbered
shards: a cut manifest ``cuts.NNNNNN.jsonl.gz`` and one tar file per data field
(``features.NNNNNN.tar``, ``recording.NNNNNN.tar``) holding each cut's data in the manifest's
order. Training then reads a few large files sequentially instead of seeking into one feature
archive per utterance, which is what large corpora on network or spinning storage need.

* :func:`export_shar` writes a CutSet (stored features and/or audio) into a directory of shards,
  under a temporary name renamed at the end, so an interrupted export leaves no half directory
  (a killed one's is removed by the next: :func:`asr.fileio.staging_directory`).
  The output is locked while it is written (:func:`asr.fileio.output_lock`): a second export
  of the same directory fails at once instead of writing it too.
  Its fingerprint (:mod:`asr.fingerprint`) records the manifests (their sha256), the data files
  (size and modification time) and the options it was made from: run again, it keeps a
  directory made from the same ones and replaces one made from others, without parsing a cut.
* :class:`SharCuts` reads one or more such directories as ONE lazy CutSet whose shards are
  shuffled together with the seed ``seed + epoch`` (:meth:`SharCuts.set_epoch`, called by the
  trainer at the start of every epoch, so a resumed epoch sees the same shard order as the
  interrupted one, however often the readers are iterated within the epoch). Only the fields
  training needs are opened; :attr:`SharCuts.manifests` reads the cut manifests alone (no tar
  data) for counting, filtering, the sample rate checks and the duration buckets. The two views
  stay one cut stream: :meth:`SharCuts.map` and :meth:`SharCuts.filter` apply to both, so
  :func:`asr.data.filtering.filter_cuts` (``apply_to``) drops a cut from the manifests that
  the checks and the bucket estimate read as from the data that training reads.

DDP: every rank reads the same shard stream and the sampler keeps every ``world_size``-th batch
(:mod:`asr.data.sampler`), so ranks never share a cut and stay in step; each rank reads every
shard's bytes but decodes only its own batches' data.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from asr.data.dataset import DataError, load_cuts
from asr.data.filtering import data_files, unreadable_cut_error, with_speed_copy_record
from asr.fileio import output_lock, publish_directory, staging_directory
from asr.fingerprint import (
    file_states,
    is_current,
    read_fingerprint,
    sha256_of_file,
    write_fingerprint,
)

logger = logging.getLogger(__name__)

__all__ = ["SharCuts", "export_shar", "shar_fields"]

_SHARD = re.compile(r"^(?P<field>[A-Za-z_][A-Za-z0-9_]*)\.(?P<index>\d+)\.(jsonl\.gz|tar)$")


def export_shar(
    manifests: Sequence[str | Path],
    output_dir: str | Path,
    fields: Mapping[str, str],
    shard_size: int = 1000,
    num_jobs: int = 1,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Writes the cuts of ``manifests`` (concatenated in order) and their data as Lhotse Shar
    shards into ``output_dir``.

    An existing ``output_dir`` is kept while its fingerprint (``<output_dir>.fingerprint.json``)
    says it was made from the same manifests (the sha256 of each file's bytes, in order), the
    same ``fields`` and ``shard_size``, and the same data files: each local file holding the
    data of ``fields`` (feature archives, audio files) has the size and modification time it
    had when the shards were made (and, when a manifest names one by a relative path, the
    working directory is the same). Deciding that reads each manifest's bytes once and stats
    the data files, without parsing a cut. What it cannot see: a data file rewritten with the
    same size and modification time to the nanosecond (a copy that preserves times), data
    behind something other than a local path (audio URLs and commands, the arks a Kaldi scp
    names). A Shar directory made from other manifests, data or options, or without a
    fingerprint, is written again and then replaces it. ``num_jobs`` and ``progress`` are not
    recorded (they change how the shards are written, not what from).

    Shar writes audio with its transforms applied and lists none: the speed transform of a
    speed copy (``asr prepare fbank --speed-perturb``), or None for every other cut, is kept in
    the cut's custom field :data:`asr.data.filtering.SPEED_COPY_FIELD`, so that training still
    refuses to perturb a copy again on the fly (:func:`asr.data.filtering.filter_cuts`) and
    takes no cut for one by its recording id (the guess made in a directory of lhotse's
    ``to_shar``).

    Args:
        manifests: lhotse cut manifests (``.jsonl.gz``) whose cuts have the data in ``fields``;
            data paths in them are relative to the working directory.
        output_dir: the Shar directory to create, keep or replace.
        fields: data field -> format: ``{"features": "lilcom" | "numpy"}`` (stored fbank) and/or
            ``{"recording": "flac" | "wav"}`` (audio, for on-the-fly features).
        shard_size: cuts per shard.
        num_jobs: parallel writer processes.
        progress: show a tqdm progress bar (lhotse's, per cut or per shard with ``num_jobs > 1``).

    Returns:
        field -> written (or kept) shard paths (``"cuts"`` included).

    Raises:
        FileNotFoundError: naming a missing manifest; or when ``output_dir`` holds anything but
            Shar shards (it is not replaced).
        FileExistsError: (:class:`asr.fileio.OutputBusyError`) while another export writes
            ``output_dir``.
        ValueError: on no manifest, a file that is no cut manifest, no cut at all or a cut
            without a requested field (naming the cut), or a shard_size or num_jobs below 1.
        DataError: naming the first cut whose data cannot be read and its files (storage
            paths in the manifests are relative to the directory they were written from, so
            run from there). Nothing is left behind on an error.
    """
    output_dir = Path(output_dir)
    if output_dir.exists():
        foreign = (sorted(p.name for p in output_dir.iterdir() if not _SHARD.match(p.name))
                   if output_dir.is_dir() else [output_dir.name])
        if foreign:
            raise FileExistsError(
                f"{output_dir} exists and is not a Shar directory (it holds {foreign[:3]}); "
                "remove it or choose another output directory"
            )
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if num_jobs < 1:
        raise ValueError(f"num_jobs must be >= 1, got {num_jobs}")
    cuts = load_cuts(Path.cwd(), [str(m) for m in manifests])  # absolute paths stay as they are
    # Shar writes audio with its transforms applied and drops them: each cut keeps a record of
    # its speed (None: none), which the filter's refusal to perturb it again on the fly reads
    cuts = cuts.map(with_speed_copy_record)
    made_from = {"manifests_sha256": [sha256_of_file(m) for m in manifests],
                 "fields": dict(fields), "shard_size": shard_size}
    with output_lock(output_dir):
        if is_current(output_dir, {**made_from, **_recorded_data_now(output_dir, made_from)}):
            return {field: [str(p) for p in paths]
                    for field, paths in shar_fields(output_dir).items()}
        count, files = _check_cuts(cuts, fields)
        made_from["data_files"] = file_states(sorted(files))  # before the export reads them
        if any(not os.path.isabs(f) for f in files):
            made_from["cwd"] = str(Path.cwd())
        with staging_directory(output_dir) as tmp:
            try:
                written = cuts.to_shar(
                    tmp,
                    fields=dict(fields),
                    shard_size=shard_size,
                    num_jobs=num_jobs,
                    fault_tolerant=False,
                    warn_unused_fields=False,  # e.g. features only: the audio stays where it is
                    verbose=progress,
                )
            except Exception as err:  # e.g. unreadable features: name the cut
                # lhotse's error often names neither the cut nor its file
                for cut in cuts:
                    message = unreadable_cut_error(cut, fields)
                    if message is not None:
                        raise DataError(message) from err
                raise
            publish_directory(tmp, output_dir)  # the old one goes once the new one is in place
            write_fingerprint(output_dir, made_from)
    logger.info("wrote %d cuts in %d shards to %s", count, len(written["cuts"]), output_dir)
    return {
        field: [str(output_dir / Path(path).name) for path in paths]
        for field, paths in written.items()
    }


def _recorded_data_now(output_dir: Path, made_from: Mapping[str, object]) -> dict[str, object]:
    """The data entries (``data_files``, ``cwd``) of ``output_dir``'s stored fingerprint as
    they are now, when it was made from the manifests of ``made_from`` (whose cuts then name
    the same files); as stored otherwise (the manifests alone make it stale)."""
    stored = read_fingerprint(output_dir) or {}
    data = {key: stored[key] for key in ("data_files", "cwd") if key in stored}
    if (stored.get("manifests_sha256") == made_from["manifests_sha256"]
            and isinstance(data.get("data_files"), dict)):
        data["data_files"] = file_states(data["data_files"])
        if "cwd" in data:
            data["cwd"] = str(Path.cwd())
    return data


def _check_cuts(cuts, fields: Mapping[str, str]) -> tuple[int, set[str]]:
    """(number of cuts, the local files holding their ``fields``' data), once every cut has
    each field.

    Raises:
        ValueError: naming a cut without a field, or when there is no cut.
    """
    checks = {"features": "has_features", "recording": "has_recording"}
    count = 0
    files: set[str] = set()
    for cut in cuts:
        count += 1
        for field in fields:
            attribute = checks.get(field)
            if attribute is not None and not getattr(cut, attribute):
                raise ValueError(f"cut {cut.id!r} has no {field} to write to Shar")
        files.update(data_files(cut, fields))
    if count == 0:
        raise ValueError("export_shar: the CutSet is empty")
    return count, files


def shar_fields(shar_dir: str | Path) -> dict[str, list[Path]]:
    """The shard files of one Shar directory: field -> paths sorted by shard index.

    Raises:
        FileNotFoundError: when the directory (a file of its name included) or its cut
            manifests are missing.
        ValueError: when a field's shards do not match the cut manifests' shards one to one.
    """
    shar_dir = Path(shar_dir)
    if shar_dir.is_file():
        raise FileNotFoundError(f"Shar directory {shar_dir} is a file, not a directory")
    if not shar_dir.is_dir():
        raise FileNotFoundError(f"Shar directory {shar_dir} does not exist")
    found: dict[str, dict[int, Path]] = {}
    for path in shar_dir.iterdir():
        match = _SHARD.match(path.name)
        if match:
            found.setdefault(match["field"], {})[int(match["index"])] = path
    if "cuts" not in found:
        raise FileNotFoundError(f"Shar directory {shar_dir} has no cuts.NNNNNN.jsonl.gz manifests")
    indices = sorted(found["cuts"])
    fields = {}
    for field, shards in sorted(found.items()):
        if sorted(shards) != indices:
            raise ValueError(
                f"Shar directory {shar_dir}: field {field!r} has shards {sorted(shards)}, "
                f"the cut manifests {indices}"
            )
        fields[field] = [shards[i] for i in indices]
    return fields


#: What a Shar directory without the field training reads needs (:class:`SharCuts`).
_MISSING_FIELD_FIX = {
    "recording": "on-the-fly features (data.on_the_fly_feats: true) read the audio; write it "
                 "with `asr shar --fields recording=flac`, or set data.on_the_fly_feats: false "
                 "to read stored features",
    "features": "stored features (data.on_the_fly_feats: false) are read from its features; "
                "write them with `asr shar` (features=lilcom by default), or set "
                "data.on_the_fly_feats: true to compute them from its audio",
}


class SharCuts:
    """One lazy training CutSet over Shar directories, shards shuffled per epoch.

    Args:
        dirs: Shar directories (written by :func:`export_shar` or lhotse's ``to_shar``).
        field: the data field training reads: ``"features"`` (stored fbank) or
            ``"recording"`` (audio for on-the-fly features).
        shuffle: shuffle the shard order (all directories together) every epoch.
        seed: shard order of epoch ``e`` is drawn with ``seed + e``.

    Attributes:
        cuts: the lazy CutSet of the cuts with ``field``'s data (what training iterates).
        manifests: the lazy CutSet of the cut manifests alone (counting, filtering, buckets).
        manifest_paths: the shards' cut manifests (``cuts.NNNNNN.jsonl.gz``), directory by
            directory in shard order.
        num_shards: how many shards the directories hold together.

    Raises:
        FileNotFoundError / ValueError: as :func:`shar_fields`, or when a directory lacks
            ``field`` (naming it).
    """

    def __init__(self, dirs: Sequence[str | Path], field: str, shuffle: bool, seed: int) -> None:
        from lhotse import CutSet
        from lhotse.shar import LazySharIterator

        if not dirs:
            raise ValueError("SharCuts needs at least one Shar directory")
        streams: dict[str, list[Path]] = {"cuts": [], field: []}
        for shar_dir in dirs:
            fields = shar_fields(shar_dir)
            if field not in fields:
                raise ValueError(
                    f"Shar directory {shar_dir} has no {field!r} shards (it has "
                    f"{sorted(f for f in fields if f != 'cuts')}): {_MISSING_FIELD_FIX[field]}"
                )
            streams["cuts"] += fields["cuts"]
            streams[field] += fields[field]
        self.num_shards = len(streams["cuts"])
        self.manifest_paths = list(streams["cuts"])  # in directory and shard order
        self.seed = seed
        # stateful_shuffle=False: lhotse's reader would add its own pass counter to the seed,
        # so a second pass over the same epoch (a DataLoader with workers iterates its sampler
        # twice, a resumed epoch skips batches first, a corpus smaller than the sampler's
        # buffer is read to its end before the first batch) would read another shard order.
        self._reader = LazySharIterator(
            fields={name: [str(p) for p in paths] for name, paths in streams.items()},
            shuffle_shards=shuffle,
            stateful_shuffle=False,
            seed=seed,
        )
        self._manifests = LazySharIterator(
            fields={"cuts": [str(p) for p in streams["cuts"]]},
            shuffle_shards=shuffle,
            stateful_shuffle=False,
            seed=seed,
        )
        self.cuts = CutSet(self._reader)
        self.manifests = CutSet(self._manifests)
        self.set_epoch(0)

    def map(self, transform: Callable) -> SharCuts:
        """These shards with ``transform`` (cut -> cut) applied lazily to every cut of
        :attr:`cuts` and of :attr:`manifests` alike; the readers (and so :meth:`set_epoch`) are
        shared with ``self``."""
        return self._view(self.cuts.map(transform), self.manifests.map(transform))

    def filter(self, predicate: Callable) -> SharCuts:
        """These shards without the cuts for which ``predicate`` (cut -> bool) is false, in
        :attr:`cuts` and in :attr:`manifests` alike; the readers are shared with ``self``."""
        return self._view(self.cuts.filter(predicate), self.manifests.filter(predicate))

    def _view(self, cuts, manifests) -> SharCuts:
        """A copy of ``self`` (sharing its readers) whose views are ``cuts`` and
        ``manifests``."""
        view = copy.copy(self)
        view.cuts, view.manifests = cuts, manifests
        return view

    def set_epoch(self, epoch: int) -> None:
        """Shard order of ``epoch`` for every following iteration (of :attr:`cuts` and
        :attr:`manifests`, and of every view made by :meth:`map` and :meth:`filter`) until the
        next call: drawn with ``seed + epoch``, however often the readers are iterated."""
        for reader in (self._reader, self._manifests):
            reader.seed = self.seed + epoch
            reader.epoch = epoch  # only stamped on the cuts (``shar_epoch``)
