"""The explanation work unit: ``python -m kubetrain.workloads.explain``.

Explains the model that the training stage saved (``<storage>/train/model.pt``) with SHAP:
the predicted class of each of the first ``explanation.samples`` test rows, against
``explanation.background`` training rows. Writes ``<storage>/explain/analysis.json``
(SageMaker Clarify layout), ``local.json`` (per-sample values) and PNG plots, and reports a
small summary (method, top features, completeness error, files) as its result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..api import load_training_job
from ..api.spec import TrainingJobSpec
from ..explain import (
    ExplainError,
    default_device,
    explain,
    load_trained_model,
    resolve_method,
    select_data,
    summarize,
    trained_model_path,
    write_outputs,
)
from ..report import MAX_RESULT_BYTES, Reporter, default_result_path
from ..tracking import UnitRun, UnitTracker
from ..tracking.records import explanation_record
from ..usage import USAGE_FILE
from .args import add_common_arguments

COMPLETENESS_WARNING = 0.05
"""A completeness error above this fraction is reported as a warning."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetrain.workloads.explain",
                                     description="kubetrain explanation work unit (SHAP)")
    add_common_arguments(parser)
    parser.add_argument("--unit", default="explain", help="work unit name (its folder in storage)")
    parser.add_argument("--model", type=Path, default=None,
                        help="trained model (default: <storage>/train/model.pt)")
    parser.add_argument("--method", default=None,
                        choices=["auto", "gradient", "deep", "permutation", "kernel"],
                        help="override explanation.method")
    parser.add_argument("--nsamples", type=int, default=None,
                        help="evaluations per explained sample: gradient points (default 200), "
                             "kernel coalitions (default 2F+2048), permutation model calls "
                             "(default 10 x (2F+1))")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where the model runs (auto: cuda when available)")
    args = parser.parse_args(argv)
    if args.nsamples is not None and args.nsamples < 1:
        parser.error("--nsamples must be at least 1")
    return args


def _fit_top_features(summary: dict[str, Any]) -> dict[str, Any]:
    """Drop the last top features until the result fits the termination message."""
    while (len(json.dumps(summary, separators=(",", ":")).encode()) > MAX_RESULT_BYTES - 256
           and len(summary["top_features"]) > 1):
        summary["top_features"] = summary["top_features"][:-1]
        summary["top_features_truncated"] = True
    return summary


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    job = load_training_job(args.job)
    spec: TrainingJobSpec = job.spec
    unit_dir = args.storage / args.unit
    result_path = args.result or default_result_path() or unit_dir / "result.json"
    reporter = Reporter(result_path, usage_series=unit_dir / USAGE_FILE)
    model_path = args.model or trained_model_path(args.storage)
    device = default_device() if args.device == "auto" else torch.device(args.device)
    trained = load_trained_model(model_path, device)
    settings = spec.explanation
    seed = spec.dataset.seed
    torch.manual_seed(seed)
    data = select_data(trained, spec.dataset, samples=settings.samples,
                       background=settings.background, base_dir=args.base_dir,
                       data_root=args.data_root, storage=args.storage)
    method = resolve_method(args.method or settings.method)
    tracker = UnitTracker.open(spec, UnitRun(job.metadata.name, args.unit, "explain"),
                               args.storage)
    tracker.start({"explanation.method": method, "explanation.samples": str(settings.samples),
                   "explanation.background": str(settings.background),
                   "explanation.model": str(model_path)})
    reporter.event("start", unit=args.unit, method=method,
                   requested_method=args.method or settings.method, samples=len(data.samples),
                   sample_split=data.sample_split, background=len(data.background),
                   features=len(trained.feature_names), task=trained.task, device=str(device),
                   model=str(model_path))
    attribution = explain(trained, data.background, data.samples, method,
                          nsamples=args.nsamples, seed=seed)
    summary = summarize(attribution, trained)
    written = write_outputs(summary, trained, data, unit_dir,
                            label=spec.dataset.target or "label", top_k=settings.top_k,
                            seconds=attribution.seconds)
    result: dict[str, Any] = {
        "unit": args.unit,
        "status": "succeeded",
        "method": method,
        "samples": len(data.samples),
        "background": len(data.background),
        "top_features": summary.top_features(settings.top_k),
        "completeness_error": summary.completeness_error,
        "seconds": round(time.time() - started, 3),
        "explain_seconds": round(attribution.seconds, 3),
        "nsamples": attribution.details.get("nsamples"),
        "device": device.type,
        "model": str(model_path),
        "analysis": str(written.analysis),
        "local": str(written.local),
        "plots": {name: str(path) for name, path in written.plots.items()},
    }
    if not summary.completeness_error <= COMPLETENESS_WARNING:
        result["warning"] = (
            f"completeness error {summary.completeness_error:.1%}: the SHAP values do not add "
            f"up to f(x) - E[f(background)]; "
            + ("DeepExplainer may not support a layer of this model; use method gradient"
               if method == "deep" else "raise --nsamples for more accurate values"))
        reporter.event("warning", unit=args.unit, message=result["warning"])
    tracker.finish(explanation_record(result))
    reporter.result(_fit_top_features(tracker.report_into(result)))
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except ExplainError as error:
        print(f"explain: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
