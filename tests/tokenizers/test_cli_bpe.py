from __future__ import annotations

import logging

from asr.cli.main import main
from asr.tokenizers import load_tokenizer
from asr.tokenizers.bpe import BpeTokenizer
from asr.tokenizers.char import CharTokenizer


def _write_librispeech(root, texts):
    chapter = root / "LibriSpeech" / "train-clean-5" / "1" / "2"
    chapter.mkdir(parents=True)
    lines = [f"1-2-{i:04d} {text}\n" for i, text in enumerate(texts)]
    (chapter / "1-2.trans.txt").write_text("".join(lines))
    return root / "LibriSpeech" / "train-clean-5"


def test_bpe_cli(tmp_path, train_texts, heldout_texts, caplog):
    corpus = _write_librispeech(tmp_path, train_texts)
    out = tmp_path / "lang_bpe_80"
    argv = ["bpe", "--transcripts", str(corpus), "--output-dir", str(out), "--vocab-size", "80"]
    assert main(argv) == 0
    tok = load_tokenizer(out)
    assert isinstance(tok, BpeTokenizer) and tok.vocab_size == 80
    assert all(tok.decode(tok.encode(t)) == t for t in heldout_texts)
    model = (out / "bpe.model").read_bytes()
    stamp = (out / "bpe.model").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0  # second run: the same transcripts and size, kept
    assert "reusing it" in caplog.text
    assert (out / "bpe.model").stat().st_mtime_ns == stamp
    assert main([*argv[:-1], "90"]) == 0  # another size: trained again (it used to be refused)
    assert load_tokenizer(out).vocab_size == 90
    # transcripts that changed since (a corpus prepared again): trained again on them
    _write_librispeech(tmp_path / "other", train_texts[:800])
    assert main(["bpe", "--transcripts", str(tmp_path / "other" / "LibriSpeech"),
                 "--output-dir", str(out), "--vocab-size", "90"]) == 0
    assert "(changed: num_sentences, texts_sha256): making it again" in caplog.text
    assert (out / "bpe.model").read_bytes() != model


def test_char_cli(tmp_path):
    plain = tmp_path / "sentences.txt"
    plain.write_text("AB BA\nCAB\n")
    out = tmp_path / "lang_char"
    assert main(["bpe", "--kind", "char", "--transcripts", str(plain),
                 "--output-dir", str(out)]) == 0
    tok = load_tokenizer(out)
    assert isinstance(tok, CharTokenizer) and tok.vocab_size == 7  # 4 specials + A B C
    plain.write_text("AB BA\nCAB\nDAB\n")  # a new character: made again, not kept
    assert main(["bpe", "--kind", "char", "--transcripts", str(plain),
                 "--output-dir", str(out)]) == 0
    assert load_tokenizer(out).vocab_size == 8
    assert main(["bpe", "--transcripts", str(tmp_path / "nope.txt"), "--output-dir", str(out)]) == 2


def test_a_bpe_model_trained_over_a_char_tokenizer_leaves_no_char_fingerprint(tmp_path,
                                                                             train_texts):
    """BPE training rewrote tokens.txt but left the char tokenizer's fingerprint of it, so a
    later ``--kind char`` run on the same transcripts took the BPE model's tokens.txt for its own
    ("reusing it", exit 0) instead of refusing the directory that now holds a BPE model."""
    corpus = _write_librispeech(tmp_path, train_texts)
    out = tmp_path / "lang"
    char = ["bpe", "--kind", "char", "--transcripts", str(corpus), "--output-dir", str(out)]
    assert main(char) == 0
    assert main(["bpe", "--transcripts", str(corpus), "--output-dir", str(out),
                 "--vocab-size", "80"]) == 0
    assert not (out / "tokens.txt.fingerprint.json").exists()
    assert main(char) == 2  # "holds a BPE model"
    assert isinstance(load_tokenizer(out), BpeTokenizer)


