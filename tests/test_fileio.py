"""Atomic file writing: a failed or killed writer leaves the old file and no temporary (or one the
stale-temporary cleanup removes), the new file's permissions follow the umask, and every saver of
the package goes through the one helper."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asr.checkpoints.io import (
    CheckpointError,
    atomic_torch_save,
    remove_stale_temporaries,
    save_weights,
)
from asr.config import save_config
from asr.data.librispeech import write_shuffled_cuts
from asr.decoding.lm import EOS
from asr.decoding.ngram_train import NgramEstimate, write_arpa
from asr.fileio import (
    STAGING_MARKER,
    TEMPORARY_PATTERN,
    OutputBusyError,
    OutputUnwritableError,
    _locked_new_directory,
    current_umask,
    output_lock,
    publish_directory,
    read_json_object,
    read_lines,
    read_text,
    remove_stale_staging,
    staging_directory,
    temporary_path,
    write_atomic,
    write_bytes_atomic,
    write_text_atomic,
)
from asr.metrics.wer import compute_wer, write_error_report, write_recognitions
from asr.synth.corpus_state import MANIFEST_NAME, load_manifest
from asr.tokenizers.base import write_tokens_file
from asr.train.plot import plot_history
from asr.train.state import EpochRecord

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _half_then_fail(tmp: Path) -> None:
    tmp.write_bytes(b"half a fi")
    raise OSError("disk full")


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path, error):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"half a fi")
        raise error

    with pytest.raises(type(error)):
        write_atomic(target, writer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]
    assert target.read_bytes() == b"old"


def test_a_written_file_replaces_the_old_one(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    assert write_text_atomic(target, "new ü\n") == target
    assert target.read_bytes() == "new ü\n".encode()
    write_bytes_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_permissions_follow_the_umask_whatever_mode_the_saver_used(tmp_path, umask_027):
    assert current_umask() == 0o027

    def private_saver(tmp: Path) -> None:  # as safetensors: a 0600 file
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"weights")
        os.close(fd)

    old = tmp_path / "old.bin"
    old.write_bytes(b"old")
    old.chmod(0o600)
    write_atomic(old, private_saver)
    write_text_atomic(tmp_path / "new.txt", "text")
    for name in ("old.bin", "new.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


def test_current_umask_leaves_the_umask_as_it_was(umask_027):
    assert current_umask() == 0o027
    assert os.umask(0o027) == 0o027


def test_temporaries_are_in_the_same_directory_and_named_for_the_cleanup(tmp_path):
    seen = []
    write_atomic(tmp_path / "cuts.jsonl.gz", lambda tmp: (seen.append(tmp), tmp.write_text("x")),
                 suffix=".jsonl.gz")
    write_atomic(tmp_path / "config.yaml", lambda tmp: (seen.append(tmp), tmp.write_text("x")))
    for tmp in seen:
        assert tmp.parent == tmp_path
        match = TEMPORARY_PATTERN.match(tmp.name)
        assert match is not None and int(match.group(1)) == os.getpid(), tmp.name
    assert seen[0].name.endswith(".jsonl.gz")  # lhotse picks the format from the extension
    with pytest.raises(ValueError, match="temporary suffix"):
        temporary_path(tmp_path / "a", suffix="jsonl")


_KILLED_WRITER = """
import os, sys
from asr.fileio import write_atomic
def writer(tmp):
    with open(tmp, "wb") as f:
        f.write(b"half a checkpo")
        f.flush()
    os._exit(9)  # killed mid-write: no clean-up runs
