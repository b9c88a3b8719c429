"""A tiny synthesized LibriSpeech-layout corpus, prepared once per session for the CLI tests."""

from __future__ import annotations

from pathlib import Path

import yaml

SIZES = {"train-clean-5": 16, "dev-clean-2": 4, "test-clean": 4}


def tiny_experiment(root: Path, **train) -> dict:
    """An ExperimentConfig dict for the prepared corpus under ``root``: a 1-layer d=32 Conformer
    with a pruned transducer and a CTC head (fast enough for the default suite)."""
    return {
        "data": {
            "manifest_dir": str(root / "fbank"),
            "train_cuts": ["librispeech_cuts_train-clean-5.jsonl.gz"],
            "dev_cuts": ["librispeech_cuts_dev-clean-2.jsonl.gz"],
            "max_duration": 8.0, "max_cut_duration": 8.0, "num_buckets": 2, "num_workers": 0,
            "spec_augment": {"time_warp_factor": 0, "num_time_masks": 1, "max_time_mask_width": 10},
        },
        "tokenizer_dir": str(root / "lang_char"),
        "encoder": {"d_model": 32, "num_layers": 1, "num_heads": 2, "ff_dim": 64,
                    "conv_kernel_size": 3, "subsampling_channels": 8, "chunk_size": 4,
                    "left_chunks": 2, "dynamic_chunk_training": True,
                    "dynamic_chunk_sizes": [2, 4], "dynamic_left_chunks": [1, -1]},
        "heads": {"transducer": {"pred_dim": 16, "joiner_dim": 16, "warm_step": 2},
                  "ctc": {}, "loss_weights": {"transducer": 1.0, "ctc": 0.2}},
        "optim": {"lr": 2e-3, "warmup_steps": 2},
        "train": {"max_epochs": 2, "checkpoint_interval": 2, "keep_last": 0, "log_interval": 1,
                  "average_period": 1, "device": "cpu", **train},
    }


def write_yaml(data: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def train_tiny(tmp_path: Path, corpus: Path, exp_name: str, *overrides: str, **train) -> int:
    """``asr train`` of :func:`tiny_experiment` into ``tmp_path/exp_name``; returns the exit
    code."""
    from asr.cli.main import main

    config = write_yaml(tiny_experiment(corpus, **train), tmp_path / f"{exp_name}.yaml")
    args = ["train", "--config", str(config), "--exp-dir", str(tmp_path / exp_name)]
    if overrides:
        args += ["--set", *overrides]
    return main(args)


