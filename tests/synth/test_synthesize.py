"""The synthetic LibriSpeech corpus: layout, determinism, speaker/sentence split, lhotse, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import asr.synth.voices as voices_module
from asr.cli.main import main as asr_main
from asr.synth.sentences import build_pool, default_sources, shuffle_pool
from asr.synth.synthesize import PARTS, SynthesisResult, synthesize_corpus
from asr.synth.voices import VOICES, Voice, available_voices, render

REPO = Path(__file__).resolve().parents[2]
SIZES = {"train-clean-5": 15, "dev-clean-2": 3, "test-clean": 4}
_TRANSCRIPT = re.compile(r"^[A-Z']+( [A-Z']+){3,15}$")


def _read_transcripts(part_dir: Path) -> dict[str, str]:
    texts = {}
    for trans in sorted(part_dir.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt_id, text = line.split(" ", 1)
            texts[utt_id] = text
    return texts


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> SynthesisResult:
    root = tmp_path_factory.mktemp("corpus")
    return synthesize_corpus(root, SIZES, seed=0, num_jobs=1, progress=False)


def test_layout_and_transcripts(corpus: SynthesisResult) -> None:
    assert corpus.num_utts == SIZES and corpus.synthesized == sum(SIZES.values())
    for part, count in SIZES.items():
        part_dir = corpus.corpus_dir / part
        assert (part_dir / ".completed").is_file()
        flacs = sorted(part_dir.rglob("*.flac"))
        texts = _read_transcripts(part_dir)
        assert len(flacs) == count == len(texts)
        for flac in flacs:
            speaker, chapter = flac.parent.parent.name, flac.parent.name
            assert re.fullmatch(rf"{speaker}-{chapter}-\d{{4}}\.flac", flac.name)
            assert speaker.isdigit() and chapter.isdigit()
            assert flac.parent.relative_to(part_dir) == Path(speaker, chapter)
            assert (flac.parent / f"{speaker}-{chapter}.trans.txt").is_file()
            assert flac.stem in texts
            info = sf.info(flac)
            assert (info.samplerate, info.channels, info.format, info.subtype) == (
                16000, 1, "FLAC", "PCM_16",
            )  # fmt: skip
            assert 0.5 < info.duration < 20.0
        for text in texts.values():
            assert _TRANSCRIPT.match(text), text
    assert corpus.hours["train-clean-5"] > 0


def test_audio_has_silence_margins_and_no_clipping(corpus: SynthesisResult) -> None:
    for flac in sorted((corpus.corpus_dir / "test-clean").rglob("*.flac")):
        samples, rate = sf.read(flac, dtype="int16")
        peak = np.abs(samples.astype(np.int32)).max()
        assert 32768 * 10 ** (-6.5 / 20) < peak < 32768 * 10 ** (-0.9 / 20)
        edge = int(0.1 * rate)  # >= 0.1 s padding: edges are quieter than the middle
        middle = samples[len(samples) // 4 : 3 * len(samples) // 4].astype(float)
        for margin in (samples[:edge], samples[-edge:]):
            assert np.sqrt(np.mean(margin.astype(float) ** 2)) < np.sqrt(np.mean(middle**2))


def test_speakers_and_sentences_disjoint(corpus: SynthesisResult) -> None:
    held_out = {str(v.speaker_id) for v in VOICES if v.held_out}
    speakers, sentences = {}, {}
    for part in SIZES:
        part_dir = corpus.corpus_dir / part
        speakers[part] = {p.name for p in part_dir.iterdir() if p.is_dir()}
        sentences[part] = set(_read_transcripts(part_dir).values())
        assert len(sentences[part]) == SIZES[part]  # no sentence twice
    assert speakers["test-clean"] <= held_out
    assert not speakers["train-clean-5"] & held_out and not speakers["dev-clean-2"] & held_out
    assert len(speakers["train-clean-5"]) >= 8  # 15 utterances over all training voices
    assert not sentences["test-clean"] & (sentences["train-clean-5"] | sentences["dev-clean-2"])
    assert not sentences["dev-clean-2"] & sentences["train-clean-5"]
    # whole sentences: the LM text is exactly what the training part says
    lm_text = (corpus.corpus_dir / "train-text.txt").read_text(encoding="utf-8").splitlines()
    assert sorted(lm_text) == sorted(sentences["train-clean-5"])


def test_lhotse_download_step_skips_completed_parts(corpus: SynthesisResult) -> None:
    from lhotse.recipes import download_librispeech

    # Every part has a .completed marker, so this returns without touching the network.
    out = download_librispeech(corpus.corpus_dir.parent, dataset_parts=list(SIZES))
    assert Path(out) == corpus.corpus_dir


def test_lhotse_prepare_librispeech_reads_it(corpus: SynthesisResult) -> None:
    from lhotse.recipes import prepare_librispeech

    manifests = prepare_librispeech(corpus.corpus_dir, dataset_parts=list(SIZES), num_jobs=1)
    assert set(manifests) == set(SIZES)
    for part, count in SIZES.items():
        recordings, supervisions = manifests[part]["recordings"], manifests[part]["supervisions"]
        assert len(recordings) == count == len(supervisions)
        expected = _read_transcripts(corpus.corpus_dir / part)
        assert {s.id: s.text for s in supervisions} == expected
        for recording in recordings:
            assert recording.sampling_rate == 16000 and recording.num_channels == 1
        assert {s.speaker for s in supervisions} == {k.split("-")[0] for k in expected}


def test_speakers_txt_as_kaldi_data_prep_reads_it(corpus: SynthesisResult) -> None:
    # Kaldi's egs/librispeech/s5/local/data_prep.sh takes each reader's sex from
    # <corpus>/SPEAKERS.TXT with this grep and awk, and stops unless it is m or f.
    speakers_txt = corpus.corpus_dir / "SPEAKERS.TXT"
    voices = {str(v.speaker_id): v for v in VOICES}
    minutes: dict[str, float] = {}
    for part in SIZES:
        for reader_dir in sorted(p for p in (corpus.corpus_dir / part).iterdir() if p.is_dir()):
            sex = subprocess.run(
                ["bash", "-c", f"grep -E '^{reader_dir.name}[ ]+\\|' '{speakers_txt}' | "
                 "awk -F'|' '{gsub(/[ ]+/, \"\"); print tolower($2)}'"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            assert sex == voices[reader_dir.name].sex.lower() + "\n", (reader_dir, sex)
    for line in speakers_txt.read_text(encoding="utf-8").splitlines():
        if not line.startswith(";"):
            speaker, _, subset, mins, name = (f.strip() for f in line.split("|"))
            assert name == voices[speaker].label and set(subset.split(",")) <= set(SIZES)
            minutes[speaker] = float(mins)
    assert sum(minutes.values()) == pytest.approx(sum(corpus.hours.values()) * 60, abs=0.1)
    assert voices["9003"].sex == "F" and voices["1004"].sex == "F" and voices["1003"].sex == "M"


def test_real_librispeech_speakers_txt_is_kept(tmp_path: Path) -> None:
    real = ";ID  |SEX| SUBSET           |MINUTES| NAME\n14   | F | train-clean-360  | 25.03 | K\n"
    (tmp_path / "LibriSpeech").mkdir()
    (tmp_path / "LibriSpeech" / "SPEAKERS.TXT").write_text(real)
    synthesize_corpus(tmp_path, {"test-clean": 1}, progress=False)
    assert (tmp_path / "LibriSpeech" / "SPEAKERS.TXT").read_text() == real


def test_speakers_txt_minutes_come_from_synthesis_not_flac_headers(tmp_path: Path,
                                                                   monkeypatch) -> None:
    from asr.synth.corpus_state import write_speakers_file
    from asr.synth.synthesize import synthesize_biasing_set

    headers_read, real_info = [], sf.info
    monkeypatch.setattr(sf, "info", lambda f, *a, **k: headers_read.append(f) or real_info(f))
    sizes = {"train-clean-5": 6, "dev-clean-2": 2, "test-clean": 2}
    synthesize_corpus(tmp_path, sizes, top_words=300, max_words=8, progress=False)
    synthesize_biasing_set(tmp_path, 2, num_distractors=3, progress=False)
    # a later part: SPEAKERS.TXT again, from the records of the kept parts and the biasing set
    more = synthesize_corpus(tmp_path, {**sizes, "test-other": 2}, top_words=300, max_words=8,
                             progress=False)  # fmt: skip
    assert headers_read == []
    speakers_txt = more.corpus_dir / "SPEAKERS.TXT"
    written = speakers_txt.read_text(encoding="utf-8")
    assert "test-clean,test-other,dev-biasing,test-biasing |" in written
    # byte-identical to the file written from every FLAC header (as for a corpus whose manifest
    # has no sample counts: one made by an older version)
    manifest_path = more.corpus_dir / "synthesis.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for info in [*manifest["parts"].values(), *manifest.pop("biasing_parts").values()]:
        del info["speaker_samples"]
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    write_speakers_file(more.corpus_dir, VOICES)
    assert len(headers_read) == sum(1 for _ in more.corpus_dir.rglob("*.flac"))
    assert speakers_txt.read_text(encoding="utf-8") == written


def test_same_seed_same_bytes_any_num_jobs(corpus: SynthesisResult, tmp_path: Path) -> None:
    # test and dev parts take the first sentences of the pool whatever the training size.
    sizes = {"test-clean": SIZES["test-clean"], "dev-clean-2": SIZES["dev-clean-2"]}
    again = synthesize_corpus(tmp_path, sizes, seed=0, num_jobs=2, progress=False)
    for part in sizes:
        first = sorted((corpus.corpus_dir / part).rglob("*.flac"))
        second = sorted((again.corpus_dir / part).rglob("*.flac"))
        assert [f.relative_to(corpus.corpus_dir) for f in first] == [
            f.relative_to(again.corpus_dir) for f in second
        ]
        for a, b in zip(first, second):
            assert a.read_bytes() == b.read_bytes()


def test_other_seed_differs(corpus: SynthesisResult, tmp_path: Path) -> None:
    other = synthesize_corpus(tmp_path, {"test-clean": 3}, seed=1, progress=False)
    new_texts = _read_transcripts(other.corpus_dir / "test-clean")
    old_texts = _read_transcripts(corpus.corpus_dir / "test-clean")
    assert not set(new_texts.values()) <= set(old_texts.values())
    new_audio = {f.name: f.read_bytes() for f in (other.corpus_dir / "test-clean").rglob("*.flac")}
    compared = 0
    for flac in (corpus.corpus_dir / "test-clean").rglob("*.flac"):
        if flac.name in new_audio:  # same speaker, chapter and number: different audio
            assert flac.read_bytes() != new_audio[flac.name]
            compared += 1
    assert compared == 3


def test_rerun_skips_and_incremental_parts_stay_disjoint(tmp_path: Path) -> None:
    first = synthesize_corpus(tmp_path, {"test-clean": 2}, progress=False)
    assert first.synthesized == 2
    again = synthesize_corpus(tmp_path, {"test-clean": 2}, progress=False)
    assert again.synthesized == 0 and again.num_utts == {"test-clean": 2}
    more = synthesize_corpus(tmp_path, {"test-clean": 2, "dev-clean-2": 2}, progress=False)
    assert more.synthesized == 2 and more.num_utts == {"test-clean": 2, "dev-clean-2": 2}
    test_texts = set(_read_transcripts(more.corpus_dir / "test-clean").values())
    dev_texts = set(_read_transcripts(more.corpus_dir / "dev-clean-2").values())
    assert len(test_texts) == len(dev_texts) == 2 and not test_texts & dev_texts
    with pytest.raises(FileExistsError, match="different settings.*seed"):
        synthesize_corpus(tmp_path, {"test-clean": 2}, seed=5, progress=False)
    # a corpus made with other acoustic ranges (say, before training parts were speed-perturbed)
    # is not silently reused
    manifest_path = more.corpus_dir / "synthesis.json"
    saved = manifest_path.read_text()
    manifest = json.loads(saved)
    manifest["settings"]["acoustics"]["train-clean-5"]["speed"] = None
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(FileExistsError, match=r"different settings \(acoustics\)"):
        synthesize_corpus(tmp_path, {"test-clean": 2}, progress=False)
    manifest_path.write_text(saved)
    with pytest.raises(FileExistsError, match="3 requested"):
        synthesize_corpus(tmp_path, {"test-clean": 3}, progress=False)
    fresh = synthesize_corpus(tmp_path, {"test-clean": 1}, seed=5, overwrite=True, progress=False)
    assert fresh.num_utts == {"test-clean": 1}
    assert not (fresh.corpus_dir / "dev-clean-2").exists()


def test_training_sentences_spoken_in_several_voices(corpus: SynthesisResult, tmp_path) -> None:
    sizes = {"test-clean": 4, "dev-clean-2": 3, "train-clean-5": 8}
    result = synthesize_corpus(tmp_path, sizes, voices_per_sentence=3, progress=False)
    assert result.num_utts == sizes
    texts = {part: _read_transcripts(result.corpus_dir / part) for part in sizes}
    # test and dev parts are unchanged: one utterance per sentence, the same sentences as before
    for part in ("test-clean", "dev-clean-2"):
        assert texts[part] == _read_transcripts(corpus.corpus_dir / part)
    voices_of: dict[str, set[str]] = {}
    for utt, sentence in texts["train-clean-5"].items():
        voices_of.setdefault(sentence, set()).add(utt.split("-")[0])
    assert sorted(len(v) for v in voices_of.values()) == [2, 3, 3]  # 8 = 3 + 3 + 2, all distinct
    assert not set(voices_of) & (
        set(texts["test-clean"].values()) | set(texts["dev-clean-2"].values())
    )
    # different audio for the copies of a sentence (other voice, rate, pitch, noise)
    flacs = {f.stem: f.read_bytes() for f in (result.corpus_dir / "train-clean-5").rglob("*.flac")}
    assert len(set(flacs.values())) == 8
    with pytest.raises(FileExistsError, match="different settings.*train_voices_per_sentence"):
        synthesize_corpus(tmp_path, sizes, voices_per_sentence=2, progress=False)
    with pytest.raises(ValueError, match="voices_per_sentence=18: expected 1..17"):
        synthesize_corpus(tmp_path / "x", {"train-clean-5": 20}, voices_per_sentence=18,
                          progress=False)  # fmt: skip


def test_training_parts_can_say_segments(corpus: SynthesisResult, tmp_path) -> None:
    sizes = {"test-clean": 4, "dev-clean-2": 3, "train-clean-5": 10}
    result = synthesize_corpus(
        tmp_path, sizes, train_text="segments", held_out_sentences=50, progress=False
    )
    texts = {part: _read_transcripts(result.corpus_dir / part) for part in sizes}
    for part in ("test-clean", "dev-clean-2"):  # evaluation parts: the same whole sentences
        assert texts[part] == _read_transcripts(corpus.corpus_dir / part)
    pool = build_pool(default_sources(), top_words=1500)
    reserved = set(shuffle_pool(pool, 0)[:50])
    train = list(texts["train-clean-5"].values())
    assert len(set(train)) == 10 and set(train) <= set(pool.segments)
    assert not any(f" {h} " in f" {t} " for t in train for h in reserved)
    assert set(train) != set(_read_transcripts(corpus.corpus_dir / "train-clean-5").values())
    # the LM text: every training segment, a superset of what is spoken, none with a held-out one
    lm_text = (result.corpus_dir / "train-text.txt").read_text(encoding="utf-8").splitlines()
    assert len(lm_text) == len(set(lm_text)) > 10 * len(train) and set(train) <= set(lm_text)
    assert set(lm_text) <= set(pool.segments)
    evaluated = set(texts["test-clean"].values()) | set(texts["dev-clean-2"].values())
    assert not any(f" {h} " in f" {t} " for t in lm_text for h in reserved | evaluated)
    with pytest.raises(FileExistsError, match="different settings.*held_out_sentences"):
        synthesize_corpus(tmp_path, sizes, progress=False)
    with pytest.raises(ValueError, match="6 distinct sentences needed but the dev/test reserve "
                       r"of held_out_sentences=5 has 5 .*raise held_out_sentences "
                       r"\(--held-out-sentences; the pool has \d+ sentences\)"):
        synthesize_corpus(tmp_path / "y", {"test-clean": 6}, train_text="segments",
                          held_out_sentences=5, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="train_text='words'"):
        synthesize_corpus(tmp_path / "z", sizes, train_text="words", progress=False)


def test_at_least_eight_distinct_voices() -> None:
    voices = available_voices()
    assert len(voices) >= 8
    assert {v.engine for v in voices} == {"espeak-ng", "flite"}
    assert sum(v.held_out for v in voices) >= 3 and sum(not v.held_out for v in voices) >= 8
    assert len({v.speaker_id for v in voices}) == len(voices)
    audio = [render(v, "the cat sat on the mat.") for v in voices]
    for i in range(len(audio)):
        for j in range(i):
            same_length = len(audio[i]) == len(audio[j])
            assert not (same_length and np.allclose(audio[i], audio[j])), (voices[i], voices[j])


def _spectral_centroid(samples: np.ndarray) -> float:
    frames = samples[: len(samples) // 512 * 512].reshape(-1, 512) * np.hanning(512)
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).sum(axis=0)
    return float((power * np.fft.rfftfreq(512, 1 / 16000)).sum() / power.sum())


def test_mlsa_alpha_makes_a_new_clustergen_speaker() -> None:
    """The patched dump keeps the durations but moves the spectral envelope: a larger all-pass
    constant lowers it, a smaller one raises it, and the stock constant gives back stock audio."""
    text = "the old man walked slowly along the quiet road."
    stock = render(Voice(1, "flite", "slt", 1.0, 175.0), text)
    same = render(Voice(2, "flite", "slt", 1.0, 175.0, mlsa_alpha=0.42), text)
    low = render(Voice(3, "flite", "slt", 1.0, 175.0, mlsa_alpha=0.50), text)
    high = render(Voice(4, "flite", "slt", 1.0, 175.0, mlsa_alpha=0.36), text)
    assert len(stock) == len(same) == len(low) == len(high)
    np.testing.assert_allclose(same, stock, atol=2e-4)  # 0.42 is the stock constant
    assert not np.allclose(low, stock, atol=1e-2) and not np.allclose(high, stock, atol=1e-2)
    centroids = [_spectral_centroid(x) for x in (high, stock, low)]
    assert centroids[0] > 1.1 * centroids[1] and centroids[1] > 1.1 * centroids[2], centroids
    labels = {v.label for v in VOICES}
    assert len(labels) == len(VOICES) and "flite:slt@0.5" in labels


def test_mlsa_alpha_errors() -> None:
    with pytest.raises(ValueError, match="voice 7: mlsa_alpha needs a flite clustergen voice"):
        Voice(7, "flite", "kal16", 1.0, 100.0, mlsa_alpha=0.4)
    with pytest.raises(ValueError, match="needs a flite clustergen voice.*espeak-ng:en-us"):
        Voice(7, "espeak-ng", "en-us", 170.0, 50.0, mlsa_alpha=0.4)
    with pytest.raises(ValueError, match=r"mlsa_alpha must be in \(0, 1\), got 1.2"):
        Voice(7, "flite", "awb", 1.0, 100.0, mlsa_alpha=1.2)
    with pytest.raises(ValueError, match="no MLSA filter parameters"):
        voices_module._find_mlsa_alpha(bytes(range(256)) * 8)


def test_unknown_voice_name_is_not_available() -> None:
    assert not available_voices([Voice(1, "flite", "no_such_voice", 1.0, 100.0)])
    assert not available_voices([Voice(2, "espeak-ng", "en-us+no_such_variant", 170.0, 50.0)])


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown part 'train-clean-7'.*train-clean-5"):
        synthesize_corpus(tmp_path, {"train-clean-7": 3}, progress=False)
    with pytest.raises(ValueError, match=r"num_utts\['test-clean'\] must be a positive int"):
        synthesize_corpus(tmp_path, {"test-clean": 0}, progress=False)
    with pytest.raises(ValueError, match="num_utts is empty"):
        synthesize_corpus(tmp_path, {}, progress=False)
    with pytest.raises(ValueError, match="no TTS voices available"):
        synthesize_corpus(tmp_path, {"test-clean": 1}, voices=[], progress=False)
    train_only = [v for v in VOICES if not v.held_out]
    with pytest.raises(ValueError, match="'test-clean' needs held-out voices"):
        synthesize_corpus(tmp_path, {"test-clean": 1}, voices=train_only, progress=False)
    with pytest.raises(ValueError, match="distinct sentences needed but the pool has"):
        synthesize_corpus(tmp_path, {"test-clean": 50}, top_words=20, progress=False)
    assert not (tmp_path / "LibriSpeech" / "test-clean").exists()


def test_asr_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                 caplog: pytest.LogCaptureFixture) -> None:
    code = asr_main(
        ["synthesize", "--root", str(tmp_path), "--num-utts", "test-clean=2", "--seed", "3",
         "--num-jobs", "1", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    assert "test-clean\t2 utterances" in capsys.readouterr().out
    assert len(list((tmp_path / "LibriSpeech" / "test-clean").rglob("*.flac"))) == 2
    assert asr_main(["synthesize", "--root", str(tmp_path), "--num-utts", "test-cleen=2"]) == 2
    assert asr_main(["synthesize", "--root", str(tmp_path), "--num-utts", "test-clean"]) == 2
    # the biasing set takes the corpus's own sentence sources: another --text is refused
    assert asr_main(["synthesize", "--root", str(tmp_path), "--biasing", "2", "--text",
                     str(tmp_path / "other.txt")]) == 2  # fmt: skip
    assert "--text is an option of the corpus synthesis" in caplog.text


_BASES = ("NICE GUYS FINISH LAST", "ABSENCE MAKES HEARTS GROW FONDER", "I DON'T KNOW WHY",
          "WE DON'T HAVE TO", "TIME FLIES LIKE ARROWS", "MONEY TALKS LOUDLY TODAY")  # fmt: skip
_CONTAINERS = tuple(f"THEY ALWAYS SAY {b} AGAIN" for b in _BASES)
_OTHERS = ("GREEN APPLES TASTE SOUR", "OLD FRIENDS ARE BEST", "RAIN FALLS ON EVERYONE",
           "BIRDS SING IN SPRING", "COFFEE KEEPS ME AWAKE", "BOOKS OPEN NEW WORLDS")  # fmt: skip


def test_whole_sentence_training_never_says_a_dev_or_test_sentence(tmp_path: Path) -> None:
    # a pool where six sentences are inside six others ("... SAY NICE GUYS FINISH LAST AGAIN")
    source = tmp_path / "quips.txt"
    source.write_text("".join(f"{s.capitalize()}.\n%\n" for s in _BASES + _CONTAINERS + _OTHERS))
    options = {"top_words": None, "sources": [source], "progress": False}
    sizes = {"test-clean": 4, "dev-clean-2": 2, "train-clean-5": 12}  # the whole pool of 18
    result = synthesize_corpus(tmp_path / "a", sizes, **options)
    texts = {part: set(_read_transcripts(result.corpus_dir / part).values()) for part in sizes}
    assert set().union(*texts.values()) == set(_BASES + _CONTAINERS + _OTHERS)
    evaluated = texts["test-clean"] | texts["dev-clean-2"]
    lm_text = (result.corpus_dir / "train-text.txt").read_text(encoding="utf-8").splitlines()
    assert set(lm_text) == texts["train-clean-5"]
    assert not [(e, t) for e in evaluated for t in lm_text if f" {e} " in f" {t} "]
    # training first, then a test part that would have to take a sentence inside a training one
    synthesize_corpus(tmp_path / "b", {"train-clean-5": 13}, **options)
    with pytest.raises(ValueError, match=r"part 'test-clean' needs sentences 13\.\.13 .* only "
                       "the first 12 occur inside no other pool sentence"):
        synthesize_corpus(tmp_path / "b", {"train-clean-5": 13, "test-clean": 1}, **options)
    assert synthesize_corpus(tmp_path / "b", {"train-clean-5": 13}, **options).synthesized == 0
    # a corpus sliced from the plain shuffled order (an older version's) is not extended
    manifest_path = tmp_path / "b" / "LibriSpeech" / "synthesis.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    del manifest["settings"]["sentence_order"]
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(FileExistsError, match=r"different settings \(sentence_order\)"):
        synthesize_corpus(tmp_path / "b", {"train-clean-5": 13, "dev-clean-2": 1}, **options)


def test_cli_help_lists_every_part() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "asr.cli.main", "synthesize", "--help"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "--num-utts" in out and all(part in out for part in PARTS)


@pytest.mark.slow
def test_mini_tts_preset_full_size(tmp_path: Path) -> None:
    from lhotse.recipes import prepare_librispeech

    from asr.synth.synthesize import PRESETS

    preset = PRESETS["mini_tts"]
    sizes = preset.num_utts
    result = synthesize_corpus(
        tmp_path, sizes, seed=0, num_jobs=2, top_words=preset.top_words,
        train_text=preset.train_text, progress=False,
    )  # fmt: skip
    assert result.num_utts == sizes
    manifests = prepare_librispeech(result.corpus_dir, dataset_parts=list(sizes), num_jobs=2)
    texts = {part: {s.text for s in manifests[part]["supervisions"]} for part in sizes}
    for part, count in sizes.items():
        assert len(manifests[part]["recordings"]) == count == len(texts[part])
    assert not texts["test-clean"] & (texts["train-clean-5"] | texts["dev-clean-2"])


def test_failed_run_leaves_no_half_made_part(tmp_path: Path, monkeypatch) -> None:
    import asr.synth.synthesize as synth_module

    real, calls = synth_module.synthesize_utterance, []

    def fail_second(plan):  # a TTS failure (or a kill) in the middle of a part
        calls.append(plan)
        if len(calls) == 2:
            raise RuntimeError("engine crashed")
        return real(plan)

    monkeypatch.setattr(synth_module, "synthesize_utterance", fail_second)
    with pytest.raises(RuntimeError, match="engine crashed"):
        synthesize_corpus(tmp_path, {"test-clean": 3}, progress=False)
    corpus_dir = tmp_path / "LibriSpeech"
    assert not (corpus_dir / "test-clean").exists()  # nothing under the part's name
    assert not [p for p in corpus_dir.iterdir() if p.name.startswith(".test-clean")]
    monkeypatch.setattr(synth_module, "synthesize_utterance", real)
    again = synthesize_corpus(tmp_path, {"test-clean": 3}, progress=False)  # not refused
    assert again.synthesized == 3 and len(list((corpus_dir / "test-clean").rglob("*.flac"))) == 3


def test_failed_overwrite_keeps_the_previous_corpus(tmp_path: Path) -> None:
    first = synthesize_corpus(tmp_path, {"test-clean": 1}, progress=False)
    flacs = sorted((first.corpus_dir / "test-clean").rglob("*.flac"))
    with pytest.raises(ValueError, match="distinct sentences needed"):
        synthesize_corpus(tmp_path, {"test-clean": 50}, top_words=20, overwrite=True,
                          progress=False)  # fmt: skip
    assert sorted((first.corpus_dir / "test-clean").rglob("*.flac")) == flacs
    assert (first.corpus_dir / "synthesis.json").is_file()
    assert synthesize_corpus(tmp_path, {"test-clean": 1}, progress=False).synthesized == 0


def test_overwrite_removes_the_biasing_set_of_the_replaced_corpus(tmp_path: Path) -> None:
    first = synthesize_corpus(tmp_path, {"test-clean": 1}, progress=False)
    for name in ("dev-biasing", "test-biasing", "biasing"):  # as synthesize_biasing_set leaves
        (first.corpus_dir / name).mkdir()
        (first.corpus_dir / name / ".completed").touch()
    synthesize_corpus(tmp_path, {"test-clean": 1}, seed=4, overwrite=True, progress=False)
    assert not [p for p in first.corpus_dir.iterdir() if "biasing" in p.name]


def test_one_run_at_a_time(tmp_path: Path) -> None:
    from asr.fileio import OutputBusyError, output_lock

    with output_lock(tmp_path / "LibriSpeech"):
        with pytest.raises(OutputBusyError, match="LibriSpeech"):
            synthesize_corpus(tmp_path, {"test-clean": 1}, progress=False)
    assert not (tmp_path / "LibriSpeech" / "test-clean").exists()


def test_bad_run_options_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"seed must be a non-negative int \(--seed\), got -1"):
        synthesize_corpus(tmp_path, {"test-clean": 1}, seed=-1, progress=False)
    with pytest.raises(ValueError, match=r"num_jobs must be a positive int.*got 0"):
        synthesize_corpus(tmp_path, {"test-clean": 1}, num_jobs=0, progress=False)
    with pytest.raises(ValueError, match="voices_per_sentence=0: expected 1..17"):
        synthesize_corpus(tmp_path, {"test-clean": 1}, voices_per_sentence=0, progress=False)
    with pytest.raises(ValueError, match=r"held_out_sentences must be an int >= 0.*got -5"):
        synthesize_corpus(tmp_path, {"train-clean-5": 1}, train_text="segments",
                          held_out_sentences=-5, progress=False)  # fmt: skip
    assert not (tmp_path / "LibriSpeech").exists()
    for argv in (["--num-utts", "test-clean=1", "test-clean=2"], ["--biasing", "-2"],
                 ["--num-utts", "test-clean=1", "--num-jobs", "-1"]):  # fmt: skip
        assert asr_main(["synthesize", "--root", str(tmp_path), "--no-progress", *argv]) == 2
    assert not (tmp_path / "LibriSpeech").exists()
