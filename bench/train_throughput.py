"""Training throughput: kubetrain's built-in Trainer against a hand-written PyTorch loop.

Both sides get the same model architecture (fresh instances built with the same seed), the same
data (the work unit's tensors, already on the device), the same batch size, optimizer (AdamW,
same learning rate and weight decay) and device, in one process.

What is timed, per epoch, on the wall clock from outside:

- kubetrain: ``Trainer.train_epoch(epoch)``, called as ``Trainer.fit`` calls it (epochs numbered
  from 1, the optimizer step counter carried over). That is the seeded permutation, the batches,
  the learning-rate schedule, the (disabled on CPU) GradScaler and the epoch's loss reduction.
  Evaluation, checkpoints and reporting, which ``fit`` does between epochs, are not timed.
- hand-written: the plain idiomatic loop (``train()``; a ``randperm``; per batch ``zero_grad``,
  forward, loss, ``backward``, ``step``; the running loss accumulated on the device and read
  once per epoch, as kubetrain does).

One warm-up epoch for each side, then ``--repeats`` alternating timed blocks (kubetrain,
hand-written, kubetrain, ...) of ``--epochs`` epochs each (by default as many as fill about
``--min-seconds``). The table shows the median samples/s of each side and, as the ratio, the
median of the ratios of neighbouring blocks (each hand-written block against the kubetrain
blocks just before and just after it), which cancels load that drifts over seconds on a shared
machine and any advantage of running first. The JSON also holds every
block's rate and the same figures on process CPU time.

On CUDA the hand-written loop is made the best it can be (bf16 autocast, channels_last for the
conv nets, fused AdamW, large batches; ``--compile`` adds a torch.compile
``mode="reduce-overhead"`` (CUDA graphs) baseline); kubetrain runs with ``precision: bf16``.

    python bench/train_throughput.py                 # CPU, all cases
    python bench/train_throughput.py --device cuda --compile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kubetrain.api.spec import TrainingJobSpec
from kubetrain.data import Standardizer, load_dataset, split_dataset
from kubetrain.models import build_model
from kubetrain.report import Reporter
from kubetrain.workloads.batches import TensorSplit
from kubetrain.workloads.distributed import DistContext
from kubetrain.workloads.train import _to_tensors
from kubetrain.workloads.trainer import Trainer
from torch import nn

SEED = 0
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.0
GOAL = 0.95
MIN_REPEATS, MAX_REPEATS = 15, 400


@dataclass(frozen=True)
class Case:
    name: str
    dataset: dict[str, Any]
    """The spec's dataset section; a ``synthetic`` key asks for a generated npz file instead."""
    model: dict[str, Any]
    batch_size: int


def cpu_cases(quick: bool) -> list[Case]:
    rows, features = (2000, 16) if quick else (20000, 64)
    fraction = {"fraction": 0.25} if quick else {}
    return [
        Case("digits-cnn", {"builtin": "digits", **fraction},
             {"builtin": "cnn", "params": {"channels": [32, 64], "hiddenUnits": 128}}, 64),
        Case("breast_cancer-mlp", {"builtin": "breast_cancer", **fraction},
             {"builtin": "mlp", "params": {"hiddenUnits": [64, 32]}}, 32),
        Case(f"synthetic{rows}x{features}-mlp",
             {"synthetic": {"kind": "tabular", "rows": rows, "features": features}},
             {"builtin": "mlp", "params": {"hiddenUnits": [256, 256]}}, 256),
    ]


def cuda_cases(quick: bool) -> list[Case]:
    rows = 4000 if quick else 200_000
    images = 2000 if quick else 20_000
    tabular = {"synthetic": {"kind": "tabular", "rows": rows, "features": 64}}
    mlp = {"builtin": "mlp", "params": {"hiddenUnits": [256, 256]}}
    return [
        Case("digits-cnn", {"builtin": "digits"},
             {"builtin": "cnn", "params": {"channels": [32, 64], "hiddenUnits": 128}}, 1024),
        Case(f"images{images}x3x32x32-cnn",
             {"synthetic": {"kind": "images", "rows": images}},
             {"builtin": "cnn", "params": {"channels": [64, 128], "hiddenUnits": 256}}, 1024),
        Case(f"synthetic{rows}x64-mlp", tabular, mlp, 1024),
        Case(f"synthetic{rows}x64-mlp", tabular, mlp, 8192),
    ]


