"""Symbol-delay penalty of the transducer losses (k2's ``delay_penalty``): 0 is exactly the
plain loss; otherwise every loss (RNN-T full, simple, pruned; TDT full, simple, pruned, with its
``omega`` term) equals a brute-force sum over the alignments of tiny utterances in which each
token emitted at frame t gets ``delay_penalty * ((T_b - 1) / 2 - t)``; the centre is each
utterance's own; float64 gradcheck; the Triton kernels (interpreter) agree with torch.

The Triton comparison runs this file as a script in a subprocess with ``TRITON_INTERPRET=1``
(:mod:`interpreter_helpers`)."""

from __future__ import annotations

import itertools
import json
import os

import pytest
import torch
from interpreter_helpers import run_in_interpreter

from asr.losses.delay_penalty import (
    add_delay_penalty,
    add_token_delay_penalty,
    check_delay_penalty,
)
from asr.losses.mutual_information import mutual_information_recursion
from asr.losses.pruned_rnnt import (
    get_pruning_ranges,
    pruned_lattice_logprobs,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    simple_lattice_logprobs,
)
from asr.losses.pruned_tdt import tdt_loss_pruned, tdt_loss_simple, tdt_pruning_ranges
from asr.losses.rnnt import rnnt_loss
from asr.losses.tdt import tdt_lattice_weights, tdt_loss, tdt_nll
from asr.losses.tdt_recursion import tdt_recursion

VOCAB = 5
# Tiny utterances (T_b <= 4, U_b <= 3) in one batch padded to T = 4, U = 3.
FRAME_LENS = torch.tensor([4, 2, 3, 1])
TOKEN_LENS = torch.tensor([3, 1, 2, 0])
PENALTY = 0.7  # large, so that a wrong centre or frame index shows at float64 precision


def batch_inputs(seed: int = 0, dtype=torch.float64, width: int = VOCAB):
    """(B, T, U + 1, W) logits, (B, U) tokens (ids in [1, V)), (B, T, W) am and (B, U + 1, W)
    lm; W is V, or V + D for TDT (:func:`tdt_inputs`)."""
    gen = torch.Generator().manual_seed(seed)
    batch, frames, num_tokens = len(FRAME_LENS), int(FRAME_LENS.max()), int(TOKEN_LENS.max())
    logits = torch.randn(batch, frames, num_tokens + 1, width, generator=gen, dtype=dtype)
    tokens = torch.randint(1, VOCAB, (batch, num_tokens), generator=gen)
    am = torch.randn(batch, frames, width, generator=gen, dtype=dtype)
    lm = torch.randn(batch, num_tokens + 1, width, generator=gen, dtype=dtype)
    return logits, tokens, am, lm


def brute_force_loss(log_probs: torch.Tensor, tokens: list[int], delay_penalty: float) -> float:
    """``-log sum_paths exp(score)`` over every alignment of the standard RNN-T lattice.

    Args:
        log_probs: (T, U + 1, V) normalised log-probs of ONE utterance (its own T and U).
        tokens: its U tokens. delay_penalty: added per symbol as ``p * ((T - 1) / 2 - t)``.
    """
    frames, num_tokens = log_probs.shape[0], len(tokens)
    centre = (frames - 1) / 2
    scores = []
    # An alignment: how many symbols each frame emits before its blank (they sum to U).
    for counts in itertools.product(range(num_tokens + 1), repeat=frames):
        if sum(counts) != num_tokens:
            continue
        score, u = 0.0, 0
        for t, count in enumerate(counts):
            for _ in range(count):
                score += float(log_probs[t, u, tokens[u]]) + delay_penalty * (centre - t)
                u += 1
            score += float(log_probs[t, u, 0])  # the blank leaving frame t
        scores.append(score)
    return -float(torch.logsumexp(torch.tensor(scores, dtype=torch.float64), 0))


def brute_force_batch(log_probs: torch.Tensor, tokens: torch.Tensor, delay_penalty: float):
    """(B,) brute-force losses, each utterance cut to its own lengths."""
    losses = []
    for b, (frames, num_tokens) in enumerate(zip(FRAME_LENS.tolist(), TOKEN_LENS.tolist())):
        own = log_probs[b, :frames, : num_tokens + 1]
        losses.append(brute_force_loss(own, tokens[b, :num_tokens].tolist(), delay_penalty))
    return torch.tensor(losses, dtype=torch.float64)


