"""``asr train`` / ``asr average`` on a tiny synthesized corpus: outputs, strict config, resume."""

from __future__ import annotations

import gzip
import json
import logging
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lhotse import CutSet
from manifest_reads import count_manifest_opens, count_manifest_reads
from train_helpers import tiny_experiment, train_tiny, write_yaml

from asr.checkpoints.io import list_checkpoints, load_weights, safe_torch_load
from asr.cli.main import build_parser, main


def test_train_writes_resolved_config_checkpoints_logs_and_plot(trained):
    config = yaml.safe_load((trained / "config.yaml").read_text())
    assert config["train"]["max_epochs"] == 2 and config["encoder"]["d_model"] == 32
    assert (trained / "epoch-1.pt").is_file() and (trained / "epoch-2.pt").is_file()
    assert list_checkpoints(trained)
    state = safe_torch_load(trained / "epoch-2.pt")
    assert state["extra"]["config"]["heads"]["loss_weights"] == {"transducer": 1.0, "ctc": 0.2}
    assert len(state["progress"]["history"]) == 2
    assert (trained / "training.png").read_bytes()[:4] == b"\x89PNG"
    assert list((trained / "tensorboard").glob("events.out.tfevents.*"))


def test_train_rejects_unknown_config_keys(tmp_path, tiny_corpus, caplog):
    assert train_tiny(tmp_path, tiny_corpus, "bad", "train.max_epoch=3") == 2
    assert "did you mean 'max_epochs'" in caplog.text
    assert not (tmp_path / "bad" / "config.yaml").exists()


def test_train_refuses_a_k2_backend_without_k2_before_reading_data(tmp_path, tiny_corpus,
                                                                  caplog, monkeypatch):
    """``backend: k2`` where k2 does not import: exit 2 naming the field, before anything is
    written; it failed with exit 1 at the first training step, after loading the data."""
    monkeypatch.setitem(sys.modules, "k2", None)  # makes `import k2` raise ImportError
    assert train_tiny(tmp_path, tiny_corpus, "k2", "heads.transducer.backend=k2") == 2
    assert "heads.transducer.backend: backend='k2' needs the k2 package" in caplog.text
    assert not (tmp_path / "k2").exists()


def test_check_only_refuses_tdt_durations_under_a_plain_rnnt_loss(tmp_path, caplog):
    """A base config's TDT ``durations`` under ``--set heads.transducer.loss=pruned`` were
    silently ignored (a plain RNN-T trained): exit 2 naming both fields and both fixes. The
    defaults, which every saved config holds, still pass with any loss."""
    data = tiny_experiment(tmp_path)
    data["heads"]["transducer"].update(loss="tdt", durations=[0, 1, 2], omega=0.1)
    config = write_yaml(data, tmp_path / "tdt.yaml")
    command = ["train", "--config", str(config), "--exp-dir", str(tmp_path / "exp"), "--check-only"]
    assert main([*command, "--set", "heads.transducer.loss=pruned"]) == 2
    assert ("heads.transducer.durations: [0, 1, 2] is a TDT setting, which loss: pruned (plain "
            "RNN-T) ignores: set loss: tdt or pruned_tdt") in caplog.text
    caplog.clear()
    assert main([*command, "--set", "heads.transducer.loss=full",
                 "heads.transducer.durations=[0, 1, 2, 3, 4]"]) == 2
    assert "heads.transducer.omega: 0.1 is a TDT setting, which loss: full" in caplog.text
    assert main([*command, "--set", "heads.transducer.loss=pruned",
                 "heads.transducer.durations=[0, 1, 2, 3, 4]", "heads.transducer.omega=0"]) == 0
    assert main(command) == 0 and not (tmp_path / "exp").exists()


def test_check_only_warns_of_a_searcher_whose_head_weighs_0(tmp_path, caplog):
    """``heads.loss_weights.ctc: 0`` with ``--searchers ctc_greedy`` (or a decode line's
    ``--searcher``) passed without a word, the head built but never trained: a warning naming
    the searcher and the field (not refused: such a head may hold weights trained elsewhere)."""
    config = write_yaml(tiny_experiment(tmp_path), tmp_path / "tiny.yaml")
    command = ["train", "--config", str(config), "--exp-dir", str(tmp_path / "exp"),
               "--check-only", "--set", "heads.loss_weights={transducer: 1.0, ctc: 0.0}"]
    warning = ("searcher 'ctc_greedy' decodes with the ctc head, which heads.loss_weights.ctc: 0 "
               "leaves untrained")
    assert main([*command, "--searchers", "transducer_greedy"]) == 0
    assert "leaves untrained" not in caplog.text
    assert main([*command, "--searchers", "ctc_greedy"]) == 0
    assert warning in caplog.text
    caplog.clear()
    assert main([*command, "--decode-arg=--searcher", "--decode-arg=ctc_greedy"]) == 0
    assert warning in caplog.text
    assert not (tmp_path / "exp").exists()


def test_check_only_warns_once_of_a_searcher_given_twice(tmp_path, caplog):
    """The same searcher of an untrained head in ``--searchers``, ``--biasing-searchers`` and
    ``--decode-arg``: the warning came once for each option; it comes once."""
    config = write_yaml(tiny_experiment(tmp_path), tmp_path / "tiny.yaml")
    assert main(["train", "--config", str(config), "--exp-dir", str(tmp_path / "exp"),
                 "--check-only", "--set", "heads.loss_weights={transducer: 1.0, ctc: 0.0}",
                 "--searchers", "ctc_prefix_beam", "--biasing-searchers", "ctc_prefix_beam",
                 "--decode-arg=--searcher", "--decode-arg=ctc_prefix_beam"]) == 0
    assert caplog.text.count("searcher 'ctc_prefix_beam' decodes with the ctc head") == 1


