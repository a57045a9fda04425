"""The TrainingJob ``status``: what happened, what it found and what it cost."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from .base import StatusModel


class Phase(StrEnum):
    """The job's phase."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    QUEUED = "Queued"
    """Waiting for a place: the operator's limit of jobs running at once is reached."""

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class StagePhase(StrEnum):
    """The phase of a stage, or of one work unit."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    NOT_AVAILABLE = "NotAvailable"

    @property
    def finished(self) -> bool:
        return self in (StagePhase.SUCCEEDED, StagePhase.FAILED, StagePhase.SKIPPED,
                        StagePhase.NOT_AVAILABLE)


class Reason(StrEnum):
    """The closed set of condition reasons: dashboards and alerts can rely on them."""

    PLANNED = "Planned"
    STAGE_RUNNING = "StageRunning"
    STAGE_SUCCEEDED = "StageSucceeded"
    STAGE_FAILED = "StageFailed"
    STAGE_NOT_AVAILABLE = "StageNotAvailable"
    ALL_STAGES_SUCCEEDED = "AllStagesSucceeded"
    INVALID_SPEC = "InvalidSpec"
    DATA_UNAVAILABLE = "DataUnavailable"
    WORK_UNIT_FAILED = "WorkUnitFailed"
    INTERRUPTED = "Interrupted"
    BUDGET_EXCEEDED = "BudgetExceeded"
    OVERFITTING_DETECTED = "OverfittingDetected"
    OVERFITTING_SUSPECTED = "OverfittingSuspected"
    NO_OVERFITTING = "NoOverfitting"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    QUEUED = "Queued"
    ADMITTED = "Admitted"
    RECONCILE_ERROR = "ReconcileError"
    TRACKING_UNAVAILABLE = "TrackingUnavailable"


CONDITION_REASONS = tuple(r.value for r in Reason)

Verdict = Literal["none", "suspected", "overfitting"]


class Condition(StatusModel):
    """A standard Kubernetes condition."""

    type: str
    """Running, Succeeded, Failed, Suspended, <Stage>Complete, OverfittingDetected,
    BudgetExceeded, Invalid."""
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str


class UnitStatus(StatusModel):
    """One work unit of a stage (its pods, or its local process group): outcome and result."""

    phase: StagePhase = StagePhase.PENDING
    attempt: int = 0
    """The unit's current launch: raised for every restart, and when a suspend or a lost pod
    interrupted it; children of older attempts are stopped, never counted."""
    restarts: int = 0
    """Times the unit's pods (a training gang: all of them) were recreated after a failure."""
    start_time: str | None = None
    completion_time: str | None = None
    seconds: float | None = None
    """Wall seconds the unit held its requested resources (every attempt), for cost."""
    prior_seconds: float = 0.0
    """Seconds of the unit's earlier, ended attempts (part of seconds)."""
    cost: float | None = None
    """What the unit's requested resources cost for those seconds."""
    message: str | None = None
    """Why the unit failed, or was replaced (a trial lost with its pod)."""
    replaced: bool = False
    """A trial cut short from outside (its pod deleted or evicted, a suspend): failed in the
    study, not counted, and replaced by a new trial."""
    result: dict[str, Any] = Field(default_factory=dict)
    """The unit's result summary (its termination message), without bulky lists."""
    exit_reason: str | None = None
    """Why its last attempt's process or pod ended, as the executor saw it (OOMKilled, ...)."""


class StageStatus(StatusModel):
    """One stage of the pipeline."""

    phase: StagePhase = StagePhase.PENDING
    start_time: str | None = None
    completion_time: str | None = None
    jobs: list[str] = Field(default_factory=list)
    """Work units (pods, or local processes) of this stage."""
    message: str | None = None
    cost: float | None = None
    units: dict[str, UnitStatus] = Field(default_factory=dict)
    """On Kubernetes: per work unit state, restarts and result."""


class TrialCounts(StatusModel):
    total: int = 0
    running: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0


class BestTrial(StatusModel):
    trial: int
    params: dict[str, Any]
    value: float


