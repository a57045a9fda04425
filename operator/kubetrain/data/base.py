"""What every dataset loader returns: ``Dataset`` (the rows, the target, the task), the error
that names the spec field at fault, and how the task and class names follow from the target.

numpy only: the planner and the controller inspect datasets without the training stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..api.metrics import Task

Kind = Literal["tabular", "image"]

# auto task: integer / bool targets with at most this many distinct values are classes.
MAX_AUTO_CLASSES = 50
AUTO_CLASS_FRACTION = 0.05


class DatasetError(ValueError):
    """The dataset cannot be loaded; the message starts with the spec field at fault."""


@dataclass
class Dataset:
    """A whole dataset in memory, before splitting."""

    X: np.ndarray
    """float32; tabular (N, F) or images (N, C, H, W)."""
    y: np.ndarray
    """int64 class indices for classification, float32 for regression."""
    task: Task
    kind: Kind
    feature_names: list[str]
    """Tabular: column names (one-hot columns as "color=red"); images: "c0_h3_w5"."""
    class_names: list[str] = field(default_factory=list)
    """Names of the class indices; empty for regression."""
    name: str = "dataset"

    @property
    def num_outputs(self) -> int:
        return len(self.class_names) if self.task == "classification" else 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.X.shape[1:])

    def __len__(self) -> int:
        return int(self.X.shape[0])


def image_feature_names(shape: tuple[int, ...]) -> list[str]:
    """Names of the pixels of a (C, H, W) image: "c0_h3_w5"."""
    c, h, w = shape
    return [f"c{ci}_h{hi}_w{wi}" for ci in range(c) for hi in range(h) for wi in range(w)]


def infer_task(y: np.ndarray) -> Task:
    """auto: classification for string/bool targets, and for integer targets with few values."""
    kind = y.dtype.kind
    if kind in "OUSb":
        return "classification"
    if kind in "iu":
        n_unique = len(np.unique(y))
        if n_unique <= MAX_AUTO_CLASSES or n_unique < AUTO_CLASS_FRACTION * len(y):
            return "classification"
    return "regression"


def resolve_task(y_raw: np.ndarray, task: str) -> tuple[np.ndarray, Task, list[str]]:
    """The target as model labels, the task and the class names."""
    if y_raw.dtype.kind == "O":
        y_raw = y_raw.astype(str)
    resolved: Task = infer_task(y_raw) if task == "auto" else task  # type: ignore[assignment]
    kind = y_raw.dtype.kind
    if resolved == "regression":
        if kind in "OUS":
            raise DatasetError(
                "dataset.task: regression needs numeric targets; the target holds strings "
                f"such as {str(y_raw[0])!r}"
            )
        y = y_raw.astype(np.float32)
        if not np.all(np.isfinite(y)):
            raise DatasetError("dataset.target: regression targets must be finite numbers")
        return y, resolved, []
    if kind == "f":
        if not np.all(np.isfinite(y_raw)):
            raise DatasetError("dataset.task: classification targets must not be NaN or infinite")
        frac = np.mod(y_raw, 1) != 0
        if frac.any():
            example = y_raw[np.argmax(frac)]
            raise DatasetError(
                "dataset.task: classification needs integer or string targets; the target "
                f"has non-integer values such as {example}; use task: regression"
            )
        y_raw = y_raw.astype(np.int64)
    if kind == "b":
        y_raw = y_raw.astype(np.int64)
    values, inverse = np.unique(y_raw, return_inverse=True)
    if len(values) < 2:
        raise DatasetError(
            f"dataset.target: classification needs at least 2 classes; found only {values!r}"
        )
    names = ["False", "True"] if kind == "b" else [str(v) for v in values.tolist()]
    return inverse.reshape(-1).astype(np.int64), resolved, names


def require_xy(names: list[str], what: str) -> None:
    """An npz file (or shard) must hold arrays X and y."""
    for key in ("X", "y"):
        if key not in names:
            raise DatasetError(f"dataset.uri: {what} has no array {key!r}; "
                               f"arrays: {', '.join(names) or '(none)'}")
