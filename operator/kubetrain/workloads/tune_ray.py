"""``tuning.backend: ray``: the sweep through Ray Tune, on a Ray instance started here.

Ray Tune runs each trial in a Ray worker (training in-process, the objective reported after
every epoch), keeps ``parallelism`` of them going and stops unpromising ones with ASHA. The
suggestions come from the same persistent Optuna study as the optuna backend (same storage,
sampler and seed) through ``StudySearcher``, a Ray ``Searcher`` over that study. It stands in
for ``ray.tune.search.optuna.OptunaSearch``, which tells the study that a trial ASHA stopped is
COMPLETE with its last value (the study should say PRUNED) and records the last epoch's value
instead of the best epoch's. With the searcher here, counts, best trial, trials table and a
rerun that continues the study mean the same for both backends.
"""

from __future__ import annotations

import argparse
import math
import signal
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from ..api.spec import TrainingJobSpec
from ..pipeline.plan import trial_seed
from ..report import Reporter
from ..tuning.space import decode_params, distributions
from ..tuning.study import (
    best_trial,
    counts,
    make_sampler,
    max_trial_epochs,
    state_name,
    trial_epochs,
    tuning_dir,
)
from . import train
from .trial import objective_value, training_args

METRIC = "objective"


class TrialEvents:
    """``trial`` events, each with the study's counts and best trial (the live table)."""

    def __init__(self, study: optuna.Study, spec: TrainingJobSpec, reporter: Reporter) -> None:
        self.study = study
        self.spec = spec
        self.reporter = reporter
        self.counts: dict[str, int] = {}
        self.best: dict[str, Any] | None = None
        self.refresh()

    def refresh(self) -> None:
        self.counts = counts(self.study.get_trials(deepcopy=False))
        self.best = best_trial(self.study, self.spec.tuning.search_space) \
            if self.counts["complete"] else None

    def trial(self, number: int, state: str, *, params: dict[str, Any], value: Any = None,
              epoch: int | None = None, refresh: bool = False, **extra: Any) -> None:
        if refresh:
            self.refresh()
        self.reporter.event("trial", number=number, state=state, value=value, params=params,
                            epoch=epoch, counts=self.counts, best=self.best, **extra)


@dataclass
class _Suggested:
    trial: optuna.Trial
    params: dict[str, Any]
    planned: int
    values: list[float] = field(default_factory=list)


class StudySearcher(Searcher):
    """Ray Tune's suggestions from the Optuna study, and the trials' outcomes back into it."""

    def __init__(self, study: optuna.Study, spec: TrainingJobSpec, events: TrialEvents,
                 mode: str) -> None:
        super().__init__(metric=METRIC, mode=mode)
        self.study = study
        self.spec = spec
        self.events = events
        self.space = spec.tuning.search_space
        self.distributions = distributions(self.space)
        self.trials: dict[str, _Suggested] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        trial = self.study.ask(self.distributions)
        params = decode_params(self.space, trial.params)
        planned = trial_epochs(self.spec, params)
        trial.set_user_attr("epochs_planned", planned)
        self.trials[trial_id] = _Suggested(trial, params, planned)
        self.events.trial(trial.number, "running", params=params, epoch=0, refresh=True)
        return {"number": trial.number, "params": params, "epochs": planned}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id not in self.trials or result.get("completed"):
            return
        suggested = self.trials[trial_id]
        value, epoch = float(result[METRIC]), int(result["epoch"])
        suggested.trial.report(value, epoch)
        suggested.values.append(value)
        self.events.trial(suggested.trial.number, "running", params=suggested.params,
                          value=value, epoch=epoch)

    def _outcome(self, suggested: _Suggested, result: dict[str, Any] | None,
                 error: bool) -> tuple[TrialState, float | None]:
        if error or not result:
            return TrialState.FAIL, None
        if result.get("completed"):  # the function returned: its value is the best epoch's
            value = float(result[METRIC])
        elif int(result.get("epoch") or 0) >= suggested.planned and suggested.values:
            # Stopped after its last epoch: nothing was saved, the trial ran to its end.
            finite = [v for v in suggested.values if math.isfinite(v)]
            value = (max if self.mode == "max" else min)(finite) if finite else math.nan
        else:
            return TrialState.PRUNED, None
        return (TrialState.COMPLETE, value) if math.isfinite(value) else (TrialState.FAIL, None)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if trial_id not in self.trials:
            return
        suggested = self.trials.pop(trial_id)
        state, value = self._outcome(suggested, result, error)
        epochs = int((result or {}).get("epochs_run") or (result or {}).get("epoch") or 0)
        trial = suggested.trial
        trial.set_user_attr("epochs_run", epochs)
        if result and isinstance(result.get("time_total_s"), int | float):
            trial.set_user_attr("seconds", round(float(result["time_total_s"]), 3))
        frozen = self.study.tell(trial, value, state=state)
        self.events.trial(frozen.number, state_name(frozen.state), params=suggested.params,
                          value=frozen.value, epoch=epochs, refresh=True)


