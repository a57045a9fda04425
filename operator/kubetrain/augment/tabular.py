"""Tabular augmentation: Gaussian noise scaled per column, and SMOTE (imbalanced-learn).

Pure numpy (and imbalanced-learn for the neighbours): no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import AugmentationError


def noise_columns(X_train: np.ndarray) -> np.ndarray:
    """Columns that take noise: numeric ones, not 0/1 indicators (one-hot or boolean columns)."""
    binary = np.all((X_train == 0) | (X_train == 1), axis=0)
    return ~binary


def add_noise(
    X: np.ndarray, column_std: np.ndarray, noise: float, copies: int,
    rng: np.random.Generator, columns: np.ndarray | None = None,
) -> np.ndarray:
    """``copies`` noisy versions of every row, copy-major (row ``k * N + i`` is copy k of row i).

    Each column gets Gaussian noise of standard deviation ``noise * column_std`` (the column's
    standard deviation in the training split); columns outside ``columns`` are copied unchanged.
    """
    n, features = X.shape
    if copies <= 0 or noise <= 0 or n == 0:
        return np.empty((0, features), dtype=np.float32)
    scale = noise * np.asarray(column_std, dtype=np.float64)
    if columns is not None:
        scale = np.where(columns, scale, 0.0)
    base = np.tile(X.astype(np.float64), (copies, 1))
    return (base + rng.standard_normal(base.shape) * scale).astype(np.float32)


@dataclass
class SmoteResult:
    X: np.ndarray
    y: np.ndarray
    base: np.ndarray
    """Row (position in the X given) each sample was interpolated from."""
    partner: np.ndarray
    """The neighbour it was interpolated towards."""
    k_neighbors: int
    targets: dict[int, int]
    """Class → rows after SMOTE (originals included), for the classes it oversampled."""
    skipped: list[int]
    """Minority classes with a single row, which SMOTE cannot interpolate."""


def smote_targets(y: np.ndarray, copies: int) -> tuple[dict[int, int], list[int]]:
    """Rows per class to reach with SMOTE so that, once every original row also has ``copies``
    noisy copies, all classes end up as large as the largest: ``(1 + copies) * max_count``.
    """
    classes, counts = np.unique(y, return_counts=True)
    largest = int(counts.max()) if counts.size else 0
    targets: dict[int, int] = {}
    skipped: list[int] = []
    for cls, count in zip(classes.tolist(), counts.tolist(), strict=True):
        if count >= largest:
            continue
        if count < 2:
            skipped.append(int(cls))
            continue
        targets[int(cls)] = count + (1 + copies) * (largest - count)
    return targets, skipped


def smote(X: np.ndarray, y: np.ndarray, *, neighbors: int, seed: int, copies: int = 0,
          task: str = "classification") -> SmoteResult:
    """Synthetic minority rows: each on the segment from a row to one of its k nearest
    same-class neighbours, k = min(neighbors, smallest oversampled class - 1).

    Neighbours are found on standardized columns (so no column dominates the distances); the
    samples are interpolated in the original units.
    """
    if task != "classification":
        raise AugmentationError(
            "augmentation.tabular.smote: SMOTE oversamples minority classes and needs a "
            "classification dataset; set smote: false"
        )
    from imblearn.over_sampling import SMOTE

    targets, skipped = smote_targets(y, copies)
    empty = SmoteResult(np.empty((0, X.shape[1]), dtype=np.float32), np.empty(0, dtype=y.dtype),
                        np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), 0, {}, skipped)
    if not targets:
        return empty
    counts = {int(c): int((y == c).sum()) for c in targets}
    k = max(1, min(neighbors, min(counts.values()) - 1))

    class TracingSMOTE(SMOTE):
        """SMOTE that records the base row and the neighbour of every sample it makes."""

        trace: list[tuple[Any, np.ndarray, np.ndarray]]

        def _generate_samples(self, X: Any, nn_data: Any, nn_num: Any, rows: Any, cols: Any,
                              steps: Any, y_type: Any = None, y: Any = None) -> Any:
            self.trace.append((y_type, np.asarray(rows), np.asarray(nn_num[rows, cols])))
            return super()._generate_samples(X, nn_data, nn_num, rows, cols, steps, y_type, y)

    mean = X.mean(axis=0, dtype=np.float64)
    std = X.std(axis=0, dtype=np.float64)
    std = np.where(std < 1e-12, 1.0, std)
    Z = (X.astype(np.float64) - mean) / std
    sampler = TracingSMOTE(sampling_strategy=targets, k_neighbors=k, random_state=seed)
    sampler.trace = []
    Z_res, y_res = sampler.fit_resample(Z, y)
    Z_new = np.asarray(Z_res)[len(y):]
    y_new = np.asarray(y_res)[len(y):].astype(y.dtype)
    X_new = (Z_new * std + mean).astype(np.float32)

    base_parts, partner_parts = [], []
    for cls, rows, nbrs in sampler.trace:
        members = np.flatnonzero(y == cls)
        base_parts.append(members[rows])
        partner_parts.append(members[nbrs])
    if base_parts and sum(len(b) for b in base_parts) == len(y_new):
        base = np.concatenate(base_parts).astype(np.int64)
        partner = np.concatenate(partner_parts).astype(np.int64)
    else:  # imbalanced-learn changed its internals: the nearest same-class row stands in
        base = _nearest_same_class(Z, y, Z_new, y_new)
        partner = base.copy()
    return SmoteResult(X_new, y_new, base, partner, k, targets, skipped)


def _nearest_same_class(Z: np.ndarray, y: np.ndarray, Z_new: np.ndarray,
                        y_new: np.ndarray) -> np.ndarray:
    out = np.empty(len(y_new), dtype=np.int64)
    for cls in np.unique(y_new):
        members = np.flatnonzero(y == cls)
        new = np.flatnonzero(y_new == cls)
        dist = ((Z_new[new, None, :] - Z[None, members, :]) ** 2).sum(-1)
        out[new] = members[dist.argmin(1)]
    return out
