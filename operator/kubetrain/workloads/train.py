"""The training work unit: ``python -m kubetrain.workloads.train`` (alone or under torchrun).

The same entrypoint runs as a local process and in a pod. Started again with the same storage
directory, it resumes from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import load_training_job
from ..api.quantity import parse_cpu, parse_memory_gib
from ..api.spec import TrainingJobSpec
from ..augment import AugmentationError, AugmentationSpecError, check_augmentation
from ..augment.store import augmented_training_rows
from ..data import (
    Dataset,
    DatasetError,
    Splits,
    Standardizer,
    kfold_splits,
    load_dataset,
    split_dataset,
)
from ..data.images import LazyRows
from ..findings.overfitting import analyze_overfitting
from ..findings.remediation import apply_changes, changes_from_json
from ..models import ModelError, build_model
from ..pipeline.costing import unit_cost
from ..pipeline.params import apply_params
from ..report import Reporter, default_result_path, refuse, write_json_atomic
from ..tracking import UnitTracker
from ..tracking.naming import flat_params, plan_unit_name, unit_run
from ..tracking.records import training_record
from ..usage import USAGE_FILE
from . import checkpoint as ckpt
from .acceleration import AccelerationError
from .args import add_common_arguments, add_remediation_argument
from .batches import Split, StreamingSplit, TensorSplit, fixed_mmap_threshold
from .distributed import DistContext, init_distributed, shutdown
from .trainer import EpochCallback, Trainer

MODEL_FILE = "model.pt"
HISTORY_FILE = "history.json"
LOSS_CURVE_FILE = "loss-curve.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetrain.workloads.train",
                                     description="kubetrain training work unit")
    add_common_arguments(parser)
    parser.add_argument("--unit", default="train", help="work unit name (its folder in storage)")
    parser.add_argument("--fold", type=int, default=None, help="cross-validation fold to train")
    parser.add_argument("--params", default=None, help="hyperparameters as JSON (tuning)")
    parser.add_argument("--epochs", type=int, default=None, help="override training.epochs")
    add_remediation_argument(parser)
    return parser.parse_args(argv)


def _to_tensors(X: np.ndarray, y: np.ndarray, task: str, device: torch.device,
                channels_last: bool) -> TensorSplit:
    xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)
    if channels_last and xt.dim() == 4:
        xt = xt.contiguous(memory_format=torch.channels_last)
    yt = torch.from_numpy(y.astype(np.int64) if task == "classification"
                          else y.astype(np.float32).reshape(-1, 1)).to(device)
    return TensorSplit(xt, yt)


def _set_threads(spec: TrainingJobSpec) -> None:
    """Threads per worker from the CPU request: oversubscribed cores make small nets crawl."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    res = spec.training.resources
    torch.set_num_threads(max(1, int(parse_cpu(res.cpu) // res.workers_per_node)))


STREAM_FRACTION = 0.5
"""streaming: auto streams an image or shards folder whose decoded rows exceed this share of the
unit's memory per worker (the rest is the model, the optimizer and the runtime)."""
SCALER_SAMPLE = 4096
"""Rows the input scaling is fitted on when the rows are streamed (all rows otherwise)."""


def memory_budget(spec: TrainingJobSpec) -> float:
    """Bytes a training worker may spend on the decoded dataset before it streams."""
    res = spec.training.resources
    return parse_memory_gib(res.memory) * 2**30 / res.workers_per_node * STREAM_FRACTION


def loader_workers(spec: TrainingJobSpec) -> int:
    """DataLoader worker processes per training worker when streaming: its CPU share, 1 to 4."""
    res = spec.training.resources
    return max(1, min(4, int(parse_cpu(res.cpu) // res.workers_per_node)))


def fit_scaler(X: Any, seed: int) -> Standardizer:
    """The input scaling from the training rows: all of them in memory; for streamed rows,
    the moments (per channel for images, per feature for tables) of a seeded sample, read a
    chunk at a time (never the whole sample at once: that would be the memory streaming saves),
    in the rows' locality order (a shard at a time)."""
    if not isinstance(X, LazyRows):
        return Standardizer().fit(X)
    n = min(len(X), SCALER_SAMPLE)
    rows = X.locality_order(sorted(np.random.default_rng(seed).choice(len(X), n,
                                                                      replace=False).tolist()))
    axes = (0, 2, 3) if X.ndim == 4 else (0,)
    width = X.shape[1]
    total, squares, count = np.zeros(width), np.zeros(width), 0
    for begin in range(0, n, 256):
        chunk = X.take(rows[begin:begin + 256]).astype(np.float64)
        total += chunk.sum(axis=axes)
        squares += (chunk * chunk).sum(axis=axes)
        count += chunk.size // width
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    std = np.where(std < Standardizer.MIN_STD, 1.0, std)
    return Standardizer(mean=mean.astype(np.float32), std=std.astype(np.float32))


def result_path(args: argparse.Namespace) -> Path:
    return args.result or default_result_path() or args.storage / args.unit / "result.json"


def run(args: argparse.Namespace, on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    job = load_training_job(args.job)
    spec: TrainingJobSpec = job.spec
    if args.params:
        spec = apply_params(spec, json.loads(args.params))
    if args.remediation:
        spec = apply_changes(spec, changes_from_json(args.remediation))
    torch.manual_seed(spec.dataset.seed)
    _set_threads(spec)
    ctx: DistContext = init_distributed(use_gpu=spec.training.resources.gpus_per_node > 0)
    unit_dir = args.storage / args.unit
    reporter = Reporter(result_path(args), enabled=ctx.is_main,
                        usage_series=unit_dir / USAGE_FILE)
    tracker = UnitTracker.open(spec, unit_run(job.metadata.name, args.unit, args.fold),
                               args.storage, enabled=ctx.is_main)
    try:
        result = _train(spec, args, ctx, unit_dir, reporter, on_epoch, tracker)
    except BaseException:
        shutdown(ctx, finished=False)
        raise
    shutdown(ctx)
    return result


@dataclass
class TrainingData:
    """What a training unit trains on: the dataset, its splits (a fold's, with --fold) and the
    training rows with the augmented ones appended."""

    dataset: Dataset
    splits: Splits
    train_rows: tuple[np.ndarray, np.ndarray]
    augmented: int


def training_data(spec: TrainingJobSpec, args: argparse.Namespace,
                  memory_budget: float | None = None) -> TrainingData:
    """The rows of one training unit, the same for the built-in trainer and a custom program.
    With a ``memory_budget`` an image folder too large for it stays on disk (streamed)."""
    dataset = load_dataset(spec.dataset, base_dir=args.base_dir, data_root=args.data_root,
                           storage=args.storage, memory_budget=memory_budget)
    if args.fold is not None:
        folds = spec.training.cross_validation.folds if spec.training.cross_validation else 0
        if not 0 <= args.fold < folds:
            raise SystemExit(f"--fold {args.fold} is outside training.crossValidation.folds")
        splits = kfold_splits(dataset, spec.dataset, folds)[args.fold]
    else:
        splits = split_dataset(dataset, spec.dataset)
    train_rows, augmented = splits.train, 0
    if isinstance(dataset.X, LazyRows):
        fixed_mmap_threshold()  # before the batches: DataLoader workers fork this heap
    if spec.augmentation.enabled and isinstance(dataset.X, LazyRows):
        raise SpecProblem("spec.dataset.streaming: the rows are streamed from disk (they "
                          "would not fit the training unit's memory) and augmentation needs "
                          "them in memory; set augmentation.enabled: false, or raise "
                          "training.resources.memory")
    if spec.augmentation.enabled:
        try:
            check_augmentation(spec, dataset)
        except AugmentationSpecError as error:  # the spec asks what this data cannot give
            raise SpecProblem(f"spec.{error}") from None
        try:
            X_aug, y_aug = augmented_training_rows(args.storage, spec, len(dataset),
                                                   splits.indices, args.fold)
        except AugmentationError as error:  # missing or stale rows: the stage must run again
            raise SystemExit(f"error: spec.{error}") from None
        augmented = len(y_aug)
        train_rows = (np.concatenate([splits.train[0], X_aug]),
                      np.concatenate([splits.train[1], y_aug]))
    return TrainingData(dataset, splits, train_rows, augmented)


def _train(spec: TrainingJobSpec, args: argparse.Namespace, ctx: DistContext, unit_dir: Path,
           reporter: Reporter, on_epoch: EpochCallback | None,
           tracker: UnitTracker) -> dict[str, Any]:
    started = time.time()
    data = training_data(spec, args, memory_budget(spec))
    dataset, splits, train_rows, augmented = (data.dataset, data.splits, data.train_rows,
                                              data.augmented)
    # The scaler and the target scale are fit on the original training rows, not augmented ones.
    scaler = fit_scaler(splits.train[0], spec.dataset.seed)
    target_mean, target_std = 0.0, 1.0
    if dataset.task == "regression":
        target_mean = float(splits.train[1].mean())
        target_std = float(splits.train[1].std()) or 1.0

    def prepare(part: tuple[Any, np.ndarray]) -> Split:
        X, y = part
        y = (y - target_mean) / target_std if dataset.task == "regression" else y
        if isinstance(X, LazyRows):
            shape = (-1, 1, 1) if X.ndim == 4 else (-1,)
            return StreamingSplit(X, torch.from_numpy(y.astype(np.int64) if dataset.task ==
                                                      "classification" else
                                                      y.astype(np.float32).reshape(-1, 1)),
                                  torch.from_numpy(scaler.mean).reshape(shape),
                                  torch.from_numpy(scaler.std).reshape(shape), ctx.device,
                                  loader_workers(spec),
                                  max(1, spec.training.batch_size // ctx.world_size))
        return _to_tensors(scaler.transform(X), y, dataset.task, ctx.device,
                           ctx.device.type == "cuda")

    train, val, test = prepare(train_rows), prepare(splits.val), prepare(splits.test)
    assert spec.model is not None, "the built-in trainer needs spec.model"
    model = build_model(spec.model, dataset.input_shape, dataset.num_outputs,
                        spec.training.dropout)
    reporter.event(
        "start", unit=args.unit, world_size=ctx.world_size, device=str(ctx.device),
        dataset=dataset.name, task=dataset.task, train=len(train), val=len(val), test=len(test),
        augmented=augmented, streamed=isinstance(train, StreamingSplit),
        parameters=sum(p.numel() for p in model.parameters()),
        epochs=args.epochs or spec.training.epochs,
    )
    tracker.start(flat_params(spec, json.loads(args.params) if args.params else None))
    trainer = Trainer(spec, model, dataset.task, train, val, ctx, reporter,
                      checkpoint_dir=unit_dir / "checkpoints", epochs=args.epochs,
                      on_epoch=on_epoch, target_scale=target_std, observe=tracker.epoch)
    fit = trainer.fit()
    # The findings are pure functions of the history: the unit that has the whole history
    # analyses it, and both executors file the finding from the result.
    delivered = fit.best_epoch if fit.restored_best else None
    overfitting = analyze_overfitting(fit.history, spec, delivered)
    after_best = sum(h["seconds"] for h in fit.history
                     if fit.best_epoch is not None and h["epoch"] > fit.best_epoch)
    test_metrics = trainer.evaluate(test, "test") if len(test) else {}
    summary: dict[str, Any] = {
        "unit": args.unit,
        "fold": args.fold,
        "status": "succeeded",
        "task": dataset.task,
        "train_rows": len(train),
        "augmented": augmented,
        "epochs": args.epochs or spec.training.epochs,
        "epochs_run": len(fit.history),
        "best_epoch": fit.best_epoch,
        "best_metrics": fit.best_metrics,
        "final_metrics": {k: v for k, v in fit.history[-1].items()
                          if k.startswith(("train_", "val_"))} if fit.history else {},
        "test_metrics": test_metrics,
        "stopped_early": fit.stopped_early,
        "stop_reason": fit.stop_reason,
        "resumed_from_epoch": fit.resumed_from_epoch,
        "restored_best": fit.restored_best,
        "samples_per_second": round(fit.samples_per_second, 1),
        "acceleration": acceleration_report(trainer, fit.compile_seconds),
        "streamed": isinstance(train, StreamingSplit),
        "world_size": ctx.world_size,
        "device": ctx.device.type,
        "seconds": round(time.time() - started, 3),
        "seconds_after_best": round(after_best, 3),
        "overfitting": overfitting.model_dump(mode="json", by_alias=True, exclude_none=True),
        "epoch_seconds": [round(s, 4) for s in fit.epoch_seconds],
        "history": str(unit_dir / HISTORY_FILE),
        "checkpoint": str(unit_dir / "checkpoints" / ckpt.LATEST),
    }
    if ctx.is_main:
        write_json_atomic(unit_dir / HISTORY_FILE, fit.history)
        if args.fold is None:
            torch.save({
                "state_dict": trainer.model.state_dict(),
                "model": spec.model.model_dump(by_alias=True, exclude_none=True),
                "dropout": spec.training.dropout,
                "input_shape": list(dataset.input_shape),
                "num_outputs": dataset.num_outputs,
                "task": dataset.task,
                "kind": dataset.kind,
                "standardizer": scaler.to_dict(),
                "target": {"mean": target_mean, "std": target_std},
                "class_names": dataset.class_names,
                "feature_names": dataset.feature_names,
                "best_epoch": fit.best_epoch,
            }, unit_dir / MODEL_FILE)
            summary["model"] = str(unit_dir / MODEL_FILE)
    if fit.stop_reason == "terminated by signal":
        summary["status"] = "terminated"
    if ctx.is_main:
        finish_tracking(tracker, spec, summary, fit.history, unit_dir)
    reporter.result(tracker.report_into(summary))
    return summary


def acceleration_report(trainer: Trainer, compile_seconds: float | None) -> dict[str, Any]:
    """The result's ``acceleration``: how the trainer computed on its device."""
    device = trainer.ctx.device
    report: dict[str, Any] = {"device": device.type, **trainer.accel.report()}
    if device.type == "cuda":
        report["gpu_name"] = torch.cuda.get_device_name(device)
    if compile_seconds is not None:
        report["compile_seconds"] = round(compile_seconds, 3)
    return report


def finish_tracking(tracker: UnitTracker, spec: TrainingJobSpec, summary: dict[str, Any],
                    history: list[dict[str, float]], unit_dir: Path) -> None:
    """The unit's final metrics, findings, cost and files to its tracking runs."""
    if not tracker.sinks:
        return
    run = unit_run("", summary["unit"], summary["fold"])
    record = training_record(spec, summary,
                             unit_cost(spec, plan_unit_name(run), summary["seconds"]))
    if tracker.takes_files and history:
        from .artifacts import plot_loss_curve

        record.files.append(plot_loss_curve(history, summary["best_epoch"],
                                            unit_dir / LOSS_CURVE_FILE,
                                            f"{summary['unit']}: loss per epoch"))
    tracker.finish(record)


class SpecProblem(ValueError):
    """The spec cannot work with this data; the message names the field."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except (DatasetError, ModelError) as error:
        return refuse(result_path(args), [f"spec.{error}"])
    except (SpecProblem, AccelerationError) as error:
        return refuse(result_path(args), [str(error)])
    # A terminated run saved its checkpoint; a non-zero code tells the executor it is not done.
    return 143 if summary["status"] == "terminated" else 0


if __name__ == "__main__":
    sys.exit(main())
