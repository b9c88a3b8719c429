"""Full RNN-T loss wrapper: torchaudio agrees with our mutual-information recursion."""

import torch

from asr.losses.mutual_information import mutual_information_recursion
from asr.losses.rnnt import rnnt_loss


def test_wrapper_equals_recursion_on_log_softmax_and_trims_padding():
    batch, frames, tokens_max, vocab = 3, 6, 3, 5
    logits = torch.randn(batch, frames + 2, tokens_max + 3, vocab)  # extra padding on T and U
    tokens = torch.randint(1, vocab, (batch, tokens_max + 2))
    frame_lens, token_lens = torch.tensor([6, 4, 5]), torch.tensor([3, 1, 2])
    loss = rnnt_loss(logits, tokens, frame_lens, token_lens, reduction="none")

    log_probs = torch.log_softmax(logits.double(), dim=-1)
    num_u = tokens.shape[1]
    sym = torch.gather(
        log_probs[:, :, :num_u], 3, tokens[:, None, :, None].expand(-1, log_probs.shape[1], -1, 1)
    )[..., 0]  # (B, T, U)
    px = sym.transpose(1, 2)
    frame_ok = torch.arange(px.shape[2])[None, None, :] < frame_lens[:, None, None]
    px = torch.cat([px.masked_fill(~frame_ok, float("-inf")), px[:, :, :1] * 0 - torch.inf], 2)
    py = log_probs[..., 0].transpose(1, 2)
    total = mutual_information_recursion(px, py, token_lens, frame_lens, backend="torch")
    torch.testing.assert_close(loss.double(), -total, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(
        rnnt_loss(logits, tokens, frame_lens, token_lens), loss.sum(), rtol=1e-6, atol=1e-5
    )


def test_float32_under_autocast_and_gradient_flows():
    logits = torch.randn(2, 4, 3, 6, requires_grad=True)
    tokens = torch.randint(1, 6, (2, 2))
    lens = torch.tensor([4, 3]), torch.tensor([2, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = rnnt_loss(logits.bfloat16(), tokens, *lens)
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_clamp_bounds_the_gradient_of_the_logits():
    """torchaudio's ``clamp`` bounds each logit's gradient to [-clamp, clamp]; -1 leaves it."""
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 6, 4, 5, generator=generator) * 4).requires_grad_()
    tokens = torch.tensor([[1, 2, 3], [4, 4, 0]])
    args = (tokens, torch.tensor([6, 5]), torch.tensor([3, 2]))
    (free,) = torch.autograd.grad(rnnt_loss(logits, *args), logits)
    (clamped,) = torch.autograd.grad(rnnt_loss(logits, *args, clamp=0.05), logits)
    assert free.abs().max() > 0.2
    assert clamped.abs().max() <= 0.05 + 1e-6
