"""Hotword biasing: the Aho-Corasick graph against brute force and hand-computed boosts, and
the three biasing beams against their plain runs (exactly equal with an empty list; shifted by
exactly the phrase boosts when nothing is pruned)."""

from __future__ import annotations

import argparse
import math
import random
import re

import pytest
import torch
from search_helpers import encoder_output, make_model

from asr.constants import hotword_score, hotword_score_problem
from asr.decoding import SearchConfig, build_searcher
from asr.decoding.context_graph import (
    MAX_HOTWORD_SCORE,
    MAX_HOTWORD_TOKENS,
    MAX_HOTWORDS,
    ContextGraph,
    Hotword,
    HotwordError,
    context_graph_for,
    load_hotwords,
    parse_hotwords,
)
from asr.tokenizers.char import build_char_tokenizer

VOCAB = 7  # search_helpers.VOCAB; blank 0


def occurrences(seq: list[int], phrase: list[int]) -> int:
    n = len(phrase)
    return sum(seq[i : i + n] == phrase for i in range(len(seq) - n + 1))


def walk(graph: ContextGraph, seq: list[int]) -> tuple[list[float], int]:
    """Running bonus after each token and the final state."""
    state, total, running = 0, 0.0, []
    for token in seq:
        bonus, state = graph.step(state, token)
        total += bonus
        running.append(total)
    return running, state


def test_one_phrase_hand_computed_boosts_and_a_failed_partial_match_gives_them_back():
    graph = ContextGraph([[3, 4, 5]], vocab_size=VOCAB, default_score=2.0)
    # each token of the phrase +2; completing it adds the phrase's boost (6) once more
    running, state = walk(graph, [3, 4, 5])
    assert running == [2.0, 4.0, 12.0]
    assert running[-1] + graph.finalize(state) == 6.0  # the phrase: 3 tokens x 2
    # a partial match that breaks gives its 4 back; the failing token starts nothing
    running, state = walk(graph, [3, 4, 6])
    assert running == [2.0, 4.0, 0.0] and state == 0
    # ... and a partial match left at the end is given back by finalize
    running, state = walk(graph, [1, 3, 4])
    assert running == [0.0, 2.0, 4.0] and graph.finalize(state) == -4.0
    # blank keeps the state and adds nothing
    assert graph.step(state, 0) == (0.0, state)
    # a break that starts the phrase again keeps that token's boost: 3 4 3 -> +2 +2 -2
    assert walk(graph, [3, 4, 3])[0] == [2.0, 4.0, 2.0]


def test_per_phrase_scores_and_shared_prefixes_take_the_larger_boost():
    graph = ContextGraph([[3, 4], [3, 5]], VOCAB, default_score=1.0, scores=[None, 3.0])
    assert graph.step(0, 3)[0] == 3.0  # shared edge: max(1, 3)
    running, state = walk(graph, [3, 4])
    assert running[-1] + graph.finalize(state) == 4.0  # 3 + 1
    running, state = walk(graph, [3, 5])
    assert running[-1] + graph.finalize(state) == 6.0


def test_an_unboosted_prefix_must_match_but_adds_nothing():
    graph = ContextGraph([[3, 4, 5], [6]], VOCAB, default_score=2.0, unboosted_prefix=1)
    running, state = walk(graph, [3, 4, 5])
    assert running == [0.0, 2.0, 8.0]  # the first token is free; the phrase is worth 2 x 2
    assert running[-1] + graph.finalize(state) == 4.0
    assert walk(graph, [4, 5])[0] == [0.0, 0.0]  # no match without the first token
    # 4's boost given back; the phrase (6) matched: its boost, twice until the end takes one back
    running, state = walk(graph, [3, 4, 6])
    assert running == [0.0, 2.0, 4.0] and running[-1] + graph.finalize(state) == 2.0
    # a one-token phrase keeps its boost (at most all but the last token is free)
    running, state = walk(graph, [6])
    assert running[-1] + graph.finalize(state) == 2.0