def full_ranges(batch: int, frames: int, rows: int) -> torch.Tensor:
    """A band of ``rows = U + 1`` positions covering every symbol on every frame: (B, T, U + 1),
    for logits of shape (B, T, U + 1, V)."""
    return torch.arange(rows).expand(batch, frames, rows)


# ---------------------------------------------------------------------------------------------
# delay_penalty = 0 is exactly today's loss


def test_zero_penalty_adds_no_tensor_and_negative_is_refused():
    px = torch.randn(2, 3, 5)
    assert add_delay_penalty(px, torch.tensor([4, 2]), 0.0) is px
    token_w = torch.randn(2, 4, 3, 2)
    assert add_token_delay_penalty(token_w, torch.tensor([4, 2]), 0.0) is token_w
    for bad in (-0.01, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="delay_penalty must be a finite number >= 0"):
            check_delay_penalty(bad)
    with pytest.raises(ValueError, match="delay_penalty"):
        rnnt_loss(torch.randn(1, 2, 2, VOCAB), torch.tensor([[1]]), torch.tensor([2]),
                  torch.tensor([1]), delay_penalty=-0.1)  # fmt: skip


def test_zero_penalty_is_bit_identical_for_every_loss():
    """Each loss with ``delay_penalty=0`` equals, bit for bit (values and gradients), the
    computation it ran before the option existed: torchaudio for the full loss, the lattice
    log-probs through the recursion for the simple and pruned losses."""
    import torchaudio.functional as taf

    logits, tokens, am, lm = batch_inputs(dtype=torch.float32)
    tokens = tokens.masked_fill(torch.arange(tokens.shape[1]) >= TOKEN_LENS[:, None], 0)
    frame_lens = FRAME_LENS.clamp(min=1)

    def grads(fn, *inputs):
        inputs = [x.clone().requires_grad_(True) for x in inputs]
        out = fn(*inputs)
        return (out, *torch.autograd.grad(out.sum(), inputs))

    full = grads(lambda x: rnnt_loss(x, tokens, FRAME_LENS, TOKEN_LENS, reduction="none",
                                     delay_penalty=0.0), logits)  # fmt: skip
    ref = grads(lambda x: taf.rnnt_loss(x, tokens.int(), frame_lens.int(), TOKEN_LENS.int(),
                                        blank=0, reduction="none"), logits)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(full, ref))

    simple = grads(lambda a, b: rnnt_loss_simple(a, b, tokens, FRAME_LENS, TOKEN_LENS, 0.25,
                                                 reduction="none", backend="torch",
                                                 delay_penalty=0.0), am, lm)  # fmt: skip

    def simple_ref(a, b):
        px, py = simple_lattice_logprobs(a, b, tokens, FRAME_LENS, 0.25)
        return -mutual_information_recursion(px, py, TOKEN_LENS, FRAME_LENS, "torch")

    assert all(torch.equal(a, b) for a, b in zip(simple, grads(simple_ref, am, lm)))

    ranges = full_ranges(*logits.shape[:3])
    pruned = grads(lambda x: rnnt_loss_pruned(x, tokens, ranges, FRAME_LENS, TOKEN_LENS,
                                              reduction="none", backend="torch",
                                              delay_penalty=0.0), logits)  # fmt: skip

    def pruned_ref(x):
        px, py = pruned_lattice_logprobs(x, tokens, ranges, FRAME_LENS, TOKEN_LENS)
        return -mutual_information_recursion(px, py, TOKEN_LENS, FRAME_LENS, "torch")

    assert all(torch.equal(a, b) for a, b in zip(pruned, grads(pruned_ref, logits)))


# ---------------------------------------------------------------------------------------------
# delay_penalty > 0 == brute force over the alignments


@pytest.mark.parametrize("delay_penalty", [0.0, PENALTY])
def test_full_loss_equals_brute_force_enumeration(delay_penalty):
    logits, tokens, _, _ = batch_inputs()
    loss = rnnt_loss(logits, tokens, FRAME_LENS, TOKEN_LENS, reduction="none",
                     delay_penalty=delay_penalty, backend="torch")  # fmt: skip
    ref = brute_force_batch(torch.log_softmax(logits, -1), tokens, delay_penalty)
    tol = 1e-12 if delay_penalty else 1e-5  # torchaudio computes in float32
    torch.testing.assert_close(loss.double(), ref, rtol=tol, atol=tol)


