"""Compute and store fbank features for CutSets (lilcom-compressed chunked archives).

Speed perturbation (Ko et al., "Audio augmentation for speech recognition", Interspeech 2015)
adds copies of each training cut resampled by factors 0.9 and 1.1 (ids suffixed ``_sp0.9`` /
``_sp1.1``), tripling the training data as in icefall's LibriSpeech recipe. Features are computed
with :func:`asr.features.fbank.make_lhotse_fbank` so stored and on-the-fly features are identical.

Output per part: ``<output_dir>/<prefix>_cuts_<part>.jsonl.gz`` (cuts with features attached) and
the archive ``<output_dir>/<prefix>_feats_<part>.lca`` (or one archive per job under
``<prefix>_feats_<part>/`` when ``num_jobs > 1``).

A part is made by one run at a time (:func:`asr.fileio.output_lock` on its cuts manifest: a
second run on it is refused at once, naming it) and replaced whole: its archive is written
under a temporary name (a staging directory with ``num_jobs > 1``) and renamed into place only
once every cut's features are in it, then the manifest is written atomically. A failed or killed
computation leaves the part's earlier manifest and archive as they were (and the temporary,
which the next run removes); only between the archive's rename and the manifest's write is the
part without a manifest, which the next run then computes again.

Beside the manifest, ``<prefix>_cuts_<part>.jsonl.gz.fingerprint.json`` (:mod:`asr.fingerprint`)
records the size and modification time of each audio file the features were computed from,
taken before they were read and written after the manifest: a rerun computes the part again
when one of them changed since (audio made again with the same length). A part without the
record (stored by an older version, or a kill between its manifest and its record) whose cuts
match the input in ids, transcripts, features and audio records is kept and adopts the files'
current states: the record is written then, logged at INFO, so that a later rewrite is seen.
A moved corpus (its audio files moved with one folder, each keeping its path below it and the
size and modification time recorded, as ``mv``, ``cp -a`` or ``rsync -a`` leave them) keeps
its features: the stored cuts and the record are rewritten to name the new paths, logged at
INFO.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

from asr.checkpoints.io import remove_stale_temporaries
from asr.data.dataset import DataError, check_cut_manifest
from asr.data.filtering import check_cut_audio, cut_files, data_files, unreadable_cut_error
from asr.data.librispeech import PREFIX, cuts_path
from asr.features.fbank import FbankConfig, make_lhotse_fbank
from asr.fileio import output_locks, publish_directory, staging_directory, write_atomic
from asr.fingerprint import file_states, fingerprint_path, read_fingerprint, write_fingerprint

logger = logging.getLogger(__name__)

__all__ = [
    "SPEED_FACTORS", "compute_fbank_for_cuts", "compute_fbank_for_parts", "speed_perturb_cuts",
]

#: Extra speed factors added to training data (1.0, the original, is always kept).
SPEED_FACTORS = (0.9, 1.1)

#: The entry of a part's fingerprint: audio file -> [size, modification time in ns] when its
#: features were computed (:func:`asr.fingerprint.file_states`).
AUDIO_FILES = "audio_files"


def speed_perturb_cuts(cuts, factors: Sequence[float] = SPEED_FACTORS):
    """Returns ``cuts`` followed by one speed-perturbed copy per factor (lazy, ids suffixed).

    Args:
        cuts: a lhotse ``CutSet`` without features (speed perturbation drops features).
        factors: speed factors (> 1 is faster and shorter).
    """
    perturbed = cuts
    for factor in factors:
        if factor <= 0:
            raise ValueError(f"speed factor must be > 0, got {factor}")
        perturbed = perturbed + cuts.perturb_speed(factor)
    return perturbed


def compute_fbank_for_cuts(
    cuts,
    storage_path: str | Path,
    cfg: FbankConfig | None = None,
    num_jobs: int = 1,
    progress_bar: bool = True,
):
    """Computes fbank features for every cut and stores them with ``LilcomChunkyWriter``.

    Args:
        cuts: a lhotse ``CutSet`` (audio attached).
        storage_path: archive path (``num_jobs == 1``) or directory for per-job archives.
        cfg: feature options; defaults to ``FbankConfig()``.
        num_jobs: worker processes.
        progress_bar: show a tqdm progress bar.

    Returns:
        the eager ``CutSet`` with features attached, one per cut of ``cuts``.

    Raises:
        ValueError: naming a cut whose audio is not at ``cfg.sample_rate``, or has several
            channels (:func:`asr.data.filtering.check_cut_audio`).
        DataError: naming the first cut whose audio cannot be read, and its files, in the
            words of :func:`asr.data.filtering.unreadable_cut_error` (lhotse leaves such cuts
            out with a warning: the manifest would lose them silently); the archive of the
            other cuts' features is removed then.
    """
    from lhotse import LilcomChunkyWriter

    cfg = cfg or FbankConfig()
    check_cut_audio(cuts, cfg.sample_rate)
    with _one_thread_per_worker(num_jobs):
        with_feats = cuts.compute_and_store_features(
            extractor=make_lhotse_fbank(cfg),
            storage_path=str(storage_path),
            num_jobs=num_jobs,
            storage_type=LilcomChunkyWriter,
            progress_bar=progress_bar,
        )
    done = {cut.id for cut in with_feats}
    lost = [cut for cut in cuts if cut.id not in done]
    if lost:
        storage = Path(storage_path)  # no manifest will name it: not left half-made on disk
        if storage.is_dir():
            shutil.rmtree(storage, ignore_errors=True)
        else:
            storage.unlink(missing_ok=True)
        first = (unreadable_cut_error(lost[0], ["recording"])
                 or f"lhotse left out cut {lost[0].id!r} ({cut_files(lost[0])})")
        raise DataError(f"cannot compute the features of {len(lost)} of {len(cuts)} cuts; the "
                        f"first: {first} (the features computed for the others were removed)")
    return with_feats


@contextlib.contextmanager
def _one_thread_per_worker(num_jobs: int) -> Iterator[None]:
    """With ``num_jobs > 1``, lhotse's worker processes inherit ``OMP_NUM_THREADS=1`` /
    ``MKL_NUM_THREADS=1``: by default each one starts as many torch threads as there are cores,
    and on 2 cores two such workers took twice as long as one process (with one thread each
    they were ~10% faster than one process)."""
    if num_jobs <= 1:
        yield
        return
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: "1" for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def compute_fbank_for_parts(
    manifest_dir: str | Path,
    output_dir: str | Path,
    parts: Sequence[str],
    perturb_parts: Collection[str] = (),
    cfg: FbankConfig | None = None,
    num_jobs: int = 1,
    prefix: str = PREFIX,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Reads ``<manifest_dir>/<prefix>_cuts_<part>.jsonl.gz``, stores features, writes new cuts.

    Args:
        manifest_dir: directory with the CutSets written by
            :func:`asr.data.librispeech.prepare_manifests`.
        output_dir: where feature archives and the cuts with features go.
        parts: part names.
        perturb_parts: parts that get 0.9/1.1 speed-perturbed copies (usually the training ones).
        cfg: feature options.
        num_jobs: worker processes.
        prefix: manifest name prefix.
        overwrite: recompute parts whose output cuts already exist. Otherwise such a part is
            skipped while its output holds exactly the cut ids its input gives (with the speed
            copies when it is in ``perturb_parts``) with the same transcripts, the same audio
            (each cut's audio files, sampling rate, samples, start and duration) and features
            of ``cfg``'s mel bins and frame shift, and while each audio file that still exists
            has the size and modification time it had when its features were computed (the
            part's fingerprint); it is recomputed with a warning when not: the input manifest
            changed since (cuts, a corrected transcript, audio made again), an audio file was
            rewritten, speed perturbation was switched, other features were asked for
            (``--num-mel-bins``), or a kill cut the output short. A part without its
            fingerprint that matches in all the rest is kept and records the current states of
            its audio files then. An audio file removed since is not a change (its features
            are kept), and neither is a moved corpus: all files moved with one folder (each
            keeping its path below it) and with the sizes and modification times recorded (the
            stored cuts then name the new paths).

    Returns:
        part -> path of its cuts with features.

    Raises:
        FileNotFoundError: naming the missing input CutSet.
        ValueError: naming an input that is no cut manifest; DataError (a ValueError): naming a
            cut whose audio cannot be read.
        asr.fileio.OutputBusyError: (a FileExistsError) at once, naming the part's manifest,
            while another run makes that part.
    """
    from lhotse import CutSet

    cfg = cfg or FbankConfig()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    unknown = set(perturb_parts) - set(parts)
    if unknown:
        raise ValueError(f"perturb_parts {sorted(unknown)} are not among parts {list(parts)}")
    parts = list(dict.fromkeys(parts))  # one lock per part
    results = {}
    # all before any work: a second run on one of the parts is refused now
    with output_locks(cuts_path(output_dir, part, prefix) for part in parts):
        remove_stale_temporaries(output_dir)  # archives of killed runs
        for part in parts:
            src = cuts_path(manifest_dir, part, prefix)
            dst = cuts_path(output_dir, part, prefix)
            results[part] = dst
            if dst.is_file() and not overwrite:
                stale = _stale_reason(src, dst, part in perturb_parts, cfg)
                if stale is None:
                    logger.info("%s exists: skipping part %s", dst, part)
                    continue
                logger.warning("%s %s: computing part %s again", dst, stale, part)
            # from here a kill leaves no record that could pass for the new features' audio
            fingerprint_path(dst).unlink(missing_ok=True)
            if not src.is_file():
                raise FileNotFoundError(f"input cuts {src} for part {part!r} do not exist")
            check_cut_manifest(src)  # lhotse's error on a text file or a broken gzip names no file
            cuts = CutSet.from_file(src)
            # before the features read them: a file rewritten meanwhile is seen by the next run
            audio = file_states(_audio_files(cuts))
            if part in perturb_parts:
                logger.info("%s: adding speed perturbation copies %s", part, SPEED_FACTORS)
                cuts = speed_perturb_cuts(cuts)
            storage = output_dir / (
                f"{prefix}_feats_{part}" if num_jobs > 1 else f"{prefix}_feats_{part}.lca"
            )
            logger.info("%s: computing fbank into %s", part, storage)
            with_feats = _store_features(cuts, storage, dst, cfg, num_jobs)
            write_atomic(dst, with_feats.to_file, suffix=".jsonl.gz")  # lhotse reads it by name
            write_fingerprint(dst, {AUDIO_FILES: audio})
            logger.info("%s: wrote %d cuts to %s", part, len(with_feats), dst)
    return results


