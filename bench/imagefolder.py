"""A generated image folder: N RGB PNGs of SIZE x SIZE in 10 class folders, learnable (each class
a colour and a stripe direction, with noise), and the same images as npz shards. Used by
bench/streaming.py and the tests.

    python bench/imagefolder.py DIR [--images 20000] [--size 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CLASSES = 10


def generate(folder: Path, images: int, size: int = 64, seed: int = 0) -> Path:
    """Write the folder (skipped when it already holds that many images)."""
    from PIL import Image

    if folder.exists() and sum(1 for _ in folder.rglob("*.png")) == images:
        return folder
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0.2, 0.8, size=(CLASSES, 3))
    grid = np.arange(size, dtype=np.float32)
    for c in range(CLASSES):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        c = i % CLASSES
        stripes = np.sin((grid[:, None] * (1 + c % 3) + grid[None, :] * (c // 3)) / 3.0)
        pixels = colours[c][None, None, :] * (0.7 + 0.3 * stripes[:, :, None])
        pixels = pixels + rng.normal(0, 0.15, size=(size, size, 3))
        img = (np.clip(pixels, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"class{c}" / f"{i:06d}.png", compress_level=1)
    return folder


def to_shards(folder: Path, out: Path, per_shard: int = 1000) -> Path:
    """The folder's images as uint8 (N, H, W, 3) arrays in .npz shards of ``per_shard`` rows,
    in a seeded random order (as a sharded dataset is written), labels from the class folders;
    skipped when ``out`` holds them already."""
    from PIL import Image

    files = sorted(folder.rglob("*.png"))
    count = -(-len(files) // per_shard)
    if out.exists() and len(list(out.glob("*.npz"))) == count:
        return out
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(0).permutation(len(files))
    classes = sorted({f.parent.name for f in files})
    for k in range(count):
        chosen = [files[i] for i in order[k * per_shard:(k + 1) * per_shard]]
        X = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in chosen])
        y = np.array([classes.index(f.parent.name) for f in chosen])
        np.savez(out / f"part-{k:05d}.npz", X=X, y=y)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--size", type=int, default=64)
    a = parser.parse_args()
    print(generate(a.folder, a.images, a.size))
