"""Model packages: export from an experiment, load without pickle, errors naming the bad file."""

from __future__ import annotations

import dataclasses
import json
import os
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from asr.checkpoints.io import load_weights, save_weights
from asr.checkpoints.selection import WeightSelection
from asr.cli.main import main
from asr.fingerprint import sha256_of_file
from asr.package import (
    METADATA_FILE,
    WEIGHTS_FILE,
    PackageError,
    check_output_dir,
    export_package,
    load_package,
)
from asr.runtime.offline import load_model
from asr.testing.packages import random_experiment


@pytest.fixture()
def exp_dir(tmp_path) -> Path:
    return random_experiment(tmp_path / "work", head="ctc", num_epochs=3)


def _epoch_weights(exp_dir: Path, epoch: int) -> dict[str, torch.Tensor]:
    return torch.load(exp_dir / f"epoch-{epoch}.pt", weights_only=True)["model"]


def test_export_then_load_round_trip(exp_dir, tmp_path):
    metadata = export_package(exp_dir, tmp_path / "pkg", WeightSelection(epoch=2))
    package = load_package(tmp_path / "pkg")
    assert metadata == package.metadata
    assert metadata.checkpoints == ("epoch-2.pt",)
    assert metadata.searcher == "ctc_greedy" and metadata.streaming
    assert metadata.wer == {"dev": 48.0}
    assert metadata.vocab_size == package.tokenizer.vocab_size
    assert package.config.tokenizer_dir == tmp_path / "pkg" / "tokenizer"
    expected = _epoch_weights(exp_dir, 2)
    for name, value in package.build_model().state_dict().items():
        torch.testing.assert_close(value, expected[name])
    files = sorted(p.relative_to(tmp_path / "pkg").as_posix()
                   for p in (tmp_path / "pkg").rglob("*") if p.is_file())
    assert files == ["config.yaml", "metadata.json", "model.safetensors", "tokenizer/tokens.txt"]
    assert (tmp_path / "pkg" / "config.yaml").read_text().count("tokenizer_dir: tokenizer") == 1


def test_a_searcher_of_a_head_of_loss_weight_0_is_warned_of(tmp_path, caplog):
    """A package whose default searcher reads a head that the experiment's
    ``heads.loss_weights`` leaves at 0 (built, never trained) was written without a word, and
    such a searcher chosen when the package is loaded was used without one, while ``asr
    decode`` and ``asr train --check-only`` warn of it: the same warning."""
    exp = random_experiment(tmp_path / "work", head="transducer")
    checkpoint = torch.load(exp / "epoch-1.pt", weights_only=True)
    checkpoint["extra"]["config"]["heads"]["loss_weights"] = {"transducer": 1.0, "ctc": 0.0}
    torch.save(checkpoint, exp / "epoch-1.pt")  # its hard link checkpoint-1.pt too
    export_package(exp, tmp_path / "pkg", WeightSelection(epoch=1))
    assert "leaves untrained" not in caplog.text  # the default: transducer_greedy
    export_package(exp, tmp_path / "ctc", WeightSelection(epoch=1), searcher="ctc_greedy")
    warning = ("searcher 'ctc_greedy' decodes with the ctc head, which heads.loss_weights.ctc: 0 "
               "leaves untrained")
    assert warning in caplog.text
    caplog.clear()  # asr transcribe --searcher, asr.load_model(searcher=): the same warning
    load_model(tmp_path / "pkg")
    assert "leaves untrained" not in caplog.text
    load_model(tmp_path / "pkg", searcher="ctc_greedy")
    assert warning in caplog.text


def test_average_of_last_epochs(exp_dir, tmp_path):
    metadata = export_package(exp_dir, tmp_path / "pkg", WeightSelection(epoch=3, avg=2))
    assert metadata.checkpoints == ("epoch-2.pt", "epoch-3.pt")
    weights = load_package(tmp_path / "pkg").state_dict
    a, b = _epoch_weights(exp_dir, 2), _epoch_weights(exp_dir, 3)
    for name, value in weights.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (a[name] + b[name]) / 2)


