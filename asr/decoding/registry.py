"""Searcher names -> constructors, and which names a model's heads support.

=====================  =======================================================================
name                   needs
=====================  =======================================================================
ctc_greedy             ``ctc`` head (also streaming)
ctc_prefix_beam        ``ctc`` head (optional LM: ``lm_path`` / ``lm_weight`` or ``lm=``)
transducer_greedy      ``transducer`` head with loss full|pruned (also streaming)
transducer_beam        ``transducer`` head with loss full|pruned (optional LM as above)
tdt_greedy             ``transducer`` head with loss tdt (also streaming)
tdt_beam               ``transducer`` head with loss tdt (optional LM as above)
aed_beam               ``aed`` head (CTC prefix scores when a ``ctc`` head exists and
                       ``ctc_weight > 0``)
attention_rescoring    ``aed`` head and a first pass: ``ctc_prefix_beam`` with a ``ctc`` head,
                       else ``transducer_beam`` / ``tdt_beam``
cif_greedy             ``cif`` head
cif_beam               ``cif`` head (optional LM as above)
=====================  =======================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from torch import nn

from asr.decoding.aed_beam import AedBeamSearch
from asr.decoding.base import Searcher, StreamingSearcher
from asr.decoding.cif_beam import CifBeamSearch
from asr.decoding.cif_greedy import CifGreedySearch
from asr.decoding.config import SearchConfig
from asr.decoding.ctc_greedy import CtcGreedySearcher
from asr.decoding.ctc_prefix_beam import CtcPrefixBeamSearch
from asr.decoding.lm import LanguageModel, NgramLM
from asr.decoding.rescoring import AttentionRescoring
from asr.decoding.tdt_beam import TdtBeamSearch
from asr.decoding.transducer_beam import ModifiedBeamSearch
from asr.decoding.transducer_greedy import LabelLoopingGreedy
from asr.model import ASRModel
from asr.tokenizers.base import Tokenizer

__all__ = [
    "SEARCHER_NAMES",
    "STREAMING_SEARCHER_NAMES",
    "available_searchers",
    "build_searcher",
    "build_streaming_searcher",
]

logger = logging.getLogger(__name__)

SEARCHER_NAMES = (
    "ctc_greedy",
    "ctc_prefix_beam",
    "transducer_greedy",
    "transducer_beam",
    "tdt_greedy",
    "tdt_beam",
    "aed_beam",
    "attention_rescoring",
    "cif_greedy",
    "cif_beam",
)
STREAMING_SEARCHER_NAMES = ("ctc_greedy", "transducer_greedy", "tdt_greedy")

#: The default options (frozen, so safe to share as a default argument).
DEFAULT_SEARCH = SearchConfig()

_NEEDS = {
    "ctc_greedy": "a 'ctc' head",
    "ctc_prefix_beam": "a 'ctc' head",
    "transducer_greedy": "a 'transducer' head with loss full|pruned",
    "transducer_beam": "a 'transducer' head with loss full|pruned",
    "tdt_greedy": "a 'transducer' head with loss tdt",
    "tdt_beam": "a 'transducer' head with loss tdt",
    "aed_beam": "an 'aed' head",
    "attention_rescoring": "an 'aed' head and a 'ctc' or 'transducer' head",
    "cif_greedy": "a 'cif' head",
    "cif_beam": "a 'cif' head",
}


def _head(model: ASRModel, name: str) -> nn.Module | None:
    return model.heads[name] if name in model.heads else None


def _transducer_kind(model: ASRModel) -> str | None:
    head = _head(model, "transducer")
    if head is None:
        return None
    return "tdt" if head.cfg.loss == "tdt" else "rnnt"


def available_searchers(model: ASRModel) -> list[str]:
    """The searcher names this model's heads support, in :data:`SEARCHER_NAMES` order."""
    has_ctc = _head(model, "ctc") is not None
    kind = _transducer_kind(model)
    usable = {
        "ctc_greedy": has_ctc,
        "ctc_prefix_beam": has_ctc,
        "transducer_greedy": kind == "rnnt",
        "transducer_beam": kind == "rnnt",
        "tdt_greedy": kind == "tdt",
        "tdt_beam": kind == "tdt",
        "aed_beam": _head(model, "aed") is not None,
        "attention_rescoring": _head(model, "aed") is not None and (has_ctc or kind is not None),
        "cif_greedy": _head(model, "cif") is not None,
        "cif_beam": _head(model, "cif") is not None,
    }
    return [name for name in SEARCHER_NAMES if usable[name]]


def _check(name: str, model: ASRModel, names: tuple[str, ...]) -> None:
    if name not in names:
        raise ValueError(f"unknown searcher {name!r}; expected one of {list(names)}")
    available = available_searchers(model)
    if name not in available:
        heads = [
            f"transducer(loss={head.cfg.loss})" if key == "transducer" else key
            for key, head in model.heads.items()
        ]
        raise ValueError(
            f"searcher {name!r} needs {_NEEDS[name]}, but the model has heads {heads}; "
            f"available searchers: {[n for n in available if n in names]}"
        )


