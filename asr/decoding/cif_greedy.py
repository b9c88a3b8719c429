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

Streaming: the decoder attends to every token and every frame, so the state keeps every encoder
frame of the segment so far (a store that grows with it: each stream holds its own frames, none
is dropped) and :meth:`partial` decodes them all, as the offline search does; the segments of the frames so far come from CTC on those
cached frames. :meth:`finalize` on all frames is the offline search of the same frames
(the tests check equality), and a partial result can change as frames arrive (a CTC run or a
CIF integration may continue in the next chunk).

Shape legend: B batch (streams), T frames, D encoder dims, N tokens, V vocabulary, F frames
held (the most of any stream).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from asr.decoding.base import check_encoder_output, right_aligned_append
from asr.decoding.config import SearchConfig
from asr.heads.cif import CIFHead, CIFInference
from asr.state import state_field
from asr.types import Hypothesis

__all__ = ["CifGreedySearch", "CifStreamState", "cif_hypotheses"]


def cif_hypotheses(
    out: CIFInference, log_probs: Tensor, end_id: int | None, blank_id: int = 0
) -> list[Hypothesis]:
    """The argmax hypothesis of every utterance of a CIF inference.

    Args:
        out: :meth:`CIFHead.infer`'s result.
        log_probs: (B, N, V) log-softmax of ``out.logits``.
        end_id: the label that ends a hypothesis (None without an end slot).
        blank_id: the label that gives no token.
    """
    best_lp, best = log_probs.max(dim=-1)
    results = []
    for tokens, lps, frames, count in zip(
        best.tolist(), best_lp.tolist(), out.fire_frames.tolist(), out.token_lens.tolist()
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


@dataclass(frozen=True)
class CifStreamState:
    """Streaming state of :class:`CifGreedySearch`.

    Attributes:
        enc: (B, F, D) encoder frames of the segment so far, right-aligned: the last
            ``num_frames`` of each row are valid (zeros before them), so that streams of
            different lengths stack (:mod:`asr.state` left-pads to the longest) and split back
            to their own frames.
        num_frames: (B,) int64 frames stored.
    """

    enc: Tensor = state_field(batch_dim=0, ragged_dim=1, counted_by="num_frames")
    num_frames: Tensor = state_field(batch_dim=0)


class CifGreedySearch:
    """Greedy CIF decoding (a :class:`~asr.decoding.base.Searcher` and a streaming searcher).

    Args:
        head: the CIF head.
        cfg: uses ``blank_penalty`` (``segments: ctc``).
        blank_id: id dropped from the output.
    """

    def __init__(self, head: CIFHead, cfg: SearchConfig, blank_id: int = 0) -> None:
        self.head = head
        self.cfg = cfg
        self.blank_id = blank_id

    @torch.no_grad()
    def __call__(self, enc: Tensor, enc_lens: Tensor) -> list[list[Hypothesis]]:
        """enc (B, T, D), enc_lens (B,) -> one hypothesis per utterance."""
        check_encoder_output(enc, enc_lens)
        return [[hyp] for hyp in self._search(enc, enc_lens.to(enc.device))]

    def _search(self, enc: Tensor, enc_lens: Tensor) -> list[Hypothesis]:
        out = self.head.infer(enc, enc_lens, self.cfg.blank_penalty)  # logits (B, N, V)
        log_probs = torch.log_softmax(out.logits.float(), dim=-1)
        return cif_hypotheses(out, log_probs, self.head.end_id, self.blank_id)

    # ------------------------------------------------------------------------- streaming

    @torch.no_grad()
    def init_state(self, batch_size: int, device: torch.device | str) -> CifStreamState:
        """State of ``batch_size`` new streams (no frame yet)."""
        dim = self.head.input_proj.in_features
        weight = self.head.input_proj.weight
        return CifStreamState(
            enc=torch.zeros(batch_size, 0, dim, dtype=weight.dtype, device=device),
            num_frames=torch.zeros(batch_size, dtype=torch.int64, device=device),
        )

    @torch.no_grad()
    def step(self, enc: Tensor, enc_lens: Tensor, state: CifStreamState) -> CifStreamState:
        """Appends a chunk's frames: enc (B, T, D), enc_lens (B,) valid frames of it (the store
        grows to the most frames a stream then holds: one device sync)."""
        check_encoder_output(enc, enc_lens)
        enc_lens = enc_lens.to(enc.device, torch.int64)
        num_frames = state.num_frames + enc_lens
        width = int(num_frames.max()) if num_frames.numel() else 0
        valid = torch.arange(enc.shape[1], device=enc.device)[None, :] < enc_lens[:, None]
        cache = right_aligned_append(state.enc, state.num_frames, enc, valid, width)
        return CifStreamState(cache, num_frames)

    @torch.no_grad()
    def partial(self, state: CifStreamState) -> list[Hypothesis]:
        """The greedy hypothesis of the frames so far, per stream."""
        frames = state.enc.shape[1]
        if frames == 0:
            return [Hypothesis(tokens=()) for _ in range(state.num_frames.shape[0])]
        # left-align each row's frames, as the offline search reads them
        times = torch.arange(frames, device=state.enc.device)[None, :]
        source = (times + frames - state.num_frames[:, None]).clamp(max=frames - 1)
        enc = state.enc.gather(1, source[..., None].expand(-1, -1, state.enc.shape[2]))
        enc = enc * (times < state.num_frames[:, None])[..., None].to(enc.dtype)
        return self._search(enc, state.num_frames)

    def finalize(self, state: CifStreamState) -> list[Hypothesis]:
        """Same as :meth:`partial`: the offline search of all the frames."""
        return self.partial(state)
