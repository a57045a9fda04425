"""The augmented rows in the job's storage, written by the augmentation units, read by training.

Layout, under ``<storage>/augment/``:

- ``part-<i>-of-<n>.npz``: shard i's samples: arrays ``X``, ``y``, ``source`` (the row of the
  original dataset each sample came from; for SMOTE, its base row), ``partner`` (for SMOTE, the
  neighbour it was interpolated towards; else the same as ``source``) and ``meta`` (JSON text:
  the fingerprint of the settings, the shard's class counts and operations);
- ``manifest.json``: written by the merge once all parts exist; training reads only the parts
  a manifest lists.

Every file is written to a temporary name and renamed, so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..api.spec import TrainingJobSpec
from .checks import AugmentationError

AUGMENT_DIR = "augment"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def part_name(shard: int, shards: int) -> str:
    return f"part-{shard}-of-{shards}.npz"


def augment_dir(storage: Path) -> Path:
    return Path(storage) / AUGMENT_DIR


def manifest_path(storage: Path) -> Path:
    return augment_dir(storage) / MANIFEST


def fingerprint(spec: TrainingJobSpec) -> str:
    """A hash of the settings the augmented rows depend on: the dataset (rows, splits, seed) and
    the augmentation section, less what only training uses (mixup, CutMix) and the shard count.
    Training refuses parts made with other settings instead of silently using stale rows."""
    aug = spec.augmentation.model_dump(mode="json", exclude={"enabled", "shards"})
    if isinstance(aug.get("image"), dict):
        aug["image"] = {k: v for k, v in aug["image"].items() if k not in ("mixup", "cutmix")}
    data = {"dataset": spec.dataset.model_dump(mode="json"), "augmentation": aug,
            "version": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Part:
    X: np.ndarray
    y: np.ndarray
    source: np.ndarray
    partner: np.ndarray
    meta: dict[str, Any]

    def __len__(self) -> int:
        return int(self.y.shape[0])


def write_part(path: Path, part: Part) -> None:
    """Write a part atomically: a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            np.savez(handle, X=part.X, y=part.y, source=part.source.astype(np.int64),
                     partner=part.partner.astype(np.int64),
                     meta=np.array(json.dumps(part.meta)))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_meta(path: Path) -> dict[str, Any] | None:
    """A part's metadata (without loading its arrays), or None when it is unreadable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
    except (OSError, ValueError, KeyError):
        return None
    return meta if isinstance(meta, dict) else None


def read_part(path: Path) -> Part:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return Part(X=archive["X"], y=archive["y"], source=archive["source"],
                        partner=archive["partner"], meta=json.loads(str(archive["meta"])))
    except (OSError, ValueError, KeyError) as exc:
        raise AugmentationError(f"augmentation: cannot read {path}: {exc}") from exc


def read_manifest(storage: Path) -> dict[str, Any] | None:
    path = manifest_path(storage)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise AugmentationError(f"augmentation: cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else None


def load_augmented(
    storage: Path,
    exclude_sources: Iterable[int] | np.ndarray | None = None,
    *,
    expected_fingerprint: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The augmented rows ``(X, y, source)`` the manifest lists, or None without a manifest.

    Samples made from a row in ``exclude_sources`` (as base or, for SMOTE, as neighbour) are
    dropped. With ``expected_fingerprint``, rows made with other settings are refused.
    """
    manifest = read_manifest(storage)
    if manifest is None:
        return None
    if expected_fingerprint is not None and manifest.get("fingerprint") != expected_fingerprint:
        raise AugmentationError(
            f"augmentation: the augmented rows in {augment_dir(storage)} were made with other "
            "dataset or augmentation settings; run the augmentation stage again"
        )
    parts = [read_part(augment_dir(storage) / name) for name in manifest.get("parts", [])]
    if not parts:
        return None
    X = np.concatenate([p.X for p in parts])
    y = np.concatenate([p.y for p in parts])
    source = np.concatenate([p.source for p in parts])
    partner = np.concatenate([p.partner for p in parts])
    if exclude_sources is not None:
        excluded = np.fromiter(exclude_sources, dtype=np.int64) if not isinstance(
            exclude_sources, np.ndarray) else exclude_sources.astype(np.int64)
        keep = ~(np.isin(source, excluded) | np.isin(partner, excluded))
        X, y, source = X[keep], y[keep], source[keep]
    return X, y, source


def augmented_training_rows(storage: Path, spec: TrainingJobSpec, dataset_size: int,
                            indices: dict[str, np.ndarray],
                            fold: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The augmented rows a training unit adds to its training split.

    The main unit keeps the samples made from its training rows; a cross-validation fold drops
    those made from its validation rows (and the test rows, which are never sources).
    """
    if fold is None:
        exclude = np.setdiff1d(np.arange(dataset_size), indices["train"])
    else:
        exclude = np.union1d(indices["val"], indices["test"])
    loaded = load_augmented(storage, exclude, expected_fingerprint=fingerprint(spec))
    if loaded is None:
        raise AugmentationError(
            f"augmentation.enabled: no augmented rows in {augment_dir(storage)} (no "
            f"{MANIFEST}); run the augmentation stage first "
            "(python -m kubetrain.workloads.augment for each shard, then --merge)"
        )
    X, y, _ = loaded
    return X, y