def test_checkpoint_selection_errors(exp_dir, tmp_path):
    with pytest.raises(PackageError, match="does not exist"):
        export_package(exp_dir, tmp_path / "b", WeightSelection(checkpoint=exp_dir / "nope.pt"))
    one = export_package(exp_dir, tmp_path / "c",
                         WeightSelection(checkpoint=exp_dir / "epoch-1.pt"))
    assert one.checkpoints == ("epoch-1.pt",)
    newest = export_package(exp_dir, tmp_path / "d")  # default: the newest step checkpoint
    assert newest.checkpoints == (max(exp_dir.glob("checkpoint-*.pt"),
                                      key=lambda p: int(p.stem.split("-")[1])).name,)
    with pytest.raises(PackageError, match="which it is made from"):
        export_package(exp_dir, exp_dir, WeightSelection(epoch=1))


def test_weights_file_holds_no_pickle(exp_dir, tmp_path):
    export_package(exp_dir, tmp_path / "pkg")
    data = (tmp_path / "pkg" / WEIGHTS_FILE).read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    json.loads(data[8: 8 + header_len])  # safetensors: a JSON header then raw tensor bytes
    assert not data.startswith((b"\x80", b"PK"))  # neither a pickle nor torch's zip format


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        (WEIGHTS_FILE, lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
        (WEIGHTS_FILE, lambda p: p.unlink()),
        (METADATA_FILE, lambda p: p.write_text("{not json")),
        (METADATA_FILE, lambda p: p.write_bytes(b"")),
        ("config.yaml", lambda p: p.write_text(p.read_text() + "\nbogus_key: 1\n")),
        ("tokenizer/tokens.txt", lambda p: p.write_text("a 0\n")),
    ],
)
def test_corrupt_package_names_the_file(exp_dir, tmp_path, name, damage):
    export_package(exp_dir, tmp_path / "pkg")
    damage(tmp_path / "pkg" / name)
    with pytest.raises(PackageError, match=name.replace(".", r"\.")):
        load_package(tmp_path / "pkg")


def test_a_config_error_names_the_package_config_once(exp_dir, tmp_path):
    export_package(exp_dir, tmp_path / "pkg")
    config = tmp_path / "pkg" / "config.yaml"
    config.write_text(config.read_text() + "\nbogus_key: 1\n")
    with pytest.raises(PackageError) as err:
        load_package(tmp_path / "pkg", verify=False)
    assert str(err.value).count(str(config)) == 1, str(err.value)


def test_unverified_load_still_reports_the_file(exp_dir, tmp_path):
    export_package(exp_dir, tmp_path / "pkg")
    path = tmp_path / "pkg" / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(PackageError, match=WEIGHTS_FILE):
        load_package(tmp_path / "pkg", verify=False)


def test_cli_export_package(exp_dir, tmp_path, capsys):
    out = tmp_path / "pkg"
    assert main(["export-package", "--exp-dir", str(exp_dir), "--output-dir", str(out),
                 "--epoch", "3", "--avg", "3", "--wer", "test=12.5"]) == 0
    assert "epoch-1.pt, epoch-2.pt, epoch-3.pt" in capsys.readouterr().out
    assert load_package(out).metadata.wer == {"test": 12.5}
    assert main(["export-package", "--exp-dir", str(exp_dir), "--out", str(out)]) == 2  # exists
    # a missing experiment directory is a bad option (exit 2), as in asr average and decode
    assert main(["export-package", "--exp-dir", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "pkg2")]) == 2


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")
def test_cli_export_package_to_an_unwritable_dir_is_a_bad_option(exp_dir, caplog):
    """It exited 1 with a PermissionError naming the lock file (sysfs refuses new entries, to
    root as well)."""
    out = Path("/sys/asr-package-test/pkg")
    assert main(["export-package", "--exp-dir", str(exp_dir), "--output-dir", str(out)]) == 2
    assert f"{out}: cannot write there: Operation not permitted ({out.parent})" in caplog.text


