"""One training step of each LibriSpeech recipe kind under mixed precision, through the Trainer.

Pruned transducer, TDT, CTC + AED and CIF (+ CTC): the recipe's model (Conformer M on CUDA; a
1-layer stand-in in the dry run) takes optimizer steps through :class:`asr.train.trainer.Trainer`
exactly as ``asr train`` does: fp16 autocast with a GradScaler (unscale, clip, step, update) and
bf16 autocast without one. Checked: the losses are float32 and finite, every head's loss too,
the parameters move and stay finite.

fp16: the trainer scales the SUMMED loss by the GradScaler's initial 2**16, so the first step(s)
may overflow in float16 and be skipped while the scale shrinks; up to ``MAX_TRIES`` steps run
until one is taken, and the number skipped is recorded.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from gpu_helpers import RECIPES

from asr.config import load_config
from asr.experiment import ExperimentConfig, build_model
from asr.testing.synthetic import shrink_experiment, synthetic_batch
from asr.train.distributed import DistInfo
from asr.train.trainer import Trainer

pytestmark = pytest.mark.gpu

KINDS = ("conformer_transducer", "conformer_tdt", "conformer_ctc_aed", "conformer_cif",
         "conformer_paraformer_v2")
VOCAB = 500
MAX_TRIES = 6


def _experiment(recipe: str, full_size: bool, amp_dtype: str, on_cuda: bool):
    cfg = load_config(ExperimentConfig, RECIPES / f"{recipe}.yaml")
    if not full_size:
        cfg = shrink_experiment(cfg)
    # On the CPU the trainer autocasts to bf16 only when cpu_amp is on (fp16 runs as bf16 there).
    train = dataclasses.replace(cfg.train, use_amp=True, amp_dtype=amp_dtype,
                                cpu_amp=not on_cuda, average_period=0)
    return cfg, train


@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("recipe", KINDS)
def test_training_step_under_autocast(device, full_size, record, tmp_path, recipe, amp_dtype):
    on_cuda = device.type == "cuda"
    cfg, train_cfg = _experiment(recipe, full_size, amp_dtype, on_cuda)
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB)
    trainer = Trainer(model, cfg.optim, train_cfg, tmp_path, train_batches=lambda e, s, w: [],
                      dist=DistInfo(device=device))
    expected = torch.float16 if on_cuda and amp_dtype == "float16" else torch.bfloat16
    assert trainer.amp and trainer.amp_dtype == expected
    assert trainer.scaler.is_enabled() == (expected == torch.float16)

    outputs = []
    hook = model.register_forward_hook(lambda module, args, output: outputs.append(output))
    gen = torch.Generator().manual_seed(1)
    durations = [9.0, 7.5, 6.0, 4.0] if full_size else [1.2, 0.8]
    batch = synthetic_batch(durations, VOCAB, gen, cfg.data.fbank.num_mel_bins)
    before = [p.detach().clone() for p in model.parameters()]
    skipped, losses = 0, []
    for _ in range(MAX_TRIES):
        loss, num_utts, metrics = trainer._forward_backward(batch)
        out = outputs[-1]
        assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
        for name, head_out in out.head_outputs.items():
            assert head_out.loss.dtype == torch.float32, f"{name} loss is {head_out.loss.dtype}"
            assert torch.isfinite(head_out.loss), name
        assert num_utts == len(durations) and metrics["loss"] == pytest.approx(loss, rel=1e-5)
        losses.append(loss)
        scale = trainer.scaler.get_scale() if trainer.scaler.is_enabled() else 1.0
        trainer._optimizer_step()
        moved = any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
        if moved:
            break
        skipped += 1
        assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() < scale, (
            "no parameter moved although no fp16 overflow was reported"
        )
    hook.remove()
    assert moved, f"no step taken in {MAX_TRIES} tries (losses {losses})"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    record(recipe=recipe, amp=amp_dtype, loss_per_utt=losses[-1] / len(durations),
           skipped_steps=skipped, heads=",".join(out.head_outputs))
