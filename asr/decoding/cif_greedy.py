"""CIF greedy search: token embeddings, then the argmax of the non-autoregressive decoder;
offline and streaming.

Dong & Xu 2020, "CIF: Continuous Integrate-and-Fire for End-to-End Speech Recognition"
(ICASSP); Gao et al. 2022, "Paraformer" (arXiv:2206.08317); An et al. 2024, "Paraformer-v2"
(arXiv:2409.17746). The number of tokens is the number of fires (``round(sum(alpha))``), or with
``segments: ctc`` the number of tokens of the greedy CTC path (its blank logit lowered by
``search.blank_penalty``); each embedding is decoded in parallel, so the search is one pass of
:meth:`asr.heads.cif.CIFHead.infer` and an argmax. Blank (id 0), which the head never targets,
is dropped if predicted; with an end slot the hypothesis stops at the first position whose
label is the end label (that position and the later ones give no token). ``Hypothesis.frames``
holds the frame of each kept token: where it fired (the end of its integration) or where its
CTC segment starts.

Streaming: the decoder attends to every token and every frame, so no token's output can be
computed once and kept; the state keeps every encoder frame of the segment, and
:meth:`finalize` is the offline search of them all (the tests check equality: same frames, same
result). Each stream holds its own frames as the chunks they came in (:class:`FrameChunks`):
a step adds its chunk without copying the frames before it, and the frames are joined only
where they are decoded (a partial result's window, the final result). The store is not bounded:
it grows with the segment (``D`` numbers per encoder frame, e.g. 2 KiB per frame of a 512-dim
float32 encoder, some 180 MiB per hour at 25 frames a second) until the segment ends, and the
final result decodes all of it (attention over all its frames): a stream without endpointing
(``asr serve --no-endpoint``, ``endpoint.enabled: false``) is one segment as long as the
stream. A partial
result (:meth:`partial`, after every chunk) decodes only a bounded window of recent frames, so
that its cost does not grow with the segment (decoding every frame after every chunk costs the
square of the segment's length, or more): the frames from ``window_start`` on, at most
``partial_window`` (the search option ``search.partial_window``) plus a chunk. When a step
leaves more than ``partial_window`` frames in the window, that window is decoded once and its
tokens up to a boundary near its middle are
*settled*: kept as they are in the state (``settled``) and put before every later partial;
the window then starts at the boundary. The boundary is the frame after the first fire at
or past the middle, before the window's last frame (the weight of the fire's frame left after
the fire is not integrated again), or with ``segments: ctc`` the first frame from the middle
on whose CTC label differs from the previous frame's (so no CTC run is cut, and the window's
segments are the whole segment's from it on); the middle itself when there is none. A
partial result is therefore the offline search of the segment so far while the segment holds
at most ``partial_window`` frames; past that, it is the settled tokens and the search of the
window, which can differ from the offline search of the frames so far (tokens decoded with
less context, a token at a boundary merged or split), and the final result replaces it. A
partial result can also change as frames arrive (a CTC run or a CIF integration may continue
in the next chunk).

Shape legend: B batch (streams), T frames, D encoder dims, N tokens, V vocabulary, F frames
held (the most of any stream), W frames of the partial's window (the most of any stream), R
streams whose window is settled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from asr.decoding.base import TokenBuffer, check_encoder_output
from asr.decoding.config import SearchConfig
from asr.encoders.base import zero_padding
from asr.heads.cif import CIFHead, CIFInference
from asr.heads.decoder_layers import lengths_to_mask
from asr.state import state_field, stream_field
from asr.types import Hypothesis

__all__ = ["CifGreedySearch", "CifStreamState", "FrameChunks", "cif_hypotheses", "last_frames"]


def cif_hypotheses(
    out: CIFInference,
    log_probs: Tensor,
    end_id: int | None,
    blank_id: int = 0,
    counts: Tensor | None = None,
) -> list[Hypothesis]:
    """The argmax hypothesis of every utterance of a CIF inference.

    Args:
        out: :meth:`CIFHead.infer`'s result.
        log_probs: (B, N, V) log-softmax of ``out.logits``.
        end_id: the label that ends a hypothesis (None without an end slot).
        blank_id: the label that gives no token.
        counts: (B,) positions to read per utterance, at most ``out.token_lens`` (default: all
            of them); the hypothesis of the first ``counts`` positions.
    """
    best_lp, best = log_probs.max(dim=-1)
    lens = out.token_lens if counts is None else torch.minimum(counts, out.token_lens)
    results = []
    for tokens, lps, frames, count in zip(
        best.tolist(), best_lp.tolist(), out.fire_frames.tolist(), lens.tolist()
    ):
        if end_id is not None and end_id in tokens[:count]:
            count = tokens.index(end_id) + 1
            kept = [(t, f) for t, f in zip(tokens[: count - 1], frames) if t != blank_id]
        else:
            kept = [(t, f) for t, f in zip(tokens[:count], frames) if t != blank_id]
        results.append(
            Hypothesis(
                tokens=tuple(t for t, _ in kept),
                score=float(sum(lps[:count])),
                frames=tuple(f for _, f in kept),
            )
        )
    return results


@dataclass(frozen=True, eq=False, repr=False)
class FrameChunks:
    """The encoder frames one stream holds, as the chunks they came in: an immutable list,
    newest chunk first, that a step extends without copying the frames before
    (:meth:`append`), and whose last frames are read from the chunks that hold them alone
    (:meth:`last`). Not compared or printed (a long segment holds thousands of chunks).

    Attributes:
        frames: (T, D) the newest chunk's frames (T >= 1).
        before: the chunks before it; None for none.
        num_frames: the frames of all the chunks.
    """

    frames: Tensor
    before: FrameChunks | None
    num_frames: int

    @staticmethod
    def append(chunks: FrameChunks | None, frames: Tensor) -> FrameChunks | None:
        """``chunks`` (None: no frame yet) followed by ``frames`` (T, D), which become the
        newest chunk (when T > 0); ``chunks`` is shared, not copied."""
        if frames.shape[0] == 0:
            return chunks
        held = 0 if chunks is None else chunks.num_frames
        return FrameChunks(frames, chunks, held + frames.shape[0])

    def last(self, count: int) -> Tensor:
        """(count, D) the last ``count`` frames (at most :attr:`num_frames`), in order."""
        pieces, held, node = [], 0, self
        while node is not None and held < count:
            pieces.append(node.frames)
            held += node.frames.shape[0]
            node = node.before
        joined = torch.cat(pieces[::-1]) if len(pieces) > 1 else pieces[0]
        return joined[joined.shape[0] - min(count, held):]


@dataclass(frozen=True)
class CifStreamState:
    """Streaming state of :class:`CifGreedySearch`.

    Attributes:
        frames: per stream, the encoder frames of the segment so far (:class:`FrameChunks`;
            None before the first frame), each stream's own: stacking and splitting states
            moves them, never copies them. Their counts are the one record of the frames held
            (:attr:`num_frames`).
        window_start: (B,) int64 first frame (of the segment) that a partial result decodes;
            the tokens of the frames before it are ``settled``.
        settled: the tokens settled for partial results, their frames those of the segment.
    """

    frames: tuple[FrameChunks | None, ...] = stream_field()
    window_start: Tensor = state_field(batch_dim=0)
    settled: TokenBuffer

    @property
    def num_frames(self) -> Tensor:
        """(B,) int64 frames each stream holds (its :class:`FrameChunks`' count), on the
        state's device: a non-blocking copy of the host counts, which CUDA may still start only
        once the stream is idle (they are pageable memory); every reader syncs right after
        (``step`` has just read the chunk's lengths, ``finalize`` reads the largest count)."""
        counts = [0 if chunks is None else chunks.num_frames for chunks in self.frames]
        host = torch.tensor(counts, dtype=torch.int64)
        return host.to(self.window_start.device, non_blocking=True)


class CifGreedySearch:
    """Greedy CIF decoding (a :class:`~asr.decoding.base.Searcher` and a streaming searcher).

    Args:
        head: the CIF head.
        cfg: uses ``blank_penalty`` (``segments: ctc``) and, streaming, ``partial_window``:
            the most frames a partial result decodes before a step settles the first half of
            them (see the module doc).
        blank_id: id dropped from the output.
    """

    def __init__(self, head: CIFHead, cfg: SearchConfig, blank_id: int = 0) -> None:
        self.head = head
        self.cfg = cfg
        self.blank_id = blank_id
        self.partial_window = cfg.partial_window

    @torch.no_grad()
    def __call__(self, enc: Tensor, enc_lens: Tensor) -> list[list[Hypothesis]]:
        """enc (B, T, D), enc_lens (B,) -> one hypothesis per utterance."""
        check_encoder_output(enc, enc_lens)
        enc_lens = enc_lens.to(enc.device)
        # the head's masked layers weigh padding by 0: 0 * nan (the stream store holds none)
        return [[hyp] for hyp in self._search(zero_padding(enc, enc_lens), enc_lens)]

    def _search(self, enc: Tensor, enc_lens: Tensor) -> list[Hypothesis]:
        out, log_probs, _ = self._infer(enc, enc_lens)
        return cif_hypotheses(out, log_probs, self.head.end_id, self.blank_id)

    def _infer(self, enc: Tensor, enc_lens: Tensor) -> tuple[CIFInference, Tensor, Tensor | None]:
        """The head's inference on enc (B, T, D), its (B, N, V) log-probabilities and, with
        ``segments: ctc``, the (B, T) greedy CTC labels that segment it (else None)."""
        labels = None
        if self.head.uses_ctc:
            labels = self.head.ctc_labels(enc, self.cfg.blank_penalty)
            out = self.head.infer_segments(enc, enc_lens, labels)
        else:
            out = self.head.infer(enc, enc_lens, self.cfg.blank_penalty)
        return out, torch.log_softmax(out.logits.float(), dim=-1), labels

    # ------------------------------------------------------------------------- streaming

    @torch.no_grad()
    def init_state(self, batch_size: int, device: torch.device | str) -> CifStreamState:
        """State of ``batch_size`` new streams (no frame yet)."""
        return CifStreamState(
            frames=(None,) * batch_size,
            window_start=torch.zeros(batch_size, dtype=torch.int64, device=device),
            settled=TokenBuffer.empty(batch_size, device),
        )

    @torch.no_grad()
    def step(self, enc: Tensor, enc_lens: Tensor, state: CifStreamState) -> CifStreamState:
        """Appends a chunk's frames: enc (B, T, D), enc_lens (B,) valid frames of it (each
        stream's as a chunk of its own, a copy of its rows of ``enc``: the frames it held are
        not copied; one device sync); settles the partial window of each stream that now holds
        more than ``partial_window`` frames in it (a second sync)."""
        check_encoder_output(enc, enc_lens)
        dtype = self.head.input_proj.weight.dtype
        frames = tuple(
            FrameChunks.append(chunks, enc[row, :count].to(dtype, copy=True))
            for row, (chunks, count) in enumerate(zip(state.frames, enc_lens.tolist()))
        )
        state = CifStreamState(frames, state.window_start, state.settled)
        over = (state.num_frames - state.window_start) > self.partial_window
        return self._settle(state, over) if bool(over.any()) else state

    def _settle(self, state: CifStreamState, over: Tensor) -> CifStreamState:
        """Decodes the window of each stream where ``over`` (B,) holds, settles its tokens before
        the window's boundary (:meth:`_boundaries`) and starts its window there."""
        rows = over.nonzero().squeeze(1)  # (R,)
        starts = state.window_start[rows]
        lens = state.num_frames[rows] - starts
        enc = self._last_frames([state.frames[row] for row in rows.tolist()], lens)  # (R, W, D)
        out, log_probs, labels = self._infer(enc, lens)
        bounds = self._boundaries(out, labels, lens, lens - self.partial_window // 2)
        fired = lengths_to_mask(out.token_lens, out.fire_frames.shape[1])
        counts = ((out.fire_frames < bounds[:, None]) & fired).sum(dim=1)
        hyps = cif_hypotheses(out, log_probs, self.head.end_id, self.blank_id, counts)
        batch, device = over.shape[0], over.device
        width = max((len(h.tokens) for h in hyps), default=0)
        tokens = torch.zeros(batch, width, dtype=torch.int32, device=device)
        frames = torch.zeros_like(tokens)
        emit = torch.zeros(batch, width, dtype=torch.bool, device=device)
        scores = torch.zeros(batch, dtype=torch.float32, device=device)
        for row, start, hyp in zip(rows.tolist(), starts.tolist(), hyps):
            n = len(hyp.tokens)
            tokens[row, :n] = torch.tensor(hyp.tokens, dtype=torch.int32)
            frames[row, :n] = torch.tensor(hyp.frames, dtype=torch.int32) + start
            emit[row, :n] = True
            scores[row] = hyp.score
        window_start = state.window_start.index_add(0, rows, bounds)
        settled = state.settled.extend(tokens, frames, emit).add_score(scores)
        return CifStreamState(state.frames, window_start, settled)

    def _boundaries(
        self, out: CIFInference, labels: Tensor | None, lens: Tensor, middle: Tensor
    ) -> Tensor:
        """(R,) int64 frame of each window where the next window starts: the frame after the
        first fire in [middle, last frame) of the window (the last frame's fire may be the tail
        of an unfinished integration), or with CTC ``labels`` (R, W) the first frame from
        ``middle`` on whose label differs from the previous frame's (a token or a blank run
        starts there, so no run is cut); ``middle`` (R,) where there is none."""
        if labels is None:
            candidates = out.fire_frames + 1
            fired = lengths_to_mask(out.token_lens, candidates.shape[1])
            ok = fired & (out.fire_frames >= middle[:, None]) & (candidates < lens[:, None])
        else:
            candidates = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
            previous = torch.cat([labels[:, :1], labels[:, :-1]], dim=1)
            ok = (
                (labels != previous)
                & (candidates >= middle[:, None])
                & (candidates < lens[:, None])
            )
        none = torch.iinfo(torch.int64).max
        first = torch.where(ok, candidates, none).min(dim=1).values if ok.shape[1] else middle
        return torch.where(first == none, middle, first)

    @torch.no_grad()
    def partial(self, state: CifStreamState) -> list[Hypothesis]:
        """Per stream, the settled tokens and the greedy hypothesis of the window's frames (the
        greedy hypothesis of all the frames so far while nothing is settled)."""
        lens = state.num_frames - state.window_start
        settled = state.settled.hypotheses()
        if not lens.numel() or not int(lens.max()):
            return settled
        window = self._search(self._last_frames(state.frames, lens), lens)
        return [
            Hypothesis(
                tokens=before.tokens + hyp.tokens,
                score=before.score + hyp.score,
                frames=before.frames + tuple(f + start for f in hyp.frames),
            )
            for before, hyp, start in zip(settled, window, state.window_start.tolist())
        ]

    @torch.no_grad()
    def finalize(self, state: CifStreamState) -> list[Hypothesis]:
        """The offline search of all the frames of the segment (settled tokens play no part)."""
        num_frames = state.num_frames
        if not num_frames.numel() or not int(num_frames.max()):
            return [Hypothesis(tokens=()) for _ in range(num_frames.shape[0])]
        return self._search(self._last_frames(state.frames, num_frames), num_frames)

    def _last_frames(self, stores: Sequence[FrameChunks | None], lens: Tensor) -> Tensor:
        """The last ``lens`` (B,) frames of each stream's store: :func:`last_frames`."""
        proj = self.head.input_proj
        return last_frames(stores, lens, proj.in_features, proj.weight.dtype)


def last_frames(
    stores: Sequence[FrameChunks | None], lens: Tensor, dim: int, dtype: torch.dtype
) -> Tensor:
    """The last ``lens`` (B,) frames of each stream's store, left-aligned, as an offline search
    reads them: (B, max(lens), D = ``dim``) of ``dtype`` on ``lens``' device, zeros after them
    (one host transfer)."""
    counts = lens.tolist()
    out = torch.zeros(len(counts), max(counts, default=0), dim, dtype=dtype, device=lens.device)
    for row, (chunks, count) in enumerate(zip(stores, counts)):
        if chunks is not None and count > 0:
            out[row, :count] = chunks.last(count)
    return out
