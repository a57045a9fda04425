"""Status updates from what work units report: shared by the local executor and the operator.

Each function takes the status and what was observed (an event, a result, a time) and changes
only the status, so both executors write the same status for the same observations.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ..api.results import (
    AugmentationResult,
    ExplanationResult,
    TrainingResult,
    TuningResult,
)
from ..api.spec import TrainingJobSpec
from ..api.status import (
    AugmentationStatus,
    BestTrial,
    Condition,
    CrossValidationStatus,
    ExplanationFinding,
    OverfittingFinding,
    Phase,
    Reason,
    StagePhase,
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


def set_condition(status: TrainingJobStatus, type_: str, state: str, reason: Reason,
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
    st.phase, st.start_time, st.jobs = StagePhase.RUNNING, st.start_time or at, list(units)
    status.current_stage = stage
    set_condition(status, "Running", "True", Reason.STAGE_RUNNING, f"stage {stage} is running",
                  at)


def finish_stage(status: TrainingJobStatus, stage: str, phase: StagePhase, message: str,
                 at: str) -> None:
    st = stage_status(status, stage)
    st.phase, st.completion_time, st.message = phase, at, message
    if phase == StagePhase.SUCCEEDED:
        set_condition(status, f"{stage.capitalize()}Complete", "True", Reason.STAGE_SUCCEEDED,
                      message, at)
    elif phase == StagePhase.NOT_AVAILABLE:
        set_condition(status, f"{stage.capitalize()}Complete", "False",
                      Reason.STAGE_NOT_AVAILABLE, message, at)


def _metrics(source: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(source[k]) for k in METRIC_KEYS if isinstance(source.get(k), int | float)}


def epoch_progress(epoch: int, epochs: int | None) -> str:
    """Training progress for people and the Progress column: ``epoch 12/30``."""
    return f"epoch {epoch}/{epochs or '?'}"


def apply_epoch_event(status: TrainingJobStatus, event: Mapping[str, Any]) -> None:
    """Live training progress from an ``epoch`` event of the main training unit."""
    training = status.training or TrainingStatus()
    training.epoch = int(event["epoch"])
    training.epochs = int(event.get("epochs") or training.epochs)
    training.metrics = _metrics(event)
    if event.get("best_epoch") is not None:
        training.best_epoch = int(event["best_epoch"])
    status.training = training
    status.progress = epoch_progress(training.epoch, training.epochs)


def apply_training_result(status: TrainingJobStatus, result: TrainingResult) -> None:
    """The final state of training from the main unit's result."""
    training = status.training or TrainingStatus()
    training.epoch = result.epochs_run or training.epoch
    training.epochs = result.epochs or training.epochs
    training.best_epoch = result.best_epoch
    training.metrics = _metrics(result.final_metrics)
    training.best_metrics = _metrics(result.best_metrics)
    training.test_metrics = dict(result.test_metrics)
    training.stopped_early = result.stopped_early
    training.stop_reason = result.stop_reason
    training.checkpoint = result.checkpoint
    training.resumed_from_epoch = result.resumed_from_epoch
    training.samples_per_second = result.samples_per_second
    training.acceleration = result.acceleration
    status.training = training
    status.best = best_summary(training)
    # A short run can finish between two observations: progress comes from the result too.
    status.progress = epoch_progress(training.epoch, training.epochs)


def best_summary(training: TrainingStatus) -> str | None:
    """The short 'Best' printer column: the headline metric of the delivered model."""
    source = training.test_metrics or training.best_metrics
    for key in ("test_accuracy", "val_accuracy", "test_rmse", "val_rmse", "test_loss",
                "val_loss"):
        if key in source:
            return f"{key}={source[key]:.4g}"
    return None


def cross_validation_summary(results: Sequence[TrainingResult],
                             metric: str) -> CrossValidationStatus:
    """Mean ± std of each fold's best validation metric."""
    values = [float(r.best_metrics[metric]) for r in results if metric in r.best_metrics]
    return CrossValidationStatus(
        folds=len(values), metric=metric, mean=statistics.fmean(values),
        std=statistics.pstdev(values) if len(values) > 1 else 0.0, values=values,
    )



