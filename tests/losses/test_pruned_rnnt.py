"""Pruned RNN-T: simple loss == torchaudio on the additive joiner; pruned == full when the band
covers the lattice; pruning bounds are valid; float64 gradcheck of the pieces."""

import pytest
import torch

from asr.losses.mutual_information import mutual_information_recursion
from asr.losses.pruned_rnnt import (
    do_rnnt_pruning,
    gather_log_softmax,
    get_pruning_ranges,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    simple_lattice_logprobs,
)
from asr.losses.pruned_tdt import tdt_loss_simple
from asr.losses.rnnt import rnnt_loss

FRAME_LENS = torch.tensor([9, 6, 8])
TOKEN_LENS = torch.tensor([4, 2, 3])


def make_inputs(vocab=7, frames=9, num_tokens=4, dtype=torch.float32):
    batch = len(FRAME_LENS)
    am = torch.randn(batch, frames, vocab, dtype=dtype)
    lm = torch.randn(batch, num_tokens + 1, vocab, dtype=dtype)
    tokens = torch.randint(1, vocab, (batch, num_tokens))
    return am, lm, tokens


class TinyJoiner(torch.nn.Module):
    def __init__(self, dim=6, vocab=7):
        super().__init__()
        self.out = torch.nn.Linear(dim, vocab)

    def join(self, enc_proj, pred_proj):
        return self.out(torch.tanh(enc_proj + pred_proj))


def test_simple_loss_equals_torchaudio_on_additive_joiner():
    am, lm, tokens = make_inputs()
    loss = rnnt_loss_simple(am, lm, tokens, FRAME_LENS, TOKEN_LENS, reduction="none")
    full_logits = am[:, :, None, :] + lm[:, None, :, :]
    ref = rnnt_loss(full_logits, tokens, FRAME_LENS, TOKEN_LENS, reduction="none")
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("lm_scale,am_scale", [(0.25, 0.0), (0.1, 0.2), (1.0, 0.0)])
def test_smoothed_simple_logprobs_match_explicit_mixture(lm_scale, am_scale):
    am, lm, tokens = make_inputs(dtype=torch.float64)
    px, py = simple_lattice_logprobs(am, lm, tokens, FRAME_LENS, lm_scale, am_scale)
    joint = torch.log_softmax(am[:, :, None] + lm[:, None], dim=-1)  # (B, T, U+1, V)
    lm_lp = torch.log_softmax(lm, dim=-1)[:, None]  # (B, 1, U+1, V)
    am_lp = torch.log_softmax(am, dim=-1)[:, :, None]  # (B, T, 1, V)
    mixed = (1 - lm_scale - am_scale) * joint + lm_scale * lm_lp + am_scale * am_lp
    for b in range(len(FRAME_LENS)):
        for u in range(tokens.shape[1] + 1):
            for t in range(am.shape[1]):
                torch.testing.assert_close(py[b, u, t], mixed[b, t, u, 0])
                if u < tokens.shape[1]:
                    expected = mixed[b, t, u, tokens[b, u]] if t < FRAME_LENS[b] else -torch.inf
                    torch.testing.assert_close(px[b, u, t], torch.as_tensor(expected).double())
    assert torch.isneginf(px[:, :, -1]).all()


def full_and_band(prune_range, dtype=torch.float32):
    am, lm, tokens = make_inputs(dtype=dtype)
    _, (px_grad, py_grad) = rnnt_loss_simple(
        am, lm, tokens, FRAME_LENS, TOKEN_LENS, return_grad=True
    )
    ranges = get_pruning_ranges(px_grad, py_grad, FRAME_LENS, TOKEN_LENS, prune_range)
    joiner = TinyJoiner().to(dtype)
    enc_proj = torch.randn(am.shape[0], am.shape[1], 6, dtype=dtype)
    pred_proj = torch.randn(am.shape[0], tokens.shape[1] + 1, 6, dtype=dtype)
    full_logits = joiner.join(enc_proj[:, :, None], pred_proj[:, None])
    band_logits = joiner.join(*do_rnnt_pruning(enc_proj, pred_proj, ranges))
    return tokens, ranges, full_logits, band_logits