class TrialPoint(StatusModel):
    """A complete trial as a multi-objective sweep sees it: its parameters and objectives."""

    trial: int
    params: dict[str, Any] = Field(default_factory=dict)
    values: dict[str, float] = Field(default_factory=dict)
    """Objective name → the trial's value (val_accuracy, cost, trainSeconds, ...)."""
    cost: float | None = None
    """What the trial's epochs cost: train seconds x its requested resources x the job's prices
    (the trial unit's whole cost, process start included, is its unit's cost)."""
    train_seconds: float | None = None
    """Seconds the trial spent in its epochs."""


class TuningSelection(StatusModel):
    """The trial the selection rule picked, against the trial with the best metric."""

    rule: str
    """The rule as the spec says it, e.g. cheapestWithin 0.01."""
    metric: str
    trial: int
    """The selected trial: its parameters train the final model."""
    value: float
    """Its metric."""
    cost: float
    best_metric_trial: int
    best_metric_value: float
    best_metric_cost: float
    metric_lost: float
    """How much worse the selected trial's metric is than the best (0: none)."""
    saved: float
    """best-metric trial's cost - selected trial's cost: what one training with the selected
    parameters saves against one with the best-metric trial's."""
    saved_fraction: float
    """saved / the best-metric trial's cost (0.6: the selected parameters train for 40%)."""


class TuningStatus(StatusModel):
    """The sweep: trial counts and the best trial so far."""

    backend: str | None = None
    sampler: str | None = None
    pruner: str | None = None
    study: str | None = None
    trials: TrialCounts = Field(default_factory=TrialCounts)
    best: BestTrial | None = None
    importances: dict[str, float] = Field(default_factory=dict)
    """Parameter importances (fANOVA) over the complete trials."""
    epochs_run: int | None = None
    """Epochs trained by all trials together."""
    epochs_saved_by_pruning: int | None = None
    """Epochs that pruned trials did not have to run."""
    objectives: list[str] = Field(default_factory=list)
    """With several objectives: their names, in the spec's order."""
    pareto_front: list[TrialPoint] = Field(default_factory=list)
    """With several objectives: the complete trials no other trial beats on every objective."""
    selection: TuningSelection | None = None
    """With several objectives: the trial that trains the final model (also in best), and
    what choosing it saved against the trial with the best metric."""
    trials_cost: float | None = None
    """What the trials cost together (each trial's own: stages.tuning.units.trial-N.cost)."""


class AugmentationStatus(StatusModel):
    """What augmentation added to the training split (never to validation or test)."""

    kind: str
    """image or tabular."""
    added: int
    counts_before: dict[str, int] = Field(default_factory=dict)
    """Training examples per class before augmentation."""
    counts_after: dict[str, int] = Field(default_factory=dict)
    """Training examples per class after augmentation."""
    operations: list[str] = Field(default_factory=list)
    manifest: str | None = None


class CrossValidationStatus(StatusModel):
    folds: int
    metric: str
    mean: float
    std: float
    values: list[float]


class TrainingAcceleration(StatusModel):
    """How the built-in trainer computed (``workloads.acceleration``): what precision: auto
    resolved to on the unit's device, and the speed-ups it took. None of these changes the
    batch size, the learning rate or the optimizer of the spec."""

    device: str = "cpu"
    """cpu, or cuda (the GPU's name in gpuName)."""
    gpu_name: str | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """The autocast precision used (training.precision: auto resolved)."""
    channels_last: bool = False
    fused_optimizer: bool = False
    compile: Literal["none", "default", "reduce-overhead"] = "none"
    compile_seconds: float | None = None
    """With training.compile: seconds of the training steps that compiled (each new input
    shape's first step: the compile time plus one step)."""
    data_on_device: bool = True
    """In-memory rows on the device, batches indexed there (no DataLoader); false when the
    rows are streamed from disk (pinned memory, non-blocking copies on a GPU)."""
    sync_batchnorm: bool = False
    """DDP on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm). torch cannot
    synchronize them on the CPU, where each process normalizes its own share."""


