"""Registry, SearchConfig and properties shared by every searcher (output contract, batch
composition invariance, timestamps)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pytest
import torch
from search_helpers import assert_frames_valid, encoder_output, make_model

from asr.config import ConfigError, apply_overrides, from_dict
from asr.constants import MAX_HOTWORD_SCORE, hotword_score_problem
from asr.decoding import (
    SEARCHER_NAMES,
    SearchConfig,
    available_searchers,
    build_searcher,
    build_streaming_searcher,
)
from asr.decoding.config import override_search
from asr.decoding.registry import (
    SEARCHERS,
    resolve_searcher,
    searcher_for,
    select_searcher,
    select_searchers,
    streaming_searcher_for,
)
from asr.model import HeadsConfig
from asr.types import Hypothesis


@dataclass(frozen=True)
class _Root:
    search: SearchConfig = field(default_factory=SearchConfig)


def test_search_config_loads_strictly_with_overrides():
    cfg = from_dict(_Root, apply_overrides({"search": {"nbest": 2}}, ["search.beam_size=8"]))
    assert cfg.search.beam_size == 8 and cfg.search.nbest == 2
    with pytest.raises(ConfigError, match="beam_sise"):
        from_dict(_Root, apply_overrides({}, ["search.beam_sise=8"]))
    with pytest.raises(ConfigError, match="nbest"):
        from_dict(_Root, {"search": {"beam_size": 2, "nbest": 3}})
    with pytest.raises(ValueError, match="ctc_weight"):
        SearchConfig(ctc_weight=1.5)
    with pytest.raises(ValueError, match="length_norm must be >= 0"):
        SearchConfig(length_norm=-0.5)
    with pytest.raises(ValueError, match="insertion_bonus must be finite"):
        SearchConfig(insertion_bonus=float("inf"))
    cfg = from_dict(_Root, apply_overrides({}, ["search.insertion_bonus=-0.5"]))
    assert cfg.search.insertion_bonus == -0.5 and cfg.search.length_norm == 0.0  # a penalty


@pytest.mark.parametrize(("score", "text"), [
    (100.00001, "100.00001"), (-101.0, "-101"), (1e9, "1.0e+9"), (-1e308, "-1.0e+308"),
    (math.inf, ".inf"), (math.nan, ".nan"),
])
def test_search_config_refuses_a_hotword_boost_by_the_one_rule_naming_its_field(score, text):
    """``search.hotwords_score`` was only required to be finite: 1e9 in a YAML ``search:``
    section or ``--set`` loaded, and was refused only when a hotword graph was built, as
    "hotwords_score 1e+09" (and not at all without phrases). The config now refuses it with
    :func:`hotword_score_problem`'s words, naming the field as every search option is named."""
    message = f"search.hotwords_score: {hotword_score_problem(score)}, got {score}"
    with pytest.raises(ValueError) as made:
        SearchConfig(hotwords_score=score)
    assert str(made.value) == message
    with pytest.raises(ConfigError) as loaded:
        from_dict(_Root, {"search": {"hotwords_score": score}})
    assert str(loaded.value) == f"search: {message}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        override_search(SearchConfig(), [f"search.hotwords_score={text}"])  # YAML


def test_search_config_takes_a_hotword_boost_up_to_the_limit():
    for score in (MAX_HOTWORD_SCORE, -MAX_HOTWORD_SCORE, 0.0):
        assert override_search(SearchConfig(), {"hotwords_score": score}).hotwords_score == score


def test_a_saved_config_that_names_the_retired_stream_capacities_still_loads(caplog):
    """max_stream_tokens / max_stream_frames are gone (streaming stores grow), but every config
    saved before names them: loading one ignores them with a warning, not an unknown-key error."""
    saved = {"search": {"beam_size": 3, "max_stream_tokens": 2048, "max_stream_frames": 1500}}
    assert from_dict(_Root, saved).search == SearchConfig(beam_size=3)
    assert "ignoring 'search.max_stream_tokens'" in caplog.text
    assert "ignoring 'search.max_stream_frames'" in caplog.text
    with pytest.raises(ConfigError, match="unknown key 'search.max_stream_token'"):
        from_dict(_Root, {"search": {"max_stream_token": 8}})