write_atomic(sys.argv[1], writer, suffix=sys.argv[2])
"""


@pytest.mark.parametrize("suffix", ["", ".jsonl.gz"])
def test_the_stale_temporary_cleanup_removes_a_killed_writers_temporary(tmp_path, suffix):
    target = tmp_path / f"config{suffix or '.yaml'}"
    target.write_bytes(b"old")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target), suffix], env=env)
    assert result.returncode == 9
    left = [p for p in tmp_path.iterdir() if p != target]
    assert len(left) == 1 and TEMPORARY_PATTERN.match(left[0].name), left
    live = temporary_path(tmp_path / "other.pt")  # this process's: a live writer's
    live.write_bytes(b"in progress")
    assert remove_stale_temporaries(tmp_path) == left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name])
    assert target.read_bytes() == b"old"


@dataclasses.dataclass
class _Config:
    name: str = "x"


def _savers(directory: Path) -> dict[str, tuple[Path, object]]:
    """Each saver of the package that replaces a file: (the file, a call writing it)."""
    manifest = directory / "in.jsonl"
    manifest.write_text('{"id": "a"}\n{"id": "b"}\n')
    estimate = NgramEstimate(1, ({(3,): -1.0, (EOS,): -1.0},), {}, ())
    return {
        "save_config": (directory / "config.yaml",
                        lambda p: save_config(_Config(), p)),
        "write_arpa": (directory / "lm.arpa", lambda p: write_arpa(estimate, p)),
        "atomic_torch_save": (directory / "c.pt", lambda p: atomic_torch_save({"a": 1}, p)),
        "save_weights": (directory / "w.safetensors",
                         lambda p: save_weights({"w": torch.zeros(2)}, p)),
        "write_shuffled_cuts": (directory / "cuts.jsonl.gz",
                                lambda p: write_shuffled_cuts([manifest], p)),
        "plot_history": (directory / "training.png",
                         lambda p: plot_history([EpochRecord(1, 2.0, 1.5), EpochRecord(2, 1.0)],
                                                p)),
        "write_tokens_file": (directory / "tokens.txt",
                              lambda p: write_tokens_file(p, ["<blk>", "A", "B"])),
        "write_error_report": (directory / "errs.txt",
                               lambda p: write_error_report(p, compute_wer(["A B"], ["A C"]))),
        "write_recognitions": (directory / "recogs.txt",
                               lambda p: write_recognitions(p, compute_wer(["A B"], ["A C"]))),
    }


@pytest.mark.parametrize("name", ["save_config", "write_arpa", "atomic_torch_save",
                                  "save_weights", "write_shuffled_cuts", "plot_history",
                                  "write_tokens_file", "write_error_report",
                                  "write_recognitions"])
def test_every_saver_is_atomic_and_follows_the_umask(tmp_path, monkeypatch, name, umask_027):
    """A rename that fails leaves the old file and no temporary; a written file has the
    umask's permissions."""
    path, save = _savers(tmp_path)[name]
    before = sorted(p.name for p in tmp_path.iterdir())
    path.write_bytes(b"old")

    def fail(src, dst):
        raise OSError("rename refused")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", fail)
        # atomic_torch_save names the file around the error (CheckpointError)
        with pytest.raises((OSError, CheckpointError), match="rename refused"):
            save(path)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + [path.name])
    save(path)
    assert path.read_bytes() != b"old"
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + [path.name])


