"""Token n-gram LM from ARPA against hand-computed probabilities; shallow fusion in the CTC
prefix beam search (weight 0 changes nothing, a real weight changes the ranking) and in the
transducer modified beam search (against brute-force enumeration of the fused scores)."""

from __future__ import annotations

import gzip
import math
import re

import pytest
import torch
from search_helpers import encoder_output, make_model

from asr.decoding import LanguageModel, NgramLM, SearchConfig, build_searcher
from asr.decoding.ctc_prefix_beam import CtcPrefixBeamSearch
from asr.decoding.lm import BOS, EOS, check_lm_file

ARPA = """
\\data\\
ngram 1=5
ngram 2=4

\\1-grams:
-99 <s> -0.5
-0.6 </s>
-0.4 2 -0.3
-0.7 3 -0.2
-1.0 <unk>

\\2-grams:
-0.2 <s> 2
-0.3 2 3
-0.5 3 </s>
-0.1 2 2

\\end\\
"""
LN10 = math.log(10.0)


@pytest.fixture
def lm(tmp_path) -> NgramLM:
    path = tmp_path / "lm.arpa"
    path.write_text(ARPA)
    return NgramLM.from_arpa(path, vocab_size=7)


def test_ngram_probabilities_by_hand(lm):
    assert isinstance(lm, LanguageModel)
    start = lm.init_state()
    after_2 = lm.advance(start, 2)
    after_3 = lm.advance(after_2, 3)
    cases = [
        (start, 2, -0.2),  # listed bigram
        (start, 3, -0.5 - 0.7),  # back-off(<s>) + P(3)
        (after_2, 3, -0.3),
        (after_2, 2, -0.1),
        (after_2, 4, -0.3 - 1.0),  # 4 is not a unigram: <unk>
        (after_3, 2, -0.2 - 0.4),
        (after_3, 3, -0.2 - 0.7),
    ]
    for state, token, log10_prob in cases:
        assert lm.log_prob(state, token) == pytest.approx(log10_prob * LN10)
        assert float(lm.score(state)[token]) == pytest.approx(log10_prob * LN10, abs=1e-5)
    assert lm.final_score(after_3) == pytest.approx(-0.5 * LN10)
    assert lm.final_score(after_2) == pytest.approx((-0.3 - 0.6) * LN10)
    assert lm.log_prob(start, EOS) == pytest.approx((-0.5 - 0.6) * LN10)
    assert lm.advance(lm.advance(after_3, 4), 2) == (2,)  # histories reduced to n-grams


def test_arpa_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.arpa"
    path.write_text("\\data\\\nngram 1=1\n\\1-grams:\n-0.1 hello\n\\end\\\n")
    with pytest.raises(ValueError, match=r"bad.arpa:4: word 'hello'"):
        NgramLM.from_arpa(path, vocab_size=7)
    assert NgramLM.from_arpa(path, 7, symbol_to_id={"hello": 3}).log_prob((), 3) == pytest.approx(
        -0.1 * LN10
    )


BIGRAMS = ARPA.split("\\2-grams:")[0]


@pytest.mark.parametrize(
    "text, message",
    [
        (BIGRAMS, r"bad.arpa: no \\end\\ after line 12"),  # cut after the unigrams
        (ARPA.replace("-0.1 2 2\n", ""), r"bad.arpa:18: the 2-grams section has 3 entries but "
         r"\\data\\ declares 4"),  # an n-gram lost in the middle
        (ARPA.replace("-0.4 2", "x.4 2"), r"bad.arpa:9: a log10 probability .* no number"),
        (ARPA.replace("2 -0.3", "2 -0.3e"), r"bad.arpa:9: a log10 probability .* no number"),
        (ARPA.replace("\\2-grams:", "\\two-grams:"), r"bad.arpa:13: unexpected section"),
        (ARPA.replace("\\2-grams:", "\\3-grams:"), r"bad.arpa:13: unexpected section"),
        (ARPA.replace("-0.4 2", "0.4 2"), r"bad.arpa:9: positive log10 probability 0.4"),
        (ARPA.replace("-0.1 2 2", "-0.1 2 3"), r"bad.arpa:17: the 2-gram '2 3' is listed twice"),
        (ARPA.replace("-0.4 2 -0.3", "-0.4 9 -0.3"), r"bad.arpa: NgramLM: token ids \[9\] are "
         "outside the vocabulary of 7"),
        ("", r"bad.arpa: no \\data\\ section"),
        (b"\x1f\x8b\x08\x00 gzip", r"bad.arpa: corrupt or truncated gzip data after 0 lines"),
        (b"\x1f\x8c\x08\x00 gzip", r"bad.arpa:1: not UTF-8 text"),
        (ARPA.replace("-0.7 3", "nan 3"), r"bad.arpa:10: .* NaN or \+inf: 'nan 3"),
        (ARPA.replace("2 -0.3", "2 nan"), r"bad.arpa:9: .* NaN or \+inf: '-0.4 2 nan'"),
        (ARPA.replace("2 -0.3", "2 inf"), r"bad.arpa:9: .* NaN or \+inf: '-0.4 2 inf'"),
        (ARPA.replace("-0.7 3", "-0.7 -4"), r"bad.arpa:10: word '-4' is not a token id"),
        (ARPA.replace("-0.7 3", "-0.7 -1"), r"bad.arpa:10: word '-1' is not a token id"),
        (ARPA.replace("ngram 2=4", "ngram 3=4").replace("\\2-grams:", "\\3-grams:")
         .replace("-0.2 <s> 2", "-0.2 <s> 2 2").replace("-0.3 2 3", "-0.3 2 3 3")
         .replace("-0.5 3 </s>", "-0.5 3 </s> </s>").replace("-0.1 2 2", "-0.1 2 2 3"),
         r"bad.arpa: \\data\\ declares the orders \[1, 3\]"),
    ],
    ids=["truncated", "count", "prob", "backoff", "section", "order", "positive", "twice",
         "vocab", "empty", "corrupt-gzip", "binary", "nan-prob", "nan-backoff", "inf-backoff",
         "negative-id", "id-of-start", "skipped-order"],
)
def test_a_malformed_arpa_file_is_an_error_naming_its_file_and_line(tmp_path, text, message):
    """Reading as KenLM does: the \\data\\ counts hold (a truncated or edited file is no
    smaller LM), every field is a number, probabilities are at most 1, an n-gram is listed once."""
    path = tmp_path / "bad.arpa"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=message):
        NgramLM.from_arpa(path, vocab_size=7)


