"""CIF integrate-and-fire (hand-computed, reference loop, gradcheck) and the CIF head: glancing
(first-pass accuracy, never at inference), the end slot, CTC segments (Paraformer-v2)."""

from __future__ import annotations

import math

import pytest
import torch

from asr.decoding import SearchConfig, build_searcher
from asr.heads.cif import (
    CIFConfig,
    CIFHead,
    cif,
    cif_num_fires,
    ctc_greedy_segments,
    segment_means,
)
from asr.heads.ctc import CTCConfig, CTCHead
from asr.losses.cif import scale_alphas
from asr.losses.ctc import ctc_forced_align
from asr.model import ASRModel, HeadsConfig


def reference_cif(hidden: torch.Tensor, alphas: torch.Tensor, threshold: float = 1.0):
    """The paper's sequential loop for one utterance (each alpha < threshold)."""
    fired, accumulated, state = [], 0.0, torch.zeros(hidden.shape[-1], dtype=hidden.dtype)
    for frame, alpha in zip(hidden, alphas.tolist()):
        if accumulated + alpha < threshold:
            accumulated += alpha
            state = state + alpha * frame
        else:
            used = threshold - accumulated
            fired.append(state + used * frame)
            accumulated = alpha - used
            state = accumulated * frame
    if accumulated > threshold / 2:
        fired.append(state)
    return torch.stack(fired) if fired else torch.zeros(0, hidden.shape[-1], dtype=hidden.dtype)


def test_hand_computed_example():
    # cumulative weights 0.3, 0.8, 1.2, 2.1, 2.3, 2.6 -> 2 full tokens + a tail of 0.6 > 0.5
    alphas = torch.tensor([[0.3, 0.5, 0.4, 0.9, 0.2, 0.3]], dtype=torch.float64)
    hidden = torch.arange(1.0, 7.0, dtype=torch.float64).view(1, 6, 1)
    fired, fired_lens = cif(hidden, alphas)
    assert fired_lens.tolist() == [3]
    # token 0: 0.3*1 + 0.5*2 + 0.2*3 = 1.9
    # token 1: 0.2*3 + 0.8*4 = 3.8
    # token 2 (tail): 0.1*4 + 0.2*5 + 0.3*6 = 3.2
    torch.testing.assert_close(fired[0, :, 0], torch.tensor([1.9, 3.8, 3.2], dtype=torch.float64))


def test_hand_computed_multiple_fires_in_one_frame_and_dropped_tail():
    # cumulative 0.5, 2.2, 2.4: frame 1 (alpha 1.7) completes token 0 and all of token 1;
    # the tail 0.4 <= 0.5 is dropped, so 2 tokens = round(2.4)
    alphas = torch.tensor([[0.5, 1.7, 0.2]], dtype=torch.float64)
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    fired, fired_lens = cif(hidden, alphas)
    assert fired_lens.tolist() == [2]
    expected = torch.tensor([[0.5, 0.5], [0.0, 1.0]], dtype=torch.float64)  # 0.5h0+0.5h1 ; 1.0h1
    torch.testing.assert_close(fired[0], expected)


def test_fires_round_of_sum_and_matches_reference_loop():
    batch, frames, dim = 6, 17, 4
    alphas = torch.rand(batch, frames, dtype=torch.float64) * 0.95
    lens = torch.tensor([17, 12, 9, 17, 3, 1])
    alphas = alphas * (torch.arange(frames)[None] < lens[:, None])
    hidden = torch.randn(batch, frames, dim, dtype=torch.float64)
    fired, fired_lens = cif(hidden, alphas)
    sums = alphas.sum(1)
    assert fired_lens.tolist() == [round(s) for s in sums.tolist()]  # no exact halves here
    assert fired.shape == (batch, int(fired_lens.max()), dim)
    for row in range(batch):
        ref = reference_cif(hidden[row], alphas[row])
        count = int(fired_lens[row])
        assert ref.shape[0] == count
        torch.testing.assert_close(fired[row, :count], ref)
        assert (fired[row, count:] == 0).all()


def test_count_rule_and_threshold():
    alphas = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.6], [2.0, 0.0, 0.0]])
    assert cif_num_fires(alphas).tolist() == [1, 2, 2]  # 1.5 -> 1 (halves round down)
    assert cif_num_fires(alphas, threshold=0.5).tolist() == [3, 3, 4]
    _, fired_lens = cif(torch.ones(3, 3, 2), alphas, threshold=0.5, num_fired=2)
    assert fired_lens.tolist() == [2, 2, 2]  # clamped to num_fired


