"""Relative-position multi-head self-attention with chunk masks and a left-context KV cache.

Scores follow Transformer-XL (Dai et al., 2019, "Transformer-XL: Attentive Language Models Beyond
a Fixed-Length Context", section 3.3) as used by the Conformer (Gulati et al., 2020)::

    score(i, j) = (q_i + u) . k_j  +  (q_i + v) . W_pos r(i - j)

with ``r`` a sinusoid of the signed distance ``i - j`` and ``u``/``v`` learned per-head biases.
Instead of Transformer-XL's "relative shift" trick we evaluate the position term once for every
distance that occurs and *gather* it at index ``i - j`` (:class:`RelativePositions`). This is the
same function, but because it only depends on integer distances, a chunk that attends to a cache
of earlier keys gets exactly the scores the full-sequence pass computes under the same mask.

Chunk masks (Zhang et al., 2020, "Unified Streaming and Non-streaming Two-pass End-to-end Model
for Speech Recognition", dynamic chunk training): frame ``i`` sees every frame of its own chunk
and of the ``left_chunks`` chunks before it; ``chunk_size <= 0`` means full context and
``left_chunks < 0`` unlimited left context.

Shape legend: B batch, H heads, T frames (queries), K keys (cache + new), C cached frames,
R distinct distances, D model dims, Dh = D / H.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from asr.encoders.dropout import Dropout

__all__ = [
    "RelPositionMultiHeadAttention",
    "RelativePositions",
    "chunk_attention_mask",
    "roll_cache",
    "sinusoid_encoding",
    "streaming_attention_mask",
]


def sinusoid_encoding(distances: Tensor, dim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Sinusoidal encoding of integer distances (or positions), computed in float64.

    In float32 the angle ``d w_k`` carries a relative error of ~6e-8, i.e. an absolute one that
    grows with ``d``: the float32 table was off by up to 6.6e-6 at ``|d| <= 100``, 5e-5 at 750
    (a 30 s utterance's encoder frames) and 7.6e-4 at 10000; computed in float64 and cast, every
    entry is within 3e-8 of the exact value, float32's rounding (the nearest float32 but for
    the few exact values a hair from a rounding midpoint: 44 of the 5.1e6 entries at
    ``|d| <= 10000``, D = 256, are one step off). The ONNX exports trace the same float64 ops.

    Args:
        distances: (R,) int64 signed distances.
        dim: even encoding size D.
        dtype: of the result.

    Returns:
        (R, D) ``[sin(d w_0), cos(d w_0), sin(d w_1), ...]``, ``w_k = 10000^(-2k/D)``.
    """
    freqs = torch.exp(
        torch.arange(0, dim, 2, device=distances.device, dtype=torch.float64)
        * (-math.log(10000.0) / dim)
    )
    angles = distances.to(torch.float64)[:, None] * freqs[None, :]
    # cos as a sine: ONNX Runtime (and the one in sherpa-onnx) has no float64 Cos kernel
    cosines = (angles + math.pi / 2).sin()
    table = torch.stack([angles.sin(), cosines], dim=-1).reshape(distances.shape[0], dim)
    return table.to(dtype)


@dataclass(frozen=True)
class RelativePositions:
    """Relative-position inputs shared by all layers of one forward call.

    Queries sit at positions ``0 .. T-1``; keys at ``-C .. T-1`` (C cached frames first).

    Attributes:
        encoding: (R, D) sinusoid of every distance ``i - j`` that occurs, ascending.
        index: (T, C + T) int64 row of ``encoding`` for query ``i`` and key ``j``.
    """

    encoding: Tensor
    index: Tensor

    @staticmethod
    def build(
        num_queries: int, cache_size: int, dim: int, device: torch.device
    ) -> RelativePositions:
        """Positions for ``num_queries`` new frames after ``cache_size`` cached ones."""
        min_distance = -(num_queries - 1)
        distances = torch.arange(min_distance, num_queries + cache_size, device=device)
        query_pos = torch.arange(num_queries, device=device)
        key_pos = torch.arange(-cache_size, num_queries, device=device)
        index = query_pos[:, None] - key_pos[None, :] - min_distance
        return RelativePositions(encoding=sinusoid_encoding(distances, dim), index=index)


