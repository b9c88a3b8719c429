"""TDT loss: brute-force enumeration of all alignments (values and gradients), sigma, omega,
gradcheck, validation."""

import pytest
import torch

from asr.losses.rnnt import rnnt_loss, rnnt_nll_from_logprobs
from asr.losses.tdt import tdt_lattice_weights, tdt_loss
from asr.losses.tdt_recursion import NEG, tdt_recursion


def brute_force_total(token_w, blank_w, frames, num_tokens, durations):
    """log-sum over the complete paths of one utterance, straight from the arc weights: token
    arcs of any duration (0 included), blank arcs of duration >= 1 only, ending with a blank on
    ``(frames, num_tokens)``; arcs only leave nodes with ``t < frames``."""
    complete = []

    def walk(t, u, score):
        if t >= frames:
            return
        for i, d in enumerate(durations):
            if t + d > frames:
                continue
            if u < num_tokens:
                walk(t + d, u + 1, score + token_w[t, u, i])
            if d >= 1:
                blank = score + blank_w[t, u, i]
                if t + d == frames and u == num_tokens:
                    complete.append(blank)
                else:
                    walk(t + d, u, blank)

    walk(0, 0, torch.zeros((), dtype=blank_w.dtype))
    return torch.logsumexp(torch.stack(complete), dim=0)


def brute_force_nll(logits, tokens, frames, num_tokens, durations, sigma=0.0):
    """Enumerates every TDT alignment of one utterance (paper conventions): the arc weights of
    the logits (token or blank log-probability, minus ``sigma`` for either, plus the duration's
    log-probability) summed over the paths by :func:`brute_force_total`."""
    vocab = logits.shape[-1] - len(durations)
    token_lp = torch.log_softmax(logits[..., :vocab], dim=-1) - sigma
    dur_lp = torch.log_softmax(logits[..., vocab:], dim=-1)
    steps = torch.arange(num_tokens)
    targets = torch.as_tensor(tokens)[:num_tokens]
    token_w = token_lp[:, steps, targets].unsqueeze(-1) + dur_lp[:, :num_tokens]  # (T, U, D)
    blank_w = token_lp[..., 0].unsqueeze(-1) + dur_lp  # (T, U + 1, D)
    return -brute_force_total(token_w, blank_w, frames, num_tokens, durations)