def test_penalty_rewards_early_symbols_in_closed_form():
    """Uniform logits, T = 3, U = 1: three equally likely alignments, the symbol at frame 0, 1
    or 2, penalised by +p, 0 and -p (centre 1). The loss drops by ``log((e^p + 1 + e^-p) / 3)``
    and the early alignment takes the most mass: the symbol logit's gradient is most negative
    at frame 0."""
    logits = torch.zeros(1, 3, 2, VOCAB, dtype=torch.float64, requires_grad=True)
    tokens, lens = torch.tensor([[2]]), (torch.tensor([3]), torch.tensor([1]))
    plain = rnnt_loss(logits, tokens, *lens, backend="torch")
    loss = rnnt_loss(logits, tokens, *lens, backend="torch", delay_penalty=PENALTY)
    shift = torch.log(
        (torch.exp(torch.tensor(PENALTY)) + 1 + torch.exp(torch.tensor(-PENALTY))) / 3
    )
    torch.testing.assert_close(loss.double(), plain.double() - shift.double())
    (grad,) = torch.autograd.grad(loss, logits)
    symbol = grad[0, :, 0, 2]  # d loss / d logit of the token at (t, u = 0)
    assert symbol[0] < symbol[1] < symbol[2] < 0


def test_simple_loss_equals_brute_force_on_the_additive_joiner():
    _, tokens, am, lm = batch_inputs(1)
    loss = rnnt_loss_simple(am, lm, tokens, FRAME_LENS, TOKEN_LENS, reduction="none",
                            backend="torch", delay_penalty=PENALTY)  # fmt: skip
    log_probs = torch.log_softmax(am[:, :, None] + lm[:, None], -1)  # (B, T, U + 1, V)
    torch.testing.assert_close(loss, brute_force_batch(log_probs, tokens, PENALTY),
                               rtol=1e-12, atol=1e-12)  # fmt: skip


