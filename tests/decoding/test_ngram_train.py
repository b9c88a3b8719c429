"""Modified Kneser-Ney estimation against a direct, recursive implementation of the smoothing
formulas; normalisation; the ARPA round trip through NgramLM; the ``asr lm`` CLI."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest

from asr.decoding.lm import BOS, EOS, UNK, NgramLM
from asr.decoding.ngram_train import estimate_kneser_ney, write_arpa

VOCAB = (1, 2, 3, 4, 5)


def _corpus(seed: int, num: int = 40) -> list[list[int]]:
    rng = random.Random(seed)
    # skewed, so counts of 1..4+ all occur and some tokens (5) are rare
    return [rng.choices(VOCAB, weights=(8, 5, 3, 2, 0.3), k=rng.randint(1, 6)) for _ in range(num)]


class DirectKneserNey:
    """The interpolated modified Kneser-Ney model written straight from its definition
    (Chen & Goodman 1998), recomputing every quantity from the raw n-gram counts."""

    def __init__(self, corpus: list[list[int]], order: int, vocab: tuple[int, ...]) -> None:
        self.order = order
        self.raw: Counter[tuple[int, ...]] = Counter()
        for sentence in corpus:
            words = [BOS, *sentence, EOS]
            for end in range(1, len(words)):
                for n in range(1, min(order, end + 1) + 1):
                    self.raw[tuple(words[end + 1 - n : end + 1])] += 1
        self.words = sorted(set(vocab) | {t for s in corpus for t in s})
        self.discounts = {n: self._discount(n) for n in range(1, order + 1)}

    def adjusted(self, gram: tuple[int, ...]) -> int:
        if len(gram) == self.order or gram[0] == BOS:
            return self.raw[gram]
        return sum(1 for other in self.raw if len(other) == len(gram) + 1 and other[1:] == gram)

    def _discount(self, n: int) -> tuple[float, float, float]:
        counts = Counter(self.adjusted(g) for g in self.raw if len(g) == n)
        t = [counts[k] for k in (1, 2, 3, 4)]
        y = t[0] / (t[0] + 2 * t[1]) if t[0] + 2 * t[1] else 0.5  # the documented fallback
        y = min(max(y, 1e-3), 0.999)
        result = []
        for k in (1, 2, 3):
            value = k - (k + 1) * y * t[k] / t[k - 1] if t[k - 1] else float("nan")
            result.append(value if 0 < value <= k else y)
        return tuple(result)

    def prob(self, history: tuple[int, ...], word: int) -> float:
        if not history:
            lower = 1.0 / (len(self.words) + 2)
        else:
            lower = self.prob(history[1:], word)
        n = len(history) + 1
        followers = {g: self.adjusted(g) for g in self.raw if len(g) == n and g[:-1] == history}
        total = sum(followers.values())
        if total == 0:  # unseen history: the lower order alone
            return lower
        d = self.discounts[n]
        gamma = sum(d[min(c, 3) - 1] for c in followers.values()) / total
        count = followers.get(history + (word,), 0)
        own = (count - d[min(count, 3) - 1]) / total if count else 0.0
        return own + gamma * lower


def _histories(order: int) -> list[tuple[int, ...]]:
    result = [()]
    for length in range(1, order):
        for body in itertools.product(VOCAB, repeat=length):
            result.append(body)
            result.append((BOS,) + body[1:])
    return sorted(set(result))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_backoff_model_equals_direct_interpolated_kneser_ney(order):
    corpus = _corpus(seed=order)
    estimate = estimate_kneser_ney(corpus, order, vocab=VOCAB)
    direct = DirectKneserNey(corpus, order, VOCAB)
    for n in range(1, order + 1):
        assert estimate.discounts[n - 1] == pytest.approx(direct.discounts[n])
    for history in _histories(order):
        for word in (*VOCAB, EOS):
            expected = math.log(direct.prob(history, word))
            assert estimate.log_prob(history, word) == pytest.approx(expected, abs=1e-9), (
                history,
                word,
            )


@pytest.mark.parametrize("order", [1, 3, 4])
def test_every_history_is_a_distribution(order):
    estimate = estimate_kneser_ney(_corpus(seed=7), order, vocab=(*VOCAB, 6))
    for history in _histories(order):
        total = sum(math.exp(estimate.log_prob(history, w)) for w in (*VOCAB, 6, EOS, UNK))
        assert total == pytest.approx(1.0, abs=1e-9), history
    assert estimate.log_prob((), 6) < estimate.log_prob((), 4)  # unseen < seen


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unk_in_the_sentences_is_counted_as_the_unknown_word(order):
    """``<unk>`` written in the training text (KenLM counts it so) is a word of the n-gram,
    once in the uniform distribution; every history is still a distribution."""
    corpus = [[*s[:2], UNK, *s[2:]] for s in _corpus(seed=11)]
    estimate = estimate_kneser_ney(corpus, order, vocab=VOCAB)
    for history in _histories(order):
        total = sum(math.exp(estimate.log_prob(history, w)) for w in (*VOCAB, EOS, UNK))
        assert total == pytest.approx(1.0, abs=1e-9), history
    unseen = estimate_kneser_ney(_corpus(seed=11), order, vocab=VOCAB)
    assert estimate.log_prob((), UNK) > unseen.log_prob((), UNK)
    with pytest.raises(ValueError, match=r"token ids must be >= 0 \(or <unk>\), got \[-2\]"):
        estimate_kneser_ney([[1, EOS]], order)


def test_continuation_counts_favour_words_with_many_left_neighbours():
    """2 follows only 1 (often); 3 follows four different words once each: Kneser-Ney's
    unigram prefers 3 although 2 is more frequent."""
    corpus = [[1, 2]] * 6 + [[1, 3], [2, 3], [4, 3], [5, 3]]
    estimate = estimate_kneser_ney(corpus, 2)
    assert estimate.log_prob((5,), 3) > estimate.log_prob((5,), 2)
    assert estimate.log_prob((4,), 2) < estimate.log_prob((4,), 3)


@pytest.mark.parametrize("order", [3, 4])
def test_arpa_round_trip_through_ngram_lm(tmp_path, order):
    """Order 4 also checks that NgramLM keeps a 2-token history at the sentence start."""
    corpus = _corpus(seed=3)
    estimate = estimate_kneser_ney(corpus, order, vocab=VOCAB)
    path = tmp_path / "lm" / "token_3gram.arpa"
    write_arpa(estimate, path)
    assert not list(path.parent.glob("*.tmp"))
    lm = NgramLM.from_arpa(path, vocab_size=len(VOCAB) + 1)
    assert lm.order == order
    for history in _histories(order):
        state = lm.init_state() if history[:1] == (BOS,) else ()
        for token in history[1:] if history[:1] == (BOS,) else history:
            state = lm.advance(state, token)
        full = history if history[:1] == (BOS,) else history
        for word in VOCAB:
            assert lm.log_prob(state, word) == pytest.approx(
                estimate.log_prob(full, word), abs=1e-5
            )
        assert lm.final_score(state) == pytest.approx(estimate.log_prob(full, EOS), abs=1e-5)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="order must be >= 1"):
        estimate_kneser_ney([[1]], 0)
    with pytest.raises(ValueError, match="no sentences"):
        estimate_kneser_ney([], 2)
    with pytest.raises(ValueError, match=r"token ids must be >= 0 \(or <unk>\), got \[-4\]"):
        estimate_kneser_ney([[1, -4]], 2)


def test_cli_trains_a_token_lm(tmp_path):
    from asr.cli.main import main
    from asr.tokenizers.bpe import train_bpe

    texts = ["THE CAT SAT ON THE MAT", "A DOG SAT ON A LOG", "THE DOG ATE THE CAT FOOD"] * 40
    lang = tmp_path / "lang"
    tokenizer = train_bpe(texts, lang, 40)
    text_file = tmp_path / "train.txt"
    text_file.write_text("\n".join(texts) + "\n\n")
    out = tmp_path / "lm.arpa"
    args = ["lm", "--transcripts", str(text_file), "--tokenizer-dir", str(lang), "--order", "3"]
    assert main([*args, "--output", str(out)]) == 0
    lm = NgramLM.from_arpa(out, vocab_size=tokenizer.vocab_size)
    state = lm.init_state()
    for token in tokenizer.encode("THE CAT SAT ON THE"):
        state = lm.advance(state, token)
    best = int(lm.score(state).argmax())
    assert tokenizer.decode([best]).strip() in {"MAT", "M", "MA"}
    assert main([*args, "--output", str(out)]) == 0  # exists: kept
    missing = ["--transcripts", str(tmp_path / "nope.txt"), "--tokenizer-dir", str(lang)]
    assert main(["lm", *missing, "--output", str(tmp_path / "x.arpa")]) == 2



@pytest.mark.parametrize(
    ("options", "message"),
    [([], "--unit token needs --tokenizer-dir"),
     (["--unit", "word", "--order", "0"], "--order must be >= 1, got 0")],
)
def test_cli_option_errors_come_before_the_transcripts_are_read(tmp_path, monkeypatch, caplog,
                                                                 options, message):
    """An LM corpus is large (LibriSpeech's: 800M words): a missing --tokenizer-dir or a bad
    --order was reported only after every transcript had been read (the order as 'n-gram
    order must be >= 1', naming no option)."""
    import asr.cli.lm
    from asr.cli.main import main

    reads = []
    monkeypatch.setattr(asr.cli.lm, "read_transcripts", lambda paths: reads.append(paths) or [])
    text = tmp_path / "train.txt"
    text.write_text("THE CAT\n")
    args = ["lm", "--transcripts", str(text), "--output", str(tmp_path / "lm.arpa"), *options]
    assert main(args) == 2
    assert reads == [] and message in caplog.text


def test_cli_token_lm_gives_every_token_but_blank_a_unigram(tmp_path):
    """Tokens the text never uses (here <unk>) share the unigram mass too, blank gets none:
    from <s>, the tokens, </s> and <unk> of the written LM sum to 1."""
    from asr.cli.main import main
    from asr.tokenizers.bpe import train_bpe

    texts = ["THE CAT SAT ON THE MAT", "A DOG SAT ON A LOG"] * 20
    lang, text_file, out = tmp_path / "lang", tmp_path / "train.txt", tmp_path / "lm.arpa"
    tokenizer = train_bpe(texts, lang, 30)
    text_file.write_text("\n".join(texts) + "\n")
    assert main(["lm", "--transcripts", str(text_file), "--tokenizer-dir", str(lang),
                 "--order", "2", "--output", str(out)]) == 0
    lm = NgramLM.from_arpa(out, vocab_size=tokenizer.vocab_size)
    listed = {gram[0] for gram in lm.probs if len(gram) == 1 and gram[0] >= 0}
    assert listed == set(range(tokenizer.vocab_size)) - {tokenizer.blank_id}
    state = lm.init_state()
    total = sum(math.exp(lm.log_prob(state, t)) for t in (*listed, EOS, UNK))
    assert total == pytest.approx(1.0, abs=1e-4)

@pytest.mark.parametrize("unit", ["token", "word"])
def test_cli_trains_from_a_gzip_text_as_from_the_plain_one(tmp_path, unit, gzip_copies):
    """LibriSpeech's LM corpus ships as ``librispeech-lm-norm.txt.gz``, which was refused as
    'not UTF-8 text': gzip is told by the first bytes, with or without a .gz name, and the LM
    is the plain text's."""
    from asr.cli.main import main
    from asr.tokenizers.bpe import train_bpe

    texts = ["THE CAT SAT ON THE MAT", "A DOG SAT ON A LOG", "THE DOG ATE THE CAT FOOD"] * 40
    lang = tmp_path / "lang"
    train_bpe(texts, lang, 40)
    arpas = []
    for text in gzip_copies("lm-norm", ("\n".join(texts) + "\n").encode("utf-8")):
        out = tmp_path / f"{text.name}.arpa"
        unit_args = ["--tokenizer-dir", str(lang)] if unit == "token" else ["--unit", "word"]
        assert main(["lm", "--transcripts", str(text), *unit_args, "--order", "3",
                     "--output", str(out)]) == 0
        arpas.append(out.read_bytes())
    assert arpas[1] == arpas[0] and arpas[2] == arpas[0]
    assert b"\\3-grams:" in arpas[0]


def test_cli_lms_are_trained_again_when_what_made_them_changed(tmp_path, caplog):
    """A rerun of the recipes' LM stage used to keep an ARPA file made from other text, another
    order or another BPE model (whose token ids it no longer speaks)."""
    import logging

    from asr.cli.main import main
    from asr.tokenizers.bpe import train_bpe

    caplog.set_level(logging.INFO)
    texts = ["THE CAT SAT ON THE MAT", "A DOG SAT ON A LOG", "THE DOG ATE THE CAT FOOD"] * 40
    lang, text_file = tmp_path / "lang", tmp_path / "train.txt"
    train_bpe(texts, lang, 40)
    text_file.write_text("\n".join(texts) + "\n")
    token, word = tmp_path / "token.arpa", tmp_path / "word.arpa"
    token_args = ["lm", "--transcripts", str(text_file), "--tokenizer-dir", str(lang),
                  "--output", str(token)]
    word_args = ["lm", "--unit", "word", "--transcripts", str(text_file), "--output", str(word)]

    assert main([*token_args, "--order", "3"]) == 0 and main([*word_args, "--order", "2"]) == 0
    stamps = token.stat().st_mtime_ns, word.stat().st_mtime_ns
    assert main([*token_args, "--order", "3"]) == 0 and main([*word_args, "--order", "2"]) == 0
    assert (token.stat().st_mtime_ns, word.stat().st_mtime_ns) == stamps  # nothing changed: kept
    assert caplog.text.count("reusing it") == 2
    assert main([*token_args, "--order", "4"]) == 0  # another order
    assert NgramLM.from_arpa(token, vocab_size=40).order == 4
    assert "(changed: order): making it again" in caplog.text
    text_file.write_text("\n".join(texts + ["A BIRD FLEW"] * 3) + "\n")  # the text changed
    assert main([*word_args, "--order", "2"]) == 0
    assert "BIRD" in word.read_text() and "(changed: num_texts, texts_sha256)" in caplog.text
    stamp = token.stat().st_mtime_ns
    train_bpe(texts + ["A BIRD FLEW"] * 3, lang, 40)  # the token LM's tokenizer, trained again
    text_file.write_text("\n".join(texts) + "\n")
    assert main([*token_args, "--order", "4"]) == 0 and token.stat().st_mtime_ns != stamp
    assert "(changed: tokenizer_sha256)" in caplog.text
    assert NgramLM.from_arpa(token, vocab_size=40).order == 4


def test_arpa_orders_of_ten_and_more_round_trip(tmp_path):
    """ARPA section headers of two-digit orders (``\\11-grams:``) are read as such."""
    corpus = [[1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]] * 3 + [[2, 2, 3]]
    estimate = estimate_kneser_ney(corpus, 11, vocab=VOCAB)
    write_arpa(estimate, tmp_path / "lm.arpa")
    lm = NgramLM.from_arpa(tmp_path / "lm.arpa", vocab_size=6)
    assert lm.order == 11
    history = (BOS, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5)
    state = lm.init_state()
    for token in history[1:]:
        state = lm.advance(state, token)
    assert len(state) == 10
    assert lm.log_prob(state, 1) == pytest.approx(estimate.log_prob(history, 1), abs=1e-5)


@pytest.mark.parametrize("order", [2, 3])
def test_a_word_outside_the_vocabulary_is_scored_as_unk(tmp_path, order):
    """An id the estimate never listed backs off to the unigram of <unk> like <unk> itself,
    collecting every back-off weight on the way, as NgramLM reads it from the ARPA file."""
    estimate = estimate_kneser_ney(_corpus(seed=5), order, vocab=VOCAB)
    write_arpa(estimate, tmp_path / "lm.arpa")
    lm = NgramLM.from_arpa(tmp_path / "lm.arpa", vocab_size=len(VOCAB) + 1)
    for history in _histories(order):
        if history[:1] != (BOS,):
            continue
        unk = estimate.log_prob(history, UNK)
        assert estimate.log_prob(history, 99) == pytest.approx(unk, abs=1e-12), history
        state = lm.init_state()
        for token in history[1:]:
            state = lm.advance(state, token)
        assert lm.log_prob(state, 99) == pytest.approx(unk, abs=1e-5)
        if len(history) > 1:  # a seen history: its back-off weight is part of the score
            assert unk < estimate.log_probs[0][(UNK,)]


@pytest.mark.parametrize("order", [2, 3])
def test_an_id_outside_the_vocabulary_is_unk_in_every_position(tmp_path, order):
    """With <unk> seen in the text, n-grams such as '1 <unk>' and '<unk> 2' are listed: an id
    that is no unigram (99) is <unk> as predicted word and in the history (KenLM's mapping),
    in the estimate and in NgramLM reading its ARPA file alike."""
    corpus = [[*s[:2], UNK, *s[2:]] for s in _corpus(seed=11)]
    estimate = estimate_kneser_ney(corpus, order, vocab=VOCAB)
    assert any(len(gram) > 1 and gram[-1] == UNK for gram in estimate.log_probs[1])
    write_arpa(estimate, tmp_path / "lm.arpa")
    lm = NgramLM.from_arpa(tmp_path / "lm.arpa", vocab_size=100)
    for body in itertools.product((*VOCAB, UNK), repeat=order - 1):
        history = (BOS, *body)
        outside = tuple(99 if w == UNK else w for w in history)
        state = lm.init_state()
        for token in outside[1:]:
            state = lm.advance(state, token)
        for word in (*VOCAB, EOS, UNK):
            expected = estimate.log_prob(history, word)
            assert estimate.log_prob(outside, 99 if word == UNK else word) == pytest.approx(
                expected, abs=1e-12), (history, word)
            assert lm.log_prob(state, 99 if word == UNK else word) == pytest.approx(
                expected, abs=1e-5), (history, word)


def test_a_gzip_arpa_file_has_no_time_stamp(tmp_path):
    """The gzip header's MTIME is 0 (the same LM makes the same bytes whenever it is written)
    and the content is the plain file's."""
    import gzip

    estimate = estimate_kneser_ney(_corpus(seed=1), 2, vocab=VOCAB)
    write_arpa(estimate, tmp_path / "lm.arpa")
    write_arpa(estimate, tmp_path / "lm.arpa.gz")
    data = (tmp_path / "lm.arpa.gz").read_bytes()
    assert data[:2] == b"\x1f\x8b" and data[4:8] == b"\x00\x00\x00\x00"
    assert gzip.decompress(data) == (tmp_path / "lm.arpa").read_bytes()


@pytest.mark.parametrize("order", [1, 2, 3])
def test_arpa_lines_carry_a_back_off_weight_exactly_for_the_histories(tmp_path, order):
    """The back-off weights are those of the seen histories, always shorter than the order, so
    no top-order line has one; ``<s>`` is listed (at order > 1) with ARPA's -99 and its own
    weight, as the history of every sentence start. (write_arpa checked the order before the
    weight, and wrote -99 for ``<s>`` apart from its stored value: both never changed a line.)"""
    estimate = estimate_kneser_ney(_corpus(seed=5), order, vocab=VOCAB)
    assert all(0 < len(history) < order for history in estimate.backoffs)
    write_arpa(estimate, tmp_path / "lm.arpa")
    sections = (tmp_path / "lm.arpa").read_text().split("-grams:\n")[1:]
    with_weight = set()
    for n, section in enumerate(sections, start=1):
        for line in section.split("\n\n")[0].splitlines():
            fields = line.split("\t")
            assert len(fields) == 2 or (len(fields) == 3 and n < order), line
            if len(fields) == 3:
                with_weight.add(fields[1])
    names = {BOS: "<s>", EOS: "</s>", UNK: "<unk>"}
    named = {" ".join(names.get(w, str(w)) for w in h) for h in estimate.backoffs}
    assert with_weight == named
    bos = [line for line in sections[0].splitlines() if "\t<s>" in line]
    assert bos == ([] if order == 1 else
                   [f"-99.000000\t<s>\t{estimate.backoffs[(BOS,)] / math.log(10.0):.6f}"])
