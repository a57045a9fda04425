"""The TrainingJob ``spec``: the single source of truth for the manifest and the CRD schema.

Field docstrings become the CRD's descriptions (``kubectl explain trainingjob.spec.training``).
Checks that need several fields at once live in ``model_validator``s here; checks that need the
data (is the dataset tabular or images?) live in the planner.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from .base import ApiModel
from .metrics import (
    DEFAULT_METRIC,
    Direction,
    Metric,
    Task,
    direction_of,
    headline_metric,
    task_of_metric,
)
from .quantity import CPU_PATTERN, MEMORY_PATTERN

# The task of each built-in dataset, which `task: auto` takes without reading the data.
BUILTIN_TASKS: dict[str, Task] = {
    "digits": "classification",
    "breast_cancer": "classification",
    "wine": "classification",
    "iris": "classification",
    "diabetes": "regression",
}
BUILTIN_DATASETS = tuple(BUILTIN_TASKS)
# A Kubernetes object name (DNS-1123 subdomain, without the length limit).
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
# The parameters of each built-in model with their defaults; any other key is a typo.
# Defaults are tuples so that no caller can change the table by changing its model's params.
BUILTIN_MODEL_PARAMS: dict[str, dict[str, int | tuple[int, ...]]] = {
    "mlp": {"hiddenUnits": (128, 64)},
    "cnn": {"channels": (32, 64), "hiddenUnits": 128},
    "resnet": {"channels": (32, 64, 128), "blocksPerStage": 2},
}


class FieldProblem(ValueError):
    """A failed check across fields, naming the field to blame (relative to the checked model).

    ``format_validation_error`` appends ``field`` to the model's path, so users read
    ``spec.training.precision: fp16 needs GPUs ...`` rather than ``spec.training: ...``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class DatasetCredentials(ApiModel):
    """Credentials for an s3:// dataset (never copied into status, events or logs)."""

    secret: str = Field(pattern=OBJECT_NAME_PATTERN)
    """On Kubernetes: a Secret in the job's namespace with AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY (optionally AWS_SESSION_TOKEN), given only to the data stage's pod.
    The local executor takes the same variables from its environment."""