def _load_lm(
    model: ASRModel, cfg: SearchConfig, head: str, tokenizer: Tokenizer | None
) -> LanguageModel | None:
    """The LM of ``cfg.lm_path``: a token n-gram, or a word n-gram over a lexicon spelled by
    ``tokenizer`` (``cfg.lm_unit == "word"``)."""
    if cfg.lm_path is None:
        return None
    vocab_size = model.heads[head].vocab_size
    if cfg.lm_unit == "token":
        return NgramLM.from_arpa(cfg.lm_path, vocab_size=vocab_size)
    if tokenizer is None:
        raise ValueError(
            "search.lm_unit=word needs the tokenizer to spell the lexicon "
            "(build_searcher(..., tokenizer=...))"
        )
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(
            f"tokenizer vocabulary {tokenizer.vocab_size} differs from the {head} head's {vocab_size}"
        )
    from asr.decoding.word_lm import load_word_lm

    return load_word_lm(cfg.lm_path, tokenizer)


def _first_pass(model: ASRModel, cfg: SearchConfig, tokenizer: Tokenizer | None) -> Searcher:
    """n-best producer for attention rescoring: all ``beam_size`` hypotheses are kept."""
    first_cfg = replace(cfg, nbest=cfg.beam_size)
    if _head(model, "ctc") is not None:
        return build_searcher("ctc_prefix_beam", model, first_cfg, tokenizer=tokenizer)
    beam = "tdt_beam" if _transducer_kind(model) == "tdt" else "transducer_beam"
    return build_searcher(beam, model, first_cfg, tokenizer=tokenizer)


#: Searchers that fuse an LM -> the head whose vocabulary the LM must match.
_LM_HEADS = {
    "ctc_prefix_beam": "ctc",
    "transducer_beam": "transducer",
    "tdt_beam": "transducer",
    "cif_beam": "cif",
}


_Builder = Callable[[ASRModel, SearchConfig, "LanguageModel | None", "Tokenizer | None"], Searcher]
_BUILDERS: dict[str, _Builder] = {
    "ctc_greedy": lambda m, c, lm, tok: CtcGreedySearcher(m.heads["ctc"], c),
    "ctc_prefix_beam": lambda m, c, lm, tok: CtcPrefixBeamSearch(m.heads["ctc"], c, lm),
    "transducer_greedy": lambda m, c, lm, tok: LabelLoopingGreedy(m.heads["transducer"], c),
    "transducer_beam": lambda m, c, lm, tok: ModifiedBeamSearch(m.heads["transducer"], c, lm),
    "tdt_greedy": lambda m, c, lm, tok: LabelLoopingGreedy(m.heads["transducer"], c),
    "tdt_beam": lambda m, c, lm, tok: TdtBeamSearch(m.heads["transducer"], c, lm),
    "aed_beam": lambda m, c, lm, tok: AedBeamSearch(m.heads["aed"], c, _head(m, "ctc")),
    "attention_rescoring": lambda m, c, lm, tok: AttentionRescoring(
        _first_pass(m, c, tok), m.heads["aed"], c
    ),
    "cif_greedy": lambda m, c, lm, tok: CifGreedySearch(m.heads["cif"], c),
    "cif_beam": lambda m, c, lm, tok: CifBeamSearch(m.heads["cif"], c, lm),
}


def _build(
    name: str,
    model: ASRModel,
    cfg: SearchConfig,
    lm: LanguageModel | None,
    tokenizer: Tokenizer | None,
) -> Searcher:
    if lm is None and name in _LM_HEADS:
        lm = _load_lm(model, cfg, _LM_HEADS[name], tokenizer)
    return _BUILDERS[name](model, cfg, lm, tokenizer)


def build_searcher(
    name: str,
    model: ASRModel,
    cfg: SearchConfig = DEFAULT_SEARCH,
    *,
    lm: LanguageModel | None = None,
    tokenizer: Tokenizer | None = None,
) -> Searcher:
    """Builds searcher ``name`` over the heads of ``model``.

    The searcher holds references to the heads (no copies) and runs under ``torch.no_grad``;
    put the model in eval mode first (dropout would make decoding random).

    Args:
        name: one of :data:`SEARCHER_NAMES`.
        model: the model whose heads are searched.
        cfg: search options.
        lm: token LM for ``ctc_prefix_beam``, ``transducer_beam``, ``tdt_beam`` and
            ``cif_beam`` (overrides ``cfg.lm_path``).
        tokenizer: the model's tokenizer; needed to spell the lexicon of a word LM
            (``cfg.lm_unit == "word"``).

    Raises:
        ValueError: on an unknown name, or one the model's heads do not support (naming the
            missing head and the available searchers).
    """
    _check(name, model, SEARCHER_NAMES)
    if model.training:
        logger.warning("build_searcher(%r): the model is in training mode (dropout is on)", name)
    return _build(name, model, cfg, lm, tokenizer)


def build_streaming_searcher(
    name: str,
    model: ASRModel,
    cfg: SearchConfig = DEFAULT_SEARCH,
    *,
    tokenizer: Tokenizer | None = None,
) -> StreamingSearcher:
    """Builds streaming searcher ``name`` (one of :data:`STREAMING_SEARCHER_NAMES`).

    Raises:
        ValueError: as :func:`build_searcher`.
    """
    _check(name, model, STREAMING_SEARCHER_NAMES)
    searcher = _build(name, model, cfg, None, tokenizer)
    assert isinstance(searcher, StreamingSearcher)
    return searcher
