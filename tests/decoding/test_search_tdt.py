"""TDT searchers: durations (1,) == RNN-T greedy with one symbol per frame, durations (0, 1)
with uniform duration logits == RNN-T greedy, greedy == beam 1 (a property over random models and
utterances), frames really skipped, and every final hypothesis a path of the TDT loss (scored
independently on the joiner's lattice; with an unpruned beam, the loss itself)."""

from __future__ import annotations

import pytest
import torch
from search_helpers import assert_frames_valid, encoder_output, make_model

from asr.decoding import SearchConfig, build_searcher
from asr.decoding.transducer_common import TransducerScorer
from asr.model import ASRModel

VOCAB = 7


def tdt_copy_of(rnnt: ASRModel, durations: tuple[int, ...]) -> ASRModel:
    """A TDT model with the RNN-T model's predictor and joiner; duration logits all zero."""
    tdt = make_model(transducer="tdt", durations=durations, seed=5)
    source, target = rnnt.heads["transducer"], tdt.heads["transducer"]
    with torch.no_grad():
        target.predictor.load_state_dict(source.predictor.state_dict())
        target.joiner.encoder_proj.load_state_dict(source.joiner.encoder_proj.state_dict())
        target.joiner.predictor_proj.load_state_dict(source.joiner.predictor_proj.state_dict())
        target.joiner.output.weight.zero_()
        target.joiner.output.bias.zero_()
        target.joiner.output.weight[:VOCAB] = source.joiner.output.weight
        target.joiner.output.bias[:VOCAB] = source.joiner.output.bias
    return tdt


def last_blank_log_prob(model: ASRModel, enc: torch.Tensor, tokens, frame: int) -> float:
    """log P(blank) at ``frame`` after ``tokens`` (TDT joiner, token distribution)."""
    scorer = TransducerScorer(model.heads["transducer"])
    with torch.no_grad():
        pred, state = scorer.initial(1, "cpu")
        for token in tokens:
            pred, state = scorer.predict(torch.tensor([token]), state)
        token_lp, _ = scorer.log_probs(scorer.project_encoder(enc[frame : frame + 1]), pred)
    return float(token_lp[0, scorer.blank_id])


def test_tdt_with_durations_one_equals_rnnt_greedy_with_one_symbol_per_frame():
    """Every TDT decision consumes one frame: RNN-T greedy limited to one symbol per frame, on
    all frames but the last, where TDT can only take the final blank (a token there would land
    on T, and the loss' paths end with a blank landing on T)."""
    rnnt = make_model(transducer="full")
    tdt = tdt_copy_of(rnnt, durations=(1,))
    enc, enc_lens = encoder_output([12, 7, 9])
    expected = build_searcher("transducer_greedy", rnnt, SearchConfig(max_symbols_per_frame=1))
    got = build_searcher("tdt_greedy", tdt)(enc, enc_lens)
    for b, (e, g) in enumerate(zip(expected(enc, enc_lens - 1), got)):
        assert g[0].tokens == e[0].tokens and g[0].frames == e[0].frames
        last = last_blank_log_prob(tdt, enc[b], g[0].tokens, int(enc_lens[b]) - 1)
        assert g[0].score == pytest.approx(e[0].score + last, abs=1e-5)  # log P(duration 1) = 0
    assert sum(len(g[0].tokens) for g in got) > 5


@pytest.mark.parametrize("max_symbols", [1, 3])
def test_tdt_with_durations_zero_one_equals_rnnt_greedy(max_symbols):
    """Equal duration logits: a token takes duration 0 (stays), blank duration 1: RNN-T, with
    the token that reaches ``max_symbols`` on a frame taking duration 1 where RNN-T moves on
    after it. Except on the last frame, where a token may not move (it would land on T):
    there TDT emits at most ``max_symbols - 1`` tokens, the first ones of RNN-T."""
    rnnt = make_model(transducer="pruned")
    tdt = tdt_copy_of(rnnt, durations=(0, 1))
    enc, enc_lens = encoder_output([12, 7, 9])
    cfg = SearchConfig(max_symbols_per_frame=max_symbols)
    expected = build_searcher("transducer_greedy", rnnt, cfg)(enc, enc_lens)
    got = build_searcher("tdt_greedy", tdt, cfg)(enc, enc_lens)
    for e, g, length in zip(expected, got, enc_lens.tolist()):
        e_pairs = list(zip(e[0].frames, e[0].tokens))
        g_pairs = list(zip(g[0].frames, g[0].tokens))
        before = [pair for pair in e_pairs if pair[0] < length - 1]
        on_last = [pair for pair in e_pairs if pair[0] == length - 1]
        assert g_pairs == before + on_last[: max_symbols - 1]
    assert any(len(set(g[0].frames)) < len(g[0].frames) for g in got) == (max_symbols > 1)