class DatasetSpec(ApiModel):
    """Where the data comes from and how it is split. Set exactly one of builtin or uri."""

    builtin: Literal["digits", "breast_cancer", "wine", "iris", "diabetes"] | None = None
    """A dataset shipped inside scikit-learn (no download). diabetes is a regression set."""
    uri: str | None = Field(default=None, min_length=1)
    """A file or folder: a path (relative to the manifest), pvc://claim/path on Kubernetes,
    s3://bucket/key (a prefix ending in / for an imagefolder or shards) or
    https://host/file. Remote data is fetched once per version (ETag) into the job's storage
    by the data stage."""
    endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/.*)?$")
    """S3-compatible endpoint URL for s3:// URIs (MinIO, Ceph, ...); default: AWS S3."""
    credentials: DatasetCredentials | None = None
    format: Literal["npz", "csv", "parquet", "imagefolder", "shards"] | None = None
    """File format of uri: npz (arrays X and y), csv or parquet (one column is the target),
    imagefolder (one subfolder per class), shards (a folder of .npz files, each with X and y of
    the same row shape and dtype, read in name order). Inferred from the file extension when
    unset; a folder needs it."""
    target: str | None = None
    """Name of the target column for csv and parquet."""
    task: Literal["auto", "classification", "regression"] = "auto"
    """auto: classification for integer or string targets with few values, else regression."""
    validation_split: float = Field(default=0.15, gt=0, lt=0.5)
    """Fraction of the data held out for validation (early stopping, findings)."""
    test_split: float = Field(default=0.15, ge=0, lt=0.5)
    """Fraction of the data held out for the final test metrics; 0 disables the test split."""
    fraction: float = Field(default=1.0, gt=0, le=1)
    """Use only this fraction of the training split (to study scarce data)."""
    seed: int = Field(default=0, ge=0)
    """Seed of the splits, the initial weights and the data order."""
    streaming: Literal["auto", "always", "never"] = "auto"
    """imagefolder and shards only: read rows from disk batch by batch (DataLoader workers; a
    shard at a time, in a shard-grouped order) instead of holding them all in memory. auto: when
    the decoded rows would take more than half of the training unit's memory
    (training.resources.memory / nprocPerNode)."""

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.builtin is None) == (self.uri is None):
            raise ValueError(
                f"set exactly one of `builtin` ({', '.join(BUILTIN_DATASETS)}) or `uri` "
                "(a file or folder)"
            )
        if self.uri is not None:
            fmt = self.format or infer_format(self.uri)
            if fmt is None:
                raise FieldProblem(
                    "format",
                    "required when `uri` has no known extension; "
                    "allowed: npz, csv, parquet, imagefolder, shards",
                )
            if fmt in ("csv", "parquet") and not self.target:
                raise FieldProblem("target", f"required for format {fmt}: the label column's name")
        if (self.endpoint or self.credentials) and not (self.uri or "").startswith("s3://"):
            raise FieldProblem("endpoint" if self.endpoint else "credentials",
                               "applies to s3:// URIs only")
        if self.builtin is not None and (self.format or self.target):
            raise FieldProblem(
                "format" if self.format else "target",
                "applies to `uri` datasets only; remove it for a `builtin` dataset",
            )
        if self.validation_split + self.test_split >= 0.8:
            raise FieldProblem(
                "validationSplit",
                f"validationSplit + testSplit is {self.validation_split + self.test_split:g}; "
                "it must be below 0.8 to leave at least 20% to train",
            )
        return self

    @property
    def remote(self) -> bool:
        """An s3:// or https:// uri: the data stage fetches it into the job's storage."""
        return is_remote(self.uri)

    @property
    def is_folder(self) -> bool:
        """The uri names a folder (an s3:// prefix), not a file."""
        return self.resolved_format in FOLDER_FORMATS

    @property
    def resolved_format(self) -> str | None:
        return self.format or (infer_format(self.uri) if self.uri else None)

    @property
    def declared_task(self) -> Task | None:
        """The task known before the data is read: ``task`` when set, else the built-in
        dataset's; None for ``task: auto`` on a ``uri`` (the target's values decide)."""
        if self.task != "auto":
            return self.task
        return BUILTIN_TASKS[self.builtin] if self.builtin is not None else None


REMOTE_SCHEMES = ("s3://", "https://", "http://")
FOLDER_FORMATS = ("imagefolder", "shards")


def is_remote(uri: str | None) -> bool:
    """Whether a dataset uri is fetched by the data stage (object storage or the web)."""
    return bool(uri) and str(uri).startswith(REMOTE_SCHEMES)


def infer_format(uri: str) -> str | None:
    """The dataset format implied by a file extension, if any."""
    lowered = uri.lower().rstrip("/")
    for ext, fmt in ((".npz", "npz"), (".csv", "csv"), (".parquet", "parquet"), (".pq", "parquet")):
        if lowered.endswith(ext):
            return fmt
    return None


class ImageAugmentationSpec(ApiModel):
    """Image transforms (kornia). Applied to the training split only."""

    rotation: float = Field(default=10.0, ge=0, le=180)
    """Maximum rotation in degrees."""
    translate: float = Field(default=0.1, ge=0, le=0.5)
    """Maximum shift as a fraction of the image size."""
    scale: list[float] = Field(default_factory=lambda: [0.9, 1.1], min_length=2, max_length=2)
    """Range of zoom factors [min, max]."""
    horizontal_flip: bool = False
    """Flip left-right; leave off for digits and text, where a flip changes the class."""
    vertical_flip: bool = False
    """Flip upside-down."""
    noise_std: float = Field(default=0.05, ge=0, le=1)
    """Standard deviation of Gaussian noise, in units of the normalized pixel values."""
    erasing: float = Field(default=0.0, ge=0, le=1)
    """Probability of random erasing of a rectangle."""
    mixup: float = Field(default=0.0, ge=0, le=10)
    """Mixup alpha at training time; 0 disables."""
    cutmix: float = Field(default=0.0, ge=0, le=10)
    """CutMix alpha at training time; 0 disables."""

    @model_validator(mode="after")
    def _scale_range(self) -> ImageAugmentationSpec:
        low, high = self.scale
        if not 0 < low <= high <= 4:
            raise FieldProblem(
                "scale", f"must be [min, max] with 0 < min <= max <= 4 (got {self.scale})"
            )
        return self


