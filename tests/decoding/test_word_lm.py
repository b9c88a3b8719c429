"""LexiconWordLM: a word n-gram scored token by token over a lexicon (asr.decoding.word_lm)."""

from __future__ import annotations

import math

import pytest
import torch
from search_helpers import encoder_output, make_model

from asr.decoding import SearchConfig, build_searcher
from asr.decoding import word_lm as word_lm_module
from asr.decoding.lm import NgramLM
from asr.decoding.ngram_train import check_words, estimate_kneser_ney, write_arpa
from asr.decoding.word_lm import LexiconWordLM, arpa_words, load_word_lm

LN10 = math.log(10.0)

TEXTS = [
    "THE CAT SAT ON THE MAT",
    "A DOG SAT ON A LOG",
    "THE DOG ATE THE CAT FOOD",
    "THEN THE CATS SAT",
    "A CATALOG OF DOGS",
    "THE MAN ATE",
] * 20


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A BPE tokenizer of 40 pieces and a word 3-gram of TEXTS, read back from ARPA."""
    from asr.tokenizers.bpe import train_bpe

    root = tmp_path_factory.mktemp("word_lm")
    tokenizer = train_bpe(TEXTS, root / "lang", 40)
    symbols = sorted({w for t in TEXTS for w in t.split()})
    index = {w: i for i, w in enumerate(symbols)}
    estimate = estimate_kneser_ney([[index[w] for w in t.split()] for t in TEXTS], 3)
    write_arpa(estimate, root / "words.arpa", symbols)
    return tokenizer, load_word_lm(root / "words.arpa", tokenizer), root / "words.arpa"


def _word_log_prob(lm: LexiconWordLM, sentence: str) -> float:
    """log P(w_1 .. w_n </s>) from the word n-gram itself."""
    ids = {w: i for i, w in enumerate(arpa_words_of(lm))}
    state, total = lm.word_lm.init_state(), 0.0
    for word in sentence.split():
        total += lm.word_lm.log_prob(state, ids[word])
        state = lm.word_lm.advance(state, ids[word])
    return total + lm.word_lm.final_score(state)


def arpa_words_of(lm: LexiconWordLM) -> list[str]:
    order = lm._word_ids.argsort()  # lexicon order -> word-id order
    return [lm.words[int(i)] for i in order]


def _token_log_prob(lm: LexiconWordLM, tokens: list[int]) -> float:
    state, total = lm.init_state(), 0.0
    for token in tokens:
        total += float(lm.score(state)[token])
        state = lm.advance(state, token)
    return total + lm.final_score(state)


@pytest.mark.parametrize(
    "sentence", ["THE CAT SAT ON THE MAT", "THEN THE CATS SAT", "A CATALOG", "MAT MAT", "THE"]
)
def test_token_scores_of_a_spelling_telescope_to_the_word_lm(setup, sentence):
    tokenizer, lm, _ = setup
    expected = _word_log_prob(lm, sentence)
    assert _token_log_prob(lm, tokenizer.encode(sentence)) == pytest.approx(expected, abs=1e-4)


def test_every_state_spends_the_word_lms_probability_mass(setup):
    """From any state, the next tokens plus the end of sentence share exactly the word LM's
    mass left for lexicon words and </s> (what the LM gives <unk> is all that is missing)."""
    tokenizer, lm, _ = setup
    ngram: NgramLM = lm.word_lm
    for sentence in ["THE CAT", "A CATALOG OF", "THEN THE CATS", "THE DOG ATE THE"]:
        tokens = tokenizer.encode(sentence)
        state = lm.init_state()
        for cut in range(len(tokens) + 1):
            if cut:
                state = lm.advance(state, tokens[cut - 1])
            history, prefix = state
            total = float(torch.logsumexp(lm.score(state).double(), 0).exp())
            total += math.exp(lm.final_score(state))
            if not prefix:  # at the start: all of P(. | <s>) but <unk>
                missing = math.exp(ngram.log_prob(history, -3))
            else:  # the word spelled so far may end: its share times P(<unk> | h w)
                node = lm._node(prefix)
                probs = lm._word_probs(history)
                share = float(probs[node.end]) / float(probs[node.lo : node.hi].sum())
                after = ngram.advance(history, int(lm._word_ids[node.end])) if share else None
                missing = share * math.exp(ngram.log_prob(after, -3)) if share else 0.0
            assert total == pytest.approx(1.0 - missing, abs=1e-5), (sentence, cut)


def test_spellings_outside_the_lexicon_are_forbidden(setup):
    tokenizer, lm, _ = setup
    # a word the LM never saw, spelled with known pieces
    assert _token_log_prob(lm, tokenizer.encode("THE COG")) == -math.inf
    # a word cut short: its first piece only, then the end or the next word
    cat = tokenizer.encode("CATALOG")
    assert len(cat) > 1
    assert _token_log_prob(lm, cat[:1]) == -math.inf or tokenizer.decode(cat[:1]) in lm.words
    state = lm.init_state()
    first_only = lm.score(state)
    continuation = [t for t in range(lm.vocab_size) if not bool(lm._starts[t])]
    assert torch.all(first_only[continuation] == -math.inf)  # no word starts mid-word
    # the dead state stays dead
    dead = lm.advance(state, continuation[-1])
    assert dead is None and lm.final_score(dead) == -math.inf
    assert torch.all(lm.score(dead) == -math.inf) and lm.advance(dead, cat[0]) is None


def test_lexicon_keeps_words_spelled_like_sentencepiece_does(setup):
    tokenizer, lm, arpa = setup
    assert sorted(lm.words) == sorted(arpa_words(arpa))
    for word in lm.words:
        pieces = [tokenizer.id_to_piece(t) for t in tokenizer.encode(word)]
        assert pieces[0].startswith("\u2581")


def test_words_the_tokenizer_cannot_spell_are_skipped(setup, caplog):
    tokenizer, lm, _ = setup
    words = ["THE", "CAT", "XYZZY"]  # X, Y, Z are unknown to the tokenizer
    ngram = NgramLM({(0,): -1.0, (1,): -1.0, (2,): -1.0, (-2,): -1.0}, {}, vocab_size=3)
    small = LexiconWordLM(ngram, words, tokenizer)
    assert sorted(small.words) == ["CAT", "THE"]
    assert "XYZZY" in caplog.text


def test_a_tokenizer_without_word_start_pieces_is_refused():
    from asr.tokenizers.char import build_char_tokenizer

    tokenizer = build_char_tokenizer(["THE CAT"])
    ngram = NgramLM({(0,): -1.0, (1,): -1.0, (-2,): -1.0}, {}, vocab_size=2)
    with pytest.raises(ValueError, match="char tokenizer puts the mark between words"):
        LexiconWordLM(ngram, ["THE", "CAT"], tokenizer)


def _decoded_words(tokenizer, searcher, seed: int) -> list[tuple[float, list[str]]]:
    enc, enc_lens = encoder_output([30, 22, 14], seed=seed, scale=3.0)
    return [
        (n[0].score, tokenizer.decode(list(n[0].tokens)).split()) for n in searcher(enc, enc_lens)
    ]


@pytest.mark.parametrize("name, heads", [
    ("transducer_beam", {"transducer": "pruned"}),
    ("ctc_prefix_beam", {"ctc": True}),
    ("tdt_beam", {"transducer": "tdt"}),
    ("cif_beam", {"cif": True}),
])  # fmt: skip
def test_searchers_fused_with_a_word_lm_say_only_lexicon_words(setup, name, heads):
    """Every hypothesis that can end is made of lexicon words; the same random model without
    the LM says other things."""
    tokenizer, lm, arpa = setup
    model = make_model(**heads, vocab=tokenizer.vocab_size)
    cfg = SearchConfig(beam_size=8, lm_path=arpa, lm_unit="word", lm_weight=1.0)
    searcher = build_searcher(name, model, cfg, tokenizer=tokenizer)
    plain = build_searcher(name, model, SearchConfig(beam_size=8))
    results = [r for seed in (1, 2, 3) for r in _decoded_words(tokenizer, searcher, seed)]
    ended = [words for score, words in results if score > -math.inf]
    assert len(ended) >= len(results) // 2 and any(ended)
    assert all(set(words) <= set(lm.words) for words in ended), ended
    unconstrained = {w for seed in (1, 2, 3) for _, ws in _decoded_words(tokenizer, plain, seed)
                     for w in ws}  # fmt: skip
    assert not unconstrained <= set(lm.words)


def test_a_word_lm_needs_the_tokenizer_and_a_known_unit(setup):
    tokenizer, _, arpa = setup
    model = make_model(transducer="pruned", vocab=tokenizer.vocab_size)
    cfg = SearchConfig(lm_path=arpa, lm_unit="word", lm_weight=0.5)
    with pytest.raises(ValueError, match="lm_unit=word needs the tokenizer"):
        build_searcher("transducer_beam", model, cfg)
    with pytest.raises(ValueError, match="lm_unit must be 'token' or 'word'"):
        SearchConfig(lm_unit="char")
    with pytest.raises(ValueError, match="not a token id"):  # a word LM read as a token LM
        build_searcher("transducer_beam", model, SearchConfig(lm_path=arpa, lm_weight=0.5))


def test_cli_trains_a_word_lm(tmp_path, setup):
    from asr.cli.main import main

    tokenizer, _, _ = setup
    text_file = tmp_path / "train.txt"
    text_file.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "words.arpa"
    args = ["lm", "--unit", "word", "--transcripts", str(text_file), "--order", "3"]
    assert main([*args, "--output", str(out)]) == 0
    # words in sorted order: the same text makes the same file whatever the hash seed
    assert arpa_words(out) == sorted({w for t in TEXTS for w in t.split()})
    lm = load_word_lm(out, tokenizer)
    state = lm.init_state()
    for token in tokenizer.encode("THE CAT SAT ON THE"):
        state = lm.advance(state, token)
    best = tokenizer.id_to_piece(int(lm.score(state).argmax()))
    assert "MAT".startswith(best.lstrip("\u2581"))
    no_tokenizer = ["lm", "--transcripts", str(text_file), "--output", str(tmp_path / "t.arpa")]
    assert main(no_tokenizer) == 2  # a token LM needs --tokenizer-dir


def test_cli_word_lm_counts_unk_in_the_transcripts_as_the_unknown_word(tmp_path):
    """Transcripts such as TED-LIUM's write an out-of-vocabulary word as ``<unk>``: KenLM counts
    it as its unknown word; ``asr lm --unit word`` made it a word of the lexicon and then
    refused to write it ('ARPA words must be ... not specials')."""
    from asr.cli.main import main
    from asr.decoding.lm import UNK, NgramLM

    text_file = tmp_path / "train.txt"
    text_file.write_text("THE <unk> SAT\nA CAT SAT\nTHE <unk> <unk> RAN\n")
    out = tmp_path / "words.arpa"
    assert main(["lm", "--unit", "word", "--transcripts", str(text_file), "--order", "2",
                 "--output", str(out)]) == 0
    lm, words = NgramLM.from_word_arpa(out)
    assert sorted(words) == ["A", "CAT", "RAN", "SAT", "THE"]
    the = lm.advance(lm.init_state(), words.index("THE"))
    assert lm.probs[(words.index("THE"), UNK)] == lm.log_prob(the, UNK)  # a listed bigram
    assert (UNK, words.index("SAT")) in lm.probs and (UNK, UNK) in lm.probs  # a history too


@pytest.mark.parametrize("word", ["<s>", "</s>"])
def test_cli_word_lm_refuses_sentence_marks_in_the_transcripts_naming_file_and_line(
        tmp_path, monkeypatch, caplog, word):
    """<s> and </s> surround every sentence already: one written in the transcripts was refused
    only after estimation, by write_arpa, naming neither the file nor the line. It is refused
    as the transcripts are read (nothing is estimated), naming both, in a plain text file and
    in a Kaldi ``text`` file (the line of its utterance)."""
    import asr.cli.lm
    from asr.cli.main import main

    estimated = []
    monkeypatch.setattr(asr.cli.lm, "estimate_kneser_ney", lambda *a: estimated.append(a))
    plain = tmp_path / "train.txt"
    plain.write_text(f"THE CAT SAT\n\nA {word} RAN\n")
    kaldi = tmp_path / "text"
    kaldi.write_text(f"utt1 THE CAT\nutt2 {word} SAT\n")
    for path, line in ((plain, 3), (kaldi, 2)):
        caplog.clear()
        out = tmp_path / "words.arpa"
        assert main(["lm", "--unit", "word", "--transcripts", str(path), "--output",
                     str(out)]) == 2
        assert f"transcript file {path}:{line}: the word {word!r}" in caplog.text
        assert not out.exists() and not estimated
    assert check_words("THE <unk> CAT") == "THE <unk> CAT"  # <unk> is the unknown word


def test_write_arpa_refuses_words_it_cannot_write(tmp_path):
    estimate = estimate_kneser_ney([[0, 1]], 2)
    with pytest.raises(ValueError, match="ARPA words"):
        write_arpa(estimate, tmp_path / "x.arpa", ["A B", "C"])
    with pytest.raises(ValueError, match="ARPA words"):
        write_arpa(estimate, tmp_path / "x.arpa", ["<s>", "C"])


def test_caches_stay_within_their_budget_for_large_lexicons(setup):
    """A 200k-word lexicon must not keep thousands of 1.6 MB probability vectors."""
    tokenizer, lm, _ = setup
    ngram = NgramLM(lm.word_lm.probs, lm.word_lm.backoffs, lm.word_lm.vocab_size)
    small = LexiconWordLM(ngram, arpa_words_of(lm), tokenizer, cache_bytes=8 * len(lm.words) * 20)
    assert small._cache_size == 20 and ngram.cache_limit == 40
    state, expected = small.init_state(), []
    for sentence in TEXTS[:6] * 3:
        state = small.init_state()
        for token in tokenizer.encode(sentence):
            expected.append(float(small.score(state)[token]))
            state = small.advance(state, token)
        assert len(small._probs) <= 20
        assert len(ngram._cache) <= 40
    again = []
    for sentence in TEXTS[:6] * 3:  # the same scores after evictions
        state = lm.init_state()
        for token in tokenizer.encode(sentence):
            again.append(float(lm.score(state)[token]))
            state = lm.advance(state, token)
    assert again == pytest.approx(expected, abs=1e-6)


WORD_ARPA = """\\data\\
ngram 1=4
ngram 2=2

