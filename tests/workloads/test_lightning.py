"""The Lightning callback, with the real library, in a program kubetrain runs (custom script
mode): its epochs and test metrics reach kubetrain, and a stop request ends the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("pytorch_lightning")

PROGRAM = '''
import os
import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from kubetrain.integrations.lightning import KubetrainCallback

def data(split):
    d = np.load(os.path.join(os.environ["KUBETRAIN_DATA_DIR"], split + ".npz"))
    return TensorDataset(torch.from_numpy(d["X"]).float(), torch.from_numpy(d["y"]).long())

class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))
    def step(self, batch, name):
        x, y = batch
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log(f"{name}_loss", loss, on_epoch=True, on_step=False)
        self.log(f"{name}_accuracy", (logits.argmax(1) == y).float().mean(), on_epoch=True,
                 on_step=False)
        return loss
    def training_step(self, batch, i): return self.step(batch, "train")
    def validation_step(self, batch, i): self.step(batch, "val")
    def test_step(self, batch, i): self.step(batch, "test")
    def configure_optimizers(self): return torch.optim.Adam(self.parameters(), lr=0.01)

pl.seed_everything(0)
trainer = pl.Trainer(max_epochs=int(os.environ["KUBETRAIN_EPOCHS"]), logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     callbacks=[KubetrainCallback()])
model = Model()
trainer.fit(model, DataLoader(data("train"), batch_size=16, shuffle=True),
            DataLoader(data("val"), batch_size=64))
trainer.test(model, DataLoader(data("test"), batch_size=64), verbose=False)
'''


def _job(tmp_path: Path) -> Path:
    (tmp_path / "prog.py").write_text(PROGRAM)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "lightning"},
        "spec": {"dataset": {"builtin": "iris"},
                 "training": {"command": ["python", "prog.py"], "epochs": 6}}}))
    return job


def test_lightning_epochs_and_test_metrics_reach_kubetrain(tmp_path: Path) -> None:
    job, storage = _job(tmp_path), tmp_path / "storage"
    proc = subprocess.run(
        [sys.executable, "-m", "kubetrain.workloads.script", "--job", str(job), "--storage",
         str(storage), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    result = json.loads((storage / "train" / "result.json").read_text())
    assert proc.returncode == 0, result
    assert result["status"] == "succeeded" and result["epochs_run"] == 6
    history = json.loads(Path(str(result["history"])).read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert {"train_loss", "val_loss", "val_accuracy"} <= history[0].keys()
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert set(result["test_metrics"]) == {"test_loss", "test_accuracy"}
    assert "overfitting" in result


def test_a_pruned_lightning_trial_stops_in_the_epoch_of_the_decision(tmp_path: Path) -> None:
    # As a trial runs it: the runner in-process with a pruner's callback that says "stop"
    # after epoch 2; Lightning gets SIGTERM and the stop file and ends the run.
    job = _job(tmp_path)
    check = f"""
import argparse, json, pathlib
from kubetrain.workloads import script
args = argparse.Namespace(job=pathlib.Path({str(job)!r}),
    storage=pathlib.Path({str(tmp_path)!r}) / "s",
    unit="tuning/trial-0", fold=None, params=None, epochs=None, result=None,
    base_dir=pathlib.Path.cwd(), data_root=None, workdir=pathlib.Path({str(tmp_path)!r}))
summary = script.run(args, on_epoch=lambda metrics: metrics["epoch"] >= 2)
print("SUMMARY " + json.dumps(summary))
"""
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=300)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("SUMMARY "))
    summary = json.loads(line[len("SUMMARY "):])
    assert summary["stop_reason"] == "pruned" and summary["status"] == "succeeded"
    assert summary["epochs_run"] == 2, summary