class TabularAugmentationSpec(ApiModel):
    """Tabular augmentation. Applied to the training split only."""

    noise: float = Field(default=0.0, ge=0, le=1)
    """Gaussian noise on numeric columns, in standard deviations of each column."""
    smote: bool = False
    """Oversample minority classes with SMOTE (classification only)."""
    smote_neighbors: int = Field(default=5, ge=1, le=50)
    """k nearest neighbours SMOTE interpolates between."""


class AugmentationSpec(ApiModel):
    """The augmentation stage: more training data from the data you have."""

    enabled: bool = False
    """Run the augmentation stage before training."""
    multiplier: int = Field(default=2, ge=1, le=100)
    """Augmented copies of each training example (on top of the originals)."""
    shards: int = Field(default=1, ge=1, le=64)
    """Workers that each augment a part of the training split (then a merge step)."""
    parallelism: int = Field(default=4, ge=1, le=64)
    """Shards running at once (each a process, or a pod on Kubernetes)."""
    image: ImageAugmentationSpec | None = None
    tabular: TabularAugmentationSpec | None = None


class ModelSpec(ApiModel):
    """The network. Set exactly one of builtin or entrypoint."""

    builtin: Literal["mlp", "cnn", "resnet"] | None = None
    """mlp for tabular data, cnn for small images, resnet for larger images."""
    entrypoint: str | None = Field(default=None, pattern=ENTRYPOINT_PATTERN)
    """User model: "package.module:function"; called with (input_shape, num_outputs, dropout,
    **params) and returning a torch.nn.Module. The module must be importable in the image."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Model parameters. mlp: hiddenUnits; cnn: channels, hiddenUnits; resnet: channels,
    blocksPerStage. Passed as keyword arguments to an entrypoint."""

    @model_validator(mode="after")
    def _one_model(self) -> ModelSpec:
        if (self.builtin is None) == (self.entrypoint is None):
            raise ValueError("set exactly one of `builtin` (mlp, cnn, resnet) or `entrypoint`")
        if self.builtin is not None:
            allowed = BUILTIN_MODEL_PARAMS[self.builtin]
            for key, value in self.params.items():
                if key not in allowed:
                    raise FieldProblem(
                        f"params.{key}",
                        f"not a parameter of the {self.builtin} model; "
                        f"allowed: {', '.join(allowed)}",
                    )
                _check_builtin_param(key, value)
        return self


# Placeholders a training.command may use: ${epochs}, ${params.learningRate}, ...
PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
PLACEHOLDER_NAMES = ("epochs", "seed", "storage", "unitDir", "checkpointDir", "modelDir",
                     "dataDir", "params", "trial", "fold")
PARAM_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"


def placeholder_problems(arg: str) -> list[str]:
    """What is wrong with the ${...} placeholders of one command argument (empty: nothing)."""
    problems = []
    for name in PLACEHOLDER.findall(arg):
        if name.startswith("params."):
            if not re.match(PARAM_NAME_PATTERN, name[len("params."):]):
                problems.append(f"placeholder ${{{name}}}: not a parameter name")
        elif name not in PLACEHOLDER_NAMES:
            problems.append(
                f"unknown placeholder ${{{name}}}; allowed: "
                + ", ".join(f"${{{n}}}" for n in PLACEHOLDER_NAMES) + ", ${params.NAME}")
    return problems


