"""Process-group helpers for ``torchrun`` (gloo on CPU, nccl on GPU) that degrade to one process."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from asr.constants import torchrun_place
from asr.process_exit import skip_finalization

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    Attributes:
        rank: global rank (0 when not distributed).
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this node, selects the GPU.
        device: the device this process computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> DistInfo:
    """Initialises the default process group when launched by ``torchrun`` (WORLD_SIZE > 1).

    With torch's own collective timeout (10 minutes with NCCL, 30 with gloo): the longest that
    ranks wait for one of them between collectives is rank 0 writing a checkpoint
    (:meth:`asr.train.trainer.Trainer.save`; the other ranks wait in its barrier) and then
    naming, pruning and plotting; every rank validates and decodes the dev WER on its own share.
    A checkpoint holds ~20 bytes a parameter (float32 weights and AdamW's two moments, the
    float64 running average): 3 GB for the largest preset (encoder_l, ~150M), which 10 minutes
    cover down to a disk writing 5 MB/s.

    A process that sets up a group is marked to end without the interpreter's finalization
    (:func:`asr.process_exit.skip_finalization`; ``asr train`` ends through
    :func:`asr.process_exit.exit_status`): the group's threads outlive
    :func:`cleanup_distributed` once DDP used it, and could abort that finalization.

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.

    Raises:
        RuntimeError: CUDA asked for and absent, or more local processes than GPUs.
        ValueError: ``torchrun``'s variables unreadable (:func:`asr.constants.torchrun_place`).
    """
    rank, world_size, local_rank = torchrun_place()
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but CUDA is not available")
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
            "start at most that many processes per node (--nproc / torchrun --nproc-per-node)")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend)
        # the group's threads outlive cleanup_distributed once DDP used it: this process ends
        # without the interpreter's finalization, which they could abort (asr.process_exit)
        skip_finalization(f"a {backend} process group was set up; its threads outlive it")
        logger.info("initialised %s process group: rank %d of %d", backend, rank, world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def all_reduce_sums(values: Sequence[float], info: DistInfo) -> list[float]:
    """Each of ``values`` summed over all processes, in ONE all-reduce of a float64 vector (the
    values themselves when not distributed).

    Args:
        values: this process' numbers, the same count on every process.
    """
    if not info.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def all_reduce_sum(value: float, info: DistInfo) -> float:
    """Sum of ``value`` over all processes (the value itself when not distributed)."""
    return all_reduce_sums([value], info)[0]


def average_gradients(parameters: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Averages the gradients of ``parameters`` over all processes in place, as DDP's own
    reduction does (for gradients accumulated under ``no_sync``); nothing when not distributed."""
    if not info.distributed:
        return
    for param in parameters:
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(info.world_size)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