@pytest.mark.parametrize("name", ["lm.arpa.gz", "lm.arpa"])
def test_a_gzip_compressed_arpa_file_is_read_as_kenlm_reads_it(tmp_path, name):
    """``lm.arpa.gz`` was refused as 'not UTF-8 text'; gzip is told by its first bytes, so a
    compressed file under a plain name is read too, with the checks of a plain file."""
    plain = tmp_path / "plain.arpa"
    plain.write_text(ARPA)
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + ARPA.encode()))
    lm, expected = NgramLM.from_arpa(path, vocab_size=7), NgramLM.from_arpa(plain, vocab_size=7)
    assert (lm.probs, lm.backoffs) == (expected.probs, expected.backoffs)
    words = re.sub(r"(?<= )([23])(?=[ \n])", lambda m: {"2": "HE", "3": "SAID"}[m[1]], ARPA)
    path.write_bytes(gzip.compress(words.encode()))
    word_lm, vocabulary = NgramLM.from_word_arpa(path)
    assert vocabulary == ["HE", "SAID"] and word_lm.probs[(BOS, 0)] == pytest.approx(-0.2 * LN10)
    # what is wrong inside the compressed text is reported as in a plain file, by line
    path.write_bytes(gzip.compress(ARPA.replace("-0.1 2 2\n", "").encode()))
    with pytest.raises(ValueError, match=rf"{name}:18: the 2-grams section has 3 entries"):
        NgramLM.from_arpa(path, vocab_size=7)


def test_a_truncated_or_corrupt_gzip_arpa_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "lm.arpa.gz"
    data = gzip.compress(ARPA.encode())
    for bad in (data[: len(data) // 2], data[:-4] + b"\0\0\0\0",  # cut; a wrong length
                data[:10] + bytes(b ^ 0x55 for b in data[10:-8]) + data[-8:]):  # corrupt
        path.write_bytes(bad)
        with pytest.raises(ValueError, match=r"lm\.arpa\.gz: corrupt or truncated gzip data "
                           r"after \d+ lines \(.+\); not a complete ARPA file"):
            NgramLM.from_arpa(path, vocab_size=7)


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["plain", "byte-order-mark"])
def test_an_arpa_file_may_have_crlf_lines_and_text_before_its_data(tmp_path, bom):
    path = tmp_path / "lm.arpa"
    path.write_bytes(bom + ("written by a tool\n" + ARPA).replace("\n", "\r\n").encode())
    lm = NgramLM.from_arpa(path, vocab_size=7)
    assert lm.log_prob(lm.init_state(), 3) == pytest.approx((-0.5 - 0.7) * LN10)
    if bom:  # the mark is not text before the data: the \data\ line is the file's first
        path.write_bytes(bom + ARPA.lstrip().encode())
        assert NgramLM.from_arpa(path, vocab_size=7).order == 2


def test_an_arpa_file_whose_preamble_shows_the_format_is_read_from_its_data(tmp_path):
    """The CMU-Cambridge toolkit (Sphinx's LMs) writes a preamble describing the format, with its
    own ``\\1-grams:`` lines, before ``\\data\\``; SRILM reads from ``\\data\\`` on, this
    reader refused the file as 'not an ARPA file'."""
    preamble = ("This LM was written by a tool that describes the format first:\n"
                "\\1-grams:\np_1 wd_1 bo_wt_1\n\\2-grams:\np_2 wd_1 wd_2\n"
                "end of data mark: \\end\\\n")
    path = tmp_path / "lm.arpa"
    path.write_text(preamble + ARPA)
    lm = NgramLM.from_arpa(path, vocab_size=7)
    assert lm.order == 2
    assert lm.log_prob(lm.init_state(), 3) == pytest.approx((-0.5 - 0.7) * LN10)
    path.write_text(preamble)
    with pytest.raises(ValueError, match=r"lm.arpa: no \\data\\ section; not an ARPA file"):
        NgramLM.from_arpa(path, vocab_size=7)


