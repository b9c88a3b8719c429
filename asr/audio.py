"""Audio input: decoding files / bytes, downmixing and resampling to the model rate.

Every container libsndfile reads works (wav, flac, ogg/vorbis, opus, mp3 with libsndfile >= 1.1)
and, when the ``ffmpeg`` program is installed, everything ffmpeg decodes (m4a/aac, webm, wma,
video files' first audio stream, ...), at any sample rate and channel count. Channels are averaged
to mono; resampling uses torchaudio's band-limited sinc interpolation
(:class:`torchaudio.transforms.Resample`, the same filter lhotse and the training pipeline use).
A file is read block by block (by libsndfile, or from ffmpeg's output on a pipe), each block
averaged and resampled as it comes, so that memory holds the result at the model rate, not the
file at its own rate and channels; standard input and named pipes are copied to a temporary file
a block at a time, then read as a file.
:class:`StreamingResampler` applies exactly the same filter to a waveform that arrives in pieces, so
streamed audio at 8 kHz gives the same 16 kHz samples as the whole file resampled at once.

Every failure is an :class:`AudioError` whose message names the file (or ``<stdin>``), a file
cut short too: one whose header declares more samples than it holds (a WAV, or an MP3 with a
Xing/Info/VBRI header, which libsndfile reads up to its end without a word, or one that
libsndfile fails inside and ffmpeg decodes in part, or one that ffmpeg says was cut short:
:data:`FFMPEG_CUT_SIGNS`). An Ogg Vorbis or Opus file cut short is read without an error:
neither its header nor libsndfile nor ffmpeg says it was cut. A packet that ffmpeg cannot decode
(:data:`FFMPEG_DAMAGE_SIGN`: damaged, or a raw AAC file's last one cut short) is left out
with a warning naming the file, not refused.

Shape legend: N samples, C channels.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MAX_RATE_RATIO_TERM",
    "MAX_SAMPLE_MAGNITUDE",
    "AudioError",
    "as_waveform",
    "check_magnitude",
    "check_resampling",
    "DecodedAudio",
    "StreamingResampler",
    "declared_length",
    "wav_declared_frames",
    "decode_audio",
    "load_audio",
    "resample",
    "resampling_problem",
    "to_model_rate",
    "to_mono",
]

logger = logging.getLogger(__name__)

#: Name used in messages for audio read from standard input.
STDIN_NAME = "<stdin>"

#: Told, as a file is read, the seconds of it read so far and its length in seconds (None when
#: unknown: a format only ffmpeg reads whose header libsndfile cannot tell).
ReadProgress = Callable[[float, float | None], None]


class AudioError(ValueError):
    """An input that is missing, empty, corrupt or not audio; the message names it."""


@dataclass(frozen=True)
class DecodedAudio:
    """A decoded mono waveform.

    Attributes:
        samples: (N,) float32 in [-1, 1].
        sample_rate: Hz.
        source: file name (or ``<stdin>``) for messages.
        num_channels: channels of the original file (before downmixing).
        original_rate: sampling rate of the original file.
    """

    samples: np.ndarray
    sample_rate: int
    source: str
    num_channels: int = 1
    original_rate: int = 0

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.samples.shape[0] / float(self.sample_rate)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(N,) or (N, C) -> (N,) float32, averaging the channels."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise ValueError(f"expected (N,) or (N, C) samples, got shape {samples.shape}")
    return samples.mean(axis=1, dtype=np.float32)


#: Integer PCM types -> (offset, scale) mapping their range onto [-1, 1).
_PCM_SCALES = {
    np.dtype(np.int8): (0.0, 128.0),
    np.dtype(np.int16): (0.0, 32768.0),
    np.dtype(np.int32): (0.0, 2147483648.0),
    np.dtype(np.uint8): (128.0, 128.0),
}


#: More is a channels-first array read the wrong way round (third-order ambisonics: 16).
MAX_CHANNELS = 64


def as_waveform(samples: np.ndarray | Tensor, name: str, allow_empty: bool = False) -> np.ndarray:
    """The one rule for sample arrays given to a recognizer: (N,) or (N, C) -> (N,) float32 mono.

    Float samples are taken as they are (expected in [-1, 1]; a peak above
    :data:`INTEGER_SCALE_PEAK`, integer PCM cast to float, is logged once). Integer PCM is scaled by
    its type's range, as soundfile, torchaudio and sherpa-onnx read it: int16 / 32768, int32 /
    2**31, int8 / 128, uint8 (x - 128) / 128, in either byte order. Channels are averaged.

    Args:
        samples: the array (numpy or torch).
        name: the input's name for messages (e.g. ``<array 0>``, ``stream 3``).
        allow_empty: accept zero samples (a streaming chunk may be empty; a whole input not).

    Raises:
        AudioError: naming ``name``, for other types (bool, complex, int64, objects), more than
            two dimensions, more than ``MAX_CHANNELS`` channels (a (C, N) array), no samples,
            NaN / infinite values, or values beyond :data:`MAX_SAMPLE_MAGNITUDE`.
    """
    array = samples.detach().cpu().numpy() if isinstance(samples, Tensor) else np.asarray(samples)
    if array.dtype.byteorder not in "=|":  # e.g. np.frombuffer(data, ">i2"): network order
        array = array.astype(array.dtype.newbyteorder("="))
    is_float = array.dtype.kind == "f"
    if array.dtype in _PCM_SCALES:
        offset, scale = _PCM_SCALES[array.dtype]
        array = (array.astype(np.float32) - offset) / scale
    elif array.dtype.kind != "f":
        raise AudioError(
            f"{name}: samples of type {array.dtype} are not audio; pass float samples in [-1, 1] "
            f"or int8/int16/int32/uint8 PCM"
        )
    if array.ndim not in (1, 2):
        raise AudioError(f"{name}: expected (N,) or (N, C) samples, got shape {array.shape}")
    if array.ndim == 2 and array.shape[1] > MAX_CHANNELS:
        raise AudioError(
            f"{name}: {array.shape[1]} channels of {array.shape[0]} samples (shape {array.shape}): "
            f"channels go last, (N, C); transpose a channels-first (C, N) array"
        )
    mono = to_mono(array)
    if mono.size == 0 and not allow_empty:
        raise AudioError(f"{name}: empty waveform")
    if not np.isfinite(mono).all():
        raise AudioError(f"{name}: NaN or infinite samples")
    peak = check_magnitude(mono, name)
    if is_float:
        _check_scale(peak, name, "integer PCM cast to float? pass the int16 array itself (it is "
                                 "scaled by 1/32768) or divide by 32768")
    return mono


#: A float sample beyond this magnitude means integer-scaled floats (``wave.astype(float)`` of
#: int16 PCM peaks in the thousands), which recognize as noise; clipped or boosted real audio
#: stays within a few units of 1.
INTEGER_SCALE_PEAK = 32.0
_warned_about_scale = False


def _check_scale(peak: float, name: str, hint: str) -> None:
    """Logs, once per process, that the float samples of ``name`` look integer-scaled (their
    ``peak``, :func:`check_magnitude`'s, above :data:`INTEGER_SCALE_PEAK`), with ``hint``: how
    to fix it."""
    global _warned_about_scale
    if _warned_about_scale:
        return
    if peak > INTEGER_SCALE_PEAK:
        _warned_about_scale = True
        logger.warning("%s: float samples reach %.0f, but floats are taken as they are, expected "
                       "in [-1, 1]; %s (warned once)", name, peak, hint)


#: The largest sample magnitude taken as audio: integer PCM cast to float reaches 2**31 (int32);
#: far beyond (from about 1e17) the float32 power spectrum of the features overflows, and their
#: NaN frames failed a beam search shared by other streams (a server's batch).
MAX_SAMPLE_MAGNITUDE = 1e10


def check_magnitude(samples: np.ndarray, name: str) -> float:
    """Refuses samples beyond :data:`MAX_SAMPLE_MAGNITUDE` (finite, but not audio); returns
    their peak (the largest magnitude; 0 for no samples), for the other checks of the level.

    Raises:
        AudioError: naming ``name`` and the samples' peak.
    """
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak > MAX_SAMPLE_MAGNITUDE:
        raise AudioError(
            f"{name}: samples reach {peak:.3g}, which is not audio (float samples are expected "
            f"in [-1, 1]; beyond {MAX_SAMPLE_MAGNITUDE:.0e} the features overflow)"
        )
    return peak


#: Largest term of two rates' reduced ratio that :func:`resample` and
#: :class:`StreamingResampler` take. torchaudio's filter holds about ``new * (2 * width + orig)``
#: weights of the reduced rates, built in Python-speed loops: every common rate is cheap
#: (44100 : 16000 is 441 : 160; 11025 : 8000 is 441 : 320), while 7919 Hz to 16 kHz took 18 s and
#: 0.5 GB to build and 191999 Hz would need about 12 GB.
MAX_RATE_RATIO_TERM = 1000


def resampling_problem(
    orig_rate: int, new_rate: int, max_term: int = MAX_RATE_RATIO_TERM
) -> str | None:
    """Why ``orig_rate`` cannot be resampled to ``new_rate`` at a bounded cost, or None.

    The rule every resampling path applies (files, arrays, the server's streams): the ratio of
    the two rates, reduced, must have terms of at most ``max_term``.
    """
    for rate in (orig_rate, new_rate):  # int() would cut 22050.5 to 22050 without a word
        if isinstance(rate, bool) or not float(rate).is_integer():
            return f"sample rates must be whole numbers of Hz, got {orig_rate} -> {new_rate}"
    if orig_rate <= 0 or new_rate <= 0:
        return f"sample rates must be > 0, got {orig_rate} -> {new_rate}"
    gcd = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // gcd, int(new_rate) // gcd
    if max(orig, new) <= max_term:
        return None
    return (
        f"sample rate {orig_rate} Hz cannot be resampled to {new_rate} Hz at a bounded cost "
        f"(their ratio {orig}:{new} has a term above {max_term}); use a common rate such as "
        f"8000, 16000, 22050, 44100 or 48000"
    )


def check_resampling(orig_rate: int, new_rate: int, name: str) -> None:
    """Raises :class:`AudioError` naming ``name`` when :func:`resampling_problem` finds one."""
    problem = resampling_problem(orig_rate, new_rate)
    if problem is not None:
        raise AudioError(f"{name}: {problem} (convert it first, e.g. `sox IN -r {new_rate} OUT`)")


@functools.lru_cache(maxsize=16)
def _resampler(orig_rate: int, new_rate: int) -> torch.nn.Module:
    import torchaudio

    return torchaudio.transforms.Resample(orig_rate, new_rate)


def resample(
    samples: np.ndarray | Tensor, orig_rate: int, new_rate: int, name: str = "waveform"
) -> np.ndarray:
    """Resamples a mono waveform (N,) from ``orig_rate`` to ``new_rate`` Hz (float32 numpy).

    Raises:
        AudioError: naming ``name`` for rates whose filter is too costly to build
            (:func:`resampling_problem`).
    """
    check_resampling(orig_rate, new_rate, name)
    wave = torch.as_tensor(np.asarray(samples, dtype=np.float32))
    if orig_rate == new_rate or wave.numel() == 0:
        return wave.numpy()
    with torch.no_grad():
        return _resampler(int(orig_rate), int(new_rate))(wave[None])[0].numpy()


#: Said when standard input holds no audio container (raw PCM, for instance).
RAW_PCM_HINT = (
    "raw PCM has no header to read its format from: send a container (wav, flac, ...), e.g. "
    "`sox -t raw -r 16000 -e signed -b 16 -c 1 - -t wav -` or "
    "`ffmpeg -f s16le -ar 16000 -ac 1 -i - -f wav -` before the pipe into asr"
)


def _reason(err: Exception) -> str:
    """soundfile's message without its ``Error opening <object or path>:`` prefix."""
    return re.sub(r"^Error opening .*?: ", "", str(err)).strip().rstrip(".") or type(err).__name__


def _ffmpeg_command(path: str) -> list[str]:
    """The ``ffmpeg`` command that writes the first audio stream of ``path`` as float32 WAV, at
    the file's own rate and channels, on its standard output."""
    return [_FFMPEG or "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
            "-i", f"file:{path}", "-map", "0:a:0", "-f", "wav", "-acodec", "pcm_f32le", "pipe:1"]


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes of ``stream``: fewer only at its end (a pipe gives what it has)."""
    parts, left = [], size
    while left > 0:
        part = stream.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _wav_stream_format(stream: BinaryIO) -> tuple[int, int]:
    """(rate, channels) of the float32 WAV that ffmpeg writes on a pipe, its header read from
    ``stream`` up to the start of its data (whose size is a placeholder: read to the end).

    Raises:
        AudioError: when the stream holds no such header (ffmpeg wrote nothing).
    """
    head = _read_exactly(stream, 12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise AudioError("no audio decoded")
    rate = channels = bits = 0
    while True:
        chunk = _read_exactly(stream, 8)
        if len(chunk) < 8:
            raise AudioError("no audio decoded")
        kind, size = chunk[:4], int.from_bytes(chunk[4:8], "little")
        if kind == b"data":
            break
        body = _read_exactly(stream, size + (size & 1))
        if kind == b"fmt " and len(body) >= 16:
            channels = int.from_bytes(body[2:4], "little")
            rate = int.from_bytes(body[4:8], "little")
            bits = int.from_bytes(body[14:16], "little")
    if rate <= 0 or channels <= 0 or bits != 32:
        raise AudioError(f"unexpected ffmpeg output: {rate} Hz, {channels} channels, {bits} bits")
    return rate, channels


def _ffmpeg(path: str, name: str, target_rate: int | None, first: str,
            progress: ReadProgress | None = None) -> tuple[_MonoSamples, str, list[str]]:
    """Decodes the first audio stream of the file ``path`` with the ``ffmpeg`` program, block
    by block: its float32 WAV output on a pipe, at the file's own rate and channels, is read
    :data:`READ_BLOCK_FRAMES` frames at a time into :class:`_MonoSamples` (mono at
    ``target_rate``), so that memory never holds the file at its own rate and channels. No
    shell is involved.

    Args:
        path: the file (bytes go through a temporary file: containers whose index sits at
            their end, mp4/m4a, need to seek).
        name: the input's name for messages.
        target_rate: the output rate; None keeps the file's.
        first: libsndfile's reason for not reading it, for messages.
        progress: told the seconds read after each block.

    Returns:
        The samples, what ffmpeg said of a cut (:data:`FFMPEG_CUT_SIGNS`; empty for none), and
        its lines of each packet it could not decode (:data:`FFMPEG_DAMAGE_SIGN`), in order.

    Raises:
        AudioError: naming the input, when ffmpeg cannot decode it (its own reason in the
            message), or when its samples are not audio.
    """
    hint = f"; {RAW_PCM_HINT}" if name == STDIN_NAME else ""
    with tempfile.TemporaryFile(prefix="asr-ffmpeg-") as errors:  # no pipe to fill and block
        proc = subprocess.Popen(_ffmpeg_command(path), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=errors)
        assert proc.stdout is not None
        try:
            mono = _read_wav_stream(proc.stdout, path, name, target_rate, progress)
        except BaseException:  # samples that are not audio, an interrupt: ffmpeg is stopped
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            proc.wait()
        errors.seek(0)
        reason = errors.read().decode(errors="replace").strip().splitlines()
    # -map 0:a:0 matching nothing: ffmpeg's last line is "To ignore this, add a trailing '?' to
    # the map", which names neither cause nor file (told by its own words, not the file's name)
    if any("matches no streams" in line.replace(path, "") for line in reason):
        detail = "it holds no audio stream (a video without sound?)"
    elif proc.returncode != 0 or mono is None:
        detail = reason[-1] if reason else f"exit status {proc.returncode}"
        detail = detail.replace(f"file:{path}: ", "").replace(f"{path}: ", "")
    else:
        cut = [line for line in reason if any(word in line for word in FFMPEG_CUT_SIGNS)]
        said = "; ".join(dict.fromkeys(re.sub(r"^\[[^\]]*\] ", "", line) for line in cut))
        return mono, said, damaged_packets(reason)
    raise AudioError(f"{name}: cannot decode audio (corrupt or not an audio file): libsndfile: "
                     f"{first}; ffmpeg: {detail}{hint}")


def _read_wav_stream(stream: BinaryIO, path: str, name: str, target_rate: int | None,
                     progress: ReadProgress | None = None) -> _MonoSamples | None:
    """The samples of ffmpeg's float32 WAV output ``stream`` (of the file ``path``), read
    :data:`READ_BLOCK_FRAMES` frames at a time into :class:`_MonoSamples`; None when it holds
    no WAV header (ffmpeg decoded nothing)."""
    try:
        rate, channels = _wav_stream_format(stream)
    except AudioError:
        return None
    mono = _MonoSamples(name, rate, channels, target_rate, declared_frames(path, rate),
                        progress)
    block_bytes = READ_BLOCK_FRAMES * 4 * channels
    while True:
        data = _read_exactly(stream, block_bytes)
        usable = len(data) - len(data) % (4 * channels)
        if usable:
            mono.add(np.frombuffer(data[:usable], "<f4").reshape(-1, channels))
        if len(data) < block_bytes:
            return mono


def declared_frames(path: str, rate: int) -> int:
    """The samples that the header of the file ``path`` declares (:func:`declared_length`),
    when libsndfile reads that header and its rate is ``rate``; else 0 (unknown)."""
    declared = declared_length(path)
    return declared[0] if declared is not None and declared[1] == rate else 0


#: What ffmpeg says (at ``-loglevel error``, exiting 0 all the same) of a file cut short: the
#: mp4/m4a demuxer's "partial file", Matroska/WebM's "File ended prematurely", and the WMA
#: decoder's "Input packet size too small" for the ASF packet cut in two. Ogg Vorbis/Opus, MP3
#: and raw AAC cut short draw no such word (:data:`FFMPEG_DAMAGE_SIGN` at most).
FFMPEG_CUT_SIGNS = ("partial file", "File ended prematurely", "Input packet size too small")

#: What ffmpeg says (at ``-loglevel error``) of each packet it cannot decode and skips, going on
#: with the next: the same words for a packet damaged inside a file and for the last one cut in
#: two (raw AAC's "Input buffer exhausted before END element found" either way), with no time.
#: The file is read, its skipped packets (a few ms of audio each) left out, and a warning names
#: it (refusing hours of audio for one bad packet would lose its whole transcript).
FFMPEG_DAMAGE_SIGN = "Error while decoding stream"


def damaged_packets(lines: list[str]) -> list[str]:
    """ffmpeg's line for each packet it could not decode (:data:`FFMPEG_DAMAGE_SIGN`), of its
    stderr ``lines``: a line that ffmpeg folded into the next one's "Last message repeated N
    times" counts N more times."""
    found: list[str] = []
    for index, line in enumerate(lines):
        if FFMPEG_DAMAGE_SIGN in line:
            found.append(line)
        elif (repeated := re.search(r"Last message repeated (\d+) times", line)) and index > 0 \
                and FFMPEG_DAMAGE_SIGN in lines[index - 1]:
            found.extend([lines[index - 1]] * int(repeated.group(1)))
    return found


#: The ffmpeg program, when installed: the decoder of every format libsndfile does not read.
_FFMPEG = shutil.which("ffmpeg")


#: Frames that :func:`_read` takes from libsndfile at a time: a file is checked, averaged to
#: mono and resampled block by block (:class:`_MonoSamples`), so that memory holds its samples at
#: the model rate, not at its own rate and channels (an hour of 44.1 kHz stereo is 1.3 GB of
#: float32, 0.23 GB at 16 kHz mono).
READ_BLOCK_FRAMES = 1 << 20


#: The most output samples allocated for a file before they are decoded (1 GiB of float32, 4.7 h
#: at 16 kHz): a longer file's array grows to its declared length once its samples fill this
#: (a quarter more at a time, in place, where that much memory cannot be had, or where no length
#: is known: ffmpeg's formats, standard input), so that a header declaring far more frames than a
#: file holds cannot claim the memory for them before any is decoded.
MAX_PREALLOCATED_SAMPLES = 1 << 28


class _MonoSamples:
    """A file's samples as they are decoded, in (n, C) blocks: refused when they are not audio
    (NaN, infinite, beyond :data:`MAX_SAMPLE_MAGNITUDE`), averaged to mono and resampled to
    ``target_rate`` (:class:`StreamingResampler`: the whole signal's samples, to float
    rounding) into one (N,) float32 array.

    Args:
        name: the input's name for messages.
        rate: the file's rate (Hz).
        channels: the file's channel count.
        target_rate: the output rate; None keeps ``rate``.
        frames: the frames the file holds, when known: the output is allocated once for them.
        progress: told the seconds read (and ``frames`` in seconds, when known) after each block.

    Raises:
        AudioError: naming the input, for a rate that cannot be resampled at a bounded cost.
    """

    def __init__(self, name: str, rate: int, channels: int, target_rate: int | None,
                 frames: int = 0, progress: ReadProgress | None = None) -> None:
        self.name, self.rate, self.channels = name, int(rate), int(channels)
        self.progress = progress
        self.total_seconds = int(frames) / self.rate if frames > 0 else None
        self.out_rate = self.rate if target_rate is None else int(target_rate)
        self.resampler = (StreamingResampler(self.rate, self.out_rate, name)
                          if self.out_rate != self.rate else None)
        self.frames = 0  # frames taken
        self.peak = 0.0
        # a header's count is only a claim (a corrupt FLAC may declare 2**36 frames): at most
        # MAX_PREALLOCATED_SAMPLES are allocated for it at once, the rest as the samples come
        self._declared = max(0, -(-self.out_rate * int(frames) // self.rate))
        self._out = np.empty(min(self._declared, MAX_PREALLOCATED_SAMPLES), np.float32)
        self._filled = 0

    def add(self, block: np.ndarray) -> None:
        """Takes the next (n, C) float32 samples."""
        if not np.isfinite(block).all():
            raise AudioError(f"{self.name}: the audio holds NaN or infinite samples")
        self.peak = max(self.peak, check_magnitude(block, self.name))
        self.frames += block.shape[0]
        mono = to_mono(block)
        self._put(mono if self.resampler is None else self.resampler.accept(mono))
        if self.progress is not None:
            self.progress(self.frames / self.rate, self.total_seconds)

    def _put(self, piece: np.ndarray) -> None:
        end = self._filled + piece.shape[0]
        if end > self._out.shape[0] and self._declared > self._out.shape[0]:
            try:  # past the allocation: to the count the header declares, plausible by now
                grown = np.empty(max(end, self._declared), np.float32)
            except MemoryError:  # a header's count far beyond the memory: grow as they come
                self._declared = 0
            else:
                grown[: self._filled] = self._out[: self._filled]
                self._out = grown
        if end > self._out.shape[0]:  # no length known: a quarter more, grown in place (the
            # allocator's realloc moves no samples where it can: no second copy at the peak)
            self._out.resize(max(end, self._out.shape[0] + self._out.shape[0] // 4),
                             refcheck=False)
        self._out[self._filled: end] = piece
        self._filled = end

    def finish(self) -> DecodedAudio:
        """The mono waveform of every block taken.

        Raises:
            AudioError: naming the input, when it held no samples.
        """
        if self.frames == 0:
            raise AudioError(f"{self.name}: the audio holds no samples")
        # a float file may hold integer-scaled samples (its loudest channel's peak tells); named
        # here, before its features would be
        _check_scale(self.peak, self.name, "a float file written with integer-scaled samples? "
                                           "divide them by 32768 (e.g. `sox -v "
                                           "0.000030517578125 IN OUT`)")
        if self.resampler is not None:
            self._put(self.resampler.flush())
        if self._filled < self._out.shape[0]:  # fewer than allocated: shrunk in place
            self._out.resize(self._filled, refcheck=False)
        return DecodedAudio(self._out, self.out_rate, self.name, num_channels=self.channels,
                            original_rate=self.rate)


def _read(source: bytes | str, name: str, target_rate: int | None,
          progress: ReadProgress | None = None) -> DecodedAudio:
    """Decodes with soundfile (libsndfile) block by block, else with ffmpeg when it is
    installed, to mono at ``target_rate`` (None: the file's rate), telling ``progress``."""
    import soundfile

    try:
        file = soundfile.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception as err:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        first = _reason(err)
    else:
        with file:
            mono = _MonoSamples(name, file.samplerate, file.channels, target_rate, file.frames,
                                progress)
            try:
                while True:
                    block = file.read(READ_BLOCK_FRAMES, dtype="float32", always_2d=True)
                    if block.shape[0] == 0:
                        break
                    mono.add(block)
            except AudioError:  # samples that are not audio
                raise
            except Exception as err:  # noqa: BLE001 - libsndfile failed inside the data
                first = _reason(err)
            else:
                head = _head(source)
                declared, header = wav_declared_frames(head), "WAV header"
                if file.format == "MP3" and mp3_length_header(head):
                    declared, header = file.frames, "MP3 Xing/Info header"
                if declared is not None and mono.frames < declared:
                    # libsndfile reads a WAV or MP3 cut short (a copy or download stopped on
                    # the way) up to its end without a word: the transcript would be its
                    # first part's
                    raise AudioError(
                        f"{name}: truncated audio: its {header} declares {declared} samples, "
                        f"{mono.frames} are in the file"
                    )
                return mono.finish()
    hint = f"; {RAW_PCM_HINT}" if name == STDIN_NAME else ""
    if _FFMPEG is None:
        raise AudioError(
            f"{name}: cannot decode audio (corrupt, not an audio file, or a format only ffmpeg "
            f"reads, such as m4a/aac: install ffmpeg): {first}{hint}"
        )
    with contextlib.ExitStack() as stack:
        path = source
        if isinstance(source, bytes):  # ffmpeg seeks in some containers (mp4/m4a): a file
            tmp = stack.enter_context(tempfile.NamedTemporaryFile(prefix="asr-audio-"))
            tmp.write(source)
            tmp.flush()
            path = tmp.name
        mono, said, damaged = _ffmpeg(path, name, target_rate, first, progress)
        declared = declared_frames(path, mono.rate)
    if mono.frames < declared:
        # libsndfile knows the format but failed inside the data; ffmpeg decodes what it can
        raise AudioError(
            f"{name}: truncated or corrupt audio: its header declares {declared} samples, "
            f"{mono.frames} decode (libsndfile: {first})"
        )
    if said:  # ffmpeg decodes a file cut short up to the cut, says so and exits 0
        raise AudioError(f"{name}: truncated or corrupt audio: ffmpeg decoded "
                         f"{mono.frames / mono.rate:.2f} s and said: {said}")
    if damaged:  # ffmpeg skips a packet it cannot decode and goes on
        logger.warning(
            "%s: ffmpeg could not decode %d packet(s) of it and left them out (damaged inside "
            "the file, or its last one cut short: ffmpeg's words do not tell which; times "
            "after one are early by its length, some ms); %.2f s decoded; ffmpeg said: %s",
            name, len(damaged), mono.frames / mono.rate,
            "; ".join(dict.fromkeys(re.sub(r"^\[[^\]]*\] ", "", line) for line in damaged)))
    return mono.finish()


#: Bytes of a file's start that :func:`wav_declared_frames` reads: its header chunks ('fmt ',
#: 'LIST', 'fact', ...) up to the data chunk's size.
WAV_HEADER_BYTES = 65536

#: The smallest data chunk size that is a placeholder, not a length: a writer that cannot seek
#: back to fill it in (a pipe) leaves 0x7FFFF000 (sox), 0x7FFFFFFF or 0xFFFFFFFF (ffmpeg); 0 is
#: one too.
WAV_UNKNOWN_SIZE = 0x7FFFF000


#: WAV format tags whose frames are ``channels * ceil(bits / 8)`` bytes (PCM, IEEE float, A-law,
#: mu-law; WAVE_FORMAT_EXTENSIBLE names one of them in its sub-format). Another tag's
#: nBlockAlign is a codec block of many frames (ADPCM, GSM): its data size says no frame count.
_WAV_FRAME_FORMATS = (0x0001, 0x0003, 0x0006, 0x0007)
_WAV_EXTENSIBLE = 0xFFFE


def _wav_frame_bytes(fmt: bytes) -> int:
    """Bytes of one frame of a WAV 'fmt ' chunk's body, as libsndfile reads it (channels times
    the container's bytes a sample, whatever nBlockAlign says); 0 for a compressed format or a
    body too short to tell."""
    if len(fmt) < 16:
        return 0
    tag = int.from_bytes(fmt[0:2], "little")
    if tag == _WAV_EXTENSIBLE:
        tag = int.from_bytes(fmt[24:26], "little") if len(fmt) >= 26 else 0
    channels, bits = int.from_bytes(fmt[2:4], "little"), int.from_bytes(fmt[14:16], "little")
    if tag not in _WAV_FRAME_FORMATS:
        return 0
    return channels * ((bits + 7) // 8)


def wav_declared_frames(head: bytes) -> int | None:
    """The sample frames that a RIFF/WAVE header (or an RF64/BW64 one, the WAV of files over
    4 GiB, whose ds64 chunk holds the data size) declares in its data chunk.

    Args:
        head: the file's first bytes (:data:`WAV_HEADER_BYTES` of them hold every common
            header).

    Returns:
        The data chunk's size over the bytes of a frame (channels times the bytes of a
        sample); None for another format, a compressed WAV (ADPCM, GSM: no frame size), a
        header whose data chunk lies beyond ``head``, or a size that is a placeholder of a
        writer that could not seek back to fill it in (0, or at least
        :data:`WAV_UNKNOWN_SIZE`; in RF64, a ds64 data size of 0).
    """
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64", b"BW64") or head[8:12] != b"WAVE":
        return None
    rf64 = head[:4] != b"RIFF"
    frame = 0
    ds64_size = 0
    pos = 12
    while pos + 8 <= len(head):
        chunk, size = head[pos: pos + 4], int.from_bytes(head[pos + 4: pos + 8], "little")
        if chunk == b"fmt ":
            frame = _wav_frame_bytes(head[pos + 8: pos + 8 + size])
        elif chunk == b"ds64" and rf64 and pos + 24 <= len(head):
            ds64_size = int.from_bytes(head[pos + 16: pos + 24], "little")  # after riffSize
        elif chunk == b"data":
            if rf64 and size == 0xFFFFFFFF:  # the size is the ds64 chunk's
                size = ds64_size
            elif size >= WAV_UNKNOWN_SIZE:
                return None
            if frame <= 0 or size == 0:
                return None
            return size // frame
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    return None


def mp3_length_header(head: bytes) -> bool:
    """Whether an MP3's first frame (after its ID3v2 tag) is a Xing, Info or VBRI header: the
    stream's exact frame count, which libsndfile (mpg123) gives as the file's length. Without
    one, that length is mpg123's estimate from the file's size and first bitrate, which misses a
    whole file's (a variable bitrate's, or by its encoder's padding): no length to hold it to.

    Args:
        head: the file's first bytes (:data:`WAV_HEADER_BYTES`; a longer ID3v2 tag, such as
            one holding cover art, leaves its first frame beyond them: False).
    """
    pos = 0
    if head[:3] == b"ID3" and len(head) >= 10:
        size = 0
        for byte in head[6:10]:  # a syncsafe integer: 7 bits a byte
            size = (size << 7) | (byte & 0x7F)
        pos = 10 + size + (10 if head[5] & 0x10 else 0)  # a footer follows when flagged
    if pos + 4 > len(head) or head[pos] != 0xFF or head[pos + 1] & 0xE0 != 0xE0:
        return False
    # the tag follows the frame header and side information (9, 17 or 32 bytes; VBRI: 32)
    return any(tag in head[pos + 4: pos + 48] for tag in (b"Xing", b"Info", b"VBRI"))


def _head(source: bytes | str) -> bytes:
    """The first :data:`WAV_HEADER_BYTES` of a file (a path) or of its bytes."""
    if isinstance(source, bytes):
        return source[:WAV_HEADER_BYTES]
    with open(source, "rb") as file:
        return file.read(WAV_HEADER_BYTES)


def declared_length(source: bytes | str) -> tuple[int, int] | None:
    """(samples, rate) that the header of ``source`` (a path or a file's bytes) declares, read
    by libsndfile without decoding; None for a format libsndfile does not know, or a header
    that declares no samples."""
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception:  # noqa: BLE001 - a format only ffmpeg reads
        return None
    return (int(info.frames), int(info.samplerate)) if info.frames > 0 else None


def decode_audio(
    source: str | Path | bytes, target_rate: int | None = 16000, name: str | None = None,
    progress: ReadProgress | None = None,
) -> DecodedAudio:
    """Reads a file (or encoded bytes), downmixes to mono and resamples to ``target_rate``.

    Args:
        source: a path (a named pipe too, such as a shell's ``<(...)``), ``"-"`` for standard
            input, or the encoded bytes of a file.
        target_rate: output rate in Hz; None keeps the file's rate.
        name: name used in messages (default: the path, or ``<stdin>`` for bytes).
        progress: told, after each block read, the seconds of the input read so far and its
            length in seconds (None when unknown), e.g. to draw a progress bar.

    Returns:
        The mono waveform.

    Raises:
        AudioError: naming the input, when it is missing, not a file, empty, undecodable, holds
            no samples, or holds non-finite samples or ones beyond :data:`MAX_SAMPLE_MAGNITUDE`.
    """
    if isinstance(source, (bytes, bytearray)):
        name = name or STDIN_NAME
        if not source:
            raise AudioError(f"{name}: empty input (0 bytes)")
    elif str(source) == "-":
        return _read_pipe(sys.stdin.buffer, name or STDIN_NAME, target_rate, progress)
    else:
        path = Path(source)
        name = name or str(path)
        if not path.exists():
            raise AudioError(f"{name}: no such file")
        if path.is_fifo():  # a shell's process substitution, <(sox in.mp3 -t wav -): read once
            with open(path, "rb") as pipe:
                return _read_pipe(pipe, name, target_rate, progress)
        if path.is_dir():
            raise AudioError(f"{name}: a directory, not an audio file (give its files, e.g. "
                             f"{path / '*.wav'})")
        if not path.is_file():
            raise AudioError(f"{name}: not a regular file")
        if path.stat().st_size == 0:
            raise AudioError(f"{name}: empty file (0 bytes)")
        return _read(str(path), name, target_rate, progress)
    return _read(bytes(source), name, target_rate, progress)


#: Bytes copied from a pipe to its temporary file at a time.
PIPE_COPY_BYTES = 1 << 20


def _read_pipe(pipe: BinaryIO, name: str, target_rate: int | None,
               progress: ReadProgress | None = None) -> DecodedAudio:
    """Decodes what a pipe (standard input, a named pipe) holds: its bytes are copied to a
    temporary file :data:`PIPE_COPY_BYTES` at a time, which is then read as any file, block by
    block (libsndfile, else ffmpeg, which seeks in some containers): memory holds no more than a
    block of the pipe's bytes, not the whole encoded file.

    Raises:
        AudioError: naming ``name``, as :func:`decode_audio` does; for an empty pipe too.
    """
    with tempfile.NamedTemporaryFile(prefix="asr-pipe-") as spool:
        while block := pipe.read(PIPE_COPY_BYTES):
            spool.write(block)
        if spool.tell() == 0:
            raise AudioError(f"{name}: empty input (0 bytes)")
        spool.flush()
        return _read(spool.name, name, target_rate, progress)


def load_audio(source: str | Path | bytes, target_rate: int = 16000) -> np.ndarray:
    """(N,) float32 mono samples of ``source`` at ``target_rate`` (see :func:`decode_audio`)."""
    return decode_audio(source, target_rate).samples


class StreamingResampler:
    """Resamples a waveform that arrives in pieces, exactly as the whole signal at once.

    torchaudio's resampler computes, for each block of ``new`` output samples (rates divided by
    their gcd), one strided correlation of the kernel with input samples
    ``[j * orig - width, j * orig - width + K)`` (``K = 2 * width + orig``) of the signal
    zero-padded by ``width`` on the left and ``width + orig`` on the right, and keeps
    ``ceil(new * N / orig)`` outputs. This class keeps the input samples later blocks still need
    and emits each block as soon as its inputs have arrived; :meth:`flush` pads the right edge.

    Args:
        orig_rate: input rate in Hz.
        new_rate: output rate in Hz.
    """

    def __init__(self, orig_rate: int, new_rate: int, name: str = "stream") -> None:
        check_resampling(orig_rate, new_rate, name)
        self.orig_rate, self.new_rate = int(orig_rate), int(new_rate)
        gcd = math.gcd(self.orig_rate, self.new_rate)
        self._orig, self._new = self.orig_rate // gcd, self.new_rate // gcd
        self._identity = self.orig_rate == self.new_rate
        if not self._identity:
            module = _resampler(self.orig_rate, self.new_rate)
            self._kernel: Tensor = module.kernel  # (new, 1, K)
            self._width = int(module.width)
        else:
            self._kernel, self._width = torch.zeros(0), 0
        # buffer holds the padded signal from padded index ``_next_block * orig`` on.
        self._buffer = torch.zeros(self._width)
        self._num_in = 0
        self._num_out = 0
        self._finished = False

    def accept(self, samples: np.ndarray | Tensor) -> np.ndarray:
        """Feeds (N,) samples; returns the (M,) output samples that are now complete."""
        if self._finished:
            raise RuntimeError("StreamingResampler.accept after flush()")
        wave = torch.as_tensor(np.asarray(samples, dtype=np.float32)).reshape(-1)
        self._num_in += wave.numel()
        if self._identity:
            self._num_out += wave.numel()
            return wave.numpy()
        self._buffer = torch.cat([self._buffer, wave])
        return self._emit(final=False)

    def flush(self) -> np.ndarray:
        """Ends the input: pads the right edge and returns the last output samples."""
        if self._finished:
            return np.zeros(0, dtype=np.float32)
        self._finished = True
        if self._identity:
            return np.zeros(0, dtype=np.float32)
        self._buffer = torch.cat([self._buffer, torch.zeros(self._width + self._orig)])
        return self._emit(final=True)

    def _emit(self, final: bool) -> np.ndarray:
        size = self._kernel.shape[-1]
        num_blocks = (self._buffer.numel() - size) // self._orig + 1
        if num_blocks <= 0:
            return np.zeros(0, dtype=np.float32)
        if final:
            target = math.ceil(self._new * self._num_in / self._orig)
            num_blocks = min(num_blocks, math.ceil((target - self._num_out) / self._new))
        if num_blocks <= 0:
            return np.zeros(0, dtype=np.float32)
        used = self._buffer[: (num_blocks - 1) * self._orig + size]
        with torch.no_grad():
            out = torch.nn.functional.conv1d(used[None, None], self._kernel, stride=self._orig)
        out = out[0].transpose(0, 1).reshape(-1)
        self._buffer = self._buffer[num_blocks * self._orig:]
        if final:
            out = out[: target - self._num_out]
        self._num_out += out.numel()
        return out.numpy()


def to_model_rate(
    samples: np.ndarray | Tensor, sample_rate: int, model_rate: int,
    resampler: StreamingResampler | None, name: str,
) -> tuple[np.ndarray, StreamingResampler | None]:
    """One piece of a stream at ``model_rate``: (N,) float32 mono (:func:`as_waveform`), resampled
    by the stream's ``resampler``, created on the stream's first piece (an identity when its rate
    is the model's): it holds the stream's rate, which every later piece must have.

    Returns:
        ``(wave, resampler)``: the samples now complete and the stream's resampler (None before
        its first piece).

    Raises:
        AudioError: for samples that are not audio.
        ValueError: when the rate changes within the stream.
    """
    wave = as_waveform(samples, name, allow_empty=True)
    if resampler is None:
        resampler = StreamingResampler(sample_rate, model_rate, name)
    elif resampler.orig_rate != sample_rate:
        raise ValueError(
            f"{name}: sample rate changed from {resampler.orig_rate} to {sample_rate} Hz")
    return resampler.accept(wave), resampler