def _store_features(cuts, storage: Path, manifest: Path, cfg: FbankConfig | None,
                    num_jobs: int):
    """Computes the features of ``cuts`` into a temporary archive (or staging directory) and
    renames it to ``storage`` once complete; the cuts returned name ``storage``.

    The earlier ``manifest`` of the part, which points into the archive being replaced, is
    removed just before the rename: until then a failure leaves the earlier part whole, and
    after it no manifest points into an archive it was not written with.
    """
    if num_jobs > 1:
        with staging_directory(storage) as tmp:
            with_feats = _relocated(compute_fbank_for_cuts(cuts, tmp, cfg, num_jobs=num_jobs),
                                    tmp, storage)
            manifest.unlink(missing_ok=True)
            publish_directory(tmp, storage)
        return with_feats
    made = []

    def write(tmp: Path) -> None:
        made.append(_relocated(compute_fbank_for_cuts(cuts, tmp, cfg), tmp, storage))
        manifest.unlink(missing_ok=True)

    write_atomic(storage, write, suffix=".lca")  # lhotse's writer keeps a name ending in .lca
    return made[0]


def _relocated(cuts, written: Path, final: Path):
    """``cuts`` (eager, with features) with their feature paths under ``written`` (the temporary
    archive or directory) moved to ``final``."""
    written_name, final_name = str(written), str(final)
    for cut in cuts:
        path = cut.features.storage_path
        if path != written_name and not path.startswith(written_name + os.sep):
            raise RuntimeError(f"cut {cut.id!r}: features stored in {path}, not in {written}")
        cut.features.storage_path = final_name + path[len(written_name):]
    return cuts


