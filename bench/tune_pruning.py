"""Tuning: TPE with pruning (median, Hyperband, successive halving) against random search.

Four arms on the same job, over several seeds: digits, an MLP, 20 epochs per trial with a
cosine learning-rate schedule, a search space with clearly bad regions (learning rate and
weight decay on log scales over five decades, dropout up to 0.6, widths from 16 to 256 units),
the same number of trials, the same parallelism. TPE with ``pruner: median``, ``hyperband`` and
``successive-halving`` (the pruners of ``kubetrain.tuning.study``), and random search without
pruning as the baseline. The seed is the dataset seed (split, initialization) and the base of
the samplers' seeds, as for the trial units: trial k's sampler is seeded with
``pipeline.plan.trial_seed`` (seed x 1000 + k), so all arms start from the same random points.

Reported per seed and arm: the best validation accuracy, the epochs all trials trained together
(the compute the sweep paid for), trials by state; then per seed the epochs ratio (pruned arm /
random arm) and the best-value difference, in validation examples; then the means. The goal:
the same best value with at most 40% of the epochs. "The same" means within one validation
example (1/270 here) on the mean over seeds; one accuracy near 0.99 on 270 examples has a
standard error of about 1.6 examples, so single seeds can differ by more than that by chance.

``--unit in-process`` (default) runs each sweep in one process: every trial is the trial work
unit's own ``run_trial`` (the study in a journal file, the sampler and pruner of
``kubetrain.tuning.study``, a sampler seeded per trial as the plan does), on threads that take
turns one epoch at a time, ``parallelism`` trials side by side at equal speed. Only the process
boundary is gone: a trial process needs 7-9 s here to import torch and Optuna, against about
1 s for 20 epochs of this MLP, which would put several seeds far past a few minutes. Each
trial keeps its own torch random state across turns, so random search gives the same trials
and values as trial processes; TPE's do differ, as they do between two runs with processes
(which trials run side by side, and how far, when the sampler and the pruner look depends on
timing). The sweeps run ``--jobs`` at a time. ``--unit process`` runs the job through
``kubetrain run`` instead (a study server and one process per trial, then the final training,
which its wall seconds include), one sweep at a time.

    python bench/tune_pruning.py                       # 8 seeds x 2 arms, 16 trials of 20 epochs
    python bench/tune_pruning.py --seeds 0 --unit process --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

SPACE = {
    "learningRate": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
    "weightDecay": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.6},
    "model.hiddenUnits": {"type": "categorical", "choices": [[16], [64], [256], [128, 64]]},
}
ARMS = {  # arm → (job name, tuning settings)
    "tpe+median": ("tpe-median", {"sampler": "tpe", "pruner": "median"}),
    "tpe+hyperband": ("tpe-hyperband", {"sampler": "tpe", "pruner": "hyperband"}),
    "tpe+sha": ("tpe-sha", {"sampler": "tpe", "pruner": "successive-halving"}),
    "random": ("random", {"sampler": "random", "pruner": "none"}),
}
BASELINE_ARM = "random"
GOAL_RATIO = 0.4
"""Epochs of a pruned arm, as a fraction of random search's, for the same best value."""


def manifest(name: str, arm: dict[str, str], seed: int, args: argparse.Namespace
             ) -> dict[str, Any]:
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "dataset": {"builtin": "digits", "seed": seed},
            "model": {"builtin": "mlp", "params": {"hiddenUnits": [64]}},
            "training": {"epochs": args.epochs, "batchSize": 64, "optimizer": "adamw",
                         "learningRate": 1e-3, "schedule": "cosine"},
            "tuning": {
                "enabled": True, **arm, "trials": args.trials,
                "parallelism": args.parallelism,
                "objective": {"metric": "val_accuracy", "direction": "maximize"},
                "searchSpace": SPACE,
            },
        },
    }


# --- in-process sweeps -------------------------------------------------------------------

_turn = threading.local()


class Turns:
    """Trial threads run one at a time, one epoch a turn, round robin: the trials of a sweep
    advance side by side at equal speed, and the sweep is deterministic for a seed."""

    def __init__(self) -> None:
        self.back = threading.Semaphore(0)