def random_tdt(durations: tuple[int, ...], seed: int, vocab: int = VOCAB) -> ASRModel:
    """A random TDT model (stateless or LSTM predictor) with random duration biases."""
    predictor = "lstm" if seed % 2 else "stateless"
    model = make_model(
        transducer="tdt", durations=durations, seed=100 + seed, predictor=predictor, vocab=vocab
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bias = model.heads["transducer"].joiner.output.bias
        bias[-len(durations) :] += torch.randn(len(durations), generator=generator)
    return model


def random_utterances(seed: int, count: int, max_frames: int = 24):
    """``count`` encoder outputs of 1..max_frames frames, at a random scale in [0.5, 3]."""
    generator = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, max_frames + 1, (count,), generator=generator).tolist()
    scale = 0.5 + 2.5 * float(torch.rand(1, generator=generator))
    return encoder_output(lens, seed=seed, scale=scale)


@pytest.mark.parametrize("max_symbols", [1, 2, 3])
@pytest.mark.parametrize("durations", [(0, 1, 2), (0, 1, 2, 3, 4), (1, 2, 3)], ids=str)
def test_beam_of_one_is_greedy_on_random_utterances(durations, max_symbols):
    """240 utterances (8 random models x 30): same tokens, frames and score. (Before, the beam
    filed moves that reached the end as finished although they were not among the best, merged
    collisions that the max_symbols guard created, and so diverged on ~1 utterance in 3.)"""
    cfg = SearchConfig(beam_size=1, max_symbols_per_frame=max_symbols)
    checked = 0
    for seed in range(8):
        model = random_tdt(durations, seed)
        enc, enc_lens = random_utterances(seed, 30)
        greedy = build_searcher("tdt_greedy", model, cfg)(enc, enc_lens)
        beam = build_searcher("tdt_beam", model, cfg)(enc, enc_lens)
        for g, b in zip(greedy, beam):
            assert (g[0].tokens, g[0].frames) == (b[0].tokens, b[0].frames), (seed, checked)
            assert g[0].score == pytest.approx(b[0].score, abs=1e-4), (seed, checked)
            checked += 1
        assert_frames_valid(greedy, enc_lens)
    assert checked == 240


def biased_tdt(duration_bias: list[float]) -> ASRModel:
    model = make_model(transducer="tdt", durations=(0, 1, 2, 3, 4))
    with torch.no_grad():
        model.heads["transducer"].joiner.output.bias[VOCAB:] += torch.tensor(duration_bias)
    return model


@pytest.mark.parametrize("name", ["tdt_greedy", "tdt_beam"])
def test_frames_are_skipped_by_the_predicted_duration(name, monkeypatch):
    """Duration 4 almost always predicted: decisions only on frames 0, 4, 8, 12, 16 and one
    joiner call each; on frame 16 of 17 only duration 1 can still land on the last frame (the
    next most likely duration, so the final blank takes it)."""
    model = biased_tdt([-30.0, -5.0, -30.0, -30.0, 30.0])
    enc, enc_lens = encoder_output([17])
    joiner = model.heads["transducer"].joiner
    calls = []
    original = joiner.join
    monkeypatch.setattr(
        joiner, "join", lambda a, b, *bias: calls.append(a.shape[0]) or original(a, b, *bias)
    )
    hyps = build_searcher(name, model, SearchConfig(beam_size=2, nbest=2))(enc, enc_lens)[0]
    assert all(frame % 4 == 0 for hyp in hyps for frame in hyp.frames)
    assert len(calls) == 5  # frames 0, 4, 8, 12, 16