def test_pruned_loss_equals_full_penalised_loss_when_the_band_covers_every_label():
    """The pipeline of the head (simple loss with the penalty -> ranges -> band logits), with
    ``prune_range = U + 1``: the pruned loss is the full penalised loss (and the brute force)."""
    logits, tokens, am, lm = batch_inputs(2)
    num_tokens = tokens.shape[1]
    _, (px_grad, py_grad) = rnnt_loss_simple(
        am, lm, tokens, FRAME_LENS, TOKEN_LENS, return_grad=True, delay_penalty=PENALTY
    )
    ranges = get_pruning_ranges(px_grad, py_grad, FRAME_LENS, TOKEN_LENS, num_tokens + 1)
    band = torch.gather(logits, 2, ranges[..., None].expand(-1, -1, -1, VOCAB))
    pruned = rnnt_loss_pruned(band, tokens, ranges, FRAME_LENS, TOKEN_LENS, reduction="none",
                              backend="torch", delay_penalty=PENALTY)  # fmt: skip
    full = rnnt_loss(logits, tokens, FRAME_LENS, TOKEN_LENS, reduction="none",
                     backend="torch", delay_penalty=PENALTY)  # fmt: skip
    torch.testing.assert_close(pruned, full, rtol=1e-12, atol=1e-12)
    ref = brute_force_batch(torch.log_softmax(logits, -1), tokens, PENALTY)
    torch.testing.assert_close(pruned, ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# gradients, padding


def test_gradcheck_float64_with_penalty():
    logits, tokens, am, lm = batch_inputs(3)
    ranges = full_ranges(*logits.shape[:3])
    lens = (FRAME_LENS, TOKEN_LENS)
    kw = {"reduction": "none", "backend": "torch", "delay_penalty": PENALTY}
    logits.requires_grad_(True)
    am.requires_grad_(True)
    lm.requires_grad_(True)
    # fast_mode checks random directional derivatives (the full Jacobians have 100+ columns).
    assert torch.autograd.gradcheck(
        lambda x: rnnt_loss(x, tokens, *lens, **kw), (logits,), fast_mode=True
    )
    assert torch.autograd.gradcheck(
        lambda a, b: rnnt_loss_simple(a, b, tokens, *lens, 0.25, 0.1, **kw), (am, lm),
        fast_mode=True,
    )
    assert torch.autograd.gradcheck(
        lambda x: rnnt_loss_pruned(x, tokens, ranges, *lens, **kw), (logits,), fast_mode=True
    )


def _each_loss(logits, tokens, am, lm, frame_lens, token_lens):
    """(full, simple, pruned) per-utterance penalised losses and their summed gradients."""
    kw = {"reduction": "none", "backend": "torch", "delay_penalty": PENALTY}
    ranges = full_ranges(*logits.shape[:3])
    logits, am, lm = (x.clone().requires_grad_(True) for x in (logits, am, lm))
    full = rnnt_loss(logits, tokens, frame_lens, token_lens, **kw)
    simple = rnnt_loss_simple(am, lm, tokens, frame_lens, token_lens, **kw)
    pruned = rnnt_loss_pruned(logits, tokens, ranges, frame_lens, token_lens, **kw)
    grads = torch.autograd.grad((full + simple + 2 * pruned).sum(), (logits, am, lm))
    return torch.stack([full, simple, pruned]), grads


def test_an_utterance_alone_equals_it_in_a_padded_batch():
    """The centre is each utterance's own ``(T_b - 1) / 2``, not the padded T's."""
    logits, tokens, am, lm = batch_inputs(4)
    batch_losses, (g_logits, g_am, g_lm) = _each_loss(
        logits, tokens, am, lm, FRAME_LENS, TOKEN_LENS
    )
    for b in range(1, len(FRAME_LENS)):  # utterance 0 is the longest
        frames, num_tokens = int(FRAME_LENS[b]), int(TOKEN_LENS[b])
        alone, (a_logits, a_am, a_lm) = _each_loss(
            logits[b : b + 1, :frames, : num_tokens + 1], tokens[b : b + 1, :num_tokens],
            am[b : b + 1, :frames], lm[b : b + 1, : num_tokens + 1],
            FRAME_LENS[b : b + 1], TOKEN_LENS[b : b + 1],
        )  # fmt: skip
        torch.testing.assert_close(alone[:, 0], batch_losses[:, b], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a_logits[0], g_logits[b, :frames, : num_tokens + 1])
        torch.testing.assert_close(a_am[0], g_am[b, :frames])
        torch.testing.assert_close(a_lm[0], g_lm[b, : num_tokens + 1])


def test_frameless_utterance_stays_infinite_with_zero_gradient():
    logits, tokens, _, _ = batch_inputs(5)
    frame_lens = torch.tensor([4, 0, 3, 1])
    logits.requires_grad_(True)
    loss = rnnt_loss(logits, tokens, frame_lens, TOKEN_LENS, reduction="none",
                     delay_penalty=PENALTY, backend="torch")  # fmt: skip
    assert torch.isinf(loss[1]) and torch.isfinite(loss[[0, 2, 3]]).all()
    (grad,) = torch.autograd.grad(loss[[0, 2, 3]].sum() + 0 * loss[1], logits)
    assert torch.equal(grad[1], torch.zeros_like(grad[1]))


def test_full_loss_with_penalty_refuses_a_gradient_clamp():
    logits, tokens, _, _ = batch_inputs()
    with pytest.raises(ValueError, match="clamp"):
        rnnt_loss(logits, tokens, FRAME_LENS, TOKEN_LENS, clamp=1.0, delay_penalty=PENALTY)


# ---------------------------------------------------------------------------------------------
# TDT: a token emitted at frame t (any duration) takes the term of frame t

DURATIONS = (0, 1, 2)


def tdt_inputs(seed: int = 0, dtype=torch.float64):
    """:func:`batch_inputs` with the D duration logits: (B, T, U + 1, V + D) logits, (B, U)
    tokens, (B, T, V + D) am, (B, U + 1, V + D) lm."""
    return batch_inputs(100 + seed, dtype, VOCAB + len(DURATIONS))


def tdt_brute_force_loss(logits: torch.Tensor, tokens: list[int], delay_penalty: float) -> float:
    """``-log sum_paths exp(score)`` over every TDT alignment of ONE utterance.

    Args:
        logits: (T, U + 1, V + D) joiner outputs of the utterance (its own T and U).
        tokens: its U tokens. delay_penalty: added per token as ``p * ((T - 1) / 2 - t)``, t the
            frame the token is emitted on (whatever its duration).
    """
    frames, num_tokens = logits.shape[0], len(tokens)
    token_lp = torch.log_softmax(logits[..., :VOCAB], -1)
    dur_lp = torch.log_softmax(logits[..., VOCAB:], -1)
    centre = (frames - 1) / 2
    complete: list[float] = []

    def walk(t: int, u: int, score: float) -> None:
        """Extends a partial path at node (t, u); arcs leave only nodes with t < T, and only a
        blank landing on (T, U) completes it."""
        for i, d in enumerate(DURATIONS):
            if u < num_tokens and t + d < frames:  # a token landing on T ends no path
                token = float(token_lp[t, u, tokens[u]] + dur_lp[t, u, i])
                walk(t + d, u + 1, score + token + delay_penalty * (centre - t))
            if d >= 1 and t + d <= frames:
                blank = score + float(token_lp[t, u, 0] + dur_lp[t, u, i])
                if t + d == frames and u == num_tokens:
                    complete.append(blank)
                elif t + d < frames:
                    walk(t + d, u, blank)

    walk(0, 0, 0.0)
    return -float(torch.logsumexp(torch.tensor(complete, dtype=torch.float64), 0))


def tdt_brute_force_batch(logits: torch.Tensor, tokens: torch.Tensor, delay_penalty: float):
    losses = []
    for b, (frames, num_tokens) in enumerate(zip(FRAME_LENS.tolist(), TOKEN_LENS.tolist())):
        own = logits[b, :frames, : num_tokens + 1]
        losses.append(tdt_brute_force_loss(own, tokens[b, :num_tokens].tolist(), delay_penalty))
    return torch.tensor(losses, dtype=torch.float64)


def test_tdt_zero_penalty_is_bit_identical():
    logits, tokens, _, _ = tdt_inputs(dtype=torch.float32)
    logits.requires_grad_(True)
    loss = tdt_loss(logits, tokens, FRAME_LENS, TOKEN_LENS, DURATIONS, reduction="none",
                    backend="torch", delay_penalty=0.0)  # fmt: skip
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    padded = tokens.masked_fill(torch.arange(tokens.shape[1]) >= TOKEN_LENS[:, None], 0)
    token_w, blank_w = tdt_lattice_weights(logits, padded, DURATIONS)
    ref = tdt_nll(tdt_recursion(token_w, blank_w, FRAME_LENS, TOKEN_LENS, DURATIONS, "torch"))
    (ref_grad,) = torch.autograd.grad(ref.sum(), logits)
    assert torch.equal(loss, ref) and torch.equal(grad, ref_grad)


@pytest.mark.parametrize("delay_penalty", [0.0, PENALTY])
def test_tdt_loss_equals_brute_force_enumeration(delay_penalty):
    logits, tokens, _, _ = tdt_inputs()
    loss = tdt_loss(logits, tokens, FRAME_LENS, TOKEN_LENS, DURATIONS, reduction="none",
                    backend="torch", delay_penalty=delay_penalty)  # fmt: skip
    ref = tdt_brute_force_batch(logits, tokens, delay_penalty)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)