@pytest.mark.parametrize("durable, expected", [(True, 2), (False, 0)])
def test_only_durable_writes_flush_to_disk(tmp_path, monkeypatch, durable, expected):
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    write_atomic(tmp_path / "a.bin", lambda tmp: tmp.write_bytes(b"new"), durable=durable)
    assert (tmp_path / "a.bin").read_bytes() == b"new"
    assert len(calls) == expected  # the file, then its directory
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_a_durable_write_flushes_the_temporary_before_the_rename_and_the_directory_after(
        tmp_path, monkeypatch):
    """The data reaches the disk before the name points at it (a power loss after the rename
    must not leave an empty checkpoint-N.pt), and the rename itself is flushed with its
    directory."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        events.append(("fsync", "directory" if stat.S_ISDIR(info.st_mode) else info.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_atomic(tmp_path / "a.bin", lambda tmp: tmp.write_bytes(b"new"))
    inode = (tmp_path / "a.bin").stat().st_ino
    assert events == [("fsync", inode), ("replace", inode), ("fsync", "directory")]


def test_the_output_lock_is_exclusive_and_leaves_nothing(tmp_path):
    """One lock per output, refused (not waited for) while held, even by the same process; the
    lock file and the directories made for it go when it is released without an output."""
    out = tmp_path / "a" / "b" / "lm.arpa"
    with output_lock(out):
        assert (tmp_path / "a" / "b" / ".lm.arpa.lock").is_file()
        with pytest.raises(OutputBusyError, match=f"{out} is being written by another process"):
            with output_lock(out):
                pass
        with output_lock(tmp_path / "a" / "b" / "other.arpa"):  # another output: free
            pass
    assert not (tmp_path / "a").exists()
    with output_lock(out):
        out.write_text("made\n")
    assert sorted(p.name for p in out.parent.iterdir()) == ["lm.arpa"]


def _left_by_a_killed_run(out_dir: Path, kind: str) -> Path:
    """A staging directory of ``out_dir`` (``kind``: ``tmp``, a build; ``old``, an earlier
    output being replaced) as a killed run leaves it: made as a run makes it, with something
    in it, its lock released as by the end of the process."""
    path, fd = _locked_new_directory(f".{out_dir.name}.{kind}-", out_dir)
    (path / out_dir.name).mkdir()
    (path / out_dir.name / "half.bin").write_bytes(b"half an output")
    os.close(fd)
    return path


def test_an_earlier_output_set_aside_by_a_run_killed_while_publishing_is_put_back(tmp_path,
                                                                                  caplog):
    """A run killed between publish_directory's two renames left the earlier ``out`` set aside
    in its ``.out.old-*`` holder and the new build in its ``.out.tmp-*``, and no ``out``: the
    next run removed both stale directories, and with them the only copy of the earlier
    output. It is renamed back; where ``out`` is in place (killed after the second rename),
    the set-aside copy is the superseded one and goes."""
    out = tmp_path / "out"
    holders = [_left_by_a_killed_run(out, kind) for kind in ("tmp", "old")]
    with caplog.at_level(logging.WARNING, logger="asr.fileio"):
        assert sorted(remove_stale_staging(out)) == sorted(holders)
    assert (out / "half.bin").read_bytes() == b"half an output"
    assert f"put back {out} from {holders[1]}" in caplog.text
    # killed after the new output was in place: the set-aside earlier one is removed
    (out / "half.bin").write_bytes(b"the new output")
    superseded = _left_by_a_killed_run(out, "old")
    assert remove_stale_staging(out) == [superseded]
    assert (out / "half.bin").read_bytes() == b"the new output"


def test_stale_staging_of_another_output_named_like_a_staging_directory_is_kept(tmp_path):
    """The outputs ``out`` and ``out.tmp-x`` side by side: ``out``'s run took the staging
    directories of ``out.tmp-x`` (``.out.tmp-x.tmp-*``, ``.out.tmp-x.old-*``) for its own and
    removed them (their names start ``.out.tmp-``), and could so remove one of a live run in
    the moment between its creation and its lock."""
    own = [_left_by_a_killed_run(tmp_path / "out", kind) for kind in ("tmp", "old")]
    other = [_left_by_a_killed_run(tmp_path / "out.tmp-x", kind) for kind in ("tmp", "old")]
    assert sorted(remove_stale_staging(tmp_path / "out")) == sorted(own)
    assert all(path.is_dir() for path in other)
    assert sorted(remove_stale_staging(tmp_path / "out.tmp-x")) == sorted(other)


def test_a_users_directory_named_like_a_staging_directory_is_never_removed(tmp_path):
    """A directory the user named ``.out.tmp-mine`` (or ``.out.old-mine``) beside the output
    ``out`` looked like a staging directory a killed run had left, and the next run that wrote
    ``out`` removed it with its files. Staging directories are told by the marker file a run
    writes in them when it makes them; a directory without one is the user's."""
    mine = [tmp_path / ".out.tmp-mine", tmp_path / ".out.old-mine"]
    for path in mine:
        path.mkdir()
        (path / "notes.txt").write_text("mine\n")
    stale = _left_by_a_killed_run(tmp_path / "out", "tmp")
    assert remove_stale_staging(tmp_path / "out") == [stale]
    with staging_directory(tmp_path / "out") as built:
        (built / "made.txt").write_text("made\n")
        publish_directory(built, tmp_path / "out")
    assert all((path / "notes.txt").read_text() == "mine\n" for path in mine)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old-mine", ".out.tmp-mine", "out"]