def test_cli_export_package_old_out_option_still_works(exp_dir, tmp_path, caplog):
    out = tmp_path / "pkg"
    assert main(["export-package", "--exp-dir", str(exp_dir), "--out", str(out)]) == 0
    assert load_package(out).metadata.searcher == "ctc_greedy"
    assert "--out is deprecated; use --output-dir" in caplog.text


def test_cli_export_package_usage_says_output_dir_is_required(exp_dir, capsys):
    """The usage line showed ``[--output-dir OUTPUT_DIR]``, optional, although a run without
    it failed: argparse now requires it (or its old name, ``--out``), and says so."""
    with pytest.raises(SystemExit):
        main(["export-package", "--help"])
    usage = " ".join(capsys.readouterr().out.split("\n\n")[0].split())
    assert "--output-dir PKG" in usage and "[--output-dir" not in usage
    with pytest.raises(SystemExit) as stop:
        main(["export-package", "--exp-dir", str(exp_dir)])
    assert stop.value.code == 2
    assert "the following arguments are required: --output-dir" in capsys.readouterr().err


def test_package_directory_follows_the_umask(exp_dir, tmp_path):
    old = os.umask(0o022)
    try:
        export_package(exp_dir, tmp_path / "pkg")
    finally:
        os.umask(old)
    assert (tmp_path / "pkg").stat().st_mode & 0o777 == 0o755



def _edit_metadata(package: Path, change) -> None:
    path = package / METADATA_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("damage", "unlisted"),
    [
        (lambda p: _edit_metadata(p, lambda m: m["sha256"].pop(WEIGHTS_FILE)), WEIGHTS_FILE),
        (lambda p: _edit_metadata(p, lambda m: m.update(sha256={})), "config.yaml"),
        # a bpe.model beside tokens.txt would make it a BPE tokenizer
        (lambda p: (p / "tokenizer" / "bpe.model").write_bytes(b"\x00" * 64),
         "tokenizer/bpe.model"),
        (lambda p: (p / "tokenizer" / "notes.txt").write_text("x"), "tokenizer/notes.txt"),
    ],
)
def test_files_that_loading_reads_must_be_listed(exp_dir, tmp_path, damage, unlisted):
    """Verification covers every file the package is read from: a file without its sha256
    (an entry removed, a file added to tokenizer/) is an error naming it, while an extra file
    that nothing reads (a README beside the package's files) is not."""
    export_package(exp_dir, tmp_path / "pkg")
    (tmp_path / "pkg" / "README.md").write_text("notes")
    load_package(tmp_path / "pkg")
    damage(tmp_path / "pkg")
    with pytest.raises(PackageError, match=f"no sha256 for .*{unlisted.replace('.', '[.]')}"):
        load_package(tmp_path / "pkg")


def test_metadata_format_and_types_are_checked_first(exp_dir, tmp_path):
    export_package(exp_dir, tmp_path / "pkg")
    _edit_metadata(tmp_path / "pkg", lambda m: m.update(format_version=2, new_field=[1]))
    with pytest.raises(PackageError, match="format_version 2 .*written by a newer asr: upgrade"):
        load_package(tmp_path / "pkg")
    _edit_metadata(tmp_path / "pkg", lambda m: (m.pop("new_field"), m.update(format_version=1,
                                                                              sha256=["x"])))
    with pytest.raises(PackageError, match="sha256 must map file names to hex digests"):
        load_package(tmp_path / "pkg")


