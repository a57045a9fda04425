"""The one script for a GPU machine: kubetrain's GPU paths beside their baselines, one table.

Every row is measured in this run beside its baseline from the same run (issue 11, Deliver 4):

- trainer: the built-in ``Trainer`` (``precision: auto``, so bf16 on a GPU that has it,
  channels_last, fused AdamW, data on the device) against the best hand-written loop (bf16
  autocast, channels_last, fused AdamW: ``train_throughput.handwritten_runner``) and against a
  naive fp32 eager loop (plain AdamW, NCHW, no autocast); on CUDA also ``compile:
  reduce-overhead`` against a hand-written CUDA-graphs loop (``--no-compile`` leaves it out).
  Cases: the digits CNN at a large batch, a ResNet-style net on 32x32 RGB, a tabular MLP.
  Timed as ``train_throughput.py`` does: one warm-up epoch each (compiling happens there),
  then alternating blocks of whole epochs; samples/s is the median over blocks, the ratio the
  median of neighbouring blocks' ratios;
- augmentation: ``augment_images`` (the stage's transform: host rows in, host rows out)
  against raw kornia on rows already on the device, the same transforms and batch;
- explanation: the batched expected-gradients pass on 100 digit images (completeness error
  beside it) against shap's GradientExplainer on a few of them, extrapolated per sample;
- findings: the training work unit on a starved run (tiny batch) and on a well-fed one, its
  measured usage through ``findings.utilization``: on a GPU the first must be flagged
  (lowGpuUtilization) and the second not;
- units: ``kubetrain run`` of a job with every stage (augment, trial, train, explain), each
  work unit once on the device (``gpusPerNode: 1`` on a GPU).

    bash bench/gpu.sh                 # on the GPU machine (CUDA when visible), under 8 minutes
    python bench/gpu.py --cpu         # the same code paths, small, on the CPU (CI's smoke test)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import yaml
from kubetrain.api.results import UnitUsage
from kubetrain.api.spec import ImageAugmentationSpec, TrainingJobSpec
from kubetrain.augment.image import augment_images, build_pipeline
from kubetrain.explain.analysis import completeness_error
from kubetrain.findings.cost import Usage
from kubetrain.findings.utilization import LOW_GPU_UTIL, UnitUse, analyze_utilization
from torch import nn

BENCH = Path(__file__).resolve().parent
SEED = 0


def _load(name: str) -> ModuleType:
    """A sibling benchmark as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"kubetrain_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


tt = _load("train_throughput")
es = _load("explain_speed")


@dataclass
class Row:
    """One line of the table: a measured figure beside its baseline from the same run."""

    stage: str
    case: str
    ours: str
    value: float
    baseline: str
    baseline_value: float | None
    unit: str
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    """None: no goal on this device (the goals are the GPU's)."""