class TrainingStatus(StatusModel):
    """The final training: epochs, latest and best metrics, checkpoint."""

    epoch: int = 0
    epochs: int = 0
    metrics: dict[str, float] = Field(default_factory=dict)
    """Latest epoch's metrics: train_loss, val_loss, val_accuracy or val_rmse, lr."""
    best_epoch: int | None = None
    best_metrics: dict[str, float] = Field(default_factory=dict)
    test_metrics: dict[str, float] = Field(default_factory=dict)
    stopped_early: bool = False
    stop_reason: str | None = None
    checkpoint: str | None = None
    resumed_from_epoch: int | None = None
    samples_per_second: float | None = None
    acceleration: TrainingAcceleration | None = None
    """How the final training computed: precision, channels_last, fused optimizer, compile."""
    cross_validation: CrossValidationStatus | None = None


class SpecChange(StatusModel):
    """One spec field a remediation attempt set, with its value before and after."""

    field: str
    """The field's path in the spec, e.g. training.weightDecay or model.params.hiddenUnits."""
    before: Any = None
    after: Any = None


class RemediationAttempt(StatusModel):
    """One training of the remediation: the original (attempt 0) or a retraining."""

    attempt: int
    unit: str
    """The work unit that trained it (train, remediate-1, ...)."""
    changes: list[SpecChange] = Field(default_factory=list)
    """Every field changed from the original training's spec (the sweep's best parameters
    applied), this attempt's own additions last."""
    added: list[str] = Field(default_factory=list)
    """The fields this attempt changed on top of the attempt it started from."""
    started_from: int | None = None
    """The attempt whose settings this one strengthened (the best one so far)."""
    phase: StagePhase = StagePhase.PENDING
    verdict: Verdict | None = None
    validation: dict[str, float] = Field(default_factory=dict)
    """Validation metrics of the model this attempt delivers (its kept epoch)."""
    test: dict[str, float] = Field(default_factory=dict)
    """Test metrics of that model: reported, never used to choose."""
    test_gain: float | None = None
    """Headline test metric minus the original's (accuracy: higher is better; rmse: the
    original's minus this one's, so a positive gain is always better)."""
    cost: float | None = None
    """What this attempt's units cost."""


class RemediationStatus(StatusModel):
    """What findings.overfitting.action: remediate did: every attempt and the one kept."""

    metric: str
    """The validation metric that chose the attempt (the task's headline metric)."""
    attempts: list[RemediationAttempt] = Field(default_factory=list)
    chosen: int = 0
    """The attempt whose model the job delivers (0: the original training)."""
    test_gain: float | None = None
    """The chosen attempt's gain over the original on the test split."""
    cost: float = 0.0
    """What the retrainings cost together (the original training not included)."""
    done: bool = False
    message: str = ""
    """Why remediation stopped (or what it does now)."""


class OverfittingFinding(StatusModel):
    """Whether the model overfits, the evidence, and what to do about it."""

    verdict: Verdict = "none"
    gap: float | None = None
    """Relative gap (val_loss - train_loss) / train_loss of the delivered model's epoch."""
    best_epoch: int | None = None
    epochs_after_best: int = 0
    rules: list[str] = Field(default_factory=list)
    """The rules that fired: gap, trend, diverging, not-decreasing, non-finite."""
    evidence: list[str] = Field(default_factory=list)
    recommendations: list[str] = Field(default_factory=list)
    remediation: RemediationStatus | None = None
    """findings.overfitting.action: remediate: the attempts, their findings, metrics, cost."""


class StageCost(StatusModel):
    seconds: float
    cpu_hours: float
    gpu_hours: float
    memory_gi_b_hours: float = Field(alias="memoryGiBHours")
    cost: float


class BudgetStatus(StatusModel):
    max_cost: float
    spent: float
    exceeded: bool