def _stale_reason(src: Path, dst: Path, perturbed: bool, cfg: FbankConfig) -> str | None:
    """Why the stored cuts ``dst`` are not those of the input ``src`` made with ``cfg`` (None:
    they are, or there is no input left to compare with). Compares the mel bins and frame
    shift of the stored features with ``cfg``'s (a run with another ``--num-mel-bins`` kept the
    old features and said only that the part exists), cut ids, as many of each: ``src``'s,
    and with ``perturbed`` also their speed copies (lhotse's ``<id>_sp<factor>``), each cut's
    transcripts (a corrected transcript, which stage 1 takes into ``src``, would leave the
    stored references stale), each input cut's audio (:func:`_audio`; the speed copies are
    made from it in the same run, and are told from the input's cuts by their audio's speed
    transform, not by id: an input cut ``r_sp0.9`` beside ``r`` shares its id with a copy of
    ``r``, :func:`_originals`), and then the audio files' sizes and modification times with those
    the part's fingerprint recorded (:func:`_changed_audio_files`): audio made again with
    the same ids and texts left the features of the old audio. A part that matches in all
    but has no fingerprint gets one here, of the files' current states; one whose audio
    differs only by the files' moves (:func:`_moved_audio_files`) is rewritten to name the
    new paths here (:func:`_relocate`)."""
    from lhotse.serialization import load_jsonl

    if not src.is_file():
        return None
    stored, shapes, stored_audio = [], set(), []
    try:
        for record in load_jsonl(dst):
            stored.append((record["id"], _texts(record)))
            stored_audio.append((record["id"], _texts(record), _audio(record)))
            shapes.add((record["features"]["num_features"], record["features"]["frame_shift"]))
    except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
        return f"is unreadable ({type(err).__name__})"
    other = sorted(shape for shape in shapes
                   if shape[0] != cfg.num_mel_bins
                   or not math.isclose(shape[1], cfg.frame_shift, rel_tol=1e-6))
    if other:
        bins, shift = other[0]
        return (f"holds features of {bins} mel bins every {shift * 1000:g} ms, not the "
                f"{cfg.num_mel_bins} every {cfg.frame_shift_ms:g} ms asked for")
    records = list(load_jsonl(src))
    wanted = [(record["id"], _texts(record)) for record in records]
    if perturbed:
        wanted += [(f"{cut_id}_sp{factor}", texts) for factor in SPEED_FACTORS
                   for cut_id, texts in wanted]
    copies = " with speed copies" if perturbed else ""
    if len(stored) != len(wanted):
        return f"holds {len(stored)} cuts, not the {len(wanted)} of {src}{copies}"
    # as many of each id, a repeated one too: the stored cuts less their speed copies are then
    # as many as the input's, each of its audio paired with one stored cut below
    ids, wanted_ids = Counter(i for i, _ in stored), Counter(i for i, _ in wanted)
    if ids != wanted_ids:
        example = min((ids - wanted_ids) + (wanted_ids - ids))
        return (f"holds other cut ids than {src}{copies} (e.g. {example} {ids[example]} "
                f"time(s), not {wanted_ids[example]})")
    changed = Counter(wanted) - Counter(stored)
    if changed:
        example = min(cut_id for cut_id, _ in changed)
        return (f"holds other transcripts than {src}{copies} "
                f"({changed.total()} cut(s), e.g. {example})")
    inputs = [(record["id"], _texts(record), _audio(record)) for record in records]
    if _originals(stored_audio, inputs) != Counter(inputs):
        moves = _moved_audio_files(dst, stored_audio, inputs)
        if moves is None:
            return _other_audio(src, stored_audio, inputs)
        _relocate(dst, moves)
    return _changed_audio_files(dst, records)


