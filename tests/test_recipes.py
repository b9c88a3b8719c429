"""Every recipe YAML loads strictly into an ExperimentConfig and builds its model.

A recipe with a misspelt key, a head without a loss weight or an encoder the model cannot be
built from fails here instead of minutes into a training job.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asr.config import load_config
from asr.experiment import ExperimentConfig, build_model

RECIPES = sorted(
    path
    for path in (Path(__file__).resolve().parents[1] / "recipes").glob("*/*.yaml")
    if path.parent.name != "presets"
)


def test_recipes_are_found() -> None:
    corpora = {path.parent.name for path in RECIPES}
    assert {"librispeech", "mini_tts"} <= corpora


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_builds_a_model_that_runs(recipe: Path) -> None:
    cfg = load_config(ExperimentConfig, recipe)
    assert cfg.optim.warmup_steps < cfg.optim.total_steps, "warm-up longer than the schedule"
    if cfg.train.max_steps:
        assert cfg.train.max_steps <= cfg.optim.total_steps, "steps past the cosine horizon"
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=16).eval()
    feats = torch.randn(2, 120, cfg.data.fbank.num_mel_bins)
    feat_lens = torch.tensor([120, 90])
    tokens = torch.tensor([[3, 4, 5], [6, 7, 0]])
    out = model(feats, feat_lens, tokens, torch.tensor([3, 2]))
    assert torch.isfinite(out.loss)
