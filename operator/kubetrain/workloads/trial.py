"""One trial of a sweep: ``python -m kubetrain.workloads.trial`` (a local process or a pod).

It loads the study (created beforehand by the study server) with a sampler seeded with
``--sampler-seed`` (each trial unit its own: ``pipeline.plan.trial_seed``), asks it for one
trial, says which trial it owns (a ``trial`` event, first), trains in-process with that trial's
hyperparameters, reporting the objective after every epoch so that the pruner can stop it, and
tells the study how it ended: complete (the objective at the best epoch), pruned or failed.

Exit code: 0 when the trial completed or was pruned, 143 when terminated, 1 when it failed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

import optuna
from optuna.trial import TrialState

from ..api import load_training_job
from ..api.spec import TrainingJobSpec
from ..data import DatasetError
from ..launcher import cancel
from ..pipeline.costing import trial_cost
from ..report import EXECUTOR_PID_ENV, SPEC_PROBLEM_EXIT, Reporter, default_result_path
from ..tuning.space import decode_params, distributions
from ..tuning.study import (
    TUNING_DIR,
    load_study,
    metric_index,
    open_storage,
    state_name,
    trial_epochs,
)
from ..usage import USAGE_FILE
from . import script, train
from .acceleration import AccelerationError
from .args import add_common_arguments

RESULT_FILE = "trial.json"


class Terminated(BaseException):
    """SIGTERM outside the training loop (which handles it itself)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetrain.workloads.trial",
                                     description="kubetrain tuning trial work unit")
    add_common_arguments(parser,
                         result_default=f"<storage>/{TUNING_DIR}/trial-N/{RESULT_FILE}")
    parser.add_argument("--study", required=True, help="study name (created beforehand)")
    parser.add_argument("--study-server", default=None, metavar="HOST:PORT",
                        help="reach the study through this study server (GrpcStorageProxy)")
    parser.add_argument("--sampler-seed", type=int, required=True,
                        help="seed of this process's sampler; the plan gives each trial its own "
                             "(pipeline.plan.trial_seed), so parallel trials never draw alike")
    return parser.parse_args(argv)


def trial_unit(number: int) -> str:
    """The trial's folder in storage, relative to it (checkpoints, history, model)."""
    return f"{TUNING_DIR}/trial-{number}"


def training_args(job: Path, storage: Path, number: int, params: dict[str, Any], epochs: int,
                  base_dir: Path, data_root: Path | None,
                  workdir: Path | None = None,
                  program_dir: Path | None = None) -> argparse.Namespace:
    """The training work unit's arguments for one trial (it runs in-process)."""
    unit = trial_unit(number)
    return argparse.Namespace(
        job=job, storage=storage, unit=unit, fold=None, params=json.dumps(params),
        # A tuned `epochs` is in params already; --epochs would override it.
        epochs=None if "epochs" in params else epochs,
        result=storage / unit / "result.json", base_dir=base_dir, data_root=data_root,
        workdir=workdir, program_dir=program_dir, remediation=None,
    )


def objective_value(summary: dict[str, Any], metric: str, direction: str) -> float | None:
    """The objective at the trial's best epoch (from its history), None if never finite."""
    try:
        history = json.loads(Path(summary["history"]).read_text())
    except (KeyError, OSError, json.JSONDecodeError):
        history = []
    values = [float(h[metric]) for h in history
              if isinstance(h.get(metric), int | float) and math.isfinite(h[metric])]
    if not values:
        return None
    return max(values) if direction == "maximize" else min(values)


def objective_values(spec: TrainingJobSpec, summary: dict[str, Any]
                     ) -> tuple[list[float] | None, str | None]:
    """The trial's value of each objective, in the spec's order; or None and why not.

    A metric: its best epoch's value; trainSeconds: the seconds of its epochs (the run's, for
    a program that reports none); cost: those seconds at the trial unit's requests and the
    job's prices: what training this configuration costs. (The trial unit's whole cost,
    process start and data loading included, is the unit's cost in status.)"""
    values: list[float] = []
    for objective in spec.tuning.objective_list:
        if objective.name == "cost":
            cost = trial_cost(spec, train_seconds(summary))
            if cost is None:
                return None, "cost: the plan has no trial unit to price"
            values.append(cost)
        elif objective.name == "trainSeconds":
            values.append(train_seconds(summary))
        else:
            value = objective_value(summary, objective.name, objective.resolved_direction)
            if value is None:
                return None, (f"{objective.name} was never finite "
                              f"({summary.get('stop_reason') or 'diverged'})")
            values.append(value)
    return values, None


def train_seconds(summary: dict[str, Any]) -> float:
    """Seconds the training spent in its epochs (the whole run's when it reports none)."""
    epochs = summary.get("epoch_seconds")
    if isinstance(epochs, list) and epochs:
        return round(float(sum(epochs)), 4)
    return float(summary.get("seconds") or 0.0)


