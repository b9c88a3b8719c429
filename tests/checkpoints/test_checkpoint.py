import os
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.checkpoints.averaging import (
    RunningAverage,
    average_state_dicts,
    averaged_model_between,
)
from asr.checkpoints.io import (
    CheckpointError,
    atomic_torch_save,
    capture_rng_state,
    checkpoint_path,
    epoch_checkpoint_path,
    latest_checkpoint,
    link_epoch_checkpoint,
    list_checkpoints,
    load_weights,
    remove_old_checkpoints,
    restore_rng_state,
    safe_torch_load,
    save_weights,
)
from asr.checkpoints.selection import WeightSelection, select_weights


def test_atomic_save_round_trip_and_no_temp_left(tmp_path):
    obj = {"model": {"w": torch.arange(6.0).view(2, 3)}, "step": 7, "names": ["a", "b"]}
    path = tmp_path / "checkpoint-7.pt"
    atomic_torch_save(obj, path)
    loaded = safe_torch_load(path)
    assert torch.equal(loaded["model"]["w"], obj["model"]["w"]) and loaded["step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-7.pt"]


def test_a_checkpoint_the_disk_cannot_hold_is_an_error_naming_it(tmp_path):
    """A full disk (here: a file size limit, in a process of its own) made torch.save fail with
    "[enforce fail at inline_container.cc:...] unexpected pos 704 vs 598", naming neither the
    file nor the disk: a run that trained for days died with that line. The error names the
    file and the space left; the earlier file and no temporary stay behind."""
    path = tmp_path / "checkpoint-7.pt"
    atomic_torch_save({"step": 6}, path)
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from asr.checkpoints.io import CheckpointError, atomic_torch_save
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))
        try:
            atomic_torch_save({{"w": torch.zeros(100_000)}}, {str(path)!r})
        except CheckpointError as err:
            print(err)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert re.match(rf"cannot write {re.escape(str(path))} \(\d+ MiB free there: is the disk "
                    r"full\?\): RuntimeError: .*; checkpoint-7.pt was left as it was$", out.strip())
    assert safe_torch_load(path) == {"step": 6}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-7.pt"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint-1.pt"
    atomic_torch_save({"w": torch.randn(100, 100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="checkpoint-1.pt.*truncated"):
        safe_torch_load(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        safe_torch_load(tmp_path / "nope.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        safe_torch_load(path)


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    atomic_torch_save({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(5)  # advance all generators
    restore_rng_state(safe_torch_load(tmp_path / "rng.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_rng_state_keeps_numpys_cached_gaussian(tmp_path):
    """numpy draws normals in pairs and caches the second: a resume that dropped the cache
    (has_gauss, cached_gaussian) would draw other noise than the run it continues."""
    np.random.seed(5)
    np.random.randn()  # leaves the pair's second value cached
    atomic_torch_save({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = np.random.randn(3)
    np.random.randn(7)
    restore_rng_state(safe_torch_load(tmp_path / "rng.pt")["rng"])
    assert np.array_equal(np.random.randn(3), expected)


class FakeCuda:
    """``torch.cuda``'s RNG functions for ``visible`` GPUs, the current one ``current``, as
    torch implements them: a state per device, an IndexError for a device not visible."""

    def __init__(self, visible: int, current: int = 0):
        self.states = [torch.tensor([i], dtype=torch.uint8) for i in range(visible)]
        self.current = current

    def _index(self, device) -> int:
        if isinstance(device, torch.device):
            return self.current if device.index is None else device.index
        return self.current if device == "cuda" else int(device)

    def get_rng_state(self, device="cuda"):
        return self.states[self._index(device)].clone()

    def set_rng_state(self, state, device="cuda"):
        self.states[self._index(device)] = state.clone()  # IndexError: not visible

    def get_rng_state_all(self):
        return [self.get_rng_state(i) for i in range(len(self.states))]

    def set_rng_state_all(self, states):
        for i, state in enumerate(states):
            self.set_rng_state(state, i)

    def install(self, monkeypatch):
        for name in ("get_rng_state", "set_rng_state", "get_rng_state_all", "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.states))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)


def test_a_process_resumes_its_gpus_rng_where_fewer_gpus_are_visible(monkeypatch):
    """A process trains on its current GPU, and its checkpoint keeps that GPU's RNG state: it
    kept every visible GPU's, so a resume where fewer are visible (the same run on a machine
    with fewer GPUs, or under CUDA_VISIBLE_DEVICES) failed with torch's IndexError. Lightning
    too keeps the current device's alone."""
    writer = FakeCuda(visible=2)
    writer.install(monkeypatch)
    writer.set_rng_state(torch.tensor([7], dtype=torch.uint8))  # its training drew
    state = capture_rng_state(torch.device("cuda", 0))
    reader = FakeCuda(visible=1)
    reader.install(monkeypatch)
    restore_rng_state(state, torch.device("cuda", 0))
    assert reader.states[0].item() == 7
    # a state of every visible GPU: the device's is restored
    restore_rng_state(dict(state, cuda=[torch.tensor([9], dtype=torch.uint8),
                                        torch.tensor([8], dtype=torch.uint8)]),
                      torch.device("cuda", 0))
    assert reader.states[0].item() == 9
    # a process on cuda:1 keeps and restores cuda:1's, not the current device's
    writer.install(monkeypatch)
    writer.set_rng_state(torch.tensor([5], dtype=torch.uint8), 1)
    assert capture_rng_state(torch.device("cuda", 1))["cuda"].item() == 5
    # a CPU process keeps none
    assert "cuda" not in capture_rng_state(torch.device("cpu"))


def test_an_epoch_link_is_replaced_when_its_epoch_is_written_again(tmp_path):
    """A resumed run that ends an epoch again links epoch-N.pt to its new step checkpoint."""
    for step in (10, 12):
        atomic_torch_save({"model": {"w": torch.full((1,), float(step))}},
                          checkpoint_path(tmp_path, step))
        link_epoch_checkpoint(checkpoint_path(tmp_path, step), 1)
    assert epoch_checkpoint_path(tmp_path, 1).samefile(checkpoint_path(tmp_path, 12))
    assert safe_torch_load(epoch_checkpoint_path(tmp_path, 1))["model"]["w"].item() == 12.0


def test_an_epoch_link_is_never_missing_while_it_is_replaced(tmp_path, monkeypatch):
    """Relinking epoch-N.pt deleted it first: a concurrent ``asr decode --epoch N`` could find
    it missing. The new link is made beside it and renamed over it."""
    import asr.checkpoints.io as io

    for step in (10, 12):
        atomic_torch_save({"model": {"w": torch.full((1,), float(step))}},
                          checkpoint_path(tmp_path, step))
    link_epoch_checkpoint(checkpoint_path(tmp_path, 10), 1)
    seen, os_link = [], os.link

    def link(src, dst):
        seen.append(epoch_checkpoint_path(tmp_path, 1).exists())
        os_link(src, dst)

    monkeypatch.setattr(io.os, "link", link)
    link_epoch_checkpoint(checkpoint_path(tmp_path, 12), 1)
    monkeypatch.undo()
    assert seen == [True]
    assert epoch_checkpoint_path(tmp_path, 1).samefile(checkpoint_path(tmp_path, 12))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-10.pt", "checkpoint-12.pt", "epoch-1.pt"]


def test_a_weights_file_is_selected_as_it_is(tmp_path):
    """``--checkpoint F.safetensors`` reads the weights file (no training checkpoint with it)."""
    sd = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    save_weights(sd, tmp_path / "averaged.safetensors")
    chosen = select_weights(tmp_path, WeightSelection(checkpoint=tmp_path / "averaged.safetensors"))
    assert set(chosen.state_dict) == set(sd)
    assert all(torch.equal(chosen.state_dict[k], sd[k]) for k in sd)
    assert chosen.tag == "averaged" and chosen.checkpoint == {}


def test_a_checkpoint_without_model_weights_is_named(tmp_path):
    atomic_torch_save({"progress": {"step": 3}}, checkpoint_path(tmp_path, 3))
    with pytest.raises(CheckpointError, match=r"checkpoint-3\.pt: not a training checkpoint"):
        select_weights(tmp_path, WeightSelection())


def test_a_directory_given_as_checkpoint_is_named_as_such(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*ckpt is a directory; give a \.pt"):
        select_weights(tmp_path, WeightSelection(checkpoint=tmp_path / "ckpt"))


def test_checkpoint_listing_and_pruning(tmp_path):
    for step in (10, 200, 30):
        atomic_torch_save({"step": step}, checkpoint_path(tmp_path, step))
    (tmp_path / "checkpoint-x.pt").write_text("not ours")
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10, 30, 200]
    assert latest_checkpoint(tmp_path).name == "checkpoint-200.pt"
    for keep_all in (0, -1):
        remove_old_checkpoints(tmp_path, keep_last=keep_all)
        assert [s for s, _ in list_checkpoints(tmp_path)] == [10, 30, 200]
    remove_old_checkpoints(tmp_path, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30, 200]


def test_safetensors_weights_round_trip(tmp_path):
    """Every tensor comes back equal (a transposed, non-contiguous one too: safetensors
    refuses those unless they are made contiguous), and so does the metadata."""
    from safetensors import safe_open

    sd = {"a": torch.randn(3, 4), "b": torch.arange(5), "t": torch.randn(4, 2).t()}
    assert not sd["t"].is_contiguous()
    save_weights(sd, tmp_path / "model.safetensors", metadata={"wer": "3.1"})
    out = load_weights(tmp_path / "model.safetensors")
    assert set(out) == set(sd) and all(torch.equal(out[k], sd[k]) for k in sd)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"wer": "3.1"}
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_weights(tmp_path / "bad.safetensors")


def test_average_of_checkpoints_is_elementwise_mean(tmp_path):
    sds = [{"w": torch.full((2,), float(i)), "n": torch.tensor(i)} for i in (1, 2, 6)]
    for i, sd in enumerate(sds, start=1):
        atomic_torch_save({"model": sd}, tmp_path / f"checkpoint-{i}.pt")
    avg = select_weights(tmp_path, WeightSelection(last=3)).state_dict
    assert torch.equal(avg["w"], torch.full((2,), 3.0))  # float32, as the checkpoints
    assert avg["n"].item() == 6  # integer tensors come from the last
    with pytest.raises(ValueError, match="differ in keys"):
        average_state_dicts([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}])


def test_averaging_checkpoints_of_different_models_names_the_files_and_tensor(tmp_path):
    """A (1,)-shaped tensor would broadcast against a (3,)-shaped one: refused, not averaged."""
    for step, size in ((1, 1), (2, 3)):
        atomic_torch_save({"model": {"w": torch.ones(size)}}, tmp_path / f"checkpoint-{step}.pt")
    with pytest.raises(ValueError,
                       match=r"checkpoint-2\.pt and .*checkpoint-1\.pt differ in the shape of w"):
        select_weights(tmp_path, WeightSelection(last=2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_averages_keep_their_checkpoints_dtype(dtype):
    """The mean was returned in float64 and written float32: half-precision checkpoints
    averaged to weights twice their size, in another dtype than the model's. It is still
    accumulated in float64: exactly the float64 mean, rounded once to the dtype."""
    generator = torch.Generator().manual_seed(0)
    sds = [{"w": torch.randn(64, generator=generator).to(dtype), "step": torch.tensor(i),
            "scale": torch.rand(3, generator=generator)} for i in range(3)]
    avg = average_state_dicts(sds)
    expected = (sum(sd["w"].double() for sd in sds) / 3).to(dtype)
    assert avg["w"].dtype == dtype and torch.equal(avg["w"], expected)
    assert avg["scale"].dtype == torch.float32  # each tensor its own inputs' dtype
    assert avg["step"].item() == 2 and avg["step"].dtype == torch.int64


def test_averaging_tensors_of_different_dtypes_names_the_tensor():
    sds = [{"w": torch.zeros(2, dtype=torch.float16)}, {"w": torch.zeros(2, dtype=torch.bfloat16)}]
    with pytest.raises(ValueError, match=r"b\.pt and a\.pt differ in the dtype of w: "
                                         r"torch\.bfloat16 vs torch\.float16"):
        average_state_dicts(sds, ["a.pt", "b.pt"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_asr_average_writes_the_checkpoints_dtype(dtype, tmp_path):
    from asr.cli.main import main

    sds = [{"w": torch.tensor([0.1, 1.3, -2.7], dtype=dtype) * e} for e in (1, 2)]
    for epoch, sd in enumerate(sds, start=1):
        atomic_torch_save({"model": sd}, tmp_path / f"epoch-{epoch}.pt")
    assert main(["average", "--exp-dir", str(tmp_path), "--epoch", "2", "--avg", "2"]) == 0
    written = load_weights(tmp_path / "averaged-epoch-2-avg-2.safetensors")["w"]
    assert written.dtype == dtype
    assert torch.equal(written, ((sds[0]["w"].double() + sds[1]["w"].double()) / 2).to(dtype))


def test_asr_average_with_avg_above_epoch_names_both_options(tmp_path, caplog):
    """``--epoch 4 --avg 5`` (more epochs than written) reported a missing ``epoch-0.pt``, a
    file no training writes: it is refused as a bad option, naming both and the fix."""
    from asr.cli.main import main

    for epoch in range(1, 5):
        atomic_torch_save({"model": {"w": torch.full((2,), float(epoch))}},
                          tmp_path / f"epoch-{epoch}.pt")
    assert main(["average", "--exp-dir", str(tmp_path), "--epoch", "4", "--avg", "5"]) == 2
    assert "--avg 5 is more than --epoch 4" in caplog.text
    assert "give --avg 4 or less" in caplog.text and "epoch-0.pt" not in caplog.text
    assert not list(tmp_path.glob("averaged-*"))


def test_running_average_equals_mean_of_sampled_models():
    model = torch.nn.Linear(2, 2)
    avg = RunningAverage(model, period=2)
    snapshots = []
    for step in range(1, 9):
        with torch.no_grad():
            model.weight.add_(float(step))
        if avg.update(model, step):
            snapshots.append(model.weight.detach().clone().double())
    expected = torch.stack(snapshots).mean(0)
    averaged = avg.averaged_state_dict(model)
    assert averaged["weight"].dtype == torch.float32  # the model's dtype, not the float64 kept
    assert torch.allclose(averaged["weight"].double(), expected, atol=1e-5)


def test_running_average_skips_step_zero_and_resumes_exactly(tmp_path):
    """Step 0 (before any optimizer step) is no sample: a weight period/0 would divide by
    zero. An average saved mid-run and loaded into an averager made with another period goes
    on exactly as the uninterrupted one: the period is part of its state."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    whole = RunningAverage(model, period=2)
    before = {k: v.clone() for k, v in whole.average.items()}
    assert not whole.update(model, 0)
    assert all(torch.equal(whole.average[k], before[k]) for k in before)
    resumed = None
    for step in range(1, 11):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        whole.update(model, step)
        if resumed is not None:
            resumed.update(model, step)
        if step == 4:
            atomic_torch_save({"averager": whole.state_dict()}, tmp_path / "a.pt")
            resumed = RunningAverage(model, period=3)
            resumed.load_state_dict(safe_torch_load(tmp_path / "a.pt")["averager"])
    assert resumed is not None and resumed.period == 2
    assert set(resumed.average) == set(whole.average)
    assert all(torch.equal(resumed.average[k], whole.average[k]) for k in whole.average)




@pytest.mark.parametrize(("kwargs", "message"), [
    ({"last": 0}, "--last must be >= 1, got 0"),
    ({"last": -2}, "--last must be >= 1, got -2"),
    ({"epoch": 0}, "--epoch must be >= 1, got 0"),
    ({"avg": 2}, "--avg needs --epoch"),
    ({"use_averaged_model": True}, "--use-averaged-model needs --epoch"),
    ({"epoch": 4, "avg": 5}, "--avg 5 is more than --epoch 4"),
    ({"epoch": 2, "avg": 3, "use_averaged_model": True}, "--avg 3 is more than --epoch 2"),
])
def test_a_selection_of_no_checkpoint_is_refused_as_such(tmp_path, kwargs, message):
    """``--last 0`` was reported as missing files ("holds 3 checkpoint-N.pt files, 0
    requested") and ``--epoch 0`` as a missing ``epoch-0.pt``: bad values, named as such."""
    with pytest.raises(ValueError, match=re.escape(message)):
        WeightSelection(**kwargs)


def test_last_n_averages_the_newest_step_checkpoints_and_keeps_the_newest_progress(tmp_path):
    for step in (10, 20, 30):
        atomic_torch_save({"model": {"w": torch.full((2,), float(step))},
                           "progress": {"step": step}}, checkpoint_path(tmp_path, step))
    chosen = select_weights(tmp_path, WeightSelection(last=2))
    assert torch.equal(chosen.state_dict["w"], torch.full((2,), 25.0))
    assert chosen.tag == "last-2-checkpoint-30" and chosen.checkpoint["progress"]["step"] == 30
    assert chosen.sources == (checkpoint_path(tmp_path, 20), checkpoint_path(tmp_path, 30))
    with pytest.raises(FileNotFoundError, match="holds 3 checkpoint-N.pt files, 4 requested"):
        select_weights(tmp_path, WeightSelection(last=4))
    with pytest.raises(ValueError, match="choose one of"):
        WeightSelection(epoch=3, last=2)


def test_averaged_model_between_is_the_mean_of_the_samples_of_those_epochs(tmp_path):
    """Running averages (period 10) of the samples 1, 2, ..., k (sample k = k): epoch 1 ends at
    step 35 (3 samples), epoch 2 at 52 (5), epoch 3 at 85 (8). Epochs 2-3 hold samples 4..8."""
    for epoch, (step, samples) in enumerate([(35, 3), (52, 5), (85, 8)], start=1):
        mean = (samples + 1) / 2
        atomic_torch_save({
            "model": {"w": torch.zeros(2), "n": torch.tensor(epoch)},
            "averager": {
                "period": 10, "average": {"w": torch.full((2,), mean, dtype=torch.float64)},
            },
            "progress": {"step": step},
        }, epoch_checkpoint_path(tmp_path, epoch))
    weights, checkpoint = averaged_model_between(tmp_path, epoch=3, avg=2)
    assert torch.equal(weights["w"], torch.full((2,), 6.0)) and weights["w"].dtype == torch.float32
    assert weights["n"].item() == 3 and checkpoint["progress"]["step"] == 85
    whole, _ = averaged_model_between(tmp_path, epoch=3, avg=3)
    assert torch.equal(whole["w"], torch.full((2,), 4.5))
    chosen = select_weights(tmp_path, WeightSelection(epoch=3, avg=2, use_averaged_model=True))
    assert torch.equal(chosen.state_dict["w"], torch.full((2,), 6.0))
    assert chosen.tag == "epoch-3-avg-2-use-averaged-model"
    assert chosen.sources == (epoch_checkpoint_path(tmp_path, 3),)
    with pytest.raises(ValueError, match="need 1 <= avg <= epoch, got epoch=3 avg=4"):
        averaged_model_between(tmp_path, epoch=3, avg=4)


def test_averaged_model_between_epochs_without_samples_is_refused(tmp_path):
    """Two epoch checkpoints with the same number of samples hold nothing between them: the
    mean of no samples (0 / 0) is refused, not written as NaN weights."""
    for epoch in (1, 2):
        _epoch_with_average(tmp_path, epoch, width=2, step=10)
    with pytest.raises(ValueError, match="no running-average samples between epoch 1 and 2"):
        averaged_model_between(tmp_path, epoch=2, avg=1)
    # a quick run shorter than one period (the default 100 steps): the error said only the
    # above, not why nor what to do (run.sh averages with --use-averaged-model by default)
    short = tmp_path / "short"
    short.mkdir()
    _epoch_with_average(short, 2, width=2, step=49,
                        averager={"period": 100, "average": {"w": torch.zeros(2)}})
    with pytest.raises(ValueError) as refused:
        averaged_model_between(short, epoch=2, avg=2)
    assert str(refused.value) == (
        f"no running-average samples between epoch 0 and 2 in {short}: the model is sampled "
        "every train.average_period=100 steps and epoch 2 ends at step 49 (0 samples; 0 by "
        "epoch 0): average the epochs' own weights instead (without --use-averaged-model; "
        "run.sh --use-averaged-model false), or train with a smaller train.average_period")


def _epoch_with_average(tmp_path, epoch, width, step=10, **changes):
    state = {"model": {"w": torch.zeros(width)}, "progress": {"step": step},
             "averager": {"period": 1, "average": {"w": torch.zeros(width, dtype=torch.float64)}}}
    state.update(changes)
    atomic_torch_save(state, epoch_checkpoint_path(tmp_path, epoch))


@pytest.mark.parametrize("case, message", [
    ("other model", r"the running averages of .*epoch-1\.pt and .*epoch-2\.pt differ in the "
                    r"shape of w: \(3,\) vs \(2,\)"),
    ("no progress", r"epoch-1\.pt: not a training checkpoint"),
])
def test_use_averaged_model_on_checkpoints_that_do_not_fit_names_them(tmp_path, case, message,
                                                                     caplog):
    """--use-averaged-model between an epoch checkpoint of another model (an experiment
    directory reused) or a file that is no training checkpoint: it failed with a bare
    RuntimeError (a tensor size mismatch) or KeyError, exit 1, naming no file."""
    from asr.cli.main import main

    if case == "other model":
        _epoch_with_average(tmp_path, 1, width=3, step=5)
    else:
        atomic_torch_save({"model": {"w": torch.zeros(2)}, "averager": {"period": 1, "average": {
            "w": torch.zeros(2, dtype=torch.float64)}}}, epoch_checkpoint_path(tmp_path, 1))
    _epoch_with_average(tmp_path, 2, width=2)
    with pytest.raises((ValueError, CheckpointError), match=message):
        averaged_model_between(tmp_path, epoch=2, avg=1)
    assert main(["average", "--exp-dir", str(tmp_path), "--epoch", "2", "--avg", "1",
                 "--use-averaged-model"]) == 2
    assert re.search(message, caplog.text)
    assert not list(tmp_path.glob("averaged-*"))


class _System:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


def test_a_checkpoint_that_would_run_a_shell_command_is_refused_without_advice_to_run_it(
        tmp_path):
    """For a file calling a module torch blocks (os.system), torch's message says that loading
    with weights_only=False "will likely succeed": the error passed that advice on, which
    would run the file's command. Only the cause is kept."""
    path = tmp_path / "checkpoint-1.pt"
    torch.save({"model": _System()}, path)
    with pytest.raises(CheckpointError) as refused:
        safe_torch_load(path)
    message = str(refused.value)
    assert re.search(r"checkpoint-1\.pt .*not a weights-only checkpoint: UnpicklingError: "
                     r"Trying to load unsupported GLOBAL \S*system whose module \S+ is blocked",
                     message), message
    assert "weights_only" not in message and "False" not in message


def _write_step_checkpoint(exp_dir: Path, step: int) -> None:
    atomic_torch_save({"model": {"w": torch.full((2,), float(step))}, "progress": {"step": step}},
                      checkpoint_path(exp_dir, step))


def _train_meanwhile(monkeypatch, exp_dir: Path, times: int) -> list[Path]:
    """Before each of the first ``times`` checkpoint reads of the selection, a training that
    still runs in ``exp_dir`` writes its next step checkpoint and prunes to ``keep_last=2``;
    returns the files the selection read (or tried to)."""
    from asr.checkpoints import selection

    real_read, tried = selection.read_model_weights, []

    def read(path):
        if len(tried) < times:
            _write_step_checkpoint(exp_dir, list_checkpoints(exp_dir)[-1][0] + 10)
            remove_old_checkpoints(exp_dir, keep_last=2)
        tried.append(Path(path))
        return real_read(path)

    monkeypatch.setattr(selection, "read_model_weights", read)
    return tried


def test_last_n_chooses_again_when_a_running_training_prunes_a_chosen_checkpoint(
        tmp_path, monkeypatch):
    """``asr decode --last 2`` while training runs with ``keep_last: 2``: between the listing
    (checkpoints 20 and 30) and the reading, the training wrote checkpoint 40 and deleted 20.
    The selection failed on the missing file; it chooses again, 30 and 40."""
    for step in (20, 30):
        _write_step_checkpoint(tmp_path, step)
    tried = _train_meanwhile(monkeypatch, tmp_path, times=1)
    chosen = select_weights(tmp_path, WeightSelection(last=2))
    assert chosen.tag == "last-2-checkpoint-40"
    assert torch.equal(chosen.state_dict["w"], torch.full((2,), 35.0))
    assert chosen.sources == (checkpoint_path(tmp_path, 30), checkpoint_path(tmp_path, 40))
    assert [p.name for p in tried] == ["checkpoint-20.pt", "checkpoint-30.pt", "checkpoint-40.pt"]


def test_a_selection_pruned_again_and_again_stops_with_an_error_saying_why(tmp_path,
                                                                          monkeypatch):
    """A chosen checkpoint deleted before every read: a bounded number of choices, then an
    error naming the file, the directory and the cause."""
    from asr.checkpoints.selection import SELECT_ATTEMPTS

    for step in (20, 30):
        _write_step_checkpoint(tmp_path, step)
    tried = _train_meanwhile(monkeypatch, tmp_path, times=100)
    with pytest.raises(CheckpointError, match=r"checkpoint-40\.pt does not exist.*deleted before "
                       r"they were read, 3 times.*train\.keep_last"):
        select_weights(tmp_path, WeightSelection(last=2))
    assert [p.name for p in tried] == ["checkpoint-20.pt", "checkpoint-30.pt", "checkpoint-40.pt"]
    assert SELECT_ATTEMPTS == 3


@pytest.mark.parametrize("output", [None, "chosen.safetensors"])
def test_asr_average_last_n_chooses_again_when_a_running_training_prunes_a_chosen_checkpoint(
        tmp_path, monkeypatch, output):
    """``asr average --last 2`` while training runs with ``keep_last: 2``: it planned the
    selection (20, 30) and read it separately, so the pruned checkpoint-20.pt stopped it with
    "does not exist". It chooses again (30, 40), as ``asr decode`` does; the default output is
    named after what it averaged."""
    from asr.cli.main import main

    for step in (20, 30):
        _write_step_checkpoint(tmp_path, step)
    _train_meanwhile(monkeypatch, tmp_path, times=1)
    command = ["average", "--exp-dir", str(tmp_path), "--last", "2"]
    if output is not None:
        command += ["--output", str(tmp_path / output)]
    assert main(command) == 0
    written = tmp_path / (output or "averaged-last-2-checkpoint-40.safetensors")
    assert torch.equal(load_weights(written)["w"], torch.full((2,), 35.0))
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [written.name]


def test_a_checkpoint_deleted_as_it_is_opened_is_chosen_again(tmp_path, monkeypatch):
    """keep_last pruning that deletes a chosen checkpoint after its existence was checked but
    before torch.load opened it: the error path asked the vanished file for its size, so a bare
    FileNotFoundError escaped the selection, which chooses again only on a CheckpointError."""
    for step in (20, 30):
        _write_step_checkpoint(tmp_path, step)
    real_load, opened = torch.load, []

    def load(path, *args, **kwargs):
        if not opened:  # the training writes checkpoint-40.pt and prunes to keep_last=2
            _write_step_checkpoint(tmp_path, 40)
            remove_old_checkpoints(tmp_path, keep_last=2)
        opened.append(Path(path).name)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    chosen = select_weights(tmp_path, WeightSelection(last=2))
    assert chosen.tag == "last-2-checkpoint-40"
    assert opened == ["checkpoint-20.pt", "checkpoint-30.pt", "checkpoint-40.pt"]


def test_a_checkpoint_deleted_while_its_read_fails_is_named_and_chosen_again(tmp_path,
                                                                             monkeypatch):
    """keep_last pruning that deletes a chosen checkpoint while torch.load reads it (on NFS a
    read of a file deleted by another host fails midway, with ESTALE or a torn zip record): the
    error path asked the vanished file for its size, so a bare FileNotFoundError, naming
    neither what happened nor the read's error, escaped the load and the selection, which
    chooses again only on a CheckpointError."""
    for step in (20, 30):
        _write_step_checkpoint(tmp_path, step)
    real_load, opened = torch.load, []

    def load(path, *args, **kwargs):
        opened.append(Path(path).name)
        if path == checkpoint_path(tmp_path, 20) and len(opened) == 1:
            # the training writes checkpoint-40.pt and prunes to keep_last=2 mid-read
            _write_step_checkpoint(tmp_path, 40)
            remove_old_checkpoints(tmp_path, keep_last=2)
            raise RuntimeError("PytorchStreamReader failed reading file data/0: invalid header")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    chosen = select_weights(tmp_path, WeightSelection(last=2))
    assert chosen.tag == "last-2-checkpoint-40"
    assert opened == ["checkpoint-20.pt", "checkpoint-30.pt", "checkpoint-40.pt"]
    _write_step_checkpoint(tmp_path, 20)
    opened.clear()
    with pytest.raises(CheckpointError, match=(
            r"checkpoint \S+checkpoint-20\.pt was deleted while it was being read \(a running "
            r"training's train\.keep_last pruning\?\); the read failed with RuntimeError: "
            r"PytorchStreamReader failed reading file data/0: invalid header$")):
        safe_torch_load(checkpoint_path(tmp_path, 20))


def _write_epochs_with_valid_losses(exp_dir: Path, losses: list[float | None]) -> None:
    """``epoch-E.pt`` for each loss (weights ``[E, E]``), each holding the history of its
    epochs as the trainer records it: ``progress.history`` of ``{"epoch", "valid_loss"}``."""
    history = []
    for epoch, loss in enumerate(losses, start=1):
        history.append({"epoch": epoch, "train_loss": 1.0, "valid_loss": loss})
        atomic_torch_save({"model": {"w": torch.full((2,), float(epoch))},
                           "progress": {"step": 10 * epoch, "history": list(history)}},
                          epoch_checkpoint_path(exp_dir, epoch))


def test_val_best_averages_the_epochs_of_lowest_validation_loss(tmp_path):
    """WeNet's ``average_model.py --val_best``: the N epochs of lowest validation loss, not
    the last N; an epoch without a finite loss never counts, equal losses prefer the later."""
    _write_epochs_with_valid_losses(tmp_path, [3.0, 1.5, 2.0, None, float("nan"), 1.5, 2.5])
    chosen = select_weights(tmp_path, WeightSelection(val_best=3))
    assert chosen.tag == "val-best-3-epochs-2-3-6"
    assert chosen.sources == tuple(tmp_path / f"epoch-{e}.pt" for e in (2, 3, 6))
    assert torch.equal(chosen.state_dict["w"], torch.full((2,), (2 + 3 + 6) / 3))
    assert chosen.checkpoint["progress"]["step"] == 60  # the newest chosen one's
    assert select_weights(tmp_path, WeightSelection(val_best=1)).tag == "val-best-1-epochs-6"
    with pytest.raises(ValueError, match=r"only 5 epochs .* \(epochs 1: 3\.0000, 2: 1\.5000, "
                                         r"3: 2\.0000, 6: 1\.5000, 7: 2\.5000;"):
        select_weights(tmp_path, WeightSelection(val_best=6))
    with pytest.raises(ValueError, match="choose one of --epoch/--avg, --last, --val-best"):
        WeightSelection(epoch=3, val_best=2)
    with pytest.raises(ValueError, match="--val-best must be >= 1, got 0"):
        WeightSelection(val_best=0)


def test_val_best_names_a_checkpoint_without_an_epoch_history(tmp_path):
    atomic_torch_save({"model": {"w": torch.zeros(2)}}, tmp_path / "epoch-1.pt")
    with pytest.raises(CheckpointError, match=r"epoch-1\.pt: records no epoch history"):
        select_weights(tmp_path, WeightSelection(val_best=1))
    with pytest.raises(FileNotFoundError, match="holds no epoch-N.pt"):
        select_weights(tmp_path / "none", WeightSelection(val_best=1))


def test_asr_average_val_best_writes_the_mean_of_the_best_epochs(tmp_path, caplog):
    from asr.cli.main import main

    caplog.set_level("INFO")
    _write_epochs_with_valid_losses(tmp_path, [4.0, 1.0, 3.0, 2.0])
    assert main(["average", "--exp-dir", str(tmp_path), "--val-best", "2"]) == 0
    written = load_weights(tmp_path / "averaged-val-best-2-epochs-2-4.safetensors")["w"]
    assert torch.equal(written, torch.full((2,), 3.0))
    assert "--val-best 2: epochs 2, 4 (validation losses 1.0000, 2.0000)" in caplog.text
    assert main(["average", "--exp-dir", str(tmp_path), "--val-best", "5"]) == 2
    assert "only 4 epochs" in caplog.text


def test_val_best_takes_each_epoch_s_loss_from_its_own_checkpoint(tmp_path):
    """A training resumed from epoch 2's checkpoint wrote epoch 3 again (loss 5.0) and left
    the earlier run's epoch-4.pt, whose history still says epoch 3 had 1.0: reading the losses
    from the highest epoch-N.pt chose the rewritten epoch 3 for a loss its weights never had."""
    _write_epochs_with_valid_losses(tmp_path, [3.0, 2.0, 1.0, 0.5])
    rewritten = {"epoch": 3, "train_loss": 1.0, "valid_loss": 5.0}
    history = [{"epoch": e, "train_loss": 1.0, "valid_loss": v} for e, v in ((1, 3.0), (2, 2.0))]
    atomic_torch_save({"model": {"w": torch.full((2,), 30.0)},
                       "progress": {"step": 31, "history": [*history, rewritten]}},
                      epoch_checkpoint_path(tmp_path, 3))
    chosen = select_weights(tmp_path, WeightSelection(val_best=2))
    assert chosen.tag == "val-best-2-epochs-2-4"
    assert torch.equal(chosen.state_dict["w"], torch.full((2,), 3.0))


def test_val_best_names_an_epoch_checkpoint_of_another_epoch(tmp_path):
    """An epoch-N.pt whose history does not end with epoch N (a step checkpoint copied to
    that name) holds no loss of epoch N: named, not read as one."""
    _write_epochs_with_valid_losses(tmp_path, [3.0, 2.0])
    os.replace(epoch_checkpoint_path(tmp_path, 2), epoch_checkpoint_path(tmp_path, 5))
    with pytest.raises(CheckpointError, match=r"epoch-5\.pt: its epoch history ends with epoch "
                                              r"2, not 5: not the checkpoint of epoch 5's end"):
        select_weights(tmp_path, WeightSelection(val_best=1))
