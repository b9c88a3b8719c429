"""``asr transcribe`` end to end on espeak-ng speech with a tiny model trained in the session.

What the tiny model hears depends on the weights its training ends with, which depend on the
CPU's float kernels, so no test expects its training sentences: the CLI must print the Python
API's result for the same input, in every output format, and every audio format must decode to
the speech that was written (:func:`asr.testing.signals.aligned_snr_db`).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import asr.audio as audio_module
from asr.audio import AudioError, load_audio, resample
from asr.cli.main import main
from asr.cli.transcribe import format_result
from asr.results import Segment, TranscriptionResult, Word
from asr.testing.signals import aligned_snr_db
from asr.testing.tiny import espeak_available

pytestmark = pytest.mark.skipif(not espeak_available(), reason="needs espeak-ng")

FORMATS = {  # extension -> (soundfile format, subtype, sample rate)
    "wav": ("WAV", "PCM_16", 16000),
    "flac": ("FLAC", "PCM_16", 22050),
    "ogg": ("OGG", "VORBIS", 44100),
    "mp3": ("MP3", "MPEG_LAYER_III", 24000),
}

#: Least SNR of a decoded file against the speech written to it: the lossy codecs keep 21 dB or
#: more; a wrong rate, a dropped 50 ms or a lost channel leave under 10 dB.
MIN_SNR_DB = 15.0


@pytest.fixture(scope="session")
def tiny(tiny_models_dir):
    from asr.testing.packages import trained_tiny_package

    return trained_tiny_package(tiny_models_dir)


@pytest.fixture(scope="session")
def model(tiny):
    """The tiny package through the Python API: what the CLI's outputs must carry."""
    import asr

    return asr.load_model(tiny.package_dir)


def api_texts(model, files, **kwargs) -> list[str]:
    """The API's transcripts of ``files``; none empty (else comparing with them proves little)."""
    texts = [r.text for r in model.transcribe([str(f) for f in files], **kwargs)]
    assert all(texts), f"the tiny model hears nothing in some of {files}: {texts}"
    return texts


def assert_decodes_to(path: Path, reference: np.ndarray) -> None:
    """``path`` decodes (16 kHz mono) to ``reference`` up to its codec's loss."""
    snr = aligned_snr_db(reference, load_audio(path, 16000))
    assert snr > MIN_SNR_DB, f"{path} decodes to other audio than was written: {snr:.1f} dB"


@pytest.fixture(scope="session")
def audio_dir(tiny, tmp_path_factory) -> Path:
    """utt<i>.<ext> for every format, and utt<i>_8k_stereo.wav."""
    out = tmp_path_factory.mktemp("audio")
    for i, wav in enumerate(tiny.wavs):
        samples = load_audio(wav, 16000)
        for ext, (fmt, subtype, rate) in FORMATS.items():
            soundfile.write(out / f"utt{i}.{ext}", resample(samples, 16000, rate), rate,
                            format=fmt, subtype=subtype)
        mono = resample(samples, 16000, 8000)
        stereo = np.stack([mono, 0.5 * mono], axis=1)
        soundfile.write(out / f"utt{i}_8k_stereo.wav", stereo, 8000, subtype="PCM_16")
    return out


def _run(args, capsys) -> tuple[int, str, str]:
    code = main(["--log-level", "WARNING", "transcribe", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("ext", list(FORMATS))
def test_every_format(tiny, model, audio_dir, capsys, ext):
    """Each file decodes to the speech written to it, and its line holds the API's text."""
    files = [audio_dir / f"utt{i}.{ext}" for i in range(len(tiny.texts))]
    for path, wav in zip(files, tiny.wavs):
        assert_decodes_to(path, load_audio(wav, 16000))
    code, out, _ = _run([*files, "--model", tiny.package_dir], capsys)
    assert code == 0
    lines = [line.split("\t") for line in out.splitlines()]
    assert [source for source, _ in lines] == [str(f) for f in files]
    assert [text for _, text in lines] == api_texts(model, files)


def assert_cues_carry_words(cues: list[tuple[float, float, str]], words: list[dict]) -> None:
    """Subtitle cues hold the words in order, each cue from its first word's start (ms)."""
    position = 0
    for start, end, text in cues:
        count = len(text.split())
        held = words[position: position + count]
        assert " ".join(w["word"] for w in held) == text, (text, held)
        assert start == pytest.approx(held[0]["start"], abs=1e-3), (start, held)
        assert start <= end <= held[-1]["end"] + 1e-3, (start, end, held)
        position += count
    assert position == len(words)


def test_output_formats_carry_the_api_result(model, tiny, audio_dir, capsys):
    """text, json, srt and vtt of one input: the API's result, each well-formed, the same words
    and times in each."""
    path = audio_dir / "utt3.ogg"
    [expected] = model.transcribe([str(path)])
    assert expected.text, "the tiny model hears nothing: comparing with it proves little"
    outputs = {}
    for fmt in ("text", "json", "srt", "vtt"):
        code, outputs[fmt], _ = _run([path, "--model", tiny.package_dir, "--format", fmt],
                                     capsys)
        assert code == 0, fmt
    assert outputs["text"] == f"{expected.text}\n"
    assert outputs["json"].endswith("\n") and outputs["json"].count("\n") == 1
    result = json.loads(outputs["json"])
    assert result == json.loads(json.dumps(expected.to_dict()))
    assert " ".join(w["word"] for w in result["words"]) == result["text"]
    for fmt in ("srt", "vtt"):
        cues = parse_subtitles(outputs[fmt], vtt=fmt == "vtt")
        assert_cues_carry_words(cues, result["words"])


needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


@needs_ffmpeg
def test_formats_only_ffmpeg_reads(tiny, model, audio_dir, tmp_path, capsys, monkeypatch):
    """m4a/aac (libsndfile cannot read it) decodes through ffmpeg to the speech of its wav, and
    is transcribed as the API transcribes it, from a file and from stdin; without ffmpeg the
    error says to install it."""
    wavs = [audio_dir / f"utt{i}.wav" for i in range(len(tiny.texts))]
    m4as = []
    for wav in wavs:
        m4a = tmp_path / f"{wav.stem}.m4a"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "aac",
                        "-b:a", "96k", str(m4a)], check=True)
        m4as.append(m4a)
    with pytest.raises(Exception, match="Format not recognised"):
        soundfile.read(m4as[0])
    for m4a, wav in zip(m4as, wavs):
        assert_decodes_to(m4a, load_audio(wav, 16000))
    code, out, _ = _run([*m4as, "--model", tiny.package_dir], capsys)
    expected = api_texts(model, m4as)
    assert code == 0 and out.splitlines() == [f"{f}\t{t}" for f, t in zip(m4as, expected)]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(m4as[1].read_bytes())))
    code, out, _ = _run(["-", "--model", tiny.package_dir], capsys)
    assert code == 0 and out == f"{expected[1]}\n"

    monkeypatch.setattr(audio_module, "_FFMPEG", None)
    with pytest.raises(AudioError, match="a format only ffmpeg reads, such as m4a/aac: install "
                                         "ffmpeg"):
        load_audio(m4as[0])


