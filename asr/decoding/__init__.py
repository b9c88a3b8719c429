"""Searchers for every head: CTC, transducer (RNN-T), TDT, AED, CIF, attention rescoring.

Build one by name with :func:`build_searcher` (offline) or :func:`build_streaming_searcher`;
:func:`available_searchers` lists the names a model's heads support. See
:mod:`asr.decoding.registry` for the table of names and the heads they need, and each module for
its algorithm and paper.

Example:
    >>> model.eval()
    >>> searcher = build_searcher("transducer_beam", model, SearchConfig(beam_size=4))
    >>> enc, enc_lens = model.encode(feats, feat_lens)
    >>> nbest = searcher(enc, enc_lens)  # list (B) of lists of Hypothesis, best first
"""

from asr.decoding.base import Searcher, StreamingSearcher, TokenBuffer
from asr.decoding.config import SearchConfig
from asr.decoding.lm import LanguageModel, NgramLM
from asr.decoding.registry import (
    SEARCHER_NAMES,
    STREAMING_SEARCHER_NAMES,
    available_searchers,
    build_searcher,
    build_streaming_searcher,
)

__all__ = [
    "SEARCHER_NAMES",
    "STREAMING_SEARCHER_NAMES",
    "LanguageModel",
    "NgramLM",
    "SearchConfig",
    "Searcher",
    "StreamingSearcher",
    "TokenBuffer",
    "available_searchers",
    "build_searcher",
    "build_streaming_searcher",
]
