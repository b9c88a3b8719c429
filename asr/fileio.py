"""Atomic file writing: the one way the package replaces a file; reading a text file as UTF-8 with
an error that names the file and line (:func:`read_text`), and into its lines (:func:`read_lines`:
broken at ``\\n`` and ``\\r\\n`` only); and the one rule for reading a file
that may be gzip-compressed (an ARPA LM, a cut manifest, a text file :func:`read_text` reads: a
transcript or LM corpus such as ``librispeech-lm-norm.txt.gz``): gzip is told by its first
bytes, :data:`GZIP_MAGIC`, whatever the file's name (:func:`open_maybe_gzip`). Where a file is
read by a library that goes by the name instead (lhotse opens ``*.gz`` with gzip and anything
else as plain text), :func:`check_gzip_name` refuses a name that says otherwise than the bytes,
naming the file, before the library's own error would (a bare decoding error naming no file); a
cut manifest that asr reads itself (an evaluation set) is held to the same rule, the message
saying so, so that one manifest serves lhotse and asr alike.
Writing chooses by the output's name: gzip for a name ending in ``.gz``.

A file is written to a temporary in the same directory, named ``.<name>.tmp-<pid>`` (the pid of
the writing process, so that :data:`TEMPORARY_PATTERN` and
:func:`asr.checkpoints.io.remove_stale_temporaries` can tell a dead writer's leftover from a
live one's), flushed to disk, given the permissions ``open()`` would give a new file under the
process's umask, and renamed over the target; the directory is then flushed where the platform
allows it. A reader sees the old file or the new one, never a part; a writer that fails (or is
interrupted) leaves the old file as it was and removes its temporary.

:func:`write_atomic` takes a writer that is given the temporary's path (for savers that write to
a path themselves: ``torch.save``, safetensors, sentencepiece, lhotse, soundfile, matplotlib);
:func:`write_bytes_atomic` and :func:`write_text_atomic` write data held in memory.

A made output that a second run on the same path could also write (a tokenizer, an LM and its
fingerprint, a Shar directory, a model package, an ONNX export, averaged weights, the result
files of a test set, a part's manifests or features, a shuffled manifest, a directory of
transcripts) is made under
:func:`output_lock`: an exclusive ``flock`` on ``.<name>.lock`` beside it, held for the whole run
and released by the kernel when the process ends however it ends. A second run is refused at
once (:class:`OutputBusyError`, naming the output) rather than made to wait: a wait would hide
a mistake (two recipe stages writing one file) and could outlast the first run by hours. An
output whose lock cannot be made (a file where a directory should be, no permission, a
read-only file system) is refused there too, before any work and having made nothing
(:class:`OutputUnwritableError`, naming the output and the system's reason): every command
reports it alike, as a bad option.
A name written as a field of a line of output (an input's ``SOURCE<TAB>TEXT``, a log line) goes
through :func:`one_line`, which writes its control characters as escapes.
A directory output is built in :func:`staging_directory`, itself locked while it is built; each
new staging directory first removes those a killed run left beside the output (``.<name>.tmp-*``
and ``.<name>.old-*`` that hold the :data:`STAGING_MARKER` naming the output and that no live
process holds locked; a user's directory merely named like one is kept).
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import json
import logging
import os
import re
import shutil
import tempfile
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import IO, Any, Literal

logger = logging.getLogger(__name__)

__all__ = [
    "GZIP_MAGIC",
    "TEMPORARY_PATTERN",
    "OutputBusyError",
    "OutputUnwritableError",
    "check_gzip_name",
    "check_writable_dir",
    "check_writable_file",
    "current_umask",
    "is_control",
    "is_gzip",
    "looked_for_here",
    "one_line",
    "open_maybe_gzip",
    "output_lock",
    "output_locks",
    "publish_directory",
    "read_lines",
    "read_text",
    "relative_path_hint",
    "remove_stale_staging",
    "STAGING_MARKER",
    "staging_directory",
    "temporary_path",
    "write_atomic",
    "write_bytes_atomic",
    "write_text_atomic",
]

#: The name of a temporary of :func:`write_atomic`; group 1 is the writer's pid. A temporary may
#: end in the target's extensions (``suffix``) for savers that choose the format by them.
TEMPORARY_PATTERN = re.compile(r"^\..+\.tmp-(\d+)((?:\.[A-Za-z0-9]+)*)$")

#: The first bytes of a gzip stream (RFC 1952): what tells a compressed file when reading.
GZIP_MAGIC = b"\x1f\x8b"

#: What ends a line of a text file: ``\n``, and ``\r\n`` as a Windows editor writes it (a lone
#: ``\r`` does not: Kaldi's readers break lines at ``\n`` alone).
_NEWLINE = re.compile(r"\r?\n")

_FILE_MODE = 0o666  # what open() asks for; the umask takes its bits away


def current_umask() -> int:
    """The process's umask: read from ``/proc/self/status`` where Linux shows it (which leaves
    the umask alone for other threads), else by setting it and setting it back."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_path(path: str | Path, suffix: str = "") -> Path:
    """The temporary :func:`write_atomic` writes ``path`` through, in the same directory.

    Args:
        path: the file to be written.
        suffix: appended to the temporary's name (e.g. ``".jsonl.gz"`` for a saver that picks
            its format by the extension); it must be dot-separated letters and digits.

    Raises:
        ValueError: when ``suffix`` is one the stale-temporary cleanup would not recognise.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    if TEMPORARY_PATTERN.match(tmp.name) is None:
        raise ValueError(f"temporary suffix {suffix!r} for {path}: expected extensions like "
                         "'.jsonl.gz'")
    return tmp


def write_atomic(
    path: str | Path, write: Callable[[Path], object], suffix: str = "", durable: bool = True
) -> Path:
    """Writes ``path`` atomically with ``write``, a saver given the temporary's path.

    Args:
        path: the file to create or replace; its directory must exist.
        write: writes the whole file to the path it is given (its return value is ignored).
        suffix: the temporary's extensions, for savers that choose the format by them (see
            :func:`temporary_path`).
        durable: flush the file and the rename to disk (about 10 ms a file here). ``False``
            keeps the rename atomic against a crashed process but not against a power loss:
            for many small files that can be made again (the synthetic corpus's audio).

    Returns:
        ``path``.

    Raises:
        Whatever ``write`` raises, after removing the temporary; ``path`` is left untouched.
    """
    path = Path(path)
    tmp = temporary_path(path, suffix)
    try:
        write(tmp)
        if durable:
            _fsync_file(tmp)
        os.chmod(tmp, _FILE_MODE & ~current_umask())  # some savers create files 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        _fsync_directory(path.parent)
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (see :func:`write_atomic`); returns ``path``."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Writes ``text`` to ``path`` atomically (see :func:`write_atomic`), encoded with
    ``encoding`` and newlines as given; returns ``path``."""
    return write_bytes_atomic(path, text.encode(encoding))


def _check_parents(path: Path, option: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a directory")
            return


def check_writable_file(path: str | Path, option: str) -> None:
    """Checks, before any work is done, that the file ``path`` (given as ``option``) can be
    written: neither it nor a directory above it is in the way.

    Raises:
        ValueError: naming the option and what is in the way.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a directory; give a file name")
    _check_parents(path, option)


def check_writable_dir(path: str | Path, option: str) -> None:
    """Checks, before any work is done, that the directory ``path`` (given as ``option``) can be
    made or written into: no file is in its place or above it.

    Raises:
        ValueError: naming the option and what is in the way.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file, not a directory")
    _check_parents(path, option)


def read_text(path: str | Path, errors: Literal["strict", "replace"] = "strict") -> str:
    """The content of the UTF-8 text file ``path`` (newlines as they are in the file),
    decompressed when it is gzip (:func:`open_maybe_gzip`: told by its first bytes, whatever
    its name, so ``corpus.txt.gz`` reads as ``corpus.txt``), without the byte order mark that
    some editors write first (it is no text: it would be part of the first word, id or key).

    Args:
        path: the file.
        errors: ``"replace"`` reads bytes that are not UTF-8 as U+FFFD (for sources of text
            where a stray byte costs a sentence, not the file), instead of refusing the file.

    Raises:
        OSError: when it cannot be read.
        ValueError: when it is not UTF-8 (unless ``errors="replace"``), naming the file, the
            line and the byte (Python's own error names neither file nor line); when its gzip
            data is corrupt or cut short, naming the file.
    """
    try:
        with open_maybe_gzip(path) as f:
            data = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({err})") from None
    try:
        text = data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at column {column}); "
            "convert it to UTF-8, e.g. iconv -f latin1 -t utf-8"
        ) from None
    return text.removeprefix("\ufeff")


