"""The one resampling rule of asr.audio: every common rate is taken, a rate whose filter would
cost seconds and GBs to build is refused by name before any work."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import tracemalloc
import types

import numpy as np
import pytest
import soundfile as sf

import asr.audio as audio_module
from asr.audio import (
    AudioError,
    StreamingResampler,
    damaged_packets,
    decode_audio,
    resample,
    resampling_problem,
    wav_declared_frames,
)
from asr.features.fbank import compute_fbank

COMMON_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 96000, 192000)


def test_every_common_rate_is_resampled() -> None:
    for rate in COMMON_RATES:
        assert resampling_problem(rate, 16000) is None
        out = resample(np.zeros(rate // 10, dtype=np.float32), rate, 16000)
        assert out.shape == (1600,)


@pytest.mark.parametrize("rate", [7919, 12345, 191999])
def test_a_costly_rate_is_refused_by_name_on_every_path(tmp_path, rate: int) -> None:
    path = tmp_path / f"odd_{rate}.wav"
    sf.write(path, np.zeros(rate // 10, dtype=np.float32), rate)
    with pytest.raises(AudioError, match=rf"odd_{rate}\.wav: sample rate {rate} Hz cannot be"):
        decode_audio(path, 16000)
    assert decode_audio(path, None).sample_rate == rate  # read at its own rate, nothing refused
    with pytest.raises(AudioError, match=f"mic: sample rate {rate} Hz"):
        StreamingResampler(rate, 16000, "mic")
    with pytest.raises(AudioError, match=f"sample rate {rate} Hz"):
        compute_fbank(np.zeros(rate // 10, dtype=np.float32), rate)


def test_non_positive_rates_are_refused() -> None:
    with pytest.raises(AudioError, match="sample rates must be > 0"):
        resample(np.zeros(10, dtype=np.float32), 0, 16000)


def test_integer_scaled_floats_are_warned_about_once(monkeypatch, caplog) -> None:
    """int16 PCM cast to float recognizes as noise without a word: it is logged, once."""
    import asr.audio as audio

    monkeypatch.setattr(audio, "_warned_about_scale", False)
    speech = np.sin(np.linspace(0, 400, 16000)).astype(np.float32) * 0.5
    assert np.array_equal(audio.as_waveform(speech * 1.8, "loud"), speech * 1.8)  # clipped: fine
    assert "expected in [-1, 1]" not in caplog.text
    scaled = (speech * 32768).astype(np.int16).astype(np.float32)
    audio.as_waveform(scaled, "<array 0>")
    assert "<array 0>: float samples reach 16384" in caplog.text and "32768" in caplog.text
    caplog.clear()
    audio.as_waveform(scaled, "<array 1>")
    assert caplog.text == ""


def test_integer_scaled_channels_that_cancel_in_the_mix_are_warned_about(tmp_path, monkeypatch,
                                                                         caplog) -> None:
    """The scale is judged by the peak the magnitude check computed, that of the loudest
    channel: computed again on the mono mix, it missed int16-scaled channels in opposite
    phase, whose mix is silence."""
    import asr.audio as audio

    monkeypatch.setattr(audio, "_warned_about_scale", False)
    speech = np.sin(np.linspace(0, 400, 16000)).astype(np.float32) * 0.5 * 32768
    path = tmp_path / "scaled.wav"
    sf.write(path, np.stack([speech, -speech], axis=1), 16000, subtype="FLOAT")
    decode_audio(path, 16000)
    assert f"{path}: float samples reach 16384" in caplog.text


def test_an_integer_scaled_float_file_is_warned_about_naming_it(tmp_path, monkeypatch,
                                                                 caplog) -> None:
    """A float wav holding int16-scaled samples was only warned about by the features, as
    ``compute_fbank input``: with many files, none named; the warning names the file now."""
    import asr.audio as audio

    monkeypatch.setattr(audio, "_warned_about_scale", False)
    speech = np.sin(np.linspace(0, 400, 16000)).astype(np.float32) * 0.5
    path = tmp_path / "scaled.wav"
    sf.write(path, speech * 32768, 16000, subtype="FLOAT")
    decoded = decode_audio(path, 16000)
    assert np.allclose(decoded.samples, speech * 32768)  # taken as it is, as sherpa-onnx does
    assert f"{path}: float samples reach 16384" in caplog.text
    assert "divide them by 32768" in caplog.text
    caplog.clear()
    compute_fbank(decoded.samples, 16000)  # warned once: not again under another name
    assert caplog.text == ""


def test_a_named_pipe_is_read_and_a_directory_named_as_one(tmp_path) -> None:
    """``asr transcribe <(sox in.mp3 -t wav -)`` gives a named pipe, which was refused as 'not a
    regular file'; it is read like standard input. A directory says it is one."""
    speech = (np.sin(np.linspace(0, 400, 8000)) * 0.5).astype(np.float32)
    data = io.BytesIO()
    sf.write(data, speech, 8000, format="WAV", subtype="FLOAT")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def write() -> None:
        try:
            with open(fifo, "wb") as f:
                f.write(data.getvalue())
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        decoded = decode_audio(fifo, None)
    finally:  # a reader that never opened the pipe leaves the writer blocked: release it
        release = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        writer.join(timeout=10)
        os.close(release)
    assert decoded.sample_rate == 8000 and np.array_equal(decoded.samples, speech)
    assert decoded.source == str(fifo)
    with pytest.raises(AudioError, match=rf"{tmp_path}: a directory, not an audio file"):
        decode_audio(tmp_path)