def test_an_unmarked_directory_named_as_a_run_names_staging_is_kept_and_named(tmp_path,
                                                                              caplog):
    """A staging directory that a killed run of an asr before the marker left has none, so no
    run removes it, and nothing said so: it held its half output unseen. Each run now names
    such a directory (exactly a run's name: prefix and mkdtemp's 8 characters) in a warning,
    and keeps it: it may be a user's. A user's other names are not warned about."""
    out = tmp_path / "out"
    old = [tmp_path / ".out.tmp-k2x_9q7a", tmp_path / ".out.old-0abcdefg"]
    mine = [tmp_path / ".out.tmp-mine", tmp_path / ".out.tmp-abcdefghi"]
    for path in old + mine:
        path.mkdir()
        (path / "half.bin").write_bytes(b"half an output")
    with caplog.at_level(logging.WARNING, logger="asr.fileio"):
        assert remove_stale_staging(out) == []
    assert all((path / "half.bin").is_file() for path in old + mine)
    assert [r.getMessage() for r in caplog.records] == [
        f"kept {path}: named like a staging directory of out but without its marker "
        f"{STAGING_MARKER} (a killed run's, an earlier output that could not be put back, or "
        "yours): remove it by hand if it is not yours" for path in sorted(old)]


def test_a_staging_directory_holds_only_what_is_built_in_it(tmp_path):
    """The marker lives beside the directory built in, not in it: a builder that lists its
    directory (``asr export-onnx`` records its files) sees only its own, and so does the
    published output, new or replacing an earlier one."""
    out = tmp_path / "out"
    for text in ("first\n", "second\n"):
        with staging_directory(out) as built:
            assert list(built.iterdir()) == [] and built.name == "out"
            (built / "made.txt").write_text(text)
            publish_directory(built, out)
        assert [p.name for p in out.iterdir()] == ["made.txt"]
        assert (out / "made.txt").read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_output_whose_name_is_not_utf8_is_staged_published_and_cleaned(tmp_path):
    """A name the file system holds as bytes that are not UTF-8 (Latin-1 ``caf\\xe9``): the
    marker was written as UTF-8 text, which such a name cannot be, so every staged output
    (an export, a Shar directory, a synthesized part) failed with a UnicodeEncodeError and left
    a staging directory without a marker, which no later run removes."""
    out = tmp_path / os.fsdecode(b"caf\xe9")
    for text in ("first\n", "second\n"):
        with staging_directory(out) as built:
            (built / "made.txt").write_text(text)
            publish_directory(built, out)
        assert (out / "made.txt").read_text() == text
    stale = _left_by_a_killed_run(out, "tmp")
    assert remove_stale_staging(out) == [stale]
    assert list(tmp_path.iterdir()) == [out]


def test_a_staging_directory_whose_marker_cannot_be_written_is_not_left(tmp_path, monkeypatch):
    """A full disk as the marker is written: the staging directory (which, without its marker,
    no later run removes) and its locked descriptor were left behind; they go, the error
    stands."""
    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    fds = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError, match="No space left"):
        with staging_directory(tmp_path / "out"):
            pass
    assert list(tmp_path.iterdir()) == [] and len(os.listdir("/proc/self/fd")) == fds


