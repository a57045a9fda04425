"""From SHAP values to findings: global importance, top features, completeness, the JSON files.

``analysis.json`` follows SageMaker Clarify's layout::

    {"version": "1.0",
     "explanations": {"<method>_shap": {"<label>": {"global_shap_values": {feature: mean |SHAP|},
                                                   "expected_value": E[f(background)]}}},
     "kubetrain": {...}}

Clarify's key for kernel SHAP is ``kernel_shap``; the other methods follow the pattern
(``gradient_shap``, ``deep_shap``, ``permutation_shap``). The label key is the target column's
name (``label`` when the data has none). A classifier's explained output is each sample's
predicted class, so ``expected_value`` is then the mean over the samples of
E[f_class(background)]: mean f(x) = expected_value + sum of the mean signed SHAP values.
The ``kubetrain`` section adds what Clarify lacks: the completeness error, the top features,
a per-class breakdown, the image heat map and a few samples' values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .methods import Attribution
from .model import TrainedModel

ANALYSIS_VERSION = "1.0"
LOCAL_SAMPLES_IN_ANALYSIS = 3
MAX_FEATURES_IN_LOCAL = 4096
"""Above this many features, local.json keeps each sample's top values (all are in local.npz)."""
MAX_HEATMAP_PIXELS_IN_JSON = 4096


def clarify_key(method: str) -> str:
    return f"{method}_shap"


@dataclass
class Summary:
    """What the explanation found, in the reported units."""

    method: str
    feature_names: list[str]
    values: np.ndarray
    """(N, F) SHAP values, reported units."""
    outputs: np.ndarray
    base: np.ndarray
    targets: np.ndarray
    mean_abs: np.ndarray
    """(F,) global mean |SHAP| per feature."""
    order: np.ndarray
    """Features by decreasing mean |SHAP|."""
    completeness_error: float
    mean_abs_residual: float
    mean_abs_delta: float
    heatmap: np.ndarray | None = None
    """Images: (H, W) mean |SHAP| summed over channels."""
    details: dict[str, Any] = field(default_factory=dict)

    def top_features(self, k: int) -> list[dict[str, Any]]:
        return [{"feature": self.feature_names[i], "mean_abs_shap": float(self.mean_abs[i])}
                for i in self.order[:k]]


def completeness_error(attribution: Attribution) -> tuple[float, float, float]:
    """(error, mean |residual|, mean |f(x) - E[f(bg)]|).

    error = mean_i |sum_j phi_ij - (f(x_i) - E[f(bg)])| / mean_i |f(x_i) - E[f(bg)]|, a
    fraction; scale-free, so it reads the same in logits or in target units.
    """
    residual = float(np.abs(attribution.residual).mean())
    delta = float(np.abs(attribution.outputs - attribution.base).mean())
    if delta == 0.0:
        return (0.0 if residual == 0.0 else float("inf")), residual, delta
    return residual / delta, residual, delta


def summarize(attribution: Attribution, trained: TrainedModel) -> Summary:
    scale, offset = trained.output_scale, trained.output_offset
    values = attribution.values * scale
    error, residual, delta = completeness_error(attribution)
    mean_abs = np.abs(values).mean(axis=0)
    order = np.argsort(-mean_abs, kind="stable")
    heatmap = None
    if trained.kind == "image" and len(trained.input_shape) == 3:
        heatmap = mean_abs.reshape(trained.input_shape).sum(axis=0)
    return Summary(
        method=attribution.method,
        feature_names=trained.feature_names,
        values=values,
        outputs=attribution.outputs * scale + offset,
        base=attribution.base * scale + offset,
        targets=attribution.targets,
        mean_abs=mean_abs,
        order=order,
        completeness_error=error,
        mean_abs_residual=residual * scale,
        mean_abs_delta=delta * scale,
        heatmap=heatmap,
        details=dict(attribution.details),
    )


def _explained(summary: Summary, trained: TrainedModel, i: int) -> str:
    if trained.task != "classification":
        return "prediction"
    t = int(summary.targets[i])
    return trained.class_names[t] if t < len(trained.class_names) else str(t)


