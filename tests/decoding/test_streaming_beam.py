"""Streaming beam searches: the chunked search is the offline search (tokens and absolute
frames exactly, scores up to the last-bit rounding of a chunk's joiner projection), with an LM
and hotwords, for streams of different lengths in one batch; each stream carries its own hotword
graph (or none) in its state."""

from __future__ import annotations

import pytest
import torch
from search_helpers import VOCAB, assert_same_hypotheses, encoder_output, make_model
from test_lm import ARPA
from test_streaming import run_chunks

from asr.decoding import NgramLM, SearchConfig, build_searcher, build_streaming_searcher
from asr.decoding.base import EMPTY_CHAIN, TokenChain
from asr.decoding.context_graph import ContextGraph
from asr.state import stack_states, unstack_states
from asr.types import Hypothesis

BEAMS = {
    "transducer_beam": dict(transducer="pruned"),
    "tdt_beam": dict(transducer="tdt"),
    "tdt_beam (0, 2, 3)": dict(transducer="tdt", durations=(0, 2, 3)),  # no duration 1
    "tdt_beam (0, 2, 4)": dict(transducer="tdt", durations=(0, 2, 4)),  # ends only at the end
    "ctc_prefix_beam": dict(ctc=True),
}
PHRASES = [[3, 4], [5, 6, 5]]


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> NgramLM:
    path = tmp_path_factory.mktemp("lm") / "lm.arpa"
    path.write_text(ARPA)
    return NgramLM.from_arpa(path, vocab_size=VOCAB)


def build(case: str, predictor: str, lm: NgramLM | None, graph: ContextGraph | None, **cfg):
    model = make_model(predictor=predictor, **BEAMS[case])
    name = case.split()[0]
    if name == "tdt_beam":  # realistic TDT: blanks mostly skip several frames
        durations = model.heads["transducer"].durations
        with torch.no_grad():
            model.heads["transducer"].joiner.output.bias[-len(durations):] += torch.linspace(
                0.0, 2.0, len(durations)
            )
    # TDT: a blank penalty that makes these random heads emit a few tokens per stream
    search = SearchConfig(beam_size=4, blank_penalty=0.3 if name != "tdt_beam" else 2.0, **cfg)
    offline = build_searcher(name, model, search, lm=lm, context=graph)
    streaming = build_streaming_searcher(name, model, search)
    # the same LM and default graph as the offline searcher's
    head = model.heads["ctc" if name == "ctc_prefix_beam" else "transducer"]
    return offline, type(streaming)(head, search, lm, graph)


FUSION = {
    "plain": dict(),
    "lm": dict(lm_weight=0.6, insertion_bonus=0.5, length_norm=0.5),
    "hotwords": dict(hotwords=True),
    "lm+hotwords": dict(lm_weight=0.4, insertion_bonus=0.3, hotwords=True),
}


@pytest.mark.parametrize("name", list(BEAMS))
@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
@pytest.mark.parametrize("fusion", list(FUSION))
@pytest.mark.parametrize("chunk_sizes", [[1], [3], [4, 2, 5]])
def test_chunked_stacked_streams_equal_offline_exactly(name, predictor, fusion, chunk_sizes, lm):
    options = dict(FUSION[fusion])
    graph = ContextGraph(PHRASES, VOCAB, 2.0) if options.pop("hotwords", False) else None
    offline, streaming = build(
        name, predictor, lm if options.get("lm_weight") else None, graph, **options
    )
    enc, enc_lens = encoder_output([24, 14, 19], scale=2.0)
    expected = [nbest[0] for nbest in offline(enc, enc_lens)]
    state = run_chunks(streaming, enc, enc_lens, chunk_sizes)
    assert_same_hypotheses(streaming.finalize(state), expected)
    assert sum(len(h.tokens) for h in expected) > 6