def chunk_attention_mask(
    num_frames: int, chunk_size: int, left_chunks: int, device: torch.device | None = None
) -> Tensor:
    """(T, T) bool mask, True where query ``i`` may attend to key ``j``.

    Args:
        num_frames: T.
        chunk_size: frames per chunk; ``<= 0`` gives full context (all True).
        left_chunks: chunks of left context; ``< 0`` gives unlimited left context.
    """
    if chunk_size <= 0:
        return torch.ones(num_frames, num_frames, dtype=torch.bool, device=device)
    chunk = torch.arange(num_frames, device=device) // chunk_size
    diff = chunk[:, None] - chunk[None, :]
    mask = diff >= 0
    if left_chunks >= 0:
        mask = mask & (diff <= left_chunks)
    return mask


def streaming_attention_mask(
    cache_len: Tensor, cache_size: int, num_new: Tensor, num_queries: int
) -> Tensor:
    """(B, T, C + T) mask for one streaming chunk: valid cached frames plus valid new frames.

    Args:
        cache_len: (B,) valid cached frames per stream (they are the last ``cache_len`` of C).
        cache_size: C.
        num_new: (B,) valid new frames per stream.
        num_queries: T (padded number of new frames).
    """
    device = cache_len.device
    slots = torch.arange(cache_size + num_queries, device=device)[None, :]
    cached_ok = (slots < cache_size) & (slots >= cache_size - cache_len[:, None])
    new_ok = (slots >= cache_size) & (slots - cache_size < num_new[:, None])
    return (cached_ok | new_ok)[:, None, :].expand(-1, num_queries, -1)


def roll_cache(cache: Tensor, new: Tensor, num_new: Tensor, dim: int) -> Tensor:
    """Appends each stream's valid new frames to its cache and keeps the last C frames.

    Args:
        cache: (..., C, ...) with the batch first and time at ``dim``; right-aligned.
        new: same layout with T new frames, valid up to ``num_new``.
        num_new: (B,) valid new frames per stream.
        dim: the time dimension.

    Returns:
        The new cache, same shape as ``cache``: rows ``num_new[b] .. num_new[b] + C`` of
        ``cat([cache, new], dim)`` for stream ``b``.
    """
    size = cache.shape[dim]
    combined = torch.cat([cache, new.to(cache.dtype)], dim=dim).movedim(dim, 1)
    positions = torch.arange(size, device=cache.device)[None, :] + num_new.to(torch.long)[:, None]
    index = positions.reshape(positions.shape + (1,) * (combined.dim() - 2))
    index = index.expand((-1, -1) + tuple(combined.shape[2:]))
    return combined.gather(1, index).movedim(1, dim)


class RelPositionMultiHeadAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions and an optional KV cache.

    Args:
        dim: model dims D.
        num_heads: H, dividing D.
        dropout: dropout on attention weights.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"attention: dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.linear_out = nn.Linear(dim, dim)
        self.pos_bias_u = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:
        batch, time, _ = x.shape
        return x.view(batch, time, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        rel_pos: RelativePositions,
        key_cache: Tensor | None = None,
        value_cache: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Attends from the new frames to cached + new frames.

        Args:
            x: (B, T, D) new frames.
            mask: (B, T, C + T) bool, True where attention is allowed.
            rel_pos: positions for T queries after C cached keys.
            key_cache: (B, H, C, Dh) keys of earlier frames, or None (C = 0).
            value_cache: (B, H, C, Dh) values of earlier frames, or None.

        Returns:
            (B, T, D) output and the (B, H, T, Dh) keys and values of the new frames.
        """
        query = self._heads(self.linear_q(x))
        key_new = self._heads(self.linear_k(x))
        value_new = self._heads(self.linear_v(x))
        key, value = key_new, value_new
        if key_cache is not None and value_cache is not None:
            key = torch.cat([key_cache, key_new], dim=2)
            value = torch.cat([value_cache, value_new], dim=2)
        pos = self.linear_pos(rel_pos.encoding.to(x.dtype))  # (R, D)
        pos = pos.view(-1, self.num_heads, self.head_dim).transpose(0, 1)  # (H, R, Dh)
        content = torch.matmul(query + self.pos_bias_u[:, None], key.transpose(-2, -1))
        position = torch.matmul(query + self.pos_bias_v[:, None], pos.transpose(-2, -1))
        index = rel_pos.index[None, None].expand(position.shape[0], self.num_heads, -1, -1)
        position = position.gather(-1, index)  # (B, H, T, K)
        scores = (content + position) / math.sqrt(self.head_dim)
        allowed = mask[:, None]
        scores = scores.masked_fill(~allowed, float("-inf"))
        weights = torch.softmax(scores, dim=-1).masked_fill(~allowed, 0.0)
        out = torch.matmul(self.dropout(weights), value)  # (B, H, T, Dh)
        batch, _, time, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, time, self.num_heads * self.head_dim)
        return self.linear_out(out), key_new, value_new
