"""Seeded train / validation / test splits, k folds, and feature standardization."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..api.spec import DatasetSpec
from .base import Dataset, DatasetError

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Splits:
    """The rows of each split; ``indices`` point into the original dataset."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    """(X, y); 0 rows when testSplit is 0."""
    indices: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(self.indices[name]) for name in SPLIT_NAMES}


def split_dataset(ds: Dataset, spec: DatasetSpec) -> Splits:
    """Train / validation / test rows: seeded, stratified for classification.

    The test rows are drawn first, so one seed gives the same test set whatever the
    validation split; the validation rows are then drawn from the rest.
    """
    test_idx, rest_idx = _test_and_rest(ds, spec)
    n = len(ds.y)
    n_val = max(1, round(spec.validation_split * n))
    if n_val >= len(rest_idx):
        raise DatasetError(
            f"dataset.validationSplit: {n} rows leave no training rows after the test and "
            f"validation splits"
        )
    train_idx, val_idx = _split(rest_idx, n_val, ds, spec.seed)
    train_idx = _take_fraction(train_idx, ds, spec)
    return _make_splits(ds, train_idx, val_idx, test_idx)


def kfold_splits(ds: Dataset, spec: DatasetSpec, folds: int) -> list[Splits]:
    """k folds of the train + validation rows; the test rows are those of ``split_dataset``.

    Fold i validates on the i-th part and trains on the others (with ``fraction`` applied).
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    if folds < 2:
        raise DatasetError(f"training.crossValidation.folds: need at least 2 folds, got {folds}")
    test_idx, rest_idx = _test_and_rest(ds, spec)
    if folds > len(rest_idx):
        raise DatasetError(
            f"training.crossValidation.folds: {folds} folds need at least {folds} rows outside "
            f"the test split; there are {len(rest_idx)}"
        )
    parts: list[tuple[np.ndarray, np.ndarray]] | None = None
    if ds.task == "classification":
        skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=spec.seed)
        try:
            with warnings.catch_warnings():
                # "The least populated class has only n members": still a valid split
                warnings.simplefilter("ignore", UserWarning)
                parts = list(skf.split(rest_idx, ds.y[rest_idx]))
        except ValueError:
            parts = None
    if parts is None:
        kf = KFold(n_splits=folds, shuffle=True, random_state=spec.seed)
        parts = list(kf.split(rest_idx))
    result = []
    for train_pos, val_pos in parts:
        train_idx = _take_fraction(np.sort(rest_idx[train_pos]), ds, spec)
        result.append(_make_splits(ds, train_idx, np.sort(rest_idx[val_pos]), test_idx))
    return result