def test_a_publish_whose_renames_fail_leaves_the_output_as_it_was(tmp_path, monkeypatch):
    """Renaming the earlier output aside, or the new one into place, fails (a file system that
    refuses the rename): the earlier output stays, the error stands, and the directory the
    earlier output was to be moved into is not left beside it (it was, when the first rename
    failed)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "made.txt").write_text("earlier\n")
    rename = os.replace
    for failing in (0, 1):  # the move aside; the move into place
        calls = []

        def refused(src, dst, failing=failing, calls=calls):
            calls.append(src)
            if len(calls) == failing + 1:
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src))
            return rename(src, dst)

        with staging_directory(out) as built:
            (built / "made.txt").write_text("new\n")
            monkeypatch.setattr(os, "replace", refused)
            with pytest.raises(OSError, match="cross-device"):
                publish_directory(built, out)
            monkeypatch.setattr(os, "replace", rename)
        assert [p.name for p in tmp_path.iterdir()] == ["out"], failing
        assert (out / "made.txt").read_text() == "earlier\n"


def test_an_earlier_output_that_cannot_be_put_back_is_kept_and_named(tmp_path, monkeypatch):
    """The new output's rename fails and so does the rename of the earlier one back: it stayed
    in its ``.out.old-*`` holder with the marker, and the next run that wrote ``out`` removed
    it as a killed run's leftover. The holder now loses its marker and the error says where
    the earlier output is."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "made.txt").write_text("earlier\n")
    rename = os.replace

    def refused(src, dst):
        if Path(src).name == "out" and Path(src).parent.name.startswith(".out.old-"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))
        if Path(dst) == out and Path(src).parent.name.startswith(".out.tmp-"):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src))
        return rename(src, dst)

    with staging_directory(out) as built:
        monkeypatch.setattr(os, "replace", refused)
        with pytest.raises(OSError, match="renamed into place .*, and renaming the earlier one "
                                          "back failed") as failed:
            publish_directory(built, out)
        monkeypatch.setattr(os, "replace", rename)
    [holder] = tmp_path.iterdir()
    assert f"it is {holder / 'out'};" in str(failed.value)
    assert remove_stale_staging(out) == []
    assert (holder / "out" / "made.txt").read_text() == "earlier\n"


def test_a_set_aside_output_that_cannot_be_put_back_is_kept_and_named(tmp_path,
                                                                      monkeypatch):
    """A run killed while publishing left the earlier ``out`` set aside, and the next run's
    rename back failed: it warned and kept the holder with its marker, went on to publish its
    own ``out``, and the run after removed the holder, the earlier output in it, as a killed
    run's leftover. One rule with a failed publish now: the holder loses its marker (kept and
    named at every run) and the error says where the earlier output is."""
    out = tmp_path / "out"
    holder = _left_by_a_killed_run(out, "old")
    rename = os.replace

    def refused(src, dst):
        if Path(src) == holder / "out":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))
        return rename(src, dst)

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(OSError, match="set the earlier output aside") as failed:
        remove_stale_staging(out)
    monkeypatch.setattr(os, "replace", rename)
    assert f"it is {holder / 'out'}; move it back by hand" in str(failed.value)
    assert not (holder / STAGING_MARKER).exists()
    with staging_directory(out) as built:
        (built / "made.txt").write_text("new\n")
        publish_directory(built, out)
    assert remove_stale_staging(out) == []
    assert (holder / "out" / "half.bin").read_bytes() == b"half an output"


def test_a_staging_directory_that_cannot_be_removed_whole_keeps_its_marker(tmp_path,
                                                                           monkeypatch):
    """A file of the build that cannot be removed as the staging directory goes: the rest
    was removed, the marker with it, and the directory left without one, which no later run
    removes. The marker goes last, so the next run removes what is left."""
    out = tmp_path / "out"
    unlink = os.unlink

    def stuck(path, *args, **kwargs):
        if os.path.basename(path) == "stuck.bin":
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        return unlink(path, *args, **kwargs)

    with staging_directory(out) as built:
        (built / "stuck.bin").write_bytes(b"busy")
        monkeypatch.setattr(os, "unlink", stuck)
    monkeypatch.setattr(os, "unlink", unlink)
    [left] = tmp_path.iterdir()
    assert (left / STAGING_MARKER).is_file()
    assert remove_stale_staging(out) == [left] and list(tmp_path.iterdir()) == []