def test_check_only_warns_of_aed_beam_scoring_with_an_untrained_ctc_head(tmp_path, caplog):
    """``aed_beam`` scores with the ``ctc`` head while ``search.ctc_weight > 0``: with
    ``heads.loss_weights.ctc: 0`` it is warned of, by the config's search settings (and a
    decode line's own ``--set``): ``search.ctc_weight: 0`` reads no CTC, and nothing is said."""
    config = write_yaml(tiny_experiment(tmp_path), tmp_path / "tiny.yaml")
    command = ["train", "--config", str(config), "--exp-dir", str(tmp_path / "exp"),
               "--check-only", "--searchers", "aed_beam", "--set", "heads.aed={}",
               "heads.loss_weights={transducer: 1.0, ctc: 0.0, aed: 1.0}"]
    warning = "searcher 'aed_beam' also scores with the ctc head (search.ctc_weight 0.5)"
    assert main([*command, "search.ctc_weight=0.5"]) == 0
    assert warning in caplog.text
    caplog.clear()
    assert main([*command, "search.ctc_weight=0"]) == 0
    assert "leaves untrained" not in caplog.text
    assert main([*command, "search.ctc_weight=0", "--decode-arg=--searcher",
                 "--decode-arg=aed_beam", "--decode-arg=--set",
                 "--decode-arg=search.ctc_weight=0.5"]) == 0
    assert warning in caplog.text


def test_train_names_the_working_directory_of_a_relative_config_path(tmp_path, tiny_corpus,
                                                                    caplog, monkeypatch):
    """A relative config path (``data.manifest_dir``, ``data.train_shar_dirs``,
    ``tokenizer_dir``) run from another directory said only "... does not exist" (or "no
    tokenizer found"), while the user could see it from the recipe's directory: the message
    names the working directory it was looked for in and says to run from the directory the
    config's paths are relative to. An absolute path gets no such advice."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    advice = (f" in the working directory {elsewhere} (a relative path in {{}}: run from the "
              "directory the config's paths are relative to")
    data = tiny_experiment(tiny_corpus)
    data["data"]["manifest_dir"] = "fbank"
    config = write_yaml(data, tmp_path / "relative.yaml")
    command = ["train", "--config", str(config), "--exp-dir", str(tmp_path / "exp")]
    assert main(command) == 2
    assert ("data.train_cuts: cut manifest fbank/librispeech_cuts_train-clean-5.jsonl.gz does "
            "not exist" + advice.format("data.manifest_dir")) in caplog.text
    caplog.clear()
    assert main([*command, "--set", "data.train_shar_dirs=[shar/train]"]) == 2
    assert ("data.train_shar_dirs: Shar directory shar/train does not exist"
            + advice.format("data.train_shar_dirs")) in caplog.text
    caplog.clear()
    absolute = tmp_path / "lang_char"
    assert main([*command, "--set", f"data.manifest_dir={tiny_corpus / 'fbank'}",
                 f"tokenizer_dir={absolute}"]) == 1
    assert (f"tokenizer_dir: {absolute}: no tokenizer found" in caplog.text
            and "a relative path" not in caplog.text)
    caplog.clear()
    assert main([*command, "--set", f"data.manifest_dir={tiny_corpus / 'fbank'}",
                 "tokenizer_dir=lang_char"]) == 1
    assert "tokenizer_dir: lang_char: no tokenizer found" in caplog.text
    assert advice.format("tokenizer_dir") in caplog.text


def test_train_names_the_working_directory_of_a_relative_noise_manifest(tmp_path, tiny_corpus,
                                                                       caplog, monkeypatch):
    """``data.noise.cuts_path`` names a file: a relative one not found got the working
    directory's advice only when its directory was missing too, so ``musan_cuts.jsonl.gz`` (its
    directory ``.``, always there) run from the wrong directory said only "does not exist"."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    data = tiny_experiment(tiny_corpus)
    data["data"]["manifest_dir"] = str(tiny_corpus / "fbank")
    config = write_yaml(data, tmp_path / "noise.yaml")
    command = ["train", "--config", str(config), "--exp-dir", str(tmp_path / "exp")]
    for noise in ("musan_cuts.jsonl.gz", "data/musan_cuts.jsonl.gz"):
        caplog.clear()
        assert main([*command, "--set", f"data.noise.cuts_path={noise}"]) == 2
        assert (f"data.noise.cuts_path: cut manifest {noise} does not exist in the working "
                f"directory {elsewhere} (a relative path in data.noise.cuts_path: run from the "
                "directory the config's paths are relative to") in caplog.text
    assert not (tmp_path / "exp").exists()


