"""Writing an explanation to a folder: analysis.json, local.json, plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..report import write_json_atomic
from . import plots
from .analysis import Summary, build_analysis, build_local
from .model import ExplainData, TrainedModel

ANALYSIS_FILE = "analysis.json"
LOCAL_FILE = "local.json"
LOCAL_ARRAYS_FILE = "local.npz"


@dataclass
class Written:
    analysis: Path
    local: Path
    plots: dict[str, Path]


def write_outputs(summary: Summary, trained: TrainedModel, data: ExplainData, out_dir: Path,
                  *, label: str, top_k: int, seconds: float) -> Written:
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{summary.method} SHAP: {trained.output_name}"
    plot_paths: dict[str, Path] = {
        "bar": plots.bar_plot(summary, out_dir / "shap_bar.png", top_k, title),
    }
    if summary.heatmap is not None:
        plot_paths["heatmap"] = plots.heatmap_plot(
            summary.heatmap, out_dir / "shap_heatmap.png", f"mean |SHAP| per pixel\n{title}")
        labels = [str(trained.class_names[t]) if t < len(trained.class_names) else str(t)
                  for t in summary.targets]
        plot_paths["samples"] = plots.image_samples_plot(
            summary, data.samples_raw, labels, out_dir / "shap_samples.png")
    else:
        plot_paths["beeswarm"] = plots.beeswarm_plot(
            summary, data.samples_raw, out_dir / "shap_beeswarm.png", top_k)
    np.savez_compressed(out_dir / LOCAL_ARRAYS_FILE, shap_values=summary.values.astype(np.float32),
                        outputs=summary.outputs, expected_value=summary.base,
                        explained=summary.targets, index=data.sample_indices,
                        feature_names=np.asarray(summary.feature_names))
    local_path = out_dir / LOCAL_FILE
    write_json_atomic(local_path, build_local(summary, trained, sample_indices=data.sample_indices,
                                              sample_split=data.sample_split))
    files: dict[str, Any] = {"local": str(local_path),
                             "local_arrays": str(out_dir / LOCAL_ARRAYS_FILE),
                             **{name: str(p) for name, p in plot_paths.items()}}
    analysis_path = out_dir / ANALYSIS_FILE
    write_json_atomic(analysis_path, build_analysis(
        summary, trained, label=label, top_k=top_k, sample_indices=data.sample_indices,
        sample_split=data.sample_split, background=len(data.background), seconds=seconds,
        files=files))
    return Written(analysis=analysis_path, local=local_path, plots=plot_paths)