def test_8khz_stereo_input(tiny, model, audio_dir, capsys):
    """Both channels (the second at half the level) reach the model, at 16 kHz."""
    path = audio_dir / "utt1_8k_stereo.wav"
    narrow = resample(resample(load_audio(tiny.wavs[1], 16000), 16000, 8000), 8000, 16000)
    assert_decodes_to(path, 0.75 * narrow)
    code, out, _ = _run([path, "--model", tiny.package_dir], capsys)
    assert code == 0 and out == f"{api_texts(model, [path])[0]}\n"


def test_streaming_gives_the_offline_text(tiny, model, audio_dir, capsys):
    files = [audio_dir / f"utt{i}.wav" for i in range(len(tiny.texts))]
    files.append(audio_dir / "utt3_8k_stereo.wav")
    results = {}
    for mode in ([], ["--streaming"]):
        code, out, _ = _run([*files, "--model", tiny.package_dir, "--format", "json",
                             "--batch-size", "3", *mode], capsys)
        assert code == 0
        results[bool(mode)] = [json.loads(line) for line in out.splitlines()]
    offline, streaming = results[False], results[True]
    assert [r["text"] for r in streaming] == [r["text"] for r in offline]
    assert [r["text"] for r in offline] == api_texts(model, files)
    assert [r["timestamps"] for r in streaming] == [r["timestamps"] for r in offline]


def test_batching_does_not_change_results(tiny, audio_dir, capsys):
    files = [audio_dir / f"utt{i}.flac" for i in range(len(tiny.texts))] * 2
    outputs = [_run([*files, "--model", tiny.package_dir, "--format", "json", "--batch-size", b],
                    capsys)[1] for b in (1, 5)]
    assert outputs[0] == outputs[1]


def test_json_words_and_timestamps(tiny, model, audio_dir, capsys):
    code, out, _ = _run([audio_dir / "utt2.wav", "--model", tiny.package_dir, "--format", "json"],
                        capsys)
    result = json.loads(out)
    assert code == 0 and result["text"] == api_texts(model, [audio_dir / "utt2.wav"])[0]
    assert [w["word"] for w in result["words"]] == result["text"].split()
    times = result["timestamps"]
    assert len(times) == len(result["tokens"]) and times == sorted(times)
    assert all(0 <= w["start"] < w["end"] <= result["duration"] + 0.05 for w in result["words"])
    starts = [w["start"] for w in result["words"]]
    assert starts == sorted(starts)


_SRT_TIME = r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d)"


def _seconds(match: tuple[str, ...]) -> float:
    hours, minutes, secs, millis = map(int, match)
    return hours * 3600 + minutes * 60 + secs + millis / 1000


def parse_subtitles(text: str, vtt: bool) -> list[tuple[float, float, str]]:
    """A strict little SRT / WebVTT parser: numbered (srt) cues, 'start --> end', text lines."""
    lines = text.split("\n")
    if vtt:
        assert lines[0] == "WEBVTT" and lines[1] == "", "WebVTT must start with 'WEBVTT' + blank"
        lines = lines[2:]
    blocks = [b for b in "\n".join(lines).split("\n\n") if b.strip()]
    sep = r"\." if vtt else ","
    pattern = re.compile(rf"^{_SRT_TIME.replace('[,.]', sep)} --> "
                         rf"{_SRT_TIME.replace('[,.]', sep)}$")
    cues = []
    for number, block in enumerate(blocks, start=1):
        rows = block.strip("\n").split("\n")
        if not vtt:
            assert rows.pop(0) == str(number), f"cue {number} is not numbered {number}"
        match = pattern.match(rows[0])
        assert match, f"bad timing line {rows[0]!r}"
        start, end = _seconds(match.groups()[:4]), _seconds(match.groups()[4:])
        assert 0 <= start <= end and rows[1:], f"bad cue {block!r}"
        cues.append((start, end, " ".join(rows[1:])))
    assert [c[0] for c in cues] == sorted(c[0] for c in cues)
    return cues


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitles_parse(tiny, model, audio_dir, capsys, fmt):
    code, out, _ = _run([audio_dir / "utt3.ogg", "--model", tiny.package_dir, "--format", fmt],
                        capsys)
    assert code == 0
    cues = parse_subtitles(out, vtt=fmt == "vtt")
    expected = api_texts(model, [audio_dir / "utt3.ogg"])[0]
    assert " ".join(text for _, _, text in cues) == expected


