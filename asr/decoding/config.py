"""Search options shared by every searcher.

:class:`SearchConfig` is a frozen dataclass loaded strictly by :mod:`asr.config` (so a YAML
``search:`` section or ``--set search.beam_size=8`` reaches it); each searcher reads the fields
it uses and ignores the others.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from asr.config import ConfigError, apply_overrides, from_dict, to_dict
from asr.constants import hotword_score_problem

__all__ = ["SEARCH_PREFIX", "SearchConfig", "override_search"]

#: What the command line's ``--set`` writes before a search option: ``search.beam_size=8``.
SEARCH_PREFIX = "search."


@dataclass(frozen=True)
class SearchConfig:
    """Options of the searchers in :mod:`asr.decoding`.

    Attributes:
        beam_size: hypotheses kept per utterance by every beam search.
        nbest: hypotheses returned per utterance (<= ``beam_size``; greedy searchers return 1).
        max_symbols_per_frame: at most this many tokens on one frame in transducer/TDT greedy
            and TDT beam search: RNN-T greedy moves to the next frame after them; the TDT
            searches do not let the last of them take duration 0 (it must move on), so every
            TDT decision stays a scored arc of the TDT lattice.
        length_penalty: alpha of the GNMT length normalisation used to rank finished AED
            hypotheses, ``score / ((5 + L) / 6) ** alpha`` with L the length including
            ``<eos>`` (Wu et al. 2016); 0 ranks by the raw log-probability, 1 is close to a
            per-token average.
        ctc_weight: lambda of joint CTC/attention scoring, ``(1 - lambda) * attention +
            lambda * ctc``, in ``aed_beam`` and ``cif_beam`` (CTC prefix scores, with a
            ``ctc`` head), and the first pass's weight in ``attention_rescoring`` and
            ``cif_rescoring``.
        blank_penalty: subtracted from the blank logit before every CTC, transducer and TDT
            decision (> 0 emits more tokens), also the greedy CTC path that segments the tokens
            of a CIF head with ``segments: ctc``.
        rescore_weight: ``cif_beam`` ranks its final hypotheses by ``(1 - rescore_weight) *
            path + rescore_weight * rescored`` in place of the decoder's part: the path score of
            the search, and the decoder's log-probability of the hypothesis with embeddings
            made for its own token count (n-best rescoring); 0 keeps the path scores.
        ctc_pre_beam: ``aed_beam`` computes CTC prefix scores only for the
            ``ceil(ctc_pre_beam * beam_size)`` best attention candidates of each hypothesis.
        lm_path: ARPA n-gram for ``ctc_prefix_beam``, ``transducer_beam``, ``tdt_beam`` and
            ``cif_beam``, plain or gzip-compressed (``lm.arpa.gz``); null for none. Its words are
            token ids or words, as ``lm_unit`` says (``asr lm --unit token|word`` trains either).
        lm_unit: ``token``: an n-gram over token ids (:class:`asr.decoding.lm.NgramLM`);
            ``word``: an n-gram over words, whose vocabulary is the lexicon; hypotheses are then
            restricted to lexicon words, spelled with the model's tokenizer
            (:class:`asr.decoding.word_lm.LexiconWordLM`).
        lm_weight: weight of the LM log-probability in shallow fusion (0 = unused).
        insertion_bonus: beta, added to a hypothesis' score for every token it emits (the
            token insertion bonus, or LM bonus, of icefall, ESPnet and WeNet) in
            ``transducer_beam``, ``tdt_beam`` and ``ctc_prefix_beam``, with or without an LM:
            it counters the deletions that the LM's per-token costs cause. It is part of the
            score everywhere: the ranking that prunes each step, the merging of equal token
            sequences (which share it) and the final ranking. 0 changes nothing; < 0 is an
            insertion penalty. ``tdt_beam`` drops a live hypothesis below the ``beam_size``-th
            finished one only while scores cannot grow, i.e. with ``insertion_bonus <= 0`` and
            ``length_norm = 0``.
        length_norm: alpha of the length normalisation of the final ranking in
            ``transducer_beam``, ``tdt_beam`` and ``ctc_prefix_beam``: finished hypotheses are
            ranked, and their ``Hypothesis.score`` reported, as ``score / (L + 1) ** alpha``
            with L tokens (:func:`asr.decoding.base.rank_score`; 1 is icefall's and NeMo's
            per-token normalisation); the pruning inside the search is unchanged (its
            hypotheses have read the same frames). 0 ranks by the raw score. Unlike
            ``length_penalty`` (AED, GNMT's formula) it applies to the frame-synchronous
            searches.
        hotwords_file: a hotword list (contextual biasing, :mod:`asr.decoding.context_graph`)
            for ``transducer_beam``, ``tdt_beam`` and ``ctc_prefix_beam``: one phrase per line,
            optionally ending with `` :SCORE`` (its per-token boost); sherpa-onnx's format, so
            the same file serves its ``hotwords_file``. Null for none.
        hotwords: more phrases inline, separated by ``;`` (``"ALPHA BETA;GAMMA :2.5"``), added
            to those of ``hotwords_file``; null for none.
        hotwords_score: the per-token boost of a phrase without its own score (sherpa-onnx's
            ``hotwords_score``); 0 with no per-phrase scores turns biasing off; at most 100 in
            magnitude (:func:`asr.constants.hotword_score_problem`, checked when the options
            are made, phrases or not).
        hotwords_unboosted_prefix: the first this many tokens of each phrase (at most all but
            its last) must match but carry no boost (a phrase's first piece is often a letter
            that begins many words); 0 boosts every token, as icefall and sherpa-onnx do.
        partial_window: streaming ``cif_greedy``: the most encoder frames (256: about 10 s at
            40 ms a frame) a partial result decodes, before a chunk's; a step that leaves more
            in the window settles the tokens of its first half
            (:mod:`asr.decoding.cif_greedy`). At least 2. Larger: partials closer to the
            offline search, each costing more; the final result decodes every frame whatever
            it is.
    """

    beam_size: int = 4
    nbest: int = 1
    max_symbols_per_frame: int = 3
    length_penalty: float = 0.0
    ctc_weight: float = 0.3
    blank_penalty: float = 0.0
    ctc_pre_beam: float = 1.5
    lm_path: Path | None = None
    lm_weight: float = 0.0
    lm_unit: str = "token"
    insertion_bonus: float = 0.0
    length_norm: float = 0.0
    rescore_weight: float = 0.5
    hotwords_file: Path | None = None
    hotwords: str | None = None
    hotwords_score: float = 1.5
    hotwords_unboosted_prefix: int = 1
    partial_window: int = 256

    #: Options these searchers no longer have, which configs saved before still name: ignored
    #: with a warning (:func:`asr.config.from_dict`).
    RETIRED_KEYS: ClassVar[dict[str, str]] = {
        "max_stream_tokens": "a streaming search state keeps every token (it grows)",
        "max_stream_frames": "a streaming cif_greedy state keeps every frame (it grows)",
    }

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"search.beam_size must be >= 1, got {self.beam_size}")
        if not 1 <= self.nbest <= self.beam_size:
            raise ValueError(
                f"search.nbest must be in [1, beam_size={self.beam_size}], got {self.nbest}"
            )
        if self.max_symbols_per_frame < 1:
            raise ValueError(
                f"search.max_symbols_per_frame must be >= 1, got {self.max_symbols_per_frame}"
            )
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"search.ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if not 0.0 <= self.rescore_weight <= 1.0:
            raise ValueError(f"search.rescore_weight must be in [0, 1], got {self.rescore_weight}")
        if self.ctc_pre_beam < 1.0:
            raise ValueError(f"search.ctc_pre_beam must be >= 1, got {self.ctc_pre_beam}")
        for name in (
            "length_penalty", "blank_penalty", "lm_weight", "insertion_bonus", "length_norm",
        ):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"search.{name} must be finite, got {value}")
        problem = hotword_score_problem(self.hotwords_score)  # inf and nan included
        if problem is not None:
            raise ValueError(f"search.hotwords_score: {problem}, got {self.hotwords_score}")
        if self.lm_weight < 0:
            raise ValueError(f"search.lm_weight must be >= 0, got {self.lm_weight}")
        if self.length_norm < 0:
            raise ValueError(f"search.length_norm must be >= 0, got {self.length_norm}")
        if self.lm_unit not in ("token", "word"):
            raise ValueError(f"search.lm_unit must be 'token' or 'word', got {self.lm_unit!r}")
        if self.hotwords_unboosted_prefix < 0:
            raise ValueError(
                "search.hotwords_unboosted_prefix must be >= 0, "
                f"got {self.hotwords_unboosted_prefix}"
            )
        if isinstance(self.partial_window, bool) or not isinstance(self.partial_window, int) or (
            self.partial_window < 2
        ):
            raise ValueError(
                "search.partial_window must be a whole number of encoder frames >= 2, got "
                f"{self.partial_window!r}"
            )


def override_search(
    cfg: SearchConfig, overrides: Mapping[str, Any] | Iterable[str] | None
) -> SearchConfig:
    """``cfg`` with some options changed, checked as strictly as a YAML ``search:`` section.

    Args:
        cfg: the options to start from (e.g. a package's).
        overrides: a mapping ``field -> value`` (``{"beam_size": 8}``), or ``--set`` strings
            ``search.field=value`` (values read as YAML).

    Raises:
        asr.config.ConfigError: for an unknown field (with a did-you-mean hint), a bad value, or a
            string that does not start with ``search.``.
    """
    if not overrides:
        return cfg
    if isinstance(overrides, Mapping):
        data = {**to_dict(cfg), **overrides}
    else:
        texts = [overrides] if isinstance(overrides, str) else list(overrides)
        for text in texts:
            if not text.startswith(SEARCH_PREFIX):
                raise ConfigError(
                    f"override {text!r}: only search options can be set here "
                    f"({SEARCH_PREFIX}<field>=VALUE, e.g. search.beam_size=8)"
                )
        data = apply_overrides(to_dict(cfg), [t[len(SEARCH_PREFIX):] for t in texts])
    return from_dict(SearchConfig, data, path="search")