def _check_builtin_param(key: str, value: Any) -> None:
    if key in ("hiddenUnits", "channels") and isinstance(value, list):
        if not value or not all(isinstance(v, int) and 1 <= v <= 8192 for v in value):
            raise FieldProblem(f"params.{key}", "must be a non-empty list of integers in 1..8192")
        return
    ok_int = isinstance(value, int) and not isinstance(value, bool)
    if key == "hiddenUnits" and ok_int and 1 <= value <= 8192:
        return
    if key == "blocksPerStage" and ok_int and 1 <= value <= 8:
        return
    expected = {
        "hiddenUnits": "an integer or a list of integers in 1..8192",
        "channels": "a list of integers in 1..8192",
        "blocksPerStage": "an integer in 1..8",
    }[key]
    raise FieldProblem(f"params.{key}", f"must be {expected} (got {value!r})")


class EarlyStoppingSpec(ApiModel):
    """Stop when the monitored metric stops improving."""

    enabled: bool = True
    """Set false to keep the section but switch early stopping off."""
    monitor: Metric = DEFAULT_METRIC
    """The validation metric to watch; accuracy is maximized, loss and rmse minimized."""
    patience: int = Field(default=5, ge=1, le=1000)
    """Epochs without improvement before stopping."""
    min_delta: float = Field(default=0.0, ge=0, le=1)
    """Relative improvement that counts: 0.01 means 1% better than the best so far."""
    restore_best: bool = True
    """Keep the weights of the best epoch, not the last."""


class CrossValidationSpec(ApiModel):
    """k-fold cross-validation on the training + validation data (the test split stays out)."""

    folds: int = Field(ge=2, le=20)
    """Number of folds k; each fold trains and validates one model."""


class ResourcesSpec(ApiModel):
    """Compute for the training stage, per node (pod)."""

    nodes: int = Field(default=1, ge=1, le=256)
    """Machines (pods); each runs nprocPerNode DDP workers."""
    nproc_per_node: int | None = Field(default=None, ge=1, le=64)
    """DDP worker processes per node; defaults to gpusPerNode, or 1 on CPU."""
    gpus_per_node: int = Field(default=0, ge=0, le=16)
    """nvidia.com/gpu per node; 0 trains on the CPU."""
    cpu: str = Field(default="1", pattern=CPU_PATTERN)
    """CPU request per node, a Kubernetes quantity (500m, 2)."""
    memory: str = Field(default="2Gi", pattern=MEMORY_PATTERN)
    """Memory request per node, a Kubernetes quantity (512Mi, 4Gi)."""

    @property
    def workers_per_node(self) -> int:
        return self.nproc_per_node or max(1, self.gpus_per_node)

    @model_validator(mode="after")
    def _gpu_workers(self) -> ResourcesSpec:
        if self.gpus_per_node and self.nproc_per_node and self.nproc_per_node > self.gpus_per_node:
            raise FieldProblem(
                "nprocPerNode",
                "cannot exceed `gpusPerNode` (one worker per GPU); "
                f"got {self.nproc_per_node} workers for {self.gpus_per_node} GPUs",
            )
        return self


class CheckpointSpec(ApiModel):
    """Checkpoints for resuming after a crash, eviction or suspend."""

    every_epochs: int = Field(default=1, ge=1, le=10000)
    """Save a checkpoint every N epochs (and at the end)."""


