"""The augmentation work unit: ``python -m kubetrain.workloads.augment``.

One unit per shard augments rows ``shard::shards`` of the training split (never validation or
test rows) and writes ``<storage>/augment/part-<shard>-of-<shards>.npz``; ``--merge``, run once
every shard has finished, checks the parts and writes ``<storage>/augment/manifest.json``, which
the training units read. Images: ``multiplier`` kornia-augmented copies of each row. Tabular:
``multiplier`` noisy copies (when ``noise`` > 0), and with ``smote`` the SMOTE samples that
balance the classes, made from the whole training split by shard 0 alone.

A shard whose part already exists (made with the same settings) only reports it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..api import load_training_job
from ..api.spec import ImageAugmentationSpec, TabularAugmentationSpec, TrainingJobSpec
from ..augment import AugmentationError, AugmentationSpecError, check_augmentation
from ..augment import store as st
from ..data import Dataset, DatasetError, load_dataset, split_dataset
from ..findings.remediation import apply_changes, changes_from_json
from ..report import Reporter, default_result_path, refuse, write_json_atomic
from ..usage import USAGE_FILE
from .args import add_common_arguments, add_remediation_argument


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetrain.workloads.augment",
                                     description="kubetrain augmentation work unit")
    add_common_arguments(parser)
    parser.add_argument("--shard", type=int, default=0, help="this unit's shard (0-based)")
    parser.add_argument("--shards", type=int, default=None,
                        help="number of shards (default: augmentation.shards)")
    parser.add_argument("--merge", action="store_true",
                        help="check that every shard's part exists and write the manifest")
    parser.add_argument("--whole", action="store_true",
                        help="one unit does it all: the only shard, then the merge")
    add_remediation_argument(parser)
    parser.add_argument("--unit", default=None,
                        help="work unit name (default augment-<shard>, or augment-merge)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the unit in this process; returns the result summary. Raises AugmentationError or
    DatasetError (messages start with the spec field) on settings that cannot work."""
    spec: TrainingJobSpec = load_training_job(args.job).spec
    if args.remediation:
        spec = apply_changes(spec, changes_from_json(args.remediation))
    shards = 1 if args.whole else args.shards or spec.augmentation.shards
    if shards < 1 or not (args.merge or 0 <= args.shard < shards):
        raise AugmentationError(f"--shard {args.shard} is outside 0..{shards - 1} (--shards)")
    unit = args.unit or ("augment-merge" if args.merge else f"augment-{args.shard}")
    result_path = args.result or default_result_path() or args.storage / unit / "result.json"
    reporter = Reporter(result_path, usage_series=args.storage / unit / USAGE_FILE)
    if args.whole:
        run_shard(spec, args, 0, 1, unit, reporter)
        summary = merge(spec, args.storage, 1, unit, reporter)
    elif args.merge:
        summary = merge(spec, args.storage, shards, unit, reporter)
    else:
        summary = run_shard(spec, args, args.shard, shards, unit, reporter)
    reporter.result(summary)
    return summary


# ---------------------------------------------------------------------------------------------
# one shard


def shard_seed(seed: int, shard: int, shards: int) -> int:
    """The seed of one shard's random draws (same settings, same samples)."""
    return int(np.random.SeedSequence([seed, shard, shards]).generate_state(1)[0])


def class_counts(y: np.ndarray, dataset: Dataset) -> dict[str, int]:
    """Rows per class, keyed by class name; regression: {"rows": n}."""
    names = dataset.class_names
    if not names:
        return {"rows": len(y)}
    counts = Counter(int(v) for v in y.tolist())
    return {names[c]: counts.get(c, 0) for c in range(len(names))}


def _add_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}


def image_settings(spec: TrainingJobSpec) -> ImageAugmentationSpec:
    return spec.augmentation.image or ImageAugmentationSpec()


def tabular_settings(spec: TrainingJobSpec) -> TabularAugmentationSpec:
    return spec.augmentation.tabular or TabularAugmentationSpec()