class TrialThread:
    def __init__(self, turns: Turns, target: Any) -> None:
        self.turns = turns
        self.go = threading.Semaphore(0)
        self.done = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._body, args=(target,), daemon=True)
        self.thread.start()

    def _body(self, target: Any) -> None:
        self.go.acquire()
        _turn.current = self
        try:
            target()
        except BaseException as error:
            self.error = error
        finally:
            self.done = True
            self.turns.back.release()

    def pause(self) -> None:
        """End of an epoch: hand the turn back, wait for the next. The trial's torch random
        state (dropout) goes with it, as if it had the process to itself."""
        import torch

        rng = torch.get_rng_state()
        self.turns.back.release()
        self.go.acquire()
        torch.set_rng_state(rng)

    def step(self) -> None:
        """Run until this trial's next epoch ends (or it finishes)."""
        self.go.release()
        self.turns.back.acquire()


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # the local executor's setting for trial processes
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the trials' JSON event lines
    import types

    import optuna
    import torch
    from kubetrain.workloads import train, trial

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    real_run = train.run

    def run(args: argparse.Namespace, on_epoch: Any) -> dict[str, Any]:
        def with_turns(metrics: dict[str, float]) -> bool:
            prune = on_epoch(metrics)
            _turn.current.pause()
            return prune
        return real_run(args, with_turns)

    # The trial unit's own code, minus what needs a process of its own: its train.run hands
    # the turn on after each epoch, and the SIGTERM handler it sets before telling the study
    # (only the main thread may set one) is left out.
    trial.train = types.SimpleNamespace(  # type: ignore[assignment]
        run=run, SpecProblem=train.SpecProblem)
    trial.signal = types.SimpleNamespace(  # type: ignore[assignment]
        signal=lambda *a: None, SIGTERM=15, SIG_IGN=None)


def sweep_in_process(job: Path, folder: Path) -> dict[str, Any]:
    from kubetrain.api import load_training_job
    from kubetrain.pipeline.plan import trial_seed
    from kubetrain.tuning.space import distributions
    from kubetrain.tuning.study import (
        create_study_once,
        load_study,
        open_storage,
        summarize,
        sweep_totals,
    )
    from kubetrain.workloads import trial as trial_unit

    started = time.time()
    loaded = load_training_job(job)
    spec, name = loaded.spec, loaded.metadata.name
    storage_dir = folder / "storage"
    storage = open_storage(storage_dir)
    study = create_study_once(storage, name, spec)
    turns, launches = Turns(), 0
    active: list[TrialThread] = []
    while True:
        while len(active) < spec.tuning.parallelism and launches < spec.tuning.trials:
            # What a trial process does: load the study with a sampler of its own seed, ask.
            own = load_study(storage, name, spec, seed=trial_seed(spec.dataset.seed, launches))
            asked = own.ask(distributions(spec.tuning.search_space))
            args = argparse.Namespace(storage=storage_dir, job=job, result=None,
                                      base_dir=Path.cwd(), data_root=None, workdir=None,
                                      program_dir=None)
            active.append(TrialThread(turns, lambda s=own, t=asked, a=args: (
                trial_unit.run_trial(spec, a, s, t, time.time()))))
            launches += 1
        if not active:
            break
        for runner in list(active):
            runner.step()
            if runner.done:
                runner.thread.join()
                active.remove(runner)
                if runner.error is not None:
                    raise runner.error
    result = {**summarize(study, spec.tuning.search_space),
              **sweep_totals(study.get_trials(deepcopy=False), spec)}
    result["seconds"] = round(time.time() - started, 1)
    return result


def validation_examples(job: Path) -> int:
    from kubetrain.api import load_training_job
    from kubetrain.data import load_dataset, split_dataset

    spec = load_training_job(job).spec
    return len(split_dataset(load_dataset(spec.dataset, base_dir=Path.cwd()), spec.dataset).val[1])


# --- process sweeps (`kubetrain run`) ----------------------------------------------------

def sweep_processes(job: Path, folder: Path) -> dict[str, Any]:
    out = folder / "status.yaml"
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "kubetrain.cli", "run", str(job), "--storage",
         str(folder / "storage"), "--no-progress", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{job}: the job failed ({done.returncode}): {done.stderr[-2000:]}")
    tuning = yaml.safe_load(out.read_text())["status"]["tuning"]
    return {"best": tuning.get("best"), "epochs_run": tuning["epochsRun"],
            "epochs_saved_by_pruning": tuning["epochsSavedByPruning"],
            "trials": tuning["trials"], "seconds": round(time.time() - started, 1)}


def run_sweep(unit: str, label: str, seed: int, job: Path) -> dict[str, Any]:
    sweep = sweep_in_process if unit == "in-process" else sweep_processes
    result = sweep(job, job.parent)
    return {
        "seed": seed, "arm": label, **ARMS[label][1],
        "best_value": result["best"]["value"] if result["best"] else None,
        "best_params": result["best"]["params"] if result["best"] else None,
        "epochs_run": result["epochs_run"],
        "epochs_saved_by_pruning": result["epochs_saved_by_pruning"],
        "trials": result["trials"],
        "val_examples": validation_examples(job),
        "wall_seconds": result["seconds"],
    }


# --- report --------------------------------------------------------------------------------