def _originals(stored: list[tuple[str, tuple, tuple]],
               inputs: list[tuple[str, tuple, tuple]]) -> Counter:
    """The stored cuts ``stored`` (id, transcripts, :func:`_audio`) that are input cuts of
    ``inputs``, as many of each as both hold: the rest are the speed copies (their audio has a
    speed transform, so that a copy is told from an input cut of its id, ``r_sp0.9`` beside
    ``r``) or cuts of other audio."""
    return Counter(stored) & Counter(inputs)


def _other_audio(src: Path, stored: list[tuple[str, tuple, tuple]],
                 inputs: list[tuple[str, tuple, tuple]]) -> str:
    """Why the stored cuts ``stored`` hold features of other audio than those of ``src``,
    ``inputs`` (both id, transcripts, :func:`_audio`), naming one input cut whose audio no
    stored cut of its id has, and that of a stored cut of its id (one that is no input cut,
    of the same speed transforms where one is)."""
    other = Counter(inputs) - Counter(stored)
    cut_id, _, new = min(other, key=lambda cut: cut[0])
    left = Counter(stored) - _originals(stored, inputs)
    candidates = [audio for i, _, audio in [*left, *stored] if i == cut_id]
    old = next((audio for audio in candidates if audio[-1] == new[-1]), candidates[0])
    return (f"holds features of other audio than {src} ({other.total()} cut(s), e.g. "
            f"{cut_id}: {_describe(old)}, now {_describe(new, files=new[0] != old[0])})")