def test_train_names_the_working_directory_of_a_relative_dir_that_is_a_file(tmp_path,
                                                                            tiny_corpus, caplog,
                                                                            monkeypatch):
    """A relative ``data.manifest_dir`` that is a file here (the wrong directory, holding a
    file of that name) got no advice: the hint kept quiet for any path that exists, as if what
    is missing were inside it, which a file cannot hold."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "fbank").write_text("not a directory\n")
    monkeypatch.chdir(elsewhere)
    data = tiny_experiment(tiny_corpus)
    data["data"]["manifest_dir"] = "fbank"
    config = write_yaml(data, tmp_path / "file.yaml")
    assert main(["train", "--config", str(config), "--exp-dir", str(tmp_path / "exp")]) == 2
    assert ("data.train_cuts: cut manifest fbank/librispeech_cuts_train-clean-5.jsonl.gz does "
            f"not exist in the working directory {elsewhere} (a relative path in "
            "data.manifest_dir: run from the directory the config's paths are relative to"
            ) in caplog.text


def test_train_refuses_cif_ctc_segments_of_an_untrained_ctc_head(tmp_path, tiny_corpus, caplog):
    """``heads.cif.segments: ctc`` with ``heads.loss_weights.ctc: 0``: the CIF head would train
    for the whole run on the segments of a CTC head that nothing trains (random paths); exit 2
    naming the fields, before anything is written. It trained."""
    sets = ("heads.ctc={}", "heads.cif={segments: ctc, d_model: 16, num_heads: 2, num_layers: 1}",
            "heads.loss_weights={ctc: 0.0}")
    assert train_tiny(tmp_path, tiny_corpus, "cif", *sets) == 2
    assert "heads.cif.segments: ctc trains on the ctc head's paths, which " \
        "heads.loss_weights.ctc: 0 leaves untrained" in caplog.text
    assert not (tmp_path / "cif").exists()


def test_train_refuses_heads_that_all_weigh_0(tmp_path, tiny_corpus, caplog):
    """Every loss weight 0: nothing would train; exit 2 naming the field before anything is
    written."""
    code = train_tiny(tmp_path, tiny_corpus, "silent", "heads.loss_weights={transducer: 0, ctc: 0}")
    assert code == 2
    assert "heads.loss_weights: at least one head must weigh > 0" in caplog.text
    assert not (tmp_path / "silent").exists()


@pytest.mark.parametrize("axis", ["freq", "time"])
def test_train_refuses_a_mask_width_that_never_masks_before_reading_data(tmp_path, tiny_corpus,
                                                                         caplog, axis):
    """``max_*_mask_width: 1`` (lhotse draws widths from [0, 1)): exit 2 naming the key before
    anything is written; it failed with exit 1 when the training dataset was built."""
    assert train_tiny(tmp_path, tiny_corpus, "w1", "data.spec_augment.enabled=true",
                      f"data.spec_augment.max_{axis}_mask_width=1") == 2
    assert f"data.spec_augment.max_{axis}_mask_width=1 never masks" in caplog.text
    assert not (tmp_path / "w1").exists()


def test_killed_training_resumes_to_the_same_parameters(tmp_path, tiny_corpus, trained):
    """Stop after 1 step (mid-epoch 1), run the same command again: same weights as
    uninterrupted."""
    full = safe_torch_load(trained / "epoch-2.pt")
    steps_per_epoch = safe_torch_load(trained / "epoch-1.pt")["progress"]["step"]
    assert steps_per_epoch >= 2, "the tiny corpus must give at least 2 batches per epoch"
    assert train_tiny(tmp_path, tiny_corpus, "resumed", "train.max_steps=1") == 0
    partial = safe_torch_load(list_checkpoints(tmp_path / "resumed")[-1][1])
    assert partial["progress"]["step"] == 1 and partial["progress"]["batches_in_epoch"] == 1
    torch.manual_seed(1234)  # a different process state must not matter
    assert train_tiny(tmp_path, tiny_corpus, "resumed") == 0
    resumed = safe_torch_load(tmp_path / "resumed" / "epoch-2.pt")
    assert resumed["progress"]["step"] == full["progress"]["step"]
    for name, value in full["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=0, atol=0, msg=name)


# ``asr train`` whose first batch sends it SIGTERM, as a cluster's preemption notice would
# arrive while a step trains (argv: the command's arguments)
PREEMPTED_TRAIN = """
import os, signal, sys
from asr.cli.main import main
from asr.train.trainer import Trainer
forward_backward = Trainer._forward_backward
def signalled(self, batch, sync=True):
    if self.progress.step == 0 and not self._step_batches:
        os.kill(os.getpid(), signal.SIGTERM)
    return forward_backward(self, batch, sync)