def test_override_search_takes_a_mapping_or_set_strings():
    base = SearchConfig(beam_size=8, lm_weight=0.5)
    assert override_search(base, None) is base
    assert override_search(base, {"beam_size": 2}) == SearchConfig(beam_size=2, lm_weight=0.5)
    changed = override_search(base, ["search.lm_weight=0.1", "search.lm_path=x.arpa"])
    assert (changed.beam_size, changed.lm_weight, str(changed.lm_path)) == (8, 0.1, "x.arpa")
    with pytest.raises(ConfigError, match="did you mean 'beam_size'"):
        override_search(base, ["search.beam_sz=2"])
    with pytest.raises(ConfigError, match="only search options"):
        override_search(base, ["data.max_duration=2"])
    with pytest.raises(ConfigError, match="nbest"):
        override_search(base, {"nbest": 9})


def test_streaming_default_falls_back_to_the_streaming_greedy_searcher():
    model = make_model(transducer="pruned", ctc=True)
    assert streaming_searcher_for(model, "ctc_prefix_beam") == "ctc_prefix_beam"  # it streams
    assert streaming_searcher_for(model, "transducer_beam") == "transducer_beam"
    assert streaming_searcher_for(model, "beam") == "transducer_beam"
    assert streaming_searcher_for(model, "ctc_greedy") == "ctc_greedy"
    with_aed = make_model(transducer="pruned", aed=True)
    assert streaming_searcher_for(with_aed, "aed_beam") == "transducer_greedy"
    assert streaming_searcher_for(make_model(aed=True, cif=True), "aed_beam") == "cif_greedy"
    assert streaming_searcher_for(make_model(aed=True), "aed_beam") is None
    with pytest.raises(ValueError, match="does not stream; streaming searchers of this model: "
                                         r"\['transducer_greedy', 'transducer_beam', "
                                         r"'attention_rescoring'\]"):
        build_streaming_searcher("aed_beam", with_aed)


@pytest.mark.parametrize(("heads", "name", "first_pass"), [
    (dict(ctc=True, aed=True), "attention_rescoring", "ctc_prefix_beam"),
    (dict(transducer="pruned", aed=True), "attention_rescoring", "transducer_beam"),
    (dict(transducer="tdt", cif=True), "cif_rescoring", "tdt_beam"),
])
def test_rescoring_streams_over_its_first_passs_streaming_beam(heads, name, first_pass):
    """WeNet's U2++ runtime rescores at each endpoint: a package whose default searcher is a
    rescoring one streams with it (it fell back to the greedy searcher), over a streaming
    first pass."""
    model = make_model(**heads)
    assert streaming_searcher_for(model, name) == name
    searcher = build_streaming_searcher(name, model)
    assert type(searcher.first_pass).__name__ == type(build_searcher(first_pass, model)).__name__


def test_the_streaming_fallback_is_a_trained_heads_searcher():
    """A package's default searcher is its first trained head's (loss weight > 0); when that
    one (or the one an export named) does not stream, the streaming default fell back to the
    model's first head's greedy searcher, trained or not: transducer_greedy over a transducer
    of loss weight 0, warned of as untrained, while the trained CTC head streams."""
    model = make_model(transducer="pruned", ctc=True, aed=True)
    model.loss_weights["transducer"] = 0.0
    assert streaming_searcher_for(model, "aed_beam") == "ctc_greedy"
    assert streaming_searcher_for(model) == "ctc_greedy"
    assert streaming_searcher_for(model, "transducer_beam") == "transducer_beam"  # named
    untrained_only = make_model(transducer="pruned", aed=True)
    untrained_only.loss_weights["transducer"] = 0.0  # nothing trained streams: the old rule
    assert streaming_searcher_for(untrained_only, "aed_beam") == "transducer_greedy"


@pytest.mark.parametrize(
    ("heads", "expected"),
    [
        (dict(ctc=True), ["ctc_greedy", "ctc_prefix_beam"]),
        (dict(transducer="pruned"), ["transducer_greedy", "transducer_beam"]),
        (
            dict(transducer="tdt", aed=True),
            ["tdt_greedy", "tdt_beam", "aed_beam", "attention_rescoring"],
        ),
        (dict(aed=True, cif=True), ["aed_beam", "cif_greedy", "cif_beam"]),
        (dict(transducer="pruned_tdt"), ["tdt_greedy", "tdt_beam"]),  # a TDT model
    ],
)
def test_available_searchers(heads, expected):
    assert available_searchers(make_model(**heads)) == expected


def test_errors_name_the_missing_head_and_the_available_searchers():
    model = make_model(transducer="tdt")
    with pytest.raises(ValueError, match=r"loss full\|pruned.*tdt_greedy"):
        build_searcher("transducer_greedy", model)
    with pytest.raises(ValueError, match=r"'ctc' head.*available searchers"):
        build_searcher("ctc_greedy", model)
    with pytest.raises(ValueError, match="unknown searcher 'viterbi'"):
        build_searcher("viterbi", model)
    with pytest.raises(ValueError, match=r"searcher .aed_beam. does not stream.*\[.cif_greedy.\]"):
        build_streaming_searcher("aed_beam", make_model(aed=True, cif=True))