PRUNED = """
\\data\\
ngram 1=5
ngram 2=2
ngram 3=2

\\1-grams:
-99 <s> -0.5
-0.6 </s>
-0.4 2 -0.3
-0.7 3 -0.2
-0.9 4

\\2-grams:
-0.3 2 3 -0.25
-0.5 3 4

\\3-grams:
-0.05 2 3 4
-0.15 3 2 4

\\end\\
"""


def arpa_log10(history: tuple[int, ...], word: int, probs: dict, backoffs: dict) -> float:
    """The ARPA back-off rule written out: the listed n-gram, else the history's back-off weight
    (0 when unlisted) plus the word's probability after the history's shorter suffix."""
    if history + (word,) in probs:
        return probs[history + (word,)]
    if not history:
        return probs[("<unk>",)] if ("<unk>",) in probs else -23.0 / LN10
    return backoffs.get(history, 0.0) + arpa_log10(history[1:], word, probs, backoffs)


def arpa_table(text: str) -> tuple[dict[tuple, float], dict[tuple, float]]:
    """The log10 probabilities and back-off weights an ARPA text lists, by n-gram (token ids as
    ints): a reference read written out, for the back-off rule tests."""
    probs, backoffs, order = {}, {}, 0
    for line in text.splitlines():
        fields = line.split()
        if line.startswith("\\"):
            order = int(line[1]) if line.endswith("-grams:") else 0
        elif fields and order:
            gram = tuple(int(w) if w.isdigit() else w for w in fields[1 : order + 1])
            probs[gram] = float(fields[0])
            if len(fields) == order + 2:
                backoffs[gram] = float(fields[-1])
    return probs, backoffs


def test_an_ngram_whose_history_is_not_listed_is_reached_as_kenlm_reaches_it(tmp_path):
    """Pruning leaves the 3-gram '3 2 4' without its 2-gram '3 2': the history '3 2' is still a
    state (back-off weight 0), so P(4 | 3 2) is the listed 3-gram, as KenLM completes the file.
    Every probability after every history equals the back-off rule written out."""
    path = tmp_path / "pruned.arpa"
    path.write_text(PRUNED)
    lm = NgramLM.from_arpa(path, vocab_size=6)
    probs, backoffs = arpa_table(PRUNED)
    assert probs[(3, 2, 4)] == -0.15 and backoffs[(2, 3)] == -0.25 and (3, 2) not in probs
    state = lm.advance(lm.advance(lm.init_state(), 3), 2)
    assert lm.log_prob(state, 4) == pytest.approx(-0.15 * LN10)
    for first in range(2, 6):
        for second in range(2, 6):
            state = lm.advance(lm.advance(lm.init_state(), first), second)
            for word in [*range(1, 6), EOS]:
                key = "</s>" if word == EOS else word
                expected = arpa_log10((first, second), key, probs, backoffs) * LN10
                assert lm.log_prob(state, word) == pytest.approx(expected), (first, second, word)
                if word != EOS:
                    assert float(lm.score(state)[word]) == pytest.approx(expected, abs=1e-5)


DEEPLY_PRUNED = """
\\data\\
ngram 1=5
ngram 2=1
ngram 3=0
ngram 4=1

\\1-grams:
-99 <s> -0.1
-0.6 </s>
-0.4 2 -0.3
-0.7 3 -0.2
-0.8 4 -0.2

\\2-grams:
-0.2 <s> 2

\\3-grams:

\\4-grams:
-0.05 3 4 2 3

\\end\\
"""


def test_an_ngram_whose_shorter_histories_are_pruned_too_is_reached(tmp_path):
    """The 4-gram '3 4 2 3' is listed while neither '3 4' nor '3 4 2' is (pruning removed both):
    every prefix of its history is a state with back-off weight 0 (SRILM and KenLM look the
    4-gram up), not only '3 4 2'; dropping '3 4' to '4' lost the listed 4-gram on the way."""
    path = tmp_path / "pruned.arpa"
    path.write_text(DEEPLY_PRUNED)
    lm = NgramLM.from_arpa(path, vocab_size=5)
    state = lm.init_state()
    for token in (3, 4, 2):
        state = lm.advance(state, token)
    assert state == (3, 4, 2)
    assert lm.log_prob(state, 3) == pytest.approx(-0.05 * LN10)
    assert float(lm.score(state)[3]) == pytest.approx(-0.05 * LN10, abs=1e-5)
    state = lm.advance(lm.advance(lm.advance(lm.init_state(), 2), 4), 2)  # no 4-gram: backs off
    assert lm.log_prob(state, 3) == pytest.approx((-0.3 - 0.7) * LN10)