def test_gradcheck_hidden_and_alphas():
    hidden = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    alphas = (torch.rand(2, 5, dtype=torch.float64) * 0.6 + 0.2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda h, a: cif(h, a)[0], (hidden, alphas))
    big = (torch.rand(2, 5, dtype=torch.float64) * 1.2 + 0.3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda h, a: cif(h, a, threshold=0.8)[0], (hidden, big))


def _tiny_cfg(**kwargs) -> CIFConfig:
    base = dict(
        d_model=16, num_heads=2, num_layers=1, ffn_dim=32, dropout=0.0, predictor_dropout=0.0
    )
    base.update(kwargs)
    return CIFConfig(**base)


def test_forward_shapes_and_padding_invariance():
    head = CIFHead(_tiny_cfg(), enc_dim=12, vocab_size=9).eval()
    enc = torch.randn(3, 10, 12)
    enc_lens = torch.tensor([10, 7, 4])
    tokens = torch.randint(3, 9, (3, 4))
    token_lens = torch.tensor([4, 3, 2])
    tokens = tokens * (torch.arange(4)[None] < token_lens[:, None])
    logits, fired_lens = head(enc, enc_lens)
    assert logits.shape == (3, int(fired_lens.max()), 9)
    alphas = head.predict_alphas(enc, enc_lens)
    assert fired_lens.tolist() == cif_num_fires(alphas).tolist()
    assert (alphas[1, 7:] == 0).all()
    out = head.loss(enc, enc_lens, tokens, token_lens)
    assert out.num_utterances == 3
    singles = [
        head.loss(
            enc[i : i + 1, : enc_lens[i]],
            enc_lens[i : i + 1],
            tokens[i : i + 1, : token_lens[i]],
            token_lens[i : i + 1],
        )
        for i in range(3)
    ]
    torch.testing.assert_close(out.loss, sum(s.loss for s in singles), rtol=1e-5, atol=1e-5)
    assert out.metrics["num_tokens"] == 9.0
    ce, qty = out.metrics["ce_loss"], out.metrics["quantity_loss"]
    assert math.isclose(out.loss.item(), ce + qty, rel_tol=1e-5)


def test_float64_head_infers_and_trains_in_float64():
    """The weights keep the model's float64 (they were cast to float32, so the fired embeddings
    met float64 projections): CPU-vs-GPU decoding checks compare float64 models."""
    head = CIFHead(_tiny_cfg(), enc_dim=12, vocab_size=9).double().eval()
    enc = torch.randn(2, 10, 12, dtype=torch.float64)
    enc_lens = torch.tensor([10, 6])
    logits, fired_lens = head(enc, enc_lens)
    assert logits.dtype == torch.float64
    assert head.predict_alphas(enc, enc_lens).dtype == torch.float64
    tokens = torch.tensor([[3, 4, 5], [6, 7, 0]])
    out = head.loss(enc, enc_lens, tokens, torch.tensor([3, 2]))
    assert torch.isfinite(out.loss)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head.float().predict_alphas(enc.float(), enc_lens).dtype == torch.float32