@pytest.mark.parametrize(("field", "value", "kind"), [
    ("streaming", "no", "true or false"), ("searcher", 5, "a string"),
    ("vocab_size", "20", "an integer"), ("chunk_size", True, "an integer"),
    ("wer", [21.0], "an object of numbers"), ("wer", {"dev": "21"}, "an object of numbers"),
    ("checkpoints", "epoch-3.pt", "a list of strings"),
])
def test_a_metadata_field_of_the_wrong_type_is_an_error_naming_it(exp_dir, tmp_path, field, value,
                                                                  kind):
    """metadata.json has no sha256 of its own: a hand-edited "streaming": "no" (a true string)
    or a searcher that is no name is refused by field, not used."""
    export_package(exp_dir, tmp_path / "pkg")
    _edit_metadata(tmp_path / "pkg", lambda m: m.update({field: value}))
    with pytest.raises(PackageError, match=f"metadata.json: {field} must be {kind}, got"):
        load_package(tmp_path / "pkg")


def test_package_files_follow_the_umask(exp_dir, tmp_path):
    """safetensors creates its file 0600: the weights of a package other users can list were
    unreadable to them."""
    old = os.umask(0o022)
    try:
        export_package(exp_dir, tmp_path / "pkg")
    finally:
        os.umask(old)
    for path in (tmp_path / "pkg").rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path


def test_overwrite_replaces_only_an_earlier_package(exp_dir, tmp_path):
    """--overwrite never deletes the experiment (the output directory being it or holding it),
    a file or a directory of other files; an earlier package or an empty directory it
    replaces."""
    checkpoints = sorted(p.name for p in exp_dir.iterdir())
    for out in (exp_dir, exp_dir.parent, exp_dir.parent.parent):
        with pytest.raises(PackageError, match="which it is made from"):
            export_package(exp_dir, out, overwrite=True)
    assert sorted(p.name for p in exp_dir.iterdir()) == checkpoints
    other = tmp_path / "data"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(PackageError, match="holds no metadata.json"):
        export_package(exp_dir, other, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PackageError, match="not a directory"):
        export_package(exp_dir, tmp_path / "file", overwrite=True)
    assert (other / "keep.txt").is_file() and (tmp_path / "file").read_text() == "x"
    (tmp_path / "empty").mkdir()
    export_package(exp_dir, tmp_path / "empty", WeightSelection(epoch=1), overwrite=True)
    export_package(exp_dir, tmp_path / "empty", WeightSelection(epoch=2), overwrite=True)
    assert load_package(tmp_path / "empty").metadata.checkpoints == ("epoch-2.pt",)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_overwrite_is_advised_only_for_an_output_it_would_replace(exp_dir, tmp_path):
    """An output directory in the way said "already exists (pass --overwrite to replace it)"
    whatever it was: for the experiment itself or a directory of other files, the user who
    followed the advice was refused a second time, for a reason that held the first. Now it
    says that reason at once; an earlier package is still advised --overwrite."""
    with pytest.raises(PackageError, match="the output would replace .*which it is made from"):
        export_package(exp_dir, exp_dir)
    other = tmp_path / "data"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(PackageError, match="holds no metadata.json; --overwrite replaces only"):
        export_package(exp_dir, other)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PackageError, match="exists and is not a directory; --overwrite"):
        export_package(exp_dir, tmp_path / "file")
    export_package(exp_dir, tmp_path / "pkg")
    with pytest.raises(PackageError, match=r"pkg: already exists \(pass --overwrite to replace"):
        export_package(exp_dir, tmp_path / "pkg")