def test_a_word_lm_read_as_a_token_lm_is_an_error_naming_the_unit_option(tmp_path):
    """A word ARPA (``asr lm --unit word``) given with search.lm_unit=token: the error says what
    to set, not the Python argument (symbol_to_id) no configuration can pass."""
    path = tmp_path / "words.arpa"
    path.write_text("\\data\\\nngram 1=2\n\\1-grams:\n-0.3 </s>\n-0.1 HELLO\n\\end\\\n")
    with pytest.raises(ValueError, match=r"words.arpa:5: word 'HELLO' is not a token id.*"
                                         r"search.lm_unit=word") as err:
        NgramLM.from_arpa(path, vocab_size=7)
    assert "symbol_to_id" not in str(err.value)


def test_the_score_cache_of_a_token_lm_stays_within_its_budget(lm):
    """A server decodes stream after stream with one LM: its cache of (V,) score vectors, one per
    LM state ever scored, grew without bound; it keeps what fits in ``cache_bytes``."""
    assert lm.cache_limit is not None
    assert lm.cache_limit * 4 * lm.vocab_size <= 256 * 2**20
    small = NgramLM(lm.probs, lm.backoffs, lm.vocab_size, cache_bytes=4 * lm.vocab_size * 20)
    assert small.cache_limit == 20
    states = [()]
    for _ in range(3):  # every history of up to 3 tokens: 1 + 5 + 25 + 125 states
        states += [state + (token,) for state in states for token in range(1, 6)]
    states = list(dict.fromkeys(states))
    for state in states:
        assert torch.equal(small.score(state), lm.score(state))
        assert len(small._cache) <= 20
    assert len(lm._cache) <= lm.cache_limit


def test_lm_weight_zero_leaves_results_unchanged(lm):
    model = make_model(ctc=True)
    enc, enc_lens = encoder_output([15, 9])
    cfg = SearchConfig(beam_size=4, nbest=4, lm_weight=0.0)
    plain = build_searcher("ctc_prefix_beam", model, cfg)(enc, enc_lens)
    fused = build_searcher("ctc_prefix_beam", model, cfg, lm=lm)(enc, enc_lens)
    assert fused == plain


def test_lm_weight_changes_the_ranking(lm, tmp_path):
    """Acoustics slightly prefer (2, 4); the LM strongly prefers 3 after 2."""
    probs = torch.full((3, 7), 1e-4)
    probs[0, 2], probs[1, 0] = 1.0, 1.0
    probs[2, 4], probs[2, 3] = 0.5, 0.45
    log_probs = torch.log(probs / probs.sum(-1, keepdim=True))
    model = make_model(ctc=True)
    head = model.heads["ctc"]
    plain = CtcPrefixBeamSearch(head, SearchConfig(beam_size=4)).search(log_probs)
    fused = CtcPrefixBeamSearch(head, SearchConfig(beam_size=4, lm_weight=0.5), lm).search(
        log_probs
    )
    assert plain[0].tokens == (2, 4) and fused[0].tokens == (2, 3)
    path = tmp_path / "lm.arpa"
    path.write_text(ARPA)
    cfg = SearchConfig(beam_size=4, lm_weight=0.5, lm_path=path)
    searcher = build_searcher("ctc_prefix_beam", model, cfg)
    assert searcher.search(log_probs)[0] == fused[0]


@pytest.mark.parametrize("unit", ["token", "word"])
def test_a_missing_lm_file_is_named_as_search_lm_path(tmp_path, unit):
    """`asr transcribe --set search.lm_path=lm.arpa` with no such file said only "[Errno 2] No
    such file or directory: 'lm.arpa'", naming no setting."""
    model = make_model(ctc=True)
    missing = tmp_path / "lm.arpa"
    cfg = SearchConfig(beam_size=2, lm_weight=0.5, lm_path=missing, lm_unit=unit)
    with pytest.raises(ValueError, match=f"^search.lm_path {re.escape(str(missing))}: no such "
                                         f"LM file$"):
        build_searcher("ctc_prefix_beam", model, cfg)


@pytest.mark.parametrize(
    ("name", "heads"),
    [("attention_rescoring", dict(ctc=True, aed=True)),
     ("attention_rescoring", dict(aed=True, transducer="pruned")),
     ("cif_rescoring", dict(ctc=True, cif=True))],
)
def test_a_rescoring_searcher_fuses_the_lm_it_is_given_in_its_first_pass(lm, tmp_path, monkeypatch,
                                                                        name, heads):
    """The LM of a rescoring searcher fuses in its first pass: ``searcher_lm`` gave None for it,
    so a runtime that reads the LM once and builds the searcher per call with hotwords read the
    ARPA file again on every call, and an LM passed as ``lm=`` was dropped (the first pass read
    ``search.lm_path``, or fused nothing)."""
    from asr.decoding.registry import searcher_lm

    path = tmp_path / "lm.arpa"
    path.write_text(ARPA)
    reads = []
    original = NgramLM.from_arpa.__func__

    def counted(cls, *args, **kwargs):
        reads.append(args[0])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(NgramLM, "from_arpa", classmethod(counted))
    model = make_model(**heads)
    cfg = SearchConfig(beam_size=3, lm_weight=0.5, lm_path=path)
    read = searcher_lm(name, model, cfg)
    assert isinstance(read, NgramLM) and reads == [path]
    for _ in range(2):
        assert build_searcher(name, model, cfg, lm=read).first_pass.lm is read
    assert reads == [path]
    given = build_searcher(name, model, SearchConfig(beam_size=3, lm_weight=0.5), lm=lm)
    assert given.first_pass.lm is lm
    assert searcher_lm(name, model, SearchConfig(lm_weight=0.5)) is None


