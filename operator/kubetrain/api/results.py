"""What a work unit reports when it ends: one typed model per kind of unit.

A unit writes its result as a small JSON object (``kubetrain.report``): to a file locally, to
its container's termination message on Kubernetes. Both executors hand the raw object to the
stage engine, which parses it here, once; nothing else reads a result by key.
Fields are snake_case, as the units write them. Unknown fields are ignored, so a newer unit
can report more than an older engine reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .status import (
    BestTrial,
    FeatureAttribution,
    OverfittingFinding,
    TrainingAcceleration,
    TrialCounts,
    TrialPoint,
    TuningSelection,
)

TRUNCATED = "truncated:"
ResultStatus = Literal["succeeded", "failed", "terminated"]


class UnitUsage(BaseModel):
    """What the unit's process tree used (``kubetrain.usage``): CPU in cores, memory and GPU
    memory in GiB, GPU utilisation in %. None where not measured (no GPU, no samples)."""

    model_config = ConfigDict(extra="ignore")

    seconds: float = 0.0
    samples: int = 0
    series: str | None = None
    cpu_mean: float | None = None
    cpu_p95: float | None = None
    memory_peak_gib: float | None = None
    gpu_util_median: float | None = None
    gpu_util_mean: float | None = None
    gpu_memory_peak_gib: float | None = None
    gpu_memory_total_gib: float | None = None
    gpu_watts_mean: float | None = None
    cpu_mean_while_gpu_low: float | None = None


class UnitResult(BaseModel):
    """Fields every unit reports."""

    model_config = ConfigDict(extra="ignore")

    unit: str | None = None
    status: ResultStatus = "succeeded"
    seconds: float | None = None
    message: str | None = None
    problems: list[str] = Field(default_factory=list)
    """Problems with the spec that the unit found in the data (each names its field): the job
    is Invalid, and nothing is retried."""
    unavailable: str | None = None
    """The data cannot be had (no such object, refused credentials, no answer): the job fails
    with reason DataUnavailable, and nothing is retried."""
    usage: UnitUsage | None = None
    """What the unit used (measured in the unit), for findings.utilization."""
    tracking_warnings: list[str] = Field(default_factory=list)
    """A tracking destination (MLflow, TensorBoard) failed and the unit went on without it: the
    job gets the TrackingDegraded condition and a warning event, never a failure."""


class FetchResult(UnitResult):
    """The data stage: where the remote dataset's copy is, and whether it was fetched now."""

    uri: str | None = None
    version: str | None = None
    path: str | None = None
    files: int = 0
    bytes: int = 0
    fetched: bool = True
    rows: int | None = None


class AugmentationResult(UnitResult):
    """A shard's part, or the merge's manifest (``shard`` is None for the merge)."""

    shard: int | None = None
    shards: int = 1
    kind: str = ""
    added: int = 0
    counts_before: dict[str, int] = Field(default_factory=dict)
    counts_after: dict[str, int] = Field(default_factory=dict)
    operations: list[str] = Field(default_factory=list)
    manifest: str | None = None


class TrainingResult(UnitResult):
    """A training unit (the final training or a cross-validation fold)."""

    fold: int | None = None
    task: Literal["classification", "regression"] = "classification"
    epochs: int = 0
    epochs_run: int = 0
    best_epoch: int | None = None
    best_metrics: dict[str, float] = Field(default_factory=dict)
    final_metrics: dict[str, float] = Field(default_factory=dict)
    test_metrics: dict[str, float] = Field(default_factory=dict)
    stopped_early: bool = False
    stop_reason: str | None = None
    restored_best: bool = False
    """Early stopping restored the best epoch's weights: the delivered model is that epoch's."""
    resumed_from_epoch: int | None = None
    samples_per_second: float | None = None
    acceleration: TrainingAcceleration | None = None
    seconds_after_best: float | None = None
    overfitting: OverfittingFinding | None = None
    history: str | None = None
    checkpoint: str | None = None
    model: str | None = None


class TrialResult(UnitResult):
    """One trial of a sweep, as the trial process told the study."""

    trial: int | None = None
    state: Literal["complete", "pruned", "failed", "running", "waiting"] = "failed"
    value: float | None = None
    """The metric objective's value (with several objectives: the first metric's)."""
    values: dict[str, float] = Field(default_factory=dict)
    """With several objectives: each one's value."""
    params: dict[str, Any] = Field(default_factory=dict)
    epochs_run: int = 0
    cost: float | None = None
    train_seconds: float | None = None
    error: str | None = None


class TuningResult(UnitResult):
    """The sweep's summary: the study's trials by state, the best trial, what pruning saved."""

    study: str | None = None
    trials: TrialCounts = Field(default_factory=TrialCounts)
    best: BestTrial | None = None
    importances: dict[str, float] = Field(default_factory=dict)
    epochs_run: int | None = None
    epochs_saved_by_pruning: int | None = None
    trial_seconds: float | None = None
    trials_table: str | None = None
    objectives: list[str] = Field(default_factory=list)
    pareto_front: list[TrialPoint] = Field(default_factory=list)
    selection: TuningSelection | None = None


class ExplanationResult(UnitResult):
    method: str = ""
    top_features: list[FeatureAttribution] = Field(default_factory=list)
    completeness_error: float | None = None
    analysis: str | None = None
    plots: dict[str, str] = Field(default_factory=dict)


class ReportResult(UnitResult):
    """The report unit: report.md and the loss curve, written to the job's storage."""

    report: str | None = None
    loss_curve: str | None = None


class ServiceResult(UnitResult):
    """A long-running helper (the study server): it reports nothing of substance."""


UnitKind = Literal["fetch", "augment-shard", "augment-merge", "train", "fold", "trial",
                   "tune-summary", "tune", "study", "explain", "report", "remediate",
                   "remediate-augment"]

RESULT_MODELS: dict[str, type[UnitResult]] = {
    "fetch": FetchResult,
    "augment-shard": AugmentationResult,
    "augment-merge": AugmentationResult,
    "train": TrainingResult,
    "remediate": TrainingResult,
    "remediate-augment": AugmentationResult,
    "fold": TrainingResult,
    "trial": TrialResult,
    "tune-summary": TuningResult,
    "tune": TuningResult,
    "study": ServiceResult,
    "explain": ExplanationResult,
    "report": ReportResult,
}


def parse_result(kind: str, raw: Mapping[str, Any] | None) -> UnitResult | None:
    """The typed result of a unit of ``kind``; None when there is none or it is not readable
    (a result cut short is treated like a missing one: the unit did not finish its work)."""
    if not raw:
        return None
    # A result over 4 KB had its bulkiest fields replaced by a note (kubetrain.report): those
    # fields are read from the files in storage, not from the result.
    data = {k: v for k, v in raw.items() if not (isinstance(v, str) and v.startswith(TRUNCATED))}
    try:
        return RESULT_MODELS[kind].model_validate(data)
    except ValidationError:
        return None
