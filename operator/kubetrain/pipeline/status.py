"""Status updates from what work units report: shared by the local executor and the operator.

Each function takes the status and what was observed (an event, a result, a time) and changes
only the status, so both executors write the same status for the same observations.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ..api.spec import TrainingJobSpec
from ..api.status import (
    AugmentationStatus,
    BestTrial,
    Condition,
    CrossValidationStatus,
    ExplanationFinding,
    FeatureAttribution,
    OverfittingFinding,
    StageStatus,
    TrainingJobStatus,
    TrainingStatus,
    TrialCounts,
    TuningStatus,
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
    training.epochs = int(summary.get("epochs") or training.epochs)
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
    # A short run can finish between two observations: progress comes from the result too.
    status.progress = f"{training.epoch}/{training.epochs} epochs"


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


def apply_augmentation_result(status: TrainingJobStatus, result: Mapping[str, Any]) -> None:
    """Class counts before and after, from the merge unit's result."""
    status.augmentation = AugmentationStatus(
        kind=str(result.get("kind", "")), added=int(result.get("added", 0)),
        counts_before={str(k): int(v) for k, v in (result.get("counts_before") or {}).items()},
        counts_after={str(k): int(v) for k, v in (result.get("counts_after") or {}).items()},
        operations=[str(o) for o in result.get("operations") or []],
        manifest=result.get("manifest"),
    )


def _tuning(status: TrainingJobStatus, spec: TrainingJobSpec) -> TuningStatus:
    if status.tuning is None:
        status.tuning = TuningStatus(backend=spec.tuning.backend, sampler=spec.tuning.sampler,
                                     pruner=spec.tuning.pruner)
    return status.tuning


def _apply_sweep(tuning: TuningStatus, counts: Any, best: Any) -> None:
    """Trial counts and the best trial, as the driver's events and results report them."""
    if isinstance(counts, Mapping):
        tuning.trials = TrialCounts(**{k: int(v) for k, v in counts.items()
                                       if k in TrialCounts.model_fields})
    if isinstance(best, Mapping) and best.get("value") is not None:
        tuning.best = BestTrial(trial=int(best["trial"]), params=dict(best.get("params") or {}),
                                value=float(best["value"]))


def apply_trial_event(status: TrainingJobStatus, spec: TrainingJobSpec,
                      event: Mapping[str, Any]) -> None:
    """Live sweep progress from the driver's ``trial`` events (counts, best so far)."""
    tuning = _tuning(status, spec)
    _apply_sweep(tuning, event.get("counts"), event.get("best"))
    finished = tuning.trials.complete + tuning.trials.pruned + tuning.trials.failed
    status.progress = f"{finished}/{spec.tuning.trials} trials"


def apply_tuning_result(status: TrainingJobStatus, spec: TrainingJobSpec,
                        result: Mapping[str, Any]) -> None:
    tuning = _tuning(status, spec)
    tuning.study = result.get("study")
    _apply_sweep(tuning, result.get("trials"), result.get("best"))
    tuning.importances = {str(k): float(v) for k, v in (result.get("importances") or {}).items()}
    tuning.epochs_run = result.get("epochs_run")
    tuning.epochs_saved_by_pruning = result.get("epochs_saved_by_pruning")


def apply_explanation_result(status: TrainingJobStatus, result: Mapping[str, Any]) -> None:
    status.findings.explanation = ExplanationFinding(
        method=str(result.get("method", "")),
        top_features=[FeatureAttribution(feature=str(f["feature"]),
                                         mean_abs_shap=float(f["mean_abs_shap"]))
                      for f in result.get("top_features") or []],
        completeness_error=result.get("completeness_error"),
        artifact=result.get("analysis"),
    )
    for name, path in (result.get("plots") or {}).items():
        status.artifacts[f"shap{name[:1].upper()}{name[1:]}"] = str(path)
    if result.get("analysis"):
        status.artifacts["explanation"] = str(result["analysis"])
