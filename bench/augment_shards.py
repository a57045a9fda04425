"""Augmentation shards at once against one shard: the augmentation stage's wall time.

The same TrainingJob (digits, kornia image augmentation, ``--multiplier`` copies, 1 training
epoch) is run with ``kubetrain run`` (the local executor) with ``shards: N, parallelism: N``
and with ``shards: 1`` (the baseline), alternately, ``--repeats`` times each. The stage's wall
time comes from its units' seconds in the status (start and completion times are only to the
second): the longest shard plus the merge, which is what the stage waits for when the shards
run at once. Unit-seconds (their sum) show what the shards cost together.

    python bench/augment_shards.py                 # 4 shards vs 1, 3 repeats, ~3 min here
    python bench/augment_shards.py --images 96 --multiplier 8   # larger images, where it pays
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def synthetic_images(folder: Path, count: int, size: int) -> Path:
    """An npz of RGB images (count x 3 x size x size, uint8), a class per colour pattern: the
    larger images a real augmentation job has (digits are 8x8, and cost nothing to augment)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, count)
    X = rng.integers(0, 64, (count, 3, size, size), dtype=np.uint8)
    for label in range(4):
        X[y == label, label % 3, label * size // 8:, :] += 128
    path = folder / f"images-{size}.npz"
    np.savez(path, X=X, y=y)
    return path


def manifest(shards: int, multiplier: int, dataset: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": f"shards-{shards}"},
            "spec": {"dataset": dataset,
                     "augmentation": {"enabled": True, "multiplier": multiplier,
                                      "shards": shards, "parallelism": shards,
                                      "image": {"rotation": 10, "translate": 0.1,
                                                "scale": [0.9, 1.1], "noiseStd": 0.05,
                                                "erasing": 0.25}},
                     "model": {"builtin": "mlp", "params": {"hiddenUnits": [32]}},
                     "training": {"epochs": 1, "batchSize": 256}}}


def stage_seconds(status: dict[str, Any]) -> tuple[float, float]:
    """(wall seconds the stage waited for, unit-seconds it used): the shards ran at once, so
    the stage waited for the longest shard, then the merge."""
    units = status["stages"]["augmentation"]["units"]
    shards = [u["seconds"] for n, u in units.items() if n != "augment-merge"]
    merge = units["augment-merge"]["seconds"]
    return max(shards) + merge, sum(shards) + merge


def run(shards: int, multiplier: int, folder: Path,
        dataset: dict[str, Any]) -> tuple[float, float, float]:
    path = folder / f"shards-{shards}.yaml"
    path.write_text(yaml.safe_dump(manifest(shards, multiplier, dataset)))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kubetrain.cli", "run", str(path),
                           "--storage", str(folder / f"run-{shards}"), "--no-progress"],
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    status = yaml.safe_load(done.stdout)["status"]
    waited, used = stage_seconds(status)
    return waited, used, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--multiplier", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=0, metavar="SIZE",
                        help="augment 1500 synthetic SIZE x SIZE RGB images instead of digits")
    args = parser.parse_args(argv)
    results: dict[int, list[tuple[float, float, float]]] = {1: [], args.shards: []}
    with tempfile.TemporaryDirectory() as tmp:
        dataset: dict[str, Any] = {"builtin": "digits"}
        what = "digits (8x8)"
        if args.images:
            path = synthetic_images(Path(tmp), 1500, args.images)
            dataset, what = {"uri": str(path), "format": "npz"}, f"1500 RGB {args.images}px"
        for _ in range(args.repeats):
            for shards in (1, args.shards):
                results[shards].append(run(shards, args.multiplier, Path(tmp), dataset))
    print(f"{what}, multiplier {args.multiplier}, {args.repeats} repeats (median):")
    print("| shards | stage wall s | unit-seconds | whole run s |")
    print("|---|---|---|---|")
    for shards, rows in results.items():
        med = [statistics.median(col) for col in zip(*rows, strict=True)]
        print(f"| {shards} | {med[0]:.1f} | {med[1]:.1f} | {med[2]:.1f} |")
    one = statistics.median(r[0] for r in results[1])
    many = statistics.median(r[0] for r in results[args.shards])
    print(f"speed-up of the augmentation stage, {args.shards} shards at once vs 1: "
          f"{one / many:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
