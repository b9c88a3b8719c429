"""Encoders: the table of encoder kinds and the factory.

``EncoderConfig.kind`` names a row of :data:`ENCODERS`; each kind is a
:class:`asr.encoders.chunked.ChunkedEncoder` (Conv2d subsampling by 4, a block stack, streaming on
a cached state).
"""

from __future__ import annotations

from asr.encoders.base import EncoderConfig
from asr.encoders.chunked import ChunkedEncoder
from asr.encoders.conformer import Conformer
from asr.encoders.transformer import Transformer

__all__ = ["ENCODERS", "EncoderConfig", "build_encoder", "encoder_class", "is_streaming"]

#: ``EncoderConfig.kind`` -> encoder class.
ENCODERS: dict[str, type[ChunkedEncoder]] = {"conformer": Conformer, "transformer": Transformer}


def encoder_class(kind: str) -> type[ChunkedEncoder]:
    """The class of encoder ``kind``.

    Raises:
        ValueError: for a kind that is not in :data:`ENCODERS`.
    """
    if kind not in ENCODERS:
        raise ValueError(f"EncoderConfig.kind={kind!r}: expected one of {sorted(ENCODERS)}")
    return ENCODERS[kind]


def build_encoder(cfg: EncoderConfig, input_dim: int) -> ChunkedEncoder:
    """Builds the encoder ``cfg.kind`` for ``input_dim`` feature bins."""
    return encoder_class(cfg.kind)(cfg, input_dim)


def is_streaming(cfg: EncoderConfig) -> bool:
    """Whether an encoder of ``cfg`` can run chunk by chunk (with a bounded cache, or with
    unlimited left context one that grows with the stream)."""
    return encoder_class(cfg.kind).streaming_problem(cfg) is None