def die_with_parent() -> None:
    """Under a local executor (``EXECUTOR_PID_ENV``): get SIGTERM when it dies, even by SIGKILL."""
    parent = os.environ.get(EXECUTOR_PID_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if str(os.getppid()) != parent:  # it died before prctl took effect
        raise Terminated


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        die_with_parent()
    except Terminated:
        return 143
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        spec: TrainingJobSpec = load_training_job(args.job).spec
        storage = open_storage(args.storage, study_server=args.study_server,
                               url=spec.tuning.storage)
        study = load_study(storage, args.study, spec, seed=args.sampler_seed)
        trial = study.ask(distributions(spec.tuning.search_space))
        return run_trial(spec, args, study, trial, started)
    finally:
        cancel(args.program_dir)  # a program container waiting for a launch that never came


def run_trial(spec: TrainingJobSpec, args: argparse.Namespace, study: optuna.Study,
              trial: optuna.Trial, started: float) -> int:
    number = trial.number
    params = decode_params(spec.tuning.search_space, trial.params)
    planned = trial_epochs(spec, params)
    unit_dir = args.storage / trial_unit(number)
    reporter = Reporter(args.result or default_result_path() or unit_dir / RESULT_FILE,
                        usage_series=unit_dir / USAGE_FILE)
    # First, so whoever started this process knows which trial it owns (to fail it if we die).
    reporter.event("trial", number=number, params=params, state="running", pid=os.getpid())
    trial.set_user_attr("epochs_planned", planned)
    objective = spec.tuning.metric_objective
    # Optuna prunes single-objective studies only (the spec refuses a pruner with several).
    prunable = not spec.tuning.multi_objective
    metrics_needed = [o.name for o in spec.tuning.objective_list if o.is_metric]
    reported: list[int] = []

    def on_epoch(metrics: dict[str, float]) -> bool:
        for metric in metrics_needed:
            if metric not in metrics:
                raise KeyError(f"tuning objective {metric} is not among the metrics this "
                               f"training reports: {', '.join(sorted(metrics))}")
        reported.append(int(metrics["epoch"]))
        if not prunable:
            return False
        trial.report(float(metrics[objective.metric]), int(metrics["epoch"]))
        # Pruning after the last epoch saves nothing: the trial has run; let it complete.
        return int(metrics["epoch"]) < planned and trial.should_prune()

    state, error, epochs_run = TrialState.FAIL, None, 0
    values: list[float] | None = None
    summary: dict[str, Any] = {}
    code, problems = 1, []
    try:
        # The built-in trainer in-process, or the user's program (training.command) as a child.
        trainer = script.run if spec.custom else train.run
        summary = trainer(training_args(args.job, args.storage, number, params, planned,
                                        args.base_dir, args.data_root, args.workdir,
                                        args.program_dir),
                          on_epoch)
        epochs_run = int(summary.get("epochs_run") or 0)
        if summary.get("status") == "terminated":
            error, code = "terminated", 143
        elif summary.get("status") == "failed":
            error = str(summary.get("message") or "the training command failed")
        elif summary.get("stop_reason") == "pruned":
            state, code = TrialState.PRUNED, 0
        else:
            state, code = TrialState.COMPLETE, 0  # once its objectives are known (below)
    except Terminated:
        error, code = "terminated", 143
    except (DatasetError, train.SpecProblem, AccelerationError) as exc:
        # The data (or the device) refuses the spec whatever the trial's parameters: the job
        # is Invalid. (A model that does not fit is a failed trial: the parameters may be the
        # cause.)
        problems = [f"spec.{exc}" if isinstance(exc, DatasetError) else str(exc)]
        error, code = problems[0], SPEC_PROBLEM_EXIT
    except Exception as exc:
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
    epochs_run = epochs_run or len(reported)
    # A second SIGTERM must not cut the study's journal write in half.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    seconds = round(time.time() - started, 3)
    cost = trial_cost(spec, train_seconds(summary)) if summary else None
    if state == TrialState.COMPLETE:
        values, error = objective_values(spec, summary)
        if values is None:
            state, code = TrialState.FAIL, 1
    trial.set_user_attr("epochs_run", epochs_run)
    trial.set_user_attr("seconds", seconds)
    if cost is not None:
        trial.set_user_attr("cost", cost)
    if summary:
        trial.set_user_attr("train_seconds", train_seconds(summary))
    if error:
        trial.set_user_attr("error", error[:500])
    frozen = study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
    told = frozen.values or []
    value = told[metric_index(spec.tuning)] if told else None
    fields: dict[str, Any] = {"trial": number, "state": state_name(frozen.state),
                              "value": value, "params": params, "epochs_run": epochs_run,
                              "seconds": seconds, "cost": cost}
    if spec.tuning.multi_objective and told:
        fields["values"] = dict(zip([o.name for o in spec.tuning.objective_list], told,
                                    strict=True))
    if summary:
        fields["train_seconds"] = train_seconds(summary)
    if error:
        fields["error"] = error[:500]
    if problems:
        fields["problems"] = problems
    if summary.get("tracking_warnings"):
        fields["tracking_warnings"] = summary["tracking_warnings"]
    reporter.event("trial", number=number, state=fields["state"], value=value,
                   params=params, epoch=epochs_run, **({"error": fields["error"]} if error
                                                      else {}))
    reporter.result(fields)
    return code


if __name__ == "__main__":
    sys.exit(main())
