"""Validation metrics: their names, which are maximized, the one a job monitors, the headline.

Each of these is decided here once; the spec's checks, the trainer's early stopping, the
overfitting finding and the status import them. Pure and torch-free, like all of ``api``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .spec import TrainingJobSpec

Metric = Literal["val_loss", "val_accuracy", "val_rmse"]
"""A validation metric that early stopping can monitor and a sweep can optimize."""
Direction = Literal["minimize", "maximize"]
Task = Literal["classification", "regression"]

# The metric that applies to every task, and defines the best epoch when nothing else does.
DEFAULT_METRIC: Metric = "val_loss"
# Metrics where larger is better; every other metric is minimized.
MAXIMIZED = frozenset({"val_accuracy"})
# The metric of each task that the other task does not have (val_loss applies to both).
_TASK_METRIC: dict[Task, Metric] = {"classification": "val_accuracy", "regression": "val_rmse"}


def is_maximized(metric: str) -> bool:
    """Whether larger values of ``metric`` are better: accuracy; losses and RMSE are minimized."""
    return metric in MAXIMIZED


def direction_of(metric: str) -> Direction:
    """The direction in which ``metric`` improves, as a sweep's objective names it."""
    return "maximize" if is_maximized(metric) else "minimize"


def monitored_metric(spec: TrainingJobSpec) -> Metric:
    """The metric that defines the best epoch: early stopping's monitor while early stopping is
    enabled, else val_loss."""
    es = spec.training.early_stopping
    return es.monitor if es is not None and es.enabled else DEFAULT_METRIC


def headline_metric(task: str) -> Metric:
    """The metric that sums up a model: val_accuracy for classification, else val_rmse."""
    return _TASK_METRIC["classification" if task == "classification" else "regression"]


def task_of_metric(metric: str) -> Task | None:
    """The task ``metric`` needs (val_accuracy classification, val_rmse regression); None when
    it applies to both (val_loss)."""
    return next((task for task, own in _TASK_METRIC.items() if own == metric), None)
