"""The embedded executor: a TrainingJob's plan run as local processes, status written back.

plan (pipeline.plan) → execute (work units as process groups) → observe (JSON-line events,
result files) → findings (findings.*) → status (pipeline.status). Only the execute step is
local; the operator shares the rest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from ..api.resource import ManifestError, TrainingJob
from ..api.status import OverfittingFinding, TrainingJobStatus
from ..augment import AugmentationError, check_augmentation
from ..augment.store import AUGMENT_DIR
from ..data import DatasetError, load_dataset
from ..findings.cost import Usage, budget_exceeded, stage_cost, summarize_cost
from ..findings.overfitting import analyze_overfitting
from ..models import ModelError, build_model
from ..pipeline import status as st
from ..pipeline.plan import Plan, Stage, WorkUnit, plan
from ..tuning.study import TUNING_DIR
from ..report import read_result
from .artifacts import plot_loss_curve, write_report
from .display import Display
from .process import UnitProcess, command_for


class JobInterrupted(Exception):
    """Ctrl-C: the work unit was stopped and the status says so."""


def preflight(job: TrainingJob, base_dir: Path) -> None:
    """Checks that need the data (shape, task), made before anything starts."""
    spec = job.spec
    try:
        dataset = load_dataset(spec.dataset, base_dir=base_dir)
        build_model(spec.model, dataset.input_shape, dataset.num_outputs, spec.training.dropout)
        if spec.augmentation.enabled:
            check_augmentation(spec, dataset)
    except (DatasetError, ModelError, AugmentationError) as error:
        raise ManifestError([f"spec.{error}"], job.metadata.name) from None
    es = spec.training.early_stopping
    wrong = {"classification": "val_rmse", "regression": "val_accuracy"}[dataset.task]
    if es and es.enabled and es.monitor == wrong:
        raise ManifestError([f"spec.training.earlyStopping.monitor: {wrong} does not apply to "
                             f"{dataset.task} data ({dataset.name})"], job.metadata.name)
    if len(dataset) < 10:
        raise ManifestError([f"spec.dataset: {dataset.name} has {len(dataset)} examples; "
                             "at least 10 are needed to split"], job.metadata.name)


class LocalExecutor:
    def __init__(self, job: TrainingJob, *, base_dir: Path, storage: Path,
                 display: Display | None = None, resume: bool = False) -> None:
        self.job = job
        self.spec = job.spec
        self.base_dir = base_dir
        self.storage = storage
        self.display = display or Display(enabled=False)
        self.resume = resume
        self.plan: Plan = plan(job.spec)
        self.status = TrainingJobStatus()
        self.usages: list[Usage] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.current: UnitProcess | None = None
        self.budget_hit = False
        self.budget_warned = False

    # ----- setup ---------------------------------------------------------------------------

    def _prepare_storage(self) -> Path:
        if not self.resume:
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

    # ----- running -------------------------------------------------------------------------

    def run(self) -> TrainingJob:
        preflight(self.job, self.base_dir)
        job_file = self._prepare_storage()
        at = st.timestamp()
        self.status.phase, self.status.start_time = "Running", at
        for stage in self.plan.stages:
            st.stage_status(self.status, stage.name)
        st.set_condition(self.status, "Running", "True", "Planned",
                         "stages: " + ", ".join(self.plan.stage_names), at)
        failed: str | None = None
        try:
            for stage in self.plan.stages:
                failed = self._run_stage(stage, job_file)
                if failed or self.budget_hit:
                    break
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (see workloads/__init__)
            if self.current is not None:
                self.current.terminate(grace=10)
                self._record_usage(self.current)
            self._finish_findings()
            st.finish_job(self.status, "Failed", "Interrupted", "stopped by Ctrl-C; "
                          "`kubetrain run --resume` continues from the last checkpoint",
                          st.timestamp())
            self._write_artifacts()
            raise JobInterrupted() from None
        finally:
            self.display.stop()
        self._finish_findings()
        at = st.timestamp()
        if failed:
            st.finish_job(self.status, "Failed", "WorkUnitFailed", failed, at)
        elif self.budget_hit and self.spec.findings.cost.budget and \
                self.spec.findings.cost.budget.action == "stop":
            st.finish_job(self.status, "Failed", "BudgetExceeded",
                          "budget.maxCost reached; further work stopped", at)
        else:
            st.finish_job(self.status, "Succeeded", "AllStagesSucceeded",
                          "all stages finished", at)
        self._write_artifacts()
        return self._job_with_status()

    def _run_stage(self, stage: Stage, job_file: Path) -> str | None:
        at = st.timestamp()
        if not stage.available:
            st.finish_stage(self.status, stage.name, "NotAvailable", stage.message, at)
            st.set_condition(self.status, f"{stage.name.capitalize()}Complete", "False",
                             "StageNotAvailable", stage.message, at)
            self.display.warn(stage.message)
            return None
        st.start_stage(self.status, stage.name, [u.name for u in stage.units], at)
        for unit in stage.units:
            error = self._run_unit(unit, job_file)
            if error or self.budget_hit:
                st.finish_stage(self.status, stage.name, "Failed",
                                error or "stopped: budget exceeded", st.timestamp())
                return error
        self._after_stage(stage)
        st.finish_stage(self.status, stage.name, "Succeeded",
                        f"{len(stage.units)} work unit(s) succeeded", st.timestamp())
        return None

    def _unit_args(self, unit: WorkUnit, job_file: Path) -> list[str]:
        extra = ["--job", str(job_file), "--storage", str(self.storage),
                 "--base-dir", str(self.base_dir),
                 "--result", str(self.storage / unit.name / "result.json")]
        best = self.results.get("tune", {}).get("best")
        if unit.stage == "training" and isinstance(best, dict) and best.get("params"):
            # The best trial's hyperparameters feed the final training (and its folds).
            extra += ["--params", json.dumps(best["params"])]
        return extra

    def _unit_total(self, unit: WorkUnit) -> int | None:
        if unit.stage == "training":
            return self.spec.training.epochs
        if unit.stage == "tuning":
            return self.spec.tuning.trials
        return None

    def _run_unit(self, unit: WorkUnit, job_file: Path) -> str | None:
        (self.storage / unit.name / "result.json").unlink(missing_ok=True)
        proc = UnitProcess(unit, command_for(unit, self._unit_args(unit, job_file)),
                           self.storage / unit.name / "log.txt")
        self.current = proc
        self.display.start_unit(unit.name, self._unit_total(unit), unit.stage)
        for event in proc.events():
            self._observe(unit, event, proc)
        code = proc.wait()
        self.current = None
        result = read_result(self.storage / unit.name / "result.json")
        self._record_usage(proc, result)
        self.display.finish_unit(unit.name, ok=code == 0)
        if result is not None:
            self.results[unit.name] = result
            self._apply_result(unit, result)
        if self.budget_hit:
            return None
        if code != 0 or result is None:
            return (f"work unit {unit.name} exited with code {code}"
                    + (f": {proc.log_tail(3)}" if proc.log_tail(3) else ""))
        return None

    def _apply_result(self, unit: WorkUnit, result: dict[str, Any]) -> None:
        if unit.name == "train":
            st.apply_training_result(self.status, result)
        elif unit.name == "augment-merge":
            st.apply_augmentation_result(self.status, result)
        elif unit.name == "tune":
            st.apply_tuning_result(self.status, self.spec, result)
        elif unit.name == "explain":
            st.apply_explanation_result(self.status, result)

    def _observe(self, unit: WorkUnit, event: dict[str, Any], proc: UnitProcess) -> None:
        kind = event.get("event")
        if kind == "epoch":
            self.display.epoch(unit.name, event)
            if unit.name == "train":
                st.apply_epoch_event(self.status, event)
            self._check_budget(unit, proc)
        elif kind == "trial":
            st.apply_trial_event(self.status, self.spec, event)
            self.display.trial(unit.name, event)
            self._check_budget(unit, proc)
        elif kind == "resumed":
            self.display.note(unit.name, f"resumed from epoch {event['epoch']}")

    def _check_budget(self, unit: WorkUnit, proc: UnitProcess) -> None:
        budget = self.spec.findings.cost.budget
        if budget is None or self.budget_hit or self.budget_warned:
            return
        prices = self.spec.findings.cost.prices
        spent = sum(stage_cost(u, prices).cost for u in self.usages)
        spent += stage_cost(self._usage(unit, self._busy_seconds(unit, proc.seconds)),
                            prices).cost
        if budget_exceeded(spent, budget):
            message = f"cost {spent:.6f} reached budget.maxCost {budget.max_cost}"
            st.set_condition(self.status, "BudgetExceeded", "True", "BudgetExceeded", message,
                             st.timestamp())
            if budget.action == "stop":
                self.budget_hit = True
                self.display.warn(message + "; stopping")
                proc.terminate()
            else:
                self.budget_warned = True  # warn once; the condition stays
                self.display.warn(message)

    def _busy_seconds(self, unit: WorkUnit, wall: float,
                      result: dict[str, Any] | None = None) -> float:
        """Seconds of the unit's requested resources: a sweep runs `parallelism` trials."""
        if unit.stage != "tuning":
            return wall
        if result and isinstance(result.get("trial_seconds"), int | float):
            return float(result["trial_seconds"])
        return wall * self.spec.tuning.parallelism

    @staticmethod
    def _usage(unit: WorkUnit, seconds: float) -> Usage:
        return Usage(stage=unit.stage, seconds=seconds, nodes=unit.nodes, cpu=unit.cpu,
                     memory_gib=unit.memory_gib, gpus=unit.gpus_per_node)

    def _record_usage(self, proc: UnitProcess, result: dict[str, Any] | None = None) -> None:
        seconds = self._busy_seconds(proc.unit, proc.seconds, result)
        self.usages.append(self._usage(proc.unit, seconds))

    # ----- observe → findings → status ----------------------------------------------------

    def _history(self) -> list[dict[str, float]]:
        path = self.storage / "train" / "history.json"
        try:
            data = yaml.safe_load(path.read_text())
        except OSError:
            return []
        return list(data or [])

    def _after_stage(self, stage: Stage) -> None:
        if stage.name != "training":
            return
        folds = [self.results[u.name] for u in stage.units
                 if u.name.startswith("fold-") and u.name in self.results]
        if folds and self.status.training is not None:
            task = self.results.get("train", folds[0]).get("task", "classification")
            self.status.training.cross_validation = st.cross_validation_summary(
                folds, st.headline_metric(task))

    def _finish_findings(self) -> None:
        history = self._history()
        at = st.timestamp()
        train_result = self.results.get("train", {})
        if isinstance(train_result.get("overfitting"), dict):
            finding = OverfittingFinding.model_validate(train_result["overfitting"])
            st.apply_overfitting(self.status, finding, at)
        elif history:  # interrupted before its result: judge what it trained
            st.apply_overfitting(self.status, analyze_overfitting(history, self.spec), at)
        cost_cfg = self.spec.findings.cost
        training_usage = next((u for u in reversed(self.usages) if u.stage == "training"), None)
        tune = self.results.get("tune", {})
        tuning_cost = sum(stage_cost(u, cost_cfg.prices).cost for u in self.usages
                          if u.stage == "tuning")
        cost_per_epoch = (tuning_cost / tune["epochs_run"]) if tune.get("epochs_run") else None
        self.status.findings.cost = summarize_cost(
            self.usages, cost_cfg.prices, budget=cost_cfg.budget,
            epoch_seconds=[h.get("seconds", 0.0) for h in history],
            best_epoch=train_result.get("best_epoch"), training_usage=training_usage,
            pruned_epochs_saved=tune.get("epochs_saved_by_pruning"),
            cost_per_epoch=cost_per_epoch,
        )
        for name, stage_status in self.status.stages.items():
            by_stage = self.status.findings.cost.by_stage.get(name)
            if by_stage is not None:
                stage_status.cost = by_stage.cost

    def _write_artifacts(self) -> None:
        artifacts = self.status.artifacts
        model = self.storage / "train" / "model.pt"
        if model.exists():
            artifacts["model"] = str(model)
        history = self._history()
        if history:
            best = self.status.training.best_epoch if self.status.training else None
            artifacts["lossCurve"] = str(plot_loss_curve(
                history, best, self.storage / "loss-curve.png",
                f"{self.job.metadata.name}: loss per epoch"))
            artifacts["history"] = str(self.storage / "train" / "history.json")
        artifacts["report"] = str(self.storage / "report.md")
        artifacts["status"] = str(self.storage / "status.yaml")
        job = self._job_with_status()
        table = self.results.get("tune", {}).get("trials_table")
        trials = json.loads(Path(table).read_text()) if table and Path(table).exists() else []
        write_report(job, history, self.storage / "report.md", trials)
        (self.storage / "status.yaml").write_text(
            yaml.safe_dump(job.to_manifest(), sort_keys=False))

    def _job_with_status(self) -> TrainingJob:
        return self.job.model_copy(update={"status": self.status})