def test_samples_far_beyond_any_pcm_scale_are_not_audio(tmp_path) -> None:
    """Finite floats of 3e38 passed the NaN check, gave NaN features and failed the beam search
    of a whole batch (a server's other clients, asr transcribe's other files). Refused when
    read, per input, naming it; int32 PCM cast to float (2**31) is still taken (and warned)."""
    import asr
    from asr.audio import MAX_SAMPLE_MAGNITUDE, as_waveform
    from asr.results import FailedInput
    from asr.testing.packages import random_package

    loud = np.full(16000, 3e38, np.float32)
    with pytest.raises(AudioError, match=r"stream 4: samples reach 3e\+38, which is not audio"):
        as_waveform(loud, "stream 4", allow_empty=True)
    path = tmp_path / "loud.wav"
    sf.write(path, loud, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"loud\.wav: samples reach 3e\+38, which is not audio"):
        decode_audio(path)
    assert MAX_SAMPLE_MAGNITUDE > 2.0**31
    assert as_waveform(np.full(10, -(2.0**31), np.float32), "int32 as float").size == 10
    model = asr.load_model(random_package(tmp_path / "model"))
    speech = np.sin(np.linspace(0, 400, 16000)).astype(np.float32) * 0.5
    for streaming in (False, True):
        failed, result = model.transcribe([path, speech], searcher="ctc_prefix_beam",
                                          streaming=streaming, on_error="return")
        assert isinstance(failed, FailedInput) and "not audio" in failed.error
        assert not isinstance(result, FailedInput)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_a_video_without_sound_is_said_to_hold_no_audio_stream(tmp_path) -> None:
    """ffmpeg's last line was the reason given: "X: cannot decode audio ...; ffmpeg: To ignore
    this, add a trailing '?' to the map", which says nothing of the file's missing sound."""
    video = tmp_path / "silent film.mkv"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "color=c=black:s=16x16:d=0.2", "-c:v", "rawvideo", str(video)], check=True)
    with pytest.raises(AudioError, match=re.escape(
            f"{video}: cannot decode audio (corrupt or not an audio file): libsndfile: ")) as err:
        decode_audio(video)
    assert str(err.value).endswith("; ffmpeg: it holds no audio stream (a video without sound?)")


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_a_file_named_like_ffmpegs_no_stream_message_gets_ffmpegs_own_reason(tmp_path) -> None:
    """The no-audio-stream message was chosen when any line of ffmpeg's errors held "matches no
    streams", and ffmpeg's errors name the file: an undecodable file whose name held those
    words was said to be a video without sound."""
    junk = tmp_path / "take 2 matches no streams.mkv"
    junk.write_bytes(b"not a container at all" * 40)
    with pytest.raises(AudioError) as err:
        decode_audio(junk)
    assert "no audio stream" not in str(err.value), err.value
    assert "; ffmpeg: Invalid data found when processing input" in str(err.value), err.value