def test_check_only_refuses_a_vocab_size_too_small_and_trains_nothing(tmp_path, caplog):
    """What the recipe scripts run before their first stage: with no text, the least any text
    needs; with the training text, what it needs (sentencepiece found it only at the BPE stage)."""
    corpus = _write_librispeech(tmp_path, ["ABCDE FGHIJ"])
    out = tmp_path / "lang"
    assert main(["bpe", "--check-only", "--vocab-size", "5"]) == 0
    assert main(["bpe", "--check-only", "--vocab-size", "4"]) == 2
    assert "--vocab-size 4: vocab_size must be at least 5" in caplog.text
    check = ["bpe", "--check-only", "--transcripts", str(corpus), "--output-dir", str(out)]
    assert main([*check, "--vocab-size", "14"]) == 0
    assert main([*check, "--vocab-size", "13"]) == 2
    assert "--vocab-size 13: vocab_size 13 is too small for the training text: its 10 " \
        f"characters, the word-start mark ▁ and the 3 special pieces need at least 14 ({corpus})" \
        in caplog.text
    assert not out.exists()
    assert main(["bpe", "--output-dir", str(out)]) == 2  # training needs its text
    assert "--transcripts and --output-dir are required" in caplog.text


def test_bpe_cli_trains_from_a_gzip_text_as_from_the_plain_one(tmp_path, train_texts,
                                                               heldout_texts, gzip_copies):
    """A compressed corpus (``librispeech-lm-norm.txt.gz``, as it ships) was refused as 'not
    UTF-8 text': gzip is told by the first bytes, with or without a .gz name, and the model is
    the plain text's."""
    tokenizers = []
    for corpus in gzip_copies("corpus", "".join(f"{text}\n" for text in train_texts).encode()):
        out = tmp_path / f"lang-{corpus.name}"
        assert main(["bpe", "--transcripts", str(corpus), "--output-dir", str(out),
                     "--vocab-size", "80"]) == 0
        tokenizers.append(load_tokenizer(out))
        assert (out / "tokens.txt").read_bytes() == (tmp_path / "lang-corpus.txt" /
                                                     "tokens.txt").read_bytes()
    assert len({tuple(tuple(tok.encode(t)) for t in heldout_texts) for tok in tokenizers}) == 1


def test_speed_copies_of_a_cut_manifest_count_once_for_the_tokenizer_and_the_lm(tmp_path):
    """A cut manifest of ``asr prepare fbank --speed-perturb`` holds each utterance at speeds
    1.0, 0.9 and 1.1: its text was counted three times by ``asr bpe`` and ``asr lm`` (skewing
    the BPE merges and the n-gram counts); the copies are left out."""
    from lhotse import CutSet, SupervisionSegment
    from lhotse.testing.dummies import dummy_cut

    from asr.fingerprint import fingerprint_path, read_fingerprint, sha256_of_texts

    texts = ["THE CAT", "A DOG SAT", "THE END"]
    originals = CutSet.from_cuts([
        dummy_cut(i, supervisions=[SupervisionSegment(f"s{i}", f"dummy-recording-{i:04d}", 0.0,
                                                      1.0, text=text)])
        for i, text in enumerate(texts)])
    cuts = originals + originals.perturb_speed(0.9) + originals.perturb_speed(1.1)
    manifest = tmp_path / "cuts_train.jsonl.gz"
    cuts.to_file(manifest)
    out = tmp_path / "lang_char"
    assert main(["bpe", "--kind", "char", "--transcripts", str(manifest),
                 "--output-dir", str(out)]) == 0
    assert read_fingerprint(out / "tokens.txt")["texts_sha256"] == sha256_of_texts(texts)
    lm = tmp_path / "lm.arpa"
    assert main(["lm", "--unit", "word", "--order", "1", "--transcripts", str(manifest),
                 "--output", str(lm)]) == 0
    assert read_fingerprint(lm)["num_texts"] == 3
    assert fingerprint_path(lm).is_file()