class TrainingSpec(ApiModel):
    """The training stage: optimizer, regularization, precision and compute."""

    epochs: int = Field(default=20, ge=1, le=10000)
    """Passes over the training split (early stopping may end training sooner)."""
    batch_size: int = Field(default=64, ge=1, le=65536)
    """Global batch size, split across all DDP workers."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """adamw, or sgd with momentum."""
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    """Peak learning rate; the schedule scales it over the epochs."""
    momentum: float = Field(default=0.9, ge=0, lt=1)
    """Momentum for sgd."""
    schedule: Literal["constant", "cosine", "step", "onecycle"] = "cosine"
    """Learning-rate schedule over the epochs."""
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    """Decoupled weight decay (L2 regularization)."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout probability in the built-in models."""
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    """Label smoothing for classification."""
    early_stopping: EarlyStoppingSpec | None = None
    cross_validation: CrossValidationSpec | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast precision: auto (bf16 on a GPU that supports it, fp32 on older GPUs and on the
    CPU), fp32, bf16 (GPUs with bfloat16: Ampere and later) or fp16 (GPUs, with a gradient
    scaler). The precision used is in status.training.acceleration."""
    compile: Literal["none", "default", "reduce-overhead"] = "none"
    """torch.compile the model for training: default, or reduce-overhead (CUDA graphs too, for
    small launch-bound models; GPUs only). Compiling takes seconds to minutes once per run
    (reported as status.training.acceleration.compileSeconds); none trains eagerly."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    command: list[str] | None = Field(default=None, min_length=1)
    """Custom script mode: run your own program as the training stage (and as each tuning
    trial) instead of the built-in trainer. It learns where things are from KUBETRAIN_*
    environment variables and from placeholders in its arguments (${epochs}, ${params.NAME},
    ${checkpointDir}, ...), and reports per-epoch metrics as kubetrain JSON lines on stdout.
    Under torchrun (one process per rank) when the job asks for more than one process."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Custom script mode: your program's own parameters and their values (KUBETRAIN_PARAMS,
    ${params.NAME}); a sweep's values override them, and the best trial's train the model."""
    image: str | None = None
    """Image of the training stage and the trials (custom script mode: an image with your
    program); default: spec.image, else the operator's worker image."""

    @model_validator(mode="after")
    def _monitor_matches(self) -> TrainingSpec:
        if self.params and self.command is None:
            raise FieldProblem("params", "applies to training.command only (your program's "
                               "parameters); the built-in model takes model.params")
        if self.command is not None:
            for i, arg in enumerate(self.command):
                for problem in placeholder_problems(arg):
                    raise FieldProblem(f"command[{i}]", problem)
        if self.precision in ("fp16", "bf16") and self.resources.gpus_per_node == 0:
            raise FieldProblem(
                "precision", f"{self.precision} needs GPUs (`resources.gpusPerNode` > 0); use "
                "auto or fp32 on the CPU"
            )
        if self.compile == "reduce-overhead" and self.resources.gpus_per_node == 0:
            raise FieldProblem(
                "compile", "reduce-overhead captures CUDA graphs and needs GPUs "
                "(`resources.gpusPerNode` > 0); use default or none on the CPU"
            )
        return self


class SearchDimension(ApiModel):
    """One hyperparameter of the search space."""

    type: Literal["float", "int", "categorical"]
    """float or int (a range from low to high), or categorical (a list of choices)."""
    low: float | None = None
    """Lower bound of a float or int dimension (inclusive)."""
    high: float | None = None
    """Upper bound of a float or int dimension (inclusive)."""
    log: bool = False
    """Sample on a log scale (low must be > 0)."""
    step: float | None = Field(default=None, gt=0)
    """Grid step for int and float (needed by the grid sampler for numbers)."""
    choices: list[Any] | None = Field(default=None, min_length=1)
    """The values of a categorical dimension."""

    @model_validator(mode="after")
    def _bounds(self) -> SearchDimension:
        if self.type == "categorical":
            if not self.choices:
                raise FieldProblem("choices", "a categorical dimension needs a list of values")
            if self.low is not None or self.high is not None:
                raise FieldProblem(
                    "low" if self.low is not None else "high",
                    "a categorical dimension takes `choices`, not `low`/`high`",
                )
            return self
        if self.low is None or self.high is None:
            raise FieldProblem(
                "low" if self.low is None else "high",
                f"a {self.type} dimension needs `low` and `high` (or use type: categorical)",
            )
        if self.low >= self.high:
            raise FieldProblem("low", f"must be less than `high` (got {self.low} >= {self.high})")
        if self.log and self.low <= 0:
            raise FieldProblem("low", f"must be > 0 with `log: true` (got {self.low})")
        if self.choices is not None:
            raise FieldProblem(
                "choices", f"a {self.type} dimension takes `low`/`high`; use type: categorical"
            )
        return self


# Hyperparameters a sweep may set, and where they land in the spec.
TUNABLE_PARAMETERS = (
    "learningRate", "weightDecay", "dropout", "batchSize", "optimizer", "momentum",
    "labelSmoothing", "epochs", "schedule",
)
TUNABLE_PREFIX_MODEL = "model."