def test_a_live_runs_staging_directory_is_kept(tmp_path):
    """A staging directory whose run still holds its lock is being built: kept."""
    path, fd = _locked_new_directory(".out.tmp-", tmp_path / "out")
    try:
        assert remove_stale_staging(tmp_path / "out") == []
        assert (path / STAGING_MARKER).read_text() == "out\n"
    finally:
        os.close(fd)
    assert remove_stale_staging(tmp_path / "out") == [path]


def test_an_output_whose_lock_cannot_be_made_is_refused_naming_it_and_the_reason(
        tmp_path, monkeypatch):
    """The lock's own OSError (FileExistsError, PermissionError...) went to each command, which
    mapped it to exit 2 or let it out as a failure (exit 1); it is one error here, a ValueError
    naming the output and the reason, and the directories made for the lock are removed."""
    (tmp_path / "file").write_text("in the way\n")
    out = tmp_path / "file" / "sub" / "lm.arpa"
    with pytest.raises(OutputUnwritableError, match=rf"^{out}: cannot write there: "
                       rf"{tmp_path / 'file'} is a file, not a directory$"):
        with output_lock(out):
            pytest.fail("the block ran")
    busy = tmp_path / "busy.arpa"
    (tmp_path / ".busy.arpa.lock").mkdir()  # no file can be the lock
    with pytest.raises(ValueError, match=rf"^{busy}: cannot write there: Is a directory "
                       rf"\({tmp_path / '.busy.arpa.lock'}\)$"):
        with output_lock(busy):
            pass
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    deep = tmp_path / "new" / "dirs" / "out.safetensors"
    with pytest.raises(OutputUnwritableError, match=rf"^{deep}: cannot write there: "
                       "Permission denied"):
        with output_lock(deep):
            pass
    assert not (tmp_path / "new").exists()  # nothing half-made


@pytest.mark.parametrize("content, message", [
    (b'{"a": 1', "corrupt JSON"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"a": "\xe9"}', "not UTF-8 text"),
])
def test_a_json_file_that_is_no_object_is_an_error_naming_it(tmp_path, content, message):
    path = tmp_path / "metadata.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        read_json_object(path)
    assert str(path) in str(err.value)
    path.write_text('{"a": [1]}', encoding="utf-8")
    assert read_json_object(path) == {"a": [1]}