# ----- data, exactly as the work unit prepares it --------------------------------------------


def synthetic_npz(params: dict[str, Any], folder: Path) -> Path:
    rng = np.random.default_rng(SEED)
    rows = int(params["rows"])
    if params["kind"] == "images":
        X = rng.integers(0, 256, size=(rows, 3, 32, 32), dtype=np.uint8)
        projection = rng.standard_normal((3 * 32 * 32, 10)).astype(np.float32)
        y = (X.reshape(rows, -1).astype(np.float32) @ projection).argmax(1)
    else:
        from sklearn.datasets import make_classification

        features = int(params["features"])
        X, y = make_classification(n_samples=rows, n_features=features,
                                   n_informative=features // 2, n_classes=4, random_state=SEED)
        X = X.astype(np.float32)
    path = folder / f"synthetic-{params['kind']}-{rows}.npz"
    np.savez(path, X=X, y=y.astype(np.int64))
    return path


def make_spec(case: Case, folder: Path, device: torch.device,
              weight_decay: float = WEIGHT_DECAY) -> TrainingJobSpec:
    dataset = dict(case.dataset)
    synthetic = dataset.pop("synthetic", None)
    if synthetic is not None:
        dataset["uri"] = str(synthetic_npz(synthetic, folder))
    dataset.setdefault("seed", SEED)
    return TrainingJobSpec.model_validate({
        "dataset": dataset,
        "model": case.model,
        "training": {
            "batchSize": case.batch_size,
            "learningRate": LEARNING_RATE,
            "weightDecay": weight_decay,
            "schedule": "constant",
            "optimizer": "adamw",
            "precision": "bf16" if device.type == "cuda" else "fp32",
        },
    })


def prepare(spec: TrainingJobSpec, device: torch.device) -> tuple[TensorSplit, TensorSplit, str,
                                                                   tuple[int, ...], int]:
    """train.py's data path: load, split, standardize, tensors on the device."""
    dataset = load_dataset(spec.dataset)
    splits = split_dataset(dataset, spec.dataset)
    scaler = Standardizer().fit(splits.train[0])

    def tensors(part: tuple[np.ndarray, np.ndarray]) -> TensorSplit:
        return _to_tensors(scaler.transform(part[0]), part[1], dataset.task, device,
                           device.type == "cuda")

    return (tensors(splits.train), tensors(splits.val), dataset.task, dataset.input_shape,
            dataset.num_outputs)


# ----- the two loops -------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Runner:
    """One side of the comparison: runs an epoch and returns its loss (a float, so synced)."""

    label: str
    run_epoch: Callable[[], float]
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def timed(self, epochs: int, device: torch.device) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) for ``epochs`` epochs."""
        sync(device)
        cpu, start = time.process_time(), time.perf_counter()
        for _ in range(epochs):
            self.losses.append(self.run_epoch())
        sync(device)
        return time.perf_counter() - start, time.process_time() - cpu


def kubetrain_runner(spec: TrainingJobSpec, model: nn.Module, task: str, train: TensorSplit,
                     val: TensorSplit, device: torch.device, checkpoint_dir: Path) -> Runner:
    ctx = DistContext(rank=0, local_rank=0, world_size=1, device=device)
    trainer = Trainer(spec, model, task, train, val, ctx, Reporter(None, enabled=False),
                      checkpoint_dir=checkpoint_dir, epochs=spec.training.epochs)
    epoch = 0

    def run_epoch() -> float:
        nonlocal epoch
        epoch += 1  # fit() numbers epochs from 1; the step counter carries over
        loss, _seconds = trainer.train_epoch(epoch)
        return loss

    return Runner("kubetrain", run_epoch)


def handwritten_runner(model: nn.Module, task: str, train: TensorSplit, batch_size: int,
                       device: torch.device, compile_mode: str | None = None,
                       weight_decay: float = WEIGHT_DECAY) -> Runner:
    """The idiomatic loop; on CUDA with bf16 autocast, channels_last and fused AdamW."""
    cuda = device.type == "cuda"
    model = model.to(device)
    if cuda and train.X.dim() == 4:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE,
                                  weight_decay=weight_decay, fused=True if cuda else None)
    criterion = nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()
    forward: Callable[[torch.Tensor], torch.Tensor] = model
    mark_step: Callable[[], None] | None = None
    if compile_mode is not None:
        # Static shapes: one CUDA graph for the full batch, one for the last, smaller one.
        forward = torch.compile(model, mode=compile_mode, dynamic=False)
        mark_step = torch.compiler.cudagraph_mark_step_begin
    X, y = train.X, train.y
    n = X.shape[0]

    def run_epoch() -> float:
        model.train()
        perm = torch.randperm(n, device=device)
        loss_sum = torch.zeros((), device=device)
        for begin in range(0, n, batch_size):
            idx = perm[begin : begin + batch_size]
            xb, yb = X[idx], y[idx]
            if mark_step is not None:
                mark_step()  # CUDA graphs: the previous step's outputs may be overwritten
            optimizer.zero_grad(set_to_none=True)
            with (torch.autocast("cuda", dtype=torch.bfloat16) if cuda
                  else contextlib.nullcontext()):
                loss = criterion(forward(xb), yb)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().float() * len(idx)
        return float(loss_sum / n)

    label = "hand-written" if compile_mode is None else f"compiled ({compile_mode})"
    return Runner(label, run_epoch)


# ----- one case ------------------------------------------------------------------------------


def fresh_model(spec: TrainingJobSpec, input_shape: tuple[int, ...], outputs: int) -> nn.Module:
    torch.manual_seed(SEED)
    return build_model(spec.model, input_shape, outputs, spec.training.dropout)


def bench_case(case: Case, args: argparse.Namespace, device: torch.device,
               folder: Path) -> dict[str, Any]:
    spec = make_spec(case, folder, device, args.weight_decay)
    wd = spec.training.weight_decay
    train, val, task, input_shape, outputs = prepare(spec, device)
    n = len(train)
    if n % case.batch_size == 1:
        raise SystemExit(f"{case.name}: {n} rows leave a last batch of 1, which BatchNorm "
                         "cannot train on (kubetrain skips it, the plain loop would fail)")
    runners = [
        kubetrain_runner(spec, fresh_model(spec, input_shape, outputs), task, train, val,
                         device, folder / f"ckpt-{case.name}-{case.batch_size}"),
        handwritten_runner(fresh_model(spec, input_shape, outputs), task, train,
                           case.batch_size, device, weight_decay=wd),
    ]
    if args.compile and device.type == "cuda":
        runners.append(handwritten_runner(fresh_model(spec, input_shape, outputs), task, train,
                                          case.batch_size, device, "reduce-overhead", wd))

    warmup = [r.timed(1, device)[0] for r in runners]  # first-touch allocations, compiling
    epoch_seconds = max(min(warmup), 1e-6)
    epochs = args.epochs
    if epochs is None:  # enough epochs per timed block for about --min-seconds
        epochs = max(1, math.ceil(args.min_seconds / epoch_seconds))
    repeats = args.repeats
    if repeats is None:  # short blocks, many of them: about --case-seconds in all
        block = epochs * epoch_seconds * len(runners)
        repeats = min(MAX_REPEATS, max(MIN_REPEATS, round(args.case_seconds / block)))
    deadline = time.perf_counter() + 2 * args.case_seconds  # in case the load grows meanwhile
    for i in range(repeats):
        if args.repeats is None and i >= MIN_REPEATS and time.perf_counter() > deadline:
            repeats = i
            break
        for runner in runners:  # alternating: A B A B ...
            wall, cpu = runner.timed(epochs, device)
            runner.times.append(wall)
            runner.cpu_times.append(cpu)

    samples = n * epochs
    row: dict[str, Any] = {"case": case.name, "batch": case.batch_size, "train_rows": n,
                           "steps_per_epoch": math.ceil(n / case.batch_size),
                           "epochs_per_repeat": epochs, "repeats": repeats}
    for runner in runners:
        rates = [samples / t for t in runner.times]
        row[runner.label] = {
            "samples_per_s": statistics.median(rates),
            "min": min(rates), "max": max(rates), "all": rates,
            "samples_per_cpu_s": statistics.median(samples / t for t in runner.cpu_times),
            "final_loss": runner.losses[-1],
        }
    kube = runners[0]
    for key, other in (("ratio", runners[1]), ("ratio_vs_compiled", runners[-1])):
        if key == "ratio" or len(runners) > 2:
            row[key] = neighbour_ratio(kube.times, other.times)
            row[key + "_cpu_time"] = neighbour_ratio(kube.cpu_times, other.cpu_times)
    return row


def neighbour_ratio(ours: list[float], theirs: list[float]) -> float:
    """Median speed ratio of each of our blocks against the other side's blocks next to it.

    Block i of theirs ran just after our block i and just before our block i + 1; pairing both
    ways cancels load that drifts over seconds and any cost of running first.
    """
    pairs = [t / o for o, t in zip(ours, theirs, strict=True)]
    pairs += [t / o for o, t in zip(ours[1:], theirs, strict=False)]
    return statistics.median(pairs)


# ----- output --------------------------------------------------------------------------------


def format_table(rows: list[dict[str, Any]]) -> str:
    compiled = any("ratio_vs_compiled" in r for r in rows)
    header = ["case", "batch", "kubetrain samples/s", "hand-written samples/s", "ratio"]
    if compiled:
        header += ["compiled samples/s", "ratio vs compiled"]
    lines = [header]
    for r in rows:
        line = [r["case"], str(r["batch"]), f"{r['kubetrain']['samples_per_s']:,.0f}",
                f"{r['hand-written']['samples_per_s']:,.0f}", f"{r['ratio']:.3f}"]
        if compiled:
            label = next((k for k in r if k.startswith("compiled")), None)
            line += [f"{r[label]['samples_per_s']:,.0f}" if label else "-",
                     f"{r['ratio_vs_compiled']:.3f}" if label else "-"]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for i, line in enumerate(lines):
        out.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                             for j, (c, w) in enumerate(zip(line, widths, strict=True))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed blocks per side, alternating (default: enough for "
                             f"--case-seconds, {MIN_REPEATS} to {MAX_REPEATS})")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per timed block (default: enough for --min-seconds)")
    parser.add_argument("--min-seconds", type=float, default=0.05,
                        help="shortest timed block when --epochs is not set (default 0.05)")
    parser.add_argument("--case-seconds", type=float, default=20.0,
                        help="timed seconds per case when --repeats is not set (default 20)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: stable on a shared machine; "
                             "0 keeps torch's own choice)")
    parser.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY,
                        help="AdamW weight decay, both sides (default 0; kubetrain then trains "
                             "one parameter group, with decay two: none on biases and norms)")
    parser.add_argument("--compile", action="store_true",
                        help="CUDA only: add a torch.compile(mode='reduce-overhead') baseline")
    parser.add_argument("--case", action="append", default=None,
                        help="run only cases whose name contains this (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--quick", action="store_true",
                        help="tiny data and blocks (the smoke test); figures mean nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.min_seconds = 0.0
        args.epochs = args.epochs or 1
        args.repeats = args.repeats or 3
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device visible", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases = cuda_cases(args.quick) if device.type == "cuda" else cpu_cases(args.quick)
    if args.case:
        cases = [c for c in cases if any(s in c.name for s in args.case)]
    env = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "timed": "Trainer.train_epoch (as fit() calls it, no evaluation) vs the plain loop",
           "repeats": args.repeats, "quick": args.quick, "weight_decay": args.weight_decay,
           "learning_rate": LEARNING_RATE}
    print(f"torch {env['torch']}, device {device}"
          + (f" ({env['device_name']})" if env["device_name"] else "")
          + f", {env['threads']} threads, alternating timed blocks, medians")
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-") as tmp:
        for case in cases:
            row = bench_case(case, args, device, Path(tmp))
            rows.append(row)
            print(f"  {case.name} (batch {case.batch_size}): ratio {row['ratio']:.3f} "
                  f"({row['repeats']} repeats of {row['epochs_per_repeat']} epochs x "
                  f"{row['train_rows']} rows)", flush=True)
    print()
    print(format_table(rows))
    print("samples/s: median over the repeats (wall clock); ratio: median of kubetrain / "
          "hand-written over neighbouring blocks")
    if device.type == "cpu" and not args.quick:
        low = [r["case"] for r in rows if r["ratio"] < GOAL]
        print(f"\ngoal on CPU: ratio >= {GOAL}: " + ("met" if not low else
                                                     f"NOT met for {', '.join(low)}"))
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
