"""A training run killed on the device under test and resumed there ends as the uninterrupted one.

``Trainer.resume`` reads the checkpoint onto the CPU (the RNG states must be CPU tensors) and
copies the model, the optimizer's state and the running average onto the device; under fp16
autocast on CUDA the GradScaler's state (scale, growth tracker) comes back too. The model is a
small MLP with dropout (the CUDA RNG, restored from the checkpoint); the run stops after 3 steps,
and the resumed run must end with the uninterrupted run's weights, average and loss scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from gpu_helpers import max_scaled_diff
from torch import nn

from asr.train.distributed import DistInfo
from asr.train.optim import OptimConfig
from asr.train.state import TrainConfig
from asr.train.trainer import Trainer
from asr.types import Batch

pytestmark = pytest.mark.gpu

STEPS_PER_EPOCH = 8


@dataclass
class _Out:
    loss: torch.Tensor
    num_utterances: int
    metrics: dict = field(default_factory=dict)


class _Regressor(nn.Module):
    """Mean-pooled features -> token count; dropout draws from the device's RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Dropout(0.2), nn.Linear(32, 1))

    def forward(self, batch: Batch, step: int | None = None) -> _Out:
        frames = torch.arange(batch.feats.shape[1], device=batch.feats.device)
        mask = (frames[None] < batch.feat_lens[:, None]).to(batch.feats.dtype)
        pooled = (batch.feats * mask[..., None]).sum(1) / batch.feat_lens[:, None]
        pred = self.net(pooled).squeeze(-1).float()
        # small: the fp16 gradients under the GradScaler's initial 2**16 do not overflow, so
        # the run takes every step (an overflow would be skipped in both runs alike)
        loss = 1e-3 * ((pred - batch.token_lens.float()) ** 2).sum()
        return _Out(loss, batch.batch_size)


def _batches(epoch: int, skip: int, skip_world_size: int = 1):
    g = torch.Generator().manual_seed(100 + epoch)
    for i in range(STEPS_PER_EPOCH):
        feat_lens = torch.randint(3, 9, (4,), generator=g)
        feats = torch.randn(4, int(feat_lens.max()), 8, generator=g)
        token_lens = torch.randint(1, 5, (4,), generator=g)
        batch = Batch(feats, feat_lens, torch.ones(4, int(token_lens.max()), dtype=torch.long),
                      token_lens)
        if i >= skip // skip_world_size:
            yield batch


def _fit(device: torch.device, exp_dir, max_steps: int, resume: bool = False) -> Trainer:
    """Trains up to ``max_steps``, inside the first epoch: an epoch's end would plot, and the
    GPU machine has no matplotlib."""
    torch.manual_seed(0)
    trainer = Trainer(_Regressor(), OptimConfig(lr=1e-2, warmup_steps=2),
                      TrainConfig(max_epochs=1, max_steps=max_steps, checkpoint_interval=0,
                                  average_period=2, amp_dtype="float16"),
                      exp_dir, _batches, dist=DistInfo(device=device))
    if resume:
        torch.manual_seed(12345)  # a fresh process: the checkpoint's RNG states must count
        assert trainer.resume()
    trainer.fit()
    return trainer


def test_a_run_resumed_on_the_device_ends_as_the_uninterrupted_one(device, tmp_path, record):
    full = _fit(device, tmp_path / "full", max_steps=STEPS_PER_EPOCH - 1)
    killed = _fit(device, tmp_path / "resumed", max_steps=3)
    assert (killed.progress.epoch, killed.progress.batches_in_epoch) == (1, 3)
    resumed = _fit(device, tmp_path / "resumed", max_steps=STEPS_PER_EPOCH - 1, resume=True)
    assert resumed.progress.step == full.progress.step == STEPS_PER_EPOCH - 1
    assert resumed.scaler.state_dict() == full.scaler.state_dict()
    assert resumed.scaler.is_enabled() == (device.type == "cuda")
    diffs = {}
    for name, value in full.model.state_dict().items():
        diffs[name] = max_scaled_diff(resumed.model.state_dict()[name], value)
        diffs[f"average/{name}"] = max_scaled_diff(resumed.averager.average[name],
                                                   full.averager.average[name])
    # the same kernels on the same data: equal but for a reduction order cuBLAS may change
    assert max(diffs.values()) <= 1e-6, diffs
    record(max_scaled_diff=max(diffs.values()), steps=full.progress.step,
           loss_scale=full.scaler.get_scale() if full.scaler.is_enabled() else None)