def _test_and_rest(ds: Dataset, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    n = len(ds.y)
    all_idx = np.arange(n)
    if spec.test_split <= 0:
        return np.empty(0, dtype=np.int64), all_idx
    n_test = max(1, round(spec.test_split * n))
    if n_test >= n - 1:
        raise DatasetError(f"dataset.testSplit: {n} rows are too few to hold out a test split")
    rest_idx, test_idx = _split(all_idx, n_test, ds, spec.seed)
    return test_idx, rest_idx


def _split(idx: np.ndarray, n_out: int, ds: Dataset, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (kept, n_out held out), stratified when possible; both sorted."""
    from sklearn.model_selection import train_test_split

    kept: Any
    held: Any
    if ds.task == "classification":
        try:
            kept, held = train_test_split(
                idx, test_size=n_out, random_state=seed, shuffle=True, stratify=ds.y[idx]
            )
            return np.sort(kept).astype(np.int64), np.sort(held).astype(np.int64)
        except ValueError:
            pass  # a class too small to stratify, or fewer held-out rows than classes
    kept, held = train_test_split(idx, test_size=n_out, random_state=seed, shuffle=True)
    return np.sort(kept).astype(np.int64), np.sort(held).astype(np.int64)


def _take_fraction(train_idx: np.ndarray, ds: Dataset, spec: DatasetSpec) -> np.ndarray:
    """A seeded, stratified subset of the training rows; at least one row per class present.

    Rows are taken from the front of a seeded permutation, so a smaller fraction keeps a subset
    of the rows of a larger one (per class).
    """
    if spec.fraction >= 1.0 or len(train_idx) == 0:
        return train_idx
    n = len(train_idx)
    n_keep = max(1, round(spec.fraction * n))
    rng = np.random.default_rng(spec.seed)
    if ds.task != "classification":
        return np.sort(rng.permutation(train_idx)[:n_keep])
    labels = ds.y[train_idx]
    classes, counts = np.unique(labels, return_counts=True)
    n_keep = min(n, max(n_keep, len(classes)))
    alloc = _allocate(counts, n_keep)
    kept = [
        rng.permutation(train_idx[labels == c])[:k] for c, k in zip(classes, alloc, strict=True)
    ]
    return np.sort(np.concatenate(kept)).astype(np.int64)


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Rows per class summing to ``total``: proportional to counts, at least 1 each."""
    desired = counts * total / counts.sum()
    alloc = np.minimum(counts, np.maximum(1, np.floor(desired))).astype(np.int64)
    while alloc.sum() < total:
        room = np.where(alloc < counts, desired - alloc, -np.inf)
        alloc[int(np.argmax(room))] += 1
    while alloc.sum() > total:
        excess = np.where(alloc > 1, alloc - desired, -np.inf)
        alloc[int(np.argmax(excess))] -= 1
    return alloc


def _make_splits(
    ds: Dataset, train_idx: np.ndarray, val_idx: np.ndarray, test_idx: np.ndarray
) -> Splits:
    indices = {"train": train_idx, "val": val_idx, "test": test_idx}
    return Splits(
        train=(ds.X[train_idx], ds.y[train_idx]),
        val=(ds.X[val_idx], ds.y[val_idx]),
        test=(ds.X[test_idx], ds.y[test_idx]),
        indices=indices,
    )


@dataclass
class Standardizer:
    """Zero mean, unit variance: per feature (N, F) or per channel for images (N, C, H, W).

    Fit on the training split only; saved with the model (``to_dict``) so that predictions apply
    the same transform. A feature (or channel) that is constant in training gets std 1.
    """

    mean: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    std: np.ndarray = field(default_factory=lambda: np.ones(0, dtype=np.float32))

    MIN_STD = 1e-6

    def fit(self, X: np.ndarray) -> Standardizer:
        if X.ndim not in (2, 4):
            raise ValueError(f"expected (N, F) or (N, C, H, W), got shape {X.shape}")
        if X.shape[0] == 0:
            raise ValueError("cannot fit a Standardizer on 0 rows")
        axes = (0,) if X.ndim == 2 else (0, 2, 3)
        X64 = X.astype(np.float64)
        mean = X64.mean(axis=axes)
        std = X64.std(axis=axes)
        std = np.where(std < self.MIN_STD, 1.0, std)
        self.mean = mean.astype(np.float32)
        self.std = std.astype(np.float32)
        return self

    def _shape(self, X: np.ndarray) -> tuple[int, ...]:
        if X.ndim == 2:
            return (1, -1)
        if X.ndim == 4:
            return (1, -1, 1, 1)
        raise ValueError(f"expected (N, F) or (N, C, H, W), got shape {X.shape}")

    def transform(self, X: np.ndarray) -> np.ndarray:
        shape = self._shape(X)
        if X.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"Standardizer was fit on {self.mean.shape[0]} features/channels, got {X.shape[1]}"
            )
        out = (X - self.mean.reshape(shape)) / self.std.reshape(shape)
        return out.astype(np.float32)

    def inverse_transform(self, X: np.ndarray) -> np.ndarray:
        shape = self._shape(X)
        return (X * self.std.reshape(shape) + self.mean.reshape(shape)).astype(np.float32)

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Standardizer:
        return cls(
            mean=np.asarray(data["mean"], dtype=np.float32),
            std=np.asarray(data["std"], dtype=np.float32),
        )