def _wav_cut_to_a_third(path, samples: np.ndarray) -> bytes:
    """A 16-bit WAV of ``samples`` at 16 kHz written to ``path``, then cut to its first third
    (a copy stopped on the way: its header still declares every sample)."""
    sf.write(path, samples, 16000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return data


def test_a_truncated_wav_is_an_error_naming_it_not_the_transcript_of_its_first_part(
        tmp_path) -> None:
    """libsndfile reads a WAV cut short up to its end without a word; its header says how many
    samples it should hold. A file or its bytes (stdin)."""
    path = tmp_path / "meeting.wav"
    _wav_cut_to_a_third(path, np.random.default_rng(0).uniform(-0.5, 0.5, 48000))
    expected = r"truncated audio: its WAV header declares 48000 samples, \d+ are in the file"
    with pytest.raises(AudioError, match=rf"meeting\.wav: {expected}"):
        decode_audio(path)
    with pytest.raises(AudioError, match=rf"<stdin>: {expected}"):
        decode_audio(path.read_bytes())


@pytest.mark.parametrize("placeholder", [0x7FFFF000, 0x7FFFFFFF, 0xFFFFFFFF])
def test_a_wav_written_to_a_pipe_with_a_placeholder_length_is_read_whole(
        tmp_path, placeholder: int) -> None:
    """A writer that cannot seek back (sox or ffmpeg into a pipe) leaves a placeholder for the
    data chunk's size, which is no length to hold the file to."""
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32)
    path = tmp_path / "piped.wav"
    sf.write(path, samples, 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at: at + 4] = placeholder.to_bytes(4, "little")
    data[4:8] = placeholder.to_bytes(4, "little")
    assert wav_declared_frames(bytes(data)) is None
    assert decode_audio(bytes(data)).samples.shape == (16000,)


def test_the_wav_header_gives_the_declared_frames_past_other_chunks(tmp_path) -> None:
    """Stereo 16-bit: 4 bytes a frame; a LIST chunk before the data chunk is skipped."""
    path = tmp_path / "stereo.wav"
    sf.write(path, np.zeros((1000, 2), np.float32), 44100, subtype="PCM_16")
    data = path.read_bytes()
    at = data.index(b"data")
    info = b"LIST" + (5).to_bytes(4, "little") + b"INFOx" + b"\0"  # odd size: padded
    assert wav_declared_frames(data[:at] + info + data[at:]) == 1000
    assert wav_declared_frames(b"fLaC" + data[4:]) is None


def _decode_with_peak(path):
    """``decode_audio(path, 16000)`` and the peak of the memory Python allocated meanwhile."""
    tracemalloc.start()
    try:
        decoded = decode_audio(path, 16000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return decoded, peak


def test_a_long_file_is_downmixed_and_resampled_block_by_block(tmp_path, monkeypatch) -> None:
    """An hour of 44.1 kHz stereo is 1.3 GB of float32 samples, 0.23 GB at 16 kHz mono: a file
    is read in blocks (here of 4096 frames), each averaged and resampled as it comes, so that
    memory never holds it at its own rate and channels; its samples are those of the whole
    file resampled at once (to float rounding)."""
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.5, 0.5, (441000, 2)).astype(np.float32)  # 10 s, 3.5 MB
    path = tmp_path / "podcast.flac"
    sf.write(path, stereo, 44100, subtype="PCM_24")
    whole = resample(sf.read(path, dtype="float32", always_2d=True)[0].mean(axis=1), 44100,
                     16000)
    monkeypatch.setattr(audio_module, "READ_BLOCK_FRAMES", 4096)
    decoded, peak = _decode_with_peak(path)
    assert (decoded.sample_rate, decoded.num_channels, decoded.original_rate) == (16000, 2, 44100)
    assert decoded.samples.shape == whole.shape
    np.testing.assert_allclose(decoded.samples, whole, atol=1e-6)
    assert peak < 2 * decoded.samples.nbytes, f"{peak} bytes at the peak"