@pytest.mark.parametrize("seed", range(5))
def test_graph_equals_brute_force_occurrence_counting(seed):
    """Every prefix of a random sequence: bonus so far = boosts of the phrase occurrences
    completed + the longest partial match's tokens; at the end only the occurrences count."""
    rng = random.Random(seed)
    score = 1.5
    phrases = [[rng.randint(1, 4) for _ in range(rng.randint(1, 4))] for _ in range(6)]
    graph = ContextGraph(phrases, VOCAB, score)
    unique = [list(p) for p in {tuple(p) for p in phrases}]
    for _ in range(30):
        seq = [rng.randint(1, 5) for _ in range(rng.randint(0, 12))]
        running, state = walk(graph, seq)
        for end in range(1, len(seq) + 1):
            prefix = seq[:end]
            done = sum(occurrences(prefix, p) * len(p) * score for p in unique)
            partial = max(
                (k for k in range(end + 1) if any(p[:k] == prefix[end - k :] for p in unique)),
            )
            assert running[end - 1] == pytest.approx(done + partial * score)
        total = (running[-1] if running else 0.0) + graph.finalize(state)
        assert total == pytest.approx(sum(occurrences(seq, p) * len(p) * score for p in unique))


def test_batched_tables_equal_the_scalar_steps():
    graph = ContextGraph([[1, 2, 3], [2, 3], [3, 1]], VOCAB, 1.0, scores=[None, 2.0, 0.5])
    states = torch.arange(graph.num_states)
    deltas = graph.deltas(states)
    for s in range(graph.num_states):
        for v in range(VOCAB):
            bonus, nxt = graph.step(s, v)
            assert deltas[s, v].item() == pytest.approx(bonus)
            assert graph.advance(states[s : s + 1], torch.tensor([v])).item() == nxt


def test_hotword_format_is_sherpa_onnx_s(tmp_path):
    text = "ALPHA BETA :2.5\n\n  GAMMA  \nDELTA EPSILON\n"
    assert parse_hotwords(text) == [
        Hotword("ALPHA BETA", 2.5), Hotword("GAMMA"), Hotword("DELTA EPSILON")
    ]
    path = tmp_path / "hotwords.txt"
    path.write_text(text)
    assert load_hotwords(path) == parse_hotwords(text)
    assert load_hotwords("ALPHA BETA :2.5;GAMMA/DELTA EPSILON") == parse_hotwords(text)
    with pytest.raises(HotwordError, match="after the words"):
        parse_hotwords("ALPHA :2 BETA")
    with pytest.raises(HotwordError, match="bad score"):
        parse_hotwords("ALPHA :x")


class _CharTokenizer:
    """A-E as ids 3-7 (a stand-in for the model's tokenizer), anything else -> <unk>."""

    vocab_size, blank_id, unk_id = 8, 0, 2

    def encode(self, text: str) -> list[int]:
        return [3 + "ABCDE".index(c) if c in "ABCDE" else 2 for c in text if c != " "]

    def decode(self, ids) -> str:
        return "".join("ABCDE"[i - 3] for i in ids if i >= 3)


def test_unknown_characters_are_a_clear_error_not_a_crash():
    cfg = SearchConfig(hotwords="ABC;abx")
    with pytest.raises(HotwordError, match=r"'abx'.*does not know: 'abx'"):
        context_graph_for(cfg, _CharTokenizer())
    graph = context_graph_for(SearchConfig(hotwords="ABC;DE :3"), _CharTokenizer())
    assert graph is not None and graph.num_phrases == 2
    assert context_graph_for(SearchConfig(hotwords=" ; "), _CharTokenizer()) is None


def test_a_phrase_the_tokenizer_refuses_is_a_hotword_error_naming_it():
    """A phrase that writes ``▁`` (a word boundary to every tokenizer) is refused by the
    tokenizer with a ValueError; the graph names the hotword, with the error its callers
    document."""
    with pytest.raises(HotwordError, match="^hotword 'A\u2581B': text 'A\u2581B' holds"):
        context_graph_for(SearchConfig(hotwords="AB;A\u2581B"), build_char_tokenizer(["AB"]))


def test_a_bad_phrase_of_a_hotword_file_names_the_file_and_line(tmp_path):
    """A phrase of a hotword file that writes ``▁`` was refused by the tokenizer naming the
    phrase alone (and a bad score named no file either); now the file is read as
    read_transcripts reads one: the error names the file and the line, whichever way the
    file is given (and the file alone for a list too long)."""
    tokenizer = build_char_tokenizer(["AB"])
    path = tmp_path / "hotwords.txt"
    for text, line, what in [("AB\nA\u2581B\n", 2, "hotword 'A\u2581B': text 'A\u2581B' holds"),
                             ("AB\n\nAB :x\n", 3, "hotword 'AB :x': bad score"),
                             # the range was checked when the graph was built, naming no file
                             ("AB\nAB :1000\n", 2, r"hotword 'AB': score 1000: a per-token boost "
                                                  r"must be in \[-100, 100\]")]:
        path.write_text(text, encoding="utf-8")
        message = f"^hotwords file {re.escape(str(path))}:{line}: {what}"
        with pytest.raises(HotwordError, match=message):
            load_hotwords(path)
        with pytest.raises(HotwordError, match=message):
            context_graph_for(SearchConfig(hotwords_file=path), tokenizer)
    path.write_text("AB\n" * (MAX_HOTWORDS + 1), encoding="utf-8")
    with pytest.raises(HotwordError, match=f"^hotwords file {re.escape(str(path))}: "
                                           f"{MAX_HOTWORDS + 1} hotwords: at most"):
        load_hotwords(path)