def test_hotword_file_travels_with_the_package(tmp_path):
    """Like the LM, the phrase list of search.hotwords_file is copied into the package and
    found wherever the package is moved; a missing or unspellable list fails the export."""
    exp = random_experiment(tmp_path / "work", head="transducer")
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("OPEN DOOR\nGREEN :2.5\n")
    built = tmp_path / "built" / "pkg"
    metadata = export_package(exp, built, searcher="beam",
                              search=[f"search.hotwords_file={phrases}"])
    assert "hotwords/phrases.txt" in metadata.sha256
    moved = tmp_path / "moved" / "pkg"
    built.parent.rename(moved.parent)
    phrases.unlink()
    package = load_package(moved)
    assert package.config.search.hotwords_file == moved / "hotwords" / "phrases.txt"
    with pytest.raises(PackageError, match="hotwords_file .*: no such file"):
        export_package(exp, tmp_path / "b", search=[f"search.hotwords_file={phrases}"])
    phrases.write_text("ZULU\n")  # the char tokenizer of the tiny sentences has no Z
    with pytest.raises(PackageError, match="ZULU"):
        export_package(exp, tmp_path / "c", searcher="beam",
                       search=[f"search.hotwords_file={phrases}"])


def test_one_locked_output_wrapper_checks_before_and_under_the_lock(tmp_path, monkeypatch):
    """``asr export-package`` and ``asr export-onnx`` each wrote "check, lock, check again"; one
    context manager now does: an output in the way is refused before the lock is taken, one
    another run writes is refused naming it, one published by another run between the first
    check and the lock is refused under it, and the block's own errors pass unchanged."""
    import asr.package as package_module
    from asr.fileio import output_lock
    from asr.package import locked_output_dir

    taken = []

    @contextmanager
    def spy(path, publish_first=None):
        taken.append(path)
        if publish_first is not None:  # another run publishes it meanwhile
            publish_first.mkdir()
            (publish_first / METADATA_FILE).write_text("{}")
        with output_lock(path):
            yield

    monkeypatch.setattr(package_module, "output_lock", spy)

    def locked(out, replace=False):
        return locked_output_dir(out, replace, METADATA_FILE, [tmp_path / "exp"], "--overwrite",
                                 PackageError)

    in_the_way = tmp_path / "in_the_way"
    in_the_way.mkdir()
    (in_the_way / "notes.txt").write_text("mine")
    with pytest.raises(PackageError, match="holds no metadata.json"):  # --overwrite won't do
        with locked(in_the_way):
            raise AssertionError("the block ran")
    with pytest.raises(PackageError, match="holds no metadata.json"):
        with locked(in_the_way, replace=True):
            raise AssertionError("the block ran")
    assert taken == []  # refused before the lock

    busy = tmp_path / "busy"
    with output_lock(busy):
        with pytest.raises(PackageError, match=f"{busy} is being written by another process"):
            with locked(busy):
                raise AssertionError("the block ran")
    assert not busy.exists()

    raced = tmp_path / "raced"
    monkeypatch.setattr(package_module, "output_lock", lambda p: spy(p, publish_first=raced))
    with pytest.raises(PackageError, match=f"{raced}: already exists"):
        with locked(raced):
            raise AssertionError("the block ran")
    assert taken == [busy, raced] and not (tmp_path / ".raced.lock").exists()
    monkeypatch.setattr(package_module, "output_lock", spy)

    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        with locked(out):
            assert (tmp_path / ".out.lock").is_file()  # held while the block runs
            raise ValueError("the block's own")
    assert type(err.value) is ValueError and not (tmp_path / ".out.lock").exists()


