"""Image folders larger than memory: streamed from disk batch by batch (DataLoader workers),
chosen by dataset.streaming or automatically from the training unit's memory."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO

generate = runpy.run_path(str(REPO / "bench" / "imagefolder.py"))["generate"]


def _train(tmp_path: Path, name: str, streaming: str, memory: str = "2Gi") -> dict[str, Any]:
    images = generate(tmp_path / "images", 300, size=16)
    job = tmp_path / f"{name}.yaml"
    job.write_text(yaml.safe_dump({
        "apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"dataset": {"uri": str(images), "format": "imagefolder",
                             "streaming": streaming, "seed": 0},
                 "model": {"builtin": "cnn", "params": {"channels": [8, 16],
                                                        "hiddenUnits": 32}},
                 "training": {"epochs": 3, "batchSize": 32, "learningRate": 0.003,
                              "resources": {"cpu": "2", "memory": memory}}}}))
    storage = tmp_path / name
    proc = subprocess.run([sys.executable, "-m", "kubetrain.workloads.train", "--job", str(job),
                           "--storage", str(storage)], capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads((storage / "train" / "result.json").read_text())
    result["history_rows"] = json.loads((storage / "train" / "history.json").read_text())
    return result


def test_streamed_training_learns_what_in_memory_training_learns(tmp_path: Path) -> None:
    streamed = _train(tmp_path, "streamed", "always")
    in_memory = _train(tmp_path, "memory", "never")
    assert streamed["streamed"] is True and in_memory["streamed"] is False
    # The same rows, order, scaling and steps: the same losses, whichever way they were read.
    for a, b in zip(streamed["history_rows"], in_memory["history_rows"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert streamed["test_metrics"]["test_accuracy"] == pytest.approx(
        in_memory["test_metrics"]["test_accuracy"], abs=1e-6)


def test_auto_streams_when_the_images_would_not_fit_the_units_memory(tmp_path: Path) -> None:
    # 300 images of 3 x 16 x 16 float32 are 0.9 MB decoded: more than half of 1 MiB.
    assert _train(tmp_path, "small", "auto", memory="1Mi")["streamed"] is True
    assert _train(tmp_path, "roomy", "auto", memory="2Gi")["streamed"] is False


def _train_shards(tmp_path: Path, streaming: str) -> dict[str, Any]:
    """breast_cancer in 6 npz shards: tabular rows streamed a shard at a time."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    folder = tmp_path / "shards"
    if not folder.exists():
        folder.mkdir()
        X, y = load_breast_cancer(return_X_y=True)
        for k, rows in enumerate(np.array_split(np.arange(len(y)), 6)):
            np.savez(folder / f"part-{k}.npz", X=X[rows], y=y[rows])
    name = f"shards-{streaming}"
    job = tmp_path / f"{name}.yaml"
    job.write_text(yaml.safe_dump({
        "apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"dataset": {"uri": str(folder), "format": "shards", "streaming": streaming},
                 "model": {"builtin": "mlp", "params": {"hiddenUnits": [32]}},
                 "training": {"epochs": 8, "batchSize": 32, "learningRate": 0.003,
                              "resources": {"cpu": "1", "memory": "2Gi"}}}}))
    storage = tmp_path / name
    proc = subprocess.run([sys.executable, "-m", "kubetrain.workloads.train", "--job", str(job),
                           "--storage", str(storage)], capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads((storage / "train" / "result.json").read_text())
    return result


def test_sharded_rows_stream_and_learn_as_in_memory(tmp_path: Path) -> None:
    streamed = _train_shards(tmp_path, "always")
    in_memory = _train_shards(tmp_path, "never")
    assert streamed["streamed"] is True and in_memory["streamed"] is False
    # The order differs (a shard at a time), so the losses do; what is learnt does not.
    assert in_memory["test_metrics"]["test_accuracy"] > 0.9
    assert streamed["test_metrics"]["test_accuracy"] > 0.9
    assert abs(streamed["test_metrics"]["test_accuracy"]
               - in_memory["test_metrics"]["test_accuracy"]) < 0.05