def test_beam_search_scores_at_least_the_greedy_score_with_a_wide_beam():
    model = biased_tdt([0.0, 1.0, 1.5, 1.5, 2.0])
    enc, enc_lens = encoder_output([14, 10])
    greedy = build_searcher("tdt_greedy", model)(enc, enc_lens)
    beam = build_searcher("tdt_beam", model, SearchConfig(beam_size=8, nbest=3))(enc, enc_lens)
    for g, b in zip(greedy, beam):
        assert b[0].score >= g[0].score - 1e-5
        assert len({h.tokens for h in b}) == len(b)


@pytest.mark.parametrize("durations", [(0, 1, 2), (0, 1, 2, 3, 4), (1, 2, 3)], ids=str)
def test_wider_beam_scores_at_least_beam_one_on_average(durations):
    """Beam 4 against beam 1 (= greedy) on 90 random utterances: better on average, and here
    never worse (hypotheses that skipped ahead keep their places in the beam)."""
    gains = []
    for seed in range(3):
        model = random_tdt(durations, seed)
        enc, enc_lens = random_utterances(seed, 30)
        one = build_searcher("tdt_beam", model, SearchConfig(beam_size=1))(enc, enc_lens)
        four = build_searcher("tdt_beam", model, SearchConfig(beam_size=4))(enc, enc_lens)
        gains += [b[0].score - a[0].score for a, b in zip(one, four)]
    assert sum(gains) / len(gains) > 0.1
    assert min(gains) > -1e-4


# --- Search finals are paths of the TDT loss ---------------------------------------------------
#
# The loss (asr.losses.tdt) sums the alignments that end with a blank landing exactly on the last
# frame T. Each search result is checked against the joiner's full (T, U + 1) lattice for its
# tokens (head.joiner on head.predict(tokens), not the searches' incremental path).


def lattice_log_probs(model: ASRModel, enc: torch.Tensor, tokens) -> tuple[torch.Tensor, ...]:
    """Token and duration log-probs (T, U + 1, V), (T, U + 1, K) of one utterance enc (T, D)."""
    head = model.heads["transducer"]
    with torch.no_grad():
        logits = head.joiner(enc[None], head.predict(torch.tensor([tokens], dtype=torch.long)))[0]
    vocab = head.vocab_size
    return torch.log_softmax(logits[..., :vocab], -1), torch.log_softmax(logits[..., vocab:], -1)


def alignment_log_probs(model, enc, tokens, frames, durations) -> list[float]:
    """Log-probability of every complete TDT alignment (ending with a blank landing on T) that
    emits ``tokens`` on ``frames``, enumerated."""
    token_lp, dur_lp = lattice_log_probs(model, enc, tokens)
    num_frames, found = enc.shape[0], []

    def walk(t: int, u: int, score: float) -> None:
        for i, d in enumerate(durations):
            if u < len(tokens) and frames[u] == t and t + d < num_frames:
                walk(t + d, u + 1, score + float(token_lp[t, u, tokens[u]] + dur_lp[t, u, i]))
            if d >= 1 and t + d <= num_frames and (u == len(tokens) or frames[u] >= t + d):
                blank = score + float(token_lp[t, u, 0] + dur_lp[t, u, i])
                if t + d == num_frames:
                    if u == len(tokens):
                        found.append(blank)
                else:
                    walk(t + d, u, blank)

    walk(0, 0, 0.0)
    return found


def tdt_nll(model: ASRModel, enc: torch.Tensor, tokens) -> float:
    """The TDT loss of ``tokens`` on one utterance enc (T, D) (inf if no alignment)."""
    head = model.heads["transducer"]
    with torch.no_grad():
        out = head.loss(
            enc[None],
            torch.tensor([enc.shape[0]]),
            torch.tensor([tokens]).long().reshape(1, -1),
            torch.tensor([len(tokens)]),
        )
    return float("inf") if out.metrics["num_infinite"] else float(out.loss)


