"""Rebuilding a trained model from an experiment directory: which config, which weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from asr.checkpoints.io import load_weights
from asr.checkpoints.selection import WeightSelection
from asr.experiment import (
    CONFIG_FILE,
    check_checkpoint_vocabulary,
    load_experiment_config,
    load_trained_model,
    relative_path_advice,
    save_experiment_weights,
)
from asr.testing.packages import random_experiment
from asr.tokenizers import load_tokenizer


@pytest.fixture()
def exp_dir(tmp_path) -> Path:
    # 40 mel bins, not the default 80: the model's input size comes from the config
    return random_experiment(tmp_path / "work", num_epochs=2, chunk_size=4,
                             fbank={"num_mel_bins": 40})


def _checkpoint(exp_dir: Path, epoch: int) -> dict:
    return torch.load(exp_dir / f"epoch-{epoch}.pt", weights_only=True)


def test_the_config_embedded_in_the_checkpoint_wins_and_overrides_apply_to_either(exp_dir):
    """The weights were trained with the checkpoint's config, whatever config.yaml now says
    (a directory reused for another run); ``--set`` overrides apply to whichever is used."""
    checkpoint = _checkpoint(exp_dir, 1)
    checkpoint["extra"]["config"]["encoder"]["chunk_size"] = 2
    embedded = load_experiment_config(exp_dir, (), checkpoint)
    assert embedded.encoder.chunk_size == 2
    assert load_experiment_config(exp_dir).encoder.chunk_size == 4
    for source in (checkpoint, None):
        cfg = load_experiment_config(exp_dir, ["search.beam_size=7"], source)
        assert cfg.search.beam_size == 7
    with pytest.raises(FileNotFoundError, match=f"{CONFIG_FILE} does not exist"):
        load_experiment_config(exp_dir.parent)


def test_saved_weights_carry_the_tag_and_the_config(exp_dir, tmp_path):
    state_dict = _checkpoint(exp_dir, 2)["model"]
    out = save_experiment_weights(exp_dir, state_dict, tmp_path / "w.safetensors", "epoch-2-avg-1")
    written = load_weights(out)
    assert set(written) == set(state_dict)
    assert all(torch.equal(written[k], state_dict[k]) for k in state_dict)
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata() == {"tag": "epoch-2-avg-1",
                                "config": (exp_dir / CONFIG_FILE).read_text(encoding="utf-8")}


def test_weights_of_another_vocabulary_are_refused_naming_the_checkpoint(exp_dir):
    tokenizer_dir = exp_dir.parent / "tokenizer"
    tokenizer = load_tokenizer(tokenizer_dir)
    pieces = tokenizer.pieces()
    check_checkpoint_vocabulary({"extra": {"tokens": pieces}}, tokenizer, tokenizer_dir, "a.pt")
    check_checkpoint_vocabulary({}, tokenizer, tokenizer_dir, "w.safetensors")  # none recorded
    swapped = [pieces[0], pieces[2], pieces[1], *pieces[3:]]
    with pytest.raises(ValueError, match=r"^a\.pt: it was trained with another vocabulary .*"
                                         r"token 1 is"):
        check_checkpoint_vocabulary({"extra": {"tokens": swapped}}, tokenizer, tokenizer_dir,
                                    "a.pt")


def test_the_trained_model_has_the_selected_weights_in_eval_mode(exp_dir):
    """Epoch 1's weights for --epoch 1 (the newest, epoch 2, by default), the model in eval
    mode taking the config's 40 mel bins, the tag naming the selection, ``--set`` overrides
    applied."""
    for selection, epoch, tag in ((WeightSelection(epoch=1), 1, "epoch-1-avg-1"),
                                  (None, 2, "checkpoint-2")):
        cfg, _, model, got_tag = load_trained_model(exp_dir, selection, ["search.beam_size=3"])
        assert got_tag == tag and not model.training and cfg.search.beam_size == 3
        expected = _checkpoint(exp_dir, epoch)["model"]
        state = model.state_dict()
        assert set(state) == set(expected)
        assert all(torch.equal(state[k], expected[k]) for k in expected)
    frames, lens = model.encoder(torch.zeros(1, 64, 40), torch.tensor([64]))  # 40 mel bins in
    assert frames.shape[-1] == model.encoder.output_dim and lens.item() == frames.shape[1]


def test_a_path_given_by_a_set_section_mapping_is_the_users_own(tmp_path, monkeypatch):
    """``--set data={manifest_dir: mine}`` gives data.manifest_dir as much as
    ``--set data.manifest_dir=mine``, but only the latter was recognized: the missing ``mine``
    was said to be relative to the directory ``asr train`` ran in, advice for the experiment's
    own path. Either spelling is the user's own now; a mapping without the key is not."""
    monkeypatch.chdir(tmp_path)
    own = (f" (data.manifest_dir mine of this command line's --set is read from the current "
           f"directory {tmp_path}, which has no mine: give a path from there, or an absolute one)")
    for override in ("data.manifest_dir=mine", "data={manifest_dir: mine}"):
        advice = relative_path_advice("exp", "data.manifest_dir", "mine", "--manifest-dir DIR",
                                      [override])
        assert advice == own, override
    for overrides in ([], ["data={max_duration: 300}"], ["data.max_duration=300"],
                      ["tokenizer_dir=mine"]):
        advice = relative_path_advice("exp", "data.manifest_dir", "mine", "--manifest-dir DIR",
                                      overrides)
        assert "relative to the directory `asr train` ran in" in advice, overrides



def test_a_relative_directory_that_is_a_file_here_gets_the_advice(tmp_path, monkeypatch):
    """A relative ``data.manifest_dir`` / ``tokenizer_dir`` that names a file in the current
    directory (the wrong one) got no advice, as if what is missing were inside it: the rule of
    :func:`asr.fileio.relative_path_hint`, which keeps quiet only for a directory that is here."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").write_text("a file\n")
    advice = relative_path_advice("exp", "data.manifest_dir", "mine", "--manifest-dir DIR")
    assert f"was looked for in the current directory {tmp_path}" in advice
    (tmp_path / "mine").unlink()
    (tmp_path / "mine").mkdir()
    assert relative_path_advice("exp", "data.manifest_dir", "mine", "--manifest-dir DIR") == ""
