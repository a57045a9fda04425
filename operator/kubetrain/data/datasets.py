"""Loading datasets: scikit-learn built-ins, npz, csv, parquet, image folders and npz shards.

Everything here is numpy (plus pandas and PIL for reading files); no torch, so the planner and the
controller can inspect a dataset without the training stack.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..api.metrics import Task
from ..api.spec import DatasetSpec

Kind = Literal["tabular", "image"]

# auto task: integer / bool targets with at most this many distinct values are classes.
MAX_AUTO_CLASSES = 50
AUTO_CLASS_FRACTION = 0.05
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


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
        return _load_shards(path, spec.task, memory_budget, spec.streaming)
    if fmt == "imagefolder":
        if not path.exists():
            raise DatasetError(f"dataset.uri: no such folder: {path}")
        if not path.is_dir():
            raise DatasetError(f"dataset.uri: imagefolder needs a folder, got a file: {path}")
        return _load_imagefolder(path, spec.task, memory_budget, spec.streaming)
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
        y, resolved, classes = _resolve_task(np.asarray(bunch.target), task)
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
    y, resolved, classes = _resolve_task(np.asarray(bunch.target), task)
    target_names = getattr(bunch, "target_names", None)
    if resolved == "classification" and target_names is not None:
        # sklearn targets are already 0..K-1 in the order of target_names
        classes = [str(c) for c in target_names]
    features = [str(f) for f in bunch.feature_names]
    return Dataset(X, y, resolved, "tabular", features, classes, name)


# ---------------------------------------------------------------------------------------------
# npz


def _require_xy(names: list[str], what: str) -> None:
    """An npz file (or shard) must hold arrays X and y."""
    for key in ("X", "y"):
        if key not in names:
            raise DatasetError(f"dataset.uri: {what} has no array {key!r}; "
                               f"arrays: {', '.join(names) or '(none)'}")


def _load_npz(path: Path, task: str) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            _require_xy(archive.files, path.name)
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
    y, resolved, classes = _resolve_task(y_raw, task)
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
    y, resolved, classes = _resolve_task(y_raw, task)
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


# ---------------------------------------------------------------------------------------------
# image folders


def _load_imagefolder(path: Path, task: str, memory_budget: float | None = None,
                      streaming: str = "never") -> Dataset:
    """An image folder in memory, or (streaming) as ``LazyImages`` decoded batch by batch."""
    from PIL import Image

    class_dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(class_dirs) < 2:
        raise DatasetError(
            f"dataset.uri: imagefolder {path} needs one subfolder per class and at least 2 "
            f"classes; found {len(class_dirs)}"
        )
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        images = sorted(
            f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not images:
            raise DatasetError(
                f"dataset.uri: class folder {d.name!r} in {path} has no images "
                f"({', '.join(IMAGE_EXTENSIONS)})"
            )
        files.extend((f, label) for f in images)

    sizes: list[tuple[int, int]] = []
    grey = True
    for f, _ in files:
        try:
            with Image.open(f) as im:  # the header only: no pixels are decoded here
                sizes.append(im.size)
                grey = grey and im.mode in GREY_MODES
        except Exception as exc:
            raise DatasetError(f"dataset.uri: cannot read image {f}: {exc}") from exc
    size = Counter(sizes).most_common(1)[0][0]  # ties: the first seen, in sorted order
    channels = 1 if grey else 3
    lazy = LazyImages(tuple(str(f) for f, _ in files), channels, size[1], size[0])
    stream = streaming == "always" or (
        streaming == "auto" and memory_budget is not None and lazy.nbytes > memory_budget)
    X: np.ndarray | LazyImages = lazy if stream else np.asarray(lazy)
    labels = np.array([label for _, label in files], dtype=np.int64)
    class_names = [d.name for d in class_dirs]
    y, resolved, _ = _resolve_task(labels, task)
    # every class folder is non-empty, so the indices are 0..K-1 in folder order
    classes = class_names if resolved == "classification" else []
    return Dataset(X, y, resolved, "image",  # type: ignore[arg-type]
                   image_feature_names((channels, size[1], size[0])), classes, path.name)


class LazyRows:
    """Rows standing in for their (N, ...) float32 array, read only on demand: indexing with an
    array of rows gives another LazyRows of the same source (splits never read), an int or
    ``np.asarray`` reads. What the streaming path of the trainer reads batch by batch."""

    shape: tuple[int, ...]
    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def decode(self, i: int) -> np.ndarray:
        """Row ``i`` as float32."""
        return self.take([i])[0]

    def take(self, rows: list[int]) -> np.ndarray:
        """Rows (positions in this LazyRows) as one float32 array, in the order given."""
        raise NotImplementedError

    def subset(self, rows: np.ndarray) -> LazyRows:
        raise NotImplementedError

    def locality_order(self, order: list[int]) -> list[int]:
        """``order`` rearranged so that rows stored together are read together (the same
        multiset of rows; deterministic in ``order``). Image files: as given."""
        return order

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, int | np.integer):
            return self.decode(int(index))
        return self.subset(np.arange(len(self))[index])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        chunk = max(1, 2**26 // max(1, int(np.prod(self.shape[1:]))))
        for begin in range(0, len(self), chunk):
            out[begin:begin + chunk] = self.take(list(range(begin, min(len(self),
                                                                       begin + chunk))))
        return out if dtype is None else out.astype(dtype)


class LazyImages(LazyRows):
    """Image files standing in for their (N, C, H, W) float32 array, decoded one by one."""

    def __init__(self, files: tuple[str, ...], channels: int, height: int, width: int) -> None:
        self.files = files
        self.shape = (len(files), channels, height, width)

    def decode(self, i: int) -> np.ndarray:
        from PIL import Image

        _, channels, height, width = self.shape
        with Image.open(self.files[i]) as im:
            img = im.convert("L" if channels == 1 else "RGB")
            if img.size != (width, height):
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
        return arr[None, :, :] if channels == 1 else arr.transpose(2, 0, 1)

    def take(self, rows: list[int]) -> np.ndarray:
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.float32)
        for k, i in enumerate(rows):
            out[k] = self.decode(i)
        return out

    def subset(self, rows: np.ndarray) -> LazyImages:
        return LazyImages(tuple(self.files[int(i)] for i in rows), *self.shape[1:])


class LazyShards(LazyRows):
    """A folder of ``.npz`` shards standing in for the concatenation of their ``X`` arrays.
    A shard written by ``np.savez`` (stored, not compressed) is memory-mapped, so a batch reads
    only its rows' pages, through the page cache (which the kernel may reclaim); a compressed
    one is read whole (``np.savez_compressed``: the last one stays cached per process).
    ``locality_order`` groups an epoch's rows by shard, so a worker reads one shard at a
    time."""

    def __init__(self, shards: tuple[str, ...], shard_of: np.ndarray, offset: np.ndarray,
                 row_shape: tuple[int, ...], scale: float) -> None:
        self.shards = shards
        self.shard_of = shard_of
        """The shard (index into ``shards``) of each row."""
        self.offset = offset
        """Each row's position in its shard."""
        self.shape = (len(shard_of), *row_shape)
        self.scale = scale
        """255 for uint8 shards (pixels to [0, 1]), else 1."""
        self._cached: tuple[int, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:  # a DataLoader worker starts with no shard
        return {**self.__dict__, "_cached": None}

    def _shard(self, k: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != k:
            self._cached = None  # drop the last shard before reading the next
            X = _stored_member(Path(self.shards[k]), "X.npy")
            if X is None:
                with np.load(self.shards[k], allow_pickle=False) as archive:
                    X = np.asarray(archive["X"])
            self._cached = (k, X)
        return self._cached[1]

    def take(self, rows: list[int]) -> np.ndarray:
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.float32)
        idx = np.asarray(rows, dtype=np.int64)
        shards = self.shard_of[idx]
        for k in dict.fromkeys(shards.tolist()):  # shards in order of first use
            where = np.flatnonzero(shards == k)
            X = self._shard(k)[self.offset[idx[where]]]
            out[where] = _as_rows(X, self.shape[1:]) / self.scale
        return out

    def subset(self, rows: np.ndarray) -> LazyShards:
        return LazyShards(self.shards, self.shard_of[rows], self.offset[rows], self.shape[1:],
                          self.scale)

    def locality_order(self, order: list[int]) -> list[int]:
        """Shards in the order of their first row in ``order``, each shard's rows in their
        order there: a permutation stays random across and within shards."""
        shards = self.shard_of[np.asarray(order, dtype=np.int64)]
        first: dict[int, int] = {}
        for position, k in enumerate(shards.tolist()):
            first.setdefault(k, position)
        rank = np.array([first[k] for k in shards.tolist()])
        return [order[i] for i in np.argsort(rank, kind="stable")]


def _row_layout(stored: tuple[int, ...]) -> tuple[int, ...]:
    """The row shape kubetrain uses for rows stored as ``stored``: (F,) as is, (H, W) as
    (1, H, W), channels-last (H, W, C) as (C, H, W) (the same rule as a single npz file)."""
    if len(stored) == 2:
        return (1, *stored)
    if len(stored) == 3 and stored[-1] in (1, 3) and stored[0] not in (1, 3):
        return (stored[2], stored[0], stored[1])
    return stored


def _npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """Shape, Fortran order and dtype from a .npy header at ``f``'s position (no data read)."""
    major, _ = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if major == 1
            else np.lib.format.read_array_header_2_0)
    shape, fortran_order, dtype = read(f)
    return tuple(shape), bool(fortran_order), np.dtype(dtype)