def test_a_searcher_that_fuses_no_lm_says_that_the_lm_given_is_not_used(lm, tmp_path, caplog):
    """ESPnet fuses an LM in attention beam search; here aed_beam (and greedy search) decoded
    without the LM of search.lm_path and said nothing, as if it had been used."""
    path = tmp_path / "lm.arpa"
    path.write_text(ARPA)
    model = make_model(ctc=True, aed=True)
    fused = SearchConfig(beam_size=2, lm_weight=0.5, lm_path=path)
    for name in ("aed_beam", "ctc_greedy"):
        caplog.clear()
        build_searcher(name, model, fused)
        assert f"searcher {name!r} fuses no LM" in caplog.text
    caplog.clear()
    build_searcher("aed_beam", model, SearchConfig(beam_size=2), lm=lm)
    assert "fuses no LM" in caplog.text
    caplog.clear()
    build_searcher("aed_beam", model, SearchConfig(beam_size=2, lm_path=path))  # weight 0
    for name in ("ctc_prefix_beam", "attention_rescoring"):
        build_searcher(name, model, fused)
    assert "fuses no LM" not in caplog.text


@pytest.mark.parametrize("name, loss", [("transducer_beam", "pruned"), ("tdt_beam", "tdt")])
def test_transducer_beams_lm_weight_zero_leaves_results_unchanged(lm, name, loss):
    model = make_model(transducer=loss)
    enc, enc_lens = encoder_output([12, 7])
    cfg = SearchConfig(beam_size=4, nbest=4, lm_weight=0.0)
    plain = build_searcher(name, model, cfg)(enc, enc_lens)
    assert build_searcher(name, model, cfg, lm=lm)(enc, enc_lens) == plain


class ForbiddingLM:
    """A token LM that forbids token 3 (log-probability -inf), uniform over the others."""

    vocab_size = 7

    def init_state(self) -> tuple:
        return ()

    def score(self, state: tuple) -> torch.Tensor:
        scores = torch.full((self.vocab_size,), -math.log(self.vocab_size - 1))
        scores[3] = -math.inf
        return scores

    def advance(self, state: tuple, token: int) -> tuple:
        return ()

    def final_score(self, state: tuple) -> float:
        return 0.0


@pytest.mark.parametrize("name, heads", [("ctc_prefix_beam", dict(ctc=True)),
                                         ("transducer_beam", dict(transducer="pruned")),
                                         ("tdt_beam", dict(transducer="tdt"))])
def test_lm_weight_zero_leaves_results_unchanged_even_where_the_lm_forbids(name, heads):
    """lm_weight 0 means no LM: a token the LM forbids (-inf, a word LM's word outside its
    lexicon) stays possible, as without the LM (0 * -inf must not reach a score)."""
    model = make_model(**heads)
    enc, enc_lens = encoder_output([12, 7])
    cfg = SearchConfig(beam_size=4, nbest=4, lm_weight=0.0)
    plain = build_searcher(name, model, cfg)(enc, enc_lens)
    assert any(3 in h.tokens for nbest in plain for h in nbest)
    assert build_searcher(name, model, cfg, lm=ForbiddingLM())(enc, enc_lens) == plain


class NoEndLM:
    """A token LM under which no hypothesis can end (as a word LM mid-word): every token -1.0,
    end of sentence -inf. Fused with weight w it is an insertion bonus of -w, plus -inf."""

    vocab_size = 7

    def init_state(self) -> tuple:
        return ()

    def score(self, state: tuple) -> torch.Tensor:
        return torch.full((self.vocab_size,), -1.0)

    def advance(self, state: tuple, token: int) -> tuple:
        return ()

    def final_score(self, state: tuple) -> float:
        return -math.inf


@pytest.mark.parametrize("name, heads, norm", [("transducer_beam", dict(transducer="pruned"), 0.5),
                                               ("tdt_beam", dict(transducer="tdt"), 0.5),
                                               ("ctc_prefix_beam", dict(ctc=True), 0.5)])