ALL_HEADS = {
    "rnnt": dict(transducer="pruned", ctc=True, aed=True, cif=True),
    "tdt": dict(transducer="tdt", aed=True),
}
CASES = [
    (kind, name)
    for kind, heads in ALL_HEADS.items()
    for name in available_searchers(make_model(**heads))
]


@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_output_contract_and_batch_composition_invariance(kind, name):
    """Each utterance decoded alone (unpadded) equals it decoded padded in a batch."""
    model = make_model(**ALL_HEADS[kind])
    cfg = SearchConfig(beam_size=3, nbest=2, ctc_weight=0.3)
    searcher = build_searcher(name, model, cfg)
    enc, enc_lens = encoder_output([9, 4, 7, 0])
    batched = searcher(enc, enc_lens)
    assert len(batched) == 4
    for b, length in enumerate(enc_lens.tolist()):
        alone = searcher(enc[b : b + 1, : max(length, 1)], enc_lens[b : b + 1])[0]
        assert 1 <= len(batched[b]) <= cfg.nbest
        assert [h.tokens for h in alone] == [h.tokens for h in batched[b]], (name, b)
        assert [h.frames for h in alone] == [h.frames for h in batched[b]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[b]], abs=1e-4)
        for hyp in batched[b]:
            assert 0 not in hyp.tokens
        scores = [h.score for h in batched[b]]
        assert scores == sorted(scores, reverse=True)
    assert batched[3][0].tokens == () or name == "aed_beam"
    if name != "aed_beam":
        assert_frames_valid(batched, enc_lens)


@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_an_utterance_without_frames_is_empty_whatever_its_padding_holds(kind, name):
    """A zero-frame utterance padded in a batch (its padding not zero, as an encoder's is)
    decodes as a batch with no frames at all does: the empty hypothesis, score 0."""
    model = make_model(**ALL_HEADS[kind])
    searcher = build_searcher(name, model, SearchConfig(beam_size=3, nbest=3))
    enc, enc_lens = encoder_output([6, 0, 3], scale=2.0)
    enc[1] = torch.randn(6, enc.shape[2], generator=torch.Generator().manual_seed(5)) * 3.0
    empty = [[Hypothesis(tokens=())]]
    assert searcher(enc[1:2, :0], enc_lens[1:2]) == empty
    assert searcher(enc, enc_lens)[1:2] == empty


@pytest.mark.parametrize("garbage", [float("nan"), float("inf")])
@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_non_finite_padding_frames_change_no_hypothesis_nor_score(kind, name, garbage):
    """Frames beyond enc_lens are not read: nan/inf there (an encoder that leaves garbage, an
    fp16 overflow) give the clean batch's hypotheses and scores, offline and, for a streaming
    searcher, in a chunk whose streams hold fewer valid frames than it has."""
    model = make_model(**ALL_HEADS[kind])
    cfg = SearchConfig(beam_size=3, nbest=2, ctc_weight=0.3)
    enc, enc_lens = encoder_output([9, 6, 7, 0])
    dirty = enc.clone()
    for b, length in enumerate(enc_lens.tolist()):
        dirty[b, length:] = garbage
    assert build_searcher(name, model, cfg)(dirty, enc_lens) == build_searcher(
        name, model, cfg
    )(enc, enc_lens)
    if name in SEARCHERS_THAT_STREAM:
        streaming = build_streaming_searcher(name, model, cfg)
        finals = [
            streaming.finalize(streaming.step(x, enc_lens, streaming.init_state(4, x.device)))
            for x in (dirty, enc)
        ]
        assert finals[0] == finals[1]


SEARCHERS_THAT_STREAM = {spec.name for spec in SEARCHERS if spec.streaming}


@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_an_empty_batch_gives_no_hypotheses(kind, name):
    """A batch of no utterance (with or without frames) is no result, not a crash, offline
    and, for a streaming searcher, as a step of no stream."""
    model = make_model(**ALL_HEADS[kind])
    cfg = SearchConfig(beam_size=3)
    enc, enc_lens = encoder_output([5, 3])
    for frames in (5, 0):
        assert build_searcher(name, model, cfg)(enc[:0, :frames], enc_lens[:0]) == []
    if name in SEARCHERS_THAT_STREAM:
        streaming = build_streaming_searcher(name, model, cfg)
        state = streaming.step(enc[:0], enc_lens[:0], streaming.init_state(0, enc.device))
        assert streaming.finalize(state) == []


