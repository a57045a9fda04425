"""The tuning stage's own work unit: ``python -m kubetrain.workloads.tune``.

With the optuna backend the trials are units of their own (``kubetrain.workloads.trial``),
started and replaced by the stage engine, and this unit runs once after the last of them with
``--summarize``: it fails the trials the study still holds as RUNNING (their processes or pods
are gone: killed, lost with a node) and reports the sweep's summary: trials by state, the best
trial, importances, epochs trained and saved by pruning, and the trials table in
``<storage>/tuning/trials.json``. It reaches the study through ``--study-server`` (the study
server unit), or the journal file in storage (or ``tuning.storage``) when none is given.

With ``backend: ray`` it is the whole sweep in one unit: Ray Tune runs ``target_trials`` trials
(``tune_ray``), counting those an earlier run left in the study, so a rerun continues it.
Events: ``start``; a ``trial`` event whenever a trial starts, ends an epoch or finishes
({number, state, value, params, epoch, counts, best}); then ``result``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import optuna

from ..api import load_training_job
from ..api.spec import TrainingJobSpec
from ..pipeline.plan import SUMMARY_UNIT, target_trials
from ..report import Reporter, default_result_path, write_json_atomic
from ..tracking import UnitRun, UnitTracker
from ..tracking.naming import sweep_params
from ..tracking.records import sweep_record
from ..tuning.study import (
    TRIALS_FILE,
    create_study_once,
    fail_orphaned_trials,
    finished_count,
    journal_path,
    open_storage,
    summarize,
    sweep_totals,
    trial_epochs,
    trial_row,
    tuning_dir,
)
from .args import add_common_arguments

RAY_UNIT = "tune"
EXIT_USAGE = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetrain.workloads.tune",
                                     description="kubetrain tuning unit: the sweep's summary "
                                                 "(--summarize), or a Ray Tune sweep")
    add_common_arguments(parser, result_default="<storage>/<tune-summary|tune>/result.json",
                         storage_help="the job's storage directory (the study is in tuning/)")
    parser.add_argument("--study-server", default=None, metavar="HOST:PORT",
                        help="reach the study through a study server (with --summarize)")
    parser.add_argument("--summarize", action="store_true",
                        help="run no trials: fail trials left running by trial units that are "
                             "gone and report the sweep's summary (after the last trial)")
    return parser.parse_args(argv)


def _storage_label(spec: TrainingJobSpec, storage: Path) -> str:
    if spec.tuning.storage:  # a URL may carry a password: name only its kind
        return spec.tuning.storage.split(":", 1)[0]
    return str(journal_path(storage))


def write_trials_table(study: optuna.Study, spec: TrainingJobSpec, storage: Path) -> Path:
    """Every trial of the study (number, state, params, value, epochs, seconds) as JSON."""
    path = tuning_dir(storage) / TRIALS_FILE
    write_json_atomic(path, [trial_row(t, spec.tuning.search_space, spec.tuning)
                             for t in study.get_trials(deepcopy=False)])
    return path


def summary(study: optuna.Study, spec: TrainingJobSpec, args: argparse.Namespace, unit: str,
            status: str, started: float) -> dict[str, Any]:
    """The sweep's result: trials by state, best trial, importances, epochs and seconds."""
    trials = study.get_trials(deepcopy=False)
    table = write_trials_table(study, spec, args.storage)
    return {
        "unit": unit, "status": status, "backend": spec.tuning.backend,
        "study": study.study_name,
        "storage": _storage_label(spec, args.storage),
        "objective": {"metric": spec.tuning.metric_objective.metric,
                      "direction": spec.tuning.metric_objective.direction},
        **summarize(study, spec.tuning.search_space, spec.tuning),
        **sweep_totals(trials, spec),
        "trials_table": str(table),
        "seconds": round(time.time() - started, 3),
    }


def summarize_sweep(study: optuna.Study, spec: TrainingJobSpec, args: argparse.Namespace,
                    started: float) -> dict[str, Any]:
    """After the last trial unit: fail the orphans, then the summary (failed without a best)."""
    # Every trial unit has ended: a trial still RUNNING lost its process or pod.
    orphaned = fail_orphaned_trials(study, alive_numbers=())
    result = summary(study, spec, args, SUMMARY_UNIT, "succeeded", started)
    result["orphaned_failed"] = orphaned
    if result["best"] is None:
        result["status"] = "failed"
        result["message"] = "no trial completed; see the trial units' logs"
    return result


def ray_sweep(study: optuna.Study, spec: TrainingJobSpec, args: argparse.Namespace,
              reporter: Reporter, started: float) -> dict[str, Any]:
    """The whole sweep through Ray Tune, up to ``target_trials`` finished trials in the study."""
    from .tune_ray import TrialEvents, run_ray_sweep  # Ray is heavy: import it only when asked

    # Nothing runs yet: a trial still RUNNING belongs to a run that was killed.
    orphaned = fail_orphaned_trials(study, alive_numbers=())
    target = target_trials(spec)
    reporter.event("start", unit=RAY_UNIT, backend=spec.tuning.backend, study=study.study_name,
                   sampler=spec.tuning.sampler, pruner=spec.tuning.pruner, trials=target,
                   parallelism=spec.tuning.parallelism, epochs=trial_epochs(spec),
                   finished=finished_count(study), orphaned_failed=orphaned)
    events = TrialEvents(study, spec, reporter)
    interrupted = run_ray_sweep(spec, args, study.study_name, study, events,
                                target - finished_count(study))
    fail_orphaned_trials(study, alive_numbers=())
    result = summary(study, spec, args, RAY_UNIT, "succeeded", started)
    if interrupted:
        result["status"] = "terminated"
    elif result["best"] is None:
        result["status"] = "failed"
        result["message"] = "no trial completed; see the trials table and tuning/ray"
    return result


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    job = load_training_job(args.job)
    spec = job.spec
    if not args.summarize and spec.tuning.backend != "ray":
        print(f"tune: backend {spec.tuning.backend} runs each trial as a unit of its own "
              "(python -m kubetrain.workloads.trial); this unit runs after them with "
              "--summarize", file=sys.stderr)
        return EXIT_USAGE
    unit = SUMMARY_UNIT if args.summarize else RAY_UNIT
    reporter = Reporter(args.result or default_result_path()
                        or args.storage / unit / "result.json")
    storage = open_storage(args.storage, study_server=args.study_server,
                           url=spec.tuning.storage)
    study = create_study_once(storage, job.metadata.name, spec)
    # The sweep's parent run: the trials' runs are its children.
    tracker = UnitTracker.open(spec, UnitRun(job.metadata.name, "tuning", "sweep"),
                               args.storage)
    tracker.start(sweep_params(spec))
    if args.summarize:
        result = summarize_sweep(study, spec, args, started)
    else:
        result = ray_sweep(study, spec, args, reporter, started)
    if result.get("message"):
        print(f"tuning failed: {result['message']}", file=sys.stderr)
    tracker.finish(sweep_record(spec, result))
    reporter.result(tracker.report_into(result))
    return {"succeeded": 0, "terminated": 143}.get(result["status"], 1)


if __name__ == "__main__":
    sys.exit(main())