def apply_overfitting(status: TrainingJobStatus, finding: OverfittingFinding, at: str) -> None:
    status.findings.overfitting = finding
    if finding.verdict == "overfitting":
        reason = Reason.OVERFITTING_DETECTED
    elif finding.verdict == "suspected":
        reason = Reason.OVERFITTING_SUSPECTED
    else:
        reason = Reason.NO_OVERFITTING
    message = "; ".join(finding.evidence[:2]) or "no overfitting rule fired"
    set_condition(status, "OverfittingDetected",
                  "True" if finding.verdict == "overfitting" else "False", reason, message, at)


def finish_job(status: TrainingJobStatus, phase: Phase, reason: Reason, message: str,
               at: str) -> None:
    """Terminal phase with its condition; Running turns False."""
    status.phase = phase
    status.completion_time = at
    status.current_stage = None
    set_condition(status, "Running", "False", reason, message, at)
    if phase == Phase.SUCCEEDED:
        set_condition(status, "Succeeded", "True", reason, message, at)
    elif phase == Phase.FAILED:
        set_condition(status, "Failed", "True", reason, message, at)


def apply_augmentation_result(status: TrainingJobStatus, result: AugmentationResult) -> None:
    """Class counts before and after, from the merge unit's result."""
    status.augmentation = AugmentationStatus(
        kind=result.kind, added=result.added, counts_before=dict(result.counts_before),
        counts_after=dict(result.counts_after), operations=list(result.operations),
        manifest=result.manifest,
    )


def _tuning(status: TrainingJobStatus, spec: TrainingJobSpec) -> TuningStatus:
    if status.tuning is None:
        status.tuning = TuningStatus(
            backend=spec.tuning.backend, sampler=spec.tuning.sampler, pruner=spec.tuning.pruner,
            objectives=[o.name for o in spec.tuning.objectives or ()])
    return status.tuning


def apply_sweep(status: TrainingJobStatus, spec: TrainingJobSpec, counts: TrialCounts,
                best: BestTrial | None, target: int) -> None:
    """Live sweep progress: trial counts, the best trial so far, "finished/target trials"."""
    tuning = _tuning(status, spec)
    tuning.trials = counts
    if best is not None:
        tuning.best = best
    finished = counts.complete + counts.pruned + counts.failed
    status.progress = f"{min(finished, target)}/{target} trials"


def apply_trial_event(status: TrainingJobStatus, spec: TrainingJobSpec,
                      event: Mapping[str, Any], target: int) -> None:
    """Live progress of a sweep that runs inside one unit (Ray Tune): its ``trial`` events."""
    counts, best = event.get("counts"), event.get("best")
    apply_sweep(
        status, spec,
        TrialCounts(**{k: int(v) for k, v in counts.items() if k in TrialCounts.model_fields})
        if isinstance(counts, Mapping) else _tuning(status, spec).trials,
        BestTrial.model_validate(best) if isinstance(best, Mapping) and
        best.get("value") is not None else None, target)


def apply_tuning_result(status: TrainingJobStatus, spec: TrainingJobSpec,
                        result: TuningResult) -> None:
    tuning = _tuning(status, spec)
    tuning.study = result.study
    tuning.trials = result.trials.model_copy()
    if result.best is not None:
        tuning.best = result.best.model_copy()
    tuning.importances = dict(result.importances)
    tuning.epochs_run = result.epochs_run
    tuning.epochs_saved_by_pruning = result.epochs_saved_by_pruning
    tuning.pareto_front = [p.model_copy() for p in result.pareto_front]
    tuning.selection = result.selection.model_copy() if result.selection else None


def apply_explanation_result(status: TrainingJobStatus, result: ExplanationResult) -> None:
    status.findings.explanation = ExplanationFinding(
        method=result.method,
        top_features=[f.model_copy() for f in result.top_features],
        completeness_error=result.completeness_error,
        artifact=result.analysis,
    )
    for name, path in result.plots.items():
        status.artifacts[f"shap{name[:1].upper()}{name[1:]}"] = path
    if result.analysis:
        status.artifacts["explanation"] = result.analysis


TRACKING_CONDITION = "TrackingDegraded"


def apply_tracking_warnings(status: TrainingJobStatus, unit: str, warnings: Sequence[str],
                            at: str) -> str:
    """A unit's run could not be tracked: the TrackingDegraded condition (the training goes on);
    returns the message for the warning event."""
    message = f"{unit}: {warnings[0]}" + (f" (and {len(warnings) - 1} more)"
                                          if len(warnings) > 1 else "")
    set_condition(status, TRACKING_CONDITION, "True", Reason.TRACKING_UNAVAILABLE, message, at)
    return message
