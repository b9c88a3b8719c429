"""LibriSpeech-layout corpora -> validated lhotse manifests and CutSets.

The LibriSpeech layout (Panayotov et al., "LibriSpeech: an ASR corpus based on public domain audio
books", ICASSP 2015) is::

    <corpus_dir>/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    <corpus_dir>/<part>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt

where each ``.trans.txt`` line is ``<speaker>-<chapter>-<utt> TRANSCRIPT``. Part names
(``train-clean-100``, ``train-clean-5``, ``dev-clean-2``, ``test-clean``, ...) are just directory
names here, so synthetic corpora with any part names work.

lhotse's own recipe (:func:`lhotse.recipes.prepare_librispeech`) writes the recording and
supervision manifests, but it silently skips a transcript line whose flac is missing and crashes
with an unhelpful message on a malformed line. :func:`validate_librispeech_tree` runs first and
raises :class:`CorpusError` naming the file and line number instead. lhotse reads each flac's
duration from its header, which a file cut short keeps: :func:`check_audio_lengths` then decodes
every file and refuses one that does not give the samples its header declares, so a broken file
is caught here, the first stage, and not only where its audio is read (``asr prepare fbank``, or
training with on-the-fly features).

Example:
    >>> paths = prepare_manifests("download/LibriSpeech", "data/manifests",
    ...                           parts=["train-clean-5", "dev-clean-2"])
    >>> paths["dev-clean-2"]
    PosixPath('data/manifests/librispeech_cuts_dev-clean-2.jsonl.gz')
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import random
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from asr.audio import AudioError, declared_length, decode_audio
from asr.data.cut_ids import Repeats, line_cut_id, load_eval_cuts
from asr.data.dataset import numbered_cut_lines
from asr.fileio import output_lock, output_locks, read_lines, read_text, write_atomic

if TYPE_CHECKING:  # pragma: no cover
    from lhotse import CutSet

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "CorpusError",
    "PartSummary",
    "check_audio_lengths",
    "check_test_parts",
    "cuts_path",
    "load_test_part",
    "prepare_manifests",
    "validate_librispeech_tree",
]

PREFIX = "librispeech"
_UTT_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_TRANS_NAME = re.compile(r"^(\d+)-(\d+)\.trans\.txt$")


class CorpusError(ValueError):
    """A corpus file that does not follow the LibriSpeech layout (names the file and line)."""


@dataclass(frozen=True)
class PartSummary:
    """What :func:`validate_librispeech_tree` found in one part.

    Attributes:
        part: part (directory) name.
        num_utterances: transcript lines (each with an existing flac).
        num_speakers: distinct speaker directories with transcripts.
        num_unreferenced_flacs: flac files that no transcript line mentions (ignored by lhotse).
    """

    part: str
    num_utterances: int
    num_speakers: int
    num_unreferenced_flacs: int


def cuts_path(output_dir: str | Path, part: str, prefix: str = PREFIX) -> Path:
    """Path of the CutSet manifest of ``part``: ``<output_dir>/<prefix>_cuts_<part>.jsonl.gz``."""
    return Path(output_dir) / f"{prefix}_cuts_{part}.jsonl.gz"


def _part_dir(corpus_dir: Path, part: str) -> Path:
    part_dir = corpus_dir / part
    if part_dir.is_dir():
        return part_dir
    hint = ""
    if (corpus_dir / "LibriSpeech" / part).is_dir():
        hint = f"; did you mean --corpus-dir {corpus_dir / 'LibriSpeech'}?"
    raise CorpusError(f"part directory {part_dir} does not exist{hint}")


def _check_trans_file(trans_path: Path, part_dir: Path, seen: dict[str, str],
                      texts: dict[str, str]) -> int:
    """Checks one ``.trans.txt`` file, adding each utterance's text to ``texts`` (id -> text as
    the file writes it); returns its number of utterances."""
    match = _TRANS_NAME.match(trans_path.name)
    if match is None:
        raise CorpusError(
            f"{trans_path}: file name must be '<speaker>-<chapter>.trans.txt' with numeric ids"
        )
    speaker, chapter = match.groups()
    expected_dir = part_dir / speaker / chapter
    if trans_path.parent != expected_dir:
        raise CorpusError(f"{trans_path}: must be located in {expected_dir}")
    count = 0
    try:
        lines = read_lines(trans_path)  # \n and \r\n, as lhotse's open() reads them
    except ValueError as err:  # not UTF-8: names the file and line, Python's error neither
        raise CorpusError(str(err)) from None
    if lines and lines[-1].endswith("\r") and read_text(trans_path).endswith("\r"):
        lines[-1] = lines[-1][:-1]  # the file's last \r ends its last line, as open() reads it
    for line_no, raw in enumerate(lines, start=1):
        where = f"{trans_path}:{line_no}"
        if "\r" in raw:  # read_lines keeps a lone \r in its line; lhotse's open() breaks there
            raise CorpusError(f"{where}: a carriage return (\\r) inside the line: lhotse's reader "
                              "would start a new line there; remove it or make it a space")
        fields = raw.strip().split(maxsplit=1)
        if not fields:
            raise CorpusError(f"{where}: empty line (expected '<speaker>-<chapter>-<utt> TEXT')")
        utt_id = fields[0]
        id_match = _UTT_ID.match(utt_id)
        if id_match is None:
            raise CorpusError(
                f"{where}: bad utterance id {utt_id!r} (expected '<speaker>-<chapter>-<utt>' "
                "with numeric fields)"
            )
        if id_match.groups()[:2] != (speaker, chapter):
            raise CorpusError(
                f"{where}: utterance id {utt_id!r} does not belong to speaker {speaker} "
                f"chapter {chapter} of this file"
            )
        if len(fields) < 2 or not fields[1].strip():
            raise CorpusError(f"{where}: utterance {utt_id!r} has no transcript text")
        if utt_id in seen:
            raise CorpusError(
                f"{where}: duplicate utterance id {utt_id!r} (first in {seen[utt_id]})"
            )
        flac = trans_path.parent / f"{utt_id}.flac"
        if not flac.is_file():
            raise CorpusError(f"{where}: audio file {flac} for utterance {utt_id!r} is missing")
        seen[utt_id] = where
        texts[utt_id] = fields[1]
        count += 1
    return count


def validate_librispeech_tree(corpus_dir: str | Path, parts: Sequence[str]) -> list[PartSummary]:
    """Checks the LibriSpeech layout of ``parts`` under ``corpus_dir`` before lhotse reads them.

    Args:
        corpus_dir: directory that contains the part directories (e.g. ``download/LibriSpeech``).
        parts: part directory names.

    Returns:
        one :class:`PartSummary` per part, in order.

    Raises:
        CorpusError: naming the file (and line) for a missing part directory, a part without
            transcripts, a badly named or misplaced ``.trans.txt``, an empty line, a malformed
            utterance id, an id not matching the file's speaker-chapter, a line without text,
            a duplicate id, a transcript line whose flac is missing, a transcript that is
            not UTF-8, or a carriage return inside a line (lhotse's ``open()`` starts a line
            there; the file's last character may be one, which ends its last line).
    """
    return [summary for summary, _ in _validated_parts(corpus_dir, parts)]


def _validated_parts(corpus_dir: str | Path, parts: Sequence[str]
                     ) -> list[tuple[PartSummary, dict[str, str]]]:
    """:func:`validate_librispeech_tree` with each part's texts (utterance id -> text) read in
    the same pass over its transcripts."""
    corpus_dir = Path(corpus_dir)
    if not parts:
        raise CorpusError("no dataset parts given")
    validated = []
    for part in parts:
        part_dir = _part_dir(corpus_dir, part)
        trans_files = sorted(part_dir.rglob("*.trans.txt"))
        if not trans_files:
            raise CorpusError(f"{part_dir}: no '*.trans.txt' transcript files found")
        seen: dict[str, str] = {}
        texts: dict[str, str] = {}
        speakers = set()
        for trans_path in trans_files:
            if _check_trans_file(trans_path, part_dir, seen, texts):
                speakers.add(trans_path.parent.parent.name)
        flacs = {p.stem for p in part_dir.rglob("*.flac")}
        unreferenced = len(flacs - set(seen))
        if unreferenced:
            logger.warning("%s: %d flac files have no transcript line", part_dir, unreferenced)
        validated.append((PartSummary(part, len(seen), len(speakers), unreferenced), texts))
        logger.info("%s: %d utterances, %d speakers", part_dir, len(seen), len(speakers))
    return validated


def prepare_manifests(
    corpus_dir: str | Path,
    output_dir: str | Path,
    parts: Sequence[str],
    num_jobs: int = 1,
    normalize_text: str = "none",
) -> dict[str, Path]:
    """Validates the corpus, writes lhotse manifests and per-utterance CutSets.

    Writes ``librispeech_{recordings,supervisions}_<part>.jsonl.gz`` with lhotse's LibriSpeech
    recipe, then ``librispeech_cuts_<part>.jsonl.gz``: one cut per supervision
    (``trim_to_supervisions``), without features. lhotse reuses the recordings and supervisions
    already in ``output_dir``; they are kept only while they hold exactly the corpus's
    utterances and texts, and each recording the samples and rate its audio file's header
    declares now (see :func:`_drop_stale_manifests`), so a corpus that changed (its
    transcripts, or audio made again under the same ids), a different ``normalize_text`` or a
    manifest cut short by a kill is prepared again.

    Args:
        corpus_dir: directory containing the part directories.
        output_dir: where the manifests are written (created if needed).
        parts: part directory names.
        num_jobs: threads that read the audio headers (lhotse's and the check of the cached
            recordings) and decode the audio (:func:`check_audio_lengths`).
        normalize_text: "none" (keep the corpus text) or "lower" (lhotse's lower-casing).

    Returns:
        part -> path of its CutSet manifest.

    Raises:
        CorpusError: see :func:`validate_librispeech_tree`; or naming an audio file that does
            not decode to the samples its header declares (:func:`check_audio_lengths`), before
            any cut manifest is written (the part's recordings and supervisions are removed).
        asr.fileio.OutputBusyError: while another run prepares one of ``parts`` in
            ``output_dir`` (each part is locked on its cut manifest, before anything is read).
    """
    if normalize_text not in ("none", "lower"):
        raise ValueError(f"normalize_text must be 'none' or 'lower', got {normalize_text!r}")
    texts = {summary.part: texts for summary, texts in _validated_parts(corpus_dir, parts)}
    output_dir = Path(output_dir)
    # lhotse writes a part's recordings and supervisions in place
    with output_locks(cuts_path(output_dir, part) for part in parts):
        return _write_manifests(corpus_dir, output_dir, parts, num_jobs, normalize_text, texts)


def _write_manifests(corpus_dir: str | Path, output_dir: Path, parts: Sequence[str],
                     num_jobs: int, normalize_text: str, texts: dict[str, dict[str, str]]
                     ) -> dict[str, Path]:
    """The body of :func:`prepare_manifests`, run under the parts' locks; ``texts``: each
    part's utterance texts as its transcripts write them (:func:`_validated_parts`)."""
    from lhotse import CutSet
    from lhotse.recipes import prepare_librispeech

    for part in parts:
        lower = normalize_text == "lower"  # as lhotse's recipe normalizes them
        _drop_stale_manifests(output_dir, part, {utt: text.lower() if lower else text
                                                 for utt, text in texts[part].items()}, num_jobs)
    manifests = prepare_librispeech(
        corpus_dir,
        dataset_parts=list(parts),
        output_dir=output_dir,
        normalize_text=normalize_text,
        num_jobs=num_jobs,
    )
    for part in parts:
        if part not in manifests:
            raise RuntimeError(f"lhotse prepared no manifests for part {part!r} in {output_dir}")
        try:
            check_audio_lengths(manifests[part]["recordings"], num_jobs)
        except CorpusError:  # the next run reads the headers again, of a file replaced since
            for path in _cached_manifests(output_dir, part):
                path.unlink(missing_ok=True)
            raise
    paths = {}
    for part in parts:
        cuts = CutSet.from_manifests(
            recordings=manifests[part]["recordings"],
            supervisions=manifests[part]["supervisions"],
        ).trim_to_supervisions(keep_overlapping=False).to_eager()
        path = cuts_path(output_dir, part)
        write_atomic(path, cuts.to_file, suffix=".jsonl.gz")  # complete or absent for stage 2
        logger.info("wrote %d cuts to %s", len(cuts), path)
        paths[part] = path
    return paths


def check_audio_lengths(recordings, num_jobs: int = 1) -> None:
    """Decodes the audio files of ``recordings`` and checks that each gives the number of samples
    its recording declares (``num_samples``, read from the file's header).

    A FLAC file cut short keeps an intact header: lhotse takes its duration from there, and
    without this check the file passed ``asr prepare manifests`` and was refused only where its
    audio is read (``asr prepare fbank``, or training with on-the-fly features). Decoding costs
    about 0.6 ms per LibriSpeech-length file on one core (~9 s for 15,200 files of ~2.3 s, where
    the rest of the stage took ~12 s); ``num_jobs`` threads share it.

    Args:
        recordings: lhotse recordings (a ``RecordingSet``); sources that are not local files
            (URLs, commands) are not decoded.
        num_jobs: decoding threads.

    Raises:
        CorpusError: naming the first file (in ``recordings``' order) that does not decode, or
            decodes to another number of samples.
    """
    work = [(source.source, recording.num_samples) for recording in recordings
            for source in recording.sources if source.type == "file"]
    with _mapped(_length_problem, work, num_jobs) as problems:
        problem = next((p for p in problems if p is not None), None)
    if problem is not None:
        raise CorpusError(f"{problem}; replace the file, or remove it and its transcript line")


@contextlib.contextmanager
def _mapped(check: Callable[[T], str | None], work: list[T], num_jobs: int
            ) -> Iterator[Iterator[str | None]]:
    """``check`` of each item of ``work`` (a per-file check of the audio), lazily, in order:
    in ``num_jobs`` threads when more than one (libsndfile reads without the GIL). The files
    the caller has not asked for when the block ends are not checked."""
    if num_jobs <= 1:
        yield map(check, work)
        return
    with ThreadPoolExecutor(num_jobs) as pool:
        yield pool.map(check, work)
        pool.shutdown(cancel_futures=True)  # e.g. the files after a bad one


def _length_problem(item: tuple[str, int]) -> str | None:
    """Why the audio file ``item[0]`` does not decode to ``item[1]`` samples (None: it does)."""
    path, declared = item
    try:
        decoded = decode_audio(path, target_rate=None).samples.shape[0]
    except AudioError as err:
        return str(err)
    if decoded != declared:
        return (f"{path}: truncated or corrupt audio: its header declares {declared} samples, "
                f"{decoded} decode")
    return None


def _cached_manifests(output_dir: Path, part: str) -> list[Path]:
    """The recordings and supervisions manifests of ``part`` that lhotse's recipe reuses."""
    return [output_dir / f"{PREFIX}_{kind}_{part}.jsonl.gz"
            for kind in ("recordings", "supervisions")]


def _drop_stale_manifests(output_dir: Path, part: str, texts: dict[str, str],
                          num_jobs: int = 1) -> None:
    """Removes the cached recordings/supervisions of ``part`` unless they hold exactly the
    utterances and texts of ``texts`` and each recording still describes its audio file, so
    that lhotse's recipe prepares the part again instead of reusing them (it reuses whatever it
    finds: manifests of an earlier, partial corpus, of audio made again since, or a gzip file
    cut short by a kill, which it cannot read).

    A recording describes its file while the file's header declares the samples and rate the
    recording holds (:func:`_changed_recordings`: the header alone is read, as lhotse reads it
    to make the recording; ``num_jobs`` threads read them).
    """
    from lhotse.serialization import load_jsonl

    paths = _cached_manifests(output_dir, part)
    if not any(path.is_file() for path in paths):
        return
    try:
        recordings = list(load_jsonl(paths[0]))
        recording_ids = {record["id"] for record in recordings}
        supervised = {record["id"]: record.get("text") for record in load_jsonl(paths[1])}
    except (OSError, EOFError, ValueError, KeyError) as err:  # missing, truncated, not JSON
        reason = f"unreadable ({type(err).__name__}: {err})"
    else:
        if recording_ids != texts.keys() or supervised != texts:
            reason = (f"{len(recording_ids)} recordings and {len(supervised)} supervisions that "
                      f"differ from the corpus's {len(texts)} utterances")
        else:
            changed = _changed_recordings(recordings, num_jobs)
            if not changed:
                return
            reason = (f"recordings of audio files that changed since ({len(changed)} of "
                      f"{len(recordings)}, e.g. {changed[0]})")
    logger.warning("%s: cached manifests of %s are %s: preparing them again", output_dir, part,
                   reason)
    for path in paths:
        path.unlink(missing_ok=True)


def _changed_recordings(recordings: list[dict], num_jobs: int = 1) -> list[str]:
    """The recordings (lhotse's manifest records) whose local audio file's header no longer
    declares the samples and rate they hold, each as ``"<file>: <samples> samples at <rate> Hz
    in the manifest, <samples> at <rate> Hz in the file"`` (or that it is gone or unreadable),
    in the manifest's order.

    An audio file made again (``asr synthesize --overwrite``, a corpus replaced under the same
    utterance ids and texts) gives another length; the manifest's would then fail the decoding
    check (:func:`check_audio_lengths`) as a truncated file. Sources that are not local files
    (URLs, commands) are not read.
    """
    work = [(source["source"], record["num_samples"], record["sampling_rate"])
            for record in recordings for source in record.get("sources", ())
            if source.get("type") == "file"]
    with _mapped(_header_change, work, num_jobs) as problems:
        return [problem for problem in problems if problem is not None]


def _header_change(item: tuple[str, int, int]) -> str | None:
    """How the header of the audio file ``item[0]`` differs from ``item[1]`` samples at
    ``item[2]`` Hz (None: it declares them)."""
    path, samples, rate = item
    if not Path(path).is_file():
        return f"{path}: no such file"
    now = declared_length(path)
    if now == (samples, rate):
        return None
    in_file = "no length readable" if now is None else f"{now[0]} at {now[1]} Hz"
    return f"{path}: {samples} samples at {rate} Hz in the manifest, {in_file} in the file"


def check_test_parts(manifest_dir: str | Path, parts: Sequence[str]) -> dict[str, CutSet]:
    """The test sets ``<manifest_dir>/librispeech_cuts_<part>.jsonl.gz`` of ``parts``, each
    loaded by :func:`load_test_part` (so checked to name each cut once), all before a decoding
    run writes anything; a run decodes the cuts returned here, each manifest read once.

    Returns:
        part -> its cuts (an eager lhotse CutSet), in the order of ``parts``.

    Raises:
        FileNotFoundError / DuplicateIdError / ValueError: as ``load_test_part``, for the first
            part that fails.
    """
    return {part: load_test_part(manifest_dir, part) for part in parts}


def load_test_part(manifest_dir: str | Path, part: str) -> CutSet:
    """The cuts of the test set ``<manifest_dir>/librispeech_cuts_<part>.jsonl.gz``, eager, at
    least one (an empty set would be scored as a WER of 0.00), each id once
    (:func:`asr.data.cut_ids.load_eval_cuts`: one read of the manifest), each with a
    supervision (a cut without one has no reference: scored against an empty one, its words
    would all count as insertions).

    Raises:
        FileNotFoundError / DuplicateIdError / ValueError: as ``load_eval_cuts``; ValueError
            naming the part and its file when it holds no cuts, or how many cuts have no
            supervision and the first.
    """
    path = cuts_path(manifest_dir, part)
    cuts = load_eval_cuts(manifest_dir, [path.name])
    if len(cuts) == 0:  # its WER, of no words, would read 0.00: a perfect score
        raise ValueError(f"test set {part} ({path}) holds no cuts: nothing to score")
    unsupervised = [cut.id for cut in cuts if not cut.supervisions]
    if unsupervised:
        raise ValueError(f"{len(unsupervised)} cuts of {part} have no supervision (nothing to "
                         f"transcribe), e.g. cut {unsupervised[0]!r}")
    return cuts


def write_shuffled_cuts(inputs: Sequence[str | Path], output: str | Path, seed: int = 42) -> int:
    """Writes the cuts of every manifest of ``inputs``, in one random order, to ``output``.

    Speed-perturbed copies are written back to back and training parts are concatenated in
    order, so without this a sampler's shuffle buffer sees one subset at one speed at a time
    (icefall measured 2.93/6.61 unshuffled against 2.64/6.35 shuffled on LibriSpeech). Lines are
    shuffled as text (each input is read once, its first line checked to be a cut:
    :func:`asr.data.dataset.numbered_cut_lines`, and only each line's id parsed), seeded, and
    the file is written atomically, byte for byte the same for the same inputs and seed:
    gzip-compressed when its name ends in ``.gz``, else plain (lhotse reads it by its name).

    Cuts are kept as they are, repeated ids too: an input listed twice (or cuts in several
    inputs) oversamples them, as a manifest listed twice in ``data.train_cuts`` does, and
    training gives each repeat its own id and augmentation (:mod:`asr.data.cut_ids`); how many
    ids repeat is logged.

    Returns:
        The number of cuts written.

    Raises:
        FileNotFoundError: naming a missing input.
        ValueError: naming an input that cannot be read (e.g. a gzip cut short) or a line (its
            number) that is no JSON cut with an id.
        asr.fileio.OutputBusyError: while another run writes ``output``.
    """
    lines: list[bytes] = []

    def read_ids(path: Path) -> Iterator[str]:
        """The ids of ``path``'s cuts, its lines kept in ``lines`` on the way (one pass)."""
        for line_no, line in numbered_cut_lines(path):
            lines.append(line)
            yield line_cut_id(line, path, line_no)

    for path in map(Path, inputs):
        if not path.is_file():
            raise FileNotFoundError(f"cut manifest {path} does not exist")
    # repeated ids are kept: an input listed twice oversamples it (asr.data.cut_ids)
    Repeats.of_ids(cut_id for path in map(Path, inputs) for cut_id in read_ids(path)).log(
        f"the manifests shuffled into {output}")
    random.Random(seed).shuffle(lines)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        if not output.name.endswith(".gz"):  # as lhotse reads it: by its name
            tmp.write_bytes(b"".join(lines))
            return
        # no time or file name in the gzip header: the same cuts give the same bytes, which
        # `asr shar` compares (by sha256) to keep the shards it made of this manifest
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb",
                                                   mtime=0) as f:
            f.writelines(lines)

    with output_lock(output):
        write_atomic(output, write)
    logger.info("wrote %d shuffled cuts of %d manifests to %s", len(lines), len(inputs), output)
    return len(lines)
