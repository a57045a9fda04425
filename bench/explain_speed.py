"""Explanation speed: kubetrain's gradient SHAP against shap's KernelExplainer (and shap's own
GradientExplainer), on the same trained model and the same samples, in one process.

The model is a small CNN (``--model cnn``, default) or MLP trained here on the digits built-in
(the work unit's splits and standardization). Background: ``--background`` training rows drawn
with seed 0; samples: the first ``--samples`` test rows. Each side explains the predicted
class of every sample:

- kubetrain gradient: ``kubetrain.explain.explain(method="gradient")``, expected gradients
  computed for all samples at once (200 points per sample: every background row, stratified
  positions along each path);
- shap GradientExplainer: ``shap.GradientExplainer(...).shap_values(nsamples=200,
  ranked_outputs=1)``, the same estimator, looping in Python per sample and per draw;
- shap KernelExplainer: ``kubetrain.explain.explain(method="kernel")``: the background
  summarized to 20 k-means centres, 2F + 2048 coalitions per sample, ``l1_reg=False``, one
  explainer per predicted class.

Timed on the wall clock (and in process CPU time) from outside, after one untimed warm-up
call of each gradient side on two samples (KernelExplainer is run once: it takes minutes).
Reported per side: seconds, CPU seconds, seconds per sample, the completeness error
(mean |sum SHAP - (f(x) - E[f(bg)])| / mean |f(x) - E[f(bg)]|, against the background each
explainer used) and agreement with KernelExplainer (Pearson correlation of the per-sample
values, and of the global mean |SHAP|).

    python bench/explain_speed.py                       # CPU: CNN, 20 samples
    python bench/explain_speed.py --device cuda --samples 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kubetrain.api.spec import DatasetSpec, ModelSpec
from kubetrain.data import Standardizer, load_dataset, split_dataset
from kubetrain.explain import Attribution, TrainedModel, explain
from kubetrain.explain.analysis import completeness_error
from kubetrain.models import build_model

SEED = 0
GOAL_SPEEDUP = 20.0
GOAL_ERROR = 0.05


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--background", type=int, default=50)
    parser.add_argument("--nsamples", type=int, default=200,
                        help="gradient evaluations per sample (both gradient sides)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--skip-shap-gradient", action="store_true",
                        help="leave out shap's own GradientExplainer")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings for a smoke test (MLP, 4 samples, 2 epochs)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.samples, args.background, args.epochs = "mlp", 4, 20, 2
    return args


def train_model(args: argparse.Namespace, device: torch.device) -> tuple[TrainedModel,
                                                                        np.ndarray, np.ndarray,
                                                                        float]:
    """A digits model trained with a plain loop; the background and the samples."""
    spec = DatasetSpec(builtin="digits", seed=SEED)
    dataset = load_dataset(spec)
    splits = split_dataset(dataset, spec)
    scaler = Standardizer().fit(splits.train[0])
    params: dict[str, Any] = ({"channels": [16, 32], "hiddenUnits": 64} if args.model == "cnn"
                              else {"hiddenUnits": [64, 32]})
    torch.manual_seed(SEED)
    model = build_model(ModelSpec(builtin=args.model, params=params), dataset.input_shape,
                        dataset.num_outputs, 0.0).to(device)
    X = torch.from_numpy(scaler.transform(splits.train[0])).to(device)
    y = torch.from_numpy(splits.train[1].astype(np.int64)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(args.epochs):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            idx = idx.to(device)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    X_test = scaler.transform(splits.test[0])
    with torch.no_grad():
        pred = model(torch.from_numpy(X_test).to(device)).argmax(1).cpu().numpy()
    accuracy = float((pred == splits.test[1]).mean())
    trained = TrainedModel(model, dataset.input_shape, dataset.num_outputs, "classification",
                           dataset.kind, scaler, dataset.feature_names, dataset.class_names,
                           device=device)
    rng = np.random.default_rng(SEED)
    bg_rows = np.sort(rng.choice(len(splits.train[0]), size=args.background, replace=False))
    background = scaler.transform(splits.train[0][bg_rows])
    samples = X_test[:args.samples]
    return trained, background, samples, accuracy


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def run_side(name: str, trained: TrainedModel, background: np.ndarray, samples: np.ndarray,
             args: argparse.Namespace, **kwargs: Any) -> tuple[dict[str, Any], Attribution]:
    if kwargs.get("method") == "gradient":  # warm-up (lazy init, allocator)
        explain(trained, background, samples[:2], seed=SEED, **kwargs)
    started, cpu_started = time.perf_counter(), time.process_time()
    attribution = explain(trained, background, samples, seed=SEED, **kwargs)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    error, _, _ = completeness_error(attribution)
    row = {"side": name, "seconds": seconds, "cpu_seconds": cpu,
           "seconds_per_sample": seconds / len(samples), "completeness_error": error,
           "nsamples": attribution.details.get("nsamples")}
    print(f"  {name:<28} {seconds:9.3f} s  ({cpu:.3f} s CPU)  completeness error "
          f"{error:7.2%}", flush=True)
    return row, attribution


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()
    trained, background, samples, accuracy = train_model(args, device)
    print(f"digits {args.model}: test accuracy {accuracy:.3f}; explaining {len(samples)} "
          f"samples against {len(background)} background rows on {device.type} "
          f"({torch.get_num_threads()} threads)", flush=True)
    rows: list[dict[str, Any]] = []
    attributions: dict[str, Attribution] = {}
    sides: list[tuple[str, dict[str, Any]]] = [
        ("kubetrain gradient (batched)", {"method": "gradient", "nsamples": args.nsamples}),
    ]
    if not args.skip_shap_gradient:
        sides.append(("shap GradientExplainer", {"method": "gradient",
                                                 "nsamples": args.nsamples,
                                                 "implementation": "shap"}))
    sides.append(("shap KernelExplainer", {"method": "kernel"}))
    for name, kwargs in sides:
        row, attribution = run_side(name, trained, background, samples, args, **kwargs)
        rows.append(row)
        attributions[name] = attribution
    kernel = attributions["shap KernelExplainer"]
    for row in rows:
        values = attributions[row["side"]].values
        row["corr_with_kernel"] = _corr(values, kernel.values)
        row["global_corr_with_kernel"] = _corr(np.abs(values).mean(0),
                                               np.abs(kernel.values).mean(0))
    by_side = {r["side"]: r for r in rows}
    ours = by_side["kubetrain gradient (batched)"]
    speedup = by_side["shap KernelExplainer"]["seconds"] / ours["seconds"]
    cpu_speedup = by_side["shap KernelExplainer"]["cpu_seconds"] / ours["cpu_seconds"]
    print()
    print("| side | seconds | CPU seconds | s/sample | completeness error | corr. with kernel "
          "(per sample / global) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['side']} | {r['seconds']:.3f} | {r['cpu_seconds']:.3f} | "
              f"{r['seconds_per_sample']:.4f} | "
              f"{r['completeness_error']:.2%} | {r['corr_with_kernel']:.3f} / "
              f"{r['global_corr_with_kernel']:.3f} |")
    print()
    print(f"speed ratio kernel / kubetrain gradient: {speedup:.1f}x wall, "
          f"{cpu_speedup:.1f}x CPU "
          f"(goal >= {GOAL_SPEEDUP:g}x with completeness error < {GOAL_ERROR:.0%})")
    if "shap GradientExplainer" in by_side:
        ratio = by_side["shap GradientExplainer"]["seconds"] / ours["seconds"]
        cpu_ratio = by_side["shap GradientExplainer"]["cpu_seconds"] / ours["cpu_seconds"]
        print(f"speed ratio shap GradientExplainer / kubetrain gradient: {ratio:.1f}x wall, "
              f"{cpu_ratio:.1f}x CPU")
    met = speedup >= GOAL_SPEEDUP and ours["completeness_error"] < GOAL_ERROR
    print(f"goal {'met' if met else 'NOT met'}; total {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "model": args.model, "device": device.type, "threads": torch.get_num_threads(),
            "samples": len(samples), "background": len(background), "accuracy": accuracy,
            "results": rows, "speedup_kernel_over_gradient": speedup,
            "cpu_speedup_kernel_over_gradient": cpu_speedup, "goal_met": met,
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
