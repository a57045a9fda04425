"""Mixup and CutMix: training-time augmentation that mixes pairs of examples in a batch.

Each returns the mixed inputs and ``(y_a, y_b, lam)``; the loss is
``lam * CE(out, y_a) + (1 - lam) * CE(out, y_b)`` (``mixed_loss``). Classification only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MixedBatch:
    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float


def _permutation(n: int, rng: np.random.Generator, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(rng.permutation(n)).to(device)


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator) -> MixedBatch:
    """``lam * x + (1 - lam) * x[perm]`` with ``lam ~ Beta(alpha, alpha)``."""
    lam = float(rng.beta(alpha, alpha)) if alpha > 0 else 1.0
    perm = _permutation(x.shape[0], rng, x.device)
    mixed = x * lam + x[perm] * (1.0 - lam)
    return MixedBatch(mixed, y, y[perm], lam)


def cutmix(x: torch.Tensor, y: torch.Tensor, alpha: float,
           rng: np.random.Generator) -> MixedBatch:
    """A random box of each image replaced by the same box of another; ``lam`` is the share of
    the image left untouched (the box has area ``1 - lam`` drawn from Beta(alpha, alpha),
    clipped at the border)."""
    if x.dim() != 4:
        raise ValueError(f"cutmix needs images (N, C, H, W), got shape {tuple(x.shape)}")
    height, width = x.shape[2], x.shape[3]
    lam = float(rng.beta(alpha, alpha)) if alpha > 0 else 1.0
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = round(height * ratio), round(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + (cut_h - cut_h // 2), height)
    left, right = max(cx - cut_w // 2, 0), min(cx + (cut_w - cut_w // 2), width)
    perm = _permutation(x.shape[0], rng, x.device)
    mixed = x.clone()
    if bottom > top and right > left:
        mixed[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
    return MixedBatch(mixed, y, y[perm], lam)


def mixed_loss(criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               out: torch.Tensor, batch: MixedBatch) -> torch.Tensor:
    return batch.lam * criterion(out, batch.y_a) + (1.0 - batch.lam) * criterion(out, batch.y_b)


class BatchMixer:
    """Mixes each training batch with mixup or CutMix (half the batches each when both are on).

    Seeded per epoch and rank, so a resumed run mixes as the uninterrupted one would.
    """

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, seed: int) -> None:
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def start_epoch(self, epoch: int, rank: int = 0) -> None:
        self.rng = np.random.default_rng([self.seed, epoch, rank])

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> MixedBatch:
        use_cutmix = self.cutmix_alpha > 0 and x.dim() == 4 and (
            self.mixup_alpha <= 0 or self.rng.random() < 0.5)
        if use_cutmix:
            return cutmix(x, y, self.cutmix_alpha, self.rng)
        return mixup(x, y, self.mixup_alpha, self.rng)

    def loss(self, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             y: torch.Tensor) -> torch.Tensor:
        batch = self.mix(x, y)
        return mixed_loss(criterion, model(batch.x), batch)


def batch_mixer(mixup_alpha: float, cutmix_alpha: float, task: str, input_dims: int,
                seed: int) -> BatchMixer | None:
    """A mixer when mixup or CutMix (images only) is on for a classification task, else None."""
    cutmix_alpha = cutmix_alpha if input_dims == 4 else 0.0
    if task != "classification" or (mixup_alpha <= 0 and cutmix_alpha <= 0):
        return None
    return BatchMixer(mixup_alpha, cutmix_alpha, seed)
