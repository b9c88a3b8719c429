"""One reading of token pieces: a result's text is its words joined by spaces, and the
tokenizer's decode gives that text, for any token sequence (bare, leading, trailing and
repeated ``▁``, ``<unk>`` anywhere in a word, char tokenizers)."""

from __future__ import annotations

import random

import pytest

from asr.results import ResultBuilder
from asr.tokenizers.base import UNK_PIECE, WORD_START, Tokenizer, piece_words
from asr.tokenizers.bpe import train_bpe
from asr.tokenizers.char import build_char_tokenizer


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, train_texts) -> dict[str, Tokenizer]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        "bpe": train_bpe(train_texts, root / "bpe", vocab_size=120),
        "unigram": train_bpe(train_texts, root / "unigram", vocab_size=80, model_type="unigram"),
        "char": build_char_tokenizer(train_texts),
    }


def _check(tok: Tokenizer, ids: list[int]) -> str:
    """Asserts that the segment's text, its words and ``tok.decode`` agree; returns the text."""
    builder = ResultBuilder(tok, 0.04)
    segment = builder.segment(ids, [0.04 * i for i in range(len(ids))])
    words = [w.text for w in segment.words]
    assert segment.text == " ".join(words) == tok.decode(ids), segment.tokens
    assert all(w and WORD_START not in w and " " not in w for w in words), segment.tokens
    assert all(w.start < w.end for w in segment.words)
    result = builder.transcript("x.wav", 1.0, [segment, segment])
    assert result.text == " ".join(w.text for w in result.words)
    return segment.text


@pytest.mark.parametrize("kind", ["bpe", "unigram", "char"])
def test_text_is_the_words_joined_for_random_token_sequences(tokenizers, kind):
    tok = tokenizers[kind]
    pieces = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
    bare = [i for i, p in enumerate(pieces) if p == WORD_START]
    assert bare, f"the {kind} model has no bare {WORD_START} piece to test"
    rng = random.Random(kind)
    # <sos/eos>, <unk> and the bare word boundary drawn often, every other piece too
    frequent = [1, 2, *bare]
    for _ in range(400):
        ids = [rng.choice(frequent) if rng.random() < 0.4 else rng.randrange(1, tok.vocab_size)
               for _ in range(rng.randrange(0, 12))]
        _check(tok, ids)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_unknown_pieces_read_as_unk_where_they_stand(tokenizers, kind):
    """``<unk>`` reads ``<unk>`` (the tokens.txt symbol sherpa-onnx prints) in the text as in
    the words, at the start, inside and at the end of a word and as a word of its own; bare
    ``▁`` pieces add no space."""
    tok = tokenizers[kind]
    ids = {tok.id_to_piece(i): i for i in range(tok.vocab_size)}
    space, unk = ids[WORD_START], tok.unk_id
    letter = next(i for p, i in ids.items() if len(p) == 1 and p.isalpha())
    word = next(i for p, i in ids.items() if p.startswith(WORD_START) and len(p) > 1)
    w, c = tok.id_to_piece(word)[1:], tok.id_to_piece(letter)
    assert _check(tok, [unk, letter, word]) == f"{UNK_PIECE}{c} {w}"
    assert _check(tok, [word, unk, letter]) == f"{w}{UNK_PIECE}{c}"
    assert _check(tok, [word, unk]) == f"{w}{UNK_PIECE}"
    assert _check(tok, [word, space, unk, space]) == f"{w} {UNK_PIECE}"
    assert _check(tok, [space, space, word, space, space, letter, space]) == f"{w} {c}"
    assert _check(tok, [space, 1, space]) == ""


def test_char_tokenizer_reads_unk_and_spaces_the_same():
    tok = build_char_tokenizer(["AB C"])
    space, unk, a, b = 3, tok.unk_id, tok.encode("A")[0], tok.encode("B")[0]
    assert _check(tok, [space, a, unk, space, space, b, space]) == f"A{UNK_PIECE} B"
    assert _check(tok, [unk, space, unk]) == f"{UNK_PIECE} {UNK_PIECE}"


def test_piece_words_say_which_pieces_spell_each_word():
    pieces = [WORD_START, "<sos/eos>", f"{WORD_START}HE", "LLO", WORD_START, UNK_PIECE,
              f"{WORD_START}W", "<blk>"]
    assert piece_words(pieces) == [("HELLO", 2, 3), (UNK_PIECE, 5, 5), ("W", 6, 6)]