def test_a_gzip_compressed_lm_is_made_packaged_and_loaded(exp_dir, tmp_path):
    """``lm.arpa.gz`` (KenLM's and icefall's usual form) was refused as 'not UTF-8'. ``asr lm``
    writes one compressed (the same bytes each time), and the package keeps it as it is."""
    from asr import load_model
    from asr.testing.tiny import TINY_SENTENCES

    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"{text}\n" for text in TINY_SENTENCES))
    lm = tmp_path / "lm" / "token_3gram.arpa.gz"
    args = ["lm", "--transcripts", str(texts), "--tokenizer-dir", str(tmp_path / "work" /
            "tokenizer"), "--order", "3", "--output", str(lm)]
    assert main(args) == 0
    data = lm.read_bytes()
    assert data[:2] == b"\x1f\x8b"
    assert main([*args, "--overwrite"]) == 0 and lm.read_bytes() == data
    out = tmp_path / "pkg"
    assert main(["export-package", "--exp-dir", str(exp_dir), "--output-dir", str(out),
                 "--searcher", "beam", "--set", f"search.lm_path={lm}",
                 "search.lm_weight=0.5"]) == 0
    package = load_package(out)
    assert package.metadata.sha256.keys() >= {"lm/token_3gram.arpa.gz"}
    assert (out / "lm" / "token_3gram.arpa.gz").read_bytes() == data
    assert package.config.search.lm_path == out / "lm" / "token_3gram.arpa.gz"
    model = load_model(out)
    assert model.runtime.searcher == "ctc_prefix_beam"
    assert model.searcher() is not None  # builds the searcher, with the LM read


def test_export_metadata_describes_the_model_and_the_newest_dev_wer(tmp_path):
    """Each metadata field against what it describes: the encoder's chunking (left_chunks 3 is
    not chunk_size 2), the fbank rate, the parameters (not the CMVN buffers), the training
    data, and the dev WER of the last epoch that has one (an earlier epoch's WER would describe
    other weights); an explicit ``wer={}`` records none."""
    exp_dir = random_experiment(tmp_path / "work", chunk_size=2, left_chunks=3,
                                fbank={"sample_rate": 8000},
                                encoder_overrides={"input_norm": "global_cmvn"})  # 2 buffers
    checkpoint = torch.load(exp_dir / "epoch-1.pt", weights_only=True)
    checkpoint["progress"]["history"] = [{"epoch": 1, "valid_wer": 30.0},
                                         {"epoch": 2, "valid_wer": 25.5},
                                         {"epoch": 3, "valid_wer": None}, {"epoch": 4}]
    checkpoint["extra"]["config"]["data"]["train_cuts"] = ["data/a.jsonl.gz", "data/b.jsonl.gz"]
    torch.save(checkpoint, exp_dir / "checkpoint-9.pt")
    metadata = export_package(exp_dir, tmp_path / "pkg")
    package = load_package(tmp_path / "pkg")
    assert metadata == package.metadata
    assert metadata.checkpoints == ("checkpoint-9.pt",) and metadata.wer == {"dev": 25.5}
    assert (metadata.streaming, metadata.chunk_size, metadata.left_chunks) == (True, 2, 3)
    assert metadata.sample_rate == 8000 == package.config.data.fbank.sample_rate
    model = package.build_model()
    assert metadata.num_parameters == sum(p.numel() for p in model.parameters())
    assert metadata.num_parameters < sum(v.numel() for v in model.state_dict().values())
    assert metadata.vocab_size == package.tokenizer.vocab_size
    assert metadata.training_data == ("data/a.jsonl.gz", "data/b.jsonl.gz")
    assert export_package(exp_dir, tmp_path / "pkg2", wer={}).wer == {}


def test_a_package_file_changed_after_export_is_refused_by_its_sha256(exp_dir, tmp_path):
    """A weights file replaced by other valid weights loads without error: only its sha256
    tells it is not the file exported."""
    export_package(exp_dir, tmp_path / "pkg")
    path = tmp_path / "pkg" / WEIGHTS_FILE
    save_weights({k: v * 2 for k, v in load_weights(path).items()}, path)
    with pytest.raises(PackageError, match=r"model\.safetensors: sha256 mismatch"):
        load_package(tmp_path / "pkg")
    load_package(tmp_path / "pkg", verify=False)