@dataclass(frozen=True)
class Sizes:
    """How big each stage runs: the GPU's sizes, or small ones for the CPU mode."""

    cuda: bool
    repeats: int
    min_block_seconds: float
    images: int
    tabular_rows: int
    digits_batch: int
    image_batch: int
    tabular_batch: int
    augmented: int
    explain_samples: int
    shap_samples: int
    fed_epochs: int

    @classmethod
    def for_device(cls, cuda: bool) -> Sizes:
        if cuda:
            return cls(True, repeats=7, min_block_seconds=0.3, images=20_000,
                       tabular_rows=200_000, digits_batch=1024, image_batch=512,
                       tabular_batch=8192, augmented=100_000, explain_samples=100,
                       shap_samples=10, fed_epochs=20)
        return cls(False, repeats=2, min_block_seconds=0.0, images=256, tabular_rows=2048,
                   digits_batch=256, image_batch=64, tabular_batch=256, augmented=512,
                   explain_samples=10, shap_samples=2, fed_epochs=1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----- trainer ---------------------------------------------------------------------------------


def trainer_cases(sizes: Sizes) -> list[Any]:
    images = {"synthetic": {"kind": "images", "rows": sizes.images}}
    tabular = {"synthetic": {"kind": "tabular", "rows": sizes.tabular_rows, "features": 64}}
    resnet = ({"builtin": "resnet", "params": {"channels": [64, 128, 256], "blocksPerStage": 2}}
              if sizes.cuda else {"builtin": "resnet", "params": {"channels": [8, 16],
                                                                  "blocksPerStage": 1}})
    return [
        tt.Case("digits-cnn", {"builtin": "digits"},
                {"builtin": "cnn", "params": {"channels": [32, 64], "hiddenUnits": 128}},
                sizes.digits_batch),
        tt.Case(f"resnet-{sizes.images}x3x32x32", images, resnet, sizes.image_batch),
        tt.Case(f"mlp-{sizes.tabular_rows}x64", tabular,
                {"builtin": "mlp", "params": {"hiddenUnits": [256, 256]}}, sizes.tabular_batch),
    ]


def naive_runner(model: nn.Module, task: str, train: Any, batch_size: int,
                 device: torch.device) -> Any:
    """What a user writes first: fp32, NCHW, the default (for-each) AdamW, eager."""
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tt.LEARNING_RATE, weight_decay=0.0)
    criterion = nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()
    X = train.X.contiguous()  # the unit's rows are channels_last on a GPU: back to NCHW
    y, n = train.y, train.X.shape[0]

    def run_epoch() -> float:
        model.train()
        perm = torch.randperm(n, device=device)
        loss_sum = torch.zeros((), device=device)
        for begin in range(0, n, batch_size):
            idx = perm[begin:begin + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(X[idx]), y[idx])
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
        return float(loss_sum / n)

    return tt.Runner("naive fp32 eager", run_epoch)


def time_runners(runners: list[Any], sizes: Sizes, device: torch.device) -> int:
    """Warm-up, then alternating timed blocks; returns the epochs per block."""
    warmup = [r.timed(1, device)[0] for r in runners]
    epochs = max(1, int(sizes.min_block_seconds / max(min(warmup), 1e-6)) + 1)
    for _ in range(sizes.repeats):
        for runner in runners:
            wall, cpu = runner.timed(epochs, device)
            runner.times.append(wall)
            runner.cpu_times.append(cpu)
    return epochs


def with_training(spec: TrainingJobSpec, **changes: Any) -> TrainingJobSpec:
    return spec.model_copy(update={"training": spec.training.model_copy(update=changes)})


def trainer_stage(sizes: Sizes, device: torch.device, folder: Path,
                  compile_: bool) -> list[Row]:
    rows: list[Row] = []
    for case in trainer_cases(sizes):
        spec = with_training(tt.make_spec(case, folder, device), precision="auto")
        train, val, task, shape, outputs = tt.prepare(spec, device)
        n = len(train)

        def model(spec: TrainingJobSpec = spec, shape: tuple[int, ...] = shape,
                  outputs: int = outputs) -> nn.Module:
            return tt.fresh_model(spec, shape, outputs)

        kube = tt.kubetrain_runner(spec, model(), task, train, val, device,
                                   folder / f"ckpt-{case.name}")
        best = tt.handwritten_runner(model(), task, train, case.batch_size, device)
        best.label = "hand-written best"
        runners = [kube, best, naive_runner(model(), task, train, case.batch_size, device)]
        graphs = compile_ and sizes.cuda and not case.name.startswith("resnet")
        if graphs:  # small, launch-bound models: where CUDA graphs pay
            compiled_spec = with_training(spec, compile="reduce-overhead")
            kube_graphs = tt.kubetrain_runner(compiled_spec, model(), task, train, val, device,
                                              folder / f"ckpt-{case.name}-graphs")
            kube_graphs.label = "kubetrain reduce-overhead"
            runners += [kube_graphs, tt.handwritten_runner(model(), task, train,
                                                           case.batch_size, device,
                                                           "reduce-overhead")]
        epochs = time_runners(runners, sizes, device)
        rate = {r.label: statistics.median(n * epochs / t for t in r.times) for r in runners}
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        label = f"{case.name} b{case.batch_size}"
        ours = f"kubetrain ({precision})"
        rows.append(Row("trainer", label, ours, rate["kubetrain"], "hand-written best",
                        rate["hand-written best"], "samples/s",
                        tt.neighbour_ratio(kube.times, best.times), ">= 0.95"))
        rows.append(Row("trainer", label, ours, rate["kubetrain"], "naive fp32 eager",
                        rate["naive fp32 eager"], "samples/s",
                        tt.neighbour_ratio(kube.times, runners[2].times), ">= 1.5"))
        if graphs:
            rows.append(Row("trainer", label, "kubetrain reduce-overhead",
                            rate["kubetrain reduce-overhead"], "hand-written CUDA graphs",
                            rate[runners[4].label], "samples/s",
                            tt.neighbour_ratio(runners[3].times, runners[4].times), ">= 0.95"))
    return rows