@pytest.mark.parametrize("name", list(BEAMS))
def test_streams_with_different_graphs_in_one_batch_each_get_their_own_biasing(name):
    """The same frames in three streams: a large boost of a phrase the plain search does not
    find wins in the stream that carries it, and only there; a stream with no graph gets the
    plain result, each equal to its stream searched alone."""
    offline, streaming = build(name, "stateless", None, None)
    enc, enc_lens = encoder_output([10], seed=5, scale=2.0)
    plain = offline(enc, enc_lens)[0][0]
    phrase = (5, 6, 5) if plain.tokens[:3] != (5, 6, 5) else (6, 5, 6)
    boosted = ContextGraph([list(phrase)], VOCAB, 20.0)
    other = ContextGraph([[4, 4, 4]], VOCAB, 0.01)
    three = enc.expand(3, -1, -1)
    state = streaming.init_state(3, enc.device, contexts=[boosted, None, other])
    results = streaming.finalize(run_chunks(streaming, three, enc_lens.expand(3), [2, 3], state))
    tokens = results[0].tokens
    assert any(tokens[i : i + 3] == phrase for i in range(len(tokens)))
    assert_same_hypotheses([results[1]], [plain])
    for graph, result in zip([boosted, None, other], results):
        alone = streaming.init_state(1, enc.device, contexts=[graph])
        assert_same_hypotheses(streaming.finalize(run_chunks(streaming, enc, enc_lens, [4], alone)),
                               [result])


@pytest.mark.parametrize("name", list(BEAMS))
def test_an_empty_hotword_list_streams_exactly_the_plain_beam(name):
    offline, streaming = build(name, "lstm", None, None)
    enc, enc_lens = encoder_output([12, 7], scale=2.0)
    plain = run_chunks(streaming, enc, enc_lens, [3])
    empty = streaming.init_state(2, enc.device, contexts=[ContextGraph([], VOCAB, 1.5)] * 2)
    assert streaming.finalize(run_chunks(streaming, enc, enc_lens, [3], empty)) == (
        streaming.finalize(plain)
    )


@pytest.mark.parametrize("name", list(BEAMS))
def test_the_beam_of_a_stream_travels_in_its_state(name):
    """Split after a chunk, stacked in the other order, stepped on: each stream as alone."""
    _, streaming = build(name, "lstm", None, ContextGraph(PHRASES, VOCAB, 1.0))
    enc, enc_lens = encoder_output([10, 10], seed=2, scale=2.0)
    state = streaming.step(enc[:, :4], torch.tensor([4, 4]), streaming.init_state(2, enc.device))
    a, b = unstack_states(state)
    swapped = stack_states([b, a])
    rest = streaming.step(enc.flip(0)[:, 4:], torch.tensor([6, 6]), swapped)
    alone = [streaming.step(enc[i : i + 1, 4:], torch.tensor([6]), s) for i, s in enumerate((a, b))]
    assert_same_hypotheses(streaming.finalize(rest), [streaming.finalize(alone[1])[0],
                                                      streaming.finalize(alone[0])[0]])
    if name == "transducer_beam":  # nothing waits: the partial result is the final one
        assert streaming.partial(rest) == streaming.finalize(rest)


def test_a_tdt_stream_holds_the_frames_its_moves_depend_on_until_they_arrive():
    """Frame by frame: a hypothesis moves on only once ``lookahead`` frames from its own have
    arrived (its allowed jumps no longer depend on the end), so the state holds the last
    1..lookahead-1 frames and every live hypothesis sits on one of them; the end is offline."""
    offline, streaming = build("tdt_beam", "lstm", None, None)
    lookahead = streaming.scorer.lookahead
    assert lookahead == 5  # durations (0, 1, 2, 3, 4)
    enc, enc_lens = encoder_output([26], scale=2.0)
    state, held = streaming.init_state(1, enc.device), []
    for start in range(26):
        state = streaming.step(enc[:, start : start + 1], torch.tensor([1]), state)
        beam = state.beams[0]
        held.append(beam.pending.shape[0])
        first = beam.frames_done - held[-1]
        assert all(first <= hyp.frame < beam.frames_done for hyp in beam.hyps)
    assert held[lookahead:] and 1 <= min(held[lookahead:]) and max(held) <= lookahead - 1
    assert_same_hypotheses(streaming.finalize(state), [offline(enc, enc_lens)[0][0]])


