"""The runtime bundle: what both recognizers need from a model package, made once.

:class:`Runtime` holds the model (eval mode, on its device), the tokenizer, the feature
configuration and its extractor, the length of an encoder frame (the feature frame shift times
the encoder's own subsampling factor, in samples and in seconds), the default searcher, the
search options, the encoder's streaming chunking and the result builder. The offline
:class:`asr.runtime.offline.Transcriber` and the :class:`asr.runtime.streaming.StreamingRecognizer`
are built from it side by side.

Example:
    >>> runtime = Runtime.from_package(load_package("pkg"), device="cpu")
    >>> transcriber, recognizer = Transcriber(runtime), StreamingRecognizer(runtime)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lhotse import Fbank

from asr.constants import METADATA_FILE
from asr.decoding import SearchConfig, Searcher, StreamingSearcher
from asr.decoding import build_searcher as _build_searcher
from asr.decoding import build_streaming_searcher as _build_streaming_searcher
from asr.decoding.config import override_search
from asr.decoding.context_graph import ContextGraph, Hotword, as_hotwords, context_graph_for
from asr.decoding.lm import LanguageModel
from asr.decoding.registry import (
    resolve_searcher,
    searcher_biases,
    searcher_lm,
    searcher_uses_lm,
    select_searcher,
    select_searchers,
    streaming_searcher_for,
)
from asr.device import resolve_device
from asr.encoders.chunked import ChunkedEncoder
from asr.features.fbank import (
    FbankConfig,
    encoder_frame_samples,
    encoder_frame_seconds,
    make_lhotse_fbank,
)
from asr.model import ASRModel
from asr.package import ModelPackage, PackageError, newer_writer
from asr.results import ResultBuilder
from asr.tokenizers.base import Tokenizer

__all__ = ["HotwordsSpec", "Runtime", "SearchOptions"]

#: What ``hotwords=`` takes: a hotword file, inline phrases ``"ALPHA BETA;GAMMA :2.5"``, a list
#: of phrases (or of :class:`~asr.decoding.context_graph.Hotword`), or None.
HotwordsSpec = str | Path | Sequence[str | Hotword] | None
#: What ``search=`` takes: the options themselves, or changes to the package's (a mapping
#: ``field -> value`` or ``search.field=value`` strings).
SearchOptions = SearchConfig | Mapping[str, Any] | Iterable[str]


@dataclass(frozen=True)
class Runtime:
    """A packaged model ready to decode.

    Attributes:
        package: the loaded package (config, metadata).
        model: the model in eval mode on ``device``.
        tokenizer: the package's tokenizer.
        fbank: feature options (the training features', without dither).
        extractor: lhotse's fbank extractor for ``fbank``, shared by every stream.
        searcher: default searcher name.
        search: search options.
        chunk_size: encoder frames per chunk of the chunk mask, streaming and offline (the
            encoder config's; 0: full context offline; :meth:`with_chunking` sets another).
        left_chunks: chunks of left context (-1: every earlier frame).
        device: where the model runs.
        results: builds results from token ids and frames.
        streaming_searcher: default streaming searcher: :attr:`searcher` when it streams; for
            a package's own default that does not stream (``aed_beam``, ``cif_beam``), a
            trained head's streaming greedy searcher
            (:func:`asr.decoding.registry.streaming_searcher_for`). The transducer, TDT and
            CTC beam searches stream, and the rescoring searchers over them (a segment
            rescored at its end): a package whose default is one of them streams with it (and
            its LM).
    """

    package: ModelPackage
    model: ASRModel
    tokenizer: Tokenizer
    fbank: FbankConfig
    extractor: Fbank
    searcher: str
    search: SearchConfig
    chunk_size: int
    left_chunks: int
    device: torch.device
    results: ResultBuilder
    streaming_searcher: str | None = None
    _lms: dict[str, LanguageModel | None] = field(default_factory=dict, init=False, repr=False,
                                                  compare=False)
    _checked: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    @classmethod
    def from_package(
        cls,
        package: ModelPackage,
        device: torch.device | str = "cpu",
        searcher: str | None = None,
        search: SearchOptions | None = None,
    ) -> Runtime:
        """Builds the model of ``package`` on ``device``.

        Args:
            package: a loaded package.
            device: ``cpu``, ``cuda``, ``auto`` (:func:`resolve_device`), ...
            searcher: default searcher, a name or a role (``greedy``, ``beam``); default: the
                package's ``metadata.searcher`` (and for streaming, when that one does not
                stream, a trained head's streaming greedy searcher). One that reads a head the
                package's ``heads.loss_weights`` leaves at 0 (not trained) with the search
                options it runs with is warned of, as a searcher named per call is, once per
                name (:meth:`check_trained`); the package's own, with its own options, was
                warned of when it was exported.
            search: search options: a :class:`SearchConfig`, or changes to the package's own
                (its ``config.yaml`` ``search:`` section, with the packaged LM), as a mapping
                ``{"beam_size": 8}`` or ``["search.beam_size=8"]``.

        Raises:
            ValueError: for an unknown searcher or one the model's heads lack, a bad search
                option, or an unusable device (:class:`asr.package.PackageError` naming
                ``metadata.json`` for the package's own searcher, and saying when a newer asr
                wrote the package).
        """
        device = resolve_device(device)
        cfg = package.config
        options = search if isinstance(search, SearchConfig) else override_search(cfg.search,
                                                                                   search)
        model = package.build_model(device)
        try:
            name = select_searcher(searcher or package.metadata.searcher, model)
        except ValueError as err:
            if searcher is not None:
                raise
            raise PackageError(  # the package's own searcher, e.g. one of a newer asr
                f"{package.directory / METADATA_FILE}: searcher: {err}"
                f"{newer_writer(package.metadata.asr_version)}") from err
        # the package's own default may not stream: then a trained head's streaming greedy one
        streaming = streaming_searcher_for(model, name) if searcher is None else name
        # without the training dither (it made transcripts random and OnlineFbank refuse)
        fbank = cfg.data.fbank.for_recognition()
        runtime = cls(
            package=package,
            model=model,
            tokenizer=package.tokenizer,
            fbank=fbank,
            extractor=make_lhotse_fbank(fbank),
            searcher=name,
            search=options,
            chunk_size=cfg.encoder.chunk_size,
            left_chunks=cfg.encoder.left_chunks,
            device=device,
            results=ResultBuilder(package.tokenizer,
                                  encoder_frame_seconds(fbank, model.encoder.subsampling_factor)),
            streaming_searcher=streaming,
        )
        if searcher is None and options == cfg.search:  # warned of when it was exported
            runtime._checked.add(name)
        else:  # by the search it runs with: search.ctc_weight decides a joint CTC search's heads
            runtime.check_trained(name)
        return runtime

    def check_trained(self, name: str) -> None:
        """Warns, once per searcher ``name`` (a name, not a role) over this model, when it
        reads a head that the package's ``heads.loss_weights`` leaves at 0 (built, not
        trained; a joint CTC search's ``ctc`` head while its ``search.ctc_weight > 0``, in the
        options it is built with, :meth:`search_for`, those of ``search=`` given to
        :meth:`from_package`): the rule of :func:`asr.decoding.registry.select_searchers`, as
        ``asr decode`` warns of it. Every searcher a runtime builds, whether its default or one
        named per call (``transcribe(searcher=...)``, a streaming recognizer's), is checked
        here."""
        if name in self._checked:
            return
        self._checked.add(name)
        select_searchers([name], self.package.config.heads, search=self.search_for(name))

    def chunking(
        self, chunk_size: int | None = None, left_chunks: int | None = None
    ) -> tuple[int, int]:
        """The chunking ``(chunk_size, left_chunks)`` asked for, the runtime's own where None.

        Args:
            chunk_size: encoder frames per chunk, > 0 (``--chunk-size``).
            left_chunks: chunks of left context, -1 (any negative) every earlier frame
                (``--left-chunks``).

        Raises:
            ValueError: a value that is not a whole number, or a given ``chunk_size`` < 1,
                naming the argument and its option.
        """
        size = _whole(self.chunk_size if chunk_size is None else chunk_size,
                      "chunk_size (--chunk-size)")
        if chunk_size is not None and size < 1:  # the encoder's words name no option
            raise ValueError(f"chunk_size (--chunk-size) must be > 0 encoder frames, got {size}")
        left = _whole(self.left_chunks if left_chunks is None else left_chunks,
                      "left_chunks (--left-chunks)")
        return size, left

    def with_chunking(
        self, chunk_size: int | None = None, left_chunks: int | None = None
    ) -> Runtime:
        """This runtime with the offline encoder under another chunk mask (WeNet's
        ``decoding_chunk_size`` / ``num_decoding_left_chunks``): the same model, tokenizer and
        features, ``chunk_size`` / ``left_chunks`` replaced (:meth:`chunking`), as
        ``asr decode --set encoder.chunk_size=C encoder.left_chunks=L`` decodes a test set.

        Raises:
            ValueError: bad values (:meth:`chunking`), or an encoder without a chunk mask.
        """
        size, left = self.chunking(chunk_size, left_chunks)
        encoder = self.model.encoder
        if not isinstance(encoder, ChunkedEncoder):
            raise ValueError(f"chunk_size/left_chunks (--chunk-size/--left-chunks): the "
                             f"package's encoder ({type(encoder).__name__}) has no chunk mask")
        return dataclasses.replace(self, chunk_size=size, left_chunks=left)

    @property
    def sample_rate(self) -> int:
        """Rate (Hz) the model's features expect."""
        return self.fbank.sample_rate

    @property
    def frame_samples(self) -> int:
        """Samples (at :attr:`sample_rate`) per encoder frame
        (:func:`asr.features.fbank.encoder_frame_samples`)."""
        return encoder_frame_samples(self.fbank, self.model.encoder.subsampling_factor)

    @property
    def frame_seconds(self) -> float:
        """Duration in seconds of one encoder frame, :attr:`frame_samples` long (the results'
        times count in it)."""
        return encoder_frame_seconds(self.fbank, self.model.encoder.subsampling_factor)

    def build_searcher(self, name: str | None = None, hotwords: HotwordsSpec = None) -> Searcher:
        """The offline searcher ``name`` (default: :attr:`searcher`) over this model.

        Args:
            name: a searcher name or role.
            hotwords: phrases to bias toward, added to those of the search options
                (:func:`asr.decoding.context_graph.as_hotwords`: a file, ``"A B;C"`` or a list).

        Raises:
            asr.decoding.context_graph.HotwordError: for phrases the tokenizer cannot spell,
                too many or too long ones.
        """
        context = self.hotword_graph(hotwords) if hotwords is not None else None
        name = resolve_searcher(name or self.searcher, self.model)
        self.check_trained(name)
        search = self.search_for(name)
        if name not in self._lms:  # read once: every call with other hotwords rebuilds the rest
            self._lms[name] = searcher_lm(name, self.model, search, self.tokenizer)
        return _build_searcher(name, self.model, search, lm=self._lms[name],
                               tokenizer=self.tokenizer, context=context)

    def search_for(self, name: str) -> SearchConfig:
        """The search options searcher ``name`` (a name, not a role) is built with:
        :attr:`search`, without the package's own LM for a searcher that uses no LM, and
        without its own hotwords (``search.hotwords_file``, ``search.hotwords``) for one that
        does not bias.

        A package carries the LM and phrases of its own searcher; another searcher chosen at run
        time (``--searcher greedy``) decodes without them either way, and is not warned of an
        LM or hotwords that nobody gave. Those given at run time (another ``search.lm_path``,
        other phrases) stay, so such a searcher warns that they are not used
        (:func:`asr.decoding.registry.build_searcher`).
        """
        own = self.package.config.search
        unused = {"lm_path": not searcher_uses_lm(name),
                  "hotwords_file": not searcher_biases(name), "hotwords": not searcher_biases(name)}
        dropped = {field: None for field, drop in unused.items()
                   if drop and getattr(own, field) is not None
                   and getattr(self.search, field) == getattr(own, field)}
        return dataclasses.replace(self.search, **dropped) if dropped else self.search

    def hotword_graph(
        self, hotwords: HotwordsSpec, hotwords_score: float | None = None
    ) -> ContextGraph | None:
        """The hotword graph of the search options' phrases (``search.hotwords_file``,
        ``search.hotwords``) and ``hotwords`` (a file, ``"A B;C"`` or a list of phrases,
        :func:`asr.decoding.context_graph.as_hotwords`), spelled with the tokenizer; None when
        there is no phrase.

        Args:
            hotwords: the phrases to add.
            hotwords_score: the boost of a phrase without its own (default
                ``search.hotwords_score``).

        Raises:
            asr.decoding.context_graph.HotwordError: for phrases the tokenizer cannot spell,
                too many or too long ones, or a boost beyond
                :data:`~asr.constants.MAX_HOTWORD_SCORE` in magnitude.
        """
        score = None if hotwords_score is None else float(hotwords_score)
        return context_graph_for(self.search, self.tokenizer, as_hotwords(hotwords), score)

    def build_streaming_searcher(self, name: str | None = None) -> StreamingSearcher:
        """The streaming searcher ``name`` (default: :attr:`streaming_searcher`) over this
        model.

        Raises:
            ValueError: for a searcher that does not stream, naming those that do.
        """
        name = resolve_searcher(name or self.streaming_searcher or self.searcher, self.model)
        self.check_trained(name)
        return _build_streaming_searcher(name, self.model, self.search_for(name),
                                         tokenizer=self.tokenizer)


def _whole(value: object, name: str) -> int:
    """``value`` as an int when it is a whole number (not a bool), else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(value)
