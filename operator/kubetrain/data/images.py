"""Image folders and folders of npz shards: decoded into memory, or (streaming) kept on disk as
``LazyRows`` that the trainer reads batch by batch.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .base import Dataset, DatasetError, Kind, image_feature_names, require_xy, resolve_task

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def load_imagefolder(path: Path, task: str, memory_budget: float | None = None,
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
    y, resolved, _ = resolve_task(labels, task)
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


def load_shards(path: Path, task: str, memory_budget: float | None = None,
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
    y, resolved, classes = resolve_task(np.concatenate(labels), task)
    kind: Kind = "tabular" if len(kubetrain_shape) == 1 else "image"
    features = (image_feature_names(kubetrain_shape) if kind == "image"
                else [f"x{i}" for i in range(kubetrain_shape[0])])
    return Dataset(X, y, resolved, kind, features, classes, path.name)  # type: ignore[arg-type]


def _shard_header(f: Path) -> tuple[tuple[int, ...], np.dtype[Any], np.ndarray]:
    """A shard's X shape and dtype (from the .npy header, no data read) and its y."""
    try:
        with np.load(f, allow_pickle=False) as archive:
            require_xy(archive.files, f"shard {f.name}")
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