@pytest.mark.parametrize("durations", [(0, 1, 2), (1, 2, 3), (0, 2, 3)], ids=str)
def test_greedy_and_beam_finals_are_loss_paths(durations):
    """Greedy (offline and chunk by chunk) and beam 1 return one complete alignment and its exact
    log-probability; beam 4 returns sums of complete alignments, at most the loss of the tokens.
    (Before, a search could end with a token, or a jump past T, without the final blank.) With
    durations (0, 2, 3), T = 1 cannot be reached: no alignment, score -inf."""
    from test_streaming import run_chunks

    from asr.decoding import build_streaming_searcher

    checked = 0
    for seed in range(3):
        model = random_tdt(durations, seed)
        enc, enc_lens = random_utterances(seed, 8, max_frames=9)
        cfg = SearchConfig(beam_size=4, nbest=4, max_symbols_per_frame=2)
        one = SearchConfig(beam_size=1, max_symbols_per_frame=2)
        streaming = build_streaming_searcher("tdt_greedy", model, one)
        results = {
            "greedy": [h[0] for h in build_searcher("tdt_greedy", model, one)(enc, enc_lens)],
            "beam 1": [h[0] for h in build_searcher("tdt_beam", model, one)(enc, enc_lens)],
            "beam 4": build_searcher("tdt_beam", model, cfg)(enc, enc_lens),
        }
        if 1 in durations:  # a stream can always end; with (0, 2, 3) only offline knows T
            results["stream"] = streaming.finalize(run_chunks(streaming, enc, enc_lens, [2, 3]))
        for name, hyps in results.items():
            for b, found in enumerate(hyps):
                length = int(enc_lens[b])
                for hyp in found if isinstance(found, list) else [found]:
                    paths = alignment_log_probs(
                        model, enc[b, :length], hyp.tokens, hyp.frames, durations
                    )
                    if not paths:
                        assert hyp.score == float("-inf") and hyp.tokens == (), (name, seed, b)
                        continue
                    if name == "beam 4":  # merged alignments: between one of them and all
                        assert min(paths) - 1e-4 <= hyp.score
                        assert hyp.score <= -tdt_nll(model, enc[b, :length], hyp.tokens) + 1e-4
                    else:
                        assert min(abs(hyp.score - p) for p in paths) < 1e-4, (name, seed, b)
                    checked += 1
    assert checked > 100


def kept_alignments_log_prob(model, enc, tokens, durations, max_symbols: int) -> float:
    """Log of the summed probabilities of the complete TDT alignments of ``tokens`` that keep
    the ``max_symbols_per_frame`` rule (a token that would be the ``max_symbols``-th on its
    frame may not take duration 0), enumerated; -inf if there is none."""
    token_lp, dur_lp = lattice_log_probs(model, enc, tokens)
    num_frames, found = enc.shape[0], []

    def walk(t: int, u: int, on_frame: int, score: float) -> None:
        for i, d in enumerate(durations):
            stays = d == 0 and on_frame + 1 >= max_symbols
            if u < len(tokens) and t + d < num_frames and not stays:
                token = score + float(token_lp[t, u, tokens[u]] + dur_lp[t, u, i])
                walk(t + d, u + 1, on_frame + 1 if d == 0 else 0, token)
            if d >= 1 and t + d <= num_frames:
                blank = score + float(token_lp[t, u, 0] + dur_lp[t, u, i])
                if t + d < num_frames:
                    walk(t + d, u, 0, blank)
                elif u == len(tokens):
                    found.append(blank)

    walk(0, 0, 0, 0.0)
    return float(torch.logsumexp(torch.tensor(found), 0)) if found else float("-inf")