class CostFinding(StatusModel):
    """What the job cost: resource-hours priced per stage, and the budget."""

    currency: str = "USD"
    cpu_hours: float = 0.0
    gpu_hours: float = 0.0
    memory_gi_b_hours: float = Field(default=0.0, alias="memoryGiBHours")
    total: float = 0.0
    by_stage: dict[str, StageCost] = Field(default_factory=dict)
    after_best_epoch: float = 0.0
    """What the epochs after the best one cost: the saving early stopping could have made."""
    saved_by_pruning: float | None = None
    budget: BudgetStatus | None = None


class FeatureAttribution(StatusModel):
    feature: str
    mean_abs_shap: float


class ExplanationFinding(StatusModel):
    """Which features drive the model's predictions (SHAP)."""

    method: str
    top_features: list[FeatureAttribution] = Field(default_factory=list)
    completeness_error: float | None = None
    artifact: str | None = None


UtilizationKind = Literal["cpuOverRequested", "memoryOverRequested", "oomKilled",
                          "lowGpuUtilization", "gpuMemoryHeadroom", "dataLoadingBound"]


class UtilizationIssue(StatusModel):
    """One way the job used its hardware badly, with the spec field to change."""

    kind: UtilizationKind
    units: list[str] = Field(default_factory=list)
    """The units it was seen in."""
    message: str
    field: str
    """The spec field to change, e.g. ``training.resources.cpu``."""
    current: str | None = None
    suggested: str | None = None
    """A value that would have fitted what the units used (with headroom)."""
    saving: float | None = None
    """What the job would have cost less with the suggested value (or the idle GPU share's
    cost, for low utilisation), in the price currency."""


class UtilizationFinding(StatusModel):
    """What the work units used against what they requested (measured in each unit)."""

    measured_units: int = 0
    cpu_used_share: float | None = None
    """The peak (95th percentile) cores used over cores requested, highest of the units sized
    by training.resources."""
    memory_used_share: float | None = None
    """Peak memory used over memory requested, highest of those units."""
    gpu_util_median: float | None = None
    """Median GPU utilisation (%) of the units with GPUs, weighted by their seconds."""
    issues: list[UtilizationIssue] = Field(default_factory=list)


class Findings(StatusModel):
    """What kubetrain found about the run: overfitting, cost, explanations, utilisation."""

    overfitting: OverfittingFinding | None = None
    cost: CostFinding | None = None
    explanation: ExplanationFinding | None = None
    utilization: UtilizationFinding | None = None


class QueueStatus(StatusModel):
    """The job's place in the operator's queue while it waits (phase Queued)."""

    position: int
    """1: the next to start (among the jobs the operator watches)."""


class TrainingJobStatus(StatusModel):
    """What the job did, found and cost; written by the operator (or the local executor)."""

    phase: Phase = Phase.PENDING
    """Pending, Queued, Running, Succeeded, Failed or Suspended."""
    queue: QueueStatus | None = None
    """While phase is Queued: the job's place in the operator's queue."""
    current_stage: str | None = None
    """The stage running now (augmentation, tuning, training, explanation); unset when done."""
    progress: str | None = None
    """Progress of the current stage for people, e.g. "epoch 12/20" or "8/20 trials"."""
    cost: str | None = None
    """What the job has cost so far, as money for people and the Cost column: "0.42 USD"
    (the number: findings.cost.total)."""
    best: str | None = None
    """The best validation result so far for people, e.g. "val_accuracy=0.981 @ epoch 14"."""
    observed_generation: int | None = None
    """The metadata.generation of the spec this status describes."""
    start_time: str | None = None
    completion_time: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    """Running, Succeeded, Failed, Suspended, Queued, <Stage>Complete, OverfittingDetected,
    ..."""
    stages: dict[str, StageStatus] = Field(default_factory=dict)
    """Stage name (augmentation, tuning, training, explanation) → its status."""
    augmentation: AugmentationStatus | None = None
    tuning: TuningStatus | None = None
    training: TrainingStatus | None = None
    findings: Findings = Field(default_factory=Findings)
    artifacts: dict[str, str] = Field(default_factory=dict)
    """Files the job produced: model, report, lossCurve, ..."""
