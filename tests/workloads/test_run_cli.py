"""`kubetrain run`: refusals, Ctrl-C, budgets, stop-on-overfitting, stages not available yet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from support import base_manifest, ctrl_c_reaches_it, kubetrain


def test_bad_manifest_is_refused_before_anything_starts(tmp_path: Path,
                                                        write_manifest: Any) -> None:
    manifest = base_manifest()
    manifest["spec"]["training"]["learningRate"] = -1
    manifest["spec"]["training"]["optimiser"] = "adam"
    storage = tmp_path / "storage"
    proc = kubetrain("run", str(write_manifest(manifest)), "--storage", str(storage))
    assert proc.returncode == 2
    assert "spec.training.learningRate" in proc.stderr
    assert "spec.training.optimiser: unknown field" in proc.stderr
    assert not storage.exists()
    assert proc.stdout == ""


def test_data_dependent_error_is_refused_before_anything_starts(
        tmp_path: Path, write_manifest: Any) -> None:
    manifest = base_manifest(dataset={"builtin": "breast_cancer"}, model={"builtin": "cnn"})
    storage = tmp_path / "storage"
    proc = kubetrain("run", str(write_manifest(manifest)), "--storage", str(storage))
    assert proc.returncode == 2
    assert "spec.model.builtin: cnn needs image data" in proc.stderr
    assert not storage.exists()


def test_missing_file_and_validate(tmp_path: Path, write_manifest: Any) -> None:
    proc = kubetrain("run", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "cannot read the file" in proc.stderr
    proc = kubetrain("validate", str(write_manifest(base_manifest())))
    assert proc.returncode == 0 and "valid" in proc.stdout


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def test_ctrl_c_stops_cleanly_with_no_orphans(tmp_path: Path, write_manifest: Any) -> None:
    manifest = base_manifest(training={"epochs": 400, "batchSize": 16,
                                       "resources": {"nprocPerNode": 2}})
    storage = tmp_path / "storage"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetrain.cli", "run", str(write_manifest(manifest)),
         "--storage", str(storage), "--no-progress", "-o", str(tmp_path / "out.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_reaches_it)
    assert proc.stderr is not None
    descendants: set[int] = set()
    for line in proc.stderr:
        if "epoch 2/" in line:
            break
    # The torchrun launcher and its two workers, below the unit's own process.
    for child in _children(proc.pid):
        descendants |= {child, *_children(child)}
        for grandchild in _children(child):
            descendants |= set(_children(grandchild))
    assert len(descendants) >= 3
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal delivers
    proc.communicate(timeout=150)  # the whole test takes 20 s alone; 60 s ran out under load
    assert proc.returncode == 130
    time.sleep(0.5)
    alive = [p for p in descendants if Path(f"/proc/{p}").exists()
             and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()]
    assert alive == []
    status = yaml.safe_load((storage / "status.yaml").read_text())["status"]
    assert status["phase"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "Interrupted"
    assert (storage / "train" / "checkpoints" / "latest.pt").exists()


def test_budget_stops_training_and_sets_budget_exceeded(tmp_path: Path,
                                                        write_manifest: Any) -> None:
    # A price of 300 per CPU-hour makes each second cost ~0.08: the budget of 1 is spent
    # about 12 s into the run (the process's start counts too), long before 2,000 epochs end
    # (a fast machine ran 300 of them in less).
    manifest = base_manifest(
        training={"epochs": 2000, "batchSize": 16},
        findings={"cost": {"prices": {"cpuHour": 300}, "budget": {"maxCost": 1}}},
    )
    out = tmp_path / "out.yaml"
    proc = kubetrain("run", str(write_manifest(manifest)), "--storage", str(tmp_path / "s"),
                     "-o", str(out))
    assert proc.returncode == 1, proc.stderr[-2000:]
    status = yaml.safe_load(out.read_text())["status"]
    assert status["phase"] == "Failed"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["BudgetExceeded"]["status"] == "True"
    assert conditions["Failed"]["reason"] == "BudgetExceeded"
    budget = status["findings"]["cost"]["budget"]
    assert budget["exceeded"] is True and budget["spent"] >= 1
    # Stopped long before 2,000 epochs, and what it trained is still reported.
    assert 0 < status["training"]["epoch"] < 2000


def test_overfitting_action_stop_ends_training_and_keeps_the_best(
        tmp_path: Path, write_manifest: Any) -> None:
    manifest = base_manifest(
        dataset={"builtin": "digits", "fraction": 0.1, "seed": 1},
        model={"builtin": "mlp", "params": {"hiddenUnits": [512, 512]}},
        training={"epochs": 80, "batchSize": 32, "schedule": "constant"},
        findings={"overfitting": {"action": "stop", "warmupEpochs": 5}},
    )
    out = tmp_path / "out.yaml"
    proc = kubetrain("run", str(write_manifest(manifest)), "--storage", str(tmp_path / "s"),
                     "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = yaml.safe_load(out.read_text())["status"]
    training = status["training"]
    assert training["stoppedEarly"] is True
    assert training["stopReason"].startswith("overfitting detected")
    assert training["epoch"] < 80
    assert status["findings"]["overfitting"]["verdict"] == "overfitting"


def test_a_command_beside_a_model_is_refused_by_validate_and_run_alike(
        tmp_path: Path, write_manifest: Any) -> None:
    manifest = write_manifest(base_manifest(training={"epochs": 2,
                                                      "command": ["python", "train.py"]}))
    storage = tmp_path / "s"
    for command in (("validate", str(manifest)), ("run", str(manifest), "--storage",
                                                   str(storage))):
        proc = kubetrain(*command)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "spec.model: remove it: with training.command your program builds" in proc.stderr
    assert not storage.exists()


def test_output_to_stdout_is_the_resource_with_status(tmp_path: Path,
                                                      write_manifest: Any) -> None:
    manifest = base_manifest(training={"epochs": 2})
    proc = kubetrain("run", str(write_manifest(manifest)), "--storage", str(tmp_path / "s"),
                     env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    job = yaml.safe_load(proc.stdout)
    assert job["kind"] == "TrainingJob" and job["metadata"]["name"] == "test-job"
    assert job["status"]["phase"] == "Succeeded"
    assert job["status"]["training"]["epoch"] == 2


def test_a_unit_requesting_far_more_than_it_uses_gets_right_sizing_findings(
        tmp_path: Path, write_manifest: Any) -> None:
    # 8 GiB for a digits MLP that peaks under 1 GiB; 8 cores on a 2-core machine (the trainer
    # takes 8 threads, but there are 2 cores to run them).
    manifest = base_manifest(training={"epochs": 30, "batchSize": 32, "learningRate": 0.003,
                                       "resources": {"cpu": "8", "memory": "8Gi"}})
    out = tmp_path / "out.yaml"
    proc = kubetrain("run", str(write_manifest(manifest)), "--storage", str(tmp_path / "s"),
                     "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = yaml.safe_load(out.read_text())["status"]
    utilization = status["findings"]["utilization"]
    assert utilization["measuredUnits"] >= 1
    assert utilization["memoryUsedShare"] < 0.15 and utilization["cpuUsedShare"] <= 0.3
    issues = {i["kind"]: i for i in utilization["issues"]}
    memory = issues["memoryOverRequested"]
    assert memory["field"] == "training.resources.memory" and memory["current"] == "8Gi"
    assert memory["saving"] > 0 and memory["units"] == ["train"]
    assert issues["cpuOverRequested"]["saving"] > 0
    # the unit's own measurement, and its series in the job's storage
    usage = status["stages"]["training"]["units"]["train"]["result"]["usage"]
    assert usage["samples"] >= 4 and usage["cpu_p95"] > 0.3
    assert (tmp_path / "s" / "train" / "usage.jsonl").exists()