def run_shard(spec: TrainingJobSpec, args: argparse.Namespace, shard: int, shards: int,
              unit: str, reporter: Reporter) -> dict[str, Any]:
    started = time.time()
    aug = spec.augmentation
    dataset = load_dataset(spec.dataset, base_dir=args.base_dir, data_root=args.data_root,
                           storage=args.storage)
    check_augmentation(spec, dataset)
    splits = split_dataset(dataset, spec.dataset)
    train_idx = splits.indices["train"]
    rows = train_idx[shard::shards]
    path = st.augment_dir(args.storage) / st.part_name(shard, shards)
    fp = st.fingerprint(spec)
    seed = spec.dataset.seed
    reporter.event("start", unit=unit, shard=shard, shards=shards, kind=dataset.kind,
                   dataset=dataset.name, task=dataset.task, train=len(train_idx), rows=len(rows),
                   multiplier=aug.multiplier)

    meta = st.read_meta(path) if path.exists() else None
    reused = meta is not None and meta.get("fingerprint") == fp
    if meta is None or not reused:  # none yet, or made with other settings: (re)make it
        part = _make_part(spec, dataset, train_idx, rows, shard, shards, unit, reporter)
        part.meta.update(fingerprint=fp, shard=shard, shards=shards, seed=seed,
                         kind=dataset.kind, task=dataset.task, multiplier=aug.multiplier,
                         counts_before=class_counts(dataset.y[rows], dataset), rows=len(rows))
        part.meta["counts_added"] = class_counts(part.y, dataset)
        st.write_part(path, part)
        meta = part.meta
    added = sum(meta["counts_added"].values())
    reporter.event("progress", unit=unit, done=added, total=added, added=added)
    return {
        "unit": unit,
        "status": "succeeded",
        "shard": shard,
        "shards": shards,
        "kind": dataset.kind,
        "added": added,
        "counts_before": meta["counts_before"],
        "counts_after": _add_counts(meta["counts_before"], meta["counts_added"]),
        "operations": meta["operations"],
        "seed": seed,
        "part": str(path),
        "reused": reused,
        "seconds": round(time.time() - started, 3),
    }


def _make_part(spec: TrainingJobSpec, dataset: Dataset, train_idx: np.ndarray,
               rows: np.ndarray, shard: int, shards: int, unit: str,
               reporter: Reporter) -> st.Part:
    copies = spec.augmentation.multiplier
    seed = shard_seed(spec.dataset.seed, shard, shards)
    if dataset.kind == "image":
        from ..augment import image

        img = image_settings(spec)
        ops = image.operations(img)
        device = image.default_device()
        last = [0.0]

        def on_batch(done: int, total: int) -> None:
            now = time.time()
            if now - last[0] >= 1.0 or done == total:
                last[0] = now
                reporter.event("progress", unit=unit, done=done, total=total,
                               device=device.type)

        copies_made = copies if ops else 0
        X_new = image.augment_images(dataset.X[rows], img, copies_made, seed,
                                     device=device, on_batch=on_batch)
        source = np.tile(rows, copies_made)
        operations = [f"{op} x{copies_made} copies" for op in ops] if copies_made else []
        return st.Part(X_new, dataset.y[source], source, source.copy(),
                       {"operations": operations, "device": device.type})

    from ..augment import tabular

    settings = tabular_settings(spec)
    X_train = dataset.X[train_idx]
    columns = tabular.noise_columns(X_train)
    rng = np.random.default_rng(seed)
    copies_made = copies if settings.noise > 0 else 0
    X_parts = [tabular.add_noise(dataset.X[rows], X_train.std(axis=0, dtype=np.float64),
                                 settings.noise, copies_made, rng, columns)]
    sources = [np.tile(rows, copies_made)]
    partners = [sources[0]]
    operations = []
    if copies_made:
        operations.append(f"gaussian_noise(scale={settings.noise:g} x column std, "
                          f"columns={int(columns.sum())} of {len(columns)}) x{copies_made} copies")
    if settings.smote and shard == 0:
        # SMOTE sees the whole training split, so one shard (0) makes its samples.
        result = tabular.smote(X_train, dataset.y[train_idx], neighbors=settings.smote_neighbors,
                               seed=spec.dataset.seed, copies=copies_made, task=dataset.task)
        described = (f"smote(k_neighbors={result.k_neighbors}, balance to "
                     f"{(1 + copies_made) * max(Counter(dataset.y[train_idx].tolist()).values())}"
                     " per class)")
        if not result.targets:
            described = "smote(no class to oversample: the classes are balanced)"
        if result.skipped:
            names = ", ".join(dataset.class_names[c] for c in result.skipped)
            described += f"; skipped classes with one row: {names}"
        operations.append(described)
        X_parts.append(result.X)
        sources.append(train_idx[result.base])
        partners.append(train_idx[result.partner])
    source = np.concatenate(sources).astype(np.int64)
    X_new = np.concatenate(X_parts).astype(np.float32)
    return st.Part(X_new, dataset.y[source], source, np.concatenate(partners).astype(np.int64),
                   {"operations": operations})


