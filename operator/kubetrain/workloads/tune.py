"""The sweep driver: ``python -m kubetrain.workloads.tune`` (the local tuning work unit).

It plays locally the part the operator plays with pods: it creates the study once, fails the
trials an earlier, interrupted run left running, then keeps ``parallelism`` trial processes
(``python -m kubetrain.workloads.trial``) going until the study holds ``trials`` finished
trials, counting those of earlier runs: a rerun continues the same study. A trial process that
dies is failed in the study, and the sweep goes on. ``backend: ray`` runs the same sweep through
Ray Tune instead (``tune_ray``).

Events: ``start``; a ``trial`` event whenever a trial starts, ends an epoch or finishes
({number, state, value, params, epoch, counts, best}); ``result``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import optuna

from ..api import load_training_job
from ..api.spec import TrainingJobSpec
from ..tuning.space import grid_size
from ..tuning.study import (
    TRIALS_FILE,
    best_trial,
    counts,
    create_study_once,
    fail_orphaned_trials,
    finished_count,
    journal_path,
    mark_failed,
    open_storage,
    state_name,
    summarize,
    sweep_totals,
    trial_epochs,
    trial_row,
    tuning_dir,
)
from .args import add_common_arguments
from ..report import Reporter, default_result_path, parse_event, write_json_atomic
from .trial import PARENT_ENV

UNIT = "tune"
# Trial processes that die before they own a trial, in a row, before the sweep gives up.
MAX_LAUNCH_FAILURES = 3
STOP_GRACE_SECONDS = 15.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetrain.workloads.tune",
                                     description="kubetrain tuning sweep driver")
    add_common_arguments(parser, result_default=f"<storage>/{UNIT}/result.json",
                         storage_help="the job's storage directory (the study is in tuning/)")
    parser.add_argument("--study-server", default=None, metavar="HOST:PORT",
                        help="reach the study through a study server (with --summarize)")
    parser.add_argument("--summarize", action="store_true",
                        help="run no trials: fail trials left running by dead trial pods and "
                             "report the sweep's summary (the operator's last tuning step)")
    return parser.parse_args(argv)


def target_trials(spec: TrainingJobSpec) -> int:
    """Trials the sweep runs: tuning.trials, or fewer when a grid has fewer points."""
    if spec.tuning.sampler == "grid":
        return min(spec.tuning.trials, grid_size(spec.tuning.search_space))
    return spec.tuning.trials


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
class TrialProcess:
    """One running trial process, from launch to exit."""

    proc: subprocess.Popen[str]
    log_path: Path
    log: TextIO
    number: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    finished: bool = False

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class Sweep:
    """Trial processes kept at ``parallelism`` until the study has enough finished trials."""

    def __init__(self, spec: TrainingJobSpec, args: argparse.Namespace, name: str,
                 study: optuna.Study, events: TrialEvents) -> None:
        self.spec = spec
        self.args = args
        self.name = name
        self.study = study
        self.events = events
        self.target = target_trials(spec)
        self.metric = spec.tuning.objective.metric
        self.running: dict[int, TrialProcess] = {}
        self.lines: queue.Queue[tuple[TrialProcess, str | None]] = queue.Queue()
        self.launches = 0
        self.launch_failures = 0
        self.stopping = False
        self.interrupted = False
        self.seed_base = spec.dataset.seed + len(study.get_trials(deepcopy=False))
        self.logs = tuning_dir(args.storage) / "logs"

    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "kubetrain.workloads.trial",
                   "--job", str(self.args.job), "--storage", str(self.args.storage),
                   "--study", self.name, "--base-dir", str(self.args.base_dir),
                   # A seed per process: the same seed would draw the same random points.
                   "--sampler-seed", str(self.seed_base + self.launches)]
        if self.args.data_root is not None:
            command += ["--data-root", str(self.args.data_root)]
        return command

    def launch(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}
        if self.spec.tuning.parallelism > 1:
            env["OMP_NUM_THREADS"] = "1"  # trials side by side must not each take every core
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"launch-{self.launches}.log"
        log = log_path.open("a")
        # Its own process group: stopping a trial stops everything it started.
        proc = subprocess.Popen(self._command(), stdout=subprocess.PIPE, stderr=log, text=True,
                                bufsize=1, env=env, start_new_session=True)
        trial = TrialProcess(proc, log_path, log)
        self.launches += 1
        self.running[proc.pid] = trial
        threading.Thread(target=self._read, args=(trial,), daemon=True).start()

    def _read(self, trial: TrialProcess) -> None:
        assert trial.proc.stdout is not None
        for line in trial.proc.stdout:
            self.lines.put((trial, line))
        self.lines.put((trial, None))

    def interrupt(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM or SIGINT: stop launching, stop the trials, report what was done."""
        self.stopping = self.interrupted = True

    def needed(self) -> int:
        return self.target - finished_count(self.study) - len(self.running)

    def run(self) -> None:
        while not self.stopping:
            while (len(self.running) < self.spec.tuning.parallelism and self.needed() > 0
                   and not self.stopping):
                self.launch()
            if not self.running:
                return
            self._next_line()
        self.stop_all()

    def _next_line(self) -> None:
        """Handle one line (or one exit) of a trial process, waiting at most half a second."""
        try:
            trial, line = self.lines.get(timeout=0.5)
        except queue.Empty:
            return
        if line is None:
            self._exited(trial)
        else:
            self._line(trial, line)

    def _line(self, trial: TrialProcess, line: str) -> None:
        trial.log.write(line)
        event = parse_event(line)
        if event is None:
            return
        kind = event.get("event")
        if kind == "trial" and trial.number is None:
            trial.number = int(event["number"])
            trial.params = dict(event.get("params") or {})
            named = self.logs / f"trial-{trial.number}.log"
            with contextlib.suppress(OSError):
                trial.log_path.rename(named)
                trial.log_path = named
            self.launch_failures = 0
            self.events.trial(trial.number, "running", params=trial.params, epoch=0,
                              pid=trial.proc.pid, refresh=True)
        elif kind == "trial" and event.get("state") != "running" and trial.number is not None:
            trial.finished = True
            extra = {"error": event["error"]} if event.get("error") else {}
            self.events.trial(trial.number, str(event["state"]), params=trial.params,
                              value=event.get("value"), epoch=event.get("epoch"),
                              refresh=True, **extra)
            write_trials_table(self.study, self.spec, self.args.storage)
        elif kind == "epoch" and trial.number is not None:
            self.events.trial(trial.number, "running", params=trial.params,
                              value=event.get(self.metric), epoch=event.get("epoch"))

    def _exited(self, trial: TrialProcess) -> None:
        code = trial.proc.wait()
        trial.log.close()
        self.running.pop(trial.proc.pid, None)
        if trial.number is None:
            self.launch_failures += 1
            if self.launch_failures >= MAX_LAUNCH_FAILURES and not self.stopping:
                raise RuntimeError(
                    f"{self.launch_failures} trial processes in a row exited (code {code}) "
                    f"before starting a trial; see {trial.log_path}: {_tail(trial.log_path)}")
            return
        # Killed, or died before it could tell the study: fail its trial, go on.
        if mark_failed(self.study, trial.number) or not trial.finished:
            frozen = self.study.get_trials(deepcopy=False)[trial.number]
            self.events.trial(trial.number, state_name(frozen.state), params=trial.params,
                              value=frozen.value, epoch=max(frozen.intermediate_values,
                                                            default=0),
                              error=f"trial process exited with code {code}", refresh=True)
            write_trials_table(self.study, self.spec, self.args.storage)

    def stop_all(self) -> None:
        """SIGTERM every trial (they checkpoint and fail their trial), SIGKILL stragglers."""
        self.stopping = True
        for trial in list(self.running.values()):
            trial.terminate()
        deadline = time.time() + STOP_GRACE_SECONDS
        while self.running and time.time() < deadline:
            self._next_line()
        for trial in list(self.running.values()):
            trial.kill()
            trial.proc.wait()
            trial.log.close()
            self.running.pop(trial.proc.pid, None)
            if trial.number is not None:
                mark_failed(self.study, trial.number)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return ""


