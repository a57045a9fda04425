"""The Trainer applies workloads.acceleration's decisions (CPU side; the CUDA side is the same
calls with the other answers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kubetrain.api.spec import TrainingJobSpec
from kubetrain.report import Reporter
from kubetrain.workloads.acceleration import AccelerationError
from kubetrain.workloads.batches import TensorSplit
from kubetrain.workloads.distributed import DistContext
from kubetrain.workloads.trainer import Trainer
from torch import nn


def _trainer(tmp_path: Path, world_size: int = 1, **training: object) -> Trainer:
    spec = TrainingJobSpec.model_validate({
        "dataset": {"builtin": "digits"}, "model": {"builtin": "mlp"},
        "training": {"batchSize": 64, **training}})
    split = TensorSplit(torch.zeros(10, 4), torch.zeros(10, dtype=torch.long))
    ctx = DistContext(rank=0, local_rank=0, world_size=world_size, device=torch.device("cpu"))
    return Trainer(spec, nn.Linear(4, 2), "classification", split, split, ctx,
                   Reporter(None, enabled=False), tmp_path)


def test_on_the_cpu_the_trainer_keeps_plain_fp32_eager(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    assert trainer.accel.precision == "fp32" and trainer.amp_dtype is None
    assert not trainer.optimizer.defaults.get("fused")
    assert trainer.compiled is None and trainer.forward is trainer.ddp


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_compile_wraps_the_training_forward_only(tmp_path: Path, optimizer: str) -> None:
    trainer = _trainer(tmp_path, compile="default", optimizer=optimizer)
    assert trainer.compiled is not None and trainer.forward is trainer.compiled
    assert trainer.compiled.module is trainer.ddp  # evaluation and checkpoints: the plain model


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AccelerationError,
                       match=r"spec\.training\.batchSize: 64 does not split evenly over the 3"):
        _trainer(tmp_path, world_size=3)