@pytest.mark.parametrize(
    "durations", [(0, 1, 2), (1,), (1, 2, 4), (0, 1, 2, 3, 4)], ids=lambda d: str(list(d))
)
def test_equals_brute_force_enumeration_ragged(durations):
    vocab, frames, num_tokens = 5, 5, 3
    frame_lens, token_lens = torch.tensor([5, 4, 3, 5]), torch.tensor([3, 2, 1, 0])
    logits = torch.randn(4, frames, num_tokens + 1, vocab + len(durations), dtype=torch.float64)
    tokens = torch.randint(1, vocab, (4, num_tokens))
    loss = tdt_loss(logits, tokens, frame_lens, token_lens, durations, reduction="none")
    for b in range(4):
        ref = brute_force_nll(
            logits[b], tokens[b], int(frame_lens[b]), int(token_lens[b]), durations
        )
        torch.testing.assert_close(loss[b], ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("durations", [(0, 1, 2), (1, 2, 4), (0, 2, 3)], ids=str)
def test_gradients_equal_autograd_through_brute_force_ragged(durations):
    """The recursion's closed-form gradients (occupations from alpha and beta) == autograd
    through the enumeration of every alignment, per utterance of a padded batch."""
    vocab, frames, num_tokens = 4, 5, 3
    frame_lens, token_lens = torch.tensor([5, 4, 3, 5]), torch.tensor([3, 2, 1, 0])
    gen = torch.Generator().manual_seed(sum(durations))
    logits = torch.randn(4, frames, num_tokens + 1, vocab + len(durations), generator=gen,
                         dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(1, vocab, (4, num_tokens), generator=gen)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    loss = tdt_loss(logits, tokens, frame_lens, token_lens, durations, sigma=0.05,
                    reduction="none", backend="torch")
    (grad,) = torch.autograd.grad((loss * weights).sum(), logits)
    ref = torch.zeros_like(logits)
    for b in range(4):
        t_b, u_b = int(frame_lens[b]), int(token_lens[b])
        x = logits[b, :t_b, : u_b + 1].detach().requires_grad_(True)
        nll = brute_force_nll(x, tokens[b], t_b, u_b, durations, sigma=0.05)
        ref[b, :t_b, : u_b + 1] = torch.autograd.grad(nll * weights[b], x)[0]
    torch.testing.assert_close(grad, ref, rtol=1e-10, atol=1e-12)


def test_recursion_keeps_the_callers_threads():
    """The small recursion runs on one thread and gives the caller's back (2 here: the tests'
    own default, tests/conftest.py, is the 1 that the recursion sets)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        logits = torch.randn(2, 6, 4, 5 + 3, requires_grad=True)
        tokens = torch.randint(1, 5, (2, 3))
        tdt_loss(logits, tokens, torch.tensor([6, 4]), torch.tensor([3, 2]), (0, 1, 2)).backward()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_sigma_undernormalisation_matches_brute_force():
    durations = (0, 1, 2)
    logits = torch.randn(1, 4, 3, 4 + 3, dtype=torch.float64)
    tokens = torch.tensor([[2, 3]])
    loss = tdt_loss(logits, tokens, torch.tensor([4]), torch.tensor([2]), durations, sigma=0.05)
    ref = brute_force_nll(logits[0], tokens[0], 4, 2, durations, sigma=0.05)
    torch.testing.assert_close(loss, ref)
    assert loss > tdt_loss(logits, tokens, torch.tensor([4]), torch.tensor([2]), durations)


def test_durations_one_is_one_symbol_per_frame():
    # With durations (1,) every arc consumes a frame: with T == U + 1 the only alignment emits
    # one token per frame and a final blank.
    logits = torch.randn(1, 3, 3, 4 + 1, dtype=torch.float64)
    tokens = torch.tensor([[1, 3]])
    lp = torch.log_softmax(logits[0, :, :, :4], dim=-1)
    expected = -(lp[0, 0, 1] + lp[1, 1, 3] + lp[2, 2, 0])
    loss = tdt_loss(logits, tokens, torch.tensor([3]), torch.tensor([2]), (1,))
    torch.testing.assert_close(loss, expected)


def test_gradcheck_float64():
    durations = (0, 1, 2)
    logits = torch.randn(2, 4, 3, 4 + 3, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(1, 4, (2, 2))
    frame_lens, token_lens = torch.tensor([4, 3]), torch.tensor([2, 1])

    def fn(logits):
        return tdt_loss(logits, tokens, frame_lens, token_lens, durations, reduction="none")

    assert torch.autograd.gradcheck(fn, (logits,), fast_mode=True)


def test_padding_invariance_and_float32_under_autocast():
    durations = (0, 1, 2)
    logits = torch.randn(2, 6, 4, 5 + 3)
    tokens = torch.randint(1, 5, (2, 3))
    frame_lens, token_lens = torch.tensor([6, 4]), torch.tensor([3, 2])
    batch = tdt_loss(logits, tokens, frame_lens, token_lens, durations, reduction="none")
    alone = tdt_loss(logits[1:, :4, :3], tokens[1:, :2], frame_lens[1:], token_lens[1:], durations)
    torch.testing.assert_close(batch[1], alone)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert tdt_loss(logits.bfloat16(), tokens, frame_lens, token_lens, durations).dtype == (
            torch.float32
        )


@pytest.mark.parametrize("sigma", [0.0, 0.05])
def test_omega_mixes_the_rnnt_loss_of_the_token_logits(sigma):
    """``(1 - omega) * tdt + omega * rnnt``: the RNN-T term is torchaudio's loss on the token
    logits alone (no durations, no sigma), values and gradients."""
    durations, vocab, omega = (0, 1, 2, 4), 5, 0.1
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 7, 4, vocab + len(durations), generator=gen)
    tokens = torch.randint(1, vocab, (3, 3), generator=gen)
    frame_lens, token_lens = torch.tensor([7, 5, 6]), torch.tensor([3, 1, 0])

    def mixed(x):
        return tdt_loss(x, tokens, frame_lens, token_lens, durations, sigma=sigma,
                        reduction="none", omega=omega)

    def reference(x):
        tdt = tdt_loss(x, tokens, frame_lens, token_lens, durations, sigma=sigma,
                       reduction="none")
        rnnt = rnnt_loss(x[..., :vocab], tokens, frame_lens, token_lens, reduction="none")
        return (1 - omega) * tdt + omega * rnnt

    results = []
    for fn in (mixed, reference):
        x = logits.clone().requires_grad_(True)
        loss = fn(x)
        loss.sum().backward()
        results.append((loss.detach(), x.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)
    assert results[0][1][..., vocab:].abs().sum() > 0  # the TDT term still trains durations


def test_omega_keeps_infeasible_utterances_infinite_without_gradient():
    """Two tokens on two frames cannot be aligned with durations (1, 2) although the RNN-T term
    could align them: the mixture is +inf and no gradient reaches that utterance, even summed."""
    logits = torch.randn(2, 4, 3, 5 + 2, dtype=torch.float64, requires_grad=True)
    tokens = torch.tensor([[1, 2], [3, 4]])
    loss = tdt_loss(logits, tokens, torch.tensor([4, 2]), torch.tensor([2, 2]), (1, 2),
                    reduction="none", omega=0.5)
    assert torch.isfinite(loss[0]) and loss[1] == float("inf")
    loss.sum().backward()
    assert logits.grad[1].abs().max() == 0 and logits.grad[0].abs().max() > 0


def test_bad_omega_and_backend_are_reported():
    logits = torch.randn(1, 3, 2, 4 + 2)
    args = (torch.tensor([[1]]), torch.tensor([3]), torch.tensor([1]), (0, 1))
    for omega in (-0.1, 1.0):
        with pytest.raises(ValueError, match="omega"):
            tdt_loss(logits, *args, omega=omega)
    with pytest.raises(ValueError, match="backend"):
        tdt_loss(logits, *args, backend="k2")


def test_bad_durations_are_reported():
    logits = torch.randn(1, 3, 2, 6)
    tokens, lens = torch.tensor([[1]]), (torch.tensor([3]), torch.tensor([1]))
    with pytest.raises(ValueError, match="one >= 1"):
        tdt_loss(logits, tokens, *lens, durations=(0,))
    with pytest.raises(ValueError, match="distinct"):
        tdt_loss(logits, tokens, *lens, durations=(1, 1))


@pytest.mark.parametrize("durations", [(0, 1, 2), (2, 0, 3)], ids=str)
def test_recursion_of_unmasked_weights_equals_brute_force(durations):
    """``tdt_recursion`` takes any weights: finite blank weights of duration 0 and on padding
    must not count (values), and get no gradient (occupations == autograd through the paths)."""
    frames, num_tokens = 5, 3
    frame_lens, token_lens = torch.tensor([5, 4, 3]), torch.tensor([3, 1, 0])
    gen = torch.Generator().manual_seed(7)
    shape = (3, frames, num_tokens + 1, len(durations))
    token_w = torch.randn(shape, generator=gen, dtype=torch.float64)[:, :, :-1].contiguous()
    blank_w = torch.randn(shape, generator=gen, dtype=torch.float64)
    token_w.requires_grad_(True)
    blank_w.requires_grad_(True)
    total = tdt_recursion(token_w, blank_w, frame_lens, token_lens, durations, backend="torch")
    grads = torch.autograd.grad(total.sum(), (token_w, blank_w))
    for b in range(3):
        tok = token_w[b].detach().requires_grad_(True)
        blank = blank_w[b].detach().requires_grad_(True)
        ref = brute_force_total(tok, blank, int(frame_lens[b]), int(token_lens[b]), durations)
        torch.testing.assert_close(total[b], ref, rtol=1e-10, atol=1e-10)
        ref_grads = torch.autograd.grad(ref, (tok, blank), materialize_grads=True)
        torch.testing.assert_close(grads[0][b], ref_grads[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grads[1][b], ref_grads[1], rtol=1e-10, atol=1e-12)


def test_lattice_weights_are_the_losss_arc_weights():
    """``tdt_lattice_weights`` -> ``tdt_recursion`` is ``-tdt_loss``, and blank arcs of duration 0
    are ``NEG`` in the weights themselves (not only after the recursion's masking)."""
    durations = (0, 1, 2)
    logits = torch.randn(2, 5, 4, 5 + 3, dtype=torch.float64)
    tokens = torch.randint(1, 5, (2, 3))
    frame_lens, token_lens = torch.tensor([5, 4]), torch.tensor([3, 2])
    token_w, blank_w = tdt_lattice_weights(logits, tokens, durations, sigma=0.05)
    assert token_w.shape == (2, 5, 3, 3) and blank_w.shape == (2, 5, 4, 3)
    assert bool((blank_w[..., 0] == NEG).all()) and bool((blank_w[..., 1:] > NEG / 2).all())
    total = tdt_recursion(token_w, blank_w, frame_lens, token_lens, durations)
    loss = tdt_loss(logits, tokens, frame_lens, token_lens, durations, sigma=0.05,
                    reduction="none")
    torch.testing.assert_close(-total, loss, rtol=1e-10, atol=1e-10)


def test_rnnt_term_is_infinite_without_frames():
    """``rnnt_nll_from_logprobs`` on a frameless utterance with an empty target: +inf (no path
    ends with a blank), not the log-probability 0 of the empty recursion."""
    sym_lp = torch.randn(2, 3, 1, dtype=torch.float64).log_softmax(1)
    blank_lp = torch.randn(2, 3, 2, dtype=torch.float64).log_softmax(1)
    nll = rnnt_nll_from_logprobs(sym_lp, blank_lp, torch.tensor([3, 0]), torch.tensor([1, 0]))
    assert torch.isfinite(nll[0]) and nll[1] == float("inf")


def test_token_lens_beyond_the_padded_tokens_are_reported():
    logits = torch.randn(1, 3, 2, 4 + 2)
    with pytest.raises(ValueError, match="exceed the padded sizes"):
        tdt_loss(logits, torch.tensor([[1]]), torch.tensor([3]), torch.tensor([2]), (0, 1))
