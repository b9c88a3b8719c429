"""Fingerprints of made outputs: what a BPE model, an n-gram LM, a Shar directory or a part's
stored fbank features were made from.

A maker (``asr bpe``, ``asr lm``, ``asr shar``, ``asr prepare fbank``: the size and modification
time of each audio file, :mod:`asr.data.fbank`) describes what it makes an output from as a
JSON-ready mapping: digests of its inputs' content (for data files too large to read on every
rerun, their size and modification time: :func:`file_states`) and every option that changes
the output.
:func:`write_fingerprint` keeps that mapping beside the output, in ``<output>.fingerprint.json``,
and a rerun asks :func:`is_current` whether the output may be reused: only while the stored
fingerprint equals the one the rerun would write. Otherwise the output is made again, with a
warning that names the entries that changed.

Output and fingerprint stay consistent across kills: :func:`is_current` removes a fingerprint
that no longer fits before the output is made again, and the new one is written (atomically)
only after the output is complete. An output without its fingerprint, left by a kill or by an
older version, is therefore made again (except a part's stored features, which adopt the
current states of their audio files while their cuts match the input: :mod:`asr.data.fbank`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from asr.fileio import write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["FINGERPRINT_SUFFIX", "file_states", "fingerprint_path", "is_current",
           "read_fingerprint", "sha256_of_file", "sha256_of_files", "sha256_of_texts",
           "write_fingerprint"]

FINGERPRINT_SUFFIX = ".fingerprint.json"


def fingerprint_path(output: str | Path) -> Path:
    """``data/lang_bpe_500/bpe.model`` -> ``data/lang_bpe_500/bpe.model.fingerprint.json`` (a
    directory's fingerprint lies beside it too)."""
    output = Path(output)
    return output.with_name(output.name + FINGERPRINT_SUFFIX)


def sha256_of_texts(texts: Iterable[str]) -> str:
    """The sha256 of ``texts`` in order: the identity of a training text.

    Each text is framed so that no two sequences of texts share their bytes: a text without a
    newline is its UTF-8 bytes and ``\\n`` (one line, as digests stored before this framing
    were made: every text of ``asr bpe`` and ``asr lm`` has its whitespace normalised, so their
    fingerprints stay current); a text holding ``\\n`` is the byte ``0xff`` (which UTF-8 never
    writes, so no line starts with it), its length in bytes in decimal, ``:``, its bytes and
    ``\\n``. ``["a\\nb"]`` and ``["a", "b"]`` therefore differ.
    """
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        if b"\n" in data:
            digest.update(b"\xff%d:" % len(data))
        digest.update(data)
        digest.update(b"\n")
    return digest.hexdigest()


def sha256_of_file(path: str | Path) -> str:
    """The sha256 hex digest of the bytes of ``path``, read in 1 MiB blocks (model weights
    and LMs need not fit in memory twice)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of_files(paths: Iterable[str | Path]) -> dict[str, str]:
    """File name -> sha256 of its bytes, for each of ``paths`` that exists.

    Raises:
        ValueError: when two paths share a name (the mapping would hide one).
    """
    digests: dict[str, str] = {}
    for raw in paths:
        path = Path(raw)
        if path.name in digests:
            raise ValueError(f"sha256_of_files: two files named {path.name!r}")
        if path.is_file():
            digests[path.name] = sha256_of_file(path)
    return digests


def file_states(paths: Iterable[str]) -> dict[str, list[int] | None]:
    """Path -> ``[size in bytes, modification time in ns]`` of each of ``paths`` (``None`` for
    one that cannot be stat'ed): what says that a data file too large to hash on every rerun
    is still the one an output was made from. A rewrite changes its time (and usually its
    size); one that keeps both to the nanosecond (a copy with preserved times, ``touch -r``)
    goes unseen."""
    states: dict[str, list[int] | None] = {}
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            states[path] = None
        else:
            states[path] = [stat.st_size, stat.st_mtime_ns]
    return states


def read_fingerprint(output: str | Path) -> dict[str, Any] | None:
    """The fingerprint stored beside ``output``, or ``None`` when there is none or it is not a
    readable JSON mapping (a maker that needs it to know what to check, e.g. which data files,
    then treats the output as stale, as :func:`is_current` does)."""
    try:
        stored = json.loads(fingerprint_path(output).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return stored if isinstance(stored, dict) else None


def _normal(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """``fingerprint`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(dict(fingerprint), sort_keys=True))


def is_current(output: str | Path, fingerprint: Mapping[str, Any]) -> bool:
    """Whether ``output`` exists and was made from what ``fingerprint`` describes.

    Logs the decision: reuse at INFO; at WARNING an output made from other inputs or options
    (naming the entries that changed) or without a readable fingerprint. When the output is to be
    made again its stale fingerprint is removed first, so that a kill while it is being made
    leaves no fingerprint that could pass for the new output's.

    Args:
        output: the file or directory made.
        fingerprint: what it would be made from now (JSON-ready).
    """
    output = Path(output)
    path = fingerprint_path(output)
    if not output.exists():
        path.unlink(missing_ok=True)
        return False
    wanted = _normal(fingerprint)
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        reason = f"has no fingerprint of what it was made from ({path.name})"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = f"has an unreadable fingerprint {path.name} ({type(err).__name__})"
    else:
        if stored == wanted:
            logger.info("%s was made from the same inputs and options: reusing it", output)
            return True
        if not isinstance(stored, dict):
            stored = {}
        changed = sorted(k for k in wanted.keys() | stored.keys() if stored.get(k) != wanted.get(k))
        reason = f"was made from other inputs or options (changed: {', '.join(changed)})"
    logger.warning("%s %s: making it again", output, reason)
    path.unlink(missing_ok=True)
    return False


def write_fingerprint(output: str | Path, fingerprint: Mapping[str, Any]) -> None:
    """Records that ``output``, now complete, was made from ``fingerprint`` (written
    atomically)."""
    write_text_atomic(fingerprint_path(output),
                      json.dumps(_normal(fingerprint), indent=1, sort_keys=True) + "\n")
