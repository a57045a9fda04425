"""Augmentation on scarce data: examples/scarce-digits.yaml trained with and without augmentation.

Both sides are the same manifest (10% of the digits training split, the same CNN, regularization,
early stopping and splits) run through the same work units, in one process:

- with: the augmentation work unit (``kubetrain.workloads.augment``: its shards, then the merge)
  writes ``multiplier`` kornia-augmented copies of every training image, and the training unit
  (``kubetrain.workloads.train``) adds them to its training split;
- without: ``augmentation.enabled: false``; the training unit sees the original rows only. So that
  the baseline is not short of optimizer steps, its epochs and early-stopping patience are
  multiplied by ``1 + multiplier`` (each of its epochs is that many times shorter), unless
  ``--same-epochs``.

Reported: the held-out test accuracy (the test split is never augmented nor used for early
stopping) for each seed (``dataset.seed``: splits, subset, initial weights, augmentation) and the
mean of both sides, and the mean paired difference in points. Goal: at least +2 points.

    python bench/augment_scarce.py                 # 5 seeds
    python bench/augment_scarce.py --seeds 0 1 2 3 4 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from kubetrain.workloads import augment as augment_unit
from kubetrain.workloads import train as train_unit

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "scarce-digits.yaml"
GOAL_POINTS = 2.0


def _manifest(base: dict[str, Any], seed: int, augmented: bool,
              same_epochs: bool) -> dict[str, Any]:
    manifest = copy.deepcopy(base)
    spec = manifest["spec"]
    spec["dataset"]["seed"] = seed
    spec["augmentation"]["enabled"] = augmented
    # Checkpoints only at the end: resuming is not what is measured, and saving one every epoch
    # would cost the many-epoch baseline more than the augmented side.
    spec["training"]["checkpoint"] = {"everyEpochs": 10000}
    if not augmented and not same_epochs:
        factor = 1 + int(spec["augmentation"].get("multiplier", 2))
        training = spec["training"]
        training["epochs"] = int(training.get("epochs", 20)) * factor
        es = training.get("earlyStopping")
        if es:
            es["patience"] = int(es.get("patience", 5)) * factor
    return manifest


def run_side(base: dict[str, Any], seed: int, augmented: bool, same_epochs: bool,
             workdir: Path) -> dict[str, Any]:
    """One training (after the augmentation units when ``augmented``); its test accuracy."""
    name = f"seed{seed}-{'with' if augmented else 'without'}"
    job = workdir / f"{name}.yaml"
    job.write_text(yaml.safe_dump(_manifest(base, seed, augmented, same_epochs), sort_keys=False))
    storage = workdir / name
    common = ["--job", str(job), "--storage", str(storage), "--base-dir", str(REPO)]
    started = time.perf_counter()
    augment_seconds = 0.0
    added = 0
    # The units report JSON lines on stdout: keep the benchmark's own output readable.
    with contextlib.redirect_stdout(io.StringIO()):
        if augmented:
            shards = int(base["spec"]["augmentation"].get("shards", 1))
            for shard in range(shards):
                augment_unit.run(augment_unit.parse_args(
                    [*common, "--shard", str(shard), "--shards", str(shards)]))
            merged = augment_unit.run(augment_unit.parse_args(
                [*common, "--merge", "--shards", str(shards)]))
            added = int(merged["added"])
            augment_seconds = time.perf_counter() - started
        result = train_unit.run(train_unit.parse_args(common))
    return {
        "seed": seed,
        "augmented": augmented,
        "test_accuracy": result["test_metrics"]["test_accuracy"],
        "train_rows": result.get("train_rows"),
        "added": added,
        "epochs_run": result["epochs_run"],
        "best_epoch": result["best_epoch"],
        "augment_seconds": round(augment_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--manifest", type=Path, default=EXAMPLE)
    parser.add_argument("--same-epochs", action="store_true",
                        help="give the baseline the manifest's epochs (fewer optimizer steps)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override training.epochs (a quick smoke run)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: these small nets gain nothing from more)")
    parser.add_argument("--json", type=Path, default=None, help="write all figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = yaml.safe_load(args.manifest.read_text())
    if args.epochs is not None:
        base["spec"]["training"]["epochs"] = args.epochs
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-augment-") as tmp:
        for seed in args.seeds:
            for augmented in (False, True):
                row = run_side(base, seed, augmented, args.same_epochs, Path(tmp))
                rows.append(row)
                print(f"seed {seed} {'with   ' if augmented else 'without'} augmentation: "
                      f"test accuracy {row['test_accuracy']:.4f}  train rows "
                      f"{row['train_rows']}  epochs {row['epochs_run']} (best "
                      f"{row['best_epoch']})  {row['seconds']:.1f} s", file=sys.stderr)
    without = [r["test_accuracy"] for r in rows if not r["augmented"]]
    with_aug = [r["test_accuracy"] for r in rows if r["augmented"]]
    diffs = [100 * (a - b) for a, b in zip(with_aug, without, strict=True)]
    summary = {
        "manifest": str(args.manifest),
        "seeds": args.seeds,
        "without_mean": statistics.fmean(without),
        "with_mean": statistics.fmean(with_aug),
        "difference_points": statistics.fmean(diffs),
        "difference_points_per_seed": diffs,
        "goal_points": GOAL_POINTS,
        "met_goal": statistics.fmean(diffs) >= GOAL_POINTS,
        "same_epochs": args.same_epochs,
        "seconds": round(time.perf_counter() - started, 1),
        "runs": rows,
    }
    print(f"\n| side | test accuracy (mean of {len(args.seeds)} seeds) | per seed |")
    print("|---|---|---|")
    print(f"| without augmentation | {100 * summary['without_mean']:.2f}% | "
          + ", ".join(f"{100 * v:.1f}" for v in without) + " |")
    print(f"| with augmentation | {100 * summary['with_mean']:.2f}% | "
          + ", ".join(f"{100 * v:.1f}" for v in with_aug) + " |")
    print(f"| difference | {summary['difference_points']:+.2f} points (goal >= +{GOAL_POINTS:g})"
          f" | " + ", ".join(f"{d:+.1f}" for d in diffs) + " |")
    print(f"\ntotal {summary['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
