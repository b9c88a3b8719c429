"""Mutual-information recursion (torch backend): exact values, occupations, gradcheck, padding."""

import sys
import types

import pytest
import torch

from asr.losses.mutual_information import (
    backward_torch,
    forward_torch,
    mutual_information_occupation,
    mutual_information_recursion,
)


def naive_alpha(px, py):
    """Cell-by-cell recursion, the definition."""
    batch, num_symbols, cols = px.shape
    alpha = torch.full((batch, num_symbols + 1, cols), float("-inf"), dtype=px.dtype)
    alpha[:, 0, 0] = 0.0
    for s in range(num_symbols + 1):
        for t in range(cols):
            terms = []
            if s > 0:
                terms.append(alpha[:, s - 1, t] + px[:, s - 1, t])
            if t > 0:
                terms.append(alpha[:, s, t - 1] + py[:, s, t - 1])
            if terms:
                alpha[:, s, t] = torch.logsumexp(torch.stack(terms), dim=0)
    return alpha


def random_lattice(batch=3, num_symbols=4, num_frames=6, dtype=torch.float64):
    px = torch.randn(batch, num_symbols, num_frames + 1, dtype=dtype)
    py = torch.randn(batch, num_symbols + 1, num_frames, dtype=dtype)
    return px, py


def test_forward_matches_naive_recursion():
    px, py = random_lattice()
    torch.testing.assert_close(forward_torch(px, py), naive_alpha(px, py), rtol=0, atol=1e-12)


def test_backward_start_equals_forward_end_ragged():
    px, py = random_lattice()
    symbol_lens, frame_lens = torch.tensor([4, 2, 0]), torch.tensor([6, 3, 2])
    alpha = forward_torch(px, py)
    beta = backward_torch(px, py, symbol_lens, frame_lens)
    index = torch.arange(3)
    torch.testing.assert_close(beta[:, 0, 0], alpha[index, symbol_lens, frame_lens])
    # Nodes that cannot reach the end node have beta = -inf.
    assert torch.isneginf(beta[1, 3:, :]).all() and torch.isneginf(beta[1, :, 4:]).all()


def test_hand_computed_two_by_one_lattice():
    # S=1, T=1: paths (symbol then blank) and (blank then symbol).
    px = torch.log(torch.tensor([[[0.5, 0.2]]], dtype=torch.float64))
    py = torch.log(torch.tensor([[[0.3], [0.4]]], dtype=torch.float64))
    total = mutual_information_recursion(px, py, backend="torch")
    expected = torch.log(torch.tensor(0.5 * 0.4 + 0.3 * 0.2, dtype=torch.float64))
    torch.testing.assert_close(total, expected.reshape(1))


def test_gradcheck_float64_ragged():
    px, py = random_lattice(batch=3, num_symbols=3, num_frames=4)
    px.requires_grad_(True)
    py.requires_grad_(True)
    symbol_lens, frame_lens = torch.tensor([3, 1, 2]), torch.tensor([4, 4, 2])

    def fn(px, py):
        return mutual_information_recursion(px, py, symbol_lens, frame_lens, backend="torch")

    assert torch.autograd.gradcheck(fn, (px, py))


def test_padding_is_ignored_and_gets_zero_gradient():
    px, py = random_lattice(batch=2, num_symbols=5, num_frames=7)
    symbol_lens, frame_lens = torch.tensor([2, 5]), torch.tensor([3, 7])
    total = mutual_information_recursion(px, py, symbol_lens, frame_lens, backend="torch")
    alone = mutual_information_recursion(
        px[:1, :2, :4].clone(), py[:1, :3, :3].clone(), backend="torch"
    )
    torch.testing.assert_close(total[:1], alone)
    _, px_grad, py_grad = mutual_information_occupation(px, py, symbol_lens, frame_lens, "torch")
    assert px_grad[0, 2:].abs().max() == 0 and px_grad[0, :, 4:].abs().max() == 0
    assert py_grad[0, 3:].abs().max() == 0 and py_grad[0, :, 3:].abs().max() == 0


@pytest.mark.parametrize("garbage", [float("nan"), float("inf")])
def test_nan_or_inf_padding_leaves_values_and_gradients_alone(garbage):
    """Non-finite values beyond an utterance's end (what a padded frame of an overflowing
    network holds) must not reach its arcs' gradients: they did through the backward scores of
    the nodes past the end (``nan + -inf``, ``inf - inf``)."""
    px, py = random_lattice(batch=2, num_symbols=5, num_frames=7)
    px_alone, py_alone = px[:1, :2, :4].clone(), py[:1, :3, :3].clone()
    px[0, 2:], px[0, :, 4:], py[0, 3:], py[0, :, 3:] = garbage, garbage, garbage, garbage
    symbol_lens, frame_lens = torch.tensor([2, 5]), torch.tensor([3, 7])
    px.requires_grad_(True)
    py.requires_grad_(True)
    total = mutual_information_recursion(px, py, symbol_lens, frame_lens, backend="torch")
    gx, gy = torch.autograd.grad(total.sum(), (px, py))
    px_alone.requires_grad_(True)
    py_alone.requires_grad_(True)
    alone = mutual_information_recursion(px_alone, py_alone, backend="torch")
    ax, ay = torch.autograd.grad(alone.sum(), (px_alone, py_alone))
    torch.testing.assert_close(total[:1], alone)
    torch.testing.assert_close(gx[:1, :2, :4], ax)
    torch.testing.assert_close(gy[:1, :3, :3], ay)
    assert gx[0, 2:].abs().max() == 0 and gx[0, :, 4:].abs().max() == 0
    assert gy[0, 3:].abs().max() == 0 and gy[0, :, 3:].abs().max() == 0
    _, px_occ, py_occ = mutual_information_occupation(
        px.detach(), py.detach(), symbol_lens, frame_lens, "torch"
    )
    torch.testing.assert_close(px_occ, gx)
    torch.testing.assert_close(py_occ, gy)


