"""The sweep's Optuna study: samplers, pruners, storage, creation, summaries, orphaned trials.

The study outlives every process (never in memory): a journal file in the job's storage,
written by the study server (``tuning.serve``) that trial units reach through
``GrpcStorageProxy``, or an external database (``tuning.storage``). It is created once, by the
study server (or the Ray sweep), before any trial starts; trial units only load it.
"""

from __future__ import annotations

import importlib.util
import math
import time
import warnings
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ..api.spec import SearchDimension, TrainingJobSpec, TuningSpec
from ..api.status import TrialPoint
from ..findings.tuning import best_by_metric, cheapest_within, pareto_front
from .space import decode_params, grid_search_space

TUNING_DIR = "tuning"
"""The sweep's folder in the job's storage: the journal, the trials table, one folder a trial."""
JOURNAL_FILE = "journal.log"
TRIALS_FILE = "trials.json"

STATE_NAMES = {
    TrialState.RUNNING: "running",
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.WAITING: "waiting",
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class TuningUnavailable(RuntimeError):
    """A sampler or storage the manifest asks for needs a package this image lacks."""


def tuning_dir(storage: Path) -> Path:
    return storage / TUNING_DIR


def journal_path(storage: Path) -> Path:
    return tuning_dir(storage) / JOURNAL_FILE


def trial_epochs(spec: TrainingJobSpec, params: Mapping[str, Any] | None = None) -> int:
    """Epochs one trial trains: a tuned ``epochs``, else epochsPerTrial, else training.epochs."""
    if params and "epochs" in params:
        return int(params["epochs"])
    return spec.tuning.epochs_per_trial or spec.training.epochs


def max_trial_epochs(spec: TrainingJobSpec) -> int:
    """The most epochs any trial can train (the pruners' maximum resource)."""
    dim = spec.tuning.search_space.get("epochs")
    if dim is not None and dim.type != "categorical" and dim.high is not None:
        return max(1, math.floor(dim.high))
    if dim is not None and dim.choices:
        return max(int(c) for c in dim.choices)
    return trial_epochs(spec)


def startup_trials(trials: int) -> int:
    """Random trials before a model-based sampler (tpe, gp) starts: a quarter of the budget,
    at most 10 (Optuna's default of 10 assumes budgets of hundreds of trials)."""
    return max(1, min(10, trials // 4))


def nsga2_population(trials: int) -> int:
    """NSGA-II's generation size: a quarter of the budget, 4 to 50 (Optuna's 50 would make a
    sweep of tens of trials one random generation)."""
    return max(4, min(50, trials // 4))


def _require(sampler: str, *modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise TuningUnavailable(
            f"tuning.sampler {sampler} needs the Python package(s) {', '.join(missing)} in the "
            f"worker image (pip install {' '.join(missing)}); or use another sampler: "
            "grid, random, tpe"
        )


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, minus its ``study.stop()`` once the grid is done: that only
    works inside ``study.optimize`` (a tell from a trial unit raises); the plan runs no more
    trials than the grid has points (``pipeline.plan.target_trials``)."""

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        return None


def make_sampler(spec: TrainingJobSpec, seed: int | None = None) -> BaseSampler:
    """The sampler of ``tuning.sampler``, seeded with ``seed`` (default: dataset.seed).

    Each trial process builds its own sampler: give each a different seed, or parallel
    processes draw the same random start points.
    """
    tuning = spec.tuning
    seed = spec.dataset.seed if seed is None else seed
    startup = startup_trials(tuning.trials)
    if tuning.sampler == "grid":
        # One seed for every trial unit: Optuna shuffles the grid with the sampler's seed and
        # gives trial n the n-th point, so units seeded apart drew the same points twice.
        return _GridSampler(grid_search_space(tuning.search_space), seed=spec.dataset.seed)
    if tuning.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if tuning.sampler == "tpe":
        # constant_liar: running trials count as bad guesses, so parallel trials spread out.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup,
                                          constant_liar=True)
    if tuning.sampler == "cmaes":
        _require("cmaes", "cmaes")
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if tuning.sampler == "gp":
        _require("gp", "scipy", "torch")
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup,
                                         warn_independent_sampling=False)
    if tuning.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed,
                                             population_size=nsga2_population(tuning.trials))
    raise ValueError(f"unknown sampler {tuning.sampler!r}")


def make_pruner(spec: TrainingJobSpec) -> BasePruner:
    """The pruner of ``tuning.pruner``; steps are epochs (1, 2, ...)."""
    tuning = spec.tuning
    if tuning.pruner == "none":
        return optuna.pruners.NopPruner()
    if tuning.pruner == "median":
        # Complete trials to compare with before pruning starts: an eighth of the budget
        # (1 to 5). More protects nothing and costs whole trials (bench/tune_pruning.py).
        return optuna.pruners.MedianPruner(
            n_startup_trials=max(1, min(5, tuning.trials // 8)), n_warmup_steps=1)
    if tuning.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1,
                                              max_resource=max_trial_epochs(spec),
                                              reduction_factor=3)
    if tuning.pruner == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    raise ValueError(f"unknown pruner {tuning.pruner!r}")


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"study server address {address!r} is not HOST:PORT")
    return host, int(port)


# How long a call to the study server waits for it to be reachable. On Kubernetes it is reached
# through a Service that the control plane wires up: a sweep started just before an API-server
# outage had its study Service routed only after the server was back (~45 s later on the 2-core
# test node), and the trials must ride that out (tests/integration/test_control_plane_faults.py).
STUDY_SERVER_WAIT_SECONDS = 180.0


def open_storage(storage_dir: Path, *, study_server: str | None = None,
                 url: str | None = None,
                 wait_seconds: float = STUDY_SERVER_WAIT_SECONDS) -> BaseStorage:
    """The study's storage: the study server when given, else ``url``, else the journal file."""
    if study_server:
        host, port = parse_address(study_server)
        # Imported here: grpc stays out of processes that never reach a study server (the
        # local run's own process among them).
        from .grpc_proxy import StudyServerProxy

        with warnings.catch_warnings():  # experimental in Optuna; chosen knowingly (DESIGN)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            proxy = StudyServerProxy(host=host, port=port, wait_seconds=wait_seconds)
        _wait_for_server(proxy, study_server, wait_seconds)
        return proxy
    if url:
        try:
            return optuna.storages.RDBStorage(url)
        except ImportError as error:
            raise TuningUnavailable(
                f"tuning.storage {url.split(':', 1)[0]}: needs a database driver in the worker "
                f"image ({error}); e.g. pip install psycopg2-binary for postgresql"
            ) from None
    path = journal_path(storage_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = JournalFileBackend(str(path))
    return optuna.storages.JournalStorage(backend)


def _wait_for_server(proxy: BaseStorage, address: str, seconds: float) -> None:
    """A trial pod may start before the study server listens: its first call waits for it (and
    is tried again until ``seconds`` have passed if the server answers with an error)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            proxy.get_all_studies()
            return
        except Exception as error:  # grpc raises its own RpcError subclasses
            if time.monotonic() > deadline:
                raise ConnectionError(f"study server {address} did not answer within "
                                      f"{seconds:.0f} s: {error}") from None
            time.sleep(0.5)


def create_study_once(storage: BaseStorage, name: str, spec: TrainingJobSpec) -> optuna.Study:
    """Create the study, or load it if an earlier run created it (then it continues)."""
    directions = [o.resolved_direction for o in spec.tuning.objective_list]
    study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                load_if_exists=True, sampler=make_sampler(spec),
                                pruner=make_pruner(spec))
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        field = "objectives" if spec.tuning.multi_objective else "objective.direction"
        raise ValueError(f"the stored study {name!r} was made to {', '.join(stored)}, but "
                         f"tuning.{field} says {', '.join(directions)}; remove the stored "
                         "study or rename the job")
    return study


def load_study(storage: BaseStorage, name: str, spec: TrainingJobSpec,
               seed: int) -> optuna.Study:
    """Load the study made by ``create_study_once``, with a sampler seeded with ``seed`` (a
    trial's: ``pipeline.plan.trial_seed``)."""
    return optuna.load_study(study_name=name, storage=storage,
                             sampler=make_sampler(spec, seed), pruner=make_pruner(spec))


def state_name(state: TrialState) -> str:
    return STATE_NAMES.get(state, state.name.lower())


def epochs_run(trial: FrozenTrial) -> int:
    """Epochs a trial trained: as it reported, or its last reported epoch if it was killed."""
    recorded = trial.user_attrs.get("epochs_run")
    if isinstance(recorded, int):
        return recorded
    return max(trial.intermediate_values, default=0)


def trial_seconds(trial: FrozenTrial) -> float:
    """Wall seconds of a trial: as its process measured them, else from the study's clock."""
    recorded = trial.user_attrs.get("seconds")
    if isinstance(recorded, int | float):
        return float(recorded)
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return 0.0


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """Trials by state (the status's ``tuning.trials``)."""
    result = {"total": len(trials), "running": 0, "complete": 0, "pruned": 0, "failed": 0}
    for trial in trials:
        name = state_name(trial.state)
        if name in result:
            result[name] += 1
    return result


def metric_index(tuning: TuningSpec) -> int:
    """The position of the metric objective among the study's values (0 with one)."""
    names = [o.name for o in tuning.objective_list]
    return names.index(tuning.metric_objective.metric)


def best_trial(study: optuna.Study, space: Mapping[str, SearchDimension] | None = None
               ) -> dict[str, Any] | None:
    """The best complete trial of a single-objective study: {trial, params, value}, or None
    while there is none."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    return {"trial": best.number, "params": decode_params(space or {}, best.params),
            "value": best.value}


def importances(study: optuna.Study, complete: int, index: int = 0) -> dict[str, float]:
    """Parameter importances for the objective at ``index`` over the complete trials (needs
    two at least)."""
    if complete < 2:
        return {}
    target = None
    if len(study.directions) > 1:
        # A target is read as "smaller is better": turn a maximized objective around.
        sign = -1.0 if study.directions[index] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        target = lambda t: sign * t.values[index]  # noqa: E731
    try:
        with warnings.catch_warnings():  # that note about the target's sign: taken care of
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator")
            found = optuna.importance.get_param_importances(study, target=target)
    except (RuntimeError, ValueError):  # e.g. every complete trial has the same params
        return {}
    return {name: round(float(value), 4) for name, value in found.items()}


def trial_point(trial: FrozenTrial, tuning: TuningSpec) -> TrialPoint | None:
    """A complete trial with its objective values, cost and training seconds; None for any
    other trial."""
    if trial.state != TrialState.COMPLETE or trial.values is None:
        return None
    names = [o.name for o in tuning.objective_list]
    cost, seconds = trial.user_attrs.get("cost"), trial.user_attrs.get("train_seconds")
    return TrialPoint(trial=trial.number, params=decode_params(tuning.search_space, trial.params),
                      values=dict(zip(names, trial.values, strict=True)),
                      cost=cost if isinstance(cost, int | float) else None,
                      train_seconds=seconds if isinstance(seconds, int | float) else None)


def objectives_summary(trials: Sequence[FrozenTrial], tuning: TuningSpec) -> dict[str, Any]:
    """Several objectives: the Pareto front, the selected trial (``best``, which trains the
    final model) and what the selection saved against the trial with the best metric."""
    points = [p for t in trials if (p := trial_point(t, tuning)) is not None]
    metric = tuning.metric_objective
    objectives = [(o.name, o.resolved_direction) for o in tuning.objective_list]
    front = pareto_front(points, objectives)
    selection = (cheapest_within(points, metric.metric, metric.direction,
                                 tuning.selection.cheapest_within)
                 if tuning.selection is not None else None)
    chosen = (next(p for p in points if p.trial == selection.trial) if selection is not None
              else best_by_metric(points, metric.metric, metric.direction))
    best = None if chosen is None else {"trial": chosen.trial, "params": chosen.params,
                                        "value": chosen.values[metric.metric]}
    return {"objectives": [name for name, _ in objectives],
            "pareto_front": [_rounded(p.model_dump()) for p in front],
            "selection": _rounded(selection.model_dump()) if selection is not None else None,
            "best": best}


def _rounded(data: dict[str, Any]) -> dict[str, Any]:
    """Numbers to 6 significant digits (a trial's cost may be a few millionths), once, for
    status; the selection was made on the exact values."""
    def six(value: Any) -> Any:
        if isinstance(value, float):
            return float(f"{value:.6g}")
        if isinstance(value, dict) and value is not data.get("params"):
            return {k: six(v) for k, v in value.items()}
        return value
    return {k: six(v) for k, v in data.items()}


def summarize(study: optuna.Study, space: Mapping[str, SearchDimension] | None = None,
              tuning: TuningSpec | None = None) -> dict[str, Any]:
    """Trials by state, the best trial and parameter importances; with several objectives
    (``tuning``), also the Pareto front and the selection."""
    trials = study.get_trials(deepcopy=False)
    by_state = counts(trials)
    if tuning is None or not tuning.multi_objective:
        return {"trials": by_state, "best": best_trial(study, space),
                "importances": importances(study, by_state["complete"])}
    return {"trials": by_state, **objectives_summary(trials, tuning),
            "importances": importances(study, by_state["complete"], metric_index(tuning))}


def trial_row(trial: FrozenTrial, space: Mapping[str, SearchDimension] | None = None,
              tuning: TuningSpec | None = None) -> dict[str, Any]:
    """One line of the trials table: ``value`` is the metric objective's; with several
    objectives ``values`` has each one's."""
    index = metric_index(tuning) if tuning is not None else 0
    row = {"number": trial.number, "state": state_name(trial.state),
           "params": decode_params(space or {}, trial.params),
           "value": trial.values[index] if trial.values else None,
           "epochs": epochs_run(trial), "seconds": round(trial_seconds(trial), 3)}
    if tuning is not None and tuning.multi_objective and trial.values:
        row["values"] = dict(zip([o.name for o in tuning.objective_list], trial.values,
                                 strict=True))
    for attr in ("cost", "train_seconds"):
        if isinstance(trial.user_attrs.get(attr), int | float):
            row[attr] = trial.user_attrs[attr]
    return row


def sweep_totals(trials: Sequence[FrozenTrial], spec: TrainingJobSpec) -> dict[str, Any]:
    """Epochs trained, epochs pruning saved and trial seconds, over every trial of the study."""
    run = sum(epochs_run(t) for t in trials)
    saved = 0
    for trial in trials:
        if trial.state == TrialState.PRUNED:
            planned = trial.user_attrs.get("epochs_planned")
            if not isinstance(planned, int):
                planned = trial_epochs(spec, decode_params(spec.tuning.search_space,
                                                           trial.params))
            saved += max(0, planned - epochs_run(trial))
    return {"epochs_run": run, "epochs_saved_by_pruning": saved,
            "trial_seconds": round(sum(trial_seconds(t) for t in trials), 3)}


def fail_orphaned_trials(study: optuna.Study, alive_numbers: Collection[int]) -> list[int]:
    """Fail every running trial that no live process runs (killed, or its pod died).

    Without this a killed trial stays RUNNING for ever: pruners and samplers keep counting it
    and a rerun never reaches the trial budget.
    """
    orphaned = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.number not in alive_numbers]
    for number in orphaned:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    return orphaned
