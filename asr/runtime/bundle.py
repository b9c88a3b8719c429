"""The runtime bundle: what both recognizers need from a model package, made once.

:class:`Runtime` holds the model (eval mode, on its device), the tokenizer, the feature
configuration and its extractor, the duration of an encoder frame (the feature frame shift times
the encoder's own subsampling factor), the default searcher, the search options, the encoder's
streaming chunking and the result builder. The offline :class:`asr.runtime.offline.Transcriber`
and the :class:`asr.runtime.streaming.StreamingRecognizer` are built from it side by side.

Example:
    >>> runtime = Runtime.from_package(load_package("pkg"), device="cpu")
    >>> transcriber, recognizer = Transcriber(runtime), StreamingRecognizer(runtime)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lhotse import Fbank

from asr.decoding import SearchConfig, Searcher, StreamingSearcher
from asr.decoding import build_searcher as _build_searcher
from asr.decoding import build_streaming_searcher as _build_streaming_searcher
from asr.features.fbank import FbankConfig, make_lhotse_fbank
from asr.model import ASRModel
from asr.package import ModelPackage
from asr.results import ResultBuilder
from asr.tokenizers.base import Tokenizer

__all__ = ["Runtime"]


@dataclass(frozen=True)
class Runtime:
    """A packaged model ready to decode.

    Attributes:
        package: the loaded package (config, metadata).
        model: the model in eval mode on ``device``.
        tokenizer: the package's tokenizer.
        fbank: feature options (the training features).
        extractor: lhotse's fbank extractor for ``fbank``, shared by every stream.
        frame_seconds: duration of one encoder frame.
        searcher: default searcher name.
        search: search options.
        chunk_size: encoder frames per streaming chunk (the encoder config's).
        left_chunks: chunks of left context when streaming.
        device: where the model runs.
        results: builds results from token ids and frames.
    """

    package: ModelPackage
    model: ASRModel
    tokenizer: Tokenizer
    fbank: FbankConfig
    extractor: Fbank
    frame_seconds: float
    searcher: str
    search: SearchConfig
    chunk_size: int
    left_chunks: int
    device: torch.device
    results: ResultBuilder

    @classmethod
    def from_package(
        cls,
        package: ModelPackage,
        device: torch.device | str = "cpu",
        searcher: str | None = None,
        search: SearchConfig | None = None,
    ) -> Runtime:
        """Builds the model of ``package`` on ``device``.

        Args:
            package: a loaded package.
            device: ``cpu``, ``cuda``, ...
            searcher: default searcher (default: the package's ``metadata.searcher``).
            search: search options (default: the package config's ``search`` section).
        """
        device = torch.device(device)
        model = package.build_model(device)
        cfg = package.config
        frame_seconds = cfg.data.fbank.frame_shift * model.encoder.subsampling_factor
        return cls(
            package=package,
            model=model,
            tokenizer=package.tokenizer,
            fbank=cfg.data.fbank,
            extractor=make_lhotse_fbank(cfg.data.fbank),
            frame_seconds=frame_seconds,
            searcher=searcher or package.metadata.searcher,
            search=search or cfg.search,
            chunk_size=cfg.encoder.chunk_size,
            left_chunks=cfg.encoder.left_chunks,
            device=device,
            results=ResultBuilder(package.tokenizer, frame_seconds),
        )

    @property
    def sample_rate(self) -> int:
        """Rate (Hz) the model's features expect."""
        return self.fbank.sample_rate

    def build_searcher(self, name: str | None = None) -> Searcher:
        """The offline searcher ``name`` (default: :attr:`searcher`) over this model."""
        return _build_searcher(name or self.searcher, self.model, self.search,
                               tokenizer=self.tokenizer)

    def build_streaming_searcher(self, name: str | None = None) -> StreamingSearcher:
        """The streaming searcher ``name`` (default: :attr:`searcher`) over this model."""
        return _build_streaming_searcher(name or self.searcher, self.model, self.search,
                                         tokenizer=self.tokenizer)