def test_glancing_replaces_floor_ratio_times_errors():
    head = CIFHead(_tiny_cfg(glancing_ratio=0.5), enc_dim=12, vocab_size=9).train()
    enc = torch.randn(2, 12, 12)
    enc_lens = torch.tensor([12, 9])
    tokens = torch.tensor([[3, 4, 5, 6, 7], [8, 3, 4, 0, 0]])
    token_lens = torch.tensor([5, 3])
    with torch.no_grad():  # the first pass, recomputed (no dropout configured)
        scaled = scale_alphas(head.predict_alphas(enc, enc_lens), token_lens)
        fired, _ = cif(enc, scaled, num_fired=5)
        predicted = head.decode(head.input_proj(fired), token_lens, enc, enc_lens).argmax(-1)
    valid = torch.arange(5)[None] < token_lens[:, None]
    errors = ((predicted != tokens) & valid).sum(1)
    assert (errors // 2).sum() > 0  # an untrained head errs: something is glanced
    out = head.loss(enc, enc_lens, tokens, token_lens)
    assert out.metrics["num_glanced"] == float((errors // 2).sum())
    out.loss.backward()
    assert head.target_embed.weight.grad.abs().sum() > 0  # reference embeddings were used
    head.eval()  # no glancing outside training
    assert "num_glanced" not in head.loss(enc, enc_lens, tokens, token_lens).metrics


def test_overfits_tiny_batch():
    feats = torch.randn(2, 14, 8)
    feat_lens = torch.tensor([14, 11])
    tokens = torch.tensor([[3, 4, 5, 3], [6, 7, 0, 0]])
    token_lens = torch.tensor([4, 2])
    encoder = torch.nn.Sequential(torch.nn.Linear(8, 24), torch.nn.Tanh(), torch.nn.Linear(24, 16))
    head = CIFHead(_tiny_cfg(label_smoothing=0.1), enc_dim=16, vocab_size=9)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=3e-3)
    first = None
    for _ in range(150):
        loss = head.loss(encoder(feats), feat_lens, tokens, token_lens).loss
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first, (first, loss.item())
    head.eval()
    logits, fired_lens = head(encoder(feats), feat_lens)
    assert fired_lens.tolist() == [4, 2]
    assert logits[0, :4].argmax(-1).tolist() == [3, 4, 5, 3]


def test_config_validation():
    with pytest.raises(ValueError, match="predictor_kernel"):
        CIFConfig(predictor_kernel=2)
    with pytest.raises(ValueError, match="glancing_ratio"):
        CIFConfig(glancing_ratio=1.5)
    with pytest.raises(ValueError, match="end_slot needs segments: cif"):
        CIFConfig(segments="ctc", end_slot=True)
    with pytest.raises(ValueError, match="segments must be"):
        CIFConfig(segments="frames")
    with pytest.raises(ValueError, match="segments: ctc needs a ctc head"):
        HeadsConfig(cif=CIFConfig(segments="ctc"))
    with pytest.raises(ValueError, match="needs a 'ctc' head"):
        ASRModel(torch.nn.Identity(), {"cif": CIFHead(_tiny_cfg(segments="ctc"), 12, 9)},
                 {"cif": 1})


def test_glancing_reports_the_first_pass_accuracy():
    """``num_correct`` is the accuracy of the pass without reference embeddings (the glanced
    pass sees some answers)."""
    torch.manual_seed(0)
    head = CIFHead(_tiny_cfg(glancing_ratio=1.0), enc_dim=12, vocab_size=9).train()
    enc, enc_lens = torch.randn(2, 12, 12), torch.tensor([12, 9])
    tokens, token_lens = torch.tensor([[3, 4, 5, 6, 7], [8, 3, 4, 0, 0]]), torch.tensor([5, 3])
    with torch.no_grad():
        inputs, targets, target_lens, _ = head.teacher_inputs(enc, enc_lens, tokens, token_lens)
        first = head.decode(inputs, target_lens, enc, enc_lens).argmax(-1)
    valid = torch.arange(5)[None] < token_lens[:, None]
    out = head.loss(enc, enc_lens, tokens, token_lens)
    assert out.metrics["num_glanced"] > 0
    assert out.metrics["num_correct"] == float(((first == tokens) & valid).sum())


def test_glancing_never_feeds_a_reference_token_at_inference():
    """The reference embeddings are looked up while training only: not by inference, n-best
    rescoring, the searchers, nor an evaluation-mode loss (the dev loss)."""
    head = CIFHead(_tiny_cfg(glancing_ratio=1.0, end_slot=True), enc_dim=16, vocab_size=9)
    ctc = CTCHead(CTCConfig(), 16, 9)
    model = ASRModel(torch.nn.Identity(), {"ctc": ctc, "cif": head}, {"ctc": 1.0, "cif": 1.0})
    calls = []
    head.target_embed.register_forward_hook(lambda *args: calls.append(1))
    enc, enc_lens = torch.randn(2, 12, 16) * 3, torch.tensor([12, 9])
    tokens, token_lens = torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([3, 2])
    model.train()
    head.loss(enc, enc_lens, tokens, token_lens)
    assert calls  # the hook sees training's glancing
    calls.clear()
    model.eval()
    head.infer(enc, enc_lens)
    head.score_tokens(enc, enc_lens, tokens, token_lens)
    head.loss(enc, enc_lens, tokens, token_lens)
    for name in ("cif_greedy", "cif_beam"):
        build_searcher(name, model, SearchConfig(beam_size=3, nbest=3))(enc, enc_lens)
    assert not calls


def test_end_slot_trains_one_more_position_labelled_end():
    head = CIFHead(_tiny_cfg(end_slot=True), enc_dim=12, vocab_size=9).eval()
    enc, enc_lens = torch.randn(2, 10, 12), torch.tensor([10, 7])
    tokens, token_lens = torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([3, 2])
    inputs, targets, target_lens, alphas = head.teacher_inputs(enc, enc_lens, tokens, token_lens)
    assert targets.tolist() == [[3, 4, 5, 1], [6, 7, 1, 0]] and target_lens.tolist() == [4, 3]
    assert inputs.shape == (2, 4, 16)
    out = head.loss(enc, enc_lens, tokens, token_lens)
    assert out.metrics["num_tokens"] == 7.0
    expected = (alphas.sum(1) - torch.tensor([4.0, 3.0])).abs().sum()  # counts U + 1
    assert out.metrics["quantity_loss"] == pytest.approx(float(expected.detach()), rel=1e-5)
    assert head.end_id == 1 and CIFHead(_tiny_cfg(), 12, 9).end_id is None


@pytest.mark.parametrize("options", [{}, {"end_slot": True}, {"segments": "ctc"}])
def test_loss_reads_no_padding_value_and_names_a_token_outside_the_vocabulary(options):
    """WeNet pads targets with -1 (its ignore id): the loss is that of 0 padding, as in the CTC
    and transducer heads; a token outside the vocabulary is a ValueError naming it."""
    torch.manual_seed(0)
    head = CIFHead(_tiny_cfg(**options), enc_dim=12, vocab_size=9).eval()
    head.use_ctc(CTCHead(CTCConfig(), 12, 9))
    enc, enc_lens = torch.randn(2, 10, 12), torch.tensor([10, 7])
    tokens, token_lens = torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([3, 2])
    expected = head.loss(enc, enc_lens, tokens, token_lens).loss
    padded = torch.tensor([[3, 4, 5], [6, 7, -1]])
    torch.testing.assert_close(head.loss(enc, enc_lens, padded, token_lens).loss, expected)
    with pytest.raises(ValueError, match=r"tokens\[0, 2\] = 9 is outside"):
        head.loss(enc, enc_lens, torch.tensor([[3, 4, 9], [6, 7, 0]]), token_lens)


def test_greedy_ctc_segments():
    labels = torch.tensor([[0, 3, 3, 0, 3, 4, 4, 0], [5, 5, 0, 0, 2, 0, 0, 0]])
    segments = ctc_greedy_segments(labels, torch.tensor([8, 5]))
    assert segments.segment_ids.tolist() == [
        [-1, 0, 0, -1, 1, 2, 2, -1], [0, 0, -1, -1, 1, -1, -1, -1],
    ]
    assert segments.tokens.tolist() == [[3, 3, 4], [5, 2, 0]]
    assert segments.token_lens.tolist() == [3, 2]
    assert segments.first_frames.tolist() == [[1, 4, 5], [0, 4, 0]]
    hidden = torch.arange(16.0).view(2, 8, 1)
    means = segment_means(hidden, segments.segment_ids, 3)
    assert means[..., 0].tolist() == [[1.5, 4.0, 5.5], [8.5, 12.0, 0.0]]


def _ctc_segment_head(enc_dim: int = 12, vocab: int = 9) -> tuple[CIFHead, CTCHead]:
    torch.manual_seed(0)
    ctc = CTCHead(CTCConfig(), enc_dim, vocab)
    head = CIFHead(_tiny_cfg(segments="ctc"), enc_dim, vocab)
    ASRModel(torch.nn.Identity(), {"ctc": ctc, "cif": head}, {"ctc": 1.0, "cif": 1.0})
    return head.eval(), ctc.eval()


def test_ctc_segments_count_is_greedy_ctc_and_weights_are_not_duplicated():
    head, ctc = _ctc_segment_head()
    assert head.predictor is None
    assert not any(key.startswith("_ctc") for key in head.state_dict())
    enc, enc_lens = torch.randn(3, 20, 12) * 3, torch.tensor([20, 13, 6])
    for penalty in (0.0, 2.0):
        out = head.infer(enc, enc_lens, blank_penalty=penalty)
        logits = ctc.logits(enc).clone()
        logits[..., 0] -= penalty
        best = logits.argmax(-1)
        for b, length in enumerate(enc_lens.tolist()):
            path = [t for i, t in enumerate(best[b, :length].tolist())
                    if t != 0 and (i == 0 or t != best[b, i - 1])]  # fmt: skip
            assert int(out.token_lens[b]) == len(path) > 0
        assert out.logits.shape[:2] == (3, int(out.token_lens.max()))


def test_ctc_segments_train_on_the_forced_alignment_of_the_reference():
    head, ctc = _ctc_segment_head()
    enc, enc_lens = torch.randn(2, 15, 12), torch.tensor([15, 11])
    tokens, token_lens = torch.tensor([[3, 4, 4, 5], [6, 7, 0, 0]]), torch.tensor([4, 2])
    inputs, targets, target_lens, alphas = head.teacher_inputs(enc, enc_lens, tokens, token_lens)
    assert alphas is None and torch.equal(targets, tokens) and torch.equal(target_lens, token_lens)
    aligned = ctc_forced_align(ctc.log_probs(enc), enc_lens, tokens, token_lens)
    for b in range(2):
        for k in range(int(token_lens[b])):
            frames = (aligned[b] == k).nonzero().flatten()
            assert frames.numel() > 0
            expected = head.input_proj(enc[b, frames].mean(0))
            torch.testing.assert_close(inputs[b, k], expected, rtol=1e-5, atol=1e-5)
    out = head.loss(enc, enc_lens, tokens, token_lens)
    assert "quantity_loss" not in out.metrics
    assert out.loss.item() == pytest.approx(out.metrics["ce_loss"], rel=1e-6)
    out.loss.backward()
    assert ctc.output.weight.grad is None  # the alignment takes no gradient into the CTC head


def test_ctc_segments_while_training_do_not_depend_on_the_ctc_heads_dropout():
    """In training mode the CTC head applied its dropout to the frames it aligned, so the
    token segments (the decoder's inputs) changed with each dropout draw. The alignment (and
    the greedy path of :meth:`CIFHead.ctc_labels`) now uses the CTC head's eval-mode output in
    either mode, without changing the mode of any module."""
    torch.manual_seed(0)
    ctc = CTCHead(CTCConfig(dropout=0.5), 12, 9)
    head = CIFHead(_tiny_cfg(segments="ctc"), 12, 9)
    ASRModel(torch.nn.Identity(), {"ctc": ctc, "cif": head}, {"ctc": 1.0, "cif": 1.0}).train()
    enc, enc_lens = torch.randn(2, 15, 12) * 3, torch.tensor([15, 11])
    tokens, token_lens = torch.tensor([[3, 4, 4, 5], [6, 7, 0, 0]]), torch.tensor([4, 2])
    trained = [head.teacher_inputs(enc, enc_lens, tokens, token_lens)[0] for _ in range(3)]
    labels = [head.ctc_labels(enc) for _ in range(3)]
    assert ctc.training and head.training
    ctc.eval()
    expected = head.teacher_inputs(enc, enc_lens, tokens, token_lens)[0]
    for inputs, path in zip(trained, labels):
        assert torch.equal(inputs, expected)
        assert torch.equal(path, head.ctc_labels(enc))


def test_a_batch_without_encoder_frames_fires_nothing_and_trains_nothing():
    """Inputs too short for the subsampling give (B, 0, D): the weight predictor's convolution
    and the fire frames raised on it; nothing fires and every utterance is counted infeasible."""
    head = CIFHead(_tiny_cfg(), enc_dim=12, vocab_size=9).eval()
    enc, enc_lens = torch.zeros(2, 0, 12), torch.tensor([0, 0])
    out = head.infer(enc, enc_lens)
    assert out.logits.shape == (2, 0, 9) and out.token_lens.tolist() == [0, 0]
    assert out.fire_frames.shape == (2, 0)
    loss = head.loss(enc, enc_lens, torch.tensor([[3, 4], [5, 0]]), torch.tensor([2, 1]))
    assert loss.loss.item() == 0.0 and loss.metrics["num_infinite"] == 2.0
    assert loss.metrics["num_tokens"] == 0.0
