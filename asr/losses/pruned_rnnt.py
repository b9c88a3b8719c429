"""Pruned RNN-T loss (Kuang et al. 2022, "Pruned RNN-T for fast, memory-efficient ASR training",
arXiv:2206.13236), implemented on our mutual-information recursion (no k2).

Pipeline (what :class:`asr.heads.transducer.TransducerHead` runs):

1. :func:`rnnt_loss_simple`: the "trivial joiner" ``logits[t, u] = am[t] + lm[u]`` normalised
   jointly over the vocabulary, evaluated on the FULL ``(T, U + 1)`` lattice without ever
   materialising ``(B, T, U + 1, V)``: the normaliser is
   ``log(exp(am - max) @ exp(lm - max)^T) + maxes`` (a batched matmul). That product underflows
   where the encoder and predictor logits disagree (the best joint symbol of ``(t, u)`` is far
   below the best of ``am[t]`` plus the best of ``lm[u]``: past ~87 nats in float32 the sum is
   subnormal or 0); the pairs whose product falls below ``tiny ** (2/3)`` (about ``e^-58`` in
   float32, where every term that matters is still a normal number) are recomputed exactly as
   ``logsumexp_v(am[t, v] + lm[u, v])`` in log space, in chunks, with their own backward
   (:class:`_PairLogSumExp`). Such pairs are rare in training, so this costs one comparison and
   one host sync per call when there are none. ``lm_only_scale`` and
   ``am_only_scale`` mix in the lm-only / am-only log-probs for smoothing. With
   ``return_grad=True`` it also returns the arc occupations (d total / d px, d total / d py).
2. :func:`get_pruning_ranges`: per frame, the start ``s_begin[t]`` of the window of
   ``prune_range`` symbol positions holding the most node occupation, made valid for the lattice
   (``s_begin[0] = 0``, ``s_begin[t] <= (R - 1) * t``, non-decreasing, consecutive windows
   overlap, the last frame's window contains ``U_b``), so that the band always holds a complete
   path when one can exist. Result ``ranges (B, T, R)``.
3. :func:`do_rnnt_pruning`: gather the PROJECTED encoder / predictor outputs on the band, so the
   real joiner runs on ``(B, T, R, J)`` instead of ``(B, T, U + 1, J)``.
4. :func:`rnnt_loss_pruned`: log-softmax of the band logits, scattered into the ``px / py`` arc
   tensors of the full lattice (-inf off the band; these have no V dimension, so they are cheap),
   then the same recursion.

Symbol-delay penalty (k2's ``delay_penalty``, :mod:`asr.losses.delay_penalty`): the simple and
the pruned loss add it to their symbol arcs ``px`` before the recursion, so the simple loss'
occupations, and the band chosen from them, are those of the penalised lattice, as in k2.

Topology: the standard one of torchaudio (a symbol stays on its frame, one blank per frame, the
path ends with the blank leaving ``(U_b, T_b - 1)``); ``px[b, :, t] = -inf`` for ``t >= T_b``.
Per-utterance lengths are ``frame_lens`` (T_b) and ``token_lens`` (U_b). Feasibility: the full
lattice has a path whenever ``T_b >= 1`` (any number of symbols may share a frame; an empty
target is the all-blank path), but a band of R positions lets a frame emit at most ``R - 1``
symbols, so the pruned lattice has a path iff ``T_b >= 1`` and ``U_b <= T_b * (R - 1)``.
:func:`get_pruning_ranges` keeps one for every such utterance, whatever the occupations.
Infeasible utterances get a per-utterance loss of ``+inf`` with a zero gradient, in the simple
and the pruned loss alike, as in :mod:`asr.losses.rnnt` and :mod:`asr.losses.tdt`: that
includes ``T_b = 0`` with ``U_b = 0``, whose recursion ends on its start node (log-probability
0) although no path ends with the blank leaving frame ``T_b - 1``. The heads drop them and count
them in ``metrics["num_infinite"]``.
Shapes: B batch, T frames, U tokens, V vocab incl. blank (blank_id 0), R prune_range, J joiner dim.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from asr.losses.delay_penalty import add_delay_penalty
from asr.losses.mutual_information import (
    mutual_information_recursion,
    mutual_information_with_grad,
)
from asr.losses.precision import loss_dtype

__all__ = [
    "simple_lattice_logprobs",
    "rnnt_loss_simple",
    "get_pruning_ranges",
    "pruning_ranges_from_occupation",
    "do_rnnt_pruning",
    "pruned_lattice_logprobs",
    "rnnt_loss_pruned",
    "gather_log_softmax",
    "reduce_per_utterance",
    "frameless_batch_loss",
    "blank_padded_tokens",
    "simple_loss_inputs",
]


class _GatherLogSoftmax(torch.autograd.Function):
    """``log_softmax(logits[..., :C])`` at ``index`` only, with ONE full-size tensor in backward."""

    @staticmethod
    def forward(ctx, logits, index, num_classes):  # type: ignore[override]
        norm = torch.logsumexp(logits[..., :num_classes], dim=-1, keepdim=True)
        ctx.save_for_backward(logits, norm, index)
        ctx.num_classes = num_classes
        return torch.gather(logits, -1, index) - norm

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        logits, norm, index = ctx.saved_tensors
        grad = torch.zeros_like(logits)
        classes = grad[..., : ctx.num_classes]
        torch.sub(logits[..., : ctx.num_classes], norm, out=classes)
        classes.exp_().mul_(-grad_out.sum(-1, keepdim=True))
        grad.scatter_add_(-1, index, grad_out)
        return grad, None, None


def gather_log_softmax(logits: Tensor, index: Tensor, num_classes: int | None = None) -> Tensor:
    """``torch.log_softmax(logits[..., :C], -1).gather(-1, index)`` without the full log-softmax.

    Args:
        logits: (..., N). index: (..., K) int64 in ``[0, C)``. num_classes: C (default N); the
            columns from C on (e.g. TDT duration logits) get no gradient from this function.

    Returns:
        (..., K) log-probabilities.
    """
    classes = logits.shape[-1] if num_classes is None else num_classes
    return _GatherLogSoftmax.apply(logits, index, classes)


def reduce_per_utterance(per_utt: Tensor, reduction: str) -> Tensor:
    """(B,) per-utterance losses -> ``sum`` | ``mean`` | ``none`` (unchanged)."""
    if reduction == "sum":
        return per_utt.sum()
    if reduction == "mean":
        return per_utt.mean()
    if reduction == "none":
        return per_utt
    raise ValueError(f"reduction must be sum|mean|none, got {reduction!r}")


def blank_padded_tokens(
    tokens: Tensor, token_lens: Tensor, blank_id: int = 0, vocab_size: int | None = None,
    *, reserved: Mapping[int, str] | None = None,
) -> Tensor:
    """(B, U) int64 ``tokens`` with ``blank_id`` beyond each ``token_lens``: the losses gather
    log-probs at every position, so whatever the caller padded with (0, WeNet's ignore id -1)
    must be a valid index there; its value never matters.

    The vocabulary check costs a device sync. ``vocab_size=None`` skips it, where the caller
    already ran this function with the vocabulary on these tokens
    (:class:`asr.heads.transducer.TransducerHead` checks each batch once and hands the losses
    ``tokens_checked=True``); the padding, which needs no sync, is still applied.

    ``reserved`` (checked with the vocabulary) names the ids that no target may hold, with what
    each is: the blank of the CTC and transducer heads, the blank and ``<sos/eos>`` of the
    attention decoders (no tokenizer here emits them, :mod:`asr.tokenizers.base`). A target
    holding one is trained as if it were a token (a finite, meaningless CTC or transducer loss;
    an attention decoder taught to end or to emit blank inside a sentence).

    Raises:
        ValueError: if ``vocab_size`` is given and a token within
            ``token_lens`` is outside ``[0, vocab_size)`` (a tokenizer that does not match the
            model's vocabulary), which the losses would otherwise turn into a finite,
            meaningless value or an index error, or is one of the ``reserved`` ids.
    """
    positions = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
    beyond = positions >= token_lens.to(tokens.device)[:, None]
    tokens = tokens.to(torch.int64).masked_fill(beyond, blank_id)
    if vocab_size is not None:
        outside = (tokens < 0) | (tokens >= vocab_size)
        names = dict(reserved or {})
        held = torch.zeros_like(outside)
        if names:
            ids = torch.tensor(sorted(names), device=tokens.device)
            held = torch.isin(tokens, ids) & ~beyond
        if bool((outside | held).any()):  # one device sync for both checks
            b, u = (int(i) for i in (outside | held).nonzero()[0])
            token, lens = int(tokens[b, u]), int(token_lens[b])
            if bool(outside[b, u]):
                raise ValueError(
                    f"tokens[{b}, {u}] = {token} is outside the vocabulary [0, "
                    f"{vocab_size}) of the logits (token_lens[{b}] = {lens})"
                )
            raise ValueError(
                f"tokens[{b}, {u}] = {token} is {names[token]}, which no target may hold "
                f"(token_lens[{b}] = {lens})"
            )
    return tokens


def frameless_batch_loss(inputs: Tensor, reduction: str) -> Tensor:
    """The loss of a batch padded to zero frames: ``+inf`` per utterance (none is feasible),
    attached to the graph of ``inputs`` (B, 0, ...) with a zero gradient."""
    dtype = loss_dtype(inputs)
    inf = torch.full((inputs.shape[0],), float("inf"), dtype=dtype, device=inputs.device)
    return reduce_per_utterance(inf + 0.0 * inputs.sum().to(dtype), reduction)


def _frame_mask(frame_lens: Tensor, num_frames: int) -> Tensor:
    """(B, T) True on valid frames."""
    return torch.arange(num_frames, device=frame_lens.device)[None, :] < frame_lens[:, None]


class _PairLogSumExp(torch.autograd.Function):
    """``logsumexp_v(am[b, t, v] + lm[b, u, v])`` for N listed pairs, in chunks of pairs whose
    ``(chunk, V)`` sums are never all alive at once (backward recomputes them)."""

    @staticmethod
    def forward(ctx, am, lm, batch, frame, row):  # type: ignore[override]
        chunks = [
            torch.logsumexp(am[b, t] + lm[b, u], dim=-1)
            for b, t, u in _pair_chunks(batch, frame, row, am.shape[-1])
        ]
        out = torch.cat(chunks) if chunks else am.new_zeros(0)
        ctx.save_for_backward(am, lm, batch, frame, row, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        am, lm, batch, frame, row, out = ctx.saved_tensors
        grad_am, grad_lm = torch.zeros_like(am), torch.zeros_like(lm)
        start = 0
        for b, t, u in _pair_chunks(batch, frame, row, am.shape[-1]):
            stop = start + b.numel()
            weight = torch.exp(am[b, t] + lm[b, u] - out[start:stop, None])
            weight = weight * grad_out[start:stop, None]  # (chunk, V) softmax * grad
            grad_am.index_put_((b, t), weight, accumulate=True)
            grad_lm.index_put_((b, u), weight, accumulate=True)
            start = stop
        return grad_am, grad_lm, None, None, None


def _pair_chunks(
    batch: Tensor, frame: Tensor, row: Tensor, vocab_size: int, budget: int = 1 << 22
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Splits the pair lists so that one chunk's (chunk, V) tensor has at most ``budget`` items."""
    size = max(1, budget // max(vocab_size, 1))
    for start in range(0, batch.numel(), size):
        yield batch[start : start + size], frame[start : start + size], row[start : start + size]


def simple_loss_inputs(
    am: Tensor, lm: Tensor, frame_lens: Tensor, token_lens: Tensor
) -> tuple[Tensor, Tensor]:
    """``am`` (B, T, V') and ``lm`` (B, U + 1, V') as the simple losses compute them: in one
    dtype, float64 if either is, else float32 (half-precision inputs, or a pair of different
    dtypes, which the matmul refuses), and 0 on the frames past ``frame_lens`` and the rows past
    ``token_lens`` (their values never matter; NaN or inf there would reach the valid pairs'
    gradients through the normaliser's matmul, whose backward multiplies them by 0)."""
    dtype = loss_dtype(am, lm)
    frames = torch.arange(am.shape[1], device=am.device)[None, :, None]
    rows = torch.arange(lm.shape[1], device=lm.device)[None, :, None]
    am = am.to(dtype).masked_fill(frames >= frame_lens.to(am.device)[:, None, None], 0.0)
    lm = lm.to(dtype).masked_fill(rows > token_lens.to(lm.device)[:, None, None], 0.0)
    return am, lm


def _simple_normaliser(am: Tensor, lm: Tensor) -> Tensor:
    """``logsumexp_v(am[:, t, v] + lm[:, u, v])`` for every ``(t, u)``: (B, T, V), (B, U+1, V)
    -> (B, T, U+1), through a matmul, with the underflowing pairs redone in log space (module
    docstring, step 1)."""
    am_max = am.detach().amax(dim=2, keepdim=True)  # (B, T, 1)
    lm_max = lm.detach().amax(dim=2, keepdim=True)  # (B, U+1, 1)
    prod = torch.matmul(torch.exp(am - am_max), torch.exp(lm - lm_max).transpose(1, 2))
    tiny = torch.finfo(prod.dtype).tiny
    norm = prod.clamp_min(tiny).log() + am_max + lm_max.transpose(1, 2)  # (B, T, U+1)
    lost = prod.detach() < tiny ** (2.0 / 3.0)
    if bool(lost.any()):
        batch, frame, row = lost.nonzero(as_tuple=True)
        exact = _PairLogSumExp.apply(am, lm, batch, frame, row)
        norm = norm.index_put((batch, frame, row), exact)
    return norm


def simple_lattice_logprobs(
    am: Tensor,
    lm: Tensor,
    tokens: Tensor,
    frame_lens: Tensor,
    lm_only_scale: float = 0.0,
    am_only_scale: float = 0.0,
    blank_id: int = 0,
) -> tuple[Tensor, Tensor]:
    """Arc log-probs of the additive joiner ``am[:, :, None] + lm[:, None]`` (log-softmax over V).

    Args:
        am: (B, T, V) encoder-side logits. lm: (B, U + 1, V) predictor-side logits.
        tokens: (B, U) token ids. frame_lens: (B,) T_b.
        lm_only_scale / am_only_scale: weights of the lm-only / am-only normalised log-probs
            mixed in: ``(1 - lm - am) * joint + lm * lm_only + am * am_only``, with
            ``lm_only = log_softmax(lm)`` and ``am_only = log_softmax(am)``. k2's am-only part
            differs: ``am`` plus the log of a unigram LM, the mean of ``softmax(lm)`` over the
            batch and its positions, normalised (so an utterance's loss depends on its batch);
            icefall's recipes leave ``am_only_scale`` at 0, where the two agree.

    Returns:
        ``px (B, U, T + 1)`` (``-inf`` for ``t >= T_b``) and ``py (B, U + 1, T)``.
    """
    batch, num_frames, _ = am.shape
    num_tokens = tokens.shape[1]
    if lm.shape[:2] != (batch, num_tokens + 1) or lm.shape[2] != am.shape[2]:
        raise ValueError(
            f"lm has shape {tuple(lm.shape)}, expected ({batch}, {num_tokens + 1}, {am.shape[2]})"
        )
    norm = _simple_normaliser(am, lm)  # (B, T, U+1)

    index = tokens.to(torch.int64)
    am_sym = torch.gather(am, 2, index[:, None, :].expand(batch, num_frames, num_tokens))  # (B,T,U)
    lm_sym = torch.gather(lm[:, :num_tokens], 2, index[:, :, None]).squeeze(2)  # (B, U)
    px = am_sym.transpose(1, 2) + lm_sym[:, :, None] - norm[:, :, :num_tokens].transpose(1, 2)
    py = am[:, :, blank_id][:, None, :] + lm[:, :, blank_id][:, :, None] - norm.transpose(1, 2)

    if lm_only_scale != 0.0 or am_only_scale != 0.0:
        joint_scale = 1.0 - lm_only_scale - am_only_scale
        lm_lse = lm.logsumexp(dim=2)  # (B, U+1)
        am_lse = am.logsumexp(dim=2)  # (B, T)
        px_lm = (lm_sym - lm_lse[:, :num_tokens])[:, :, None]
        py_lm = (lm[:, :, blank_id] - lm_lse)[:, :, None]
        px_am = (am_sym - am_lse[:, :, None]).transpose(1, 2)
        py_am = (am[:, :, blank_id] - am_lse)[:, None, :]
        px = joint_scale * px + lm_only_scale * px_lm + am_only_scale * px_am
        py = joint_scale * py + lm_only_scale * py_lm + am_only_scale * py_am

    valid = _frame_mask(frame_lens, num_frames)[:, None, :]  # (B, 1, T)
    px = px.masked_fill(~valid, float("-inf"))
    px = torch.cat([px, px.new_full((batch, num_tokens, 1), float("-inf"))], dim=2)
    return px, py


def rnnt_loss_simple(
    am: Tensor,
    lm: Tensor,
    tokens: Tensor,
    frame_lens: Tensor,
    token_lens: Tensor,
    lm_only_scale: float = 0.0,
    am_only_scale: float = 0.0,
    blank_id: int = 0,
    backend: str = "auto",
    reduction: str = "sum",
    return_grad: bool = False,
    *,
    tokens_checked: bool = False,
    delay_penalty: float = 0.0,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """RNN-T loss of the additive "trivial joiner" over the full lattice (float32 or float64).

    Args:
        am: (B, T, V); lm: (B, U + 1, V); tokens: (B, U), any padding value beyond
            ``token_lens`` (:func:`blank_padded_tokens`); frame_lens, token_lens: (B,).
        backend: mutual-information backend (``auto | torch | triton``).
        return_grad: also return the detached arc occupations ``(px_grad (B, U, T + 1),
            py_grad (B, U + 1, T))`` used by :func:`get_pruning_ranges`.
        tokens_checked: the tokens were checked against the vocabulary already (the
            transducer head's, once per batch): padded only, no second check and device sync.
        delay_penalty: symbol-delay penalty per frame (:mod:`asr.losses.delay_penalty`; 0 =
            off): the loss and the occupations are those of the penalised lattice, as k2's.

    Returns:
        the loss (reduced per ``reduction``; ``+inf`` for utterances without frames), and
        optionally the occupations.
    """
    with torch.autocast(device_type=am.device.type, enabled=False):
        am, lm = simple_loss_inputs(am, lm, frame_lens, token_lens)
        if am.shape[1] == 0:  # no frames at all: nothing to align, nothing to prune
            loss = frameless_batch_loss(am, reduction)
            if not return_grad:
                return loss
            num_tokens = tokens.shape[1]
            px_grad = am.new_zeros(am.shape[0], num_tokens, 1)
            return loss, (px_grad, am.new_zeros(am.shape[0], num_tokens + 1, 0))
        tokens = blank_padded_tokens(
            tokens, token_lens, blank_id, None if tokens_checked else am.shape[2]
        )
        px, py = simple_lattice_logprobs(
            am, lm, tokens, frame_lens, lm_only_scale, am_only_scale, blank_id
        )
        px = add_delay_penalty(px, frame_lens, delay_penalty)
        if not return_grad:
            total = mutual_information_recursion(px, py, token_lens, frame_lens, backend)
            return reduce_per_utterance(_infeasible_without_frames(-total, frame_lens), reduction)
        total, px_grad, py_grad = mutual_information_with_grad(
            px, py, token_lens, frame_lens, backend
        )
        loss = reduce_per_utterance(_infeasible_without_frames(-total, frame_lens), reduction)
    return loss, (px_grad, py_grad)


def _infeasible_without_frames(per_utt: Tensor, frame_lens: Tensor) -> Tensor:
    """``+inf`` (no gradient) for utterances without frames (module docstring, feasibility)."""
    return per_utt.masked_fill(frame_lens.to(per_utt.device) <= 0, float("inf"))


@torch.no_grad()
def get_pruning_ranges(
    px_grad: Tensor,
    py_grad: Tensor,
    frame_lens: Tensor,
    token_lens: Tensor,
    prune_range: int,
) -> Tensor:
    """Per-frame symbol windows ``ranges (B, T, R)`` from the simple loss' arc occupations.

    Args:
        px_grad: (B, U, T + 1); py_grad: (B, U + 1, T) arc occupations.
        frame_lens, token_lens: (B,) T_b, U_b.
        prune_range: R >= 2 (R = 1 allows no symbol emission).

    Returns:
        int64 ``ranges[b, t] = s_begin[b, t] + arange(R)``; values may exceed ``U_b`` only when
        ``R > U_b + 1`` (those positions are masked by the pruned loss).

    Guarantees, for every utterance and its frames ``t < T_b`` (whatever the occupations):

    * ``0 <= s_begin[t] <= min(max(0, U_b + 1 - R), (R - 1) * t)``, so ``s_begin[0] = 0``;
    * ``0 <= s_begin[t + 1] - s_begin[t] <= R - 1`` (non-decreasing, consecutive windows overlap);
    * if ``U_b <= T_b * (R - 1)``: ``s_begin[T_b - 1] >= U_b + 1 - R`` (the last window holds U_b).

    Together these put a complete path in the band: emit at frame t up to
    ``min(s_begin[t] + R - 1, U_b)``, which is inside frame t + 1's window, then take the blank;
    so the pruned loss of such an utterance is finite, and equals the full loss when
    ``R >= U_b + 1`` (then every window is ``[0, R)``). The cap ``(R - 1) * t`` is what makes
    frame t's window reachable from ``(t=0, u=0)`` at ``R - 1`` symbols per frame at most; the
    frames after ``T_b - 1`` hold padding values that satisfy the same bounds.
    """
    num_frames = py_grad.shape[2]
    occupation = py_grad.clone()
    occupation[:, :-1] += px_grad[:, :, :num_frames]
    return pruning_ranges_from_occupation(occupation, frame_lens, token_lens, prune_range)


@torch.no_grad()
def pruning_ranges_from_occupation(
    occupation: Tensor, frame_lens: Tensor, token_lens: Tensor, prune_range: int
) -> Tensor:
    """:func:`get_pruning_ranges` from node occupations ``(B, U + 1, T)`` (how much of the
    path probability is at symbol position ``u`` during frame ``t``), with the same guarantees;
    the TDT loss (:mod:`asr.losses.pruned_tdt`) gets them from its own lattice."""
    if prune_range < 2:
        raise ValueError(f"prune_range must be >= 2, got {prune_range}")
    batch, num_rows, num_frames = occupation.shape  # num_rows = U + 1
    device = occupation.device
    cumulative = torch.cat([occupation.new_zeros(batch, 1, num_frames), occupation.cumsum(1)], 1)
    num_starts = max(1, num_rows + 1 - prune_range)
    starts = torch.arange(num_starts, device=device)
    ends = (starts + prune_range).clamp(max=num_rows)
    window = cumulative[:, ends] - cumulative[:, starts]  # (B, num_starts, T)
    upper = (token_lens.to(device) + 1 - prune_range).clamp(min=0)  # (B,)
    window = window.masked_fill(starts[None, :, None] > upper[:, None, None], float("-inf"))
    s_begin = window.argmax(dim=1)  # (B, T)

    t_index = torch.arange(num_frames, device=device)[None, :]
    last = (frame_lens.to(device) - 1).clamp(min=0)[:, None]
    s_begin = torch.where(t_index >= last, upper[:, None], s_begin)
    # Reachable from (0, 0) at R - 1 symbols per frame: s_begin[t] <= (R - 1) * t. The bound is
    # applied BEFORE the two passes below because both keep it: cummax because it grows with t,
    # and the overlap pass because it raises s_begin[t] to at most s_begin[t'] - (R - 1) * (t' - t)
    # <= (R - 1) * t. (Capping only frame 0 let that pass push early windows above symbol 0.)
    step = prune_range - 1
    s_begin = torch.minimum(s_begin, step * t_index)
    s_begin = torch.cummax(s_begin, dim=1).values
    # Windows must overlap: s_begin[t] >= s_begin[t'] - (R - 1) * (t' - t) for every t' > t.
    shifted = s_begin - step * t_index
    reverse_max = torch.flip(torch.cummax(torch.flip(shifted, [1]), dim=1).values, [1])
    s_begin = reverse_max + step * t_index
    return s_begin[:, :, None] + torch.arange(prune_range, device=device)


def do_rnnt_pruning(enc_proj: Tensor, pred_proj: Tensor, ranges: Tensor) -> tuple[Tensor, Tensor]:
    """Gathers projected encoder / predictor outputs on the band.

    Args:
        enc_proj: (B, T, J); pred_proj: (B, U + 1, J); ranges: (B, T, R).

    Returns:
        ``(enc_pruned, pred_pruned)``, both (B, T, R, J) (``enc_pruned`` is an expanded view).
    """
    batch, num_frames, prune_range = ranges.shape
    joiner_dim = pred_proj.shape[-1]
    index = ranges.clamp(max=pred_proj.shape[1] - 1).reshape(batch, num_frames * prune_range)
    pred_pruned = torch.gather(pred_proj, 1, index[:, :, None].expand(-1, -1, joiner_dim))
    pred_pruned = pred_pruned.reshape(batch, num_frames, prune_range, joiner_dim)
    enc_pruned = enc_proj[:, :, None, :].expand(batch, num_frames, prune_range, enc_proj.shape[-1])
    return enc_pruned, pred_pruned


def pruned_lattice_logprobs(
    logits: Tensor,
    tokens: Tensor,
    ranges: Tensor,
    frame_lens: Tensor,
    token_lens: Tensor,
    blank_id: int = 0,
) -> tuple[Tensor, Tensor]:
    """Arc log-probs of the full lattice from band logits (``-inf`` off the band).

    Args:
        logits: (B, T, R, V) joiner outputs on the band. tokens: (B, U). ranges: (B, T, R).

    Returns:
        ``px (B, U, T + 1)`` and ``py (B, U + 1, T)``.
    """
    batch, num_frames, _, _ = logits.shape
    num_tokens = tokens.shape[1]
    padded_tokens = torch.cat([tokens.to(torch.int64), tokens.new_zeros(batch, 1).long()], dim=1)
    symbols = torch.gather(padded_tokens, 1, ranges.clamp(max=num_tokens).flatten(1))
    symbols = symbols.reshape(ranges.shape)
    index = torch.stack([symbols, torch.full_like(symbols, blank_id)], dim=-1)
    sym_lp, blank_lp = gather_log_softmax(logits, index).unbind(-1)  # (B, T, R) each

    frame_ok = _frame_mask(frame_lens, num_frames)[:, :, None]
    lens = token_lens.to(ranges.device)[:, None, None]
    px_ok = frame_ok & (ranges < lens)
    py_ok = frame_ok & (ranges <= lens)
    neg_inf = float("-inf")
    px_full = logits.new_full((batch, num_tokens + 1, num_frames + 1), neg_inf)
    px_index = torch.where(px_ok, ranges, num_tokens).transpose(1, 2)
    px_src = sym_lp.masked_fill(~px_ok, neg_inf).transpose(1, 2)
    px = px_full.scatter(1, px_index, px_src)[:, :num_tokens]
    py_full = logits.new_full((batch, num_tokens + 2, num_frames), neg_inf)
    py_index = torch.where(py_ok, ranges, num_tokens + 1).transpose(1, 2)
    py_src = blank_lp.masked_fill(~py_ok, neg_inf).transpose(1, 2)
    py = py_full.scatter(1, py_index, py_src)[:, : num_tokens + 1]
    return px, py


def rnnt_loss_pruned(
    logits: Tensor,
    tokens: Tensor,
    ranges: Tensor,
    frame_lens: Tensor,
    token_lens: Tensor,
    blank_id: int = 0,
    backend: str = "auto",
    reduction: str = "sum",
    *,
    tokens_checked: bool = False,
    delay_penalty: float = 0.0,
) -> Tensor:
    """RNN-T loss restricted to the band ``ranges`` (computed in float32, or float64 if given).

    Args:
        logits: (B, T, R, V) real-joiner outputs on the band (from :func:`do_rnnt_pruning`).
        tokens: (B, U), any padding value; ranges: (B, T, R); frame_lens, token_lens: (B,).
        tokens_checked, delay_penalty: as in :func:`rnnt_loss_simple`.

    Returns:
        the negative log-likelihood of the paths inside the band, reduced per ``reduction``
        (``+inf`` where the band holds no path: ``T_b = 0`` or ``U_b > T_b * (R - 1)``).
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.to(loss_dtype(logits))
        if logits.shape[1] == 0:
            return frameless_batch_loss(logits, reduction)
        tokens = blank_padded_tokens(
            tokens, token_lens, blank_id, None if tokens_checked else logits.shape[-1]
        )
        px, py = pruned_lattice_logprobs(logits, tokens, ranges, frame_lens, token_lens, blank_id)
        px = add_delay_penalty(px, frame_lens, delay_penalty)
        total = mutual_information_recursion(px, py, token_lens, frame_lens, backend)
    return reduce_per_utterance(_infeasible_without_frames(-total, frame_lens), reduction)
