"""The training work unit as a pod runs it: a process, JSON lines on stdout, a result file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubetrain.report import MAX_RESULT_BYTES, parse_event
from support import base_manifest


def _start_unit(job: Path, storage: Path, *extra: str, nproc: int = 1,
                env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    module = ["-m", "kubetrain.workloads.train", "--job", str(job), "--storage", str(storage),
              *extra]
    command = [sys.executable, *module] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", *module]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            start_new_session=True)


def _events(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return [e for e in map(parse_event, out.splitlines()) if e is not None]


def test_unit_reports_progress_and_a_small_result(tmp_path: Path, write_manifest: Any) -> None:
    job = write_manifest(base_manifest())
    events = _events(_start_unit(job, tmp_path / "storage"))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "result"
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert all({"train_loss", "val_loss", "val_accuracy", "lr"} <= e.keys() for e in epochs)
    result_file = tmp_path / "storage" / "train" / "result.json"
    assert len(result_file.read_bytes()) <= MAX_RESULT_BYTES
    result = json.loads(result_file.read_text())
    assert result["status"] == "succeeded"
    assert result["test_metrics"]["test_accuracy"] > 0.85
    assert Path(result["model"]).exists()
    history = json.loads(Path(result["history"]).read_text())
    assert len(history) == 4


def test_killed_unit_resumes_from_the_last_checkpoint(tmp_path: Path,
                                                      write_manifest: Any) -> None:
    job = write_manifest(base_manifest(training={
        "epochs": 12, "batchSize": 32, "learningRate": 0.003, "checkpoint": {"everyEpochs": 1},
    }))
    storage = tmp_path / "storage"
    proc = _start_unit(job, storage)
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:
        event = parse_event(line)
        if event and event["event"] == "checkpoint":
            seen = event["epoch"]
            if seen >= 3:
                break
    # SIGKILL: no chance to clean up, as when a node dies or the OOM killer strikes.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert seen >= 3
    assert not (storage / "train" / "result.json").exists()

    events = _events(_start_unit(job, storage))
    resumed = [e for e in events if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["epoch"] >= seen
    epochs = [e["epoch"] for e in events if e["event"] == "epoch"]
    assert epochs[0] == resumed[0]["epoch"] + 1 and epochs[-1] == 12
    result = json.loads((storage / "train" / "result.json").read_text())
    assert result["resumed_from_epoch"] == resumed[0]["epoch"]
    assert result["epochs_run"] == 12
    history = json.loads((storage / "train" / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 13))


def test_two_process_ddp_trains_like_one(tmp_path: Path, write_manifest: Any) -> None:
    job = write_manifest(base_manifest(
        model={"builtin": "cnn", "params": {"channels": [16, 32], "hiddenUnits": 64}},
        training={"epochs": 6, "batchSize": 64, "learningRate": 0.003,
                  "resources": {"nprocPerNode": 2}},
    ))
    started = time.time()
    events = _events(_start_unit(job, tmp_path / "storage", nproc=2))
    start = next(e for e in events if e["event"] == "start")
    assert start["world_size"] == 2
    # Only rank 0 reports: one line per epoch, not two.
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3, 4, 5, 6]
    result = next(e for e in events if e["event"] == "result")["summary"]
    assert result["world_size"] == 2
    assert result["test_metrics"]["test_accuracy"] > 0.9
    assert time.time() - started < 300


def test_sigterm_checkpoints_and_exits_nonzero(tmp_path: Path, write_manifest: Any) -> None:
    job = write_manifest(base_manifest(training={"epochs": 500, "batchSize": 32}))
    storage = tmp_path / "storage"
    proc = _start_unit(job, storage)
    assert proc.stdout is not None
    for line in proc.stdout:
        event = parse_event(line)
        if event and event["event"] == "epoch" and event["epoch"] >= 2:
            break
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    result = json.loads((storage / "train" / "result.json").read_text())
    assert result["status"] == "terminated"
    assert result["stop_reason"] == "terminated by signal"
    assert (storage / "train" / "checkpoints" / "latest.pt").exists()


def test_regression_reports_rmse_in_target_units(tmp_path: Path, write_manifest: Any) -> None:
    job = write_manifest(base_manifest(dataset={"builtin": "diabetes"},
                                       training={"epochs": 30, "learningRate": 0.003}))
    events = _events(_start_unit(job, tmp_path / "storage"))
    result = next(e for e in events if e["event"] == "result")["summary"]
    assert result["task"] == "regression"
    # diabetes targets span 25-346 with std ~77; a fitted model is well under that.
    assert 30 < result["test_metrics"]["test_rmse"] < 75


def _user_models(tmp_path: Path, nets: str) -> None:
    """A package ``usermodels`` in tmp_path whose ``nets`` module holds ``nets``."""
    package = tmp_path / "usermodels"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(nets)


def test_user_model_from_entrypoint(tmp_path: Path, write_manifest: Any) -> None:
    _user_models(tmp_path,
        "from torch import nn\n"
        "def build(input_shape, num_outputs, dropout, width=32):\n"
        "    n = 1\n"
        "    for d in input_shape: n *= d\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(n, width), nn.ReLU(),\n"
        "                         nn.Linear(width, num_outputs))\n")
    job = write_manifest(base_manifest(model={"entrypoint": "usermodels.nets:build",
                                              "params": {"width": 48}}))
    proc = subprocess.run(
        [sys.executable, "-m", "kubetrain.workloads.train", "--job", str(job),
         "--storage", str(tmp_path / "s")], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    start = next(e for e in map(parse_event, proc.stdout.splitlines())
                 if e and e["event"] == "start")
    assert start["parameters"] == 64 * 48 + 48 + 48 * 10 + 10


def test_a_spec_the_data_refuses_ends_with_its_problems_and_exit_code_2(
        tmp_path: Path, write_manifest: Any) -> None:
    # What the operator cannot check (it has no data): the unit names the field, so the job
    # becomes Invalid on Kubernetes as `kubetrain run` refuses it here.
    job = write_manifest(base_manifest(dataset={"builtin": "breast_cancer"},
                                       model={"builtin": "cnn"}))
    proc = _start_unit(job, tmp_path / "s", "--result", str(tmp_path / "result.json"))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "failed"
    assert len(result["problems"]) == 1
    assert result["problems"][0].startswith("spec.model.builtin: cnn needs image data")


def test_ddp_over_two_processes_gives_the_losses_of_one_process(
        tmp_path: Path, write_manifest: Any) -> None:
    """The gloo path of the trainer's DDP (as NCCL on GPUs, one process per device): the same
    global batch gives the same per-epoch losses as one process. The training rows do not split
    evenly (a padded rank, an odd last batch) and the model has no BatchNorm (on the CPU torch
    cannot synchronize its statistics; on GPUs the trainer uses SyncBatchNorm)."""
    _user_models(tmp_path,
        "from torch import nn\n"
        "def build(input_shape, num_outputs, dropout):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(),\n"
        "                         nn.Linear(48, num_outputs))\n")
    job = write_manifest(base_manifest(
        model={"entrypoint": "usermodels.nets:build"},
        training={"epochs": 3, "batchSize": 64, "learningRate": 0.003,
                  "weightDecay": 0.01, "resources": {"nprocPerNode": 2}}))
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    histories = {}
    for nproc in (1, 2):
        storage = tmp_path / f"storage-{nproc}"
        events = _events(_start_unit(job, storage, nproc=nproc, env=env))
        start = next(e for e in events if e["event"] == "start")
        assert start["world_size"] == nproc
        assert start["train"] % 2 == 1 and start["train"] % 64 % 2 == 1  # uneven on purpose
        histories[nproc] = json.loads((storage / "train" / "history.json").read_text())
    assert len(histories[1]) == len(histories[2]) == 3
    for one, two in zip(histories[1], histories[2], strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), (one, two)


def test_compiled_training_matches_eager_and_reports_its_compile_time(
        tmp_path: Path, write_manifest: Any) -> None:
    """training.compile: default on the CPU (torch.compile's inductor needs a C compiler):
    the same losses as eager training, and the acceleration used in the result. One batch
    shape (1257 training rows = 3 x 419) keeps it to one compilation."""
    results = {}
    for mode in ("none", "default"):
        job = write_manifest(base_manifest(
            training={"epochs": 2, "batchSize": 419, "learningRate": 0.003, "compile": mode}))
        storage = tmp_path / mode
        events = _events(_start_unit(job, storage))
        assert next(e for e in events if e["event"] == "start")["train"] == 3 * 419
        results[mode] = json.loads((storage / "train" / "result.json").read_text())
    eager, compiled = results["none"], results["default"]
    assert eager["acceleration"] == {
        "device": "cpu", "precision": "fp32", "channels_last": False, "fused_optimizer": False,
        "compile": "none", "data_on_device": True, "sync_batchnorm": False}
    assert compiled["acceleration"]["compile"] == "default"
    assert compiled["acceleration"]["compile_seconds"] > 0
    for key in ("train_loss", "val_loss"):
        assert compiled["final_metrics"][key] == pytest.approx(eager["final_metrics"][key],
                                                               rel=1e-3)