def test_hypotheses_that_cannot_end_are_ranked_by_their_score_so_far(name, heads, norm):
    """When no hypothesis can end (every final score -inf) the n-best is still ranked, by the
    score so far as the final ranking would take it (length-normalised): the order of the same
    search with the LM's token scores as an insertion bonus and no LM (merged hypotheses'
    probabilities summed there too), all scores -inf."""
    model = make_model(**heads)
    enc, enc_lens = encoder_output([12, 9], scale=2.0)
    cfg = dict(beam_size=6, nbest=6, length_norm=norm)
    fused = build_searcher(name, model, SearchConfig(lm_weight=0.5, **cfg), lm=NoEndLM())
    plain = build_searcher(name, model, SearchConfig(insertion_bonus=-0.5, **cfg))
    for got, expected in zip(fused(enc, enc_lens), plain(enc, enc_lens)):
        assert [h.tokens for h in got] == [h.tokens for h in expected]
        assert all(h.score == -math.inf for h in got)


def lm_total(lm: NgramLM, tokens: tuple[int, ...]) -> float:
    """LM log-probability of ``tokens`` followed by </s>."""
    state, score = lm.init_state(), 0.0
    for token in tokens:
        score += lm.log_prob(state, token)
        state = lm.advance(state, token)
    return score + lm.final_score(state)


def one_symbol_per_frame_scores(model, enc: torch.Tensor) -> dict[tuple[int, ...], float]:
    """log(sum over one-symbol-per-frame alignments of the transducer probability) of every
    token sequence, by enumerating the V^T label paths of one utterance enc (1, T, D)."""
    import itertools

    from asr.decoding.base import log_add
    from asr.decoding.transducer_common import TransducerScorer

    scorer = TransducerScorer(model.heads["transducer"])
    enc_proj = scorer.project_encoder(enc)[0]
    am: dict[tuple[int, ...], float] = {}
    with torch.no_grad():
        for labels in itertools.product(range(scorer.vocab_size), repeat=enc.shape[1]):
            tokens: tuple[int, ...] = ()
            pred, state = scorer.initial(1, "cpu")
            total = 0.0
            for frame, label in enumerate(labels):
                token_lp, _ = scorer.log_probs(enc_proj[frame : frame + 1], pred)
                total += float(token_lp[0, label])
                if label != 0:
                    tokens += (label,)
                    pred, state = scorer.predict(torch.tensor([label]), state)
            am[tokens] = log_add(am[tokens], total) if tokens in am else total
    return am


@pytest.mark.parametrize("weight", [0.3, 1.5])
def test_transducer_beam_with_lm_equals_brute_force_fusion(lm, weight):
    """With a beam wide enough to never prune, modified beam search with shallow fusion finds
    argmax over token sequences of log(sum over one-symbol-per-frame alignments of the
    transducer probability) + weight * (LM log-probability incl. </s>), enumerated here."""
    model = make_model(transducer="full")
    enc, enc_lens = encoder_output([3], seed=4, scale=3.0)
    am = one_symbol_per_frame_scores(model, enc)
    fused = {tokens: score + weight * lm_total(lm, tokens) for tokens, score in am.items()}
    best = max(fused, key=fused.get)
    assert max(am, key=am.get) != best or weight < 1  # the strong LM changes the winner
    cfg = SearchConfig(beam_size=400, lm_weight=weight)
    hyp = build_searcher("transducer_beam", model, cfg, lm=lm)(enc, enc_lens)[0][0]
    assert hyp.tokens == best
    assert hyp.score == pytest.approx(fused[best], abs=1e-4)


@pytest.mark.parametrize(
    "weight, bonus, norm", [(0.0, 1.5, 0.0), (0.8, 0.0, 1.0), (0.8, 2.0, 0.0), (0.8, 1.0, 0.5)]
)
def test_transducer_beam_bonus_and_length_norm_equal_brute_force(lm, weight, bonus, norm):
    """The whole n-best of an unpruned modified beam search (every one of the 259 token
    sequences of <= 3 tokens, beam 400) ranked by ``(AM + weight * LM + bonus * L) /
    (L + 1) ** norm``, each score computed here; the options change the winner."""
    model = make_model(transducer="full")
    enc, enc_lens = encoder_output([3], seed=4, scale=3.0)
    am = one_symbol_per_frame_scores(model, enc)

    def expected(tokens, bonus, norm):
        fused = am[tokens] + weight * lm_total(lm, tokens) + bonus * len(tokens)
        return fused / (len(tokens) + 1) ** norm

    ranked = sorted(am, key=lambda tokens: expected(tokens, bonus, norm), reverse=True)
    assert ranked[0] != max(am, key=lambda tokens: expected(tokens, 0.0, 0.0))
    cfg = SearchConfig(
        beam_size=400, nbest=len(am), lm_weight=weight, insertion_bonus=bonus, length_norm=norm
    )
    hyps = build_searcher("transducer_beam", model, cfg, lm=lm)(enc, enc_lens)[0]
    assert [h.tokens for h in hyps] == ranked
    assert [h.score for h in hyps] == pytest.approx(
        [expected(tokens, bonus, norm) for tokens in ranked], abs=1e-4
    )