def test_every_searcher_is_covered_by_the_generic_test():
    assert {name for _, name in CASES} == set(SEARCHER_NAMES)


@pytest.mark.parametrize(
    ("heads", "greedy", "beam"),
    [
        (dict(transducer="tdt", ctc=True), "tdt_greedy", "tdt_beam"),
        (dict(transducer="pruned", ctc=True, aed=True), "transducer_greedy", "transducer_beam"),
        (dict(ctc=True, aed=True), "ctc_greedy", "ctc_prefix_beam"),
        (dict(aed=True, cif=True), "cif_greedy", "aed_beam"),
        (dict(aed=True), None, "aed_beam"),
    ],
)
def test_roles_resolve_to_the_first_head_that_has_one(heads, greedy, beam):
    model = make_model(**heads)
    assert searcher_for("greedy", model) == greedy
    assert searcher_for("beam", model) == beam
    if greedy is not None:
        assert resolve_searcher("greedy", model) == greedy
        assert type(build_searcher("greedy", model)) is type(build_searcher(greedy, model))
    else:
        with pytest.raises(ValueError, match=r"no greedy searcher for heads \['aed'\]"):
            resolve_searcher("greedy", model)


@pytest.mark.parametrize("heads", [dict(transducer="tdt", aed=True), dict(ctc=True, cif=True)])
def test_a_config_selects_the_searchers_its_trained_model_will(heads):
    """select_searchers answers from a config's heads, before training, as from the model: what
    the recipe scripts check before their first stage."""
    model = make_model(**heads)
    config = from_dict(HeadsConfig, {name: ({"loss": v} if name == "transducer" else {})
                                     for name, v in heads.items()})
    names = ["beam", "all", "greedy"]
    assert select_searchers(names, config) == select_searchers(names, model) == list(dict.fromkeys(
        [searcher_for("beam", model), *available_searchers(model), searcher_for("greedy", model)]))
    for bad, message in (("trnasducer_beam", "unknown searcher 'trnasducer_beam'; expected one of"),
                         ("transducer_greedy", "needs a 'transducer' head with loss full|pruned"),
                         ("attention_rescoring", "needs an 'aed' head")):
        if bad in available_searchers(model):
            continue
        for heads_of in (config, model):
            with pytest.raises(ValueError, match=re.escape(message)):
                select_searchers(["greedy", bad], heads_of)
    with pytest.raises(ValueError, match=r"no greedy searcher for heads \['aed'\]"):
        select_searchers(["greedy"], HeadsConfig(aed=from_dict(HeadsConfig, {"aed": {}}).aed))
    # what a list takes, 'all' too (asr train --searchers nonesuch did not name it)
    with pytest.raises(ValueError, match=r"expected one of \[.*\] or a role \(greedy, beam\) "
                                         r"or 'all'$"):
        select_searchers(["nonesuch"], config)


def test_one_searcher_is_selected_by_the_rule_of_a_list():
    """select_searcher (packages, runtimes) answers each name as select_searchers does, with the
    same messages: their own resolve-then-check had drifted to vaguer ones."""
    model = make_model(transducer="tdt", aed=True)
    config = from_dict(HeadsConfig, {"transducer": {"loss": "tdt"}, "aed": {}})
    for heads_of in (model, config):
        for name in ("greedy", "beam", "tdt_beam", "aed_beam", "attention_rescoring"):
            assert [select_searcher(name, heads_of)] == select_searchers([name], heads_of)
        for bad in ("ctc_greedy", "trnasducer_beam"):
            with pytest.raises(ValueError) as many:
                select_searchers([bad], heads_of)
            # a list may also say 'all' (asr decode --searcher all); one searcher may not
            expected = str(many.value).removesuffix(" or 'all'")
            assert (expected != str(many.value)) == (bad == "trnasducer_beam")
            with pytest.raises(ValueError, match=re.escape(expected) + "$"):
                select_searcher(bad, heads_of)


@pytest.mark.parametrize("heads, beam, biases", [
    (dict(transducer="pruned"), "transducer_beam", True),
    (dict(transducer="tdt"), "tdt_beam", True),
    (dict(ctc=True), "ctc_prefix_beam", True),
    (dict(aed=True), "aed_beam", False),
    (dict(cif=True), "cif_beam", False),
])
def test_a_selection_for_hotwords_refuses_a_searcher_that_cannot_bias(heads, beam, biases):
    """What a recipe's biasing stage decodes with (the role beam and hotwords) is refused before
    training when the heads' beam search takes no hotwords: build_searcher only warns."""
    config = from_dict(HeadsConfig, {name: ({"loss": v} if name == "transducer" else {})
                                     for name, v in heads.items()})
    assert select_searchers(["beam"], config) == [beam]
    if biases:
        assert select_searchers(["beam"], config, biasing=True) == [beam]
    else:
        with pytest.raises(ValueError, match=f"searcher '{beam}' takes no hotwords .*; these do: "
                                             "ctc_prefix_beam, transducer_beam, tdt_beam"):
            select_searchers(["beam"], config, biasing=True)