# ---------------------------------------------------------------------------------------------
# merge


def merge(spec: TrainingJobSpec, storage: Path, shards: int, unit: str,
          reporter: Reporter) -> dict[str, Any]:
    folder = st.augment_dir(storage)
    names = [st.part_name(i, shards) for i in range(shards)]
    reporter.event("start", unit=unit, shards=shards)
    missing = [name for name in names if not (folder / name).exists()]
    if missing:
        raise AugmentationError(
            f"augmentation: {len(missing)} of {shards} parts missing in {folder}: "
            f"{', '.join(missing)}; run those shards before --merge"
        )
    fp = st.fingerprint(spec)
    metas = []
    for name in names:
        meta = st.read_meta(folder / name)
        if meta is None:
            raise AugmentationError(f"augmentation: cannot read {folder / name}; run its shard "
                                    "again")
        if meta.get("fingerprint") != fp:
            raise AugmentationError(
                f"augmentation: {name} was made with other dataset or augmentation settings; "
                "delete it and run its shard again")
        metas.append(meta)
        reporter.event("progress", unit=unit, done=len(metas), total=shards)
    before: dict[str, int] = {}
    added: dict[str, int] = {}
    for meta in metas:
        before = _add_counts(before, meta["counts_before"])
        added = _add_counts(added, meta["counts_added"])
    order = list(metas[0]["counts_before"])  # class order
    before = {k: before[k] for k in order}
    after = {k: before[k] + added.get(k, 0) for k in order}
    operations = list(dict.fromkeys(op for meta in metas for op in meta["operations"]))
    manifest = {
        "version": st.FORMAT_VERSION,
        "fingerprint": fp,
        "kind": metas[0]["kind"],
        "task": metas[0]["task"],
        "seed": spec.dataset.seed,
        "multiplier": spec.augmentation.multiplier,
        "shards": shards,
        "parts": names,
        "operations": operations,
        "train_rows": sum(before.values()),
        "added": sum(added.values()),
        "counts_before": before,
        "counts_after": after,
    }
    path = st.manifest_path(storage)
    write_json_atomic(path, manifest)
    return {
        "unit": unit,
        "status": "succeeded",
        "shard": None,
        "shards": shards,
        "kind": manifest["kind"],
        "added": manifest["added"],
        "counts_before": before,
        "counts_after": after,
        "operations": operations,
        "seed": spec.dataset.seed,
        "manifest": str(path),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (AugmentationSpecError, DatasetError) as error:  # no rerun would help
        return refuse(args.result or default_result_path(), [f"spec.{error}"])
    except AugmentationError as error:  # e.g. a shard's part missing: run the stage again
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