def test_occupations_match_autograd_and_conserve_probability():
    px, py = random_lattice(batch=2, num_symbols=3, num_frames=5)
    px[:, :, -1] = float("-inf")  # standard topology: no symbol after the last frame
    symbol_lens, frame_lens = torch.tensor([3, 2]), torch.tensor([5, 4])
    px.requires_grad_(True)
    py.requires_grad_(True)
    total = mutual_information_recursion(px, py, symbol_lens, frame_lens, backend="torch")
    gx, gy = torch.autograd.grad(total.sum(), (px, py))
    _, px_grad, py_grad = mutual_information_occupation(
        px.detach(), py.detach(), symbol_lens, frame_lens, "torch"
    )
    torch.testing.assert_close(gx, px_grad)
    torch.testing.assert_close(gy, py_grad)
    # Every complete path takes exactly one blank per frame and emits every symbol once.
    for b in range(2):
        per_frame = py_grad[b, :, : frame_lens[b]].sum(0)
        torch.testing.assert_close(per_frame, torch.ones_like(per_frame))
        per_symbol = px_grad[b, : symbol_lens[b]].sum(1)
        torch.testing.assert_close(per_symbol, torch.ones_like(per_symbol))


def test_impossible_lattice_gives_minus_inf_and_zero_grad():
    px, py = random_lattice(batch=1, num_symbols=2, num_frames=3)
    px[:, 1, :] = float("-inf")  # second symbol can never be emitted
    px.requires_grad_(True)
    total = mutual_information_recursion(px, py, backend="torch")
    assert torch.isneginf(total).all()
    (grad,) = torch.autograd.grad(total.sum(), px)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_bad_shapes_and_backend_are_reported():
    px, py = random_lattice()
    with pytest.raises(ValueError, match="py has shape"):
        mutual_information_recursion(px, py[:, :-1])
    with pytest.raises(ValueError, match="auto|torch|triton|k2"):
        mutual_information_recursion(px, py, backend="cuda")
    with pytest.raises(ValueError, match="exceed"):
        mutual_information_recursion(px, py, symbol_lens=torch.tensor([9, 1, 1]))


def test_k2_backend_without_k2_names_the_alternatives(monkeypatch):
    monkeypatch.setitem(sys.modules, "k2", None)  # makes `import k2` raise ImportError
    px, py = random_lattice()
    with pytest.raises(ImportError, match="needs the k2 package.*'torch'"):
        mutual_information_recursion(px, py, backend="k2")
    assert mutual_information_recursion(px, py, backend="auto").shape == (3,)


def test_k2_backend_passes_ragged_boundaries(monkeypatch):
    """A stand-in k2 that reads only ``boundary`` for the lengths must reproduce the torch
    backend on a ragged batch: proves the [0, 0, S_b, T_b] boundary and both call forms."""
    calls = []

    def fake_recursion(px, py, boundary, return_grad=False):
        calls.append(boundary.clone())
        assert boundary.dtype == torch.int64 and boundary[:, :2].eq(0).all()
        lens = boundary[:, 2], boundary[:, 3]
        if return_grad:
            total, px_grad, py_grad = mutual_information_occupation(px, py, *lens, "torch")
            return total, (px_grad, py_grad)
        return mutual_information_recursion(px, py, *lens, backend="torch")

    monkeypatch.setitem(sys.modules, "k2", types.SimpleNamespace(
        mutual_information_recursion=fake_recursion))
    px, py = random_lattice()
    symbol_lens, frame_lens = torch.tensor([4, 2, 0]), torch.tensor([6, 3, 5])
    expected = mutual_information_recursion(px, py, symbol_lens, frame_lens, "torch")
    got = mutual_information_recursion(px, py, symbol_lens, frame_lens, "k2")
    torch.testing.assert_close(got, expected)
    occupations = mutual_information_occupation(px, py, symbol_lens, frame_lens, "k2")
    for a, b in zip(occupations, mutual_information_occupation(px, py, symbol_lens, frame_lens)):
        torch.testing.assert_close(a, b)
    assert [c.tolist() for c in calls] == [[[0, 0, 4, 6], [0, 0, 2, 3], [0, 0, 0, 5]]] * 2
