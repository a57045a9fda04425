"""Data larger than memory on a real cluster: npz shards on the job's volume, streamed by the
training pod's DataLoader workers (a shard at a time) instead of loaded as tensors."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from k8s import HOST_STORAGE, apply_job, small_job, wait_phase
from sklearn.datasets import load_digits

pytestmark = pytest.mark.cluster


def test_sharded_images_on_the_volume_stream_in_the_training_pod(namespace: str,
                                                                 operator: Any) -> None:
    # digits as 8-bit 8 x 8 images in 5 shards, where a pvc:// uri finds them in the pod
    folder = HOST_STORAGE / namespace / "digits-shards"
    folder.mkdir()
    digits = load_digits()
    pixels = np.round(digits.images * 255 / 16).astype(np.uint8)
    for k, rows in enumerate(np.array_split(np.arange(len(pixels)), 5)):
        np.savez(folder / f"part-{k}.npz", X=pixels[rows], y=digits.target[rows])
    apply_job(namespace, small_job(
        "shards", dataset={"uri": "pvc://kubetrain-data/digits-shards", "format": "shards",
                           "streaming": "always"},
        model={"builtin": "cnn", "params": {"channels": [8, 16], "hiddenUnits": 32}},
        training={"epochs": 10, "batchSize": 64, "learningRate": 0.01,
                  "resources": {"cpu": "500m", "memory": "1Gi"}}))
    status = wait_phase(namespace, "shards", ("Succeeded", "Failed"), timeout=400)
    assert status["phase"] == "Succeeded", json.dumps(status)[:3000]
    result = status["stages"]["training"]["units"]["train"]["result"]
    assert result["streamed"] is True
    assert status["training"]["testMetrics"]["test_accuracy"] > 0.85