def read_lines(path: str | Path, errors: Literal["strict", "replace"] = "strict") -> list[str]:
    """The lines of the text file ``path`` as :func:`read_text` reads it, without their ends:
    broken at ``\\n`` and ``\\r\\n`` only (Kaldi breaks a ``text`` file at ``\\n``; the
    ``\\r`` of a file saved by a Windows editor goes with it). A lone ``\\r`` and the other
    characters that ``str.splitlines`` (or ``open()``, for ``\\r``) breaks at (vertical tab,
    form feed, ``\\x1c``-``\\x1e``, NEL ``\\x85``, ``\\u2028``, ``\\u2029``) stay in their
    line: inside a transcript they would otherwise start a line of their own (an utterance id
    made of a word) and shift every later line number. A reader whose lines must match those
    of a library that reads with ``open()`` refuses a line holding ``\\r``
    (:func:`asr.data.librispeech.validate_librispeech_tree`).

    Args:
        path: the file.
        errors: as for :func:`read_text`.

    Raises:
        OSError, ValueError: as :func:`read_text`.
    """
    lines = _NEWLINE.split(read_text(path, errors))
    if lines[-1] == "":
        lines.pop()  # the end of the last line, or an empty file
    return lines


def is_gzip(path: str | Path) -> bool:
    """Whether the file ``path`` is gzip-compressed, told by its first bytes (:data:`GZIP_MAGIC`).

    Raises:
        OSError: when it cannot be read.
    """
    with open(path, "rb") as f:
        return f.read(len(GZIP_MAGIC)) == GZIP_MAGIC


