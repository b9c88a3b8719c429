"""The trainer's dev WER on the tiny trained experiment: plain greedy, whatever ``search.*``
sets for decoding."""

from __future__ import annotations

import dataclasses
import logging

import torch

from asr.data.cut_ids import load_eval_cuts
from asr.experiment import load_trained_model
from asr.run.train import DevWer


def test_the_dev_wer_ignores_the_decoding_lm_and_hotwords_without_a_warning(trained, caplog):
    """An experiment whose ``search`` section names an LM and hotwords for ``asr decode``: its
    greedy dev WER is the plain one, and no epoch warns that greedy uses neither (each did)."""
    cfg, tokenizer, model, _ = load_trained_model(trained)
    cuts = load_eval_cuts(cfg.data.manifest_dir, cfg.data.dev_cuts)
    plain = DevWer(cuts, cfg, tokenizer, torch.device("cpu"), 2)(model)
    search = dataclasses.replace(cfg.search, lm_path=trained / "lm.arpa", lm_weight=0.5,
                                 hotwords="THE")
    decoding = dataclasses.replace(cfg, search=search)
    caplog.set_level(logging.WARNING)
    assert DevWer(cuts, decoding, tokenizer, torch.device("cpu"), 2)(model) == plain
    assert plain is not None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