def _result(segments: list[list[Word]], duration: float) -> TranscriptionResult:
    kept = tuple(
        Segment(" ".join(w.text for w in words), words[0].start, words[-1].end,
                words=tuple(words), index=k)
        for k, words in enumerate(segments)
    )
    return TranscriptionResult("a.wav", " ".join(s.text for s in kept), (), (), (),
                               tuple(w for s in kept for w in s.words), duration, kept)


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitle_cues_never_overlap_and_count_hours(fmt):
    """Two 20-letter words fill a cue (42 characters); the third word starts on the frame the
    second one ends on (a transducer emits both there), so its cue starts before the first cue
    ends, unless the first cue's end is cut there. Times past an hour and millisecond rounding;
    no words give no cues."""
    first = [Word("A" * 20, 0.0, 0.08), Word("B" * 20, 0.04, 0.12), Word("C" * 10, 0.08, 0.2)]
    late = [Word("LATE", 3725.0004, 3725.4996)]
    text = format_result(_result([first, late], 3726.0), fmt, with_source=False)
    cues = parse_subtitles(text, vtt=fmt == "vtt")
    assert [c[2] for c in cues] == ["A" * 20 + " " + "B" * 20, "C" * 10, "LATE"]
    assert all(end <= following[0] for (_, end, _), following in zip(cues, cues[1:]))
    assert cues[0][:2] == (0.0, 0.08) and cues[2][:2] == (3725.0, 3725.5)
    sep = "," if fmt == "srt" else "."
    assert f"01:02:05{sep}000 --> 01:02:05{sep}500" in text
    assert format_result(_result([], 1.0), fmt, with_source=False) == (
        "" if fmt == "srt" else "WEBVTT\n\n"
    )


def test_subtitles_for_several_files_need_output_dir(tiny, model, audio_dir, tmp_path, capsys):
    files = [audio_dir / "utt0.wav", audio_dir / "utt1.mp3"]
    assert _run([*files, "--model", tiny.package_dir, "--format", "srt"], capsys)[0] == 2
    code, _, _ = _run([*files, "--model", tiny.package_dir, "--format", "vtt",
                       "--output-dir", tmp_path / "subs"], capsys)
    assert code == 0
    for name, text in zip(("utt0.vtt", "utt1.vtt"), api_texts(model, files)):
        cues = parse_subtitles((tmp_path / "subs" / name).read_text(), vtt=True)
        assert " ".join(c[2] for c in cues) == text


def test_text_files_of_output_dir_hold_their_transcript_alone(tiny, model, audio_dir, tmp_path,
                                                              capsys):
    """With several inputs a file of --output-dir held ``SOURCE<TAB>TEXT``, with one input the
    text alone: a file's content depended on the rest of the command line."""
    files = [audio_dir / "utt0.wav", audio_dir / "utt1.mp3"]
    code, _, _ = _run([*files, "--model", tiny.package_dir, "--output-dir", tmp_path / "txt"],
                      capsys)
    assert code == 0
    for name, text in zip(("utt0.txt", "utt1.txt"), api_texts(model, files)):
        assert (tmp_path / "txt" / name).read_text() == text + "\n"



def test_inputs_of_one_stem_get_files_of_their_own_named_in_the_log(tiny, model, audio_dir,
                                                                    tmp_path, capsys, caplog):
    """Two ``utt.flac`` of other directories: the second one's text went to ``utt-2.txt`` without
    a word, and the name alone does not tell which input it is."""
    first, second = tmp_path / "a" / "utt.flac", tmp_path / "b" / "utt.flac"
    for path, source in ((first, "utt0.flac"), (second, "utt1.flac")):
        path.parent.mkdir()
        shutil.copy(audio_dir / source, path)
    out = tmp_path / "out"
    code, _, _ = _run([first, second, "--model", tiny.package_dir, "--output-dir", out], capsys)
    assert code == 0
    texts = api_texts(model, [first, second])
    assert (out / "utt.txt").read_text() == texts[0] + "\n"
    assert (out / "utt-2.txt").read_text() == texts[1] + "\n"
    assert f"{second} is written to {out / 'utt-2.txt'}: {out / 'utt.txt'} is {first}'s" \
        in caplog.text