def test_untrained_heads_are_skipped_for_the_dev_wer():
    model = make_model(transducer="pruned", ctc=True, aed=True)
    model.loss_weights["transducer"] = 0.0
    model.loss_weights["ctc"] = 0.0
    assert searcher_for("greedy", model, trained_only=True) is None
    assert searcher_for("beam", model, trained_only=True) == "aed_beam"


def test_a_role_resolves_to_a_trained_heads_searcher(caplog):
    """``--searcher greedy`` over a transducer of loss weight 0 and a trained CTC head decoded
    with the untrained transducer (warned of), while the package's default and the streaming
    fallback take the trained head's: a role is a trained head's searcher, by the one rule of
    ``searcher_for``, for a model and a config alike; an untrained head's only when no trained
    head has the role (warned of), and a searcher named stays the user's choice (warned of)."""
    model = make_model(transducer="pruned", ctc=True, aed=True)
    model.loss_weights["transducer"] = 0.0
    config = from_dict(HeadsConfig, {"transducer": {"loss": "pruned"}, "ctc": {}, "aed": {},
                                     "loss_weights": {"transducer": 0.0}})
    assert searcher_for("greedy", model) == resolve_searcher("greedy", model) == "ctc_greedy"
    assert searcher_for("beam", model) == resolve_searcher("beam", model) == "ctc_prefix_beam"
    for heads in (model, config):
        assert select_searchers(["greedy", "beam"], heads) == ["ctc_greedy", "ctc_prefix_beam"]
        assert select_searcher("beam", heads) == "ctc_prefix_beam"
    assert "leaves untrained" not in caplog.text
    assert type(build_searcher("greedy", model)) is type(build_searcher("ctc_greedy", model))
    assert select_searchers(["transducer_greedy"], config) == ["transducer_greedy"]  # named
    assert "searcher 'transducer_greedy' decodes with the transducer head" in caplog.text
    caplog.clear()
    only_aed = from_dict(HeadsConfig, {"transducer": {"loss": "pruned"}, "aed": {},
                                       "loss_weights": {"transducer": 0.0}})
    assert select_searchers(["greedy", "beam"], only_aed) == ["transducer_greedy", "aed_beam"]
    assert "searcher 'transducer_greedy' decodes with the transducer head" in caplog.text


def test_table_rows_agree_with_the_lists():
    assert SEARCHER_NAMES == tuple(spec.name for spec in SEARCHERS)
    streaming = [s.name for s in SEARCHERS if s.streaming]
    assert streaming == ["ctc_greedy", "ctc_prefix_beam", "transducer_greedy", "transducer_beam",
                         "tdt_greedy", "tdt_beam", "attention_rescoring", "cif_greedy",
                         "cif_rescoring"]
    models = [make_model(transducer="pruned", ctc=True, cif=True, aed=True),
              make_model(transducer="tdt")]
    for name in streaming:  # every streaming row really streams
        model = next(m for m in models if name in available_searchers(m))
        build_streaming_searcher(name, model)


@pytest.mark.parametrize("searcher, head", [("aed_beam", "aed"), ("cif_beam", "cif")])
def test_a_joint_ctc_search_warns_of_an_untrained_ctc_head(searcher, head, caplog):
    """``aed_beam`` and ``cif_beam`` also score with the ``ctc`` head while
    ``search.ctc_weight > 0`` (0.3 by default): with ``heads.loss_weights.ctc: 0`` that head is
    untrained, and the warning of an untrained head said nothing of it; with
    ``search.ctc_weight: 0`` it is not read, and nothing is said."""
    heads = from_dict(HeadsConfig, {head: {}, "ctc": {}, "loss_weights": {head: 1.0, "ctc": 0.0}})
    warning = (f"searcher '{searcher}' also scores with the ctc head (search.ctc_weight 0.3), "
               "which heads.loss_weights.ctc: 0 leaves untrained")
    assert select_searchers([searcher], heads, search=SearchConfig()) == [searcher]
    assert warning in caplog.text
    caplog.clear()
    select_searchers([searcher], heads, search=SearchConfig(ctc_weight=0.0))
    assert "leaves untrained" not in caplog.text