def test_transducer_beam_lm_vocabulary_must_match(lm):
    model = make_model(transducer="pruned", vocab=9)
    with pytest.raises(ValueError, match="LM vocabulary 7 differs from the transducer head's 9"):
        build_searcher("transducer_beam", model, SearchConfig(lm_weight=0.5), lm=lm)


def two_frame_tdt_scores(lm: NgramLM, model) -> dict[tuple[int, ...], tuple[float, float]]:
    """Two frames, durations (1, 2): a path ends with a blank landing on frame 2, so the
    complete paths are: blank for 2 frames, or blank then blank (both: the empty hypothesis,
    log-added), or a token for 1 frame then blank; a token on frame 1 would land on or past
    the end. Per token sequence: (transducer log-probability, LM log-probability incl. </s>),
    computed by hand for encoder_output([2], seed=5, scale=3.0)."""
    from asr.decoding.base import log_add
    from asr.decoding.transducer_common import TransducerScorer

    enc, _ = encoder_output([2], seed=5, scale=3.0)
    scorer = TransducerScorer(model.heads["transducer"])
    with torch.no_grad():
        enc_proj = scorer.project_encoder(enc)[0]
        start_pred, start_state = scorer.initial(1, "cpu")
        token_lp, dur_lp = scorer.log_probs(enc_proj[:1], start_pred)

        def final_blank(pred):  # blank of duration 1 on frame 1
            lp, dp = scorer.log_probs(enc_proj[1:2], pred)
            return float(lp[0, 0] + dp[0, 0])

        blank0 = float(token_lp[0, 0])
        two_blanks = blank0 + float(dur_lp[0, 0]) + final_blank(start_pred)
        empty = log_add(blank0 + float(dur_lp[0, 1]), two_blanks)
        scores = {(): (empty, lm_total(lm, ()))}
        for token in range(1, 7):
            pred, _ = scorer.predict(torch.tensor([token]), start_state)
            am = float(token_lp[0, token] + dur_lp[0, 0]) + final_blank(pred)
            scores[(token,)] = (am, lm_total(lm, (token,)))
    return scores


def test_tdt_beam_fuses_token_and_end_of_sentence_scores(lm):
    """The n-best of :func:`two_frame_tdt_scores` is every label with the transducer
    log-probability plus ``weight * LM`` (the token after <s>, then </s>)."""
    weight = 0.7
    model = make_model(transducer="tdt", durations=(1, 2))
    enc, enc_lens = encoder_output([2], seed=5, scale=3.0)
    expected = {
        tokens: am + weight * lm_score
        for tokens, (am, lm_score) in two_frame_tdt_scores(lm, model).items()
    }
    cfg = SearchConfig(beam_size=8, nbest=7, lm_weight=weight)  # 8 moves from frame 0
    hyps = build_searcher("tdt_beam", model, cfg, lm=lm)(enc, enc_lens)[0]
    assert {h.tokens: h.score for h in hyps} == pytest.approx(expected, abs=1e-5)
    assert [h.tokens for h in hyps] == sorted(expected, key=expected.get, reverse=True)


@pytest.mark.parametrize("bonus, norm", [(3.0, 0.0), (0.0, 1.0), (1.5, 0.5)])
def test_tdt_beam_bonus_and_length_norm_by_hand(lm, bonus, norm):
    """:func:`two_frame_tdt_scores` ranked by ``(AM + weight * LM + bonus * L) /
    (L + 1) ** norm``: the empty hypothesis, best without the options, loses to a token."""
    weight = 0.7
    model = make_model(transducer="tdt", durations=(1, 2))
    enc, enc_lens = encoder_output([2], seed=5, scale=3.0)
    scores = two_frame_tdt_scores(lm, model)
    plain = {tokens: am + weight * lm_score for tokens, (am, lm_score) in scores.items()}
    expected = {
        tokens: (value + bonus * len(tokens)) / (len(tokens) + 1) ** norm
        for tokens, value in plain.items()
    }
    assert max(plain, key=plain.get) == () and max(expected, key=expected.get) != ()
    cfg = SearchConfig(
        beam_size=8, nbest=7, lm_weight=weight, insertion_bonus=bonus, length_norm=norm
    )
    hyps = build_searcher("tdt_beam", model, cfg, lm=lm)(enc, enc_lens)[0]
    assert {h.tokens: h.score for h in hyps} == pytest.approx(expected, abs=1e-5)
    assert [h.tokens for h in hyps] == sorted(expected, key=expected.get, reverse=True)


def test_check_lm_file_refuses_a_path_that_is_no_file_naming_the_option(tmp_path):
    """The one check of an LM file's existence, which asr export-package and asr train
    --decode-arg each wrote for themselves with messages of their own."""
    check_lm_file(None)
    (tmp_path / "lm.arpa").write_text("\\data\\\n")
    check_lm_file(tmp_path / "lm.arpa")
    for path in (tmp_path / "none.arpa", tmp_path):
        with pytest.raises(ValueError, match=f"^search.lm_path {re.escape(str(path))}: no such "
                                             "LM file$"):
            check_lm_file(path)


