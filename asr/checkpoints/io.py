"""Checkpoints that are written atomically and load without unpickling code.

A training checkpoint is one ``torch.save`` file holding only tensors and plain Python containers /
scalars, so it loads with ``torch.load(weights_only=True)``: a file from the network cannot run
code. Writes go to a temporary file in the same directory, are fsync'ed and then renamed over the
target, so a crash mid-write never leaves a truncated ``checkpoint-N.pt`` behind. A truncated or
foreign file fails with :class:`CheckpointError` naming the file.

Model weights for distribution are written as safetensors (see :func:`save_weights`).
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.fileio import TEMPORARY_PATTERN, temporary_path, write_atomic

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)\.pt$")
EPOCH_PATTERN = re.compile(r"^epoch-(\d+)\.pt$")
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, truncated, not one of ours, or cannot be written."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (:func:`asr.fileio.write_atomic`).

    Raises:
        CheckpointError: naming ``path`` and the space left on its file system, when the
            write fails (``torch.save``'s own error on a full disk, ``unexpected pos 704 vs
            598``, names neither); ``path`` is left as it was and no temporary stays behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, lambda tmp: torch.save(obj, tmp))
    except (OSError, RuntimeError) as err:  # torch.save: RuntimeError; fsync, rename: OSError
        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there"
        except OSError:
            free = "its free space unknown"
        raise CheckpointError(
            f"cannot write {path} ({free}: is the disk full?): {type(err).__name__}: "
            f"{' '.join(str(err).split())}; {path.name} was left as it was"
        ) from err


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> Any:
    """Loads a file written by :func:`atomic_torch_save` with ``weights_only=True``.

    Args:
        path: the file.
        map_location: where its tensors go.
        mmap: map the tensors' data from the file instead of reading it (``torch.load``'s
            ``mmap``): a reader of the plain fields alone (the progress) reads little more than
            them.

    Raises:
        CheckpointError: if the file is missing, truncated, holds anything but tensors and
            plain containers (which would need unpickling code), or is deleted while it is read.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError as err:  # deleted since is_file (a training's keep_last pruning)
        raise CheckpointError(f"checkpoint {path} does not exist") from err
    except Exception as err:  # torch raises several types for truncated / foreign files
        reason = f"{type(err).__name__}: {_load_reason(err)}"
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # the read failed as the file went (keep_last pruning)
            raise CheckpointError(
                f"checkpoint {path} was deleted while it was being read (a running training's "
                f"train.keep_last pruning?); the read failed with {reason}"
            ) from err
        raise CheckpointError(
            f"cannot load checkpoint {path} ({size} bytes): it is truncated, corrupt or not a "
            f"weights-only checkpoint: {reason}"
        ) from err


def _load_reason(err: Exception) -> str:
    """What ``torch.load`` says went wrong, in one line. A weights-only unpickling failure keeps
    only its cause: torch's message spans lines and, for a file whose code it blocks (such as
    ``os.system``), suggests ``weights_only=False``, which would run that code."""
    text = " ".join(str(err).split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    if "Weights only load failed" in text or marker in str(err):
        text = text.split("Check the documentation of torch.load", 1)[0]
        sentences = re.split(r"(?<=\.) ", text)
        text = " ".join(s for s in sentences if not any(
            word in s for word in ("weights_only", "Weights only load failed", "trusted source")))
    return text.strip()


def read_model_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Model weights of a training checkpoint (``.pt``) or a safetensors weights file.

    Returns:
        ``(state_dict, checkpoint)``: ``checkpoint`` is the whole training checkpoint (progress,
        ``extra`` config ...) for ``.pt`` files and ``{}`` for ``.safetensors``.

    Raises:
        CheckpointError: naming the file when it is missing, unreadable, or a ``.pt`` file
            without a ``model`` state dict.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_weights(path), {}
    data = training_checkpoint(safe_torch_load(path), path)
    return data["model"], data


def training_checkpoint(data: Any, path: str | Path) -> dict[str, Any]:
    """``data``, read from ``path`` by :func:`safe_torch_load`, as a training checkpoint: a
    dict with a ``model`` state dict.

    Raises:
        CheckpointError: naming ``path`` when ``data`` is anything else (a bare tensor, a list,
            a dict without model weights).
    """
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CheckpointError(f"{path}: not a training checkpoint (no 'model' state dict)")
    return data


def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU, and one CUDA device's) as weights-only-safe
    values.

    Args:
        device: the device the process computes on: a CUDA device's RNG state is kept (None:
            the current CUDA device's, where CUDA is in use). Not every visible GPU's: a process
            resumed where fewer are visible could not restore them.
    """
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_plain(random.getstate()),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    cuda = _cuda_device(device)
    if cuda is not None:
        state["cuda"] = torch.cuda.get_rng_state(cuda)
    return state


def _cuda_device(device: torch.device | None) -> torch.device | None:
    """The CUDA device whose RNG :func:`capture_rng_state` keeps for ``device`` (None: none)."""
    if not torch.cuda.is_available():
        return None
    if device is None:  # CUDA not initialised: its RNG has drawn nothing
        if not torch.cuda.is_initialized():
            return None
        return torch.device("cuda", torch.cuda.current_device())
    if device.type != "cuda":
        return None
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def restore_rng_state(state: Mapping[str, Any], device: torch.device | None = None) -> None:
    """Inverse of :func:`capture_rng_state` (``device``: as there). A state of every visible
    GPU (``capture_rng_state`` once kept those) gives ``device``'s, where it has one."""
    random.setstate(_to_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda, target = state.get("cuda"), _cuda_device(device)
    if cuda is None or target is None:
        return
    if isinstance(cuda, (list, tuple)):  # every visible GPU's
        cuda = cuda[target.index] if target.index < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, target)


def _to_plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _to_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_to_tuple(v) for v in value)
    return value