def _storage_label(spec: TrainingJobSpec, storage: Path) -> str:
    if spec.tuning.storage:  # a URL may carry a password: name only its kind
        return spec.tuning.storage.split(":", 1)[0]
    return str(journal_path(storage))


def write_trials_table(study: optuna.Study, spec: TrainingJobSpec, storage: Path) -> Path:
    """Every trial of the study (number, state, params, value, epochs, seconds) as JSON."""
    path = tuning_dir(storage) / TRIALS_FILE
    write_json_atomic(path, [trial_row(t, spec.tuning.search_space)
                             for t in study.get_trials(deepcopy=False)])
    return path


def summary(study: optuna.Study, spec: TrainingJobSpec, name: str, storage: Path,
            status: str, started: float) -> dict[str, Any]:
    """The sweep's result: trials by state, best trial, importances, epochs and seconds."""
    trials = study.get_trials(deepcopy=False)
    table = write_trials_table(study, spec, storage)
    return {
        "unit": UNIT, "status": status, "backend": spec.tuning.backend, "study": name,
        "storage": _storage_label(spec, storage),
        "objective": {"metric": spec.tuning.objective.metric,
                      "direction": spec.tuning.objective.direction},
        **summarize(study, spec.tuning.search_space),
        **sweep_totals(trials, spec),
        "trials_table": str(table),
        "seconds": round(time.time() - started, 3),
    }


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    job = load_training_job(args.job)
    spec = job.spec
    name = job.metadata.name
    reporter = Reporter(args.result or default_result_path()
                        or args.storage / UNIT / "result.json")
    storage = open_storage(args.storage, study_server=args.study_server,
                           url=spec.tuning.storage)
    study = create_study_once(storage, name, spec)
    if args.summarize:
        # Every trial pod has finished: a trial still RUNNING lost its pod.
        failed = fail_orphaned_trials(study, alive_numbers=())
        result = summary(study, spec, name, args.storage, "succeeded", started)
        result["orphaned_failed"] = failed
        if result["best"] is None:
            result["status"] = "failed"
            result["message"] = "no trial completed; see the trial pods' logs"
        reporter.result(result)
        return 0 if result["status"] == "succeeded" else 1
    # Nothing runs yet: a trial still RUNNING belongs to a run that was killed.
    orphaned = fail_orphaned_trials(study, alive_numbers=())
    reporter.event("start", unit=UNIT, backend=spec.tuning.backend, study=name,
                   sampler=spec.tuning.sampler, pruner=spec.tuning.pruner,
                   trials=target_trials(spec), parallelism=spec.tuning.parallelism,
                   epochs=trial_epochs(spec), finished=finished_count(study),
                   orphaned_failed=orphaned)
    events = TrialEvents(study, spec, reporter)
    status, message = "succeeded", None
    if spec.tuning.backend == "ray":
        from .tune_ray import run_ray_sweep  # Ray is heavy: import it only when asked

        interrupted = run_ray_sweep(spec, args, name, study, events,
                                    target_trials(spec) - finished_count(study))
        fail_orphaned_trials(study, alive_numbers=())
    else:
        sweep = Sweep(spec, args, name, study, events)
        signal.signal(signal.SIGTERM, sweep.interrupt)
        signal.signal(signal.SIGINT, sweep.interrupt)
        try:
            sweep.run()
        except RuntimeError as error:
            sweep.stop_all()
            status, message = "failed", str(error)
        interrupted = sweep.interrupted
    result = summary(study, spec, name, args.storage, status, started)
    if interrupted:
        result["status"] = "terminated"
    elif status == "succeeded" and result["best"] is None:
        result["status"] = "failed"
        message = "no trial completed; see the trials table and the logs in tuning/logs"
    if message:
        result["message"] = message[:500]
        print(f"tuning failed: {message}", file=sys.stderr)
    reporter.result(result)
    return {"succeeded": 0, "terminated": 143}.get(result["status"], 1)


if __name__ == "__main__":
    sys.exit(main())
