"""Process-group setup for DDP under torchrun (gloo on CPU, NCCL on GPU), and its teardown."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(use_gpu: bool) -> DistContext:
    """Join the gang torchrun started (WORLD_SIZE > 1), or run as a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_gpu:
        if not torch.cuda.is_available():
            raise RuntimeError(
                "training.resources.gpusPerNode > 0 but no CUDA device is visible to this "
                "process; set gpusPerNode: 0 to train on the CPU"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_gpu else "gloo")
    return DistContext(rank, local_rank, world_size, device)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: DistContext, finished: bool = True) -> None:
    """Leave the gang. After a normal finish every rank first waits for the others: a rank
    that tears gloo down while its peer still talks to it can make the peer abort
    ("terminate called without an active exception", seen once in CI). After an error there is
    no waiting, since the peers may never arrive."""
    if ctx.distributed and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