@pytest.mark.parametrize("preallocated", [1 << 28, 1000])
def test_a_header_declaring_far_more_frames_than_held_is_an_error_not_an_allocation(
        tmp_path, monkeypatch, preallocated: int) -> None:
    """A FLAC whose STREAMINFO claims 2**36 - 1 frames (a corrupt header) made the decoder
    allocate its output for them at once: a MemoryError ("Unable to allocate 256. GiB") naming
    no file. The allocation made before decoding is bounded; growing past it to the declared
    length, where that cannot be had, doubles instead. The file is then refused naming it, as
    any file holding fewer samples than its header declares."""
    monkeypatch.setattr(audio_module, "MAX_PREALLOCATED_SAMPLES", preallocated)
    path = tmp_path / "corrupt.flac"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 16000), 16000)
    data = bytearray(path.read_bytes())
    at = 8 + 13  # 'fLaC', the STREAMINFO block header, then 36 bits of total samples
    data[at] |= 0x0F
    data[at + 1: at + 5] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    assert sf.info(path).frames == 2**36 - 1
    with pytest.raises(AudioError, match=r"corrupt\.flac: truncated or corrupt audio: its "
                                         r"header declares 68719476735 samples, 16000 decode"):
        decode_audio(path)


def test_a_pcm_wav_is_counted_in_frames_of_its_sample_width_not_of_its_block_align(
        tmp_path) -> None:
    """libsndfile reads PCM by channels and sample width, whatever nBlockAlign says: a 16-bit
    mono WAV whose writer left nBlockAlign 1 holds 16000 frames, not 32000 (it was refused as
    truncated). A compressed WAV's nBlockAlign is a codec block (IMA ADPCM: 505 frames in 256
    bytes), which gives no frame count."""
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32)
    path = tmp_path / "align.wav"
    sf.write(path, samples, 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    fmt = data.index(b"fmt ") + 8
    data[fmt + 12: fmt + 14] = (1).to_bytes(2, "little")  # nBlockAlign
    assert wav_declared_frames(bytes(data)) == 16000
    assert decode_audio(bytes(data)).samples.shape == (16000,)
    sf.write(path, samples, 16000, subtype="IMA_ADPCM")
    assert wav_declared_frames(path.read_bytes()) is None
    assert decode_audio(path).samples.shape[0] >= 16000  # padded to whole blocks


@pytest.mark.parametrize(("container", "subtype"), [("RF64", "PCM_16"), ("WAVEX", "PCM_24"),
                                                    ("WAVEX", "FLOAT")])
def test_an_rf64_or_extensible_wav_cut_short_is_refused(tmp_path, container: str,
                                                        subtype: str) -> None:
    """RF64, the WAV of recordings over 4 GiB, keeps its data size in its ds64 chunk (the data
    chunk's own size is 0xFFFFFFFF): one cut short was read up to its end without a word.
    WAVE_FORMAT_EXTENSIBLE (24-bit, float) gives its sample width as PCM does."""
    stereo = np.random.default_rng(0).uniform(-0.5, 0.5, (16000, 2)).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(path, stereo, 16000, format=container, subtype=subtype)
    data = path.read_bytes()
    assert wav_declared_frames(data) == 16000
    assert decode_audio(path).samples.shape == (16000,)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"long\.wav: truncated audio: its WAV header declares "
                                         r"16000 samples, \d+ are in the file"):
        decode_audio(path)


