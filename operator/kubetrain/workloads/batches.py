"""The splits a training loop takes its batches from.

``TensorSplit``: the data on the device as whole tensors (kubetrain's in-memory datasets are
small enough); a batch is an index lookup, no DataLoader and no host copies. ``StreamingSplit``:
rows read from disk batch by batch by DataLoader workers, for data larger than memory.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class TensorSplit:
    """A split as whole tensors on the device: batches are index lookups, no copies."""

    X: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def ndim(self) -> int:
        return int(self.X.dim())

    def batches(self, indices: torch.Tensor,
                size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = indices.to(self.X.device)
        for begin in range(0, len(indices), size):
            batch = indices[begin:begin + size]
            yield self.X[batch], self.y[batch]


class _Rows(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Scaled rows of a ``LazyRows``; a whole batch is read at once (``__getitems__``), so a
    shard is read once per batch, not once per row."""

    def __init__(self, rows: Any, y: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor) -> None:
        self.rows, self.y, self.mean, self.std = rows, y, mean, std

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = (torch.from_numpy(self.rows.decode(i)) - self.mean) / self.std
        return x, self.y[i]

    def __getitems__(self, batch: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # Rows, not one batch tensor: the default collation stacks them straight into shared
        # memory. A batch tensor made here is moved there on sending, and those copies pile
        # up in the cgroup (measured: +500 MiB over a 20,000-image epoch).
        x = (torch.from_numpy(self.rows.take(batch)) - self.mean) / self.std
        return list(zip(x, self.y[batch], strict=True))


M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter: allocations from this size up get pages of their own (mmap)."""


def fixed_mmap_threshold(size: int = 2**20) -> None:
    """Give each allocation of ``size`` bytes or more its own pages, returned on free (glibc;
    elsewhere nothing). glibc raises this threshold to the largest block freed, so a batch's
    megabytes come from the heap instead, which a forked DataLoader worker shares with the
    trainer: reusing it copies the trainer's pages into the worker one by one. Measured on a
    20,000-image shards epoch: the unit's peak 1,228 MiB with glibc's default, 542 with this
    (in the trainer and its workers)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, size)


def _worker_start(worker: int) -> None:
    fixed_mmap_threshold()


@dataclass
class StreamingSplit:
    """A split read from disk batch by batch: DataLoader worker processes read and scale the
    rows, pinned memory and non-blocking copies on a GPU. For data larger than memory."""

    rows: Any
    """``data.images.LazyRows``: image files or npz shards, read on demand."""
    y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    device: torch.device
    workers: int = 2
    max_batch: int = 128
    """Evaluation asks for big batches (1024) of small in-memory rows; decoded images at that
    size, and the activations of a conv net on them, are what streaming must not hold."""

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ndim(self) -> int:
        return int(self.rows.ndim)

    def batches(self, indices: torch.Tensor,
                size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.rows.locality_order(indices.cpu().tolist())
        size = min(size, self.max_batch)
        sampler = [order[begin:begin + size] for begin in range(0, len(order), size)]
        cuda = self.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            _Rows(self.rows, self.y, self.mean, self.std), batch_sampler=sampler,
            num_workers=self.workers, worker_init_fn=_worker_start, pin_memory=cuda,
            prefetch_factor=2 if self.workers else None)
        layout = torch.channels_last if cuda and self.rows.ndim == 4 else torch.preserve_format
        for xb, yb in loader:
            yield (xb.to(self.device, non_blocking=cuda, memory_format=layout),
                   yb.to(self.device, non_blocking=cuda))


Split = TensorSplit | StreamingSplit