@pytest.mark.parametrize("prune_range", [5, 7])  # U + 1 = 5 and wider than the lattice
def test_pruned_equals_full_when_band_covers_lattice(prune_range):
    tokens, ranges, full_logits, band_logits = full_and_band(prune_range)
    assert band_logits.shape[2] == prune_range
    pruned = rnnt_loss_pruned(band_logits, tokens, ranges, FRAME_LENS, TOKEN_LENS, reduction="none")
    full = rnnt_loss(full_logits, tokens, FRAME_LENS, TOKEN_LENS, reduction="none")
    torch.testing.assert_close(pruned, full, rtol=1e-5, atol=1e-4)


def test_narrow_band_loses_paths_but_stays_finite():
    tokens, ranges, full_logits, band_logits = full_and_band(2)
    pruned = rnnt_loss_pruned(band_logits, tokens, ranges, FRAME_LENS, TOKEN_LENS, reduction="none")
    full = rnnt_loss(full_logits, tokens, FRAME_LENS, TOKEN_LENS, reduction="none")
    assert torch.isfinite(pruned).all() and (pruned >= full - 1e-4).all()
    assert (pruned > full + 1e-3).any()


@pytest.mark.parametrize("prune_range", [2, 3, 4])
def test_pruning_ranges_are_valid_bands(prune_range):
    torch.manual_seed(prune_range)
    tokens, ranges, _, _ = full_and_band(prune_range)
    s_begin = ranges[:, :, 0]
    assert torch.equal(ranges - s_begin[..., None], torch.arange(prune_range).expand_as(ranges))
    for b in range(len(FRAME_LENS)):
        frames, num_tokens = int(FRAME_LENS[b]), int(TOKEN_LENS[b])
        start = s_begin[b, :frames]
        assert start[0] == 0 and start[-1] + prune_range - 1 >= num_tokens
        assert (start >= 0).all() and (
            start + prune_range - 1 <= max(num_tokens, prune_range - 1)
        ).all()
        steps = start[1:] - start[:-1]
        assert (steps >= 0).all() and (steps <= prune_range - 1).all()


def test_ranges_follow_the_occupation_mass():
    # All occupation on the diagonal s = t: the windows must contain it.
    frames, num_tokens, prune_range = 6, 5, 2
    py_grad = torch.zeros(1, num_tokens + 1, frames)
    px_grad = torch.zeros(1, num_tokens, frames + 1)
    for t in range(frames):
        py_grad[0, min(t, num_tokens), t] = 1.0
    ranges = get_pruning_ranges(
        px_grad, py_grad, torch.tensor([frames]), torch.tensor([num_tokens]), prune_range
    )
    for t in range(frames):
        assert min(t, num_tokens) in ranges[0, t].tolist()


def test_gradcheck_simple_loss_float64():
    am, lm, tokens = make_inputs(vocab=5, frames=5, num_tokens=2, dtype=torch.float64)
    frame_lens, token_lens = torch.tensor([5, 3, 4]), torch.tensor([2, 1, 2])
    am.requires_grad_(True)
    lm.requires_grad_(True)

    def fn(am, lm):
        return rnnt_loss_simple(
            am, lm, tokens, frame_lens, token_lens, 0.25, 0.1, reduction="none", backend="torch"
        )

    assert torch.autograd.gradcheck(fn, (am, lm))


def test_gradcheck_pruned_loss_float64():
    tokens, ranges, _, band_logits = full_and_band(3, dtype=torch.float64)
    logits = band_logits.detach()[:, :, :, :5].clone().requires_grad_(True)
    tokens = tokens.clamp(max=4)

    def fn(logits):
        return rnnt_loss_pruned(logits, tokens, ranges, FRAME_LENS, TOKEN_LENS, reduction="none")

    # fast_mode checks random directional derivatives (the full Jacobian is 400+ columns).
    assert torch.autograd.gradcheck(fn, (logits,), fast_mode=True)


