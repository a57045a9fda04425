"""``spec.model`` and ``spec.training``: the network (or your own program) and how it is trained."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from ..base import ApiModel
from ..metrics import DEFAULT_METRIC, Metric
from ..quantity import CPU_PATTERN, MEMORY_PATTERN
from .common import BUILTIN_MODEL_PARAMS, ENTRYPOINT_PATTERN, FieldProblem


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