class ObjectiveSpec(ApiModel):
    """The validation metric the sweep optimizes, and in which direction."""

    metric: Metric = DEFAULT_METRIC
    """The validation metric each trial reports."""
    direction: Direction = "minimize"
    """maximize for val_accuracy; minimize for val_loss and val_rmse."""


ObjectiveName = Literal["val_loss", "val_accuracy", "val_rmse", "cost", "trainSeconds"]
"""What a sweep can optimize: a validation metric, or what a trial costs."""
RESOURCE_OBJECTIVES = ("cost", "trainSeconds")
"""Objectives measured on the trial itself rather than on its validation split."""
MULTI_OBJECTIVE_SAMPLERS = ("nsga2", "tpe", "gp", "random", "grid")
"""The samplers that take several objectives (Optuna's CMA-ES takes one)."""


class TuningObjectiveSpec(ApiModel):
    """One objective of a multi-objective sweep."""

    name: ObjectiveName
    """val_loss, val_accuracy or val_rmse (the trial's best epoch); trainSeconds (the seconds of
    its epochs); cost (those seconds x the trial's requested resources x the job's prices)."""
    direction: Direction | None = None
    """maximize for val_accuracy, minimize for the others (the default: the one that is right)."""

    @property
    def resolved_direction(self) -> Direction:
        return self.direction or direction_of(self.name)

    @property
    def is_metric(self) -> bool:
        return self.name not in RESOURCE_OBJECTIVES

    @model_validator(mode="after")
    def _direction(self) -> TuningObjectiveSpec:
        expected = direction_of(self.name)
        if self.direction is not None and self.direction != expected:
            raise FieldProblem("direction", f"must be {expected} for {self.name}")
        return self


class SelectionSpec(ApiModel):
    """Which trial of a multi-objective sweep trains the final model."""

    cheapest_within: float = Field(ge=0, le=1000)
    """The cheapest complete trial (by its cost) whose metric (the first validation metric of
    tuning.objectives) is within this of the best trial's: 0.01 = one point of accuracy."""