def _moved_audio_files(dst: Path, stored: list[tuple[str, tuple, tuple]],
                       inputs: list[tuple[str, tuple, tuple]]) -> dict[str, str] | None:
    """The moves (stored path -> input path) that turn the stored cuts ``stored`` of ``dst``
    (id, transcripts, :func:`_audio`; with their speed copies, which name their originals'
    files) into their input ``inputs`` (:func:`_originals`),
    when it is a moved corpus: the files the input names and the stored cuts do not are those
    the stored cuts name and the input does not, each moved with its path below one folder
    (:func:`_folder_move`, as ``mv corpus new_place`` leaves them), onto paths the part's
    fingerprint does not hold; the stored cuts, each with its own file's new path, are then
    the input's cuts (as many of each: paired by path, not by cut id, which may repeat), and
    each input file has the size and modification time that the fingerprint recorded for its
    stored path when its features were computed (``mv``, ``cp -a`` and ``rsync -a`` keep
    both). Files of one name, size and time in other folders (equal-length clips a tar
    extracted) that the input paired with other cuts than their own (swapped, joined on one
    file, or crossed between folders by a stage 1 whose cut ids do not follow the paths) are
    no move. None otherwise, or without a readable record."""
    recorded = (read_fingerprint(dst) or {}).get(AUDIO_FILES)
    if not isinstance(recorded, dict) or any(
            audio[0] == "mix" for _, _, audio in [*stored, *inputs]):
        return None
    before = {path for _, _, audio in stored for path in audio[0]}
    after = {path for _, _, audio in inputs for path in audio[0]}
    came = after - before
    if not came or not came.isdisjoint(recorded):
        return None
    moves = _folder_move(before - after, came)
    if moves is None or _originals(
            [(cut_id, texts, (tuple(moves.get(path, path) for path in audio[0]), *audio[1:]))
             for cut_id, texts, audio in stored], inputs) != Counter(inputs):
        return None
    now = file_states(moves.values())
    if any(recorded.get(old) is None or now[new] != recorded[old] for old, new in moves.items()):
        return None
    return moves


def _folder_move(gone: set[str], came: set[str]) -> dict[str, str] | None:
    """The one move of a folder that takes the files ``gone`` to the files ``came`` (not empty;
    old path ->
    new path), each keeping its path below the folder: its roots are those
    (:func:`_moved_root`) of the first new file and the old file that shares the longest tail
    of components with it, then every old file below the old root must land on a new file
    and every new file be reached. None where no move does (or more than one could)."""
    first = min(came)
    name = os.path.basename(first)
    pairs = [(len(Path(old).parts) - len(root[0].parts), root) for old in gone
             if os.path.basename(old) == name and (root := _moved_root(old, first))]
    longest = max((shared for shared, _ in pairs), default=0)
    roots = {root for shared, root in pairs if shared == longest}
    if len(roots) != 1:
        return None
    [(old_root, new_root)] = roots
    # by strings: a Path per file took 20 s for LibriSpeech's 280k (a path spelled otherwise,
    # such as a//b, then lands on no new file: no move, computed again)
    old_prefix, new_prefix = (os.path.join(str(root), "") if str(root) != "." else ""
                              for root in (old_root, new_root))
    moves = {old: new_prefix + old[len(old_prefix):] for old in gone
             if old.startswith(old_prefix)}
    return moves if set(moves.values()) == came else None


def _moved_root(before: str, after: str) -> tuple[Path, Path] | None:
    """The folders ``(old, new)`` whose move turned the path ``before`` into ``after``: the paths
    less the longest tail of components they share (``/a/LibriSpeech/x/1.flac`` ->
    ``/b/LibriSpeech/x/1.flac`` gives ``(/a, /b)``). Files moved together give one pair (the
    tail of the roots they share is the same for each); None when the names differ."""
    old, new = Path(before).parts, Path(after).parts
    shared = 0
    while shared < min(len(old), len(new)) and old[-1 - shared] == new[-1 - shared]:
        shared += 1
    if not shared:
        return None
    return Path(*old[:len(old) - shared]), Path(*new[:len(new) - shared])