def test_output_names_are_safe_and_case_insensitively_distinct(tiny, model, audio_dir,
                                                              tmp_path, capsys, caplog):
    """A stem holding a tab or newline gave a file name holding them, and ``UTT.flac`` after
    ``utt.flac`` got ``UTT.txt``: on a case-insensitive file system (macOS, Windows) the same
    file as ``utt.txt``, whose transcript it overwrote. Now control characters become ``_``,
    names equal up to case are numbered, and the log says which input went where."""
    inputs = [tmp_path / "a" / "utt.flac", tmp_path / "b" / "UTT.flac",
              tmp_path / "c" / "ut\tt\n.flac"]
    for path, source in zip(inputs, ("utt0.flac", "utt1.flac", "utt2.flac")):
        path.parent.mkdir()
        shutil.copy(audio_dir / source, path)
    out = tmp_path / "out"
    code, _, _ = _run([*inputs, "--model", tiny.package_dir, "--output-dir", out], capsys)
    assert code == 0
    names = ["utt.txt", "UTT-2.txt", "ut_t_.txt"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(names)
    for name, text in zip(names, api_texts(model, inputs)):
        assert (out / name).read_text() == text + "\n"
    assert (f"{inputs[1]} is written to {out / 'UTT-2.txt'}: {out / 'utt.txt'} is {inputs[0]}'s"
            " (file names that differ only in letter case") in caplog.text
    shown = str(inputs[2]).replace("\t", "\\t").replace("\n", "\\n")
    assert (f"{shown} is written to {out / 'ut_t_.txt'}: its name holds control "
            "characters") in caplog.text
    # on stdout, SOURCE<TAB>TEXT: the source's tab and newline broke its line in three fields
    # over two lines
    code, stdout, _ = _run([inputs[0], inputs[2], "--model", tiny.package_dir], capsys)
    texts = api_texts(model, [inputs[0], inputs[2]])
    assert code == 0
    assert stdout.splitlines() == [f"{inputs[0]}\t{texts[0]}", f"{shown}\t{texts[1]}"]


def test_output_names_fit_a_file_name(tmp_path, caplog):
    """An input of a 252-byte stem and a 3-letter extension gave ``<stem>.txt``, 256 bytes:
    writing it failed (ENAMETOOLONG) after the decoding, exit 1, the later inputs left undone.
    Now a stem is cut short (at a character) to fit, numbered names included."""
    from asr.cli.transcribe import MAX_NAME_BYTES, _output_paths

    long = "é" * 126  # 252 bytes
    paths = _output_paths([f"a/{long}.wav", f"b/{long}.wav"], tmp_path, "text")
    assert [p.name for p in paths] == ["é" * 125 + ".txt", "é" * 124 + "-2.txt"]
    assert all(len(p.name.encode()) <= MAX_NAME_BYTES for p in paths)
    assert f"a/{long}.wav is written to {paths[0]}: its name is longer than a file name may " \
        "be (255 bytes)" in caplog.text
    for path in paths:
        path.write_text("x")  # the file system takes it


def test_output_names_windows_cannot_open_are_made_safe(tmp_path, caplog):
    """``CON.wav`` gave ``CON.txt`` and ``a?b.wav`` gave ``a?b.txt``: files a Windows user cannot
    open (a reserved device name, with any extension and in any case; a forbidden character).
    Now they are written as ``_CON.txt`` and ``a_b.txt``, as control characters are, and
    logged."""
    from asr.cli.transcribe import _output_paths

    sources = ["a/CON.wav", "b/nul.x.wav", "c/Com1.wav", "d/lpt9 .wav", 'e/a<b>c:d"e|f?g*h.wav',
               "f/aux:.wav", "g/console.wav", "h/com10.wav", "i/LPT0.wav", "j/xcon.wav"]
    names = [p.name for p in _output_paths(sources, tmp_path, "text")]
    assert names == ["_CON.txt", "_nul.x.txt", "_Com1.txt", "_lpt9 .txt", "a_b_c_d_e_f_g_h.txt",
                     "aux_.txt", "console.txt", "com10.txt", "_LPT0.txt", "xcon.txt"]
    assert f"a/CON.wav is written to {tmp_path / '_CON.txt'}: its name is a device name " \
        "Windows reserves (CON, PRN, AUX, NUL, COM0-9, LPT0-9)" in caplog.text
    assert f"f/aux:.wav is written to {tmp_path / 'aux_.txt'}: its name holds characters " \
        'Windows forbids in file names (<>:"|?*)' in caplog.text
    assert "console.wav" not in caplog.text  # its own name: nothing to say
    # one of the names an earlier input took, up to case, is numbered as ever
    assert [p.name for p in _output_paths(["a/con.wav", "b/_CON.wav"], tmp_path, "srt")] == [
        "_con.srt", "_CON-2.srt"]


def test_an_output_name_a_directory_has_is_not_used(tmp_path, caplog):
    """A directory ``utt.txt`` in --output-dir: the write of utt.wav's transcript failed after
    the decoding (IsADirectoryError, exit 1, the later inputs left undone). Now the name is
    numbered, and logged."""
    from asr.cli.transcribe import _output_paths

    (tmp_path / "utt.txt").mkdir()
    assert _output_paths(["a/utt.wav"], tmp_path, "text") == [tmp_path / "utt-2.txt"]
    assert f"a/utt.wav is written to {tmp_path / 'utt-2.txt'}: {tmp_path / 'utt.txt'} is a " \
        "directory" in caplog.text


def test_outputs_are_written_as_their_inputs_are_done(tiny, model, audio_dir, tmp_path, capsys,
                                                      monkeypatch):
    """Every input was read before any was decoded, and the outputs written after the last: a
    run stopped while reading its 3rd input (Ctrl-C, a crash) lost the work on the first two.
    Inputs go in groups (here one input each), each output written once its group is done."""
    from asr.runtime import offline

    load = offline.Transcriber.load

    def interrupted(self, item, sample_rate=None, index=0, progress=None):
        if index == 2:
            raise KeyboardInterrupt
        return load(self, item, sample_rate, index, progress)

    monkeypatch.setattr(offline.Transcriber, "load", interrupted)
    monkeypatch.setattr(offline, "GROUP_SECONDS", 0.1, raising=False)
    files = [audio_dir / f"utt{i}.flac" for i in range(3)]
    out = tmp_path / "out"
    code, _, _ = _run([*files, "--model", tiny.package_dir, "--output-dir", out], capsys)
    assert code == 130
    assert sorted(p.name for p in out.iterdir()) == ["utt0.txt", "utt1.txt"]
    monkeypatch.setattr(offline.Transcriber, "load", load)
    for name, text in zip(("utt0.txt", "utt1.txt"), api_texts(model, files[:2])):
        assert (out / name).read_text() == text + "\n"

def test_bad_inputs_fail_per_file(tiny, model, audio_dir, tmp_path):
    """Missing, empty, corrupt and non-audio files: errors naming them, exit 1, the rest done."""
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes((audio_dir / "utt0.flac").read_bytes()[:60])
    text_file = tmp_path / "notes.mp3"
    text_file.write_text("this is not audio\n" * 20)
    missing = tmp_path / "missing.ogg"
    good = [audio_dir / "utt0.wav", audio_dir / "utt2.ogg"]
    args = [good[0], empty, corrupt, missing, text_file, good[1]]
    proc = subprocess.run(
        [sys.executable, "-m", "asr.cli.main", "transcribe", *map(str, args), "--model",
         str(tiny.package_dir)], capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [f"{f}\t{t}" for f, t in zip(good, api_texts(model, good))]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    for bad, reason in ((empty, "empty"), (corrupt, "cannot decode"), (missing, "no such file"),
                        (text_file, "cannot decode")):
        assert any(str(bad) in line and reason in line for line in errors), (bad, proc.stderr)
    assert "4 of 6 inputs failed" in proc.stderr



def test_an_input_whose_decoding_fails_fails_alone(tmp_path, capsys, caplog, monkeypatch):
    """An error decoding one input (here its encoder raises) ended the run (exit 1, one line
    naming no input) with the rest of its batch and every later input unwritten: it fails as an
    unreadable input does, named with the reason (exit 1), its earlier output removed, and the
    others are written as the API transcribes them."""
    import asr
    from asr.features.fbank import compute_fbank
    from asr.model import ASRModel
    from asr.testing.packages import random_package

    package = random_package(tmp_path / "random", seed=2)
    rng = np.random.default_rng(0)
    files = []
    for name, seconds in (("a", 0.7), ("bad", 0.9), ("c", 0.5)):
        files.append(tmp_path / f"{name}.wav")
        soundfile.write(files[-1], 0.1 * rng.standard_normal(int(seconds * 16000)), 16000)
    model = asr.load_model(package)
    expected = [r.text for r in model.transcribe([str(files[0]), str(files[2])])]
    runtime = model.runtime
    bad_frames = compute_fbank(load_audio(files[1], 16000), 16000, runtime.fbank,
                               runtime.extractor).shape[0]
    encode = ASRModel.encode

    def encode_or_fail(self, feats, feat_lens):
        if bad_frames in feat_lens.tolist():  # the other inputs are shorter or longer
            raise RuntimeError("encoder blew up")
        return encode(self, feats, feat_lens)

    monkeypatch.setattr(ASRModel, "encode", encode_or_fail)
    out = tmp_path / "out"
    out.mkdir()
    (out / "bad.txt").write_text("an earlier run's\n")
    code, _, _ = _run([*files, "--model", package, "--output-dir", out], capsys)
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "c.txt"]
    assert [(out / n).read_text() for n in ("a.txt", "c.txt")] == [t + "\n" for t in expected]
    assert f"{files[1]}: decoding failed: RuntimeError: encoder blew up" in caplog.text
    assert "1 of 3 inputs failed" in caplog.text


@needs_ffmpeg
def test_a_truncated_file_is_an_error_not_the_transcript_of_its_first_part(tmp_path):
    """libsndfile stops at the cut (its flac decoder loses sync); ffmpeg, the fallback for
    formats libsndfile cannot read, would decode the first third without a word."""
    path = tmp_path / "cut.flac"
    soundfile.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 48000), 16000)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(AudioError, match=r"cut\.flac: truncated or corrupt audio: its header "
                                         r"declares 48000 samples, \d+ decode"):
        load_audio(path)