Trainer._forward_backward = signalled
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_exits_143_with_the_checkpoint_of_its_step_and_resumes_exactly(
        tmp_path, tiny_corpus, trained):
    """A preempted ``asr train`` (SIGTERM in step 1) finishes that step, writes its checkpoint
    and exits with 143, which a requeue script tells from a failure; running the same command
    again ends with the parameters of an uninterrupted run."""
    config = write_yaml(tiny_experiment(tiny_corpus), tmp_path / "resumed.yaml")
    proc = subprocess.run(
        [sys.executable, "-c", PREEMPTED_TRAIN, "train", "--config", str(config), "--exp-dir",
         str(tmp_path / "resumed")], capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 128 + signal.SIGTERM == 143, proc.stderr
    assert "preempted by SIGTERM at step 1" in proc.stderr and "Traceback" not in proc.stderr
    assert [n for n, _ in list_checkpoints(tmp_path / "resumed")] == [1]
    partial = safe_torch_load(tmp_path / "resumed" / "checkpoint-1.pt")
    assert partial["progress"]["step"] == 1 and partial["progress"]["batches_in_epoch"] == 1
    assert "preempted by SIGTERM" in (tmp_path / "resumed" / "train.log").read_text()
    assert train_tiny(tmp_path, tiny_corpus, "resumed") == 0
    full = safe_torch_load(trained / "epoch-2.pt")
    resumed = safe_torch_load(tmp_path / "resumed" / "epoch-2.pt")
    assert resumed["progress"]["step"] == full["progress"]["step"]
    for name, value in full["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=0, atol=0, msg=name)


def test_training_with_workers_and_augmentation_resumes_to_the_same_parameters(tmp_path,
                                                                            tiny_corpus):
    """Frequency warp and SpecAugment (time warp, frequency and time masks: Python's, NumPy's and
    torch's RNGs) drawn in 2 DataLoader workers: a run stopped mid-epoch 2 and resumed ends with
    the parameters of an uninterrupted run, and of a run without workers (the draws depend on the
    seed, the epoch and the cut ids, not on which process makes a batch or where a run was
    resumed; tests/data/test_dataset.py covers speed perturbation, noise and dither, which need
    on-the-fly features)."""
    augment = ("data.freq_warp.enabled=true", "data.spec_augment.time_warp_factor=5",
               "data.spec_augment.num_time_masks=2", "train.dev_wer=false")
    workers = (*augment, "data.num_workers=2")
    assert train_tiny(tmp_path, tiny_corpus, "full", *workers) == 0
    full = safe_torch_load(tmp_path / "full" / "epoch-2.pt")
    epoch_1 = safe_torch_load(tmp_path / "full" / "epoch-1.pt")["progress"]["step"]
    assert full["progress"]["step"] >= epoch_1 + 2
    assert train_tiny(tmp_path, tiny_corpus, "resumed", *workers,
                      f"train.max_steps={epoch_1 + 1}") == 0
    partial = safe_torch_load(list_checkpoints(tmp_path / "resumed")[-1][1])
    assert partial["progress"]["epoch"] == 2 and partial["progress"]["batches_in_epoch"] == 1
    torch.manual_seed(1234)  # a different process state must not matter
    assert train_tiny(tmp_path, tiny_corpus, "resumed", *workers) == 0
    assert train_tiny(tmp_path, tiny_corpus, "in_process", *augment, "data.num_workers=0") == 0
    for run in ("resumed", "in_process"):
        state = safe_torch_load(tmp_path / run / "epoch-2.pt")
        assert state["progress"]["step"] == full["progress"]["step"], run
        for name, value in full["model"].items():
            torch.testing.assert_close(state["model"][name], value, rtol=0, atol=0,
                                       msg=f"{run}: {name}")


def test_average_by_epochs_last_steps_and_running_average(trained):
    out = trained / "avg.safetensors"
    assert main(["average", "--exp-dir", str(trained), "--epoch", "2", "--avg", "2",
                 "--output", str(out)]) == 0
    averaged = load_weights(out)
    one = safe_torch_load(trained / "epoch-1.pt")["model"]
    two = safe_torch_load(trained / "epoch-2.pt")["model"]
    name = "encoder.layers.0.feed_forward1.linear1.weight"
    name = name if name in one else next(k for k, v in one.items() if v.is_floating_point())
    torch.testing.assert_close(averaged[name], (one[name] + two[name]) / 2)

    assert main(["average", "--exp-dir", str(trained), "--last", "2"]) == 0
    assert list(trained.glob("averaged-last-2-checkpoint-*.safetensors"))

    assert main(["average", "--exp-dir", str(trained), "--epoch", "2", "--avg", "1",
                 "--use-averaged-model"]) == 0
    running = load_weights(trained / "averaged-epoch-2-avg-1-use-averaged-model.safetensors")
    assert not torch.equal(running[name], two[name])  # the mean of epoch 2's steps, not its end


def test_average_names_missing_checkpoints(trained, caplog):
    assert main(["average", "--exp-dir", str(trained), "--epoch", "9", "--avg", "2"]) == 2
    assert "epoch-8.pt" in caplog.text


def test_global_cmvn_statistics_come_from_the_training_features(tmp_path, tiny_corpus):
    import numpy as np
    from lhotse import load_manifest

    assert train_tiny(tmp_path, tiny_corpus, "cmvn", "encoder.input_norm=global_cmvn",
                      "train.max_steps=1") == 0
    state = safe_torch_load(list_checkpoints(tmp_path / "cmvn")[-1][1])
    cuts = load_manifest(tiny_corpus / "fbank" / "librispeech_cuts_train-clean-5.jsonl.gz")
    frames = np.concatenate([c.load_features() for c in cuts])
    np.testing.assert_allclose(state["model"]["encoder.input_norm.mean"].numpy(), frames.mean(0),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state["model"]["encoder.input_norm.inv_std"].numpy(),
                               1.0 / frames.std(0), rtol=1e-4, atol=1e-4)


def test_a_refused_resume_leaves_the_config_its_checkpoints_fit(tmp_path, tiny_corpus, caplog):
    """Re-running with another model size: one error naming the checkpoint, and config.yaml
    still describes the directory's checkpoints."""
    assert train_tiny(tmp_path, tiny_corpus, "changed", "train.max_steps=1") == 0
    before = (tmp_path / "changed" / "config.yaml").read_bytes()
    assert train_tiny(tmp_path, tiny_corpus, "changed", "encoder.d_model=48") == 1
    assert "cannot resume from" in caplog.text and "checkpoint-1.pt" in caplog.text
    assert (tmp_path / "changed" / "config.yaml").read_bytes() == before


def test_a_second_run_into_an_experiment_directory_being_trained_is_refused(tmp_path,
                                                                          tiny_corpus, caplog):
    """Two runs into one experiment directory (a stage rerun while the first still trains):
    the second resumed from the first's checkpoint and both wrote the same checkpoints,
    config.yaml and TensorBoard logs, each ending with exit 0. The first run's lock now
    refuses the second at once, exit 2 naming the directory, before it writes anything."""
    from asr.fileio import output_lock

    exp = tmp_path / "busy"
    with output_lock(exp):  # held as a run training into it holds it
        assert train_tiny(tmp_path, tiny_corpus, "busy", "train.max_steps=1") == 2
    assert f"{exp} is being written by another process" in caplog.text
    assert not exp.exists()


def test_a_checkpoint_of_another_vocabulary_of_the_same_size_is_refused(tmp_path, tiny_corpus,
                                                                       caplog):
    """A tokenizer made again with as many pieces but other ones (two characters' ids swapped):
    the parameters' shapes are the same, and the run resumed, training every output id towards
    another piece than before. Now: exit 1 naming the checkpoint and the first id that differs,
    with the directory's files as they were."""
    from asr.tokenizers.char import CharTokenizer

    assert train_tiny(tmp_path, tiny_corpus, "vocab", "train.max_steps=1") == 0
    pieces = CharTokenizer.from_file(tiny_corpus / "lang_char" / "tokens.txt").pieces()
    pieces[4], pieces[5] = pieces[5], pieces[4]
    CharTokenizer(pieces).save(tmp_path / "lang_swapped")
    exp = tmp_path / "vocab"
    before = {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()}
    assert train_tiny(tmp_path, tiny_corpus, "vocab",
                      f"tokenizer_dir={tmp_path / 'lang_swapped'}") == 1
    assert re.search(r"cannot resume from \S*checkpoint-1\.pt: it was trained with another "
                     r"vocabulary than tokenizer_dir \S*lang_swapped \(token 4 is "
                     + re.escape(f"{pieces[5]!r} there and {pieces[4]!r} in"), caplog.text)
    assert {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()} == before


def test_a_run_stopped_before_a_checkpoint_leaves_the_config_its_checkpoints_fit(
        tmp_path, tiny_corpus, caplog):
    """A recipe's training stage rerun with another model size that stopped on missing training
    cuts left config.yaml describing the new model, which none of the directory's checkpoints
    fit: the decoding and export stages then failed on the trained experiment."""
    assert train_tiny(tmp_path, tiny_corpus, "kept", "train.max_steps=1") == 0
    before = (tmp_path / "kept" / "config.yaml").read_bytes()
    assert train_tiny(tmp_path, tiny_corpus, "kept", "encoder.d_model=48",
                      "data.min_cut_duration=8.0") == 1
    assert "no training cuts left" in caplog.text
    assert (tmp_path / "kept" / "config.yaml").read_bytes() == before


def test_a_dev_set_that_repeats_a_cut_id_is_refused_before_anything_is_written(
        tmp_path, tiny_corpus, caplog):
    """A repeated dev id was decoded and counted twice in every epoch's dev WER: exit 2 naming
    the file, the id and both lines, before the experiment directory is made."""
    lines = gzip.open(tiny_corpus / "fbank" / "librispeech_cuts_dev-clean-2.jsonl.gz",
                      "rb").readlines()
    dev = tmp_path / "dev-dup.jsonl.gz"
    with gzip.open(dev, "wb") as f:
        f.writelines([lines[1], *lines])
    assert train_tiny(tmp_path, tiny_corpus, "dupdev", f"data.dev_cuts=[{dev}]") == 2
    cut_id = json.loads(lines[1])["id"]
    assert f"cut id {cut_id!r} occurs twice in an evaluation set: lines 1 and 3 of {dev}" \
        in caplog.text
    assert not (tmp_path / "dupdev").exists()
    # --check-only reads no data: the recipes run it before their data stages rewrite the
    # manifests, so a stale dev manifest of an earlier run must not fail it
    caplog.clear()
    assert main(["train", "--config", str(tmp_path / "dupdev.yaml"), "--exp-dir",
                 str(tmp_path / "dupdev"), "--set", f"data.dev_cuts=[{dev}]",
                 "--check-only"]) == 0
    assert "occurs twice" not in caplog.text
    assert not (tmp_path / "dupdev").exists()


def test_the_dev_set_is_read_once(tmp_path, tiny_corpus, monkeypatch):
    """``asr train`` checked the dev ids up front, then read them again and the cuts a third
    time to load the dev set: now the checked cuts are trained with. Its first line is checked
    once too (the data check and the dev-set load each checked it)."""
    reads = count_manifest_reads(monkeypatch)
    opens = count_manifest_opens(monkeypatch)
    assert train_tiny(tmp_path, tiny_corpus, "devreads", "train.max_steps=1") == 0
    dev = tiny_corpus / "fbank" / "librispeech_cuts_dev-clean-2.jsonl.gz"
    assert reads[dev] == 1
    assert opens[dev] == 2  # the first-line check, then the one read


#: id -> (the override, the config field and the missing path named), functions of the corpus
#: and TMP.
MISSING_INPUTS = {
    "dev manifest": lambda corpus, tmp: (
        "data.dev_cuts=[missing-dev.jsonl.gz]",
        f"data.dev_cuts: cut manifest {corpus / 'fbank' / 'missing-dev.jsonl.gz'} does not "
        "exist"),
    "training manifest": lambda corpus, tmp: (
        "data.train_cuts=[missing.jsonl.gz]",
        f"data.train_cuts: cut manifest {corpus / 'fbank' / 'missing.jsonl.gz'} does not exist"),
    "Shar directory": lambda corpus, tmp: (
        f"data.train_shar_dirs=[{tmp / 'none'}]",
        f"data.train_shar_dirs: Shar directory {tmp / 'none'} does not exist"),
    "misnamed gzip dev manifest": lambda corpus, tmp: (  # asr reads it, by the bytes
        f"data.dev_cuts=[{_dev_copy(corpus, tmp / 'dev.jsonl')}]",
        f"data.dev_cuts: cut manifest {tmp / 'dev.jsonl'} is gzip-compressed but its name does "
        "not end in .gz, and asr, which reads this evaluation set, goes by its bytes"),
    "noise manifest": lambda corpus, tmp: (
        f"data.noise.cuts_path={tmp / 'noise.jsonl.gz'}",
        f"data.noise.cuts_path: cut manifest {tmp / 'noise.jsonl.gz'} does not exist"),
    "misnamed gzip noise manifest": lambda corpus, tmp: (
        f"data.noise.cuts_path={_dev_copy(corpus, tmp / 'noise.jsonl')}",
        f"data.noise.cuts_path: cut manifest {tmp / 'noise.jsonl'} is gzip-compressed but its "
        "name does not end in .gz"),
    "noise manifest of no cut": lambda corpus, tmp: (
        f"data.noise.cuts_path={_empty(tmp / 'noise.jsonl')}",
        f"data.noise.cuts_path: cut manifest {tmp / 'noise.jsonl'} holds no cuts"),
}


def _empty(path):
    """An empty file at ``path``."""
    path.write_bytes(b"")
    return path


def _dev_copy(corpus, path):
    """The tiny corpus' dev manifest (gzip) copied to ``path``."""
    path.write_bytes((corpus / "fbank" / "librispeech_cuts_dev-clean-2.jsonl.gz").read_bytes())
    return path


@pytest.mark.parametrize("case", MISSING_INPUTS)
def test_a_missing_input_of_the_config_is_refused_naming_its_field(case, tmp_path, tiny_corpus,
                                                                   caplog):
    """A missing dev, training or noise manifest (or one lhotse cannot read, or noise without
    cuts) exited with 1 once the model was built, as a failed run does: exit 2 naming the field
    and the path, before anything is written. ``--check-only`` reads no data (the recipes check
    before their data stages), so it still passes."""
    override, message = MISSING_INPUTS[case](tiny_corpus, tmp_path)
    assert train_tiny(tmp_path, tiny_corpus, "missing", override) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"asr train: {message}"), errors
    assert not (tmp_path / "missing").exists()
    config = tmp_path / "missing.yaml"
    assert main(["train", "--config", str(config), "--exp-dir", str(tmp_path / "missing"),
                 "--set", override, "--check-only"]) == 0


def test_a_quoted_number_in_a_recipe_is_refused_and_a_set_number_taken(tmp_path, caplog):
    """A recipe's ``lr: "3e-3"`` is a string: exit 2 naming the key (it was taken as the number);
    ``--set optim.lr=0.5``, text on the command line, is read as YAML and so a number."""
    recipe = Path("recipes/mini_tts/conformer_transducer.yaml").resolve()
    config = tmp_path / "quoted.yaml"
    config.write_text(f'_base_: {recipe}\noptim:\n  lr: "3e-3"\n', encoding="utf-8")
    base = ["train", "--config", str(config), "--exp-dir", str(tmp_path / "exp"), "--check-only"]
    assert main(base) == 2
    assert "optim.lr: expected a number, got '3e-3' (a string: write the number without " \
           "quotes)" in caplog.text
    assert main([*base, "--set", "optim.lr=0.5"]) == 0


@pytest.mark.parametrize("args, gpus, message", [
    (["--device", "cuda"], 0, "argument --device: device cuda: no CUDA GPU is available here"),
    (["--device", "cuda:3"], 1, "argument --device: device cuda:3: only 1 CUDA GPU(s) here"),
    (["--device", "gpu"], 1, "argument --device: device 'gpu': not a torch device"),
    (["--num-threads", "-2"], 0, "--num-threads must be >= 0, got -2"),
])
def test_a_decode_device_this_machine_lacks_is_refused_before_training(args, gpus, message,
                                                                       tmp_path, monkeypatch,
                                                                       caplog):
    """``--decode-arg`` left ``--device`` to stage 7's ``asr decode``: a recipe asked to decode
    on a GPU the machine lacks (or a device torch does not know) failed after training. The
    check resolves it as the decode does, on this machine (``gpus`` CUDA GPUs, mocked)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    recipe = Path("recipes/mini_tts/conformer_transducer.yaml").resolve()
    base = _assert_decode_line_refused(recipe, args, message, tmp_path, caplog)
    # what this machine has passes: its GPUs by number, the CPU, auto
    fits = [["--device", "cpu"], ["--device", "auto"], ["--num-threads", "2"]]
    fits += [["--device", f"cuda:{gpus - 1}"]] if gpus else []
    for arg in fits:
        assert main([*base, *[f"--decode-arg={a}" for a in arg]]) == 0, arg


@pytest.mark.parametrize("args, message", [
    (["--beam-size", "8"], "unrecognized arguments: --beam-size 8"),
    (["--set", "search.beam_sise=8"], "search.beam_sise"),
    (["--set", "search.beam_size=0"], "search.beam_size must be >= 1, got 0"),
    (["--epoch", "x"], "argument --epoch: invalid int value: 'x'"),
])
def test_a_decode_line_asr_decode_refuses_is_refused_before_training(args, message, tmp_path,
                                                                     caplog):
    """What ``asr decode`` refuses in a recipe's decode line (its parser, its search config) was
    found by the decode stage, after training: ``--decode-arg`` has the check refuse it first.
    (That the recipes pass --decode-args to this check: tests/egs/test_recipe_wiring.py.)"""
    recipe = Path(__file__).resolve().parents[2] / "recipes/librispeech/conformer_transducer.yaml"
    _assert_decode_line_refused(recipe, args, message, tmp_path, caplog)


def test_a_decode_line_is_parsed_as_asr_decode_parses_it(tmp_path, caplog):
    """The check parsed a decode line with a parser of its own, not ``asr decode``'s: it
    refused ``--log-level DEBUG``, which ``asr decode`` takes after its name, as "unrecognized
    arguments". It is the decode's own parser now (the same rules and errors), less --help."""
    recipe = Path(__file__).resolve().parents[2] / "recipes/librispeech/conformer_transducer.yaml"
    base = ["train", "--config", str(recipe), "--exp-dir", str(tmp_path / "exp"), "--check-only"]
    line = ["--searcher", "greedy", "--log-level", "debug", "--parts", "test-clean"]
    assert build_parser("decode").parse_args(["decode", "--exp-dir", "e", *line]).searchers == [
        "greedy"]
    assert main([*base, *[f"--decode-arg={arg}" for arg in line]]) == 0, caplog.text
    _assert_decode_line_refused(recipe, ["--help"], "unrecognized arguments: --help", tmp_path,
                                caplog)


def test_a_decode_line_of_another_experiment_is_refused(tmp_path, caplog):
    """A decode line's own ``--exp-dir`` (the recipes put theirs first: the line's wins) decodes
    another experiment than the one trained, whose config the check had checked the line
    against: refused, naming both; the same directory, written otherwise, passes."""
    recipe = Path(__file__).resolve().parents[2] / "recipes/librispeech/conformer_transducer.yaml"
    base = _assert_decode_line_refused(
        recipe, ["--exp-dir", str(tmp_path / "other")],
        f"argument --exp-dir: {tmp_path / 'other'} is not the experiment this run trains "
        f"({tmp_path / 'exp'})", tmp_path, caplog)
    same = str(tmp_path / "x" / ".." / "exp")
    assert main([*base, "--decode-arg=--exp-dir", f"--decode-arg={same}"]) == 0


def _assert_decode_line_refused(recipe: Path, args: list[str], message: str, tmp_path,
                                caplog) -> list[str]:
    """``asr train --check-only`` of ``recipe`` with the decode line ``--searcher greedy`` +
    ``args`` exits 2 with one error, from asr decode's check, holding ``message``, and creates
    no experiment directory; returns the command without ``args``."""
    base = ["train", "--config", str(recipe), "--exp-dir", str(tmp_path / "exp"), "--check-only",
            "--decode-arg=--searcher", "--decode-arg=greedy"]
    assert main([*base, *[f"--decode-arg={arg}" for arg in args]]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("asr train: --decode-arg: asr decode "), errors
    assert message in errors[0] and not (tmp_path / "exp").exists()
    return base


def test_decode_test_sets_are_checked_as_far_as_known_before_training(tmp_path, monkeypatch,
                                                                      caplog):
    """``--parts`` / ``--manifest-dir`` of a decode line were checked by the decode only, after
    training. Before the data stages the part names are checked against those the recipe
    prepares (a ``--manifest-dir`` of the user's own may hold others); once the data is
    prepared, their manifests and the LM."""
    monkeypatch.chdir(tmp_path)
    recipe = Path(__file__).resolve().parents[2] / "recipes/librispeech/conformer_transducer.yaml"
    base = ["train", "--config", str(recipe), "--exp-dir", "exp", "--check-only",
            "--decode-arg=--searcher", "--decode-arg=greedy",
            "--decode-prepared-parts", "test-clean", "test-other"]

    def check(*args: str) -> str:
        caplog.clear()
        if main([*base, *args]) == 0:
            return ""
        (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        return error

    parts = ["--decode-arg=--parts", "--decode-arg=test-other", "--decode-arg=test-clena"]
    assert "argument --parts: test-clena: not among the test sets the recipe prepares in " \
           "data/fbank (test-clean, test-other)" in check(*parts)
    assert check(*parts[:2]) == ""
    own = ["--decode-arg=--manifest-dir", "--decode-arg=mine"]
    assert check(*parts, *own) == ""  # the user's own test sets: not known before they exist
    assert "argument --manifest-dir: no directory mine" in check(*parts, *own,
                                                                 "--decode-data-ready")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "librispeech_cuts_test-other.jsonl.gz").write_bytes(b"")
    assert "argument --parts: no test set mine/librispeech_cuts_test-clena.jsonl.gz (in " \
           "argument --manifest-dir mine)" in check(*parts, *own, "--decode-data-ready")
    assert check(*parts[:2], *own, "--decode-data-ready") == ""
    assert "data.manifest_dir: no directory data/fbank" in check("--decode-data-ready")
    (tmp_path / "data" / "fbank").mkdir(parents=True)  # the recipe's own, without test-clena
    (tmp_path / "data" / "fbank" / "librispeech_cuts_test-other.jsonl.gz").write_bytes(b"")
    assert "argument --parts: no test set data/fbank/librispeech_cuts_test-clena.jsonl.gz" \
        in check(*parts, "--decode-data-ready")
    assert check(*parts[:2], "--decode-data-ready") == ""
    lm = ["--decode-arg=--set", "--decode-arg=search.lm_path=token_3gram.arpa"]
    assert check(*parts[:2], *own, *lm) == ""  # stage 5 will make it
    assert "search.lm_path token_3gram.arpa: no such LM file" in check(*parts[:2], *own, *lm,
                                                                "--decode-data-ready")
    assert not (tmp_path / "exp").exists()


def test_a_missing_lm_of_the_recipe_is_named_with_the_stage_that_makes_it(tmp_path, monkeypatch,
                                                                          caplog):
    """A recipe run after its LM stage without the LM said "no file ..." only: not which stage
    and options make it. ``--decode-lm-made-by`` names them for that path, not for another
    one the decode line sets (the user's own LM)."""
    monkeypatch.chdir(tmp_path)
    recipe = Path(__file__).resolve().parents[2] / "recipes/librispeech/conformer_transducer.yaml"
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "librispeech_cuts_mine.jsonl.gz").write_bytes(b"")
    base = ["train", "--config", str(recipe), "--exp-dir", "exp", "--check-only",
            "--decode-arg=--searcher", "--decode-arg=greedy", "--decode-arg=--manifest-dir",
            "--decode-arg=sets", "--decode-arg=--parts", "--decode-arg=mine", "--decode-data-ready",
            "--decode-lm-made-by", "lang/token_4gram.arpa", "stage 5 (the LMs, --lm-order 4)"]

    def check(lm_path: str) -> str:
        caplog.clear()
        assert main([*base, "--decode-arg=--set", f"--decode-arg=search.lm_path={lm_path}"]) == 2
        (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        return error

    assert check("lang/token_4gram.arpa").endswith(
        f"search.lm_path lang/token_4gram.arpa: no such LM file (in {tmp_path}), which stage 5 "
        "(the LMs, --lm-order 4) makes; this run starts after it")
    assert check("./lang/token_4gram.arpa").endswith("this run starts after it")
    assert check("mine.arpa").endswith(  # the config's hint, once, not the stage's
        f"search.lm_path mine.arpa: no such LM file in the working directory {tmp_path} (a "
        "relative path in search.lm_path: run from the directory the config's paths are "
        "relative to (a recipe's --work-dir), or give an absolute path)")
    assert not (tmp_path / "exp").exists()


def test_a_decode_epoch_past_training_is_refused_before_training(tmp_path, caplog):
    """``run.sh --train-args "--set train.max_epochs=10"`` with the default ``--epoch 30``
    trained ten epochs, then stage 7 failed on a missing epoch-30.pt."""
    recipe = Path(__file__).resolve().parents[2] / "recipes/librispeech/conformer_transducer.yaml"
    base = ["train", "--config", str(recipe), "--exp-dir", str(tmp_path / "exp"), "--check-only",
            "--set", "train.max_epochs=10", "--decode-arg=--searcher", "--decode-arg=greedy",
            "--decode-arg=--avg", "--decode-arg=2", "--decode-arg=--epoch"]
    assert main([*base, "--decode-arg=30"]) == 2
    assert "argument --epoch: 30 is past train.max_epochs 10: training writes no epoch-30.pt" \
        in caplog.text
    assert main([*base, "--decode-arg=10"]) == 0


def test_a_decode_val_best_training_cannot_satisfy_is_refused_before_training(tmp_path, caplog):
    """``run.sh --val-best 12`` with ten epochs, or with no dev set (no validation loss is
    recorded), trained, then failed at the decode after training."""
    recipe = Path(__file__).resolve().parents[2] / "recipes/librispeech/conformer_transducer.yaml"
    base = ["train", "--config", str(recipe), "--exp-dir", str(tmp_path / "exp"), "--check-only",
            "--set", "train.max_epochs=10", "--decode-arg=--searcher", "--decode-arg=greedy",
            "--decode-arg=--val-best"]
    assert main([*base, "--decode-arg=11"]) == 2
    assert ("argument --val-best: 11 is more epochs than train.max_epochs 10: training writes "
            "only 10 epoch-N.pt") in caplog.text
    assert main([*base, "--decode-arg=10", "--set", "data.dev_cuts=[]"]) == 2
    assert ("argument --val-best: data.dev_cuts is empty: training records no validation loss "
            "to choose its epochs by") in caplog.text
    assert main([*base, "--decode-arg=10"]) == 0


def test_a_tokenizer_an_earlier_stage_makes_is_checked_before_training(tmp_path, caplog):
    """``--tokenizer-made-by STAGE``: a recipe run that starts after the stage making
    tokenizer_dir needs it there now; the error names the file and STAGE. The directory checked
    is the config's after --set, and a character tokenizer (tokens.txt) is one too."""
    recipe = Path(__file__).resolve().parents[2] / "recipes/mini_tts/transformer_transducer.yaml"
    lang = tmp_path / "lang"
    base = ["train", "--config", str(recipe), "--exp-dir", str(tmp_path / "exp"), "--check-only",
            "--tokenizer-made-by", "stage 3", "--set", f"tokenizer_dir={lang}"]
    assert main(base) == 2
    assert f"tokenizer_dir: {lang}: no tokenizer found (expected {lang}/bpe.model or " \
        "tokens.txt); stage 3 makes it, and this run starts after it" in caplog.text
    assert not (tmp_path / "exp").exists()
    lang.mkdir()
    (lang / "tokens.txt").write_text("")
    assert main(base) == 0
    assert main(base[:6] + base[8:] + [f"tokenizer_dir={tmp_path}"]) == 0  # not asked: unchecked


@pytest.mark.parametrize("saved", [True, False])
def test_ctrl_c_names_the_checkpoint_the_same_command_resumes_from(saved, tmp_path, monkeypatch,
                                                                   caplog):
    """Ctrl-C during training said only "asr train: interrupted": not whether anything was
    kept, nor how to go on."""
    import asr.cli.train

    exp = tmp_path / "exp"

    def interrupted(args, cfg, main):
        exp.mkdir(exist_ok=True)
        if saved:
            for step in (35, 40):
                (exp / f"checkpoint-{step}.pt").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(asr.cli.train, "_train", interrupted)
    threads = torch.get_num_threads()
    try:
        recipe = (Path(__file__).resolve().parents[2] / "recipes" / "librispeech"
                  / "conformer_transducer.yaml")
        code = main(["train", "--config", str(recipe), "--exp-dir", str(exp)])
    finally:
        torch.set_num_threads(threads)
    assert code == 130
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line == ("asr train: interrupted; " + (
        f"the same command resumes from {exp / 'checkpoint-40.pt'}, the newest checkpoint (the "
        "steps after it are trained again)" if saved else
        "nothing saved yet: the same command starts again"))


@pytest.mark.parametrize("listed", [False, True])
def test_dev_cuts_that_are_training_cuts_too_are_warned_of(tmp_path, tiny_corpus, caplog,
                                                            monkeypatch, listed):
    """A dev manifest listed in data.train_cuts (or a corpus whose parts share ids) trained on
    the dev cuts without a word: the dev loss and WER, which choose the checkpoints, were not
    of held-out data. Stopped once the data is loaded (the trainer is not needed)."""
    import asr.run.train

    def stop(*args, **kwargs):
        raise RuntimeError("stopped after loading the data")

    monkeypatch.setattr(asr.run.train, "EpochBatches", stop)
    train = [f"{tiny_corpus}/fbank/librispeech_cuts_train-clean-5.jsonl.gz"]
    dev = f"{tiny_corpus}/fbank/librispeech_cuts_dev-clean-2.jsonl.gz"
    train_cuts = f"data.train_cuts=[{','.join(train + [dev] * listed)}]"
    with caplog.at_level(logging.WARNING, logger="asr.run.train"):
        assert train_tiny(tmp_path, tiny_corpus, "overlap", train_cuts) == 1
    assert "stopped after loading the data" in caplog.text
    first = min(c.id for c in CutSet.from_file(dev))
    warning = (f"4 of the 4 dev cuts are training cuts too, by their id or as speed copies "
               f"<id>_sp<factor> (e.g. {first}): the dev loss and WER are not measured on "
               "held-out data")
    assert (warning in caplog.text) == listed