def _relocate(dst: Path, moves: dict[str, str]) -> None:
    """Rewrites the stored cuts ``dst`` (their speed copies too) and the part's fingerprint to
    name the audio files' new paths ``moves`` (old path -> new path): their features are
    kept. The fingerprint goes first, so that a kill in between leaves a part that adopts the
    files' states (:func:`_changed_audio_files`), not a record of the old paths."""
    from lhotse.serialization import load_jsonl, save_to_jsonl

    stored = read_fingerprint(dst)[AUDIO_FILES]
    records = list(load_jsonl(dst))
    for record in records:
        for source in (record.get("recording") or {}).get("sources", []):
            source["source"] = moves.get(source.get("source"), source.get("source"))
    fingerprint_path(dst).unlink()
    write_atomic(dst, lambda tmp: save_to_jsonl(records, tmp), suffix=".jsonl.gz")
    write_fingerprint(dst, {AUDIO_FILES: {moves.get(path, path): state
                                          for path, state in stored.items()}})
    before, after = min(moves.items())
    logger.info("%s: %d of its audio files moved (e.g. %s -> %s, with the size and modification "
                "time recorded when their features were computed): kept its features, and it "
                "now names the new paths", dst, len(moves), before, after)


def _audio_files(cuts) -> list[str]:
    """The audio files of ``cuts`` (a lhotse ``CutSet``), sorted: those a part's fingerprint
    records."""
    return sorted({path for cut in cuts for path in data_files(cut, ["recording"])})


def _audio(record: dict) -> tuple:
    """What identifies the audio of a cut manifest's record: its recording's files, sampling
    rate and number of samples, the cut's start, duration and channel, and last the
    recording's transforms (a speed copy's ``Speed``; a cut of another kind, e.g. a mix, by its
    tracks); hashable."""
    if "tracks" in record:
        return ("mix", tuple(_audio(track.get("cut", {})) for track in record["tracks"]))
    recording = record.get("recording") or {}
    return (tuple(source.get("source") for source in recording.get("sources", [])),
            recording.get("sampling_rate"), recording.get("num_samples"),
            record.get("start"), record.get("duration"), _hashable(record.get("channel")),
            _hashable(recording.get("transforms") or []))


def _hashable(value: object) -> object:
    """``value`` read from JSON with its lists as tuples and its objects as sorted tuples of
    items: a part of :func:`_audio`, which counts cuts (a multichannel cut's ``channel`` is a
    list, a recording's ``transforms`` a list of objects)."""
    if isinstance(value, dict):
        return tuple(sorted((key, _hashable(item)) for key, item in value.items()))
    return tuple(map(_hashable, value)) if isinstance(value, list) else value


def _describe(audio: tuple, files: bool = True) -> str:
    """One cut's :func:`_audio` in words: ``"2.81 s of 44960 samples at 16000 Hz in <file>"``
    (without ``files``, the part from ``" in"`` left out)."""
    if audio[0] == "mix":
        return f"a mix of {len(audio[1])} tracks"
    paths, rate, samples, _, duration, _, _ = audio
    where = f" in {', '.join(map(str, paths))}" if files else ""
    return f"{duration:g} s of {samples} samples at {rate} Hz{where}"


def _changed_audio_files(dst: Path, records: list[dict]) -> str | None:
    """Why the audio files recorded in the fingerprint of the stored cuts ``dst`` no longer
    say that its features are theirs (None: each one that still exists has the size and
    modification time recorded when its features were computed; a file removed since is no
    change).

    A part without a readable record (stored by a version that wrote none, or a kill between
    its manifest and its record), whose cuts the caller found to match the input manifest's
    ``records`` in ids, transcripts, features and audio, adopts the current states of the
    input's audio files: they are recorded now, with one line at INFO, and the part is kept.
    Computing it again would cost hours for LibriSpeech with speed copies, while stage 1 has
    checked the files' headers against that manifest; a rewrite of the same length before
    this run goes unseen, one after it is seen.
    """
    stored = (read_fingerprint(dst) or {}).get(AUDIO_FILES)
    if not isinstance(stored, dict):
        from lhotse import CutSet

        audio = file_states(_audio_files(CutSet.from_dicts(records)))
        write_fingerprint(dst, {AUDIO_FILES: audio})
        logger.info("%s has no record of its audio files (%s): adopted the current states of "
                    "the %d audio files of its input, whose manifest it matches", dst,
                    fingerprint_path(dst).name, len(audio))
        return None
    now = file_states(stored)
    changed = sorted(path for path, state in now.items()
                     if state is not None and state != stored[path])
    if changed:
        return (f"holds features of audio files rewritten since ({len(changed)} of "
                f"{len(stored)}, e.g. {changed[0]})")
    return None


def _texts(record: dict) -> tuple[str | None, ...]:
    """The transcripts of a cut manifest's record, one per supervision."""
    return tuple(sup.get("text") for sup in record.get("supervisions", []))