def test_stdin(tiny, model, audio_dir, capsys, monkeypatch):
    data = (audio_dir / "utt1.flac").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, out, _ = _run(["-", "--model", tiny.package_dir], capsys)
    assert code == 0 and out == f"{api_texts(model, [audio_dir / 'utt1.flac'])[0]}\n"


def test_long_input_is_windowed_and_merged(tiny, model, audio_dir, tmp_path, capsys):
    """Windows of 2.5 s and 1.8 s (the speech crosses a cut) give the text of one window."""
    speech = load_audio(audio_dir / "utt0.wav")
    silence = np.zeros(16000, np.float32)
    samples = np.concatenate([silence[:8000], speech, silence, silence, silence])  # ~4.7 s
    path = tmp_path / "long.wav"
    soundfile.write(path, samples, 16000)
    whole = api_texts(model, [path], window_seconds=100.0)[0]
    for window in ("100", "2.5", "1.8"):
        code, out, _ = _run([path, "--model", tiny.package_dir, "--window-seconds", window,
                             "--overlap-seconds", "1.0"], capsys)
        assert code == 0 and out == f"{whole}\n", window


def test_bad_model_package(tmp_path, audio_dir, capsys):
    code, _, err = _run([audio_dir / "utt0.wav", "--model", tmp_path / "nothing"], capsys)
    assert code == 2


def test_python_api_on_arrays(tiny, model):
    """An 8 kHz stereo array is the 16 kHz mono one; a file keeps its own rate."""
    from asr.results import FailedInput, TranscriptionResult

    mono = resample(load_audio(tiny.wavs[2]), 16000, 8000)
    stereo = np.stack([mono, mono], axis=1)
    results = model.transcribe([stereo, np.zeros(0, np.float32), str(tiny.wavs[0])],
                               sample_rate=8000, on_error="return")
    [wide, speech] = model.transcribe([resample(mono, 8000, 16000), load_audio(tiny.wavs[0])],
                                      sample_rate=16000)
    assert wide.text and speech.text, "the tiny model hears nothing: comparing proves little"
    assert isinstance(results[0], TranscriptionResult) and results[0].text == wide.text
    assert results[0].token_ids == wide.token_ids
    assert [w.text for w in results[0].words] == wide.text.split()
    assert len(results[0].timestamps) == len(results[0].tokens) == len(results[0].token_ids)
    assert isinstance(results[1], FailedInput) and "empty" in results[1].error
    assert results[2].text == speech.text  # files carry their own rate
    with pytest.raises(ValueError, match="empty"):
        model.transcribe(np.zeros(0, np.float32))


def test_hotwords_options(tiny, audio_dir, tmp_path, capsys, caplog):
    """--hotwords: a list of score 0 changes nothing; unknown characters are a clear error
    (exit 2, before any audio); the API takes the same phrases."""
    from asr import load_model

    wav = audio_dir / "utt0.wav"
    base = [wav, "--model", tiny.package_dir, "--searcher", "ctc_prefix_beam"]
    code, plain, _ = _run(base, capsys)
    assert code == 0
    words = plain.split()
    hotwords = tmp_path / "hotwords.txt"
    hotwords.write_text(f"{words[0]}\n{' '.join(words[-2:])} :0\n")
    assert _run([*base, "--hotwords", hotwords, "--hotwords-score", "0"], capsys)[:2] == (0, plain)
    code, _, _ = _run([*base, "--hotwords", f"{words[0]};{words[0]}\u03a9"], capsys)
    assert code == 2 and "does not know: '\u03a9'" in caplog.text
    model = load_model(tiny.package_dir, searcher="ctc_prefix_beam")
    result = model.transcribe(wav, hotwords=[words[0]])[0]
    assert result.text.split()[0] == words[0]
    caplog.clear()  # a searcher without biasing says so once (the early check built it twice)
    code, greedy, _ = _run([wav, "--model", tiny.package_dir, "--searcher", "ctc_greedy",
                            "--hotwords", words[0]], capsys)
    assert code == 0 and greedy and caplog.text.count("does not use hotwords") == 1