def _stored_member(path: Path, member: str) -> np.ndarray | None:
    """A read-only memory map of an array stored uncompressed in an npz file (zip members are
    contiguous then: a local header, the .npy header, the data); None when it is compressed
    or not mappable (object or Fortran-ordered arrays)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the local file header: its name and extra field lengths at 26
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        shape, fortran_order, dtype = _npy_header(f)
        start = f.tell()
    if fortran_order or dtype.hasobject:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape)


def _as_rows(X: np.ndarray, row_shape: tuple[int, ...]) -> np.ndarray:
    """A shard's ``X`` rows in kubetrain's layout: (H, W) gets a channel, (H, W, C) -> (C, H, W)."""
    X = X.astype(np.float32)
    if X.ndim == 3:
        X = X[:, None, :, :]
    if X.ndim == 4 and X.shape[1:] != row_shape:
        X = X.transpose(0, 3, 1, 2)
    return X


def decoded(X: Any) -> np.ndarray:
    """The rows as an array (decoding LazyImages)."""
    return X if isinstance(X, np.ndarray) else np.asarray(X)


# ---------------------------------------------------------------------------------------------
# shards


def _load_shards(path: Path, task: str, memory_budget: float | None = None,
                 streaming: str = "never") -> Dataset:
    """A folder of ``.npz`` shards (each with arrays X and y of the same row shape and dtype),
    in shard-name order: concatenated in memory, or (streaming) as ``LazyShards``. Only each
    shard's ``y`` and the header of its ``X`` are read here."""
    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix == ".npz")
    if not files:
        raise DatasetError(f"dataset.uri: shards folder {path} holds no .npz files")
    labels: list[np.ndarray] = []
    first: tuple[tuple[int, ...], np.dtype[Any]] | None = None
    for f in files:
        shape, dtype, y = _shard_header(f)
        if first is None:
            first = (shape[1:], dtype)
        elif (shape[1:], dtype) != first:
            raise DatasetError(
                f"dataset.uri: shard {f.name} has rows of shape {shape[1:]} and dtype {dtype}; "
                f"the first shard's are {first[0]} and {first[1]}: all shards must match")
        labels.append(y)
    assert first is not None
    row_shape, dtype = first
    if len(row_shape) not in (1, 2, 3):
        raise DatasetError(f"dataset.uri: X in the shards of {path} must be (N, F), (N, H, W) or "
                           f"(N, C, H, W); got rows of shape {row_shape}")
    if dtype.kind not in "biuf":
        raise DatasetError(f"dataset.uri: X in the shards of {path} must be numeric, got {dtype}")
    sizes = [len(y) for y in labels]
    shard_of = np.repeat(np.arange(len(files), dtype=np.int32), sizes)
    offset = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes])
    kubetrain_shape = _row_layout(row_shape)
    lazy = LazyShards(tuple(str(f) for f in files), shard_of, offset, kubetrain_shape,
                      255.0 if dtype == np.uint8 else 1.0)
    stream = streaming == "always" or (
        streaming == "auto" and memory_budget is not None and lazy.nbytes > memory_budget)
    X: np.ndarray | LazyShards = lazy if stream else np.asarray(lazy)
    y, resolved, classes = _resolve_task(np.concatenate(labels), task)
    kind: Kind = "tabular" if len(kubetrain_shape) == 1 else "image"
    features = (image_feature_names(kubetrain_shape) if kind == "image"
                else [f"x{i}" for i in range(kubetrain_shape[0])])
    return Dataset(X, y, resolved, kind, features, classes, path.name)  # type: ignore[arg-type]


def _shard_header(f: Path) -> tuple[tuple[int, ...], np.dtype[Any], np.ndarray]:
    """A shard's X shape and dtype (from the .npy header, no data read) and its y."""
    try:
        with np.load(f, allow_pickle=False) as archive:
            _require_xy(archive.files, f"shard {f.name}")
            with archive.zip.open("X.npy") as member:
                shape, _, dtype = _npy_header(member)
            y = np.asarray(archive["y"])
    except DatasetError:
        raise
    except Exception as exc:  # corrupt file, pickled objects, not a zip
        raise DatasetError(f"dataset.uri: cannot read shard {f} as npz: {exc}") from exc
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != shape[0]:
        raise DatasetError(f"dataset.uri: shard {f.name}: y must be 1-D with one value per row "
                           f"of X ({shape[0]}); got shape {y.shape}")
    return tuple(shape), np.dtype(dtype), y


# ---------------------------------------------------------------------------------------------
# task


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


def _resolve_task(y_raw: np.ndarray, task: str) -> tuple[np.ndarray, Task, list[str]]:
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