def test_a_corrupt_synthesis_manifest_is_an_error_naming_it(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("[]", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{MANIFEST_NAME}: expected a JSON object"):
        load_manifest(tmp_path)


def test_reading_tells_gzip_by_its_first_bytes_whatever_the_name(tmp_path):
    """One rule for every file the package reads that may be compressed (an ARPA LM, a cut
    manifest): the bytes decide, not the name; a reader that goes by the name (lhotse) is
    guarded by a check naming the file."""
    import gzip

    from asr.fileio import check_gzip_name, is_gzip, open_maybe_gzip

    files = {"gz.txt": gzip.compress(b"text\n"), "plain.txt.gz": b"text\n",
             "gz.txt.gz": gzip.compress(b"text\n"), "plain.txt": b"text\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with open_maybe_gzip(tmp_path / name) as f:
            assert f.read() == b"text\n", name
        with open_maybe_gzip(tmp_path / name, "rt", encoding="utf-8") as f:
            assert f.read() == "text\n", name
        assert is_gzip(tmp_path / name) == (name.startswith("gz"))
    check_gzip_name(tmp_path / "gz.txt.gz", "list")
    check_gzip_name(tmp_path / "plain.txt", "list")
    with pytest.raises(ValueError, match=rf"list {tmp_path / 'gz.txt'} is gzip-compressed but "
                                         r"its name does not end in .gz.*rename it gz.txt.gz"):
        check_gzip_name(tmp_path / "gz.txt", "list")
    with pytest.raises(ValueError, match=rf"list {tmp_path / 'plain.txt.gz'} is not "
                                         "gzip-compressed but its name ends in .gz"):
        check_gzip_name(tmp_path / "plain.txt.gz", "list")


@pytest.mark.parametrize(("data", "lines"), [
    (b"", []), (b"\n", [""]), (b"a", ["a"]), (b"a\r\nb\rc\n\nd", ["a", "b\rc", "", "d"]),
    (b"a\r\r\nb\r", ["a\r", "b\r"]),
    ("a\x0bb\x0cc\x1cd\x1de\x1ef\x85g\u2028h\u2029i\n".encode(),
     ["a\x0bb\x0cc\x1cd\x1de\x1ef\x85g\u2028h\u2029i"]),
])
def test_read_lines_breaks_at_newlines_only(tmp_path, data, lines):
    """Lines end at LF and CRLF (a Windows editor's); a lone CR (which open() breaks at,
    Kaldi not) and the other breaks of str.splitlines are characters of the line."""
    path = tmp_path / "lines.txt"
    path.write_bytes(data)
    assert read_lines(path) == lines


@pytest.mark.parametrize("name", ["corpus.txt.gz", "corpus.txt"])
def test_read_text_reads_gzip_by_its_first_bytes(tmp_path, name):
    """A text corpus that ships compressed (``librispeech-lm-norm.txt.gz``) was refused as
    'not UTF-8 text': the text is read as the plain file's, whatever the name, and a byte that
    is not UTF-8 is still named by file and line."""
    import gzip

    text = "ONE LINE\r\nÉTÉ TWO\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    assert read_text(path) == text
    path.write_bytes(gzip.compress(b"fine\nbad \xe9\n"))
    with pytest.raises(ValueError, match=rf"{name}:2: not UTF-8 text \(byte 0xe9 at column 5\)"):
        read_text(path)
    path.write_bytes(gzip.compress(text.encode("utf-8"))[:-9])  # cut short
    with pytest.raises(ValueError, match=rf"{name}: corrupt or truncated gzip data"):
        read_text(path)


@pytest.mark.parametrize("compress", [False, True])
def test_a_byte_order_mark_is_no_text_in_any_text_file_read(tmp_path, compress):
    """Some editors write a UTF-8 byte order mark first. It was dropped from the scoring
    files only (``asr wer``), so a transcript corpus taught the tokenizer a first word
    ``\ufeffHELLO`` and a JSON file was refused as corrupt: every text file read drops it."""
    import gzip

    from asr.tokenizers.transcripts import read_transcripts

    def write(name: str, text: str) -> Path:
        data = ("\ufeff" + text).encode("utf-8")
        path = tmp_path / name
        path.write_bytes(gzip.compress(data) if compress else data)
        return path

    assert read_text(write("a.txt", "HELLO WORLD\n")) == "HELLO WORLD\n"
    assert read_transcripts([write("corpus.txt", "HELLO WORLD\nAGAIN\n")]) == [
        "HELLO WORLD", "AGAIN"]
    assert read_json_object(write("meta.json", '{"a": 1}')) == {"a": 1}
    # only a first one: a mark inside the text is the text's
    assert read_text(write("b.txt", "A\ufeffB")) == "A\ufeffB"


def test_one_line_escapes_what_breaks_a_line_or_field():
    """A name holding a tab or newline, written as a field of a tab-separated line, broke the
    line's fields; each control character is now an escape, and nothing else changes."""
    from asr.fileio import is_control, one_line

    assert one_line("a\tb\nc\rd\x1be\u2028f") == "a\\tb\\nc\\rd\\x1be\\u2028f"
    assert one_line("C:\\dir\\Straße é.wav") == "C:\\dir\\Straße é.wav"
    assert is_control("\x00") and not is_control(" ") and not is_control("\u00a0")
