"""Cost-aware tuning against single-objective tuning: the same trial budget, several data sets.

Three arms on the same job, per data set and seed: a built-in MLP, a search space whose points
differ in accuracy and in what they cost to train (epochs 2..30, widths from [16] to
[256, 256], batch sizes 16..256, the learning rate on a log scale), 12 trials, one at a time,
no pruner (so every arm sees whole trials). Arm ``single``: TPE on val_accuracy, the best
trial trains the final model (kubetrain's behaviour with one objective). Arms ``cost-aware``
(TPE) and ``cost-nsga2`` (NSGA-II): val_accuracy and cost, ``selection: {cheapestWithin:
0.01}``: the cheapest trial within one point of the best validation accuracy trains it. The
seed is the data set's seed (splits, initial weights) and the base of the trial samplers'
seeds, as for the trial units.

Each sweep runs in this process: the study server's creation of the study, then each trial
unit's own ``main()`` in turn (a process start costs more than these trainings), then the
summary unit's; then the final training unit with the chosen parameters. Reported per arm:
the chosen trial, the final model's test accuracy (the test split is never used to choose)
and what its training cost (its epochs' seconds at the trial's requests and the default
prices, as the ``cost`` objective measures a trial); then per data set and overall, against
``single``: the ratio of the mean costs over seeds (the goal's figure), the per-seed cost ratios
(mean, spread, median) and the test-accuracy differences in points (mean and spread). The
goal: at most 50% of the cost for at most 1 point of test accuracy lost, on the mean over
seeds. Costs are wall seconds: on a shared machine they move with its load.

    python bench/tune_cost.py                        # breast_cancer, wine, digits x seeds 0-4
    python bench/tune_cost.py --datasets wine --seeds 0 --trials 8 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

SPACE = {
    "epochs": {"type": "int", "low": 2, "high": 30},
    "learningRate": {"type": "float", "low": 1e-4, "high": 0.03, "log": True},
    "batchSize": {"type": "categorical", "choices": [16, 64, 256]},
    "model.hiddenUnits": {"type": "categorical", "choices": [[16], [64], [256], [256, 256]]},
}
ARMS: dict[str, dict[str, Any]] = {
    "single": {"sampler": "tpe", "objective": {"metric": "val_accuracy",
                                                "direction": "maximize"}},
    "cost-aware": {"sampler": "tpe", "objectives": [{"name": "val_accuracy"}, {"name": "cost"}],
                   "selection": {"cheapestWithin": 0.01}},
    "cost-nsga2": {"sampler": "nsga2", "objectives": [{"name": "val_accuracy"}, {"name": "cost"}],
                   "selection": {"cheapestWithin": 0.01}},
}
BASELINE = "single"
GOAL_COST_RATIO, GOAL_POINTS_LOST = 0.5, 1.0


def manifest(arm: str, dataset: str, seed: int, trials: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": f"{arm}-{dataset.replace('_', '-')}-{seed}"},
        "spec": {
            "dataset": {"builtin": dataset, "seed": seed, "validationSplit": 0.2,
                        "testSplit": 0.2},
            "model": {"builtin": "mlp", "params": {"hiddenUnits": [64]}},
            "training": {"epochs": 10, "batchSize": 64, "optimizer": "adamw",
                         "learningRate": 1e-3},
            "tuning": {"enabled": True, "pruner": "none", "trials": trials, "parallelism": 1,
                       "searchSpace": SPACE, **ARMS[arm]},
        },
    }


def sweep_and_train(job: Path, storage: Path) -> dict[str, Any]:
    """The sweep (study, trial units, summary) and the final training, in this process."""
    from kubetrain.api import load_training_job
    from kubetrain.pipeline.costing import trial_cost
    from kubetrain.pipeline.plan import target_trials, trial_seed
    from kubetrain.tuning.study import create_study_once, open_storage
    from kubetrain.workloads import train, trial, tune

    loaded = load_training_job(job)
    spec, name = loaded.spec, loaded.metadata.name
    create_study_once(open_storage(storage), name, spec)
    started = time.time()
    handler = signal.getsignal(signal.SIGTERM)  # a trial unit sets its own
    try:
        for index in range(target_trials(spec)):
            code = trial.main(["--job", str(job), "--storage", str(storage), "--study", name,
                               "--sampler-seed", str(trial_seed(spec.dataset.seed, index)),
                               "--result", str(storage / f"trial-{index}.json")])
            if code != 0:
                raise SystemExit(f"{job}: trial {index} exited with {code}")
    finally:
        signal.signal(signal.SIGTERM, handler)
    summary_file = storage / "summary.json"
    if tune.main(["--job", str(job), "--storage", str(storage), "--summarize",
                  "--result", str(summary_file)]) != 0:
        raise SystemExit(f"{job}: the sweep's summary failed")
    sweep_seconds = time.time() - started
    summary = json.loads(summary_file.read_text())
    trials = json.loads((storage / "tuning" / "trials.json").read_text())
    best = summary["best"]
    final = train.run(train.parse_args(["--job", str(job), "--storage", str(storage),
                                        "--params", json.dumps(best["params"]),
                                        "--result", str(storage / "train.json")]))
    seconds = sum(final["epoch_seconds"])
    return {
        "trial": best["trial"], "params": best["params"], "val_accuracy": best["value"],
        "test_accuracy": final["test_metrics"]["test_accuracy"],
        "final_seconds": round(seconds, 4), "final_cost": trial_cost(spec, seconds),
        "sweep_cost": sum(t.get("cost") or 0.0 for t in trials),
        "sweep_seconds": round(sweep_seconds, 1),
        "selection": summary.get("selection"),
    }


def run_case(arm: str, dataset: str, seed: int, trials: int, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True)
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump(manifest(arm, dataset, seed, trials), sort_keys=False))
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        result = sweep_and_train(job, folder / "storage")
    return {"arm": arm, "dataset": dataset, "seed": seed, **result}


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and (sample) standard deviation; 0 for one value."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def compare(rows: list[dict[str, Any]], arm: str) -> dict[str, Any]:
    """``arm`` against the baseline, per data set and overall: the mean final cost over seeds
    of each (their ratio: the goal's figure), the per-seed cost ratios and test-accuracy
    differences (in points) with their mean and spread."""
    by = {(r["dataset"], r["seed"], r["arm"]): r for r in rows}
    pairs = [{"dataset": d, "seed": s, "cost": r["final_cost"],
              "baseline_cost": by[d, s, BASELINE]["final_cost"],
              "cost_ratio": r["final_cost"] / by[d, s, BASELINE]["final_cost"],
              "test_points": 100 * (r["test_accuracy"] - by[d, s, BASELINE]["test_accuracy"])}
             for (d, s, a), r in by.items() if a == arm]

    def summary(selected: list[dict[str, Any]]) -> dict[str, Any]:
        ratio, ratio_sd = spread([p["cost_ratio"] for p in selected])
        points, points_sd = spread([p["test_points"] for p in selected])
        mean_cost = statistics.fmean(p["cost"] for p in selected)
        mean_base = statistics.fmean(p["baseline_cost"] for p in selected)
        return {"mean_cost": mean_cost, "baseline_mean_cost": mean_base,
                "cost_of_means": round(mean_cost / mean_base, 4),
                "cost_ratio": round(ratio, 4), "cost_ratio_sd": round(ratio_sd, 4),
                "cost_ratio_median": round(statistics.median(p["cost_ratio"] for p in selected), 4),
                "test_points": round(points, 2), "test_points_sd": round(points_sd, 2),
                "n": len(selected),
                "goal_met": mean_cost / mean_base <= GOAL_COST_RATIO
                and points >= -GOAL_POINTS_LOST}

    datasets = sorted({p["dataset"] for p in pairs})
    return {"arm": arm, "pairs": pairs,
            "by_dataset": {d: summary([p for p in pairs if p["dataset"] == d])
                           for d in datasets},
            "overall": summary(pairs)}


def print_report(rows: list[dict[str, Any]], verdicts: list[dict[str, Any]],
                 args: argparse.Namespace, seconds: float) -> None:
    print(f"{args.trials} trials per sweep, one at a time, no pruner; seeds "
          f"{' '.join(map(str, args.seeds))}; {seconds:.0f} s; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'dataset':<14} {'seed':>4} {'arm':<10} {'trial':>5} {'epochs':>6} {'batch':>5} "
          f"{'hidden':<10} {'val acc':>7} {'test acc':>8} {'final s':>7} {'final cost':>10}")
    order = list(ARMS)
    for r in sorted(rows, key=lambda r: (r["dataset"], r["seed"], order.index(r["arm"]))):
        p = r["params"]
        print(f"{r['dataset']:<14} {r['seed']:>4} {r['arm']:<10} {r['trial']:>5} "
              f"{p['epochs']:>6} {p['batchSize']:>5} {json.dumps(p['model.hiddenUnits']):<10} "
              f"{r['val_accuracy']:>7.4f} {r['test_accuracy']:>8.4f} {r['final_seconds']:>7.3f} "
              f"{r['final_cost']:>10.3g}")
    for verdict in verdicts:
        print(f"--- {verdict['arm']} against {BASELINE}: mean cost over seeds (ratio of the "
              "means: the goal's figure), per-seed cost ratio, test accuracy difference")
        print(f"{'dataset':<14} {'ratio of means':>14} {'per-seed ratio mean ± sd':>25} "
              f"{'median':>7} {'test points mean ± sd':>22} {'goal':>5}")
        for name, s in [*verdict["by_dataset"].items(), ("all", verdict["overall"])]:
            print(f"{name:<14} {s['cost_of_means']:>14.1%} {s['cost_ratio']:>16.1%} ± "
                  f"{s['cost_ratio_sd']:<6.1%} {s['cost_ratio_median']:>7.1%} "
                  f"{s['test_points']:>+13.2f} ± {s['test_points_sd']:<5.2f} "
                  f"{'met' if s['goal_met'] else 'missed':>6}")
    print(f"goal: at most {GOAL_COST_RATIO:.0%} of the single-objective arm's mean cost for at "
          f"most {GOAL_POINTS_LOST:g} point of test accuracy lost (mean over seeds)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["breast_cancer", "wine", "digits"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    import optuna
    import torch

    torch.set_num_threads(1)  # as a trial unit with one CPU
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-cost-") as tmp:
        for dataset in args.datasets:
            for seed in args.seeds:
                for arm in ARMS:  # one sweep at a time: costs are wall seconds
                    rows.append(run_case(arm, dataset, seed, args.trials,
                                         Path(tmp) / f"{arm}-{dataset}-{seed}"))
    seconds = time.time() - started
    verdicts = [compare(rows, arm) for arm in ARMS if arm != BASELINE]
    print_report(rows, verdicts, args, seconds)
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)},
                                         "space": SPACE, "arms": ARMS, "results": rows,
                                         "verdicts": verdicts, "seconds": round(seconds, 1)},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