def test_simple_occupations_are_the_gradient_of_the_recursion():
    am, lm, tokens = make_inputs(dtype=torch.float64)
    _, (px_grad, py_grad) = rnnt_loss_simple(
        am, lm, tokens, FRAME_LENS, TOKEN_LENS, return_grad=True
    )
    px, py = simple_lattice_logprobs(am, lm, tokens, FRAME_LENS)
    px.requires_grad_(True)
    py.requires_grad_(True)
    total = mutual_information_recursion(px, py, TOKEN_LENS, FRAME_LENS, backend="torch")
    gx, gy = torch.autograd.grad(total.sum(), (px, py))
    torch.testing.assert_close(gx, px_grad)
    torch.testing.assert_close(gy, py_grad)


def test_gather_log_softmax_values_and_gradcheck():
    logits = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 4, (2, 3, 2))
    ref = torch.log_softmax(logits[..., :4], dim=-1).gather(-1, index)
    torch.testing.assert_close(gather_log_softmax(logits, index, 4), ref)
    assert torch.autograd.gradcheck(lambda x: gather_log_softmax(x, index, 4), (logits,))


def test_simple_loss_with_occupations_has_the_same_gradients():
    grads = []
    am0, lm0, tokens = make_inputs(dtype=torch.float64)
    for return_grad in (False, True):
        am, lm = am0.clone().requires_grad_(True), lm0.clone().requires_grad_(True)
        out = rnnt_loss_simple(
            am, lm, tokens, FRAME_LENS, TOKEN_LENS, 0.25, return_grad=return_grad
        )
        loss = out[0] if return_grad else out
        grads.append(torch.autograd.grad(loss * 1.5, (am, lm)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


# --- Every utterance keeps a complete path in the band (long utterances, any occupations) ------
#
# The pruned lattice lets a frame emit at most R - 1 symbols, so it can hold a path iff
# U_b <= T_b * (R - 1); get_pruning_ranges must keep one for every such utterance. (Before the
# fix, the pass that makes consecutive windows overlap pushed the first windows above symbol 0
# whenever an early frame's occupation sat more than (R - 1) * t symbols up, and that utterance's
# pruned loss was inf.)


def variable_lengths(gen, batch, max_frames, max_tokens, prune_range):
    """(frame_lens, token_lens): the longest utterance fills the padding, all are feasible."""
    token_lens = torch.randint(max_tokens // 2, max_tokens + 1, (batch,), generator=gen)
    token_lens[0] = max_tokens
    low = torch.clamp(-(-token_lens // (prune_range - 1)), min=max_frames // 3)
    frame_lens = low + (torch.rand(batch, generator=gen) * (max_frames + 1 - low)).long()
    frame_lens[1] = max_frames
    return frame_lens, token_lens


def assert_guarantees(ranges, frame_lens, token_lens, prune_range):
    """The documented bounds of get_pruning_ranges, on every valid frame, vectorised."""
    s_begin = ranges[:, :, 0]
    offsets = torch.arange(prune_range)
    assert torch.equal(ranges - s_begin[..., None], offsets.expand_as(ranges))
    t = torch.arange(ranges.shape[1])[None, :]
    valid = t < frame_lens[:, None]
    upper = torch.minimum(
        (token_lens + 1 - prune_range).clamp(min=0)[:, None], (prune_range - 1) * t
    )
    assert ((s_begin >= 0) & (s_begin <= upper) | ~valid).all()
    steps = s_begin[:, 1:] - s_begin[:, :-1]
    assert ((steps >= 0) & (steps <= prune_range - 1) | ~valid[:, 1:]).all()
    last = s_begin.gather(1, (frame_lens - 1)[:, None])[:, 0]
    feasible = token_lens <= frame_lens * (prune_range - 1)
    assert (last + prune_range - 1 >= token_lens)[feasible].all()


def band_has_path(ranges, frame_lens, token_lens):
    """(B,) bool: the band holds a complete path (uniform band logits: the loss is finite)."""
    batch, num_frames, prune_range = ranges.shape
    tokens = torch.ones(batch, int(token_lens.max()), dtype=torch.int64)
    logits = torch.zeros(batch, num_frames, prune_range, 2, dtype=torch.float64)
    loss = rnnt_loss_pruned(logits, tokens, ranges, frame_lens, token_lens, reduction="none")
    return torch.isfinite(loss)


def adversarial_occupations(gen, batch, num_frames, num_tokens, kind):
    """(px_grad, py_grad) shaped like the simple loss' occupations, of several shapes."""
    shape_y = (batch, num_tokens + 1, num_frames)
    if kind == "random":
        py_grad = torch.rand(shape_y, generator=gen, dtype=torch.float64)
    elif kind == "sharp":  # log-normal with a large spread: one position dominates each frame
        py_grad = torch.exp(8 * torch.randn(shape_y, generator=gen, dtype=torch.float64))
    else:  # "top": all the mass on the highest symbol positions from the first frames on
        py_grad = torch.zeros(shape_y, dtype=torch.float64)
        py_grad[:, -3:] = 1.0
    px_grad = torch.rand(batch, num_tokens, num_frames + 1, generator=gen, dtype=torch.float64)
    if kind != "random":
        px_grad.zero_()  # only the node occupations (py_grad) place the windows
    return px_grad, py_grad


@pytest.mark.parametrize("prune_range", [2, 3, 4, 5, 10])
def test_pruning_ranges_keep_a_path_for_any_occupations(prune_range):
    # Property test: 3 occupation shapes x 8 seeds x 12 utterances per range, lengths up to
    # T = 80 / U = 60 and from infeasible (U_b > T_b (R - 1)) to band wider than the lattice.
    for kind in ("random", "sharp", "top"):
        for seed in range(8):
            gen = torch.Generator().manual_seed(1000 * prune_range + seed)
            batch, num_frames, num_tokens = 12, 80, 60
            frame_lens = torch.randint(1, num_frames + 1, (batch,), generator=gen)
            frame_lens[0] = num_frames
            token_lens = torch.randint(0, num_tokens + 1, (batch,), generator=gen)
            token_lens[1] = num_tokens
            token_lens[2] = min(num_tokens, int(frame_lens[2]) * (prune_range - 1))  # on the edge
            px_grad, py_grad = adversarial_occupations(gen, batch, num_frames, num_tokens, kind)
            ranges = get_pruning_ranges(px_grad, py_grad, frame_lens, token_lens, prune_range)
            assert_guarantees(ranges, frame_lens, token_lens, prune_range)
            feasible = token_lens <= frame_lens * (prune_range - 1)
            has_path = band_has_path(ranges, frame_lens, token_lens)
            assert torch.equal(has_path, feasible), (kind, seed, frame_lens, token_lens)


def full_loss_float64(logits, tokens, frame_lens, token_lens):
    """Reference: full-lattice RNN-T loss of (B, T, U + 1, V) logits in float64, no pruning."""
    inf = float("inf")
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    batch, num_frames, _, _ = logits.shape
    index = tokens[:, None, :, None].expand(batch, num_frames, -1, 1)
    px = log_probs[:, :, :-1].gather(3, index)[..., 0].transpose(1, 2)  # (B, U, T)
    px = px.masked_fill(torch.arange(num_frames)[None, None, :] >= frame_lens[:, None, None], -inf)
    px = torch.cat([px, px.new_full(px.shape[:2] + (1,), -inf)], dim=2)
    py = log_probs[..., 0].transpose(1, 2)  # (B, U + 1, T)
    return -mutual_information_recursion(px, py, token_lens, frame_lens, backend="torch")


def random_case(gen, frame_lens, token_lens, vocab=12, dim=8):
    """Random simple-loss inputs and a random non-linear joiner (an untrained model)."""
    batch, num_frames, num_tokens = len(frame_lens), int(frame_lens.max()), int(token_lens.max())
    am = 2 * torch.randn(batch, num_frames, vocab, generator=gen, dtype=torch.float64)
    lm = 2 * torch.randn(batch, num_tokens + 1, vocab, generator=gen, dtype=torch.float64)
    tokens = torch.randint(1, vocab, (batch, num_tokens), generator=gen)
    enc = torch.randn(batch, num_frames, dim, generator=gen, dtype=torch.float64)
    pred = torch.randn(batch, num_tokens + 1, dim, generator=gen, dtype=torch.float64)
    weight = torch.randn(dim, vocab, generator=gen, dtype=torch.float64)

    def join(enc, pred):
        return 3 * torch.tanh(enc + pred) @ weight

    return am, lm, tokens, enc, pred, join


def trained_like_case(gen, frame_lens, token_lens, vocab=40, peak=10.0):
    """Simple-loss inputs peaked on one random alignment (sharp occupations, like a trained
    model's), with bursts of several symbols on one frame, often in the first frames."""
    batch, num_frames, num_tokens = len(frame_lens), int(frame_lens.max()), int(token_lens.max())
    tokens = torch.randint(1, vocab, (batch, num_tokens), generator=gen)
    am = torch.zeros(batch, num_frames, vocab, dtype=torch.float64)
    lm = torch.zeros(batch, num_tokens + 1, vocab, dtype=torch.float64)
    am[:, :, 0] = 1.5 * peak  # blank wins where the frame's symbols are done
    for b in range(batch):
        frames, count = int(frame_lens[b]), int(token_lens[b])
        weights = torch.rand(frames, generator=gen, dtype=torch.float64) ** 4  # bursty
        weights[: min(3, frames)] += 0.2  # early bursts are what pushed windows up
        per_frame = torch.multinomial(weights, count, replacement=True, generator=gen)
        for u, t in enumerate(per_frame.sort().values.tolist()):
            am[b, t, tokens[b, u]] += peak  # symbol u is emitted on frame t
            lm[b, u, tokens[b, u]] += peak
    am += 0.5 * torch.randn(am.shape, generator=gen, dtype=torch.float64)
    lm += 0.5 * torch.randn(lm.shape, generator=gen, dtype=torch.float64)

    def join(enc, pred):  # the real joiner agrees with the alignment too
        return enc + pred

    return am, lm, tokens, am, lm, join


def pruned_and_full(case, frame_lens, token_lens, prune_range):
    am, lm, tokens, enc, pred, join = case
    _, (px_grad, py_grad) = rnnt_loss_simple(
        am, lm, tokens, frame_lens, token_lens, 0.25, reduction="none", return_grad=True
    )
    ranges = get_pruning_ranges(px_grad, py_grad, frame_lens, token_lens, prune_range)
    assert_guarantees(ranges, frame_lens, token_lens, prune_range)
    band_logits = join(*do_rnnt_pruning(enc, pred, ranges))
    pruned = rnnt_loss_pruned(band_logits, tokens, ranges, frame_lens, token_lens, reduction="none")
    full = full_loss_float64(join(enc[:, :, None], pred[:, None]), tokens, frame_lens, token_lens)
    return pruned, full


CASES = {"random": random_case, "trained_like": trained_like_case}


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("num_tokens,max_frames", [(50, 160), (100, 300)])
def test_pruned_loss_is_finite_for_every_utterance(kind, num_tokens, max_frames):
    for prune_range in (2, 3, 5, 10):
        gen = torch.Generator().manual_seed(7 * num_tokens + prune_range)
        frame_lens, token_lens = variable_lengths(gen, 4, max_frames, num_tokens, prune_range)
        case = CASES[kind](gen, frame_lens, token_lens)
        pruned, full = pruned_and_full(case, frame_lens, token_lens, prune_range)
        assert torch.isfinite(pruned).all(), (kind, prune_range, pruned, frame_lens, token_lens)
        assert torch.isfinite(full).all()
        assert (pruned >= full - 1e-9 * full.abs()).all()  # the band keeps a subset of the paths


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("num_tokens,max_frames", [(50, 120), (100, 200)])
def test_pruned_equals_full_float64_when_band_covers_long_lattice(kind, num_tokens, max_frames):
    for extra in (1, 3):  # R = U + 1 and a band wider than the lattice
        gen = torch.Generator().manual_seed(num_tokens + extra)
        prune_range = num_tokens + extra
        frame_lens, token_lens = variable_lengths(gen, 3, max_frames, num_tokens, prune_range)
        case = CASES[kind](gen, frame_lens, token_lens)
        pruned, full = pruned_and_full(case, frame_lens, token_lens, prune_range)
        assert pruned.dtype == torch.float64
        torch.testing.assert_close(pruned, full, rtol=1e-10, atol=1e-9)
        _, _, tokens, enc, pred, join = case  # the float64 reference agrees with torchaudio
        logits = join(enc[:, :, None], pred[:, None])
        ref = rnnt_loss(logits, tokens, frame_lens, token_lens, reduction="none")
        torch.testing.assert_close(full.float(), ref, rtol=1e-5, atol=1e-3)


# --- The simple loss' normaliser stays exact where am and lm disagree ---------------------------
#
# ``log sum_v exp(am[t, v] + lm[u, v])`` through ``exp(am - max) @ exp(lm - max)^T`` underflows in
# float32 once the best joint symbol of (t, u) is ~87 nats below max(am[t]) + max(lm[u]); the
# pairs where that happens must be redone in log space (values and gradients).


def disagreeing_inputs(nats):
    """float64 am / lm with a peak of ``nats`` on a random symbol per frame / per row: where the
    two peaks differ, the pair disagrees by ``nats``; where they coincide, it does not."""
    gen = torch.Generator().manual_seed(31)
    batch, frames, num_tokens, vocab = 2, 7, 3, 6
    am = torch.randn(batch, frames, vocab, generator=gen, dtype=torch.float64)
    lm = torch.randn(batch, num_tokens + 1, vocab, generator=gen, dtype=torch.float64)
    for logits in (am, lm):
        peaks = torch.randint(0, vocab, logits.shape[:2] + (1,), generator=gen)
        logits.scatter_add_(2, peaks, torch.full(peaks.shape, float(nats), dtype=torch.float64))
    tokens = torch.randint(1, vocab, (batch, num_tokens), generator=gen)
    return am, lm, tokens, torch.tensor([7, 5]), torch.tensor([3, 2])


@pytest.mark.parametrize("nats", [90, 200])
def test_simple_loss_matches_float64_where_am_and_lm_disagree(nats):
    am64, lm64, tokens, frame_lens, token_lens = disagreeing_inputs(nats)
    # the case of the issue: one-hot peaks on different symbols, -90.69 (not -92.66) at 90 nats
    am_peak = torch.zeros(1, 1, 6).index_fill(2, torch.tensor([1]), nats)
    lm_peak = torch.zeros(1, 2, 6).index_fill(2, torch.tensor([2]), nats)
    _, py = simple_lattice_logprobs(am_peak, lm_peak, torch.tensor([[1]]), torch.tensor([1]))
    exact = -torch.logsumexp(torch.tensor([0.0, nats, nats, 0, 0, 0], dtype=torch.float64), 0)
    assert py[0, 0, 0].item() == pytest.approx(exact.item(), abs=1e-4)  # blank arc of (0, 0)

    am = am64.float().requires_grad_(True)
    lm = lm64.float().requires_grad_(True)
    loss = rnnt_loss_simple(am, lm, tokens, frame_lens, token_lens, reduction="none")
    am64.requires_grad_(True)
    lm64.requires_grad_(True)
    ref = full_loss_float64(am64[:, :, None] + lm64[:, None], tokens, frame_lens, token_lens)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-6, atol=1e-4)
    grads = torch.autograd.grad(loss.sum(), (am, lm))
    ref_grads = torch.autograd.grad(ref.sum(), (am64, lm64))
    for got, want in zip(grads, ref_grads):  # float32 rounding of ~200-nat logits: ~3e-4
        torch.testing.assert_close(got.double(), want, rtol=0.0, atol=1e-3)
    # the smoothed arcs too (every entry), and the occupations used for pruning
    px, py = simple_lattice_logprobs(am, lm, tokens, frame_lens, 0.25, 0.1)
    px64, py64 = simple_lattice_logprobs(am64, lm64, tokens, frame_lens, 0.25, 0.1)
    torch.testing.assert_close(px.double(), px64, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(py.double(), py64, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
def test_simple_losses_take_am_and_lm_of_different_dtypes(kind):
    """An encoder side in float32 and a predictor side in bfloat16 (or float64 with float32) are
    computed in the wider of float32 and their dtypes; the matmul refused the pair."""
    gen = torch.Generator().manual_seed(7)
    am = torch.randn(2, 5, 9, generator=gen)
    lm = torch.randn(2, 3, 9, generator=gen).bfloat16()
    tokens = torch.tensor([[1, 2], [3, 0]])
    frame_lens, token_lens = torch.tensor([5, 4]), torch.tensor([2, 1])

    def simple(am, lm):
        if kind == "rnnt":
            return rnnt_loss_simple(am, lm, tokens, frame_lens, token_lens, reduction="none")
        return tdt_loss_simple(am, lm, tokens, frame_lens, token_lens, (0, 1, 2), reduction="none")

    mixed = simple(am, lm)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, simple(am, lm.float()))
    wide = simple(am.double(), lm.float())
    assert wide.dtype == torch.float64
    torch.testing.assert_close(wide, simple(am.double(), lm.double()))


@pytest.mark.parametrize("garbage", [float("nan"), float("inf")])
@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
def test_simple_losses_ignore_non_finite_padding(kind, garbage):
    """NaN or inf on the padded frames of ``am`` and the padded rows of ``lm`` leave the loss,
    the gradients and the occupations of the utterance alone; they reached its gradients through
    the normaliser's matmul (0 * NaN) and its occupations through the recursion."""
    gen = torch.Generator().manual_seed(8)
    durations, vocab = (0, 1, 2), 7
    width = vocab + (3 if kind == "tdt" else 0)
    am = torch.randn(2, 6, width, generator=gen, dtype=torch.float64)
    lm = torch.randn(2, 5, width, generator=gen, dtype=torch.float64)
    am[0, 4:], lm[0, 3:] = garbage, garbage  # utterance 0: T = 4, U = 2
    tokens = torch.tensor([[1, 2, 0, 0], [3, 1, 4, 2]])
    frame_lens, token_lens = torch.tensor([4, 6]), torch.tensor([2, 4])

    def simple(am, lm, tokens, frame_lens, token_lens):
        args = (am, lm, tokens, frame_lens, token_lens)
        if kind == "rnnt":
            return rnnt_loss_simple(*args, reduction="none", return_grad=True)
        return tdt_loss_simple(*args, durations, reduction="none", return_grad=True)

    inputs = (am.requires_grad_(True), lm.requires_grad_(True))
    losses, occupations = simple(am, lm, tokens, frame_lens, token_lens)
    grad_am, grad_lm = torch.autograd.grad(losses.sum(), inputs)
    alone_inputs = (am[:1, :4].detach().clone().requires_grad_(True),
                    lm[:1, :3].detach().clone().requires_grad_(True))  # fmt: skip
    alone, alone_occupations = simple(*alone_inputs, tokens[:1, :2], frame_lens[:1], token_lens[:1])
    alone_am, alone_lm = torch.autograd.grad(alone.sum(), alone_inputs)
    torch.testing.assert_close(losses[:1], alone)
    torch.testing.assert_close(grad_am[:1, :4], alone_am)
    torch.testing.assert_close(grad_lm[:1, :3], alone_lm)
    assert grad_am[0, 4:].abs().max() == 0 and grad_lm[0, 3:].abs().max() == 0
    assert torch.isfinite(grad_am).all() and torch.isfinite(grad_lm).all()
    for occupation, expected in zip(occupations, alone_occupations, strict=True):
        if kind == "rnnt":  # (B, U [+ 1], T [+ 1])
            rows, cols = expected.shape[1:]
            torch.testing.assert_close(occupation[:1, :rows, :cols], expected)
        else:  # (B, T, U [+ 1], D)
            torch.testing.assert_close(occupation[:1, :4, : expected.shape[2]], expected)


def test_ranges_follow_the_symbol_arc_occupation_too():
    """Node occupation is blank-arc plus symbol-arc occupation: mass on the symbol arc of
    ``(u=2, t=3)`` alone must put position 2 in frame 3's window (the bounds would allow a
    window without it)."""
    frames, num_tokens, prune_range = 6, 3, 2
    px_grad = torch.zeros(1, num_tokens, frames + 1)
    py_grad = torch.zeros(1, num_tokens + 1, frames)
    px_grad[0, 2, 3] = 1.0
    ranges = get_pruning_ranges(
        px_grad, py_grad, torch.tensor([frames]), torch.tensor([num_tokens]), prune_range
    )
    assert 2 in ranges[0, 3].tolist()
