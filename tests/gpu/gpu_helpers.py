"""Shared pieces of the GPU checks (imported by name, as tests/decoding/search_helpers.py is)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes" / "librispeech"
PRESETS = ROOT / "recipes" / "presets"


def max_scaled_diff(value: Tensor, reference: Tensor) -> float:
    """``max |value - reference|`` over ``max(1, max |reference|)`` (both moved to the CPU)."""
    value, reference = value.detach().cpu().double(), reference.detach().cpu().double()
    scale = max(1.0, float(reference.abs().max())) if reference.numel() else 1.0
    return float((value - reference).abs().max()) / scale if reference.numel() else 0.0


def assert_scaled_close(value: Tensor, reference: Tensor, rel: float, what: str = "") -> float:
    """Asserts :func:`max_scaled_diff` <= ``rel`` and equal shapes; returns the difference."""
    assert value.shape == reference.shape, (
        f"{what}: {tuple(value.shape)} != {tuple(reference.shape)}"
    )
    diff = max_scaled_diff(value, reference)
    assert diff <= rel, f"{what}: scaled difference {diff:.3g} > {rel:.1g}"
    return diff


def assert_as_accurate(got: Tensor, cpu32: Tensor, cpu64: Tensor, what: str = "",
                       factor: float = 4.0, floor: float = 1e-5) -> float:
    """A float32 result of the device under test is at most ``factor`` times farther from the
    float64 reference than the CPU's float32 result is (plus ``floor``, scaled as in
    :func:`max_scaled_diff`); returns its scaled distance. Two float32 implementations round
    differently, so this, not a fixed tolerance, says "as good as the CPU"."""
    assert got.shape == cpu64.shape, f"{what}: {tuple(got.shape)} != {tuple(cpu64.shape)}"
    err, cpu_err = max_scaled_diff(got, cpu64), max_scaled_diff(cpu32, cpu64)
    assert err <= factor * cpu_err + floor, (
        f"{what}: scaled error {err:.3g} vs the CPU float32 result's {cpu_err:.3g}"
    )
    return err


def assert_grads_close(module: nn.Module, reference: nn.Module, rel: float) -> float:
    """Every parameter gradient of ``module`` equals that of ``reference`` (same structure);
    returns the largest scaled difference."""
    worst = 0.0
    params = dict(reference.named_parameters())
    for name, param in module.named_parameters():
        ref = params[name]
        if ref.grad is None:
            assert param.grad is None or not param.grad.any(), f"{name}: unexpected gradient"
            continue
        assert param.grad is not None, f"{name}: no gradient"
        worst = max(worst, assert_scaled_close(param.grad, ref.grad, rel, f"grad {name}"))
    return worst


def ragged_lengths(batch: int, longest: int, shortest: int, generator: torch.Generator) -> Tensor:
    """(B,) int64 lengths in [shortest, longest], the first one ``longest``."""
    lens = torch.randint(shortest, longest + 1, (batch,), generator=generator)
    lens[0] = longest
    return lens


def random_tokens(token_lens: Tensor, vocab: int, generator: torch.Generator,
                  first: int = 2) -> Tensor:
    """(B, max U) ids in [first, vocab) zero-padded beyond ``token_lens`` (0 blank, 1 sos/eos)."""
    width = max(int(token_lens.max()), 1)
    tokens = torch.randint(first, vocab, (len(token_lens), width), generator=generator)
    return tokens * (torch.arange(width)[None] < token_lens[:, None])