def checkpoint_path(exp_dir: str | Path, step: int) -> Path:
    """``<exp_dir>/checkpoint-<step>.pt``: what the trainer writes every so many steps."""
    return Path(exp_dir) / f"checkpoint-{step}.pt"


def epoch_checkpoint_path(exp_dir: str | Path, epoch: int) -> Path:
    """``<exp_dir>/epoch-<epoch>.pt`` (a hard link to the step checkpoint of the epoch's end)."""
    return Path(exp_dir) / f"epoch-{epoch}.pt"


#: What ``os.link`` fails with on a file system without hard links (object-store mounts such
#: as gcsfuse, s3fs and blobfuse; some SMB shares) or with too many of them.
NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS,
                           errno.EMLINK, errno.EXDEV})


def link_epoch_checkpoint(checkpoint: str | Path, epoch: int) -> Path:
    """Names the step checkpoint written at the end of ``epoch`` after the epoch too (a hard
    link beside it, replacing an older one), for averaging and decoding by epoch. Where the
    file system has no hard links (:data:`NO_HARD_LINKS`), ``epoch-N.pt`` is a copy.

    The new link is made under a temporary name beside it and renamed over the old one, so a
    reader (``asr decode --epoch N`` while training goes on) always finds ``epoch-N.pt``.
    """
    checkpoint = Path(checkpoint)
    path = epoch_checkpoint_path(checkpoint.parent, epoch)
    tmp = temporary_path(path)
    tmp.unlink(missing_ok=True)
    try:
        os.link(checkpoint, tmp)
    except OSError as err:
        if err.errno not in NO_HARD_LINKS:
            raise
        logger.info("%s: no hard link here (%s): %s is a copy", checkpoint.parent,
                    os.strerror(err.errno), path.name)
        write_atomic(path, lambda copy: shutil.copyfile(checkpoint, copy))
        return path
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(directory: str | Path, writing_here: bool = True) -> list[Path]:
    """Deletes the temporaries of atomic writes (:func:`asr.fileio.write_atomic`) in
    ``directory`` whose writing process is gone (a run killed while it wrote a checkpoint leaves
    one the size of a checkpoint); returns what it deleted.

    Args:
        directory: where to look (not below it).
        writing_here: whether this process may be writing in ``directory`` now: its own
            temporaries are then live. A caller that is not (a training that resumes, before it
            writes anything) removes those too: a container restarted after a kill often runs
            the same command under the killed process' pid, whose temporaries stayed forever.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        m = TEMPORARY_PATTERN.match(path.name)
        if m is None or not path.is_file():
            continue
        pid = int(m.group(1))
        if (writing_here or pid != os.getpid()) and _process_alive(pid):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
        logger.info("removed %s, left by an interrupted write", path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def list_checkpoints(exp_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-N.pt`` in ``exp_dir``, sorted by step."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    found = []
    for p in exp_dir.iterdir():
        m = CHECKPOINT_PATTERN.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(exp_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(exp_dir)
    return ckpts[-1][1] if ckpts else None


def remove_old_checkpoints(exp_dir: str | Path, keep_last: int) -> None:
    """Deletes all but the newest ``keep_last`` step checkpoints (``keep_last <= 0`` keeps all)."""
    if keep_last <= 0:
        return
    for _, path in list_checkpoints(exp_dir)[:-keep_last]:
        path.unlink(missing_ok=True)
        logger.debug("removed old checkpoint %s", path)


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | Path,
                 metadata: Mapping[str, str] | None = None) -> None:
    """Writes model weights as safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    # safetensors creates its file 0600; write_atomic gives it the umask's permissions
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=dict(metadata or {})))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads safetensors weights; raises CheckpointError naming the file if it is unreadable."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        return load_file(str(path))
    except Exception as err:
        raise CheckpointError(f"cannot read safetensors weights {path}: {err}") from err