def open_maybe_gzip(path: str | Path, mode: Literal["rb", "rt"] = "rb",
                    encoding: str | None = None) -> IO:
    """``path`` opened for reading, decompressed when it is gzip (:func:`is_gzip`: by its first
    bytes, not by its name), in ``mode`` (``"rt"``: text in ``encoding``). The caller closes it.

    Raises:
        OSError: when it cannot be opened; reading a compressed one raises what :mod:`gzip`
            raises (``gzip.BadGzipFile``, ``EOFError``, ``zlib.error``) on corrupt or cut-short
            data.
    """
    if mode not in ("rb", "rt"):
        raise ValueError(f"open_maybe_gzip reads ('rb' or 'rt'), got mode {mode!r}")
    if is_gzip(path):
        return gzip.open(path, mode, encoding=encoding)
    return open(path, mode, encoding=encoding)  # noqa: SIM115 (the caller closes it)


def check_gzip_name(path: str | Path, what: str, read_by_lhotse: bool = True) -> None:
    """Checks that the name of the file ``path`` says what its bytes are: lhotse goes by the name
    (gzip for ``*.gz``, plain text otherwise).

    The one rule for a cut manifest's name, whoever reads it: lhotse reads a training manifest
    (and noise cuts, a Shar source, a transcript manifest), so a name that belies the bytes fails
    there; asr reads an evaluation set (test and dev sets) itself, by its bytes
    (:func:`open_maybe_gzip`), and holds it to the same rule so that one file serves as either.
    The message says which of the two is the case.

    Args:
        path: an existing file.
        what: what the file is, for the message (e.g. ``"cut manifest"``).
        read_by_lhotse: whether lhotse reads ``path`` (False: asr does, by its bytes).

    Raises:
        ValueError: naming ``what`` and ``path``, whether it is compressed, why the name
            matters, and the fix.
        OSError: when it cannot be read.
    """
    path = Path(path)
    compressed, named = is_gzip(path), path.name.endswith(".gz")
    if compressed == named:
        return
    reason = ("lhotse, which reads it, goes by the name" if read_by_lhotse else
              "asr, which reads this evaluation set, goes by its bytes, but lhotse, which reads "
              "training manifests, goes by the name (one rule for every cut manifest)")
    if compressed:
        raise ValueError(f"{what} {path} is gzip-compressed but its name does not end in .gz, "
                         f"and {reason}: rename it {path.name}.gz")
    raise ValueError(f"{what} {path} is not gzip-compressed but its name ends in .gz, and "
                     f"{reason}: compress it (gzip) or drop the .gz from its name")


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object (mapping) stored in the UTF-8 file ``path``.

    Raises:
        OSError: when it cannot be read.
        ValueError: when it is not UTF-8, not JSON or not an object, naming the file.
    """
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    """Flushes a rename in ``directory`` to disk, where the platform can open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class OutputBusyError(FileExistsError):
    """Another live process is making the same output (it holds the output's lock)."""