def ray_trial(config: dict[str, Any], settings: dict[str, Any]) -> None:
    """One trial inside a Ray worker: train in-process, report the objective every epoch."""
    from ray import tune

    metric = settings["metric"]

    def on_epoch(metrics: dict[str, float]) -> bool:
        if metric not in metrics:
            raise KeyError(f"tuning.objective.metric {metric} is not among the metrics this "
                           f"training reports: {', '.join(sorted(metrics))}")
        tune.report({METRIC: float(metrics[metric]), "epoch": int(metrics["epoch"])})
        return False  # ASHA stops the trial from outside

    args = training_args(Path(settings["job"]), Path(settings["storage"]), int(config["number"]),
                         dict(config["params"]), int(config["epochs"]),
                         Path(settings["base_dir"]),
                         Path(settings["data_root"]) if settings["data_root"] else None)
    summary = train.run(args, on_epoch)
    value = objective_value(summary, metric, settings["direction"])
    epochs = int(summary.get("epochs_run") or 0)
    tune.report({METRIC: math.nan if value is None else value, "epoch": epochs,
                 "epochs_run": epochs, "completed": 1})


def run_ray_sweep(spec: TrainingJobSpec, args: argparse.Namespace, name: str,
                  study: optuna.Study, events: TrialEvents, trials: int) -> bool:
    """Run ``trials`` more trials through Ray Tune; True if interrupted (SIGTERM, Ctrl-C)."""
    if trials <= 0:
        return False
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    tuning = spec.tuning
    mode = "max" if tuning.objective.direction == "maximize" else "min"
    # This unit is the only process that samples: one sampler for the whole run, seeded as the
    # first trial it draws would be (a rerun that continues the study draws new points).
    study.sampler = make_sampler(spec, trial_seed(spec.dataset.seed,
                                                  len(study.get_trials(deepcopy=False))))
    searcher = StudySearcher(study, spec, events, mode)
    # max_t one past the last epoch: ASHA stops a trial that reaches max_t before the function
    # returns, and the function's end is where the trial's model and history are written.
    scheduler = None if tuning.pruner == "none" else ASHAScheduler(
        time_attr="epoch", metric=METRIC, mode=mode, max_t=max_trial_epochs(spec) + 1,
        grace_period=1, reduction_factor=3)
    gpus = 1 if spec.training.resources.gpus_per_node else 0
    # Ray Tune runs trial functions in their own folders: every path must be absolute.
    settings = {"job": str(args.job.resolve()), "storage": str(args.storage.resolve()),
                "base_dir": str(args.base_dir.resolve()),
                "data_root": str(args.data_root.resolve()) if args.data_root else None,
                "metric": tuning.objective.metric, "direction": tuning.objective.direction}
    interrupted = threading.Event()

    def on_sigterm(signum: int, frame: types.FrameType | None) -> None:
        interrupted.set()
        signal.raise_signal(signal.SIGINT)  # Ray Tune stops its trials on SIGINT

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    ray.init(num_cpus=tuning.parallelism, num_gpus=gpus * tuning.parallelism,
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        trainable = tune.with_resources(tune.with_parameters(ray_trial, settings=settings),
                                        {"cpu": 1, "gpu": gpus})
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        num_samples=trials,
                                        max_concurrent_trials=tuning.parallelism),
            run_config=tune.RunConfig(name=name, verbose=0, storage_path=str(
                (tuning_dir(args.storage) / "ray").resolve())),
        )
        tuner.fit()
    except KeyboardInterrupt:
        interrupted.set()
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, previous)
    # Trials suggested but never finished: Ray Tune was stopped (it handles Ctrl-C itself).
    return interrupted.is_set() or bool(searcher.trials)