# ----- augmentation ----------------------------------------------------------------------------


def augment_stage(sizes: Sizes, device: torch.device) -> list[Row]:
    spec = ImageAugmentationSpec.model_validate({
        "rotation": 12, "translate": 0.1, "scale": [0.9, 1.1], "horizontalFlip": True,
        "noiseStd": 0.05})
    rng = np.random.default_rng(SEED)
    X = rng.random((sizes.augmented, 3, 32, 32), dtype=np.float32)
    batch = 4096

    def ours() -> None:
        augment_images(X, spec, 1, SEED, device=device, batch_size=batch)

    pipeline = build_pipeline(spec)
    assert pipeline is not None
    pipeline = pipeline.to(device)
    on_device = torch.from_numpy(X).to(device)

    def raw() -> None:
        with torch.no_grad():
            for begin in range(0, len(on_device), batch):
                pipeline(on_device[begin:begin + batch])

    times: dict[str, list[float]] = {"ours": [], "raw": []}
    ours()  # warm-up
    raw()
    for _ in range(max(2, sizes.repeats)):
        for name, fn in (("ours", ours), ("raw", raw)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    ours_rate = len(X) / statistics.median(times["ours"])
    raw_rate = len(X) / statistics.median(times["raw"])
    return [Row("augment", f"{len(X)} x 3x32x32", "augment_images (host in/out)", ours_rate,
                "raw kornia (on device)", raw_rate, "img/s", ours_rate / raw_rate, ">= 0.9")]


# ----- explanation -----------------------------------------------------------------------------


def explain_stage(sizes: Sizes, device: torch.device) -> list[Row]:
    args = es.parse_args(["--model", "cnn", "--samples", str(sizes.explain_samples),
                          "--epochs", "8" if sizes.cuda else "2"])
    trained, background, samples, _accuracy = es.train_model(args, device)
    ours, attribution = es.run_side("kubetrain gradient (batched)", trained, background,
                                    samples, args, method="gradient", nsamples=args.nsamples)
    few = samples[:sizes.shap_samples]
    shap_row, _ = es.run_side("shap GradientExplainer", trained, background, few, args,
                              method="gradient", nsamples=args.nsamples, implementation="shap")
    shap_seconds = shap_row["seconds_per_sample"] * len(samples)
    error, _, _ = completeness_error(attribution)
    case = f"{len(samples)} digit images"
    return [
        Row("explain", case, "kubetrain gradient", ours["seconds"],
            f"shap GradientExplainer ({len(few)} samples, per-sample x {len(samples)})",
            shap_seconds, "s", shap_seconds / ours["seconds"], "<= 0.5 s"),
        Row("explain", case, "completeness error", error, "goal", 0.05, "share",
            None, "< 5%", (error < 0.05) if sizes.cuda else None),
    ]


# ----- utilisation findings --------------------------------------------------------------------


def run_unit(manifest: dict[str, Any], folder: Path, name: str) -> dict[str, Any]:
    """The training work unit as a pod runs it; its result."""
    job = folder / f"{name}.yaml"
    job.write_text(yaml.safe_dump(manifest))
    storage = folder / f"storage-{name}"
    proc = subprocess.run([sys.executable, "-m", "kubetrain.workloads.train", "--job", str(job),
                           "--storage", str(storage)], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: the training unit failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads((storage / "train" / "result.json").read_text())
    return result


def findings_stage(sizes: Sizes, folder: Path) -> list[Row]:
    gpus = 1 if sizes.cuda else 0
    images = tt.synthetic_npz({"kind": "images", "rows": sizes.images}, folder)
    digits: dict[str, Any] = {"builtin": "digits", **({} if sizes.cuda else {"fraction": 0.3})}
    tiny: dict[str, Any] = {"builtin": "mlp", "params": {"hiddenUnits": [32]}}
    # well-fed: a ResNet busy for tens of seconds (20 epochs of 20,000 images at batch 512),
    # so the unit's start (imports, CUDA context, data) is a small share of its samples
    fed_model: dict[str, Any] = (
        {"builtin": "resnet", "params": {"channels": [128, 256, 512]}} if sizes.cuda
        else {"builtin": "cnn", "params": {"channels": [8, 16], "hiddenUnits": 32}})
    fed_batch = 512 if sizes.cuda else 64
    runs: dict[str, tuple[dict[str, Any], dict[str, Any], int, int]] = {
        # name: (dataset, model, batch, epochs)
        # starved: a tiny MLP on 8x8 images, 4 at a time: the GPU waits on Python
        "starved (batch 4)": (digits, tiny, 4, 1),
        f"well-fed (batch {fed_batch})": ({"uri": str(images)}, fed_model, fed_batch,
                                          sizes.fed_epochs),
    }
    rows = []
    for name, (dataset, model, batch, epochs) in runs.items():
        manifest = {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
                    "metadata": {"name": "gpu-bench"},
                    "spec": {"dataset": {**dataset, "seed": SEED}, "model": model,
                             "training": {"epochs": epochs, "batchSize": batch,
                                          "resources": {"gpusPerNode": gpus, "cpu": "2",
                                                        "memory": "8Gi"}}}}
        result = run_unit(manifest, folder, name.split()[0])
        spec = TrainingJobSpec.model_validate(manifest["spec"])
        usage = UnitUsage.model_validate(result.get("usage") or {})
        finding = analyze_utilization([UnitUse(
            name="train", requested=Usage("training", float(result["seconds"]), cpu=2.0,
                                          memory_gib=8.0, gpus=gpus),
            sized=True, usage=usage)], spec)
        kinds = sorted({i.kind for i in finding.issues}) if finding else []
        flagged = "lowGpuUtilization" in kinds
        expected = name.startswith("starved")
        rows.append(Row("findings", name,
                        f"GPU util median; issues: {', '.join(kinds) or 'none'}",
                        usage.gpu_util_median or 0.0, "lowGpuUtilization below", LOW_GPU_UTIL,
                        "%", None, "flagged" if expected else "not flagged",
                        (flagged == expected) if sizes.cuda else None))
    return rows


# ----- every stage's work unit -----------------------------------------------------------------


def units_stage(sizes: Sizes, folder: Path) -> list[Row]:
    manifest = {
        "apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "gpu-units"},
        "spec": {
            "dataset": {"builtin": "digits", "seed": SEED,
                        **({} if sizes.cuda else {"fraction": 0.3})},
            "augmentation": {"enabled": True, "multiplier": 1,
                             "image": {"rotation": 10, "noiseStd": 0.05}},
            "model": {"builtin": "cnn", "params": {"channels": [16, 32], "hiddenUnits": 64}},
            "training": {"epochs": 2, "batchSize": 64,
                         "resources": {"gpusPerNode": 1 if sizes.cuda else 0, "cpu": "2",
                                       "memory": "4Gi"}},
            "tuning": {"enabled": True, "sampler": "random", "pruner": "none", "trials": 1,
                       "parallelism": 1,
                       "searchSpace": {"learningRate": {"type": "float", "low": 0.001,
                                                        "high": 0.01, "log": True}}},
            "explanation": {"enabled": True, "samples": 10, "background": 20},
        },
    }
    job = folder / "units.yaml"
    job.write_text(yaml.safe_dump(manifest))
    storage = folder / "units-storage"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kubetrain.cli", "run", str(job), "-o",
                           str(folder / "units-status.yaml"), "--storage", str(storage)],
                          capture_output=True, text=True, timeout=400)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"kubetrain run failed:\n{proc.stderr[-3000:]}")
    rows = []
    for kind in ("augment", "trial", "train", "explain"):
        results = sorted(p for p in storage.rglob("result.json")
                         if p.parent.name.startswith(kind))
        if not results:
            raise RuntimeError(f"kubetrain run left no {kind} unit result under {storage}")
        result = json.loads(results[0].read_text())
        usage = result.get("usage") or {}
        device = (result.get("acceleration") or {}).get("device") or (
            "cuda" if usage.get("gpu_memory_peak_gib") else "cpu")
        rows.append(Row("units", results[0].parent.name, f"ran on {device}",
                        float(result.get("seconds") or 0.0), "whole job (s)", seconds, "s",
                        None, "on cuda" if sizes.cuda else "",
                        (device == "cuda") if sizes.cuda else None))
    return rows