#: The errors of making a file that say the place cannot hold it (a file in the way, no
#: permission, a read-only or full file system, a name too long), not that the system failed.
_PLACE_ERRORS = frozenset({
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR,
    errno.ENOENT, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP,
})


class OutputUnwritableError(ValueError):
    """The output cannot be written where it is asked for (its lock cannot be made there): a
    bad option, as a file in the way is to :func:`check_writable_dir`."""


def _cannot_write(path: Path, lock: Path, err: OSError) -> OutputUnwritableError:
    """The error of an output ``path`` whose ``lock`` could not be made: names the path and the
    reason (the file in the way, else the system's words and the path it refused)."""
    reason = f"{err.strerror or err} ({err.filename})" if err.filename else str(err.strerror or err)
    for parent in lock.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                reason = f"{parent} is a file, not a directory"
            break
    return OutputUnwritableError(f"{path}: cannot write there: {reason}")


def _remove_empty(directories: Iterable[Path]) -> None:
    """Removes ``directories`` (given outermost first), innermost first, while they are
    empty."""
    for directory in reversed(list(directories)):
        try:
            directory.rmdir()
        except OSError:
            break


def _try_lock(fd: int) -> bool:
    """Takes an exclusive ``flock`` on the open file or directory ``fd`` without waiting;
    whether it was free."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def output_lock(path: str | Path) -> Iterator[None]:
    """Holds the lock of the output ``path`` (a file or a directory) while the block makes it.

    The lock is an exclusive ``flock`` on ``.<name>.lock`` beside ``path``, created if needed
    and removed when the block ends (with the directories made for it, when the block made no
    output in them); the kernel releases it when the process dies, so a killed run never blocks
    a later one. Take it before deciding whether the
    output is current and hold it until the output (and its fingerprint) is written. The same
    process taking it twice is refused as well.

    Raises:
        OutputBusyError: at once, naming ``path``, while another run holds it.
        OutputUnwritableError: (a ValueError) at once, naming ``path`` and the reason, when the
            lock cannot be made there; the directories made for it are removed.
    """
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    made = [d for d in reversed(lock.parents) if not d.exists()]
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        except OSError as err:
            _remove_empty(made)
            if err.errno in _PLACE_ERRORS:
                raise _cannot_write(path, lock, err) from err
            raise
        if not _try_lock(fd):
            os.close(fd)
            raise OutputBusyError(
                f"{path} is being written by another process (it holds the lock {lock}); wait "
                "for that run to end")
        try:
            held = os.fstat(fd)
            now = os.stat(lock)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the file was removed by a run that released it: lock the new one
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still held, so no one locks a removed file
        os.close(fd)
        _remove_empty(made)  # only when empty: the block made nothing there


@contextmanager
def output_locks(paths: Iterable[str | Path]) -> Iterator[None]:
    """Holds :func:`output_lock` of every one of ``paths`` (a path given twice is locked once)
    while the block runs: all are taken before the block's first work, so a run that would
    collide with another on any of its outputs is refused before it makes one.

    Raises:
        OutputBusyError: naming the first busy path; the locks taken before it are released.
    """
    with ExitStack() as locks:
        for path in dict.fromkeys(Path(p) for p in paths):
            locks.enter_context(output_lock(path))
        yield


#: The file in each staging directory (and in each directory holding an earlier output while it
#: is replaced) that names the output it was made for: what tells it from a user's directory
#: that happens to be named like one (``.<name>.tmp-mine``), which is never removed.
STAGING_MARKER = ".asr-staging-of"


def _locked_new_directory(prefix: str, out_dir: Path) -> tuple[Path, int]:
    """A new directory ``<prefix>XXXXXXXX`` beside ``out_dir`` holding :data:`STAGING_MARKER`
    (the name of ``out_dir``, :func:`_marker_bytes`), and the descriptor of its ``flock``. A
    run killed before the marker is written leaves an empty directory that no later run
    removes; a marker that cannot be written (a full disk) takes the directory and its
    descriptor with it and raises."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=out_dir.parent))
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # new: no one else can hold it
        (path / STAGING_MARKER).write_bytes(_marker_bytes(out_dir))
    except BaseException:  # a full disk: no directory left that nothing would remove
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)
        raise
    return path, fd


