"""``spec.runPolicy``, ``spec.storage``, ``spec.tracking`` and the whole ``TrainingJobSpec`` with
its checks across sections."""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from ..base import ApiModel
from ..metrics import DEFAULT_METRIC, Metric, headline_metric, task_of_metric
from .common import OBJECT_NAME_PATTERN, FieldProblem
from .data import AugmentationSpec, DatasetSpec
from .findings import ExplanationSpec, FindingsSpec
from .training import PARAM_NAME_PATTERN, ModelSpec, TrainingSpec
from .tuning import TUNABLE_PARAMETERS, TUNABLE_PREFIX_MODEL, TuningSpec


class RunPolicySpec(ApiModel):
    """How the job runs on Kubernetes."""

    backoff_limit: int = Field(default=3, ge=0, le=100)
    """Restarts of a failed stage (training restarts its whole gang from the checkpoint)."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the job when it runs longer than this."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the job this long after it finished."""
    suspend: bool = False
    """Remove running pods; resuming continues from the checkpoint."""
    queue_name: str | None = Field(default=None, pattern=OBJECT_NAME_PATTERN)
    """Kueue LocalQueue; set as the kueue.x-k8s.io/queue-name label. A job with it (or with
    that label itself) is left to Kueue: the operator's own queue neither holds nor counts it."""
    priority: int = Field(default=0, ge=-1000, le=1000)
    """Place in the operator's queue (when it limits running jobs): higher starts first; equal
    priorities start in creation order."""


class StorageSpec(ApiModel):
    """Where checkpoints, models and reports go."""

    pvc: str | None = Field(default=None, pattern=OBJECT_NAME_PATTERN)
    """PersistentVolumeClaim mounted by every pod (ReadWriteMany when pods span nodes)."""
    path: str | None = None
    """Local executor: a directory (default ./kubetrain-runs/<name>); on Kubernetes, a subpath
    inside the PVC."""


MLFLOW_CREDENTIAL_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                          "MLFLOW_TRACKING_TOKEN")
"""Keys of tracking.mlflow.credentials.secret: MLflow's client reads them from the environment."""


class TrackingCredentials(ApiModel):
    """Credentials for the MLflow tracking server (never copied into status, events or logs)."""

    secret: str = Field(pattern=OBJECT_NAME_PATTERN)
    """On Kubernetes: a Secret in the job's namespace with MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN, given to the work units' pods. The local
    executor takes the same variables from its environment."""


class MlflowSpec(ApiModel):
    """Log every work unit to an MLflow tracking server: parameters, per-epoch metrics, final
    metrics, findings, cost and artifacts; a sweep as a parent run with a child run per trial."""

    uri: str = Field(pattern=r"^https?://[^\s/]+(/.*)?$")
    """The tracking server, e.g. http://mlflow.mlops.svc:5000 (reached from the pods)."""
    experiment: str | None = Field(default=None, min_length=1, max_length=500)
    """The experiment the runs go to (created when missing); default: the job's name."""
    credentials: TrackingCredentials | None = None


class TrackingSpec(ApiModel):
    """Experiment tracking. A tracking server that cannot be reached never fails the training:
    the unit warns, and the job gets a TrackingDegraded condition and a warning event."""

    tensorboard: bool = False
    """Write TensorBoard event files (per-epoch metrics) to the job's storage, one run per work
    unit under ``<storage>/tensorboard/`` (``tensorboard --logdir <storage>/tensorboard``)."""
    mlflow: MlflowSpec | None = None


class TrainingJobSpec(ApiModel):
    """A whole training pipeline: data → augmentation → tuning → training → explanation."""

    image: str | None = None
    """Worker image; default from the operator's configuration."""
    dataset: DatasetSpec
    augmentation: AugmentationSpec = Field(default_factory=AugmentationSpec)
    model: ModelSpec | None = None
    """The network the built-in trainer trains; leave it out when training.command runs your
    own program."""
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    tuning: TuningSpec = Field(default_factory=TuningSpec)
    explanation: ExplanationSpec = Field(default_factory=ExplanationSpec)
    findings: FindingsSpec = Field(default_factory=FindingsSpec)
    run_policy: RunPolicySpec = Field(default_factory=RunPolicySpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    @model_validator(mode="after")
    def _cross_section(self) -> TrainingJobSpec:
        self._model_or_command()
        self._tunable_names()
        task = self.dataset.declared_task
        es = self.training.early_stopping
        checked: list[tuple[str, Metric]] = []
        if es is not None and es.enabled:
            checked.append(("training.earlyStopping.monitor", es.monitor))
        if self.tuning.enabled and self.tuning.objectives is None:
            checked.append(("tuning.objective.metric", self.tuning.objective.metric))
        elif self.tuning.enabled:
            checked += [(f"tuning.objectives[{i}].name", o.name)  # type: ignore[misc]
                        for i, o in enumerate(self.tuning.objectives or ()) if o.is_metric]
        for field, metric in checked:
            needs = task_of_metric(metric)
            if task is not None and needs not in (None, task):
                raise FieldProblem(
                    field,
                    f"{metric} needs a {needs} dataset; use {DEFAULT_METRIC} or "
                    f"{headline_metric(task)}",
                )
        self._remediation_supported()
        if self.training.cross_validation and self.training.resources.nodes > 1:
            raise FieldProblem(
                "training.crossValidation",
                "runs one fold per work unit on one node; set `training.resources.nodes: 1`",
            )
        return self

    @property
    def custom(self) -> bool:
        """Custom script mode: training.command runs the user's program."""
        return self.training.command is not None

    def _model_or_command(self) -> None:
        if self.model is None and not self.custom:
            raise FieldProblem(
                "model", "required: a built-in model (model.builtin) or your own "
                "(model.entrypoint), or set training.command to run your own program")
        if self.model is not None and self.custom:
            raise FieldProblem(
                "model", "remove it: with training.command your program builds its own model "
                "(pass it settings through tuning parameters or the command's arguments)")

    def _remediation_supported(self) -> None:
        if self.findings.overfitting.action != "remediate":
            return
        if self.custom:
            raise FieldProblem(
                "findings.overfitting.action", "remediate needs the built-in trainer: it "
                "changes model and training fields your program (training.command) may not "
                "read; use action: stop or none with training.command")

    def _tunable_names(self) -> None:
        if not self.tuning.enabled:
            return
        if self.custom and self.tuning.backend == "ray":
            raise FieldProblem(
                "tuning.backend", "ray is not available with training.command (Ray stops a "
                "trial from outside, which would orphan your program); use optuna")
        for name in self.tuning.search_space:
            if self.custom:
                # Your program's own parameters; the built-in names still set training fields.
                if not re.match(PARAM_NAME_PATTERN, name):
                    raise FieldProblem(f"tuning.searchSpace.{name}",
                                       "must be a name like learningRate or model.width")
            elif name not in TUNABLE_PARAMETERS and not name.startswith(TUNABLE_PREFIX_MODEL):
                raise FieldProblem(
                    f"tuning.searchSpace.{name}", "is not tunable; allowed: "
                    f"{', '.join(TUNABLE_PARAMETERS)} or model.<param> (any name with "
                    "training.command)")


NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