def _sample_record(summary: Summary, trained: TrainedModel, i: int, index: int, split: str,
                   *, top: int | None = None) -> dict[str, Any]:
    values = summary.values[i]
    record: dict[str, Any] = {
        "index": index,
        "split": split,
        "explained": _explained(summary, trained, i),
        "output": float(summary.outputs[i]),
        "expected_value": float(summary.base[i]),
        "residual": float(values.sum() - (summary.outputs[i] - summary.base[i])),
    }
    if trained.task == "classification":
        record["class_index"] = int(summary.targets[i])
    if top is None:
        record["shap_values"] = [float(v) for v in values]
    else:
        best = np.argsort(-np.abs(values), kind="stable")[:top]
        record["shap_values"] = {summary.feature_names[j]: float(values[j]) for j in best}
    return record


def build_analysis(summary: Summary, trained: TrainedModel, *, label: str, top_k: int,
                   sample_indices: np.ndarray, sample_split: str, background: int,
                   seconds: float, files: dict[str, str]) -> dict[str, Any]:
    """The analysis.json document (Clarify layout plus a ``kubetrain`` section)."""
    names = summary.feature_names
    global_values = {names[j]: float(summary.mean_abs[j]) for j in range(len(names))}
    per_class: dict[str, Any] = {}
    if trained.task == "classification":
        for t in np.unique(summary.targets):
            rows = summary.targets == t
            mean_abs = np.abs(summary.values[rows]).mean(axis=0)
            order = np.argsort(-mean_abs, kind="stable")[:top_k]
            name = trained.class_names[t] if t < len(trained.class_names) else str(t)
            per_class[name] = {
                "samples": int(rows.sum()),
                "expected_value": float(summary.base[rows][0]),
                "top_features": [{"feature": names[j], "mean_abs_shap": float(mean_abs[j])}
                                 for j in order],
            }
    kubetrain: dict[str, Any] = {
        "method": summary.method,
        **summary.details,
        "explained_output": trained.output_name,
        "output_units": "target" if trained.task == "regression" else "logit",
        "samples": len(summary.values),
        "sample_split": sample_split,
        "background": background,
        "seconds": round(seconds, 3),
        "completeness_error": summary.completeness_error,
        "completeness": {
            "definition": "mean |sum(SHAP) - (f(x) - E[f(background)])| / "
                          "mean |f(x) - E[f(background)]|",
            "mean_abs_residual": summary.mean_abs_residual,
            "mean_abs_output_minus_expected": summary.mean_abs_delta,
        },
        "top_features": summary.top_features(top_k),
        "mean_shap_values": {names[j]: float(v)
                             for j, v in enumerate(summary.values.mean(axis=0))},
    }
    if per_class:
        kubetrain["per_class"] = per_class
    if summary.heatmap is not None:
        kubetrain["heatmap_shape"] = list(summary.heatmap.shape)
        if summary.heatmap.size <= MAX_HEATMAP_PIXELS_IN_JSON:
            kubetrain["heatmap"] = [[float(v) for v in row] for row in summary.heatmap]
    kubetrain["local_samples"] = [
        _sample_record(summary, trained, i, int(sample_indices[i]), sample_split, top=top_k)
        for i in range(min(LOCAL_SAMPLES_IN_ANALYSIS, len(summary.values)))
    ]
    kubetrain["files"] = files
    return {
        "version": ANALYSIS_VERSION,
        "explanations": {
            clarify_key(summary.method): {
                label: {
                    "global_shap_values": global_values,
                    "expected_value": float(summary.base.mean()),
                },
            },
        },
        "kubetrain": kubetrain,
    }


def build_local(summary: Summary, trained: TrainedModel, *, sample_indices: np.ndarray,
                sample_split: str) -> dict[str, Any]:
    """local.json: every explained sample's SHAP values (Clarify writes these as a CSV)."""
    full = len(summary.feature_names) <= MAX_FEATURES_IN_LOCAL
    return {
        "method": summary.method,
        "explained_output": trained.output_name,
        "feature_names": summary.feature_names if full else None,
        "values": "all features, in feature_names order" if full
                  else "the 100 largest |SHAP| per sample; all values are in local.npz",
        "samples": [
            _sample_record(summary, trained, i, int(sample_indices[i]), sample_split,
                           top=None if full else 100)
            for i in range(len(summary.values))
        ],
    }
