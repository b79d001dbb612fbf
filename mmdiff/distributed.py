"""Running under torchrun: process group set-up, and the few collective operations the trainer needs.

``torchrun --nproc_per_node=N -m mmdiff ...`` starts N processes with RANK, LOCAL_RANK and WORLD_SIZE
in their environment; a plain ``python -m mmdiff`` is a world of one, where every function here is
a no-op. The backend is NCCL on GPUs and gloo on CPUs (which is how the tests run two processes).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device: torch.device) -> World:
    """Join the process group torchrun set up (if any); on GPUs each process takes cuda:LOCAL_RANK."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise UserError(f"torchrun started {size} processes but this machine has {torch.cuda.device_count()} "
                            "GPU(s): use --nproc_per_node at most the number of GPUs, or device=cpu")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(rank=rank, local_rank=local_rank, size=size, device=device)


def close_world(world: World, finished: bool = True) -> None:
    """Leave the process group. After a finished run every process first waits for the others, so that none
    tears its connections down while another still works (a rank that exits while gloo's threads are still
    live aborts with "terminate called without an active exception"); objects that still hold the group
    (the DistributedDataParallel wrapper and its reducer) are collected before it is destroyed. After an
    error there is no barrier: the other processes may never reach it."""
    if not (world.distributed and dist.is_initialized()):
        return
    if finished:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def any_true(flag: bool, world: World) -> bool:
    """True on every process if ``flag`` is true on any (so that all stop at the same step)."""
    if not world.distributed:
        return flag
    t = torch.tensor(float(flag), device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_world(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a scalar tensor over all processes (for logging)."""
    if not world.distributed:
        return value
    t = value.detach().clone().to(world.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / world.size


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
