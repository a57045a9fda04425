"""Status updates from what work units report: shared by the local executor and the operator.

Each function takes the status and what was observed (an event, a result, a time) and changes
only the status, so both executors write the same status for the same observations.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ..api.status import (
    Condition,
    CrossValidationStatus,
    OverfittingFinding,
    StageStatus,
    TrainingJobStatus,
    TrainingStatus,
)

METRIC_KEYS = ("train_loss", "val_loss", "val_accuracy", "val_rmse", "lr")


def timestamp(when: datetime | None = None) -> str:
    """RFC 3339 in UTC, as Kubernetes writes times."""
    return (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(status: TrainingJobStatus, type_: str, state: str, reason: str,
                  message: str, at: str) -> None:
    """Add or update a condition; lastTransitionTime moves only when the state changes."""
    for condition in status.conditions:
        if condition.type == type_:
            if condition.status != state:
                condition.last_transition_time = at
            condition.status = state  # type: ignore[assignment]
            condition.reason = reason
            condition.message = message
            return
    status.conditions.append(Condition(type=type_, status=state, reason=reason,
                                       message=message, last_transition_time=at))


def stage_status(status: TrainingJobStatus, stage: str) -> StageStatus:
    return status.stages.setdefault(stage, StageStatus())


def start_stage(status: TrainingJobStatus, stage: str, units: Sequence[str], at: str) -> None:
    st = stage_status(status, stage)
    st.phase, st.start_time, st.jobs = "Running", st.start_time or at, list(units)
    status.current_stage = stage
    set_condition(status, "Running", "True", "StageRunning", f"stage {stage} is running", at)


def finish_stage(status: TrainingJobStatus, stage: str, phase: str, message: str,
                 at: str) -> None:
    st = stage_status(status, stage)
    st.phase, st.completion_time, st.message = phase, at, message  # type: ignore[assignment]
    if phase == "Succeeded":
        set_condition(status, f"{stage.capitalize()}Complete", "True", "StageSucceeded",
                      message, at)


def _metrics(source: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(source[k]) for k in METRIC_KEYS if isinstance(source.get(k), int | float)}


def apply_epoch_event(status: TrainingJobStatus, event: Mapping[str, Any]) -> None:
    """Live training progress from an ``epoch`` event of the main training unit."""
    training = status.training or TrainingStatus()
    training.epoch = int(event["epoch"])
    training.epochs = int(event.get("epochs") or training.epochs)
    training.metrics = _metrics(event)
    if event.get("best_epoch") is not None:
        training.best_epoch = int(event["best_epoch"])
    status.training = training
    status.progress = f"{training.epoch}/{training.epochs} epochs"


def apply_training_result(status: TrainingJobStatus, summary: Mapping[str, Any]) -> None:
    """The final state of training from the main unit's result summary."""
    training = status.training or TrainingStatus()
    training.epoch = int(summary.get("epochs_run") or training.epoch)
    training.best_epoch = summary.get("best_epoch")
    training.metrics = _metrics(summary.get("final_metrics") or {})
    training.best_metrics = _metrics(summary.get("best_metrics") or {})
    training.test_metrics = {k: float(v) for k, v in (summary.get("test_metrics") or {}).items()}
    training.stopped_early = bool(summary.get("stopped_early"))
    training.stop_reason = summary.get("stop_reason")
    training.checkpoint = summary.get("checkpoint")
    training.resumed_from_epoch = summary.get("resumed_from_epoch")
    training.samples_per_second = summary.get("samples_per_second")
    status.training = training
    status.best = best_summary(training)


def best_summary(training: TrainingStatus) -> str | None:
    """The short 'Best' printer column: the headline metric of the delivered model."""
    source = training.test_metrics or training.best_metrics
    for key in ("test_accuracy", "val_accuracy", "test_rmse", "val_rmse", "test_loss",
                "val_loss"):
        if key in source:
            return f"{key}={source[key]:.4g}"
    return None


def cross_validation_summary(results: Sequence[Mapping[str, Any]],
                             metric: str) -> CrossValidationStatus:
    """Mean ± std of each fold's best validation metric."""
    values = [float(r["best_metrics"][metric]) for r in results]
    return CrossValidationStatus(
        folds=len(values), metric=metric, mean=statistics.fmean(values),
        std=statistics.pstdev(values) if len(values) > 1 else 0.0, values=values,
    )


def headline_metric(task: str) -> str:
    return "val_accuracy" if task == "classification" else "val_rmse"


def apply_overfitting(status: TrainingJobStatus, finding: OverfittingFinding, at: str) -> None:
    status.findings.overfitting = finding
    if finding.verdict == "overfitting":
        reason = "OverfittingDetected"
    elif finding.verdict == "suspected":
        reason = "OverfittingSuspected"
    else:
        reason = "NoOverfitting"
    message = "; ".join(finding.evidence[:2]) or "no overfitting rule fired"
    set_condition(status, "OverfittingDetected",
                  "True" if finding.verdict == "overfitting" else "False", reason, message, at)


def finish_job(status: TrainingJobStatus, phase: str, reason: str, message: str,
               at: str) -> None:
    """Terminal phase with its condition; Running turns False."""
    status.phase = phase  # type: ignore[assignment]
    status.completion_time = at
    status.current_stage = None
    set_condition(status, "Running", "False", reason, message, at)
    if phase == "Succeeded":
        set_condition(status, "Succeeded", "True", reason, message, at)
    elif phase == "Failed":
        set_condition(status, "Failed", "True", reason, message, at)