def test_a_file_longer_than_the_preallocation_grows_once_to_its_declared_length(
        tmp_path, monkeypatch) -> None:
    """Past :data:`MAX_PREALLOCATED_SAMPLES` (here 1000) the output grows to the length the
    header declares, once, not by doubling (whose last array, twice the samples at most, was
    copied again to its length at the end: about 2.5 times the samples at the peak)."""
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, 160000).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    monkeypatch.setattr(audio_module, "READ_BLOCK_FRAMES", 4096)
    monkeypatch.setattr(audio_module, "MAX_PREALLOCATED_SAMPLES", 1000)
    decoded, peak = _decode_with_peak(path)
    np.testing.assert_array_equal(decoded.samples, samples)
    assert peak < 1.3 * samples.nbytes, f"{peak} bytes at the peak"


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_a_format_only_ffmpeg_reads_is_decoded_block_by_block(tmp_path, monkeypatch) -> None:
    """ffmpeg's output (float32 WAV at the file's rate and channels) was read whole into memory,
    then into an array of the same size, before it was averaged and resampled: an hour of 44.1
    kHz stereo m4a took 2.6 GB. It is read from ffmpeg's pipe a block at a time; its samples are
    those of the whole output averaged and resampled at once (to float rounding)."""
    rng = np.random.default_rng(0)
    wav = tmp_path / "talk.wav"
    sf.write(wav, rng.uniform(-0.5, 0.5, (441000, 2)).astype(np.float32), 44100)  # 10 s
    path = tmp_path / "talk.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "aac",
                    str(path)], check=True)
    whole = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-f",
                            "wav", "-acodec", "pcm_f32le", "pipe:1"], capture_output=True,
                           check=True).stdout
    stereo, rate = sf.read(io.BytesIO(whole), dtype="float32", always_2d=True)
    expected = resample(stereo.mean(axis=1), rate, 16000)
    monkeypatch.setattr(audio_module, "READ_BLOCK_FRAMES", 4096)
    decoded, peak = _decode_with_peak(path)
    assert (decoded.num_channels, decoded.original_rate) == (2, 44100)
    assert decoded.samples.shape == expected.shape
    np.testing.assert_allclose(decoded.samples, expected, atol=1e-6)
    assert peak < 2 * decoded.samples.nbytes, f"{peak} bytes at the peak"


@pytest.mark.parametrize("pipe", ["stdin", "named pipe"])
def test_a_pipe_is_not_held_whole_in_memory(tmp_path, monkeypatch, pipe: str) -> None:
    """Standard input and a named pipe were read whole into one bytes object (an hour of 44.1
    kHz stereo float WAV: 1.3 GB) before decoding. Their bytes go to a temporary file a block
    at a time, which is read as any file: the same samples, a block of bytes in memory."""
    stereo = np.random.default_rng(0).uniform(-0.5, 0.5, (441000, 2)).astype(np.float32)
    data = io.BytesIO()
    sf.write(data, stereo, 44100, format="WAV", subtype="FLOAT")
    data = data.getvalue()
    expected = resample(stereo.mean(axis=1), 44100, 16000)
    monkeypatch.setattr(audio_module, "READ_BLOCK_FRAMES", 4096)
    monkeypatch.setattr(audio_module, "PIPE_COPY_BYTES", 65536)
    if pipe == "stdin":
        read_end, write_end = os.pipe()
        monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=os.fdopen(read_end, "rb")))
        source, writer_path = "-", write_end
    else:
        source = writer_path = tmp_path / "pipe"
        os.mkfifo(source)

    def write() -> None:
        with open(writer_path, "wb") as f:
            f.write(data)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    decoded, peak = _decode_with_peak(source)
    writer.join(timeout=10)
    if pipe == "stdin":
        sys.stdin.buffer.close()
    assert decoded.source == ("<stdin>" if pipe == "stdin" else str(source))
    np.testing.assert_allclose(decoded.samples, expected, atol=1e-6)
    assert peak < 2 * decoded.samples.nbytes, f"{peak} bytes at the peak"


def test_reading_tells_the_seconds_read_and_the_length_after_each_block(tmp_path,
                                                                        monkeypatch) -> None:
    """Reading and resampling an hour of 44.1 kHz audio takes minutes, which showed no
    progress: the reader is told the seconds read after each block, and the file's length."""
    path = tmp_path / "lecture.flac"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, (44100, 2)), 44100)
    monkeypatch.setattr(audio_module, "READ_BLOCK_FRAMES", 10000)
    told = []
    decode_audio(path, 16000, progress=lambda done, total: told.append((done, total)))
    assert told == [(n / 44100, 1.0) for n in (10000, 20000, 30000, 40000, 44100)]


