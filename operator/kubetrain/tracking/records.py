"""Pure mappings from a unit's result to what its tracking run records at the end."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api.spec import TrainingJobSpec
from .naming import TAG_PREFIX, numeric_metrics


@dataclass
class RunRecord:
    """The end of a run: final metrics, tags, files and JSON documents (``findings.json``)."""

    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    documents: dict[str, Any] = field(default_factory=dict)
    status: str = "succeeded"


def training_record(spec: TrainingJobSpec, summary: Mapping[str, Any],
                    cost: float | None) -> RunRecord:
    """A training unit's (the final training, a fold, a trial's training) end of run."""
    metrics = {**numeric_metrics("final_", summary["final_metrics"]),
               **numeric_metrics("best_", summary["best_metrics"]),
               **numeric_metrics("", summary["test_metrics"]),
               "epochs_run": float(summary["epochs_run"]), "seconds": summary["seconds"]}
    if cost is not None:
        metrics["cost"] = cost
    overfitting = summary.get("overfitting") or {}  # none when a program failed
    tags = {f"{TAG_PREFIX}overfitting.verdict": str(overfitting.get("verdict", "unknown")),
            f"{TAG_PREFIX}status": summary["status"],
            f"{TAG_PREFIX}currency": spec.findings.cost.prices.currency}
    if summary.get("stop_reason"):
        tags[f"{TAG_PREFIX}stop_reason"] = str(summary["stop_reason"])
    if summary["best_epoch"] is not None:
        tags[f"{TAG_PREFIX}best_epoch"] = str(summary["best_epoch"])
    files = [Path(summary["history"])]
    if summary.get("model"):
        files.append(Path(summary["model"]))
    return RunRecord(metrics, tags, files, {"findings": {"overfitting": overfitting}},
                     summary["status"])


def sweep_record(spec: TrainingJobSpec, result: Mapping[str, Any]) -> RunRecord:
    """The sweep's parent run at the end: trials by state, the best trial, what pruning saved."""
    metrics = {**numeric_metrics("trials_", result.get("trials") or {}),
               **{k: float(result[k]) for k in ("epochs_run", "epochs_saved_by_pruning",
                                                "trial_seconds", "seconds")
                  if isinstance(result.get(k), int | float)}}
    tags = {f"{TAG_PREFIX}status": str(result["status"])}
    best = result.get("best") or {}
    if best.get("value") is not None:
        metrics[f"best_{spec.tuning.metric_objective.metric}"] = float(best["value"])
    if best.get("trial") is not None:
        tags[f"{TAG_PREFIX}best.trial"] = str(best["trial"])
    for name, value in (best.get("params") or {}).items():
        tags[f"{TAG_PREFIX}best.param.{name}"] = json.dumps(value)
    files = [Path(result["trials_table"])] if result.get("trials_table") else []
    documents = {"findings": {"tuning": {k: result[k] for k in (
        "best", "importances", "pareto_front", "selection") if result.get(k)}}}
    return RunRecord(metrics, tags, files, documents, str(result["status"]))


def explanation_record(result: Mapping[str, Any]) -> RunRecord:
    """The explanation unit's run: the SHAP plots and analysis, the top features."""
    metrics = {k: float(result[k]) for k in ("completeness_error", "seconds", "explain_seconds")
               if isinstance(result.get(k), int | float)}
    tags = {f"{TAG_PREFIX}status": str(result["status"]),
            f"{TAG_PREFIX}explanation.method": str(result["method"])}
    files = [Path(p) for p in (result.get("plots") or {}).values()]
    files += [Path(result[k]) for k in ("analysis", "local") if result.get(k)]
    documents = {"findings": {"explanation": {
        "method": result["method"], "top_features": result["top_features"],
        "completeness_error": result.get("completeness_error")}}}
    return RunRecord(metrics, tags, files, documents, str(result["status"]))
