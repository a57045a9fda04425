"""Tuning: TPE with median pruning against random search without pruning, same trial budget.

Both arms are the real tuning work unit (``python -m kubetrain.workloads.tune``: a study in a
journal file, one process per trial, ``parallelism`` at once) on the same job: digits, an MLP,
the same search space (learning rate on a log scale, dropout, hidden units), the same number of
trials and epochs per trial, the same seed. They run one after the other in one invocation.

Reported per arm: the best validation accuracy, the epochs all trials trained together (the
compute the sweep paid for), the epochs pruning saved, trials by state, and wall seconds. The
goal for pruning: the same best value with at most half the epochs.

    python bench/tune_pruning.py                      # 16 trials, parallelism 2, 8 epochs
    python bench/tune_pruning.py --trials 6 --epochs 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

SPACE = {
    "learningRate": {"type": "float", "low": 1e-5, "high": 0.1, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "model.hiddenUnits": {"type": "categorical", "choices": [[32], [64], [128, 64]]},
}
ARMS = {  # arm → (job name, tuning settings)
    "tpe+median": ("tpe-median", {"sampler": "tpe", "pruner": "median"}),
    "random": ("random", {"sampler": "random", "pruner": "none"}),
}


def manifest(name: str, arm: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "dataset": {"builtin": "digits", "seed": args.seed},
            "model": {"builtin": "mlp", "params": {"hiddenUnits": [64]}},
            "training": {"epochs": args.epochs, "batchSize": 64, "learningRate": 1e-3},
            "tuning": {
                "enabled": True, **arm, "trials": args.trials,
                "parallelism": args.parallelism,
                "objective": {"metric": "val_accuracy", "direction": "maximize"},
                "searchSpace": SPACE,
            },
        },
    }


def run_arm(label: str, name: str, arm: dict[str, str], args: argparse.Namespace, root: Path
            ) -> dict[str, Any]:
    folder = root / name
    folder.mkdir(parents=True)
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump(manifest(name, arm, args), sort_keys=False))
    result_file = folder / "result.json"
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "kubetrain.workloads.tune", "--job", str(job),
         "--storage", str(folder / "storage"), "--result", str(result_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{label}: the sweep failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(result_file.read_text())
    return {
        "arm": label, **arm,
        "best_value": result["best"]["value"],
        "best_params": result["best"]["params"],
        "epochs_run": result["epochs_run"],
        "epochs_budget": args.trials * args.epochs,
        "epochs_saved_by_pruning": result["epochs_saved_by_pruning"],
        "trials": result["trials"],
        "wall_seconds": round(time.time() - started, 1),
        "trial_seconds": result["trial_seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8, help="epochs per trial")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--arm", choices=sorted(ARMS), action="append",
                        help="run only this arm (repeatable; default: both)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-tune-") as tmp:
        rows = [run_arm(label, name, arm, args, Path(tmp))
                for label, (name, arm) in ARMS.items() if not args.arm or label in args.arm]
    print(f"{args.trials} trials, parallelism {args.parallelism}, {args.epochs} epochs per "
          f"trial, seed {args.seed}; digits MLP, objective val_accuracy")
    print(f"{'arm':<11} {'best':>7} {'epochs':>7} {'saved':>6} {'complete':>8} {'pruned':>6} "
          f"{'wall s':>7}")
    for row in rows:
        print(f"{row['arm']:<11} {row['best_value']:>7.4f} {row['epochs_run']:>7} "
              f"{row['epochs_saved_by_pruning']:>6} {row['trials']['complete']:>8} "
              f"{row['trials']['pruned']:>6} {row['wall_seconds']:>7.1f}")
    if len(rows) < len(ARMS):
        return 0
    pruned, baseline = rows
    epochs_ratio = pruned["epochs_run"] / baseline["epochs_run"]
    verdict = {
        "best_value_difference": round(pruned["best_value"] - baseline["best_value"], 4),
        "epochs_ratio": round(epochs_ratio, 3),
        "goal_met": pruned["best_value"] >= baseline["best_value"] - 1e-9
        and epochs_ratio <= 0.5,
    }
    print(f"tpe+median spent {epochs_ratio:.0%} of random search's epochs; best value "
          f"{verdict['best_value_difference']:+.4f}; goal met: {verdict['goal_met']}")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)},
                                         "results": rows, "verdict": verdict}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