@pytest.mark.parametrize(("change", "message"), [
    (lambda m, _: m.update(vocab_size=m["vocab_size"] + 1),
     r"vocab_size \d+ differs from the tokenizer's \d+"),
    (lambda m, _: m.update(new_field=1), r"unknown metadata keys \['new_field'\]"),
    (lambda m, digest: m["sha256"].update({"../outside.txt": digest}),
     r"file name '\.\./outside\.txt' leaves the package"),
])
def test_metadata_that_does_not_fit_the_package_is_refused(exp_dir, tmp_path, change, message):
    """metadata.json has no sha256 of its own: a hand-edited vocabulary size, an unknown field
    or a listed file outside the package (its digest right) is refused, naming it."""
    export_package(exp_dir, tmp_path / "pkg")
    (tmp_path / "outside.txt").write_text("not the package's")
    digest = sha256_of_file(tmp_path / "outside.txt")
    _edit_metadata(tmp_path / "pkg", lambda m: change(m, digest))
    with pytest.raises(PackageError, match=f"metadata.json: {message}"):
        load_package(tmp_path / "pkg")


def test_an_empty_package_file_is_named_as_truncated(exp_dir, tmp_path):
    export_package(exp_dir, tmp_path / "pkg")
    (tmp_path / "pkg" / WEIGHTS_FILE).write_bytes(b"")
    with pytest.raises(PackageError, match=r"model\.safetensors: empty package file"):
        load_package(tmp_path / "pkg", verify=False)


def test_package_weights_that_do_not_fit_the_config_are_refused(exp_dir, tmp_path):
    """A weight missing from (or extra to) the package's weights would leave a layer at its
    random initialisation: refused naming the weights file."""
    export_package(exp_dir, tmp_path / "pkg")
    package = load_package(tmp_path / "pkg")
    name = next(iter(package.state_dict))
    for state_dict in ({k: v for k, v in package.state_dict.items() if k != name},
                       {**package.state_dict, "extra.weight": torch.zeros(1)}):
        with pytest.raises(PackageError, match=r"model\.safetensors: weights do not fit"):
            dataclasses.replace(package, state_dict=state_dict).build_model()


def test_export_package_chooses_again_when_a_running_training_prunes_a_chosen_checkpoint(
        exp_dir, tmp_path, monkeypatch):
    """``asr export-package --last 2`` while training runs with ``keep_last: 2``: a new
    checkpoint is written and the oldest chosen one deleted between the listing and the
    reading. The export stopped with "does not exist"; it chooses again, as ``asr decode``
    does, and packages the newer checkpoints."""
    from asr.checkpoints import selection
    from asr.checkpoints.io import checkpoint_path, remove_old_checkpoints

    real_read, tried = selection.read_model_weights, []

    def read(path):
        if not tried:  # the training saves checkpoint-4.pt and prunes to keep_last=2
            (exp_dir / "checkpoint-4.pt").hardlink_to(exp_dir / "checkpoint-1.pt")
            remove_old_checkpoints(exp_dir, keep_last=2)
        tried.append(Path(path).name)
        return real_read(path)

    monkeypatch.setattr(selection, "read_model_weights", read)
    metadata = export_package(exp_dir, tmp_path / "pkg", WeightSelection(last=2))
    assert metadata.checkpoints == ("checkpoint-3.pt", "checkpoint-4.pt")
    assert tried == ["checkpoint-2.pt", "checkpoint-3.pt", "checkpoint-4.pt"]
    assert not checkpoint_path(exp_dir, 2).exists()


