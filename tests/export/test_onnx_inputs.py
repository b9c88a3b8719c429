"""Bad inputs of ``asr export-onnx`` and ``asr decode-onnx``: exit status 2 and a message naming
the option, file or field (a random-weight package; no decoding needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asr.cli.main import main
from asr.fingerprint import sha256_of_file
from asr.testing.packages import random_package

#: A directory no one may create files in, root included (sysfs refuses new entries).
UNWRITABLE = Path("/sys/asr-onnx-test")

needs_sysfs = pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")


@pytest.fixture
def exports(random_exports) -> dict[str, Path]:
    """The session's random transducer package and its offline transducer and CTC exports
    (tests/export/conftest.py); read only."""
    return {"package": random_exports["offline"][0], "transducer": random_exports["offline"][1],
            "ctc": random_exports["ctc"][1]}


def test_a_package_whose_weights_do_not_fit_its_config_is_a_bad_input(tmp_path, caplog):
    """A corrupt package (its config.yaml edited, its sha256 made to match) exited 1, as an
    export that failed, with PackageError's traceback-less line: it is a bad input (exit 2),
    as a package that fails to load is."""
    package = random_package(tmp_path / "rnnt", head="transducer", seed=3)
    config = package / "config.yaml"
    text = config.read_text()
    config.write_text(text.replace("num_layers: 2", "num_layers: 3", 1))
    assert config.read_text() != text
    metadata = json.loads((package / "metadata.json").read_text())
    metadata["sha256"]["config.yaml"] = sha256_of_file(config)
    (package / "metadata.json").write_text(json.dumps(metadata))
    out = tmp_path / "onnx"
    assert main(["export-onnx", "--model", str(package), "--output-dir", str(out)]) == 2
    assert f"asr export-onnx: {package / 'model.safetensors'}: weights do not fit" in caplog.text
    assert not out.exists()


@needs_sysfs
def test_an_unwritable_output_dir_is_a_bad_option(exports, caplog):
    """It exited 1 with 'PermissionError: ... /sys/.asr-onnx-test.lock' (the lock's name)."""
    out = UNWRITABLE / "onnx"
    assert main(["export-onnx", "--model", str(exports["package"]), "--output-dir",
                 str(out)]) == 2
    assert f"{out}: cannot write there: Operation not permitted ({UNWRITABLE})" in caplog.text
    caplog.clear()
    assert main(["decode-onnx", "--onnx-dir", str(exports["transducer"]), "--manifest-dir",
                 str(exports["package"]), "--output-dir", str(out)]) == 2
    summary = out / "wer-summary-test-clean-sherpa-onnx-transducer.txt"
    assert f"{summary}: cannot write there: Operation not permitted ({UNWRITABLE})" in caplog.text


def test_decode_onnx_options_a_ctc_export_has_not(exports, caplog, tmp_path):
    """modified_beam_search on a CTC export exited 1 with a TypeError from sherpa-onnx's loader
    ('unexpected keyword argument max_active_paths'); --blank-penalty was dropped silently."""
    common = ["decode-onnx", "--onnx-dir", str(exports["ctc"]), "--manifest-dir", str(tmp_path),
              "--output-dir", str(tmp_path / "out")]
    for options, message in (
            (["--decoding-method", "modified_beam_search"],
             "decoding_method 'modified_beam_search' (--decoding-method)"),
            (["--blank-penalty", "1.5"], "blank_penalty 1.5 (--blank-penalty)")):
        caplog.clear()
        assert main([*common, *options]) == 2
        assert message in caplog.text and f"{exports['ctc']} is a CTC export" in caplog.text
    assert not (tmp_path / "out").exists()


def test_decode_onnx_refuses_options_its_search_would_not_use(exports, caplog, tmp_path):
    """--max-active-paths with greedy search and --hotwords-score without --hotwords-file were
    dropped without a word (the run decoded as if they were not given); each is now an error
    naming it, before anything is written."""
    common = ["decode-onnx", "--onnx-dir", str(exports["transducer"]), "--manifest-dir",
              str(tmp_path), "--output-dir", str(tmp_path / "out")]
    for options, message in (
            (["--max-active-paths", "8"],
             "max_active_paths 8 (--max-active-paths): the beam of modified_beam_search; "
             "greedy_search has none"),
            (["--decoding-method", "modified_beam_search", "--hotwords-score", "2"],
             "hotwords_score 2.0 (--hotwords-score): the boost of the phrases of a hotwords "
             "file; give one (--hotwords-file) or drop it")):
        caplog.clear()
        assert main([*common, *options]) == 2
        assert message in caplog.text
    assert not (tmp_path / "out").exists()


def test_decode_onnx_names_a_broken_export(exports, caplog, tmp_path):
    """A corrupt export.json gave only json's message ('Expecting value: line 1 ...'), one
    without a field the bare key ("'layout'"), a truncated graph exit 1 with onnxruntime's
    RuntimeError, a tokens.txt that is not the graphs' a crash in the middle of decoding."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in exports["transducer"].iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    report = json.loads((broken / "export.json").read_text())
    features = {k: v for k, v in report["features"].items() if k != "num_mel_bins"}
    cases = (
        ("export.json", "{", f"{broken / 'export.json'}: corrupt JSON"),
        ("export.json", "[]", f"{broken / 'export.json'}: expected a JSON object, got list"),
        ("export.json", "{}", f"{broken / 'export.json'}: layout None is none of"),
        ("export.json", json.dumps({**report, "features": features}),
         f"{broken / 'export.json'}: no field features.num_mel_bins"),
        ("encoder.onnx", "not a graph", f"{broken}: sherpa-onnx cannot load its graphs"),
        # another model's tokens.txt: sherpa-onnx loaded it and failed mid-decode with only
        # "IndexError: _Map_base::at" (exit 1, a traceback)
        ("tokens.txt", "<blk> 0\n<sos/eos> 1\n<unk> 2\n",
         f"{broken / 'tokens.txt'}: 3 pieces, the graphs have 20 tokens"),
        ("tokens.txt", "<blk> 0\n<sos/eos>\n", f"{broken / 'tokens.txt'}:2: expected 'piece 1'"),
        ("export.json", json.dumps({**report, "metadata": {}}),
         f"{broken / 'export.json'}: no field metadata.decoder.onnx.vocab_size"),
    )
    for name, text, message in cases:
        original = (broken / name).read_bytes()
        (broken / name).write_text(text)
        caplog.clear()
        assert main(["decode-onnx", "--onnx-dir", str(broken), "--manifest-dir",
                     str(tmp_path), "--output-dir", str(tmp_path / "out")]) == 2, name
        assert message in caplog.text, caplog.text
        (broken / name).write_bytes(original)


def test_decode_onnx_refuses_cuts_asr_decode_refuses(exports, caplog, tmp_path):
    """A stereo cut's audio loads as (2, N) and was flattened: sherpa-onnx decoded its two
    channels one after the other, a wrong transcript scored without a word of warning; a cut
    without a supervision was scored against an empty reference, its words counted as
    insertions. ``asr decode`` refuses both; decode-onnx now does too, naming the cut, before
    writing anything."""
    import numpy as np
    import soundfile as sf
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
    from lhotse.cut import MultiCut

    from asr.testing.tiny import random_speech_like

    mono = random_speech_like(8000, seed=1).astype(np.float32)
    cuts = []
    for name, wave in (("mono", mono), ("stereo", np.stack([mono, 0.5 * mono], axis=1))):
        sf.write(tmp_path / f"{name}.wav", wave, 16000)
        recording = Recording.from_file(tmp_path / f"{name}.wav", recording_id=name)
        channels = recording.channel_ids
        supervision = SupervisionSegment(id=name, recording_id=name, start=0.0,
                                         duration=recording.duration, text="GREEN DOOR",
                                         channel=channels if len(channels) > 1 else 0)
        kind = MultiCut if len(channels) > 1 else MonoCut
        cuts.append(kind(id=name, start=0.0, duration=recording.duration,
                         channel=channels if len(channels) > 1 else 0, recording=recording,
                         supervisions=[supervision]))
    cuts.append(cuts[0].with_id("silent").drop_supervisions())
    for part, members, message in (
            ("stereo", cuts[:2], "1 cuts hold several audio channels, e.g. cut 'stereo' with 2"),
            ("unsupervised", [cuts[0], cuts[2]],
             "1 cuts of unsupervised have no supervision (nothing to transcribe), e.g. cut "
             "'silent'")):
        CutSet.from_cuts(members).to_file(tmp_path / f"librispeech_cuts_{part}.jsonl.gz")
        caplog.clear()
        assert main(["decode-onnx", "--onnx-dir", str(exports["transducer"]), "--manifest-dir",
                     str(tmp_path), "--parts", part, "--output-dir",
                     str(tmp_path / "out")]) == 2, part
        assert message in caplog.text, caplog.text
        assert not list((tmp_path / "out").glob("recogs-*"))


def test_decode_onnx_refuses_an_empty_test_set(exports, caplog, tmp_path):
    """A test manifest without cuts was decoded into ``%WER 0.00 [ 0 / 0 ...]`` result files,
    a rate of nothing read as a perfect score (``asr decode`` refused it, decode-onnx did not):
    exit 2 naming the part and its file, and no result file."""
    import gzip

    test_set = tmp_path / "librispeech_cuts_void.jsonl.gz"
    gzip.open(test_set, "wb").close()
    out = tmp_path / "out"
    assert main(["decode-onnx", "--onnx-dir", str(exports["transducer"]), "--manifest-dir",
                 str(tmp_path), "--parts", "void", "--output-dir", str(out)]) == 2
    assert f"test set void ({test_set}) holds no cuts: nothing to score" in caplog.text
    assert not list(out.glob("*.txt"))


def test_decode_onnx_names_a_cut_whose_audio_file_is_missing(exports, caplog, tmp_path):
    """A test set whose cut's audio file is gone was found only when its batch loaded, after
    every part before it was decoded and written; lhotse's error named neither the cut nor
    ``asr decode-onnx``. Now every part is checked first: exit 2 naming the cut and the file,
    nothing decoded or written."""
    import numpy as np
    import soundfile as sf
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    from asr.testing.tiny import random_speech_like

    def cut(name: str) -> MonoCut:
        sf.write(tmp_path / f"{name}.wav", random_speech_like(8000, seed=1).astype(np.float32),
                 16000)
        recording = Recording.from_file(tmp_path / f"{name}.wav", recording_id=name)
        supervision = SupervisionSegment(id=name, recording_id=name, start=0.0,
                                         duration=recording.duration, text="GREEN DOOR")
        return MonoCut(id=name, start=0.0, duration=recording.duration, channel=0,
                       recording=recording, supervisions=[supervision])

    CutSet.from_cuts([cut("here")]).to_file(tmp_path / "librispeech_cuts_present.jsonl.gz")
    CutSet.from_cuts([cut("kept"), cut("gone")]).to_file(
        tmp_path / "librispeech_cuts_lost.jsonl.gz")
    (tmp_path / "gone.wav").unlink()
    out = tmp_path / "out"
    assert main(["decode-onnx", "--onnx-dir", str(exports["transducer"]), "--manifest-dir",
                 str(tmp_path), "--parts", "present", "lost", "--output-dir", str(out)]) == 2
    assert (f"asr decode-onnx: 1 cuts of test set lost have a missing file; the first: cannot "
            f"read the recording of cut 'gone' (audio {tmp_path / 'gone.wav'}): "
            f"{tmp_path / 'gone.wav'} does not exist") in caplog.text
    assert not list(out.glob("*.txt"))  # the present part was not decoded either
    # a file that is there but no audio: exit 1 with lhotse's AudioLoadingError; now named
    (tmp_path / "here.wav").write_bytes(b"not audio")
    caplog.clear()
    assert main(["decode-onnx", "--onnx-dir", str(exports["transducer"]), "--manifest-dir",
                 str(tmp_path), "--parts", "present", "--output-dir", str(out)]) == 2
    assert (f"asr decode-onnx: cannot read the recording of cut 'here' (audio "
            f"{tmp_path / 'here.wav'}): AudioLoadingError") in caplog.text, caplog.text


def test_decode_onnx_checks_the_hotwords_as_asr_decode_does(tmp_path, caplog):
    """sherpa-onnx stopped at a bad ``:SCORE`` with a bare 'stof', and of a lower-case phrase
    for an upper-case model kept the pieces it found, boosting another phrase than the one
    written, without a word; ``asr decode`` refuses both. decode-onnx now does too, naming the
    file and the phrase, and still loads a good list."""
    from asr.export import export_onnx
    from asr.export.sherpa_decode import load_recognizer
    from asr.package import export_package
    from asr.testing.packages import random_experiment

    export_package(random_experiment(tmp_path, head="transducer", bpe_vocab_size=30),
                   tmp_path / "package")
    out = tmp_path / "onnx"
    export_onnx(tmp_path / "package", out)
    hotwords = tmp_path / "hotwords.txt"
    search = {"decoding_method": "modified_beam_search", "hotwords_file": hotwords}
    for text, message in (("GREEN DOOR :2x\n", "bad score ':2x'"),
                          # asr decode refuses it; sherpa-onnx was given it
                          ("GREEN DOOR :1000\n", "score 1000: a per-token boost must be in"),
                          ("SEVEN APPLES\ngreen door\n", "hotword 'green door' has characters "
                           "no piece of the model has: 'degnor'")):
        hotwords.write_text(text)
        with pytest.raises(ValueError, match="hotwords file") as err:
            load_recognizer(out, **search)
        assert message in str(err.value) and str(hotwords) in str(err.value)
    caplog.clear()
    assert main(["decode-onnx", "--onnx-dir", str(out), "--manifest-dir", str(tmp_path),
                 "--decoding-method", "modified_beam_search", "--hotwords-file",
                 str(hotwords)]) == 2
    assert "hotword 'green door'" in caplog.text
    hotwords.write_text("GREEN DOOR :2\nSEVEN APPLES\n")
    assert load_recognizer(out, **search).layout == "transducer"