@pytest.mark.parametrize("streaming", [False, True])
def test_a_hotwords_file_is_read_once(streaming, tiny, audio_dir, tmp_path, capsys,
                                      monkeypatch):
    """--hotwords FILE was read twice, once to check its phrases and once to use them: a file
    changed in between (or a named pipe, read empty the second time) was not what was
    checked. Its phrases are read once, checked and used."""
    import asr.decoding.context_graph as context_graph

    hotwords = tmp_path / "hotwords.txt"
    hotwords.write_text("A\n")
    reads = []

    def counted(path, *args, **kwargs):
        reads.append(Path(path))
        return read_text(path, *args, **kwargs)

    read_text = context_graph.read_text
    monkeypatch.setattr(context_graph, "read_text", counted)
    options = ["--streaming"] if streaming else []
    code, _, _ = _run([audio_dir / "utt0.wav", "--model", tiny.package_dir, "--searcher",
                       "ctc_prefix_beam", *options, "--hotwords", hotwords], capsys)
    assert code == 0 and reads == [hotwords]


@pytest.mark.parametrize("streaming", [False, True])
def test_the_hotword_graph_is_built_once(streaming, tmp_path, capsys, caplog, monkeypatch):
    """--hotwords built the context graph twice, once to check the phrases and once to decode
    with them (seconds each for thousands of phrases). It is built once now, and a phrase the
    tokenizer cannot spell still exits 2 before any input is decoded or output written."""
    import asr.runtime.bundle as bundle
    from asr.testing.packages import random_package

    package = random_package(tmp_path / "model")
    wav = tmp_path / "a.wav"
    t = np.arange(16000) / 16000
    soundfile.write(wav, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    built = []

    def counted(*args, **kwargs):
        built.append(args)
        return context_graph_for(*args, **kwargs)

    context_graph_for = bundle.context_graph_for
    monkeypatch.setattr(bundle, "context_graph_for", counted)
    base = [wav, "--model", package, "--searcher", "ctc_prefix_beam",
            *(["--streaming"] if streaming else []), "--hotwords"]
    code, out, err = _run([*base, "ADEG;HIL MNOP"], capsys)
    assert code == 0 and out.strip(), err
    assert len(built) == 1
    out_dir = tmp_path / "out"
    code, _, _ = _run([*base, "AD\u03a9", "--output-dir", out_dir], capsys)
    assert code == 2 and "does not know" in caplog.text and not list(out_dir.glob("*.txt"))


def test_streaming_hotwords_options(tiny, audio_dir, tmp_path, capsys, caplog):
    """--streaming --hotwords: a biasing streaming searcher takes them (score 0 changes
    nothing, unknown characters exit 2); a greedy one ignores them with the offline path's
    one warning and goes on (it refused them, exit 2, where offline warned)."""
    wav = audio_dir / "utt0.wav"
    base = [wav, "--model", tiny.package_dir, "--streaming", "--searcher", "ctc_prefix_beam"]
    code, plain, _ = _run(base, capsys)
    assert code == 0 and plain
    words = plain.split()
    assert _run([*base, "--hotwords", words[0], "--hotwords-score", "0"], capsys)[:2] == (
        0, plain)
    code, _, _ = _run([*base, "--hotwords", f"{words[0]}\u03a9"], capsys)
    assert code == 2 and "does not know: '\u03a9'" in caplog.text
    greedy = [wav, "--model", tiny.package_dir, "--streaming", "--searcher", "ctc_greedy"]
    code, expected, _ = _run(greedy, capsys)
    assert code == 0 and expected
    caplog.clear()
    code, out, _ = _run([*greedy, "--hotwords", words[0]], capsys)
    assert (code, out) == (0, expected)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["searcher 'ctc_greedy' does not use hotwords; those given are ignored "
                        "(hotwords bias: ctc_prefix_beam, transducer_beam, tdt_beam)"]
    code, _, _ = _run([*greedy, "--hotwords", f"{words[0]}\u03a9"], capsys)
    assert code == 2 and "does not know: '\u03a9'" in caplog.text  # checked all the same


def test_streaming_chunking_options_reach_the_recognizer(tiny, audio_dir, capsys, monkeypatch):
    """--chunk-size/--left-chunks (WeNet's --chunk_size/--num_decoding_left_chunks) choose the
    streaming chunking; -1 keeps every earlier frame up to --max-left-seconds; the text is the
    Python API's."""
    import asr
    import asr.runtime.offline as offline

    made = []
    real = offline.StreamingRecognizer

    def spy(*args, **kwargs):
        recognizer = real(*args, **kwargs)
        made.append((recognizer.chunk_size, recognizer.left_chunks, recognizer.max_left_chunks))
        return recognizer

    monkeypatch.setattr(offline, "StreamingRecognizer", spy)
    files = [audio_dir / f"utt{i}.wav" for i in range(len(tiny.texts))]
    code, out, _ = _run([*files, "--model", tiny.package_dir, "--streaming", "--chunk-size", 2,
                         "--left-chunks", -1], capsys)
    assert code == 0 and made and set(made) == {(2, -1, 375)}  # 30 s of 0.08 s chunks
    model = asr.load_model(tiny.package_dir)
    expected = model.transcribe(files, streaming=True, chunk_size=2, left_chunks=-1)
    assert out.splitlines() == [f"{f}\t{r.text}" for f, r in zip(files, expected)]
    made.clear()
    code, out, _ = _run([*files, "--model", tiny.package_dir, "--streaming", "--chunk-size", 2,
                         "--left-chunks", -1, "--max-left-seconds", "0.5"], capsys)
    assert code == 0 and made and set(made) == {(2, -1, 6)}
    expected = model.transcribe(files, streaming=True, chunk_size=2, left_chunks=-1,
                                max_left_seconds=0.5)
    assert out.splitlines() == [f"{f}\t{r.text}" for f, r in zip(files, expected)]


@pytest.mark.parametrize("chunk_size, left_chunks", [(2, -1), (8, 1)])
def test_offline_chunk_mask_gives_the_streams_tokens_and_times(tiny, audio_dir, capsys,
                                                                 monkeypatch, chunk_size,
                                                                 left_chunks):
    """WeNet's ``decoding_chunk_size``: offline ``--chunk-size C --left-chunks L`` was refused
    (exit 2), so a stream at chunk C could not be checked against the offline decode at chunk
    C. Now the offline encoder runs under that chunk mask (the package streams chunks of 4
    with 8 left chunks, so neither case is its own), and a greedy search gives a stream's
    tokens and times at that chunking without endpoints."""
    from asr.model import ASRModel

    masks = []
    encode = ASRModel.encode

    def spy(self, feats, feat_lens, chunk_size=None, left_chunks=None):
        masks.append((chunk_size, left_chunks))
        return encode(self, feats, feat_lens, chunk_size, left_chunks)

    monkeypatch.setattr(ASRModel, "encode", spy)
    files = [audio_dir / f"utt{i}.wav" for i in range(len(tiny.texts))]
    chunking = ["--chunk-size", chunk_size, "--left-chunks", left_chunks]
    results = {}
    for mode in ([], ["--streaming", "--no-endpoint"]):
        code, out, _ = _run([*files, "--model", tiny.package_dir, "--searcher", "greedy",
                             "--format", "json", *chunking, *mode], capsys)
        assert code == 0
        results[bool(mode)] = [json.loads(line) for line in out.splitlines()]
    assert masks and set(masks) == {(chunk_size, left_chunks)}  # the offline encode's mask
    offline, streamed = results[False], results[True]
    assert len(offline) == len(files) and any(r["token_ids"] for r in offline)
    for off, stream in zip(offline, streamed):
        assert off["token_ids"] == stream["token_ids"]
        assert off["timestamps"] == pytest.approx(stream["timestamps"])


def test_offline_chunk_mask_refuses_an_encoder_without_one(tiny, audio_dir):
    """An encoder module that has no chunk mask cannot apply ``--chunk-size``: a clear error
    before any input is read, not a decode at full context that looks like one at chunk C."""
    import asr

    model = asr.load_model(tiny.package_dir)
    model.runtime.model.encoder = torch.nn.Identity()
    with pytest.raises(ValueError, match="encoder \\(Identity\\) has no chunk mask"):
        model.transcribe([audio_dir / "utt0.wav"], chunk_size=2)
    with pytest.raises(ValueError, match="left_chunks \\(--left-chunks\\) must be a whole"):
        asr.load_model(tiny.package_dir).transcribe([audio_dir / "utt0.wav"], left_chunks=1.5)


@pytest.mark.parametrize("options, message", [
    (["--chunk-size", "0"], "chunk_size (--chunk-size) must be > 0 encoder frames, got 0"),
    (["--chunk-size", "-3", "--left-chunks", "2"], "chunk_size (--chunk-size) must be > 0"),
    (["--streaming", "--chunk-size", "0"], "chunk_size (--chunk-size) must be > 0 encoder frames, "
                                           "got 0"),
    (["--max-left-seconds", "5"], "add --streaming"),
    (["--streaming", "--max-left-seconds", "0"], "--max-left-seconds) must be a positive"),
    (["--streaming", "--left-chunks", "-1", "--max-left-seconds", "nan"],
     "--max-left-seconds) must be a positive"),
    (["--streaming", "--chunk-size", "2", "--left-chunks", "-1", "--max-left-seconds", "0.05"],
     "--max-left-seconds) 0.05 is shorter than one chunk (0.08 s)"),
])
def test_bad_streaming_chunking_is_a_clear_error(tiny, audio_dir, capsys, caplog, options,
                                                 message):
    code, out, _ = _run([audio_dir / "utt0.wav", "--model", tiny.package_dir, *options], capsys)
    assert code == 2 and out == "" and message in caplog.text


def test_chunking_without_streaming_is_the_runtimes_error_before_the_model_loads(
        tiny, audio_dir, tmp_path, capsys, caplog):
    """The CLI wrote its own copy of the Python API's check, in other words; it now reports the
    runtime's one error, still before it reads the package (a missing one is not reached).
    Offline, only the bound of a stream's growing left context has no use."""
    import asr

    wav = audio_dir / "utt0.wav"
    for options, kwargs in ((["--max-left-seconds", "5"], {"max_left_seconds": 5.0}),):
        with pytest.raises(ValueError) as err:
            asr.load_model(tiny.package_dir).transcribe([wav], **kwargs)
        caplog.clear()
        code, out, _ = _run([wav, "--model", tmp_path / "no-package", *options], capsys)
        assert code == 2 and out == ""
        assert [r.getMessage() for r in caplog.records] == [f"asr transcribe: {err.value}"]


@pytest.mark.parametrize("window, overlap", [("1", "2"), ("nan", "0"), ("inf", "1"),
                                             ("20", "-1")])
def test_bad_windows_are_refused_before_the_model_loads(tmp_path, capsys, caplog, window,
                                                         overlap):
    """--window-seconds / --overlap-seconds were checked only once the model had loaded (a
    missing package was reported instead); the runtime's check now runs first."""
    code, out, _ = _run([tmp_path / "a.wav", "--model", tmp_path / "no-package",
                         "--window-seconds", window, "--overlap-seconds", overlap], capsys)
    assert code == 2 and out == ""
    assert [r.getMessage() for r in caplog.records] == [
        f"asr transcribe: --window-seconds, --overlap-seconds: need 0 <= overlap "
        f"({float(overlap)}) < window ({float(window)}) seconds, both finite"]


@pytest.mark.parametrize("options, named", [
    (["--window-seconds", "5"], "--window-seconds: the offline windows, which --streaming does "
                                "not use (it decodes each input as one stream): drop it"),
    (["--window-seconds", "5", "--overlap-seconds", "1"],
     "--window-seconds, --overlap-seconds: the offline windows, which --streaming does not use "
     "(it decodes each input as one stream): drop them"),
])
def test_offline_windows_with_streaming_are_refused(tmp_path, capsys, caplog, options, named):
    """--streaming ignored --window-seconds / --overlap-seconds without a word, while the
    chunking options without --streaming are refused: a user who set a window never learnt
    that it had no effect."""
    code, out, _ = _run([tmp_path / "a.wav", "--model", tmp_path / "no-package", "--streaming",
                         *options], capsys)
    assert code == 2 and out == ""
    assert [r.getMessage() for r in caplog.records] == [f"asr transcribe: {named}"]


def test_a_name_stdout_cannot_encode_is_escaped_not_a_crash(tiny, audio_dir, tmp_path,
                                                             monkeypatch, capsys):
    """With a strict latin-1 stdout (PYTHONIOENCODING=latin-1), a file name outside latin-1
    crashed the write after all the work; it is now written as an escape (valid JSON too)."""
    odd = tmp_path / "\u65e5\u672c.flac"
    shutil.copy(audio_dir / "utt0.flac", odd)
    for fmt in ("text", "json"):
        stdout = io.TextIOWrapper(io.BytesIO(), encoding="latin-1", errors="strict")
        monkeypatch.setattr(sys, "stdout", stdout)
        assert main(["transcribe", str(odd), str(audio_dir / "utt1.flac"), "--model",
                     str(tiny.package_dir), "--format", fmt]) == 0
        stdout.flush()
        out = stdout.buffer.getvalue().decode("latin-1")
        if fmt == "text":
            assert "\\u65e5\\u672c.flac\t" in out
        else:
            assert json.loads(out.splitlines()[0])["source"] == str(odd)


def test_a_file_named_with_an_equals_sign_after_set_is_still_a_file(tmp_path, capsys):
    """``--set`` takes the words after it, and the files among them were told from its
    overrides by having no '=': ``take=1.wav`` was taken for an override, and the run
    stopped with "only search options can be set here" (or "no audio files given")."""
    from asr.testing.packages import random_package

    package = random_package(tmp_path / "model")
    t = np.arange(16000) / 16000
    files = [tmp_path / "take.wav", tmp_path / "take=1.wav"]
    for path in files:
        soundfile.write(path, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    code, out, err = _run(["--model", package, "--set", "search.beam_size=2", *files], capsys)
    assert code == 0, err
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(f) for f in files]
    code, out, err = _run(["--model", package, "--set", "search.beam_size=2", files[1]], capsys)
    assert code == 0, err


def test_no_endpoint_streams_one_segment_with_the_offline_transcript(tmp_path, capsys, caplog):
    """``--streaming`` ended a segment at each endpoint (every 20 s at least) and searched the
    next afresh, so a beam search's transcript differed from offline, and nothing turned that
    off; ``--no-endpoint`` streams one segment, the offline transcript; offline it is refused."""
    from asr.testing.packages import random_package

    package = random_package(tmp_path / "pkg", head="transducer", chunk_size=2, left_chunks=3,
                             seed=1)
    path = tmp_path / "long.wav"
    soundfile.write(path, (0.1 * np.random.default_rng(5).standard_normal(22 * 16000)), 16000)
    results = {}
    for mode in ([], ["--streaming"], ["--streaming", "--no-endpoint"]):
        code, out, _ = _run([path, "--model", package, "--searcher", "transducer_beam",
                             "--format", "json", *mode], capsys)
        assert code == 0
        results[len(mode)] = json.loads(out)
    offline, split, whole = results[0], results[1], results[2]
    assert len(split["segments"]) >= 2 and len(whole["segments"]) == 1
    assert len(offline["token_ids"]) > 20 and whole["token_ids"] == offline["token_ids"]
    caplog.clear()
    code, out, _ = _run([path, "--model", package, "--no-endpoint"], capsys)
    assert code == 2 and out == ""
    assert "--no-endpoint" in caplog.text and "--streaming" in caplog.text


def test_a_second_searcher_after_searcher_is_refused_before_any_decoding(tmp_path, caplog,
                                                                          monkeypatch):
    """``asr transcribe --model PKG a.wav --searcher greedy beam`` (``asr decode --searcher``
    takes several) decoded a.wav, then said "beam: no such file" and "1 of 2 inputs failed".
    A missing input named as a searcher is refused before the model loads (exit 2), saying
    that --searcher takes one; a file of that name is still an input."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.wav").write_bytes(b"")
    command = ["transcribe", "--model", str(tmp_path / "none"), "a.wav", "--searcher", "greedy",
               "beam"]
    assert main(command) == 2
    assert ("asr transcribe: input beam is no file but a searcher's name: --searcher takes one "
            "searcher here (asr decode's takes several); give one, or ./beam for a file of that "
            "name") in caplog.text
    assert "cannot load model package" not in caplog.text
    caplog.clear()
    (tmp_path / "beam").write_bytes(b"")
    assert main(command) == 2 and "cannot load model package" in caplog.text


def test_streaming_attention_rescoring_gives_the_offline_transcript(tmp_path, capsys):
    """WeNet U2++'s habit: ``--streaming --searcher attention_rescoring`` was refused (the
    searcher did not stream); with ``--no-endpoint`` it now gives the tokens and times of the
    offline ``attention_rescoring`` under the same ``--chunk-size`` / ``--left-chunks``."""
    from asr.testing.packages import random_package

    package = random_package(tmp_path / "pkg", head="u2pp", chunk_size=2, left_chunks=3, seed=1)
    rng = np.random.default_rng(1)
    files = []
    for i, n in enumerate((9000, 13000)):
        files.append(tmp_path / f"utt{i}.wav")
        soundfile.write(files[-1], (rng.standard_normal(n) * 0.1).astype(np.float32), 16000)
    results = {}
    for mode in ([], ["--streaming", "--no-endpoint"]):
        code, out, err = _run([*files, "--model", package, "--searcher", "attention_rescoring",
                               "--format", "json", "--chunk-size", 4, "--left-chunks", 1,
                               "--batch-size", 1, *mode], capsys)
        assert code == 0, err
        results[bool(mode)] = [json.loads(line) for line in out.splitlines()]
    offline, streamed = results[False], results[True]
    assert len(offline) == len(files) and any(r["token_ids"] for r in offline)
    for off, stream in zip(offline, streamed):
        assert off["token_ids"] == stream["token_ids"]
        assert off["timestamps"] == pytest.approx(stream["timestamps"])