@pytest.mark.parametrize(
    "durations, frames, max_symbols, vocab",
    [((0, 1, 2), 2, 3, 3), ((1, 2, 3), 5, 1, 4), ((0, 2), 4, 3, 3), ((0, 1, 2), 3, 2, 3),
     ((0, 1), 3, 1, 3)],
    ids=str,
)
def test_unpruned_beam_sums_exactly_the_alignments_of_the_loss(
    durations, frames, max_symbols, vocab
):
    """A beam that never drops a move gives each token sequence the sum of its alignments
    that keep max_symbols_per_frame (a token that is the max_symbols-th on its frame must
    move), enumerated: -loss for the sequences none of whose alignments breaks the rule (fewer
    tokens than max_symbols, or no duration 0). So merging live hypotheses by tokens and frame,
    without their count of tokens on that frame, loses no alignment and admits no other. Every
    sequence with such an alignment is found (up to one token longer than the longest found),
    and no other."""
    import itertools

    model = random_tdt(durations, 3, vocab)
    enc = torch.randn(1, frames, 16, generator=torch.Generator().manual_seed(2))
    enc_lens = torch.tensor([frames])
    cfg = SearchConfig(beam_size=100000, nbest=100000, max_symbols_per_frame=max_symbols)
    hyps = build_searcher("tdt_beam", model, cfg)(enc, enc_lens)[0]
    scores = {h.tokens: h.score for h in hyps}
    assert len(scores) == len(hyps)
    short = max_symbols - 1 if 0 in durations else frames
    longest = max(len(tokens) for tokens in scores) + 1  # one length past the longest found
    binding = 0
    for length in range(longest + 1):
        for tokens in itertools.product(range(1, vocab), repeat=length):
            kept = kept_alignments_log_prob(model, enc[0], tokens, durations, max_symbols)
            assert scores.get(tokens, float("-inf")) == pytest.approx(kept, abs=1e-4), tokens
            if len(tokens) <= short:
                assert kept == pytest.approx(-tdt_nll(model, enc[0], tokens), abs=1e-4)
            elif kept > float("-inf") and kept < -tdt_nll(model, enc[0], tokens) - 1e-3:
                binding += 1  # the rule cuts some of its alignments
    assert binding > 0 or 0 not in durations


@pytest.mark.parametrize("bonus, norm", [(1.0, 0.0), (0.0, 1.0), (0.7, 0.5)])
def test_unpruned_beam_ranks_the_loss_with_bonus_and_length_norm(bonus, norm):
    """As above ((0, 1, 2), 3 frames, vocabulary 3): every token sequence whose alignments the
    beam all keeps scores ``(-loss + bonus * L) / (L + 1) ** norm``, and the n-best is ranked by
    that score (the pruning bound, invalid when scores can grow, is off)."""
    model = random_tdt((0, 1, 2), 3, 3)
    enc = torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(2))
    cfg = SearchConfig(
        beam_size=100000, nbest=100000, insertion_bonus=bonus, length_norm=norm
    )
    hyps = build_searcher("tdt_beam", model, cfg)(enc, torch.tensor([3]))[0]
    scores = [h.score for h in hyps]
    assert scores == sorted(scores, reverse=True)
    checked = 0
    for hyp in hyps:
        if len(hyp.tokens) <= 2:  # max_symbols_per_frame 3: no alignment of it is cut
            exact = (-tdt_nll(model, enc[0], hyp.tokens) + bonus * len(hyp.tokens))
            assert hyp.score == pytest.approx(exact / (len(hyp.tokens) + 1) ** norm, abs=1e-4)
            checked += 1
    assert checked == 1 + 2 + 4


@pytest.mark.parametrize("durations", [(0, 1, 2), (1, 2, 3)], ids=str)
def test_beam_of_one_with_length_norm_is_greedy_normalised(durations):
    """Beam 1 ranks a single finished hypothesis: greedy's tokens and frames, its score divided
    by (L + 1) ** length_norm."""
    cfg = SearchConfig(beam_size=1, length_norm=0.7)
    model = random_tdt(durations, 1)
    enc, enc_lens = random_utterances(1, 20)
    greedy = build_searcher("tdt_greedy", model, cfg)(enc, enc_lens)
    beam = build_searcher("tdt_beam", model, cfg)(enc, enc_lens)
    for g, b in zip(greedy, beam):
        assert (g[0].tokens, g[0].frames) == (b[0].tokens, b[0].frames)
        expected = g[0].score / (len(g[0].tokens) + 1) ** 0.7
        assert b[0].score == pytest.approx(expected, abs=1e-4)