class TuningSpec(ApiModel):
    """The tuning stage: a hyperparameter sweep whose best trial feeds the final training."""

    enabled: bool = False
    """Run the sweep before the final training."""
    backend: Literal["optuna", "ray"] = "optuna"
    """optuna (one study shared by all trial processes) or ray (Ray Tune)."""
    sampler: Literal["grid", "random", "tpe", "cmaes", "gp", "nsga2"] = "tpe"
    """How trials pick values: grid, random, tpe (Bayesian), cmaes, gp (Gaussian process), or
    nsga2 (genetic, for several objectives)."""
    pruner: Literal["none", "median", "hyperband", "successive-halving"] = "median"
    """Stops unpromising trials early; none runs every trial to the end."""
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    objectives: list[TuningObjectiveSpec] | None = Field(default=None, min_length=2,
                                                         max_length=4)
    """Several objectives instead of objective (e.g. val_accuracy and cost): status holds the
    Pareto front; samplers nsga2, tpe, gp, random, grid; no pruner (Optuna prunes one
    objective only)."""
    selection: SelectionSpec | None = None
    """With objectives: the rule that picks the trial whose parameters train the final model;
    default: the trial with the best metric."""
    trials: int = Field(default=20, ge=1, le=10000)
    """Trials in the sweep."""
    parallelism: int = Field(default=2, ge=1, le=256)
    """Trials running at once, each in its own process (pod)."""
    epochs_per_trial: int | None = Field(default=None, ge=1, le=10000)
    """Epochs of each trial; defaults to training.epochs."""
    search_space: dict[str, SearchDimension] = Field(default_factory=dict)
    """Hyperparameter name → dimension. Names: learningRate, weightDecay, dropout, batchSize,
    optimizer, momentum, labelSmoothing, epochs, schedule, or model.<param>."""
    storage: str | None = None
    """An external Optuna storage URL (postgresql://...); default: a study server on the job's
    storage."""

    @model_validator(mode="after")
    def _space(self) -> TuningSpec:
        if not self.enabled:
            return self
        if {"parallelism", "trials"} <= self.model_fields_set and self.parallelism > self.trials:
            # As Katib does: both set and contradictory is a mistake; a default is just capped.
            raise FieldProblem(
                "parallelism", f"{self.parallelism} is more than tuning.trials "
                f"({self.trials}); set tuning.parallelism <= tuning.trials"
            )
        if not self.search_space:
            raise FieldProblem(
                "searchSpace", "needs at least one hyperparameter when tuning is on: "
                f"{', '.join(TUNABLE_PARAMETERS)}, model.<param>, or your command's own names"
            )
        if self.sampler == "grid":
            for name, dim in self.search_space.items():
                if dim.type != "categorical" and dim.step is None:
                    raise FieldProblem(
                        f"searchSpace.{name}.step",
                        f"required by the grid sampler for a {dim.type} dimension "
                        "(or use another sampler: random, tpe, cmaes, gp)",
                    )
        expected = direction_of(self.objective.metric)
        if self.objective.direction != expected:
            raise FieldProblem(
                "objective.direction", f"must be {expected} for {self.objective.metric}"
            )
        return self

    @model_validator(mode="after")
    def _objectives(self) -> TuningSpec:
        if not self.enabled:
            return self
        if self.objectives is None:
            if self.selection is not None:
                raise FieldProblem(
                    "selection", "needs several objectives (tuning.objectives, e.g. "
                    "val_accuracy and cost); with one objective the best trial is taken")
            return self
        # (A written-out spec carries the default objective: only another one contradicts.)
        if self.objective != ObjectiveSpec():
            raise FieldProblem("objective", "set either objective (one) or objectives "
                               "(several), not both")
        seen: set[str] = set()
        for i, objective in enumerate(self.objectives):
            if objective.name in seen:
                raise FieldProblem(f"objectives[{i}].name", f"{objective.name} is already an "
                                   "objective; each objective once")
            seen.add(objective.name)
        if not any(o.is_metric for o in self.objectives):
            raise FieldProblem("objectives", "needs a validation metric (val_loss, "
                               "val_accuracy or val_rmse) beside "
                               + ", ".join(o.name for o in self.objectives))
        if self.pruner != "none":
            raise FieldProblem(
                "pruner", f"{self.pruner} cannot be used with several objectives: Optuna "
                "prunes single-objective studies only; set pruner: none")
        if self.sampler not in MULTI_OBJECTIVE_SAMPLERS:
            raise FieldProblem(
                "sampler", f"{self.sampler} optimizes one objective; with several use "
                + ", ".join(MULTI_OBJECTIVE_SAMPLERS))
        if self.backend != "optuna":
            raise FieldProblem("backend", f"{self.backend} runs single-objective sweeps; use "
                               "optuna with several objectives")
        return self

    @property
    def multi_objective(self) -> bool:
        return self.objectives is not None

    @property
    def objective_list(self) -> list[TuningObjectiveSpec]:
        """The sweep's objectives in order: ``objectives``, or the one ``objective``."""
        if self.objectives is not None:
            return list(self.objectives)
        return [TuningObjectiveSpec(name=self.objective.metric,
                                    direction=self.objective.direction)]

    @property
    def metric_objective(self) -> ObjectiveSpec:
        """The validation metric that names the best trial: ``objective``, or the first metric
        among ``objectives``."""
        if self.objectives is None:
            return self.objective
        first = next(o for o in self.objectives if o.is_metric)
        metric: Metric = first.name  # type: ignore[assignment]  # is_metric: not cost
        return ObjectiveSpec(metric=metric, direction=first.resolved_direction)


class ExplanationSpec(ApiModel):
    """The explanation stage: SHAP values of the trained model."""

    enabled: bool = False
    """Run the explanation stage after training."""
    method: Literal["auto", "gradient", "deep", "permutation", "kernel"] = "auto"
    """auto picks gradient (expected gradients) for torch models."""
    samples: int = Field(default=100, ge=1, le=100000)
    """Test examples to explain."""
    background: int = Field(default=50, ge=1, le=10000)
    """Background (reference) examples from the training split."""
    top_k: int = Field(default=10, ge=1, le=1000)
    """Features listed in status."""