def test_an_mp3_cut_short_is_refused_by_its_xing_header(tmp_path) -> None:
    """libsndfile reads an MP3 cut short up to its end without a word; its Xing (libsndfile,
    LAME) or Info (LAME at a constant bitrate) header holds the stream's frame count, which a
    whole file's decoding gives exactly."""
    path = tmp_path / "episode.mp3"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 48000 * 4), 48000,
             format="MP3", subtype="MPEG_LAYER_III")
    data = path.read_bytes()
    assert decode_audio(path, None).samples.shape == (48000 * 4,)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"episode\.mp3: truncated audio: its MP3 Xing/Info "
                                         r"header declares 192000 samples, \d+ are in the file"):
        decode_audio(path)
    with pytest.raises(AudioError, match=r"<stdin>: truncated audio: its MP3 Xing/Info header"):
        decode_audio(path.read_bytes())


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
@pytest.mark.parametrize("xing", ["1", "0"])
def test_an_mp3_is_held_to_its_length_only_by_a_xing_or_info_header(tmp_path, xing) -> None:
    """A whole MP3 without a Xing/Info header is longer by libsndfile's estimate (from its
    size and first bitrate) than it decodes: no length to refuse it by. An ID3v2 tag before
    the first frame is skipped."""
    path = tmp_path / "id3.mp3"
    result = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                             "sine=f=300:d=7.3:r=44100", "-metadata", "title=x", "-c:a",
                             "libmp3lame", "-b:a", "64k", "-write_xing", xing, str(path)],
                            capture_output=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"ffmpeg cannot encode MP3: {result.stderr.decode(errors='replace')}")
    data = path.read_bytes()
    assert data[:3] == b"ID3"
    assert audio_module.mp3_length_header(data) == (xing == "1")
    decoded = decode_audio(path, None)
    if xing == "0":
        assert sf.info(path).frames > decoded.samples.shape[0]  # the estimate: not a length
    path.write_bytes(data[: len(data) // 2])
    if xing == "1":
        with pytest.raises(AudioError, match=r"id3\.mp3: truncated audio"):
            decode_audio(path)
    else:
        decode_audio(path)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
@pytest.mark.parametrize(("suffix", "codec", "said"), [
    ("m4a", "aac", "partial file"),
    ("mka", "flac", "File ended prematurely"),
    ("wma", "wmav2", "Input packet size too small"),
])
def test_a_file_only_ffmpeg_reads_cut_short_is_refused_with_ffmpegs_words(
        tmp_path, suffix: str, codec: str, said: str) -> None:
    """ffmpeg decodes such a file up to the cut and exits 0, saying on stderr that it was cut:
    the transcript was its first part's."""
    path = tmp_path / f"call.{suffix}"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=f=300:d=10:r=48000", "-c:a", codec, "-movflags", "+faststart",
                    str(path)], check=True)
    assert decode_audio(path).duration == pytest.approx(10.0, abs=0.05)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=rf"call\.{suffix}: truncated or corrupt audio: ffmpeg "
                                         rf"decoded [\d.]+ s and said: .*{said}"):
        decode_audio(path)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
@pytest.mark.parametrize(("where", "seconds"), [("inside", 10.0), ("cut", 5.0)])
def test_a_packet_ffmpeg_cannot_decode_is_left_out_with_a_warning_naming_the_file(
        tmp_path, caplog, where: str, seconds: float) -> None:
    """ffmpeg says the same words ("Error while decoding stream", no time) of a raw AAC packet
    damaged inside a file and of its last one cut in two, and decodes the rest: one bad packet
    refused the whole file, hours of audio. It is read, and a warning names the file."""
    path = tmp_path / "call.aac"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=f=300:d=10:r=48000", "-c:a", "aac", str(path)], check=True)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    if where == "inside":
        data[middle: middle + 40] = bytes(b ^ 0x5A for b in data[middle: middle + 40])
    else:
        del data[middle:]
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="asr.audio"):
        audio = decode_audio(path)
    assert audio.duration == pytest.approx(seconds, abs=0.1)
    (record,) = [r for r in caplog.records if r.name == "asr.audio"]
    assert record.levelno == logging.WARNING
    assert re.search(r"call\.aac: ffmpeg could not decode 1 packet\(s\) of it and left them "
                     r"out .*Error while decoding stream", record.getMessage())


def test_a_damaged_packet_folded_into_ffmpegs_repeat_line_is_counted() -> None:
    """ffmpeg folds a line said again and again into "Last message repeated N times": each
    packet it stands for counts (the warning said 1 packet for 213)."""
    bad = "Error while decoding stream #0:0: Invalid data found when processing input"
    lines = ["[aac @ 0x1] Input buffer exhausted before END element found", bad,
             "    Last message repeated 212 times", "[aac @ 0x1] other", bad,
             "    Last message repeated 3 times"]
    assert damaged_packets(lines) == [bad] * 217
