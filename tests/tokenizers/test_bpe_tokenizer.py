from __future__ import annotations

import logging
from pathlib import Path

import pytest

from asr.fingerprint import fingerprint_path
from asr.tokenizers import load_tokenizer
from asr.tokenizers.base import Tokenizer, read_tokens_file
from asr.tokenizers.bpe import (
    MIN_VOCAB_SIZE,
    BpeTokenizer,
    check_vocab_size,
    train_bpe,
    vocab_size_needed,
)


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory, train_texts) -> Path:
    out = tmp_path_factory.mktemp("bpe")
    train_bpe(train_texts, out, vocab_size=120)
    return out


def test_special_ids_and_vocab_size(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    assert isinstance(tok, BpeTokenizer)
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 120
    assert [tok.id_to_piece(i) for i in range(3)] == ["<blk>", "<sos/eos>", "<unk>"]
    assert (tok.blank_id, tok.sos_id, tok.eos_id, tok.unk_id) == (0, 1, 1, 2)


def test_round_trip_heldout(bpe_dir, heldout_texts):
    tok = load_tokenizer(bpe_dir)
    batch = tok.encode_batch(heldout_texts)
    assert batch == [tok.encode(t) for t in heldout_texts]
    for text, ids in zip(heldout_texts, batch):
        assert ids and all(3 <= i < tok.vocab_size for i in ids), text  # no special ids, no unk
        assert tok.decode(ids) == text


def test_decode_ignores_blank_and_sos_eos(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    ids = tok.encode("THE QUEEN")
    noisy = [1, 0, *ids[:1], 0, 0, *ids[1:], 1]
    assert tok.decode(noisy) == "THE QUEEN"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_unknown_character_maps_to_unk(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    assert tok.unk_id in tok.encode("THE 7 QUEEN")


def test_a_text_that_writes_the_word_start_mark_is_refused_naming_it(bpe_dir, tmp_path):
    """sentencepiece took a ``▁`` in a text for a space: ``THE▁QUEEN`` encoded as
    ``THE QUEEN`` and read back so; and a training text holding one trained without a word."""
    tok = load_tokenizer(bpe_dir)
    with pytest.raises(ValueError, match="text 'THE\u2581QUEEN' holds '\u2581'"):
        tok.encode("THE\u2581QUEEN")
    with pytest.raises(ValueError, match="text 'THE\u2581QUEEN' holds"):
        tok.encode_batch(["THE QUEEN", "THE\u2581QUEEN"])
    with pytest.raises(ValueError, match="text 'A\u2581B' holds"):
        train_bpe(["A B", "A\u2581B"], tmp_path / "bpe", vocab_size=MIN_VOCAB_SIZE + 2)
    assert not (tmp_path / "bpe" / "bpe.model").exists()


def test_tokens_txt_matches_model(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    assert read_tokens_file(bpe_dir / "tokens.txt") == tok.pieces()


def test_training_is_deterministic(tmp_path, train_texts, bpe_dir):
    again = tmp_path / "again"
    train_bpe(train_texts, again, vocab_size=120)
    assert (again / "bpe.model").read_bytes() == (bpe_dir / "bpe.model").read_bytes()


def test_training_is_idempotent_while_the_text_and_options_are_the_same(tmp_path, train_texts,
                                                                        caplog):
    """A model trained on other text or with another size used to be kept (or refused) on a
    rerun: the recipes' stage 3 / 5 gave the old tokenizer after the corpus changed."""
    caplog.set_level(logging.INFO)
    out = tmp_path / "bpe"
    model = out / "bpe.model"
    train_bpe(train_texts[:500], out, vocab_size=60)
    first, stamp = model.read_bytes(), model.stat().st_mtime_ns
    # The same text and options: kept, not trained again.
    tok = train_bpe(train_texts[:500], out, vocab_size=60)
    assert tok.vocab_size == 60 and model.stat().st_mtime_ns == stamp
    assert "made from the same inputs and options: reusing it" in caplog.text
    # Other text: trained again on it.
    train_bpe(train_texts[500:1000], out, vocab_size=60)
    assert model.read_bytes() != first and "(changed: texts_sha256)" in caplog.text
    train_bpe(train_texts[500:1000], tmp_path / "fresh", vocab_size=60)
    assert model.read_bytes() == (tmp_path / "fresh" / "bpe.model").read_bytes()
    # Another size: trained again with it.
    train_bpe(train_texts[500:1000], out, vocab_size=70)
    assert load_tokenizer(out).vocab_size == 70 and "(changed: vocab_size)" in caplog.text
    # A model without a fingerprint (a kill before it was written, an older version): again.
    fingerprint_path(model).unlink()
    stamp = model.stat().st_mtime_ns
    train_bpe(train_texts[500:1000], out, vocab_size=70)
    assert model.stat().st_mtime_ns != stamp and fingerprint_path(model).is_file()
    # force trains again even when nothing changed.
    stamp = model.stat().st_mtime_ns
    train_bpe(train_texts[500:1000], out, vocab_size=70, force=True)
    assert model.stat().st_mtime_ns != stamp
    # A current model whose tokens.txt is gone: kept, and tokens.txt written again.
    tokens = (out / "tokens.txt").read_text()
    (out / "tokens.txt").unlink()
    stamp = model.stat().st_mtime_ns
    train_bpe(train_texts[500:1000], out, vocab_size=70)
    assert model.stat().st_mtime_ns == stamp and (out / "tokens.txt").read_text() == tokens


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="vocab_size must be at least 5"):
        train_bpe(["A B"], tmp_path / "a", vocab_size=4)
    with pytest.raises(ValueError, match="no training text"):
        train_bpe(["", "  "], tmp_path / "b", vocab_size=10)
    with pytest.raises(ValueError, match="could not train"):
        train_bpe(["AB BA"], tmp_path / "c", vocab_size=500)


def test_rejects_model_without_special_ids(tmp_path):
    import io

    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["AB BA AAB"] * 10), model_writer=buffer, vocab_size=8,
        minloglevel=2, hard_vocab_limit=False,
    )
    with pytest.raises(ValueError, match="must have"):
        BpeTokenizer(buffer.getvalue())


def test_trains_on_a_tiny_text_of_unicode_words_and_empty_lines(tmp_path):
    """A handful of lines (sentencepiece refused 1 to 100 sentences as its sample size): the
    empty lines are skipped, every non-ASCII character gets a piece and text round-trips."""
    texts = ["ÉCOLE ÜBER NAÏVE", "", "   ", "日本語 テキスト", "HE DIDN'T KNOW", "NAÏVE ÉCOLE"]
    tok = train_bpe(texts, tmp_path / "tiny", vocab_size=40)
    assert tok.vocab_size == 40
    for text in (t for t in texts if t.strip()):
        ids = tok.encode(text)
        assert tok.unk_id not in ids and tok.decode(ids) == text
    assert load_tokenizer(tmp_path / "tiny").pieces() == tok.pieces()


def test_blank_and_sos_eos_written_in_a_text_encode_to_unk(bpe_dir):
    """sentencepiece matches its user-defined pieces anywhere: a transcript holding "<blk>"
    must not put a blank (or an end of sentence) into the training targets."""
    tok = load_tokenizer(bpe_dir)
    for text in ("THE <blk> QUEEN", "THE <sos/eos> QUEEN"):
        ids = tok.encode(text)
        assert tok.blank_id not in ids and tok.sos_id not in ids and tok.unk_id in ids, text
        assert tok.encode_batch([text]) == [ids]


def test_a_corrupt_model_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "bpe.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match=r"bpe.model: not a sentencepiece model"):
        load_tokenizer(tmp_path)


def test_train_bpe_normalises_whitespace_as_asr_bpe_does(bpe_dir, train_texts, tmp_path):
    """Tabs and runs of whitespace, which ``asr bpe`` makes single spaces when it reads
    transcripts, failed the API only after training ('piece '\\t' ... contains whitespace'),
    leaving a bpe.model without tokens.txt; the API now trains on the text ``asr bpe`` would."""
    messy = [f"\t {text.replace(' ', chr(9), 1).replace(' ', '  ', 1)}\u00a0\n"
             for text in train_texts]
    assert messy[0] != train_texts[0]
    tokenizer = train_bpe(messy, tmp_path, vocab_size=120)
    assert tokenizer.pieces() == read_tokens_file(tmp_path / "tokens.txt")
    assert (tmp_path / "bpe.model").read_bytes() == (bpe_dir / "bpe.model").read_bytes()
    assert fingerprint_path(tmp_path / "bpe.model").read_bytes() == \
        fingerprint_path(bpe_dir / "bpe.model").read_bytes()


@pytest.mark.parametrize("texts", [["A"], ["AB CD", "A\tB"], ["HELLO WORLD", "IT'S"]])
def test_the_vocab_size_a_text_needs_is_what_sentencepiece_needs(tmp_path, texts):
    """A size below what the text needs was refused by sentencepiece only after it had read the
    text (recipes: after the data preparation); check_vocab_size knows it beforehand."""
    needed = vocab_size_needed(texts)
    assert needed >= MIN_VOCAB_SIZE == 5
    assert train_bpe(texts, tmp_path / "fits", vocab_size=needed).vocab_size == needed
    with pytest.raises(ValueError, match=f"at least {needed}"):
        check_vocab_size(needed - 1, texts)
    with pytest.raises(ValueError, match=f"at least {needed}") as refused:
        train_bpe(texts, tmp_path / "small", vocab_size=needed - 1)
    assert "sentencepiece" not in str(refused.value)
    check_vocab_size(MIN_VOCAB_SIZE)  # some text fits it
    with pytest.raises(ValueError, match="must be at least 5 .*got 4"):
        check_vocab_size(MIN_VOCAB_SIZE - 1)