def test_a_relative_hotwords_file_not_found_names_the_working_directory(tmp_path, monkeypatch):
    """``search.hotwords_file`` relative and run from another directory said only "does not
    exist": it names the working directory, by the rule of every config path
    (:func:`asr.config.config_path_hint`); an absolute one gets no such advice."""
    tokenizer = build_char_tokenizer(["AB"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HotwordError, match=re.escape(
            f"search.hotwords_file lists/hot.txt does not exist in the working directory "
            f"{tmp_path} (a relative path in search.hotwords_file: run from the directory the "
            f"config's paths are relative to")):
        context_graph_for(SearchConfig(hotwords_file="lists/hot.txt"), tokenizer)
    with pytest.raises(HotwordError, match=f"{re.escape(str(tmp_path / 'hot.txt'))} does not "
                                           "exist$"):
        context_graph_for(SearchConfig(hotwords_file=tmp_path / "hot.txt"), tokenizer)


def test_size_limits_are_clear_errors():
    with pytest.raises(HotwordError, match="tokens long"):
        context_graph_for(SearchConfig(hotwords="A" * (MAX_HOTWORD_TOKENS + 1)), _CharTokenizer())
    with pytest.raises(HotwordError, match="at most"):
        load_hotwords(";".join(["AB"] * (MAX_HOTWORDS + 1)))


def test_boosts_beyond_the_limit_are_clear_errors():
    """A boost of 1e38 overflowed the searchers' float32 scores: the transducer beam lost
    every hypothesis and failed the decode step (of every stream of a server's batch)."""
    tokenizer = _CharTokenizer()
    for spec, score, match in [("ABC :1e38", None,
                                r"hotword 'ABC': score 1e\+38: a per-token boost"),
                               ("ABC", -1e308, r"hotwords_score -1e\+308: a per-token boost"),
                               ("ABC :-101", None, r"score -101: .* must be in \[-100, 100\]")]:
        with pytest.raises(HotwordError, match=match):  # a stream's own hotwords_score
            context_graph_for(SearchConfig(hotwords=spec), tokenizer, hotwords_score=score)
    limit = f"ABC :{MAX_HOTWORD_SCORE};DE :-{MAX_HOTWORD_SCORE}"
    assert context_graph_for(SearchConfig(hotwords=limit), tokenizer).num_phrases == 2
    for score in (1e9, float("nan")):  # no phrase: checked as search.hotwords_score is
        with pytest.raises(HotwordError, match=r"hotwords_score .*: a per-token boost"):
            context_graph_for(SearchConfig(hotwords=" ; "), tokenizer, hotwords_score=score)


@pytest.mark.parametrize("score", [MAX_HOTWORD_SCORE, -MAX_HOTWORD_SCORE, 0.0, 100.00001, -1e308,
                                   math.inf, math.nan])
def test_the_option_and_the_graph_hold_a_boost_to_one_rule_with_one_message(score):
    """``--hotwords-score`` and the graph's boosts each wrote out ``|score| <= 100`` and its
    message; both now ask :func:`hotword_score_problem`: they take and refuse the same values,
    with its words."""
    problem = hotword_score_problem(score)
    assert (problem is None) == (abs(score) <= MAX_HOTWORD_SCORE)
    text = repr(score)
    if problem is None:
        assert hotword_score(text) == score
        assert ContextGraph.from_hotwords([Hotword("ABC")], _CharTokenizer(), score).num_phrases
        return
    with pytest.raises(argparse.ArgumentTypeError) as option:
        hotword_score(text)
    assert str(option.value) == f"{problem}, got {text!r}"
    with pytest.raises(HotwordError) as graph:
        ContextGraph.from_hotwords([Hotword("ABC")], _CharTokenizer(), score)
    assert str(graph.value) == f"hotwords_score {score:g}: {problem}"


# --- the three biasing beams -------------------------------------------------------------------

BEAMS = [
    ("transducer_beam", dict(transducer="full")),
    ("tdt_beam", dict(transducer="tdt", durations=(0, 1, 2))),
    ("ctc_prefix_beam", dict(ctc=True)),
]


@pytest.mark.parametrize("name, heads", BEAMS)
def test_an_empty_hotword_list_is_exactly_the_plain_beam(name, heads):
    model = make_model(**heads)
    enc, enc_lens = encoder_output([9, 5, 7], scale=2.0)
    cfg = SearchConfig(beam_size=4, nbest=3, blank_penalty=0.5)
    plain = build_searcher(name, model, cfg)(enc, enc_lens)
    empty = ContextGraph([], VOCAB, 1.5)
    for searcher in (
        build_searcher(name, model, SearchConfig(beam_size=4, nbest=3, blank_penalty=0.5,
                                                 hotwords=" ; ")),
        build_searcher(name, model, cfg, context=empty),
    ):
        assert searcher(enc, enc_lens) == plain  # tokens, frames and scores, exactly


@pytest.mark.parametrize("name, heads", BEAMS)
def test_one_phrase_shifts_every_hypothesis_by_its_hand_computed_boost(name, heads):
    """A few frames and a beam that keeps every hypothesis (TDT: one token per frame, 2 tokens
    at most in 3 frames): the biased search scores each token sequence exactly as the plain one
    plus its bonus: 2 x 1.25 for the phrase (3 4), 0 for a hypothesis whose partial match (3)
    broke or was left unfinished."""
    model = make_model(**heads)
    enc, enc_lens = encoder_output([3 if name == "tdt_beam" else 2], seed=3)
    cfg = SearchConfig(beam_size=VOCAB**3, nbest=VOCAB**3, max_symbols_per_frame=1)
    plain = {h.tokens: h.score for h in build_searcher(name, model, cfg)(enc, enc_lens)[0]}
    graph = ContextGraph([[3, 4]], VOCAB, default_score=1.25)
    biased = {
        h.tokens: h.score
        for h in build_searcher(name, model, cfg, context=graph)(enc, enc_lens)[0]
    }
    assert set(biased) == set(plain) and (3, 4) in plain and (3,) in plain and (3, 5) in plain
    for tokens, score in plain.items():
        expected = 2.5 if tokens == (3, 4) else 0.0
        assert biased[tokens] - score == pytest.approx(expected, abs=1e-5), tokens


@pytest.mark.parametrize("name, heads", BEAMS)
def test_a_boosted_phrase_wins(name, heads):
    """A large boost makes the phrase the best hypothesis where the plain search says other."""
    model = make_model(**heads)
    enc, enc_lens = encoder_output([6], seed=5)
    cfg = SearchConfig(beam_size=4)
    plain = build_searcher(name, model, cfg)(enc, enc_lens)[0][0].tokens
    phrase = (5, 6, 5) if plain[:3] != (5, 6, 5) else (6, 5, 6)
    graph = ContextGraph([list(phrase)], VOCAB, default_score=20.0)
    best = build_searcher(name, model, cfg, context=graph)(enc, enc_lens)[0][0].tokens
    assert any(best[i : i + 3] == phrase for i in range(len(best)))


def test_a_hotword_file_with_a_byte_order_mark_reads_its_first_phrase(tmp_path):
    """A hotwords file saved with a UTF-8 byte order mark (as some editors write) had the mark
    glued to its first phrase, which no tokenizer knows; it is read as every text file is
    (:func:`asr.fileio.read_text`), without it."""
    tokenizer = build_char_tokenizer(["AB"])
    path = tmp_path / "hotwords.txt"
    path.write_text("\ufeffAB :2\nBA\n", encoding="utf-8")
    assert [h.text for h in load_hotwords(path)] == ["AB", "BA"]
    graph = context_graph_for(SearchConfig(hotwords_file=path), tokenizer)
    assert graph is not None and graph.num_phrases == 2


def test_hotwords_without_a_phrase_are_warned_about(tmp_path, caplog):
    """An empty hotwords file (or `--hotwords ""`) biased nothing without a word, while a list
    with phrases logs its graph's size: a user could not tell the file was not the one meant."""
    path = tmp_path / "hotwords.txt"
    path.write_text("\n\n")
    assert load_hotwords(path) == []
    assert caplog.messages == [f"hotwords file {path} holds no phrases: nothing is biased"]
    caplog.clear()
    assert load_hotwords(";;") == []
    assert caplog.messages == ["hotwords ';;' hold no phrases: nothing is biased"]
    caplog.clear()
    assert load_hotwords("ALPHA") != [] and caplog.messages == []