RemediableVerdict = Literal["overfitting", "suspected"]


def _overfitting_only() -> list[RemediableVerdict]:
    return ["overfitting"]


class RemediationSpec(ApiModel):
    """How findings.overfitting.action: remediate trains again."""

    max_attempts: int = Field(default=3, ge=1, le=10)
    """Retrainings at most, each a training unit with its own findings and cost."""
    on: list[RemediableVerdict] = Field(default_factory=_overfitting_only, min_length=1)
    """The verdicts that start (and continue) remediation; add suspected to act on it too."""


class OverfittingSpec(ApiModel):
    """When to call a run overfitting, and what to do about it."""

    gap_threshold: float = Field(default=0.1, gt=0, le=100)
    """Relative gap (val_loss - train_loss) / train_loss above which the gap rule counts."""
    patience: int = Field(default=3, ge=1, le=1000)
    """Consecutive evaluations a rule must hold before it fires."""
    warmup_epochs: int = Field(default=2, ge=0, le=10000)
    """Epochs ignored at the start, when losses move fast."""
    min_delta: float = Field(default=0.01, ge=0, le=1)
    """Relative improvement of the validation loss that counts as improving (trend rule)."""
    action: Literal["none", "stop", "remediate"] = "none"
    """stop: end training when overfitting is detected and keep the best checkpoint.
    remediate: when the final training's verdict is one of remediation.on, train again with
    the regularization the recommendations name (one change or a small set per attempt, up to
    remediation.maxAttempts) and deliver the attempt with the best validation metric."""
    remediation: RemediationSpec | None = None
    """Settings of action: remediate (defaults when unset)."""

    @model_validator(mode="after")
    def _remediation_only_with_remediate(self) -> OverfittingSpec:
        if self.remediation is not None and self.action != "remediate":
            raise FieldProblem("remediation", f"applies to action: remediate only (action is "
                               f"{self.action}); set action: remediate or remove it")
        return self

    @property
    def remediation_settings(self) -> RemediationSpec:
        """The remediation settings in force (the defaults when the section is unset)."""
        return self.remediation or RemediationSpec()


class PricesSpec(ApiModel):
    """Prices per hour of requested resources."""

    cpu_hour: float = Field(default=0.031611, ge=0)
    """Per vCPU-hour. Default: Google Cloud N2, us-central1, on-demand list price."""
    memory_gi_b_hour: float = Field(default=0.004237, ge=0, alias="memoryGiBHour")
    """Per GiB-hour. Default: Google Cloud N2, us-central1, on-demand list price."""
    gpu_hour: float = Field(default=2.933908, ge=0)
    """Per GPU-hour. Default: Google Cloud NVIDIA A100 40GB, us-central1, on-demand list price."""
    currency: str = Field(default="USD", pattern=CURRENCY_PATTERN)
    """ISO 4217 code of the prices, e.g. USD or EUR."""


class BudgetSpec(ApiModel):
    """A spending limit for the whole job."""

    max_cost: float = Field(gt=0)
    """Stop launching work once the job's cost reaches this (in the price currency)."""
    action: Literal["stop", "warn"] = "stop"
    """stop: launch no further work once the budget is reached; warn: only set the
    BudgetExceeded condition."""


class CostSpec(ApiModel):
    """How the cost finding prices the requested resources, and an optional budget."""

    prices: PricesSpec = Field(default_factory=PricesSpec)
    price_config_map: str | None = None
    """On Kubernetes: a ConfigMap with keys cpuHour, memoryGiBHour, gpuHour, currency."""
    budget: BudgetSpec | None = None


class FindingsSpec(ApiModel):
    """Settings of the findings computed from the run: overfitting and cost."""

    overfitting: OverfittingSpec = Field(default_factory=OverfittingSpec)
    cost: CostSpec = Field(default_factory=CostSpec)


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