def compare(rows: list[dict[str, Any]], seeds: list[int], arm: str) -> dict[str, Any]:
    """Per seed: epochs ratio and best-value difference (``arm`` - random); the means."""
    by = {(r["seed"], r["arm"]): r for r in rows}
    per_seed = []
    for seed in seeds:
        pruned, base = by[seed, arm], by[seed, BASELINE_ARM]
        diff = pruned["best_value"] - base["best_value"]
        n_val = base["val_examples"]
        per_seed.append({
            "seed": seed, "epochs_ratio": round(pruned["epochs_run"] / base["epochs_run"], 3),
            "best_value_difference": round(diff, 4),
            "difference_examples": round(diff * n_val, 1),
        })
    n_val = rows[0]["val_examples"]
    tolerance = 1 / n_val
    mean_diff = statistics.fmean(s["best_value_difference"] for s in per_seed)
    mean_ratio = statistics.fmean(s["epochs_ratio"] for s in per_seed)
    pooled = (sum(by[s, arm]["epochs_run"] for s in seeds)
              / sum(by[s, BASELINE_ARM]["epochs_run"] for s in seeds))
    return {
        "arm": arm, "per_seed": per_seed, "val_examples": n_val,
        "tolerance": round(tolerance, 4),
        "mean_best": {a: round(statistics.fmean(by[s, a]["best_value"] for s in seeds), 4)
                      for a in (arm, BASELINE_ARM)},
        "mean_best_value_difference": round(mean_diff, 4),
        "mean_epochs_ratio": round(mean_ratio, 4),
        "pooled_epochs_ratio": round(pooled, 4),
        "same_best_value": mean_diff >= -tolerance - 1e-9,
        "goal_met": mean_diff >= -tolerance - 1e-9 and mean_ratio <= GOAL_RATIO,
    }


def print_report(rows: list[dict[str, Any]], seeds: list[int],
                 verdicts: list[dict[str, Any]], args: argparse.Namespace,
                 seconds: float) -> None:
    print(f"{args.trials} trials, parallelism {args.parallelism}, {args.epochs} epochs per "
          f"trial, {args.unit}; digits MLP, objective val_accuracy; seeds "
          f"{' '.join(map(str, seeds))}; {seconds:.0f} s")
    print(f"{'seed':>5} {'arm':<14} {'best':>7} {'epochs':>7} {'complete':>8} {'pruned':>6} "
          f"{'failed':>6} {'wall s':>7}")
    for row in rows:
        best = f"{row['best_value']:.4f}" if row["best_value"] is not None else "-"
        t = row["trials"]
        print(f"{row['seed']:>5} {row['arm']:<14} {best:>7} {row['epochs_run']:>7} "
              f"{t['complete']:>8} {t['pruned']:>6} {t['failed']:>6} {row['wall_seconds']:>7}")
    for verdict in verdicts:
        arm = verdict["arm"]
        print(f"--- {arm} against {BASELINE_ARM}")
        print(f"{'seed':>5} {'epochs ratio':>12} {'best diff':>10} {'examples':>8}")
        for s in verdict["per_seed"]:
            print(f"{s['seed']:>5} {s['epochs_ratio']:>12.0%} "
                  f"{s['best_value_difference']:>+10.4f} {s['difference_examples']:>+8.0f}")
        print(f"mean best: {arm} {verdict['mean_best'][arm]:.4f}, {BASELINE_ARM} "
              f"{verdict['mean_best'][BASELINE_ARM]:.4f} "
              f"({verdict['mean_best_value_difference']:+.4f}; tolerance "
              f"{verdict['tolerance']:.4f} = 1 of {verdict['val_examples']} validation "
              f"examples); epochs ratio: mean {verdict['mean_epochs_ratio']:.1%}, pooled "
              f"{verdict['pooled_epochs_ratio']:.1%}")
        print(f"same best value: {verdict['same_best_value']}; goal (same best value, <= "
              f"{GOAL_RATIO:.0%} of the epochs) met: {verdict['goal_met']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20, help="epochs per trial")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(0, 800, 100)))
    parser.add_argument("--unit", choices=["in-process", "process"], default="in-process")
    parser.add_argument("--jobs", type=int, default=2,
                        help="in-process sweeps at a time (each on one core)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--arm", choices=sorted(ARMS), action="append",
                        help="run only this arm (repeatable; default: all)")
    args = parser.parse_args(argv)
    arms = [label for label in ARMS if not args.arm or label in args.arm]

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-tune-") as tmp:
        tasks = []
        for seed in args.seeds:
            for label in arms:
                name, arm = ARMS[label]
                folder = Path(tmp) / f"{name}-{seed}"
                folder.mkdir(parents=True)
                job = folder / "job.yaml"
                job.write_text(yaml.safe_dump(manifest(name, arm, seed, args), sort_keys=False))
                tasks.append((args.unit, label, seed, job))
        if args.unit == "in-process":
            with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn"),
                                     initializer=_worker_init) as pool:
                rows = list(pool.map(run_sweep, *zip(*tasks, strict=True)))
        else:
            rows = [run_sweep(*task) for task in tasks]
    seconds = time.time() - started
    verdicts = ([compare(rows, args.seeds, arm) for arm in arms if arm != BASELINE_ARM]
                if BASELINE_ARM in arms else [])
    print_report(rows, args.seeds, verdicts, args, seconds)
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)},
                                         "space": SPACE, "results": rows, "verdicts": verdicts,
                                         "seconds": round(seconds, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