\\1-grams:
-1.0 <s> -0.3
-0.5 CAT -0.2
-0.6 SAT
-0.7 </s>

\\2-grams:
-0.2 <s> CAT
-0.1 CAT SAT

\\end\\
"""


@pytest.mark.parametrize(
    "text, message",
    [
        (WORD_ARPA.split("-0.1 CAT SAT")[0], r"words.arpa:12: the 2-grams section has 1 entries "
         r"but \\data\\ declares 2"),  # truncated in the bigrams
        (WORD_ARPA.replace("-0.6 SAT", "x.6 SAT"),
         r"words.arpa:8: a log10 probability .* no number"),
        (WORD_ARPA.replace("-0.6 SAT", "-0.6 CAT"),
         r"words.arpa:8: the 1-gram 'CAT' is listed twice"),
        (WORD_ARPA.replace("-0.6 SAT", "-0.6"), r"words.arpa:8: expected a 1-gram line"),
        (WORD_ARPA.replace("CAT SAT", "CAT DOG"), r"words.arpa:13: word 'DOG' is not in the "
         "1-grams section"),
        (WORD_ARPA.replace("SAT", "S\u2581AT"), "words.arpa:8: text 'S\u2581AT' holds '\u2581'"),
        (WORD_ARPA.replace("\\end\\\n", ""), r"words.arpa: no \\end\\ after line 14"),
        (b"\x1f\x8b\x08\x00 gzip", r"words.arpa: corrupt or truncated gzip data"),
        (b"\xff\xfe\x08\x00 utf-16", r"words.arpa:1: not UTF-8 text"),
    ],
    ids=["truncated", "prob", "twice", "fields", "unknown", "mark", "end", "corrupt-gzip",
         "binary"],
)
def test_a_malformed_word_arpa_file_is_an_error_naming_its_file_and_line(setup, tmp_path, text,
                                                                         message):
    """The word list and the word LM come from the one checked ARPA reader of NgramLM: a
    truncated or edited file is an error at its line, not a shorter lexicon. A word that writes
    ``▁`` failed in the tokenizer, naming the word alone, not the file it came from."""
    tokenizer, _, _ = setup
    path = tmp_path / "words.arpa"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=message):
        arpa_words(path)
    with pytest.raises(ValueError, match=message):
        load_word_lm(path, tokenizer)


def test_a_word_arpa_file_is_read_once_in_unigram_order(setup, tmp_path):
    tokenizer, _, _ = setup
    path = tmp_path / "words.arpa"
    path.write_text(WORD_ARPA)
    assert arpa_words(path) == ["CAT", "SAT"]
    lm = load_word_lm(path, tokenizer)
    reference = NgramLM.from_arpa(path, 2, symbol_to_id={"CAT": 0, "SAT": 1})
    assert lm.word_lm.probs == reference.probs and lm.word_lm.backoffs == reference.backoffs
    assert lm.word_lm.log_prob(lm.word_lm.advance(lm.word_lm.init_state(), 0), 1) == (
        pytest.approx(-0.1 * math.log(10.0)))


class _HandTokenizer:
    """Seven pieces and a spelling for each word, written out: the lexicon is known exactly."""

    PIECES = ["<blk>", "<unk>", "\u2581A", "B", "\u2581B", "C", "\u2581C"]
    SPELLINGS = {"AB": [2, 3], "A": [2], "ABC": [2, 3, 5], "BCB": [4, 5, 3], "AXB": [2, 4],
                 "Ab": [2, 3], "C": [6], "CC": [6, 5]}
    vocab_size = len(PIECES)
    unk_id = 1

    def id_to_piece(self, i: int) -> str:
        return self.PIECES[i]

    def encode(self, text: str) -> list[int]:
        return self.SPELLINGS[text]


# a unigram: P(w) = 10^x, so every token score is a sum of these, computable by hand
HAND_LOG10 = {"AB": -0.5, "A": -0.6, "ABC": -0.7, "BCB": -0.8, "AXB": -0.9, "Ab": -1.1,
              "C": "-inf", "CC": -1.2}
HAND_ARPA = "\\data\\\nngram 1=10\n\n\\1-grams:\n-99 <s>\n-1.0 </s>\n" + "".join(
    f"{p} {w}\n" for w, p in HAND_LOG10.items()) + "\n\\end\\\n"


def _hand_lm(directory) -> LexiconWordLM:
    path = directory / "hand.arpa"
    path.write_text(HAND_ARPA)
    return load_word_lm(path, _HandTokenizer())


@pytest.fixture
def hand_lm(tmp_path) -> LexiconWordLM:
    return _hand_lm(tmp_path)


def _p(word: str) -> float:
    return 10.0 ** float(HAND_LOG10[word])


def test_the_lexicon_keeps_one_word_per_spelling_of_one_word_start(tmp_path, caplog):
    """AXB's second piece starts a word (it could never be closed as one word); Ab is spelled
    like AB, listed before it, which keeps its spelling; both are skipped and named."""
    hand_lm = _hand_lm(tmp_path)
    assert hand_lm.words == ["A", "AB", "ABC", "BCB", "C", "CC"]  # by spelling
    assert "2 of 8 words skipped" in caplog.text and "AXB Ab" in caplog.text


def test_token_scores_equal_hand_computed_lexicon_masses(hand_lm):
    """Root: log of the mass of the words each first piece starts; within a word: the mass
    left for the next piece over the prefix's mass; closing A: P(A) / M(▁A) times the next
    word's first-piece mass (a unigram: the history changes nothing)."""
    log = math.log
    a_mass = _p("A") + _p("AB") + _p("ABC")
    root = hand_lm.score(hand_lm.init_state())
    assert root[2].item() == pytest.approx(log(a_mass), abs=1e-6)
    assert root[4].item() == pytest.approx(log(_p("BCB")), abs=1e-6)
    assert root[6].item() == pytest.approx(log(_p("CC")), abs=1e-6)  # P(C) = 0
    assert torch.all(root[[0, 1, 3, 5]] == -math.inf)
    after_a = hand_lm.advance(hand_lm.init_state(), 2)
    scores = hand_lm.score(after_a)
    assert scores[3].item() == pytest.approx(log((_p("AB") + _p("ABC")) / a_mass), abs=1e-6)
    close_a = log(_p("A") / a_mass)
    assert scores[2].item() == pytest.approx(close_a + log(a_mass), abs=1e-6)
    assert scores[4].item() == pytest.approx(close_a + log(_p("BCB")), abs=1e-6)
    assert torch.all(scores[[0, 1, 5]] == -math.inf)
    assert hand_lm.final_score(after_a) == pytest.approx(close_a - 1.0 * LN10, abs=1e-6)


