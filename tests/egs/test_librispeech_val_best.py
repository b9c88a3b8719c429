"""``egs/librispeech/ASR/run.sh --val-best N``: stages 7-9 decode, average and package the N
epochs of lowest validation loss (WeNet's ``average_model.py --val_best``) instead of
``--epoch/--avg/--use-averaged-model``; against the stub ``asr`` of the recipe wiring tests."""

from __future__ import annotations

from tests.egs import test_recipe_wiring as wiring

RUN = wiring.RUN
stub = wiring.stub  # the fixture: a stub venv whose `asr` records its calls


def test_val_best_replaces_epoch_and_avg_in_stages_7_to_9(stub, tmp_path):
    """Without it run.sh refused --val-best as an option it does not have."""
    run, calls = stub
    work = tmp_path / "work"
    (work / "exp" / "conformer_transducer").mkdir(parents=True)
    # --avg 40 is more than --epoch 30, but neither is used with --val-best
    common = ["--work-dir", str(work), "--val-best", "5", "--avg", "40"]
    decoded = run(RUN, *common, "--stage", "7", "--stop-stage", "8")
    assert decoded.returncode == 0, decoded.stderr
    weights = "exp/conformer_transducer/averaged-val-best-5.safetensors"
    decode, average = calls()[0], calls()[-1]
    assert decode[0] == "decode" and decode[decode.index("--searcher") + 2:][:2] == [
        "--val-best", "5"]
    assert not {"--epoch", "--avg", "--use-averaged-model"} & set(decode + average)
    assert average == ["average", "--exp-dir", "exp/conformer_transducer", "--val-best", "5",
                       "--output", weights]
    assert "stage 8: average the 5 epochs of lowest validation loss" in decoded.stderr
    # stage 9 packages exactly what stage 8 wrote with these settings
    (work / "exp" / "conformer_transducer" / "averaged-epoch-30-avg-9-use-averaged-model"
     ".safetensors").write_bytes(b"")
    missing = run(RUN, *common, "--stage", "9", "--stop-stage", "9")
    assert missing.returncode == 1
    assert f"no {weights}: run stage 8 with the same --val-best first" in missing.stderr
    (work / weights).write_bytes(b"")
    exported = run(RUN, *common, "--stage", "9", "--stop-stage", "9")
    assert exported.returncode == 0, exported.stderr
    call = calls()[-1]
    assert call[0] == "export-package" and call[call.index("--checkpoint") + 1] == weights


def test_val_best_is_checked_before_the_first_stage(stub, real, tmp_path):
    """A negative --val-best, and one more than the epochs training writes (checked by
    `asr train --check-only` of the decode line, the real one), are refused before stage 0."""
    run, calls = stub
    work = tmp_path / "work"
    negative = run(RUN, "--work-dir", str(work), "--val-best", "-1")
    assert negative.returncode == 2 and "--val-best must be at least 0, got -1" in negative.stderr
    assert calls(everything=True) == []
    result = run(RUN, "--work-dir", str(work), "--val-best", "11",
                 "--train-args", "--set train.max_epochs=10", env=real)
    assert result.returncode == 2, result.stderr
    assert ("argument --val-best: 11 is more epochs than train.max_epochs 10" in result.stderr
            and "nothing was run" in result.stderr)
    assert "stage 0" not in result.stderr and not (work / "data").exists()