def test_a_relative_lm_path_not_found_names_the_working_directory(tmp_path, monkeypatch):
    """``search.lm_path`` was the one path of a config whose relative value not found said
    nothing of the directory it was looked for in (``search.hotwords_file`` and the data paths
    do: ``config_path_hint``); a caller that says where itself (the recipe) passes
    ``hint=False``."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as caught:
        check_lm_file("lang/none.arpa")
    assert str(caught.value) == (
        f"search.lm_path lang/none.arpa: no such LM file in the working directory {tmp_path} (a "
        "relative path in search.lm_path: run from the directory the config's paths are "
        "relative to (a recipe's --work-dir), or give an absolute path)")
    with pytest.raises(ValueError, match=r"^search.lm_path lang/none.arpa: no such LM file$"):
        check_lm_file("lang/none.arpa", hint=False)


WITH_UNK_NGRAMS = """
\\data\\
ngram 1=5
ngram 2=5
ngram 3=1

\\1-grams:
-99 <s> -0.3
-0.6 </s>
-0.5 1 -0.4
-0.7 2 -0.2
-1.5 <unk> -0.35

\\2-grams:
-0.1 1 <unk> -0.15
-0.2 <unk> 2
-0.9 <s> <unk>
-0.45 2 1
-0.25 <unk> </s>

\\3-grams:
-0.05 1 <unk> 1

\\end\\
"""


def kenlm_log10(words: tuple, probs: dict, backoffs: dict, order: int, unigrams: set) -> float:
    """log10 P(sentence) as KenLM scores it, written out: a word that is no unigram is <unk>,
    then each word takes the ARPA back-off rule after its last order - 1 words."""
    known = ["<s>"] + [w if w in unigrams else "<unk>" for w in words] + ["</s>"]
    return sum(arpa_log10(tuple(known[max(0, i - order + 1) : i]), known[i], probs, backoffs)
               for i in range(1, len(known)))


def test_a_token_that_is_no_unigram_is_unk_after_the_longest_listed_history(tmp_path):
    """Token 3 is no unigram: KenLM scores it as <unk>, so P(3 | 1) is the listed '1 <unk>'
    (-0.1), not back-off(1) + P(<unk>) (-1.9), and the state after it has <unk> in its history
    ('<unk> 2', '1 <unk> 1'). Every sentence of up to three tokens over 1..4 scores as KenLM
    would, through log_prob and through the score vectors."""
    path = tmp_path / "unk.arpa"
    path.write_text(WITH_UNK_NGRAMS)
    lm = NgramLM.from_arpa(path, vocab_size=5)
    probs, backoffs = arpa_table(WITH_UNK_NGRAMS)
    unigrams = {gram[0] for gram in probs if len(gram) == 1}
    after_1 = lm.advance(lm.init_state(), 1)
    assert lm.log_prob(after_1, 3) == pytest.approx(-0.1 * LN10)
    assert float(lm.score(after_1)[3]) == pytest.approx(-0.1 * LN10, abs=1e-5)
    sentences = [()] + [(a,) for a in range(1, 5)]
    sentences += [(a, b) for a in range(1, 5) for b in range(1, 5)]
    sentences += [(a, b, c) for a in range(1, 5) for b in range(1, 5) for c in range(1, 5)]
    for words in sentences:
        by_log_prob = by_score = 0.0
        state = lm.init_state()
        for word in words:
            by_log_prob += lm.log_prob(state, word)
            by_score += float(lm.score(state)[word])
            state = lm.advance(state, word)
        by_log_prob += lm.final_score(state)
        by_score += lm.final_score(state)
        expected = kenlm_log10(words, probs, backoffs, 3, unigrams) * LN10
        assert by_log_prob == pytest.approx(expected), words
        assert by_score == pytest.approx(expected, abs=1e-4), words


@pytest.mark.parametrize("unk", [True, False])
def test_a_token_of_a_longer_ngram_that_is_no_unigram_is_refused_as_kenlm_refuses_it(tmp_path,
                                                                                     unk):
    """An ARPA file's 1-grams list its whole vocabulary (KenLM refuses a word that appears
    only in longer n-grams). Token 2 below is in '1 2' alone: with <unk> in the file, the
    beam searches' score vectors gave P(2 | 1) the listed '1 2' while log_prob (final and
    rescoring scores) took 2 as <unk> and backed off, two different LMs in one search."""
    path = tmp_path / "lm.arpa"
    unk_line = "-1.0\t<unk>\n" if unk else ""
    path.write_text(
        f"\\data\\\nngram 1={3 + unk}\nngram 2=2\n\n\\1-grams:\n-1.0\t<s>\t-0.5\n-1.0\t</s>\n"
        f"{unk_line}-1.0\t1\t-0.3\n\n\\2-grams:\n-0.1\t1 2\n-0.2\t<s> 1\n\n\\end\\\n")
    with pytest.raises(ValueError, match=re.escape(
            f"{path}: NgramLM: token ids [2] are in longer n-grams but no unigram")):
        NgramLM.from_arpa(path, vocab_size=4)
