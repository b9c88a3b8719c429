"""Dropping utterances a model cannot (or should not) train on.

A transducer or CTC model emits at most one token per encoder frame on the paths the pruned
RNN-T loss keeps (Kuang et al., "Pruned RNN-T for fast, memory-efficient ASR training", 2022),
so an utterance with more tokens than encoder frames after subsampling has no valid alignment and
gives an infinite or meaningless loss. Empty transcripts and durations outside a range are dropped
too. Each reason is counted, logged and returned so a caller can report it.

On-the-fly speed perturbation (:class:`asr.data.augment.SpeedPerturbation`) trains a cut at a
speed drawn anew each epoch, after filtering: a cut sped up by 1.1 has ~10 % fewer frames, one
slowed to 0.9 lasts ~11 % longer. Given the speeds a cut may be drawn at (``speed_factors``), the
filter judges each of them and keeps a cut that passes at one at least, as icefall keeps each
passing one of its stored perturbed copies: a 19 s cut under a 20 s limit is trained at 1.0 and
1.1 but never at 0.9 (21.1 s). A cut that passes at only some speeds carries them in its custom
field ``speed_factors`` (:func:`allowed_speeds`), and the perturbation draws among them alone, so
no drawn speed can take a kept cut out of range or give it more tokens than frames. A cut that
fails at every speed is dropped and counted once, under its reason at the first speed judged.

Transcripts: a cut is trained on its whole audio (features from its start to its end) with the
texts of all its supervisions, in the order they start (:func:`cut_text`). A supervision may be
shorter than the cut (the audio around it is taken to hold no other speech), and a cut may have
several; but a supervision that starts before the cut or ends after it (beyond
:data:`SUPERVISION_TOLERANCE`, e.g. a cut truncated within an utterance) has text for audio the
cut lacks, so such a cut is dropped and counted (``outside_cut``), as lhotse's
``validate_for_asr`` refuses it.

Lazy CutSets: :func:`filter_cuts` makes one counting pass over the cuts (reading the manifest and
tokenizing once), then returns ``cuts.filter(...)``, which stays lazy for a lazy input (the check
is redone, without counting, when it is iterated); eager inputs give an eager result.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from asr.fileio import relative_path_hint

if TYPE_CHECKING:  # pragma: no cover
    from lhotse import SupervisionSegment

    from asr.features.fbank import FbankConfig

logger = logging.getLogger(__name__)

__all__ = ["DROP_REASONS", "SPEEDS_FIELD", "SPEED_COPY_FIELD", "SUPERVISION_TOLERANCE",
           "FilterStats",
           "TextEncoder", "allowed_speeds", "check_cut_audio", "check_cut_files", "cut_files",
           "cut_text", "data_files", "encode_cut_text", "drop_reason", "error_reason",
           "filter_cuts", "is_speed_copy", "speed_copy_source", "supervision_outside",
           "unreadable_cut_error", "unreadable_field", "with_speed_copy_record"]

#: The custom field of a cut kept at only some of the speeds it was judged at: those speeds.
SPEEDS_FIELD = "speed_factors"

#: The custom field in which :func:`asr.data.shar.export_shar` keeps the speed transform of a
#: cut's audio, or None for audio without one (:func:`with_speed_copy_record`): Shar stores the
#: audio with its transforms applied and drops them from the recording (lhotse's
#: ``to_shar_placeholder``), so without it a speed copy looked like a cut.
SPEED_COPY_FIELD = "speed_copy"

#: The id suffix lhotse's ``perturb_speed``/``perturb_tempo`` give a copy's recording
#: (``f"_sp{factor}"`` of a float factor: ``_sp0.9``, ``_tp1.1``): all that tells a speed copy in
#: a cut of a Shar directory of audio that has no :data:`SPEED_COPY_FIELD` (lhotse's
#: ``to_shar``, or an ``asr shar`` directory whose cuts other than copies have none: it is kept
#: while its inputs are unchanged).
#: The factor must have a decimal point, so that an id such as ``meeting_sp1`` is no copy.
_PERTURBED_ID = re.compile(r"_(?P<kind>sp|tp)(?P<factor>\d+\.\d+)$")

#: Seconds a supervision may reach outside its cut (rounding), lhotse's ``validate_for_asr``'s.
SUPERVISION_TOLERANCE = 2e-3


class TextEncoder(Protocol):
    """Anything that turns a transcript into token ids (tokenizers implement it)."""

    def encode(self, text: str) -> list[int]: ...


#: What each reason of :class:`FilterStats` to drop a cut means, in the words of the log.
DROP_REASONS = {
    "empty_text": "no transcript, or one that encodes to no token",
    "outside_cut": "a supervision starts before the cut or ends after it",
    "too_short": "shorter than the minimum duration (data.min_cut_duration)",
    "too_long": "longer than the maximum duration (data.max_cut_duration)",
    "too_many_tokens": "more tokens than encoder frames after subsampling (a cut shorter than "
                       "the subsampling window has none)",
}


@dataclass(frozen=True)
class FilterStats:
    """How many cuts :func:`filter_cuts` kept and dropped, per reason.

    Attributes:
        kept: cuts kept (at one speed factor at least).
        empty_text: dropped: transcript empty (or encoding to no tokens).
        outside_cut: dropped: a supervision starts before the cut or ends after it (its text
            holds words whose audio the cut lacks, e.g. a cut truncated within an utterance).
        too_short: dropped: duration below ``min_duration`` (at the first speed factor, and
            some check failed at each of the others).
        too_long: dropped: duration above ``max_duration`` (likewise).
        too_many_tokens: dropped: more tokens than encoder frames (likewise).
        with_unk: kept, but with text the tokenizer encodes as ``<unk>`` (characters it never
            saw, e.g. lower case for an upper-case BPE model); counted for encoders with an
            ``unk_id``, not dropped.
        some_speeds: kept, but only at some of the speed factors (they are drawn among those).
    """

    kept: int = 0
    empty_text: int = 0
    outside_cut: int = 0
    too_short: int = 0
    too_long: int = 0
    too_many_tokens: int = 0
    with_unk: int = 0
    some_speeds: int = 0

    @property
    def dropped(self) -> int:
        return (self.empty_text + self.outside_cut + self.too_short + self.too_long
                + self.too_many_tokens)

    @property
    def total(self) -> int:
        return self.kept + self.dropped


def cut_text(cut) -> str:
    """The cut's transcript: the texts of its supervisions in the order they start (the order a
    manifest or a mixed cut lists them in need not be that), joined by spaces."""
    supervisions = sorted(cut.supervisions, key=lambda s: s.start)  # stable: ties keep order
    return " ".join(s.text.strip() for s in supervisions if s.text and s.text.strip())


def encode_cut_text(cut, encoder: TextEncoder, text: str | None = None) -> list[int]:
    """The token ids of ``cut``'s transcript (``text``: its :func:`cut_text`, when read
    already).

    Raises:
        ValueError: naming the cut and the field, for a text the encoder refuses (e.g. one that
            writes the tokenizers' word-boundary mark ``▁``, :func:`asr.tokenizers.base.check_text`:
            the tokenizer's own error names the text only).
    """
    try:
        return encoder.encode(cut_text(cut) if text is None else text)
    except ValueError as err:
        raise ValueError(f"cut {cut.id!r}, its supervisions' text: {err}") from None


def supervision_outside(cut) -> SupervisionSegment | None:
    """The first supervision of ``cut`` that starts before it or ends after it (by more than
    :data:`SUPERVISION_TOLERANCE`), e.g. in a cut truncated within an utterance: its text names
    words whose audio the cut lacks; None when every supervision lies within the cut."""
    for supervision in cut.supervisions:
        if (supervision.start < -SUPERVISION_TOLERANCE
                or supervision.end > cut.duration + SUPERVISION_TOLERANCE):
            return supervision
    return None


def cut_files(cut) -> str:
    """The files a cut's data comes from (its feature archive, its audio; those of every track
    of a mixed cut, e.g. a training cut with noise mixed in), for messages."""
    return ", ".join(dict.fromkeys(_file_names(cut))) or "no data files"


def _file_names(cut) -> list[str]:
    """``"features <path>"`` and ``"audio <source>"`` of ``cut`` (of each track of a mixed cut;
    a padding track has none), each as :func:`_data_name` names it."""
    tracks = getattr(cut, "tracks", None)
    if tracks is not None:  # a MixedCut has neither .features nor .recording of its own
        return [name for track in tracks for name in _file_names(track.cut)]
    shard = getattr(cut, "shard_origin", None)
    files = []
    features = getattr(cut, "features", None)
    if features is not None:
        files.append(_data_name("features", features.storage_path,
                                features.storage_type == "shar", shard))
    recording = getattr(cut, "recording", None)
    if recording is not None:
        files += [_data_name("audio", source.source, source.type == "shar", shard)
                  for source in recording.sources]
    return files


def _data_name(kind: str, path: str, shar: bool, shard: str | None) -> str:
    """``"<kind> <path>"``; for data of a Lhotse Shar shard (``shar``, or read from one into
    memory: no ``path``), whose manifest names no file, the shard's cut manifest ``shard``
    (lhotse's ``shard_origin``, which the cuts a Shar reader yields carry):
    ``"audio of Shar shard <dir>/cuts.000003.jsonl.gz"``."""
    if shard and (shar or not path):
        return f"{kind} of Shar shard {shard}"
    if shar:
        return f"{kind} of a Shar shard"
    return f"{kind} {path}" if path else f"{kind} in memory"


def data_files(cut, fields: Collection[str]) -> Iterator[str]:
    """The local paths holding the data of ``fields`` (``"features"``, ``"recording"``) of ``cut``
    (of each track of a mixed cut): a feature archive or a per-cut feature file, audio files.
    Data kept in the manifest itself (``memory_*`` storage) or read otherwise (audio URLs and
    commands) has none."""
    tracks = getattr(cut, "tracks", None)
    if tracks is not None:
        for track in tracks:
            yield from data_files(track.cut, fields)
        return
    features = getattr(cut, "features", None)
    if "features" in fields and features is not None:
        kind = features.storage_type
        if kind.endswith("_files"):
            yield str(Path(features.storage_path) / features.storage_key)
        elif not kind.startswith("memory") and kind != "shar":
            yield str(features.storage_path)
    recording = getattr(cut, "recording", None)
    if "recording" in fields and recording is not None:
        yield from (source.source for source in recording.sources if source.type == "file")


def unreadable_field(cut, fields: Collection[str]) -> tuple[str, str] | None:
    """The first of ``fields`` (``"features"``, ``"recording"``; others are not checked) whose
    data cannot be loaded for ``cut``, and why in one line (``"<file> does not exist"``, with
    the working directory for a relative path, else the loader's error type and message); None
    when every one loads.

    For the messages of a step that failed on a cut without saying why (lhotse leaves a cut it
    cannot read out of a feature computation; its Shar writer's own error often names neither
    the cut nor the file).
    """
    loaders = {"features": cut.load_features, "recording": cut.load_audio}
    for field in fields:
        if field not in loaders:
            continue
        missing = _missing_file(cut, field)
        if missing is not None:
            return field, f"{missing} does not exist{_relative_hint(missing)}"
        try:
            loaders[field]()
        except Exception as err:  # noqa: BLE001 - lilcom, soundfile, audioread, lhotse... types
            return field, error_reason(err)
    return None


def _relative_hint(path: str) -> str:
    """For a missing file named by a relative path (as stage 3 stores features:
    ``data/fbank/...``), where it was looked for and what to do; empty for an absolute one."""
    return relative_path_hint(path, "in the manifest", "the directory it is relative to, the "
                              "one the manifest was written from")


def _missing_file(cut, field: str) -> str | None:
    """The first local file holding the data of ``field`` of ``cut`` that does not exist."""
    return next((f for f in data_files(cut, [field]) if not Path(f).exists()), None)


def check_cut_files(cuts, field: str, what: str) -> None:
    """Checks, in one pass over ``cuts`` and reading nothing (a look-up per file), that every
    local file holding the data of ``field`` (``"features"``, ``"recording"``) of each cut
    exists: a run that reads them checks before its long work, rather than failing on the way.

    Args:
        cuts: a CutSet (lazy or eager).
        field: the data the run reads.
        what: the cuts, for the message (``"test set test-clean"``).

    Raises:
        FileNotFoundError: naming how many cuts of ``what`` lack a file and, in the words of
            :func:`unreadable_cut_error`, the first one, its files and the one missing.
    """
    lost, first = 0, None
    for cut in cuts:
        missing = _missing_file(cut, field)
        if missing is not None:
            lost += 1
            first = first or unreadable_cut_error(cut, [field])  # reads nothing: a file is missing
    if lost:
        raise FileNotFoundError(f"{lost} cuts of {what} have a missing file; the first: {first}")


def unreadable_cut_error(cut, fields: Collection[str]) -> str | None:
    """The one wording of a cut whose data cannot be read: ``cannot read the <field> of cut
    '<id>' (<its files>): <why>``, for the first of ``fields`` that :func:`unreadable_field`
    finds unreadable; None when every one loads."""
    problem = unreadable_field(cut, fields)
    if problem is None:
        return None
    return f"cannot read the {problem[0]} of cut {cut.id!r} ({cut_files(cut)}): {problem[1]}"


def error_reason(err: BaseException) -> str:
    """``<error type>: <message>`` on one line of at most 400 characters, for the messages
    that name a cut beside what its loader said."""
    return " ".join(f"{type(err).__name__}: {err}".split())[:400]


def check_cut_audio(cuts, sample_rate: int | None, stored: FbankConfig | None = None) -> None:
    """Checks, in one pass over ``cuts``, that every cut (its audio, or the audio its features
    were computed from) is at ``sample_rate`` Hz, the rate of the feature extractor that reads
    it, and holds one audio channel; with ``stored``, also that every cut has stored features
    of ``stored``'s mel bins and frame shift.

    lhotse computes the features of a multi-channel cut (stored or on the fly) from its first
    channel alone, while ``asr transcribe`` averages a file's channels (:mod:`asr.audio`): a
    model trained on such cuts would meet other features at inference, so they are refused.
    Stored features are read as they are: made with other options than the ones recognition
    computes (``data.fbank``, recorded in the model's config), they would train the model on
    another front end, silently when only the frame shift differs.

    Args:
        cuts: a CutSet (lazy or eager).
        sample_rate: the rate in Hz the cuts must be at; None: any (noise, which is resampled
            where it is mixed).
        stored: the options the cuts' stored features must have (``num_mel_bins``,
            ``frame_shift_ms``); None when features are computed on the fly (not checked).

    Raises:
        ValueError: naming how many cuts are at another rate (or have several channels, no
            stored features, stored features of other mel bins or frame shift), the first one
            and its files.
    """
    other_rate, multi_channel, unstored, other_bins, other_shift = [], [], [], [], []
    for cut in cuts:
        if sample_rate is not None and cut.sampling_rate != sample_rate:
            other_rate.append(cut)
        if getattr(cut, "num_channels", 1) > 1:
            multi_channel.append(cut)
        if stored is None:
            continue
        if not cut.has_features:
            unstored.append(cut)
        elif cut.num_features != stored.num_mel_bins:
            other_bins.append(cut)
        elif not math.isclose(cut.frame_shift, stored.frame_shift, rel_tol=1e-6):
            other_shift.append(cut)
    if other_rate:
        bad = other_rate
        raise ValueError(
            f"{len(bad)} cuts are not at {sample_rate} Hz, e.g. cut {bad[0].id!r} at "
            f"{bad[0].sampling_rate} Hz ({cut_files(bad[0])}); resample them "
            "(CutSet.resample) or change the sample rate of the features (fbank.sample_rate)"
        )
    if multi_channel:
        bad = multi_channel
        raise ValueError(
            f"{len(bad)} cuts hold several audio channels, e.g. cut {bad[0].id!r} with "
            f"{bad[0].num_channels} ({cut_files(bad[0])}); lhotse would compute its features "
            "from the first channel only: downmix the recordings to mono, averaging the "
            "channels as `asr transcribe` does (e.g. `ffmpeg -i in.wav -ac 1 out.wav`)"
        )
    if unstored:
        bad = unstored
        raise ValueError(
            f"{len(bad)} cuts have no stored features, e.g. cut {bad[0].id!r} "
            f"({cut_files(bad[0])}); store them with `asr prepare fbank`, or set "
            "data.on_the_fly_feats=true to compute them from the audio"
        )
    if other_bins:
        bad = other_bins
        raise ValueError(
            f"{len(bad)} cuts have stored features with other than {stored.num_mel_bins} mel "
            f"bins (data.fbank.num_mel_bins), e.g. cut {bad[0].id!r} with "
            f"{bad[0].num_features} ({cut_files(bad[0])}); store them again with `asr prepare "
            f"fbank --num-mel-bins {stored.num_mel_bins} --overwrite`, or set "
            "data.on_the_fly_feats=true"
        )
    if other_shift:
        bad = other_shift
        raise ValueError(
            f"{len(bad)} cuts have stored features with a frame shift other than "
            f"{stored.frame_shift_ms:g} ms (data.fbank.frame_shift_ms), e.g. cut "
            f"{bad[0].id!r} with {bad[0].frame_shift * 1000:g} ms ({cut_files(bad[0])}); set "
            "data.on_the_fly_feats=true to compute features of that shift from the audio"
        )


def _lengths(cut, factor: float, frame_shift: float) -> tuple[float, int]:
    """(duration in seconds, input feature frames) of ``cut`` at speed ``factor``: lhotse's
    ``perturb_speed`` rounding of the sample count; a perturbed cut's features are computed on
    the fly (its stored ones are dropped), so its frames follow from that duration."""
    from lhotse.utils import compute_num_frames, compute_num_samples, perturb_num_samples

    if factor == 1.0:
        if cut.has_features:
            return cut.duration, cut.num_frames
        duration = cut.duration
    else:
        num_samples = compute_num_samples(cut.duration, cut.sampling_rate)
        duration = perturb_num_samples(num_samples, factor) / cut.sampling_rate
    return duration, compute_num_frames(duration, frame_shift, cut.sampling_rate)


def allowed_speeds(cut) -> tuple[float, ...] | None:
    """The speed factors :func:`filter_cuts` kept ``cut`` at, when it passed at only some of
    those it judged (its custom field ``speed_factors``); ``None``: any speed."""
    speeds = (cut.custom or {}).get(SPEEDS_FIELD)
    return None if speeds is None else tuple(speeds)


def _with_speeds(cut, speeds: tuple[float, ...]):
    """A copy of ``cut`` whose custom field ``speed_factors`` is ``speeds`` (the cut is shared
    with the caller's CutSet, so it is not changed in place)."""
    if hasattr(cut, "with_custom"):
        return cut.with_custom(SPEEDS_FIELD, list(speeds))
    marked = copy.deepcopy(cut)  # a MixedCut keeps custom fields in its first track's cut
    setattr(marked, SPEEDS_FIELD, list(speeds))
    return marked


def drop_reason(
    cut,
    encoder: TextEncoder,
    output_length: Callable[[int], int],
    min_duration: float = 0.0,
    max_duration: float = float("inf"),
    frame_shift: float = 0.01,
    speed_factors: tuple[float, ...] = (1.0,),
) -> str | None:
    """Why ``cut`` should be dropped ("empty_text", "outside_cut", "too_short", "too_long",
    "too_many_tokens"), or ``None`` to keep it (it passes at one of ``speed_factors`` at least).
    Arguments as in :func:`filter_cuts`."""
    return _judge(cut, encoder, output_length, min_duration, max_duration, frame_shift,
                  tuple(speed_factors)).reason


@dataclass(frozen=True)
class _Verdict:
    """What the filter makes of one cut.

    Attributes:
        reason: why it is dropped (at the first speed judged), ``None`` when it is kept.
        tokens: its token ids; empty when it was dropped before encoding.
        speeds: the speed factors it passes at, in the order judged (empty when dropped).
    """

    reason: str | None
    tokens: list[int]
    speeds: tuple[float, ...]


def _judge(cut, encoder: TextEncoder, output_length: Callable[[int], int], min_duration: float,
           max_duration: float, frame_shift: float, speed_factors: tuple[float, ...]
           ) -> _Verdict:
    """Every check at each of ``speed_factors`` (the text is encoded only for a speed whose
    duration is in range).

    Raises:
        ValueError: naming the cut, for a text the encoder refuses (e.g. one that writes the
            tokenizers' word-boundary mark ``▁``, :func:`asr.tokenizers.base.check_text`).
    """
    text = cut_text(cut)
    if not text:
        return _Verdict("empty_text", [], ())
    if supervision_outside(cut) is not None:  # at every speed: perturbation scales both alike
        return _Verdict("outside_cut", [], ())
    tokens: list[int] | None = None
    reasons: dict[float, str | None] = {}
    for factor in speed_factors:
        duration, frames = _lengths(cut, factor, frame_shift)
        if duration < min_duration:
            reasons[factor] = "too_short"
        elif duration > max_duration:
            reasons[factor] = "too_long"
        else:
            if tokens is None:
                tokens = encode_cut_text(cut, encoder, text)
                if len(tokens) == 0:
                    return _Verdict("empty_text", tokens, ())
            reasons[factor] = "too_many_tokens" if len(tokens) > output_length(frames) else None
    speeds = tuple(factor for factor, why in reasons.items() if why is None)
    return _Verdict(None if speeds else reasons[speed_factors[0]], tokens or [], speeds)


@dataclass(frozen=True)
class _Keep:
    """Picklable map of a cut to itself, to itself marked with the speeds it is kept at
    (:func:`allowed_speeds`), or to ``None`` when it is dropped; lazy CutSets may be sent to
    DataLoader workers."""

    encoder: TextEncoder
    output_length: Callable[[int], int]
    min_duration: float
    max_duration: float
    frame_shift: float
    speed_factors: tuple[float, ...]

    def judge(self, cut) -> _Verdict:
        return _judge(
            cut, self.encoder, self.output_length, self.min_duration, self.max_duration,
            self.frame_shift, self.speed_factors,
        )

    def mark(self, cut, speeds: tuple[float, ...]):
        """``cut`` with ``speeds`` recorded when they are not all it was judged at (or when it
        already carries a record, which may be stale)."""
        if speeds != self.speed_factors or allowed_speeds(cut) is not None:
            return _with_speeds(cut, speeds)
        return cut

    def __call__(self, cut):
        speeds = self.judge(cut).speeds
        return self.mark(cut, speeds) if speeds else _with_speeds(cut, ())


def _speed_transform(cut) -> str | None:
    """The first transform of ``cut``'s audio (of any track of a mixed cut) that changes its
    speed or tempo, e.g. ``"Speed(factor=0.9)"`` on the copies of ``asr prepare fbank
    --speed-perturb`` (lhotse's ``perturb_speed``/``perturb_tempo``); None when there is none.

    Audio read from Shar has its transforms applied and none listed (lhotse keeps no other
    trace of them): there it is what :func:`with_speed_copy_record` kept for
    :func:`asr.data.shar.export_shar` (a transform, or None: none), or, for a cut without that
    record (a Shar directory written by lhotse's ``to_shar`` alone), the one that lhotse's id
    suffix of the recording names (``<id>_sp0.9``: ``"Speed(factor=0.9), by its id"``;
    :data:`_PERTURBED_ID`), the one guess made: a real recording id of that form is taken for
    a copy."""
    tracks = getattr(cut, "tracks", None)
    if tracks is not None:
        return next(filter(None, (_speed_transform(track.cut) for track in tracks)), None)
    recording = getattr(cut, "recording", None)
    for transform in (getattr(recording, "transforms", None) or []):
        name = transform.get("name") if isinstance(transform, dict) else type(transform).__name__
        if name in ("Speed", "Tempo"):
            return str(transform)
    custom = getattr(cut, "custom", None) or {}
    if SPEED_COPY_FIELD in custom:
        recorded = custom[SPEED_COPY_FIELD]
        return None if recorded is None else str(recorded)
    sources = getattr(recording, "sources", None) or []
    if any(source.type == "shar" for source in sources):
        suffix = _PERTURBED_ID.search(recording.id)
        if suffix is not None:
            kind = "Speed" if suffix["kind"] == "sp" else "Tempo"
            return f"{kind}(factor={suffix['factor']}), by its id"
    return None


def is_speed_copy(cut) -> bool:
    """Whether ``cut``'s audio is a speed (or tempo) copy of another cut's
    (:func:`_speed_transform`), e.g. one of the ``0.9``/``1.1`` copies that ``asr prepare fbank
    --speed-perturb`` writes beside each original; False for anything without a recording (a
    supervision)."""
    return _speed_transform(cut) is not None


def speed_copy_source(cut) -> str | None:
    """The id of the cut whose speed (or tempo) copy ``cut`` is (:func:`is_speed_copy`): its
    id less lhotse's ``_sp<factor>`` / ``_tp<factor>`` suffix (``a_sp0.9`` -> ``a``); None for
    a cut that is no copy, or a copy whose id has no such suffix."""
    suffix = _PERTURBED_ID.search(cut.id)  # first: the transforms are looked up in depth
    return None if suffix is None or not is_speed_copy(cut) else cut.id[: suffix.start()]


def with_speed_copy_record(cut):
    """``cut`` with the speed transform of its audio (:func:`_speed_transform`), or None when
    it has none, kept in its custom field :data:`SPEED_COPY_FIELD`, which Shar keeps (it drops
    the transform): so that :func:`filter_cuts` still refuses to perturb a speed copy read from
    Shar again, and takes no other cut for one by its recording id. A cut that has the record
    already, or a cut without a recording, is returned as it is (a copy is made otherwise:
    ``cut`` is not changed)."""
    if not getattr(cut, "has_recording", False):
        return cut
    transform = _speed_transform(cut)
    custom = cut.custom or {}
    if SPEED_COPY_FIELD in custom and custom[SPEED_COPY_FIELD] == transform:
        return cut
    if hasattr(cut, "with_custom"):
        return cut.with_custom(SPEED_COPY_FIELD, transform)
    return cut  # a MixedCut: Shar keeps its tracks' transforms


def _is_kept(cut) -> bool:
    """Whether a cut mapped by :class:`_Keep` was kept (a dropped one has no speed)."""
    return allowed_speeds(cut) != ()


def filter_cuts(
    cuts,
    encoder: TextEncoder,
    output_length: Callable[[int], int],
    min_duration: float = 0.0,
    max_duration: float = float("inf"),
    frame_shift: float = 0.01,
    apply_to=None,
    speed_factors: tuple[float, ...] = (1.0,),
    name: str = "cuts",
    on_kept: Callable[[Any], None] | None = None,
):
    """Drops cuts with empty text, a supervision outside the cut, duration out of range or
    more tokens than encoder frames; counts (and keeps) those with text that ``encoder`` turns
    into its ``unk_id``.

    Args:
        cuts: a lhotse ``CutSet`` (lazy or eager).
        encoder: tokenizer with ``encode(text) -> list[int]``.
        output_length: encoder frames for a number of input feature frames.
        min_duration: minimum duration in seconds (inclusive).
        max_duration: maximum duration in seconds (inclusive).
        frame_shift: feature frame shift in seconds, for cuts without stored features.
        apply_to: a lazy CutSet with the same cuts in the same order as ``cuts``, or anything
            with a CutSet's lazy ``map`` and ``filter`` (a :class:`asr.data.shar.SharCuts`,
            whose :attr:`~asr.data.shar.SharCuts.manifests` are ``cuts``): counted on
            ``cuts``, the filter is returned on ``apply_to`` (on both views of a SharCuts).
        speed_factors: the speeds a cut may be trained at (on-the-fly speed perturbation,
            :func:`asr.data.dataset.speed_factors`); a cut is kept when every check passes at
            one of them at least, and marked with those it passes at when they are not all
            (:func:`allowed_speeds`; module docstring). Each dropped cut is counted once.
        name: what the cuts are, e.g. ``"training cuts"``: each line logged begins with it,
            and each reason to drop cuts is said in words (:data:`DROP_REASONS`).
        on_kept: called with each cut kept (as read from ``cuts``), in this one counting pass:
            for what else a pass over the kept cuts would learn (repeated ids and dev cuts in
            training, :class:`asr.data.cut_ids.RepeatCounter`), where a second pass over lazy
            ``cuts`` would parse and judge every cut again.

    Returns:
        ``(kept_cuts, stats)``; see the module docstring for laziness.

    Raises:
        ValueError: a speed factor that is not > 0; or, with speeds other than 1, naming a cut
            whose audio is speed-perturbed already (:func:`_speed_transform`: a stored speed
            copy), which on-the-fly perturbation would perturb again (0.9 twice: 0.81).
    """
    if not speed_factors or any(f <= 0 for f in speed_factors):
        raise ValueError(f"speed_factors must be > 0 (and at least one), got {speed_factors}")
    speed_factors = tuple(speed_factors)
    keep = _Keep(encoder, output_length, min_duration, max_duration, frame_shift, speed_factors)
    counts = {"kept": 0, "empty_text": 0, "outside_cut": 0, "too_short": 0, "too_long": 0,
              "too_many_tokens": 0, "with_unk": 0, "some_speeds": 0}
    examples: dict[str, str] = {}
    unk_id = getattr(encoder, "unk_id", None)
    kept = []
    speeds_text = "/".join(f"{f:g}" for f in sorted(speed_factors))
    perturbing = speed_factors != (1.0,)
    for cut in cuts:
        if perturbing and (transform := _speed_transform(cut)) is not None:
            raise ValueError(
                f"cut {cut.id!r} ({cut_files(cut)}) is speed-perturbed already ({transform}: a "
                "copy made by `asr prepare fbank --speed-perturb`), and on-the-fly speed "
                f"perturbation (data.speed_perturb, speeds {speeds_text}) would perturb it "
                "again; train on manifests without speed copies (those of `asr prepare "
                "manifests`, or a Shar export of them), or set data.speed_perturb: false to "
                "train on the copies")
        verdict = keep.judge(cut)
        if verdict.speeds:
            counts["kept"] += 1
            if on_kept is not None:
                on_kept(cut)
            if not cuts.is_lazy:
                kept.append(keep.mark(cut, verdict.speeds))
            if unk_id is not None and unk_id in verdict.tokens:
                counts["with_unk"] += 1
                examples.setdefault("with_unk", f"{cut.id}: {cut_text(cut)[:80]!r}")
            if verdict.speeds != speed_factors:
                counts["some_speeds"] += 1
                examples.setdefault("some_speeds", f"{cut.id} at speed " + "/".join(
                    f"{f:g}" for f in sorted(verdict.speeds)))
        else:
            counts[verdict.reason] += 1
            examples.setdefault(verdict.reason, cut.id if len(speed_factors) == 1 else
                                f"{cut.id} at every speed {speeds_text}")
    stats = FilterStats(**counts)
    for why, example in examples.items():
        if why == "with_unk":
            logger.warning("%s: %d kept cuts have text the tokenizer encodes as <unk> "
                           "(characters it was not trained on), e.g. %s", name, counts[why],
                           example)
        elif why == "some_speeds":
            logger.info("%s: %d cuts kept at only the speeds they pass at, e.g. %s", name,
                        counts[why], example)
        else:
            logger.warning("%s: dropped %d cuts: %s (e.g. %s): %s", name, counts[why], why,
                           example, DROP_REASONS[why])
    speeds = "" if speed_factors == (1.0,) else f" judged at each speed {speeds_text}"
    logger.info("%s: kept %d of %d cuts (dropped %d)%s", name, stats.kept, stats.total,
                stats.dropped, speeds)
    if apply_to is not None:
        return apply_to.map(keep).filter(_is_kept), stats
    if cuts.is_lazy:
        return cuts.map(keep).filter(_is_kept), stats
    from lhotse import CutSet

    return CutSet.from_cuts(kept), stats