def _chains(beam) -> list[TokenChain]:
    """The token chain of every hypothesis of a stream's beam (CTC: its prefixes)."""
    return [hyp[0] if isinstance(hyp, tuple) else hyp.tokens for hyp in beam.hyps]


@pytest.mark.parametrize("name", ["transducer_beam", "tdt_beam", "ctc_prefix_beam"])
def test_a_step_extends_the_hypotheses_tokens_without_copying_them(name):
    """Every expansion copied its hypothesis' token and frame tuples and hashed them for the
    merge key: O(tokens decoded) per expansion, quadratic in a stream without endpointing.
    A hypothesis' tokens are now a :class:`TokenChain` whose nodes before a step are the
    previous beam's own (shared, not copied): each live hypothesis reaches a node of the
    previous step's chains in at most the tokens the step can add; the result is unchanged."""
    offline, streaming = build(name, "stateless", None, None)
    enc, enc_lens = encoder_output([120], seed=2, scale=2.0)
    state = streaming.init_state(1, enc.device)
    for start in range(0, 120, 6):
        before = {id(node) for chain in _chains(state.beams[0]) for node in _nodes(chain)}
        state = streaming.step(enc[:, start: start + 6], torch.tensor([6]), state)
        for chain in _chains(state.beams[0]):
            walked = 0
            node = chain
            while id(node) not in before:
                node, walked = node.parent, walked + 1
            assert walked <= 6 * streaming.cfg.max_symbols_per_frame  # TDT: a few pending
    assert max(len(c) for c in _chains(state.beams[0])) >= 30  # the case is exercised
    assert streaming.finalize(state) == [h[0] for h in offline(enc, enc_lens)]


def _nodes(chain: TokenChain) -> list[TokenChain]:
    nodes, node = [], chain
    while node is not None:
        nodes.append(node)
        node = node.parent
    return nodes


def test_token_chains_are_equal_and_hash_alike_by_their_tokens_only():
    """A merge key: chains built apart with the same tokens are equal whatever their frames;
    a different token, a longer or shorter chain is not; the tuples come back in order."""
    def chain(pairs):
        node = EMPTY_CHAIN
        for token, frame in pairs:
            node = node.push(token, frame)
        return node

    a, b = chain([(3, 0), (4, 2), (3, 5)]), chain([(3, 1), (4, 1), (3, 9)])
    assert a == b and hash(a) == hash(b) and len({(0, a): 1, (0, b): 2}) == 1
    assert (a.tokens(), a.frames()) == ((3, 4, 3), (0, 2, 5))
    assert a.hypothesis(-1.5) == Hypothesis(tokens=(3, 4, 3), score=-1.5, frames=(0, 2, 5))
    shared = a.parent.push(3, 7)  # shares two nodes with a: compared from there by identity
    assert shared == a and shared.frames() == (0, 2, 7)
    assert a != chain([(3, 0), (4, 2), (5, 5)]) and a != a.parent and a.parent != a
    assert a != chain([(4, 0), (3, 2), (3, 5)])  # the same last token, not the same before
    assert EMPTY_CHAIN == chain([]) and len(EMPTY_CHAIN) == 0 and EMPTY_CHAIN.tokens() == ()


def test_token_chains_of_colliding_hashes_stay_apart():
    """A merge key must be exact: chains of different tokens whose hashes collide (forced
    here: a 64-bit hash collides rarely, yet a stream merges millions of keys) are unequal
    and two dict entries, the difference found past the last token too."""
    a = EMPTY_CHAIN.push(3, 0).push(4, 1).push(5, 2)
    b = EMPTY_CHAIN.push(6, 0).push(4, 1).push(5, 2)  # differs only in its first token
    for x, y in zip(_nodes(a), _nodes(b)):
        y._hash = x._hash
    assert hash(a) == hash(b) and a != b and len({a: 1, b: 2}) == 2
    assert a == EMPTY_CHAIN.push(3, 9).push(4, 9).push(5, 9)
