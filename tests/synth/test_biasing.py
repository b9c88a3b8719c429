"""The biasing set's choice of sentences, phrases and distractors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from asr.synth.biasing import choose_biasing_sentences
from asr.synth.parts import BIASING_PARTS
from asr.synth.synthesize import synthesize_corpus

TRAIN = {"THE", "CAT", "SAT", "ON", "A", "MAT", "DOG", "RAN"}
SENTENCES = [
    "THE CAT SAT ON A MAT",                   # no rare word: not a candidate
    "THE ZEPPELIN SAT ON A MAT",              # one rare word
    "THE CAT SAT ON A GOLDEN CARPET",         # a rare run of two words
    "THE DOG RAN ON A WOODEN MAT SAT BRIDGE",  # two rare runs: not a candidate
    "THE CAT SAT ON A SOFA",                  # rare word too short (< 6 letters)
    "A DOG RAN ON A PLATFORM",
    "THE DOG SAT ON A CUSHION",
    "THE CAT RAN ON A HILLSIDE",
    "A CAT SAT ON A MONUMENT",
]


def test_sentences_carry_exactly_one_rare_phrase_and_distractors_occur_nowhere():
    chosen = choose_biasing_sentences(SENTENCES, TRAIN, num_per_part=2, num_distractors=2, seed=1)
    assert list(chosen.sentences) == list(BIASING_PARTS)
    pairs = [pair for part in BIASING_PARTS for pair in chosen.sentences[part]]
    assert len(pairs) == 4 and len({p for _, p in pairs}) == 4
    for sentence, phrase in pairs:
        rare = [w for w in sentence.split() if w not in TRAIN]
        assert " ".join(rare) == phrase and phrase in sentence
        assert all(len(w) >= 6 for w in rare)
    words = {w for sentence, _ in pairs for w in sentence.split()}
    assert len(chosen.distractors) == 2
    assert not any(set(d.split()) & words for d in chosen.distractors)
    with pytest.raises(ValueError, match="only"):
        choose_biasing_sentences(SENTENCES, TRAIN, num_per_part=4, num_distractors=2)


def test_the_corpus_synthesis_refuses_biasing_parts(tmp_path):
    with pytest.raises(ValueError, match="--biasing"):
        synthesize_corpus(tmp_path, {"test-biasing": 5})


def test_a_failed_rerun_keeps_the_earlier_set(tmp_path, monkeypatch):
    import asr.synth.synthesize as synth_module

    synthesize_corpus(tmp_path, {"train-clean-5": 20}, top_words=300, max_words=8,
                      progress=False)  # fmt: skip
    first = synth_module.synthesize_biasing_set(tmp_path, 2, num_distractors=3, progress=False)
    part_dir = first.corpus_dir / "test-biasing"
    before = sorted(p.relative_to(part_dir) for p in part_dir.rglob("*"))
    assert (part_dir / ".completed").is_file() and len(before) > 2
    lists = first.corpus_dir / "biasing"
    lists_before = {p.name: p.read_text() for p in lists.iterdir()}
    assert len(lists_before) == 5  # two hotwords.txt, two phrases.tsv, distractors.txt

    def crash(plan):
        raise RuntimeError("engine crashed")

    monkeypatch.setattr(synth_module, "synthesize_utterance", crash)
    with pytest.raises(RuntimeError, match="engine crashed"):
        synth_module.synthesize_biasing_set(tmp_path, 3, num_distractors=3, progress=False)
    assert sorted(p.relative_to(part_dir) for p in part_dir.rglob("*")) == before
    # the phrase lists still those of the utterances there (the new set's would miss them)
    assert {p.name: p.read_text() for p in lists.iterdir()} == lists_before
    assert not [p for p in first.corpus_dir.iterdir() if ".tmp-" in p.name]
    with pytest.raises(ValueError, match=r"num_per_part must be a positive int \(--biasing\)"):
        synth_module.synthesize_biasing_set(tmp_path, -1, progress=False)


def _silent_utterance(plan) -> int:
    """A stand-in for the TTS rendering: a tenth of a second of silence (the text is all
    these tests look at)."""
    import numpy as np
    import soundfile as sf

    from asr.fileio import write_atomic

    pcm = np.zeros(1600, dtype=np.int16)
    write_atomic(plan.path, lambda tmp: sf.write(tmp, pcm, 16000, format="FLAC",
                                                 subtype="PCM_16"), durable=False)
    return len(pcm)


def test_a_training_part_added_later_may_not_say_the_biasing_phrases(tmp_path, monkeypatch):
    import asr.synth.synthesize as synth_module

    monkeypatch.setattr(synth_module, "synthesize_utterance", _silent_utterance)
    synthesize_corpus(tmp_path, {"train-clean-5": 20}, top_words=None, progress=False)
    synth_module.synthesize_biasing_set(tmp_path, 20, num_distractors=10, progress=False)
    corpus = tmp_path / "LibriSpeech"
    text_before = (corpus / "train-text.txt").read_text()
    # whole sentences of the unrestricted pool: 3000 more of them say most of the 40 phrases
    with pytest.raises(ValueError, match=r"biasing set.*training text.*--biasing"):
        synthesize_corpus(tmp_path, {"train-clean-5": 20, "train-clean-100": 3000},
                          top_words=None, progress=False)  # fmt: skip
    assert (corpus / "train-text.txt").read_text() == text_before
    assert not (corpus / "train-clean-100").exists()
    assert not [p for p in corpus.iterdir() if ".tmp-" in p.name]
    # a part that is no training part leaves the training text as it is
    synthesize_corpus(tmp_path, {"test-clean": 3}, top_words=None, progress=False)
    assert (corpus / "test-clean" / ".completed").is_file()
    words = set((corpus / "train-text.txt").read_text().split())
    for part in BIASING_PARTS:
        for phrase in (corpus / "biasing" / f"{part}.hotwords.txt").read_text().splitlines():
            assert not set(phrase.split()) & words


def test_the_set_comes_from_the_corpus_own_sentence_sources(tmp_path, monkeypatch):
    import asr.synth.synthesize as synth_module

    monkeypatch.setattr(synth_module, "synthesize_utterance", _silent_utterance)
    subjects, verbs, objects = ("The cat", "The dog", "A bird", "My friend"), (
        "sat on", "ran to", "looked at"), ("the mat", "the house", "a tree")  # fmt: skip
    common = [f"{s} {v} {o}." for s in subjects for v in verbs for o in objects]
    rare = ("zeppelin", "gondola", "platform", "hillside", "monument", "cushion", "balcony",
            "carpet", "trellis", "veranda")  # fmt: skip
    source = tmp_path / "my text.txt"
    source.write_text("\n".join(common + [f"The cat sat on the {w}." for w in rare]) + "\n")
    # the 16 common words only: training says all 36 sentences of them, none of the rare words
    synthesize_corpus(tmp_path, {"train-clean-5": 36}, top_words=16, sources=[source],
                      progress=False)  # fmt: skip
    result = synth_module.synthesize_biasing_set(tmp_path, 2, num_distractors=2, progress=False)
    lists = result.corpus_dir / "biasing"
    phrases = [line.split("\t")[1] for part in BIASING_PARTS
               for line in (lists / f"{part}.phrases.tsv").read_text().splitlines()]  # fmt: skip
    assert len(phrases) == 4 and {p.lower() for p in phrases} <= set(rare)


def test_phrases_in_text_reads_the_hotword_lists_and_the_distractors(tmp_path):
    from asr.synth.biasing import phrases_in_text

    lists = tmp_path / "biasing"
    lists.mkdir()
    (lists / "dev-biasing.hotwords.txt").write_text("GOLDEN CARPET\nZEPPELIN\n")
    (lists / "test-biasing.hotwords.txt").write_text("PLATFORM\n")
    (lists / "distractors.txt").write_text("WOODEN BRIDGE\nHILLSIDE\n")
    text = ["THE CAT SAT ON A CARPET", "A DOG RAN OVER THE HILLSIDE"]
    assert phrases_in_text(tmp_path, text) == ["GOLDEN CARPET", "HILLSIDE"]
    assert phrases_in_text(tmp_path / "none", text) == []


def _text_with_rare_words(
        rare: tuple[str, ...] = ("zeppelin", "gondola", "platform", "hillside", "monument",
                                 "cushion")) -> str:
    """A sentence source of common sentences and one sentence for each of the ``rare`` words."""
    common = [f"{s} {v} {o}." for s in ("The cat", "The dog", "A bird", "My friend")
              for v in ("sat on", "ran to", "looked at")
              for o in ("the mat", "the house", "a tree")]
    return "\n".join(common + [f"The cat sat on the {w}." for w in rare]) + "\n"


def test_a_relative_text_is_found_from_another_directory(tmp_path, monkeypatch):
    """`--text` was recorded in synthesis.json as given: `--biasing` (and a rerun) from another
    directory could not find a relative one. It is recorded absolute; a synthesis run reads a
    relative one of a manifest written before relative to the working directory, as it reads its
    own --text (biasing refuses it: the next test)."""
    import json

    import asr.synth.synthesize as synth_module

    monkeypatch.setattr(synth_module, "synthesize_utterance", _silent_utterance)
    texts, elsewhere = tmp_path / "texts", tmp_path / "elsewhere"
    texts.mkdir()
    elsewhere.mkdir()
    (texts / "my text.txt").write_text(_text_with_rare_words())
    root = tmp_path / "corpus"
    monkeypatch.chdir(texts)
    synthesize_corpus(root, {"train-clean-5": 36}, top_words=16,
                      sources=[Path("my text.txt")], progress=False)  # fmt: skip
    manifest = root / "LibriSpeech" / "synthesis.json"
    recorded = json.loads(manifest.read_text())["settings"]["sentence_sources"]
    assert recorded == [str(texts / "my text.txt")]
    monkeypatch.chdir(elsewhere)
    result = synth_module.synthesize_biasing_set(root, 1, num_distractors=1, progress=False)
    assert result.num_utts == {part: 1 for part in BIASING_PARTS}
    again = synthesize_corpus(root, {"train-clean-5": 36}, top_words=16,
                              sources=[texts / "my text.txt"], progress=False)  # fmt: skip
    assert again.synthesized == 0
    data = json.loads(manifest.read_text())  # as an older version recorded it
    data["settings"]["sentence_sources"] = ["my text.txt"]
    manifest.write_text(json.dumps(data))
    monkeypatch.chdir(texts)
    again = synthesize_corpus(root, {"train-clean-5": 36}, top_words=16,
                              sources=[Path("my text.txt")], progress=False)  # fmt: skip
    assert again.synthesized == 0


def test_an_old_relative_sentence_source_is_refused_until_a_synthesis_run_records_it(
        tmp_path, monkeypatch):
    """A relative source in an old synthesis.json names a file from the unrecorded directory of
    the run that wrote it. From another directory, a file of that name with other text gave the
    biasing set that text's rare sentences (the recorded pool digest covers only the top words,
    so it passes). It is refused, naming the manifest, before anything is written; a synthesis
    run with the same --text from its directory records it absolute, and biasing then works."""
    import json

    import asr.synth.synthesize as synth_module

    monkeypatch.setattr(synth_module, "synthesize_utterance", _silent_utterance)
    texts, elsewhere = tmp_path / "texts", tmp_path / "elsewhere"
    texts.mkdir()
    elsewhere.mkdir()
    (texts / "my text.txt").write_text(_text_with_rare_words())
    (elsewhere / "my text.txt").write_text(_text_with_rare_words(("lantern", "compass")))
    root = tmp_path / "corpus"
    monkeypatch.chdir(texts)
    synthesize_corpus(root, {"train-clean-5": 36}, top_words=16,
                      sources=[Path("my text.txt")], progress=False)  # fmt: skip
    manifest = root / "LibriSpeech" / "synthesis.json"
    data = json.loads(manifest.read_text())  # as an older version recorded it
    data["settings"]["sentence_sources"] = ["my text.txt"]
    manifest.write_text(json.dumps(data))
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ValueError, match=re.escape(
            f"{manifest}: sentence sources 'my text.txt' are recorded relative to the "
            "unrecorded directory of the run that synthesized the corpus (by an older asr): run "
            "the corpus synthesis again from that directory with the same options, --text among "
            "them")):
        synth_module.synthesize_biasing_set(root, 1, num_distractors=1, progress=False)
    assert not (root / "LibriSpeech" / "biasing").exists()
    monkeypatch.chdir(texts)
    again = synthesize_corpus(root, {"train-clean-5": 36}, top_words=16,
                              sources=[Path("my text.txt")], progress=False)  # fmt: skip
    assert again.synthesized == 0
    recorded = json.loads(manifest.read_text())["settings"]["sentence_sources"]
    assert recorded == [str(texts / "my text.txt")]
    monkeypatch.chdir(elsewhere)
    synth_module.synthesize_biasing_set(root, 2, num_distractors=1, progress=False)
    phrases = (root / "LibriSpeech" / "biasing" / "test-biasing.hotwords.txt").read_text()
    assert set(phrases.split()) <= {"ZEPPELIN", "GONDOLA", "PLATFORM", "HILLSIDE", "MONUMENT",
                                    "CUSHION"}


@pytest.mark.parametrize("recorded", ["TEXT", [5], [""], {"0": "TEXT"}])
def test_a_hand_edited_sentence_source_that_is_no_list_of_paths_is_refused(
        tmp_path, monkeypatch, recorded):
    """The relative-source refusal asks for the absolute paths to be written into the
    manifest by hand. A path written as a string rather than a list (or a mapping) made
    biasing take the default sentence pool, silently; a number raised a bare TypeError. Both
    are refused naming the manifest and the field."""
    import json

    import asr.synth.synthesize as synth_module

    monkeypatch.setattr(synth_module, "synthesize_utterance", _silent_utterance)
    text = tmp_path / "my text.txt"
    text.write_text(_text_with_rare_words())
    root = tmp_path / "corpus"
    synthesize_corpus(root, {"train-clean-5": 36}, top_words=16, sources=[text],
                      progress=False)
    manifest = root / "LibriSpeech" / "synthesis.json"
    data = json.loads(manifest.read_text())
    data["settings"]["sentence_sources"] = (str(text) if recorded == "TEXT" else
                                            {"0": str(text)} if isinstance(recorded, dict)
                                            else recorded)
    manifest.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(
            f"{manifest}: settings.sentence_sources must be a list of file paths, got ")):
        synth_module.synthesize_biasing_set(root, 1, num_distractors=1, progress=False)
    assert not (root / "LibriSpeech" / "biasing").exists()