def test_a_word_of_probability_zero_cannot_end_but_longer_words_go_on(hand_lm):
    """C (log10 -inf) is a prefix of CC: after ▁C only C continues the word; closing C or
    ending the sentence there is -inf, not a math error on log(0)."""
    after_c = hand_lm.advance(hand_lm.init_state(), 6)
    scores = hand_lm.score(after_c)
    assert scores[5].item() == pytest.approx(0.0, abs=1e-6)  # CC takes all of M(▁C)
    assert torch.all(scores[[2, 4, 6]] == -math.inf)
    assert hand_lm.final_score(after_c) == -math.inf
    after_cc = hand_lm.advance(after_c, 5)
    assert hand_lm.final_score(after_cc) == pytest.approx(-1.0 * LN10, abs=1e-6)


def test_a_word_start_after_a_prefix_that_is_no_word_is_dead(hand_lm):
    """▁B C is only the beginning of BCB: a next word cannot start there."""
    state = hand_lm.advance(hand_lm.advance(hand_lm.init_state(), 4), 5)
    assert state is not None and hand_lm.final_score(state) == -math.inf
    assert hand_lm.advance(state, 2) is None and hand_lm.advance(state, 6) is None
    assert hand_lm.advance(hand_lm.advance(state, 3), 2) is not None  # BCB, then ▁A