def test_tdt_omega_term_is_the_penalised_rnnt_loss():
    logits, tokens, _, _ = tdt_inputs(1)
    omega, kw = 0.3, {"reduction": "none", "backend": "torch", "delay_penalty": PENALTY}
    mixed = tdt_loss(logits, tokens, FRAME_LENS, TOKEN_LENS, DURATIONS, omega=omega, **kw)
    tdt = tdt_loss(logits, tokens, FRAME_LENS, TOKEN_LENS, DURATIONS, **kw)
    rnnt = rnnt_loss(logits[..., :VOCAB], tokens, FRAME_LENS, TOKEN_LENS, **kw)
    torch.testing.assert_close(mixed, (1 - omega) * tdt + omega * rnnt, rtol=1e-12, atol=1e-12)


def test_simple_tdt_loss_is_the_penalised_tdt_loss_of_the_additive_joiner():
    _, tokens, am, lm = tdt_inputs(2)
    kw = {"reduction": "none", "backend": "torch", "delay_penalty": PENALTY}
    simple = tdt_loss_simple(am, lm, tokens, FRAME_LENS, TOKEN_LENS, DURATIONS, **kw)
    additive = am[:, :, None] + lm[:, None]
    torch.testing.assert_close(simple, tdt_brute_force_batch(additive, tokens, PENALTY),
                               rtol=1e-12, atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("omega", [0.0, 0.3])
def test_pruned_tdt_equals_full_penalised_tdt_when_the_band_covers_every_label(omega):
    logits, tokens, am, lm = tdt_inputs(3)
    num_tokens = tokens.shape[1]
    kw = {"reduction": "none", "backend": "torch", "delay_penalty": PENALTY}
    _, occupations = tdt_loss_simple(am, lm, tokens, FRAME_LENS, TOKEN_LENS, DURATIONS,
                                     return_grad=True, **kw)  # fmt: skip
    ranges = tdt_pruning_ranges(*occupations, FRAME_LENS, TOKEN_LENS, DURATIONS, num_tokens + 1)
    band = torch.gather(logits, 2, ranges[..., None].expand(-1, -1, -1, logits.shape[-1]))
    pruned = tdt_loss_pruned(band, tokens, ranges, FRAME_LENS, TOKEN_LENS, DURATIONS,
                             omega=omega, **kw)  # fmt: skip
    full = tdt_loss(logits, tokens, FRAME_LENS, TOKEN_LENS, DURATIONS, omega=omega, **kw)
    torch.testing.assert_close(pruned, full, rtol=1e-12, atol=1e-12)


def test_tdt_gradcheck_float64_and_padding_invariance_with_penalty():
    logits, tokens, am, lm = tdt_inputs(4)
    kw = {"reduction": "none", "backend": "torch", "delay_penalty": PENALTY, "omega": 0.2}
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: tdt_loss(x, tokens, FRAME_LENS, TOKEN_LENS, DURATIONS, **kw), (x,),
        fast_mode=True,
    )
    a, b = am.clone().requires_grad_(True), lm.clone().requires_grad_(True)
    simple_kw = {k: v for k, v in kw.items() if k != "omega"}
    assert torch.autograd.gradcheck(
        lambda a, b: tdt_loss_simple(a, b, tokens, FRAME_LENS, TOKEN_LENS, DURATIONS,
                                     **simple_kw), (a, b), fast_mode=True,
    )  # fmt: skip
    batch = tdt_loss(logits, tokens, FRAME_LENS, TOKEN_LENS, DURATIONS, **kw)
    for i in range(1, len(FRAME_LENS)):
        frames, num_tokens = int(FRAME_LENS[i]), int(TOKEN_LENS[i])
        alone = tdt_loss(logits[i : i + 1, :frames, : num_tokens + 1],
                         tokens[i : i + 1, :num_tokens], FRAME_LENS[i : i + 1],
                         TOKEN_LENS[i : i + 1], DURATIONS, **kw)  # fmt: skip
        torch.testing.assert_close(alone[0], batch[i], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Triton kernels (interpreter) == torch


def _triton_vs_torch(device: str) -> dict:
    """Max abs differences of values and gradients, triton vs torch, with the penalty."""
    logits, tokens, am, lm = (x.to(device) for x in batch_inputs(6))
    tdt_logits, _, tdt_am, tdt_lm = (x.to(device) for x in tdt_inputs(6))
    frame_lens, token_lens = FRAME_LENS.to(device), TOKEN_LENS.to(device)
    lens = (frame_lens, token_lens)
    ranges = full_ranges(*logits.shape[:3]).to(device)
    losses = {
        "full": (logits, lambda x, kw: rnnt_loss(x, tokens, *lens, **kw)),
        "simple": (am, lambda x, kw: rnnt_loss_simple(x, lm, tokens, *lens, **kw)),
        "pruned": (logits, lambda x, kw: rnnt_loss_pruned(x, tokens, ranges, *lens, **kw)),
        "tdt": (tdt_logits,
                lambda x, kw: tdt_loss(x, tokens, *lens, DURATIONS, omega=0.2, **kw)),
        "tdt_simple": (tdt_am,
                       lambda x, kw: tdt_loss_simple(x, tdt_lm, tokens, *lens, DURATIONS, **kw)),
        "tdt_pruned": (tdt_logits, lambda x, kw: tdt_loss_pruned(
            x, tokens, ranges, *lens, DURATIONS, omega=0.2, **kw)),
    }  # fmt: skip
    results = {}
    for name, (inputs, fn) in losses.items():
        outs = []
        for backend in ("triton", "torch"):
            kw = {"reduction": "none", "backend": backend, "delay_penalty": PENALTY}
            x = inputs.clone().requires_grad_(True)
            loss = fn(x, kw)
            (grad,) = torch.autograd.grad(loss.sum(), x)
            outs.append((loss.detach(), grad))
        results[name] = {
            "loss": float((outs[0][0] - outs[1][0]).abs().max()),
            "grad": float((outs[0][1] - outs[1][1]).abs().max()),
        }
    return results


def _check_triton(results: dict) -> None:
    assert set(results) == {"full", "simple", "pruned", "tdt", "tdt_simple", "tdt_pruned"}
    for name, diffs in results.items():
        for what, value in diffs.items():
            assert value <= 1e-10, f"{name} {what}: {value}"


def test_triton_interpreter_matches_torch_with_penalty():
    _check_triton(run_in_interpreter(__file__))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_compiled_matches_torch_with_penalty_on_gpu():
    _check_triton(_triton_vs_torch("cuda"))


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1")
    torch.set_num_threads(1)
    print(json.dumps(_triton_vs_torch("cpu")))