def test_a_package_a_newer_asr_wrote_is_refused_saying_to_upgrade(exp_dir, tmp_path):
    """A newer asr may write a metadata key, a config key or a default searcher that this
    one does not know, with the same format_version: the error names the file and what it does
    not know, and says that a newer asr wrote the package (it used to read as a corrupt
    package); a package of this version with the same fault is not said to be newer."""
    from asr.runtime.offline import load_model

    export_package(exp_dir, tmp_path / "pkg")
    upgrade = r"written by asr 99\.0\.0, newer than this asr [\d.]+: upgrade asr"
    _edit_metadata(tmp_path / "pkg", lambda m: m.update(asr_version="99.0.0", new_field=1))
    with pytest.raises(PackageError, match=rf"metadata\.json: unknown metadata keys "
                                           rf"\['new_field'\]; the package was {upgrade}"):
        load_package(tmp_path / "pkg")
    _edit_metadata(tmp_path / "pkg", lambda m: m.pop("new_field"))
    config = tmp_path / "pkg" / "config.yaml"
    config.write_text(config.read_text().replace("encoder:\n", "encoder:\n  new_knob: 3\n", 1))
    _edit_metadata(tmp_path / "pkg", lambda m: m["sha256"].update(
        {"config.yaml": sha256_of_file(config)}))
    with pytest.raises(PackageError, match=rf"unknown key 'encoder\.new_knob'.*; the package "
                                           rf"was {upgrade}"):
        load_package(tmp_path / "pkg")
    export_package(exp_dir, tmp_path / "pkg", overwrite=True)
    _edit_metadata(tmp_path / "pkg", lambda m: m.update(asr_version="99.0.0",
                                                         searcher="ctc_fancy_beam"))
    with pytest.raises(PackageError, match=rf"metadata\.json: searcher: unknown searcher "
                                           rf"'ctc_fancy_beam'.*; the package was {upgrade}"):
        load_model(tmp_path / "pkg")
    _edit_metadata(tmp_path / "pkg", lambda m: m.update(asr_version="0.0.1", new_field=1))
    with pytest.raises(PackageError, match=r"unknown metadata keys \['new_field'\]$"):
        load_package(tmp_path / "pkg")


def test_the_default_searcher_is_of_a_trained_head(tmp_path, caplog):
    """With ``heads.loss_weights.transducer: 0`` the package's default was still
    ``transducer_greedy`` (the main head's), a head built and never trained, only warned of:
    its transcripts are noise. The default is the first trained head's greedy searcher, as the
    dev WER of training is; a searcher named stays the user's, warned of, and a role is the
    trained head's, as ``asr decode --searcher greedy`` takes it."""
    exp = random_experiment(tmp_path / "work", head="transducer")
    checkpoint = torch.load(exp / "epoch-1.pt", weights_only=True)
    checkpoint["extra"]["config"]["heads"]["loss_weights"] = {"transducer": 0.0, "ctc": 1.0}
    torch.save(checkpoint, exp / "epoch-1.pt")
    assert export_package(exp, tmp_path / "pkg", WeightSelection(epoch=1)).searcher == "ctc_greedy"
    assert "leaves untrained" not in caplog.text
    caplog.clear()
    metadata = export_package(exp, tmp_path / "named", WeightSelection(epoch=1),
                              searcher="transducer_greedy")
    assert metadata.searcher == "transducer_greedy"
    assert ("searcher 'transducer_greedy' decodes with the transducer head, which "
            "heads.loss_weights.transducer: 0 leaves untrained") in caplog.text
    caplog.clear()
    metadata = export_package(exp, tmp_path / "role", WeightSelection(epoch=1), searcher="greedy")
    assert metadata.searcher == "ctc_greedy"
    assert "leaves untrained" not in caplog.text


@pytest.mark.parametrize("replace", [False, True])
def test_an_output_directory_that_cannot_be_listed_is_refused_naming_it(
        tmp_path, monkeypatch, replace: bool) -> None:
    """An existing --output-dir that this user may not list (another user's, mode 0711): the
    checks of what --overwrite would replace list it, and their PermissionError reached the
    command as "PermissionError: [Errno 13] ..." (exit 1; without --overwrite it had been
    "already exists" before those checks came first). It is a refusal naming the directory."""
    out = tmp_path / "pkg"
    out.mkdir()
    real_iterdir = Path.iterdir

    def iterdir(self: Path):
        if self == out:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(ValueError, match=r"pkg: exists and cannot be read \(Permission denied\); "
                                         r"choose another output directory"):
        check_output_dir(out, replace, METADATA_FILE, [tmp_path / "exp"], "--overwrite")