def _marker_bytes(out_dir: Path) -> bytes:
    """What :data:`STAGING_MARKER` holds for ``out_dir``: its name as the file system spells it
    (``os.fsencode``: a name that is not UTF-8, such as Latin-1 ``caf\\xe9``, is its bytes),
    and a newline."""
    return os.fsencode(out_dir.name) + b"\n"


def _remove_staging(path: Path) -> None:
    """Removes the staging directory ``path`` with what it holds, its :data:`STAGING_MARKER`
    last: where some of its files cannot be removed (a busy mount, a file system error), it
    keeps the marker, so that a later run's :func:`remove_stale_staging` removes the rest
    (without it, nothing would)."""
    try:
        entries = list(os.scandir(path))
    except OSError:  # gone, or not ours to list
        return
    for entry in entries:
        if entry.name == STAGING_MARKER:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with suppress(OSError):
                os.unlink(entry.path)
    with suppress(OSError):
        if [e.name for e in os.scandir(path)] in ([], [STAGING_MARKER]):
            shutil.rmtree(path, ignore_errors=True)


def _staging_prefixes(out_dir: Path) -> tuple[str, str]:
    """The name prefixes of ``out_dir``'s staging directories and of its earlier version while
    :func:`publish_directory` replaces it."""
    return f".{out_dir.name}.tmp-", f".{out_dir.name}.old-"


def _is_staging_of(path: Path, out_dir: Path) -> bool:
    """Whether the directory ``path`` is one of ``out_dir``'s staging directories: named with a
    prefix of :func:`_staging_prefixes` and holding the :data:`STAGING_MARKER` that names
    ``out_dir``. Another output's staging directory can start with the same prefix
    (``.<name>.tmp-x.tmp-<random>`` of the output ``<name>.tmp-x``), but its marker names that
    output; a user's directory named like one has no marker."""
    if not path.name.startswith(_staging_prefixes(out_dir)):
        return False
    try:
        return (path / STAGING_MARKER).read_bytes() == _marker_bytes(out_dir)
    except OSError:  # no marker, or not a file we can read
        return False


#: The name tail :func:`tempfile.mkdtemp` gives a staging directory after its prefix.
_MKDTEMP_TAIL = re.compile(r"[a-z0-9_]{8}")


