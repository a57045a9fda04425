"""Image augmentation with kornia: random affine, flips, erasing and Gaussian noise.

Images are (N, C, H, W) float32 in [0, 1], as the data module returns them, before
standardization; the output stays in [0, 1]. The transforms run in batches on the GPU when one is
visible, else on the CPU, and are seeded: one seed gives the same images on the same device.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..api.spec import ImageAugmentationSpec

DEFAULT_BATCH = 4096


def operations(spec: ImageAugmentationSpec) -> list[str]:
    """The transforms the pipeline applies, with their parameters, in order."""
    ops: list[str] = []
    low, high = spec.scale
    if spec.rotation > 0 or spec.translate > 0 or (low, high) != (1.0, 1.0):
        ops.append(f"affine(rotation={spec.rotation:g}deg, translate={spec.translate:g}, "
                   f"scale=[{low:g}, {high:g}])")
    if spec.horizontal_flip:
        ops.append("horizontal_flip(p=0.5)")
    if spec.vertical_flip:
        ops.append("vertical_flip(p=0.5)")
    if spec.erasing > 0:
        ops.append(f"random_erasing(p={spec.erasing:g})")
    if spec.noise_std > 0:
        ops.append(f"gaussian_noise(std={spec.noise_std:g})")
    return ops


def build_pipeline(spec: ImageAugmentationSpec) -> nn.Module | None:
    """The kornia transforms of ``spec`` in order, or None when it asks for none."""
    import kornia.augmentation as K

    layers: list[nn.Module] = []
    low, high = spec.scale
    if spec.rotation > 0 or spec.translate > 0 or (low, high) != (1.0, 1.0):
        layers.append(K.RandomAffine(
            degrees=spec.rotation, translate=(spec.translate, spec.translate),
            scale=(low, high), padding_mode="zeros", p=1.0))
    if spec.horizontal_flip:
        layers.append(K.RandomHorizontalFlip(p=0.5))
    if spec.vertical_flip:
        layers.append(K.RandomVerticalFlip(p=0.5))
    if spec.erasing > 0:
        layers.append(K.RandomErasing(p=spec.erasing, value=0.0))
    if spec.noise_std > 0:
        layers.append(K.RandomGaussianNoise(mean=0.0, std=spec.noise_std, p=1.0))
    if not layers:
        return None
    return nn.Sequential(*layers)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def augment_images(
    X: np.ndarray,
    spec: ImageAugmentationSpec,
    copies: int,
    seed: int,
    *,
    device: torch.device | None = None,
    batch_size: int = DEFAULT_BATCH,
    on_batch: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """``copies`` augmented versions of every image, copy-major: row ``k * N + i`` is copy k of
    image i (so the sources are ``np.tile(rows, copies)``). Empty when ``spec`` asks for nothing.

    ``on_batch(done, total)`` is called after each batch (progress).
    """
    if X.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {X.shape}")
    pipeline = build_pipeline(spec)
    n = X.shape[0]
    if pipeline is None or copies <= 0 or n == 0:
        return np.empty((0, *X.shape[1:]), dtype=np.float32)
    device = device or default_device()
    pipeline = pipeline.to(device)
    source = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    total = n * copies
    out = np.empty((total, *X.shape[1:]), dtype=np.float32)
    fork_devices: list[int] = []
    if device.type == "cuda":
        fork_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    # kornia draws from torch's global generator: seed it, and give the caller's state back.
    with torch.random.fork_rng(devices=fork_devices), torch.no_grad():
        torch.manual_seed(seed)
        if device.type == "cuda":
            _augment_on_gpu(pipeline, source, out, batch_size, device, on_batch)
            return out
        done = 0
        while done < total:
            end = min(done + batch_size, total)
            rows = torch.arange(done, end) % n
            augmented = pipeline(source[rows]).clamp_(0.0, 1.0)
            out[done:end] = augmented.numpy()
            done = end
            if on_batch is not None:
                on_batch(done, total)
    return out


RESIDENT_SHARE = 0.25
"""The source images stay on the GPU when they take at most this share of its free memory."""


def _augment_on_gpu(pipeline: nn.Module, source: torch.Tensor, out: np.ndarray,
                    batch_size: int, device: torch.device,
                    on_batch: Callable[[int, int], None] | None) -> None:
    """The batches of ``augment_images`` on a GPU, with the copies out of the way: the source
    uploaded once (or, when it is too big, each batch through pinned memory), and each result
    copied to one of two pinned buffers without waiting, so the host moves batch i into
    ``out`` while the GPU transforms batch i + 1. The same transforms in the same order as
    the CPU loop: the same random draws."""
    n, total = source.shape[0], out.shape[0]
    free, _ = torch.cuda.mem_get_info(device)
    resident = source.numel() * source.element_size() <= free * RESIDENT_SHARE
    images = source.to(device) if resident else source
    staging = [torch.empty((batch_size, *source.shape[1:]), dtype=torch.float32,
                           pin_memory=True) for _ in range(2)]
    events = [torch.cuda.Event(), torch.cuda.Event()]
    pending: list[tuple[int, int, int]] = []  # (buffer, begin, end), oldest first

    def drain_one() -> None:
        slot, begin, end = pending.pop(0)
        events[slot].synchronize()
        out[begin:end] = staging[slot][: end - begin].numpy()
        if on_batch is not None:
            on_batch(end, total)

    done = 0
    for i, begin in enumerate(range(0, total, batch_size)):
        end = min(begin + batch_size, total)
        if resident:
            batch = images[torch.arange(begin, end, device=device) % n]
        else:
            batch = images[torch.arange(begin, end) % n].pin_memory().to(device,
                                                                          non_blocking=True)
        augmented = pipeline(batch).clamp_(0.0, 1.0)
        slot = i % 2
        if len(pending) == 2:
            drain_one()  # the batch that used this buffer
        staging[slot][: end - begin].copy_(augmented, non_blocking=True)
        events[slot].record()
        pending.append((slot, begin, end))
        done = end
    while pending:
        drain_one()
    assert done == total