# ----- output ----------------------------------------------------------------------------------


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "share":
        return f"{value:.2%}"
    if unit in ("s", "%"):
        return f"{value:,.3f}" if unit == "s" else f"{value:.0f}%"
    return f"{value:,.0f}"


def format_table(rows: list[Row]) -> str:
    header = ["stage", "case", "kubetrain", "value", "baseline", "baseline value", "unit",
              "ratio", "goal", "met"]
    lines = [header]
    for r in rows:
        lines.append([r.stage, r.case, r.ours, _figure(r.value, r.unit), r.baseline,
                      _figure(r.baseline_value, r.unit), r.unit,
                      f"{r.ratio:.3f}" if r.ratio is not None else "-", r.goal or "-",
                      {True: "yes", False: "NO", None: "-"}[r.met]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for i, line in enumerate(lines):
        out.append(" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if i == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


def judge(rows: list[Row]) -> None:
    """The goals are the GPU's: on the CPU the rows are there (the same code paths), unjudged."""
    goals: dict[str, Callable[[Row], bool]] = {
        ">= 0.95": lambda r: (r.ratio or 0) >= 0.95, ">= 1.5": lambda r: (r.ratio or 0) >= 1.5,
        ">= 0.9": lambda r: (r.ratio or 0) >= 0.9, "<= 0.5 s": lambda r: r.value <= 0.5,
    }
    for row in rows:
        if row.met is None and row.goal in goals:
            row.met = goals[row.goal](row)


STAGES = ("trainer", "augment", "explain", "findings", "units")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--cpu", action="store_true",
                        help="CPU mode: small sizes, the same code paths (automatic without CUDA)")
    parser.add_argument("--no-compile", action="store_true",
                        help="leave out the CUDA-graphs rows (compiling takes a minute or two)")
    parser.add_argument("--stage", action="append", choices=STAGES, default=None,
                        help="run only this stage (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    sizes = Sizes.for_device(cuda)
    env = {"torch": torch.__version__, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
           "threads": torch.get_num_threads(), "cuda_runtime": torch.version.cuda}
    print(f"kubetrain GPU bench: {env}", flush=True)
    started = time.perf_counter()
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kubetrain-gpu-bench-") as tmp:
        folder = Path(tmp)
        runs: dict[str, Callable[[], list[Row]]] = {
            "trainer": lambda: trainer_stage(sizes, device, folder, not args.no_compile),
            "augment": lambda: augment_stage(sizes, device),
            "explain": lambda: explain_stage(sizes, device),
            "findings": lambda: findings_stage(sizes, folder),
            "units": lambda: units_stage(sizes, folder),
        }
        for stage in args.stage or STAGES:
            stage_start = time.perf_counter()
            print(f"--- {stage}", flush=True)
            with contextlib.redirect_stdout(sys.stderr):  # the sides' own lines: not the table
                rows += runs[stage]()
            seconds[stage] = round(time.perf_counter() - stage_start, 1)
    if cuda:
        judge(rows)
    print()
    print(format_table(rows))
    total = time.perf_counter() - started
    print(f"\nseconds per stage: {seconds}; total {total:.0f} s on {env['device_name']}")
    if args.json:
        args.json.write_text(json.dumps({"env": env, "seconds": seconds,
                                         "rows": [asdict(r) for r in rows]}, indent=1))
    missed = [r for r in rows if r.met is False]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