def _warn_unmarked(path: Path, out_dir: Path) -> None:
    """Logs the directory ``path``, which has no :data:`STAGING_MARKER`, when it is named
    exactly as a run names a staging directory of ``out_dir`` (a prefix of
    :func:`_staging_prefixes` and mkdtemp's 8 characters): one left by a killed run of a
    version before the marker, by a run killed before it wrote the marker, or holding an
    earlier output that could not be put back. It is kept (it may be a user's), so it is
    named at every run until someone removes it by hand."""
    for prefix in _staging_prefixes(out_dir):
        if path.name.startswith(prefix) and _MKDTEMP_TAIL.fullmatch(path.name[len(prefix):]):
            logger.warning("kept %s: named like a staging directory of %s but without its "
                           "marker %s (a killed run's, an earlier output that could not be "
                           "put back, or yours): remove it by hand if it is not yours",
                           one_line(str(path)), one_line(out_dir.name), STAGING_MARKER)
            return


def remove_stale_staging(out_dir: str | Path) -> list[Path]:
    """Removes the staging directories of ``out_dir`` (``.<name>.tmp-*`` and ``.<name>.old-*``
    holding the :data:`STAGING_MARKER` of ``out_dir``) that no live process holds locked: those
    a killed run left behind. A live run's are kept, and so is any directory without the marker
    (a user's, named like a staging directory; one named exactly as a run names them, such as
    an older asr's, is logged as a warning: :func:`_warn_unmarked`). An earlier output that a
    run killed inside :func:`publish_directory` left set aside, with no ``out_dir`` in its
    place, is renamed back first (:func:`_put_back_set_aside`; where that fails, the OSError of
    :func:`_put_back` says where it is, and no run removes it). Call it holding
    :func:`output_lock` of ``out_dir``. Returns what it removed."""
    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir():
        return []
    removed = []
    for path in sorted(out_dir.parent.iterdir()):
        if path.is_symlink() or not path.is_dir():
            continue
        if not _is_staging_of(path, out_dir):
            _warn_unmarked(path, out_dir)
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # gone meanwhile, or unreadable: not ours to remove
            continue
        try:
            if not _try_lock(fd):
                logger.info("kept %s: a live process is writing it", path)
                continue
            _put_back_set_aside(path, out_dir)
            _remove_staging(path)
            if path.exists():  # kept with its marker: the next run tries again
                logger.warning("could not remove all of %s, left by an interrupted run", path)
                continue
            removed.append(path)
            logger.warning("removed %s, left by an interrupted run", path)
        finally:
            os.close(fd)
    return removed


def _put_back_set_aside(holder: Path, out_dir: Path) -> None:
    """Renames the earlier output that a run killed between :func:`publish_directory`'s two
    renames left in the stale ``holder`` (a ``.<name>.old-*``) back to ``out_dir``, where
    ``out_dir`` is missing: the new output never reached its place, and removing the holder
    would lose both. Where the rename back fails, :func:`_put_back` keeps the earlier output
    (no later run removes it) and raises, saying where it is."""
    earlier = holder / out_dir.name
    if (not holder.name.startswith(_staging_prefixes(out_dir)[1]) or out_dir.is_symlink()
            or out_dir.exists() or not earlier.is_dir()):
        return
    _put_back(holder, out_dir, "an interrupted run had set the earlier output aside, with no "
                               "new one in its place")
    logger.warning("put back %s from %s, where an interrupted run had set it aside",
                   one_line(str(out_dir)), one_line(str(holder)))


