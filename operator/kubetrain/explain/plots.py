"""PNG plots of an explanation: top-k bar chart, beeswarm (tabular), heat maps (images)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .analysis import Summary
from .methods import import_shap


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def bar_plot(summary: Summary, path: Path, top_k: int, title: str) -> Path:
    plt = _pyplot()
    idx = summary.order[:top_k][::-1]
    names = [summary.feature_names[i] for i in idx]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(idx) + 1.4))
    ax.barh(range(len(idx)), summary.mean_abs[idx], color="#1e88e5")
    ax.set_yticks(range(len(idx)), names)
    ax.set_xlabel("mean |SHAP value|")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def beeswarm_plot(summary: Summary, features: np.ndarray, path: Path, top_k: int) -> Path:
    """shap's summary plot: each dot a sample, colour the feature's value."""
    shap = import_shap()

    plt = _pyplot()
    plt.figure()
    shap.summary_plot(summary.values, features=features.reshape(len(features), -1),
                      feature_names=summary.feature_names, max_display=top_k, show=False,
                      rng=np.random.default_rng(0))
    fig = plt.gcf()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmap_plot(heatmap: np.ndarray, path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4))
    im = ax.imshow(heatmap, cmap="hot", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("w")
    ax.set_ylabel("h")
    fig.colorbar(im, ax=ax, label="mean |SHAP| (summed over channels)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def image_samples_plot(summary: Summary, images: np.ndarray, labels: list[str], path: Path,
                       count: int = 3) -> Path:
    """A few samples: the image and its signed SHAP map (summed over channels)."""
    plt = _pyplot()
    n = min(count, len(images))
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.2), squeeze=False)
    shape = images.shape[1:]
    for i in range(n):
        shown = images[i].mean(axis=0)
        axes[0][i].imshow(shown, cmap="gray")
        axes[0][i].set_title(f"explained: {labels[i]}", fontsize=9)
        smap = summary.values[i].reshape(shape).sum(axis=0)
        lim = float(np.abs(smap).max()) or 1.0
        axes[1][i].imshow(smap, cmap="bwr", vmin=-lim, vmax=lim)
        axes[1][i].set_title(f"SHAP sum {smap.sum():+.2f}", fontsize=9)
        for ax in (axes[0][i], axes[1][i]):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
