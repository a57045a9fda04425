"""Loading datasets: scikit-learn built-ins, npz, csv and parquet here; image folders and npz
shards in ``images.py``; ``Dataset`` and the task's rules in ``base.py``.

Everything here is numpy (plus pandas and PIL for reading files); no torch, so the planner and the
controller can inspect a dataset without the training stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..api.spec import DatasetSpec
from .base import Dataset, DatasetError, Kind, image_feature_names, require_xy, resolve_task
from .images import load_imagefolder, load_shards


def load_dataset(
    spec: DatasetSpec, base_dir: Path | None = None, data_root: Path | None = None,
    storage: Path | None = None, memory_budget: float | None = None,
) -> Dataset:
    """Load the dataset that ``spec`` describes.

    ``base_dir`` is the manifest's folder (relative ``uri``s are resolved against it);
    ``data_root`` is where pods mount persistent volume claims (``pvc://claim/path``);
    ``storage`` is the job's storage, where the data stage copied an s3:// or https:// uri;
    ``memory_budget`` (bytes): with ``streaming: auto``, an image folder or a shards folder
    whose decoded rows would take more stays on disk (``LazyImages``, ``LazyShards``), read
    batch by batch by the trainer.
    """
    if spec.builtin is not None:
        # A built-in's task is the spec's (BUILTIN_TASKS), not inferred from its target.
        return _load_builtin(spec.builtin, spec.declared_task or spec.task)
    assert spec.uri is not None  # the spec guarantees exactly one source
    if spec.remote:
        from .remote import local_copy

        path = local_copy(spec.uri, storage)
    else:
        path = resolve_uri(spec.uri, base_dir=base_dir, data_root=data_root)
    fmt = spec.resolved_format
    if fmt == "shards":
        if not path.is_dir():
            raise DatasetError(f"dataset.uri: shards needs a folder of .npz files: {path}")
        return load_shards(path, spec.task, memory_budget, spec.streaming)
    if fmt == "imagefolder":
        if not path.exists():
            raise DatasetError(f"dataset.uri: no such folder: {path}")
        if not path.is_dir():
            raise DatasetError(f"dataset.uri: imagefolder needs a folder, got a file: {path}")
        return load_imagefolder(path, spec.task, memory_budget, spec.streaming)
    if not path.exists():
        raise DatasetError(f"dataset.uri: no such file: {path}")
    if path.is_dir():
        raise DatasetError(f"dataset.uri: format {fmt} needs a file, got a folder: {path}")
    if fmt == "npz":
        return _load_npz(path, spec.task)
    if fmt in ("csv", "parquet"):
        assert spec.target is not None  # the spec requires it for csv and parquet
        return _load_table(path, fmt, spec.target, spec.task)
    raise DatasetError(f"dataset.format: unsupported format {fmt!r}")


def resolve_uri(uri: str, base_dir: Path | None = None, data_root: Path | None = None) -> Path:
    """The local path of a dataset ``uri`` (a path, ``file://path`` or ``pvc://claim/path``)."""
    if uri.startswith("pvc://"):
        rest = uri[len("pvc://") :].strip("/")
        claim, _, sub = rest.partition("/")
        if not claim:
            raise DatasetError(f"dataset.uri: {uri!r} names no claim; use pvc://claim/path")
        if data_root is None:
            raise DatasetError(
                f"dataset.uri: pvc:// URIs need the Kubernetes executor or a data_root "
                f"(the folder where claims are mounted); got {uri!r}"
            )
        parts = [p for p in sub.split("/") if p]
        if ".." in parts:
            raise DatasetError(f"dataset.uri: {uri!r} may not contain '..'")
        return Path(data_root, claim, *parts)
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise DatasetError(
            f"dataset.uri: unsupported scheme {scheme}://; use a path, pvc://claim/path, "
            "s3://bucket/key or https://host/file"
        )
    path = Path(uri).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


# ---------------------------------------------------------------------------------------------
# built-ins


def _load_builtin(name: str, task: str) -> Dataset:
    from sklearn import datasets as skd

    if name == "digits":
        bunch: Any = skd.load_digits()
        X = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]
        y, resolved, classes = resolve_task(np.asarray(bunch.target), task)
        if resolved == "classification":
            classes = [str(c) for c in bunch.target_names]
        return Dataset(X, y, resolved, "image", image_feature_names(X.shape[1:]), classes, name)
    loaders = {
        "breast_cancer": skd.load_breast_cancer,
        "wine": skd.load_wine,
        "iris": skd.load_iris,
        "diabetes": skd.load_diabetes,
    }
    if name not in loaders:
        raise DatasetError(f"dataset.builtin: unknown dataset {name!r}")
    bunch = loaders[name]()
    X = np.asarray(bunch.data, dtype=np.float32)
    y, resolved, classes = resolve_task(np.asarray(bunch.target), task)
    target_names = getattr(bunch, "target_names", None)
    if resolved == "classification" and target_names is not None:
        # sklearn targets are already 0..K-1 in the order of target_names
        classes = [str(c) for c in target_names]
    features = [str(f) for f in bunch.feature_names]
    return Dataset(X, y, resolved, "tabular", features, classes, name)


# ---------------------------------------------------------------------------------------------
# npz


def _load_npz(path: Path, task: str) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            require_xy(archive.files, path.name)
            X_raw = np.asarray(archive["X"])
            y_raw = np.asarray(archive["y"])
    except DatasetError:
        raise
    except Exception as exc:  # corrupt file, pickled objects, not a zip
        raise DatasetError(f"dataset.uri: cannot read {path} as npz: {exc}") from exc
    if y_raw.ndim == 2 and y_raw.shape[1] == 1:
        y_raw = y_raw[:, 0]
    if y_raw.ndim != 1:
        raise DatasetError(f"dataset.uri: y in {path.name} must be 1-D, got shape {y_raw.shape}")
    if X_raw.ndim < 2 or X_raw.ndim > 4:
        raise DatasetError(
            f"dataset.uri: X in {path.name} must be (N, F), (N, H, W) or (N, C, H, W); "
            f"got shape {X_raw.shape}"
        )
    if X_raw.shape[0] != y_raw.shape[0]:
        raise DatasetError(
            f"dataset.uri: X and y in {path.name} have different lengths "
            f"({X_raw.shape[0]} and {y_raw.shape[0]})"
        )
    if X_raw.dtype.kind not in "biuf":
        raise DatasetError(f"dataset.uri: X in {path.name} must be numeric, got {X_raw.dtype}")
    scale = 255.0 if X_raw.dtype == np.uint8 else 1.0
    X = X_raw.astype(np.float32)
    if scale != 1.0:
        X /= scale
    kind: Kind = "tabular"
    if X.ndim == 3:
        X = X[:, None, :, :]
    if X.ndim == 4:
        kind = "image"
        if X.shape[-1] in (1, 3) and X.shape[1] not in (1, 3):
            X = np.ascontiguousarray(X.transpose(0, 3, 1, 2))
    y, resolved, classes = resolve_task(y_raw, task)
    if kind == "image":
        features = image_feature_names(X.shape[1:])
    else:
        features = [f"x{i}" for i in range(X.shape[1])]
    return Dataset(X, y, resolved, kind, features, classes, path.stem)


# ---------------------------------------------------------------------------------------------
# csv / parquet


def _load_table(path: Path, fmt: str, target: str, task: str) -> Dataset:
    import pandas as pd

    try:
        df = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    except Exception as exc:
        raise DatasetError(f"dataset.uri: cannot read {path} as {fmt}: {exc}") from exc
    df.columns = [str(c) for c in df.columns]
    if target not in df.columns:
        raise DatasetError(
            f"dataset.target: column {target!r} not in {path.name}; "
            f"columns: {', '.join(df.columns)}"
        )
    df = df[df[target].notna()].reset_index(drop=True)
    if len(df) == 0:
        raise DatasetError(f"dataset.target: column {target!r} of {path.name} has no values")
    target_col = df[target]
    features_df = df.drop(columns=[target])
    if features_df.shape[1] == 0:
        raise DatasetError(f"dataset.uri: {path.name} has no feature columns besides {target!r}")

    y_raw = target_col.to_numpy()
    if y_raw.dtype.kind == "f" and np.all(np.mod(y_raw, 1) == 0):
        # an integer column that pandas read as float because of missing values
        y_raw = y_raw.astype(np.int64)
    elif y_raw.dtype.kind == "O":
        y_raw = target_col.astype(str).to_numpy()

    X, names = _encode_features(features_df)
    y, resolved, classes = resolve_task(y_raw, task)
    return Dataset(X, y, resolved, "tabular", names, classes, path.stem)


def _encode_features(df: Any) -> tuple[np.ndarray, list[str]]:
    """Numeric columns as they are (missing values: the median), others one-hot ("col=value")."""
    import pandas as pd

    blocks: list[np.ndarray] = []
    names: list[str] = []
    for col in df.columns:
        series = df[col]
        if pd.api.types.is_bool_dtype(series):
            values = series.astype(float).to_numpy(dtype=np.float64)
            blocks.append(_fill_median(values)[:, None])
            names.append(col)
        elif pd.api.types.is_numeric_dtype(series):
            values = series.to_numpy(dtype=np.float64, na_value=np.nan)
            blocks.append(_fill_median(values)[:, None])
            names.append(col)
        else:
            as_text = series.map(lambda v: v if pd.isna(v) else str(v))
            dummies = pd.get_dummies(as_text, prefix=col, prefix_sep="=", dtype=np.float32)
            dummies = dummies.reindex(sorted(dummies.columns), axis=1)
            blocks.append(dummies.to_numpy(dtype=np.float64))
            names.extend(str(c) for c in dummies.columns)
    X = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(df), 0))
    return X.astype(np.float32), names


def _fill_median(values: np.ndarray) -> np.ndarray:
    missing = np.isnan(values)
    if missing.any():
        present = values[~missing]
        fill = float(np.median(present)) if present.size else 0.0
        values = np.where(missing, fill, values)
    return values


