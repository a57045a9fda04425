"""The embedded executor: the stage engine's actions carried out as local process groups.

plan (pipeline.plan) → the engine decides (pipeline.engine) → this module starts and stops
process groups, and turns their lines, exits and result files into observations → the engine
again, until the job has ended. Nothing here decides what runs next; the operator does the
same with pods.
"""

from __future__ import annotations

import queue
import shutil
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import yaml

from ..api.metrics import task_of_metric
from ..api.resource import ManifestError, TrainingJob
from ..api.status import Phase, TrainingJobStatus
from ..augment import AugmentationError, check_augmentation
from ..augment.store import AUGMENT_DIR
from ..data import DatasetError, load_dataset
from ..models import ModelError, build_model
from ..pipeline.actions import Context, Launch, Observation, Step
from ..pipeline.engine import advance, resumed
from ..pipeline.plan import STUDY_UNIT, Plan, WorkUnit, plan
from ..tuning.study import TUNING_DIR
from .display import Display
from .process import Line, UnitProcess, command_for

# How long the loop waits for a line or an exit before it looks at the clock (budget, kills).
TICK_SECONDS = 0.5


class JobInterrupted(Exception):
    """Ctrl-C: the work units were stopped and the status says so."""


def preflight(job: TrainingJob, base_dir: Path) -> None:
    """Checks that need the data (shape, task), made before anything starts."""
    spec = job.spec
    if spec.dataset.remote:
        return  # the data stage fetches it, then checks that it loads (workloads.fetch)
    try:
        # No memory budget: a folder that may stream is only looked at here, not read into memory.
        dataset = load_dataset(spec.dataset, base_dir=base_dir, memory_budget=0)
        if spec.model is not None:  # else training.command builds its own
            build_model(spec.model, dataset.input_shape, dataset.num_outputs,
                        spec.training.dropout)
        if spec.augmentation.enabled:
            check_augmentation(spec, dataset)
    except (DatasetError, ModelError, AugmentationError) as error:
        raise ManifestError([f"spec.{error}"], job.metadata.name) from None
    es = spec.training.early_stopping
    needs = task_of_metric(es.monitor) if es and es.enabled else None
    if es and needs not in (None, dataset.task):
        raise ManifestError([f"spec.training.earlyStopping.monitor: {es.monitor} does not apply "
                             f"to {dataset.task} data ({dataset.name})"], job.metadata.name)
    if len(dataset) < 10:
        raise ManifestError([f"spec.dataset: {dataset.name} has {len(dataset)} examples; "
                             "at least 10 are needed to split"], job.metadata.name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalExecutor:
    def __init__(self, job: TrainingJob, *, base_dir: Path, storage: Path,
                 display: Display | None = None, resume: bool = False,
                 observer: Callable[[TrainingJobStatus], None] | None = None) -> None:
        self.job = job
        self.base_dir = base_dir
        self.storage = storage
        self.display = display or Display(enabled=False)
        self.resume = resume
        self.plan: Plan = plan(job.spec, job.metadata.name)
        self.status = TrainingJobStatus()
        self.units: dict[str, UnitProcess] = {}
        self.lines: queue.Queue[Line] = queue.Queue()
        self.study_port = _free_port()
        # For a run in the background (kubetrain.Client): each new status goes to the observer;
        # stop() ends the run as Ctrl-C does, from another thread.
        self.observer = observer
        self.stopping = threading.Event()

    # ----- setup ---------------------------------------------------------------------------

    def _prepare_storage(self) -> Path:
        previous = self.storage / "status.yaml"
        if self.resume and previous.exists():
            # Continue where the last run stopped: finished units stay finished.
            saved = yaml.safe_load(previous.read_text()).get("status") or {}
            self.status = resumed(TrainingJobStatus.model_validate(saved))
        elif not self.resume:
            # A fresh run: no unit may resume a checkpoint, or a sweep a study, of an old one.
            for stage in self.plan.stages:
                for unit in stage.units:
                    shutil.rmtree(self.storage / unit.name, ignore_errors=True)
            for folder in (TUNING_DIR, AUGMENT_DIR):
                shutil.rmtree(self.storage / folder, ignore_errors=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        job_file = self.storage / "job.yaml"
        manifest = self.job.to_manifest()
        manifest.pop("status", None)
        job_file.write_text(yaml.safe_dump(manifest, sort_keys=False))
        return job_file

    def _folder(self, unit: WorkUnit) -> tuple[Path, Path]:
        """Where a unit's log and result file go (a sweep's units: under tuning/logs)."""
        if unit.stage == "tuning" and unit.kind != "tune":
            logs = self.storage / TUNING_DIR / "logs"
            return logs / f"{unit.name}.log", logs / f"{unit.name}.result.json"
        return self.storage / unit.name / "log.txt", self.storage / unit.name / "result.json"

    def log_of(self, unit_name: str) -> Path | None:
        """The log file of a unit of the plan (None: no such unit)."""
        unit = next((u for stage in self.plan.stages for u in stage.units
                     if u.name == unit_name), None)
        return None if unit is None else self._folder(unit)[0]

    # ----- running -------------------------------------------------------------------------

    def run(self) -> TrainingJob:
        preflight(self.job, self.base_dir)
        self.job_file = self._prepare_storage()
        try:
            while True:
                self._carry_out(self._advance(interrupted=self.stopping.is_set()))
                if Phase(self.status.phase).terminal:
                    break
                self._wait()
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (see workloads/__init__)
            self._carry_out(self._advance(interrupted=True))
            self._drain()
            self.display.stop()
            raise JobInterrupted() from None
        self._drain()
        self.display.stop()
        return self._job()

    def stop(self) -> None:
        """End the run from another thread: units stopped, phase Failed (Interrupted)."""
        self.stopping.set()

    def set_suspended(self, suspend: bool) -> None:
        """Set runPolicy.suspend: the engine stops or restarts the units on its next step."""
        policy = self.job.spec.run_policy.model_copy(update={"suspend": suspend})
        spec = self.job.spec.model_copy(update={"run_policy": policy})
        self.job = self.job.model_copy(update={"spec": spec})

    def _job(self) -> TrainingJob:
        return self.job.model_copy(update={"status": self.status})

    def _advance(self, *, interrupted: bool) -> Step:
        observed: dict[str, Observation] = {name: proc.observation()
                                            for name, proc in self.units.items()}
        ctx = Context(now=datetime.now(UTC), storage=str(self.storage), interrupted=interrupted)
        step = advance(self.plan, self._job(), observed, ctx)
        self.status = step.status
        if self.observer is not None:
            self.observer(self.status)
        return step

    def _carry_out(self, step: Step) -> None:
        if self.job.spec.tuning.backend == "optuna":
            self.display.sweep(self.status)
        for event in step.events:
            if event.type == "Warning":
                self.display.warn(event.message)
        for stop in step.stop:
            proc = self.units.get(stop.unit)
            if proc is None:
                continue
            if proc.alive:
                proc.terminate(stop.grace_seconds)
            else:
                del self.units[stop.unit]  # an ended attempt: forgotten, the unit may relaunch
        for launch in step.launch:
            self._launch(launch)

    def _launch(self, launch: Launch) -> None:
        unit = launch.unit
        log, result = self._folder(unit)
        args = ["--job", str(self.job_file), "--storage", str(self.storage),
                "--base-dir", str(self.base_dir), "--result", str(result), *launch.args]
        if self.job.spec.custom and unit.kind in ("train", "fold", "trial"):
            args += ["--workdir", str(self.base_dir)]  # training.command's paths: the manifest's
        if unit.kind == "study":
            args += ["--host", "127.0.0.1", "--port", str(self.study_port)]
        if unit.study_client:
            args += ["--study-server", f"127.0.0.1:{self.study_port}"]
        if launch.status_file is not None:
            status_file = log.parent / "status.json"
            status_file.parent.mkdir(parents=True, exist_ok=True)
            status_file.write_text(launch.status_file)
            args += ["--status-file", str(status_file)]
        old = self.units.get(unit.name)
        if old is not None and old.alive:
            old.terminate(0)
        self.units[unit.name] = UnitProcess(unit, launch.attempt, command_for(unit, args), log,
                                            result, self.lines)
        total = {"training": self.job.spec.training.epochs}.get(unit.stage)
        if unit.kind not in ("study", "report", "trial"):  # trials: one line each, at the end
            self.display.start_unit(unit.name, total, unit.stage)

    def _wait(self) -> None:
        """Until a unit reports or exits (or a tick passes): handle every line that came."""
        try:
            self._line(*self.lines.get(timeout=TICK_SECONDS))
            while True:
                self._line(*self.lines.get_nowait())
        except queue.Empty:
            pass
        for proc in self.units.values():
            proc.kill_if_overdue()

    def _line(self, proc: UnitProcess, event: dict[str, object] | None) -> None:
        name = proc.unit.name
        if proc.unit.kind == "trial":
            return  # the sweep's line shows trials (Display.sweep)
        if event is None:
            if proc.unit.kind not in ("study", "report"):
                self.display.finish_unit(name, ok=proc.proc.returncode == 0)
        elif event.get("event") == "epoch":
            self.display.epoch(name, dict(event))
        elif event.get("event") == "resumed":
            self.display.note(name, f"resumed from epoch {event.get('epoch')}")

    def _drain(self) -> None:
        """After the end: wait for stopped units and the report unit to exit."""
        while any(p.alive for p in self.units.values()):
            self._wait()
            for proc in self.units.values():
                if proc.unit.name == STUDY_UNIT and proc.alive:
                    proc.terminate(5)
