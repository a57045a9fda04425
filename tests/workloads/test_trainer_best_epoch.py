"""The trainer's best epoch is the one the overfitting finding judges, whatever earlyStopping says.

The validation metrics are scripted (val_loss best at epoch 2, val_accuracy at epoch 3) so the
two possible answers differ; the training steps are real.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from kubetrain.api.spec import TrainingJobSpec
from kubetrain.findings import analyze_overfitting
from kubetrain.models import build_model
from kubetrain.report import Reporter
from kubetrain.workloads.batches import TensorSplit
from kubetrain.workloads.distributed import DistContext
from kubetrain.workloads.trainer import Trainer

SCRIPTED = [
    {"val_loss": 1.0, "val_accuracy": 0.5},
    {"val_loss": 0.5, "val_accuracy": 0.8},
    {"val_loss": 0.55, "val_accuracy": 0.9},
    {"val_loss": 0.6, "val_accuracy": 0.85},
]


@pytest.mark.parametrize(("early_stopping", "expected"), [
    ({"enabled": False, "monitor": "val_accuracy"}, 2),
    ({"monitor": "val_accuracy", "patience": 10}, 3),
])
def test_trainer_and_finding_agree_on_the_best_epoch(
    tmp_path: Path, early_stopping: dict[str, Any], expected: int
) -> None:
    spec = TrainingJobSpec.model_validate({
        "dataset": {"builtin": "digits"},
        "model": {"builtin": "mlp", "params": {"hiddenUnits": [8]}},
        "training": {"epochs": len(SCRIPTED), "batchSize": 32, "earlyStopping": early_stopping},
    })
    data = TensorSplit(torch.rand(64, 4), torch.arange(64) % 2)
    trainer = Trainer(spec, build_model(spec.model, (4,), 2, 0.0), "classification", data, data,
                      DistContext(0, 0, 1, torch.device("cpu")),
                      Reporter(None, stream=io.StringIO()), tmp_path / "ckpt")
    scripted = iter(SCRIPTED)
    trainer.evaluate = lambda split, prefix: dict(next(scripted))  # type: ignore[method-assign]

    result = trainer.fit()

    assert result.best_epoch == expected
    assert analyze_overfitting(result.history, spec).best_epoch == expected