@contextmanager
def staging_directory(out_dir: Path) -> Iterator[Path]:
    """A new empty directory to build ``out_dir`` in: ``.<name>.tmp-XXXXXXXX/<name>`` beside
    ``out_dir``, whose hidden parent holds the :data:`STAGING_MARKER` and is locked (``flock``)
    while the block runs, and is removed after it (with the build, unless
    :func:`publish_directory` moved that into place).

    The directory built in is made under the umask (mkdtemp's 0700 would hide the result from
    other users) and holds nothing but what the block writes. Stale staging directories of
    ``out_dir`` are removed first (:func:`remove_stale_staging`); the caller holds
    :func:`output_lock` of ``out_dir``.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir)
    holder, fd = _locked_new_directory(_staging_prefixes(out_dir)[0], out_dir)
    try:
        tmp = holder / out_dir.name
        tmp.mkdir()
        yield tmp
    finally:
        _remove_staging(holder)
        os.close(fd)


def publish_directory(tmp: Path, out_dir: Path) -> None:
    """Renames the finished ``tmp`` to ``out_dir``; an existing ``out_dir`` is moved aside
    first (into a locked ``.<name>.old-*``) and removed only once the new one is in place. A
    rename that fails leaves ``out_dir`` as it was and nothing beside it (where the earlier
    output cannot be renamed back either, :func:`_put_back` keeps it and says where)."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old, fd = _locked_new_directory(_staging_prefixes(out_dir)[1], out_dir)
    try:
        try:
            os.replace(out_dir, old / out_dir.name)
        except OSError:  # the earlier output stays where it is; its holder goes
            shutil.rmtree(old, ignore_errors=True)
            raise
        try:
            os.replace(tmp, out_dir)
        except OSError as err:
            _put_back(old, out_dir, f"the new output could not be renamed into place "
                                    f"({err.strerror})")
            shutil.rmtree(old, ignore_errors=True)
            raise
        _remove_staging(old)  # the earlier output
    finally:
        os.close(fd)


def _put_back(holder: Path, out_dir: Path, why: str) -> None:
    """Renames the earlier output from its ``holder`` (a ``.<name>.old-*``) back to ``out_dir``;
    ``why`` says why it must go back. The one rule for an earlier output that cannot be put
    back, after a failed publish (:func:`publish_directory`) or at the next run
    (:func:`_put_back_set_aside`): nothing is lost, as the holder loses its
    :data:`STAGING_MARKER` (no later run removes it; each names it in a warning,
    :func:`_warn_unmarked`), and the OSError raised says where the earlier output is."""
    try:
        os.replace(holder / out_dir.name, out_dir)
    except OSError as back:
        try:
            (holder / STAGING_MARKER).unlink(missing_ok=True)
        except OSError:  # the error below still says where the earlier output is
            pass
        raise OSError(back.errno, f"{out_dir}: {why}, and renaming the earlier one back failed "
                      f"({back.strerror}): it is {holder / out_dir.name}; move it back by "
                      "hand") from back


_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def is_control(ch: str) -> bool:
    """Whether the character ``ch`` is a control character (tab, newline, escape, ...) or a line
    or paragraph separator: what breaks a line, or a field of a tab-separated line."""
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp")


def looked_for_here(path: str | Path) -> bool:
    """Whether a ``path`` that was not found calls for the relative-path advice: it is
    relative, read from the current directory, and names no directory here (a directory here
    is the right one: what is missing is inside it; a file here cannot hold it). The one test
    of :func:`relative_path_hint` and :func:`asr.experiment.relative_path_advice`."""
    return not Path(path).is_absolute() and not Path(path).is_dir()


def relative_path_hint(path: str | Path, source: str, relative_to: str) -> str:
    """The one rule for the error of a path that is not found: for a relative ``path`` not
    found here, where it was looked for (the current directory) and what to do; the caller
    appends it to its own "... does not exist".

    Args:
        path: the path as it was given (a config field's value, a manifest's file).
        source: where it was given, e.g. ``"in data.manifest_dir"``, ``"in the manifest"``.
        relative_to: the directory to run from instead (and any other way out).

    Returns:
        ``" in the working directory CWD (a relative path SOURCE: run from RELATIVE_TO)"``;
        ``""`` for an absolute ``path`` or a directory that is there (what is missing is
        inside it; a file there cannot hold it, and gets the hint).
    """
    if not looked_for_here(path):
        return ""
    return (f" in the working directory {Path.cwd()} (a relative path {source}: run from "
            f"{relative_to})")


def one_line(text: str) -> str:
    """``text`` with each character of :func:`is_control` written as an escape (``\\t``,
    ``\\n``, ``\\r``, ``\\x1b``, ``\\u2028``): a name as one field of a line of output
    (``SOURCE<TAB>TEXT``) or of a log line."""
    return "".join(
        (_ESCAPES.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}"))
        if is_control(ch) else ch
        for ch in text
    )