def test_tokens_outside_the_vocabulary_lead_to_the_dead_state(hand_lm):
    state = hand_lm.init_state()
    assert hand_lm.advance(state, hand_lm.vocab_size) is None
    assert hand_lm.advance(state, -1) is None


def test_a_word_arpa_file_without_words_is_an_error_naming_it(tmp_path):
    path = tmp_path / "empty.arpa"
    path.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-99 <s>\n-1.0 </s>\n\n\\end\\\n")
    with pytest.raises(ValueError, match=rf"{path}: the word LM lists no words"):
        load_word_lm(path, _HandTokenizer())


def test_caches_keep_the_most_recently_used_entries_up_to_their_size(setup, monkeypatch):
    """Least recently used out first: an entry used again outlives one added after it; the
    newest entry is kept; a cache holds exactly its size once full; the vector cache is at
    most 4096 entries however much memory is allowed."""
    tokenizer, lm, _ = setup
    monkeypatch.setattr(word_lm_module, "_SCORE_CACHE", 3)
    fresh = LexiconWordLM(NgramLM(lm.word_lm.probs, lm.word_lm.backoffs, lm.word_lm.vocab_size),
                          arpa_words_of(lm), tokenizer)
    assert fresh._cache_size == 4096
    states = [fresh.init_state()]
    for token in tokenizer.encode("THE CAT SAT"):
        states.append(fresh.advance(states[-1], token))
    s0, s1, s2, s3 = states[:4]
    for state in (s0, s1, s2, s0, s3):  # s0 used again before s3 comes
        fresh.score(state)
    assert list(fresh._scores) == [s2, s0, s3]
