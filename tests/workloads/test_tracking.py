"""Experiment tracking of the work units: TensorBoard event files read back with TensorBoard's
own reader, MLflow runs read back from a real tracking server with MLflow's own client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetrain.report import parse_event
from mlflowserver import MlflowServer
from support import base_manifest, free_port, kubetrain


def _train(job: Path, storage: Path, *extra: str) -> tuple[dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "kubetrain.workloads.train", "--job", str(job), "--storage",
         str(storage), *extra], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [e for e in map(parse_event, proc.stdout.splitlines()) if e is not None]
    return events[-1]["summary"], proc.stderr


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_files_hold_every_epoch(tmp_path: Path, write_manifest: Any) -> None:
    job = write_manifest(base_manifest(tracking={"tensorboard": True}))
    storage = tmp_path / "storage"
    summary, _ = _train(job, storage)
    history = json.loads(Path(summary["history"]).read_text())
    scalars = _scalars(storage / "tensorboard" / "train")
    assert [step for step, _ in scalars["loss/val"]] == [1, 2, 3, 4]
    assert [v for _, v in scalars["loss/train"]] == pytest.approx(
        [h["train_loss"] for h in history], rel=1e-6)
    assert [v for _, v in scalars["accuracy/val"]] == pytest.approx(
        [h["val_accuracy"] for h in history], rel=1e-6)
    assert scalars["final/test_accuracy"][0][1] == pytest.approx(
        summary["test_metrics"]["test_accuracy"])
    assert "tracking_warnings" not in summary


def test_tensorboard_runs_one_per_fold(tmp_path: Path, write_manifest: Any) -> None:
    job = write_manifest(base_manifest(tracking={"tensorboard": True},
                                       training={"epochs": 2, "crossValidation": {"folds": 2}}))
    storage = tmp_path / "storage"
    for fold in (0, 1):
        _train(job, storage, "--unit", f"fold-{fold}", "--fold", str(fold))
    for fold in (0, 1):
        assert len(_scalars(storage / "tensorboard" / f"fold-{fold}")["loss/val"]) == 2


def _runs(client: Any, experiment: str) -> list[Any]:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    return list(client.search_runs([found.experiment_id], max_results=100))


def test_training_unit_logs_its_run_to_mlflow(tmp_path: Path, write_manifest: Any,
                                              mlflow_server: MlflowServer) -> None:
    job = write_manifest(base_manifest(tracking={"mlflow": {
        "uri": mlflow_server.uri(), "experiment": "unit-run"}}))
    summary, _ = _train(job, tmp_path / "storage")
    client: Any = mlflow_server.client()
    [run] = _runs(client, "unit-run")
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "test-job/train"
    assert run.data.params["training.learningRate"] == "0.003"
    assert run.data.params["model.params.hiddenUnits"] == "[64]"
    losses = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in sorted(losses, key=lambda m: m.step)] == [1, 2, 3, 4]
    assert run.data.metrics["test_accuracy"] == pytest.approx(
        summary["test_metrics"]["test_accuracy"])
    assert run.data.metrics["cost"] > 0
    assert run.data.tags["kubetrain.overfitting.verdict"] == summary["overfitting"]["verdict"]
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "history.json", "loss-curve.png", "findings.json"} <= files
    findings = json.loads(Path(client.download_artifacts(
        run.info.run_id, "findings.json", str(tmp_path))).read_text())
    assert findings["overfitting"]["verdict"] == summary["overfitting"]["verdict"]


def test_unreachable_mlflow_server_never_fails_the_training(tmp_path: Path,
                                                            write_manifest: Any) -> None:
    job = write_manifest(base_manifest(tracking={
        "tensorboard": True, "mlflow": {"uri": f"http://127.0.0.1:{free_port()}"}}))
    storage = tmp_path / "storage"
    summary, stderr = _train(job, storage)
    assert summary["status"] == "succeeded"
    assert summary["test_metrics"]["test_accuracy"] > 0.8
    [warning] = summary["tracking_warnings"]
    assert warning.startswith("mlflow: ")
    assert "warning: tracking mlflow" in stderr
    # The other destination still tracks.
    assert len(_scalars(storage / "tensorboard" / "train")["loss/val"]) == 4


def test_a_local_job_logs_a_sweep_with_nested_trials_training_and_shap(
        tmp_path: Path, write_manifest: Any, mlflow_server: MlflowServer) -> None:
    manifest = base_manifest(
        training={"epochs": 2, "batchSize": 64, "learningRate": 0.003},
        tuning={"enabled": True, "sampler": "random", "trials": 2, "parallelism": 2,
                "pruner": "none", "searchSpace": {
                    "learningRate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}},
        explanation={"enabled": True, "samples": 8, "background": 8},
        tracking={"tensorboard": True,
                  "mlflow": {"uri": mlflow_server.uri(), "experiment": "local-sweep"}})
    storage, out = tmp_path / "s", tmp_path / "out.yaml"
    proc = kubetrain("run", str(write_manifest(manifest)), "--storage", str(storage),
                     "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = yaml.safe_load(out.read_text())["status"]
    assert "TrackingDegraded" not in {c["type"] for c in status["conditions"]}
    client: Any = mlflow_server.client()
    runs = {r.info.run_name: r for r in _runs(client, "local-sweep")}
    assert set(runs) == {"test-job/sweep", "test-job/trial-0", "test-job/trial-1",
                         "test-job/train", "test-job/explain"}
    sweep = runs["test-job/sweep"]
    for trial in ("test-job/trial-0", "test-job/trial-1"):
        assert runs[trial].data.tags["mlflow.parentRunId"] == sweep.info.run_id
        assert runs[trial].data.params["param.learningRate"]
        assert len(client.get_metric_history(runs[trial].info.run_id, "val_loss")) == 2
    best = status["tuning"]["best"]
    assert sweep.data.tags["kubetrain.best.trial"] == str(best["trial"])
    assert sweep.data.metrics["best_val_loss"] == pytest.approx(best["value"])
    assert sweep.data.metrics["trials_complete"] == 2
    assert all(r.info.status == "FINISHED" for r in runs.values())
    shap = {a.path for a in client.list_artifacts(runs["test-job/explain"].info.run_id)}
    assert any(p.endswith(".png") for p in shap) and "findings.json" in shap
    # TensorBoard: a run per unit, the trials under tuning/.
    for unit in ("train", "tuning/trial-0", "tuning/trial-1"):
        assert len(_scalars(storage / "tensorboard" / unit)["loss/val"]) == 2


def test_a_local_job_with_an_unreachable_server_succeeds_with_a_warning_condition(
        tmp_path: Path, write_manifest: Any) -> None:
    manifest = base_manifest(training={"epochs": 2, "batchSize": 64, "learningRate": 0.003},
                             tracking={"mlflow": {"uri": f"http://127.0.0.1:{free_port()}"}})
    out = tmp_path / "out.yaml"
    proc = kubetrain("run", str(write_manifest(manifest)), "--storage", str(tmp_path / "s"),
                     "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = yaml.safe_load(out.read_text())["status"]
    assert status["phase"] == "Succeeded"
    degraded = next(c for c in status["conditions"] if c["type"] == "TrackingDegraded")
    assert degraded["reason"] == "TrackingUnavailable"
    assert degraded["message"].startswith("train: mlflow: ")
    assert "mlflow" in proc.stdout + proc.stderr  # the warning is shown as it happens
