"""The report unit (``python -m kubetrain.workloads.finish``) as a pod or the local executor runs
it: the job's final status in, report.md, the loss curve and status.yaml out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from kubetrain.report import parse_event
from support import base_manifest

HISTORY = [
    {"epoch": 1, "train_loss": 1.2, "val_loss": 1.0, "val_accuracy": 0.7, "seconds": 0.5},
    {"epoch": 2, "train_loss": 0.6, "val_loss": 0.55, "val_accuracy": 0.85, "seconds": 0.5},
    # A diverged epoch: the reporting protocol writes NaN as text.
    {"epoch": 3, "train_loss": 0.3, "val_loss": "nan", "val_accuracy": 0.8, "seconds": 0.5},
]

TRIALS = [
    {"number": 0, "state": "complete", "params": {"learningRate": 0.01}, "value": 0.91,
     "epochs": 2, "seconds": 1.5},
    {"number": 1, "state": "pruned", "params": {"learningRate": 1e-05}, "value": None,
     "epochs": 1, "seconds": 0.7},
]


def succeeded_status(storage: Path) -> dict[str, Any]:
    """A final status as the engine hands it over (camelCase, as the resource carries it)."""
    return {
        "phase": "Succeeded",
        "startTime": "2026-01-01T00:00:00Z",
        "completionTime": "2026-01-01T00:01:00Z",
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "AllStagesSucceeded",
                        "message": "all stages finished",
                        "lastTransitionTime": "2026-01-01T00:01:00Z"}],
        "stages": {"tuning": {"phase": "Succeeded", "jobs": ["study", "trial-0", "trial-1"]},
                   "training": {"phase": "Succeeded", "jobs": ["train"]}},
        "tuning": {"backend": "optuna", "sampler": "tpe", "pruner": "median",
                   "trials": {"total": 2, "complete": 1, "pruned": 1},
                   "best": {"trial": 0, "params": {"learningRate": 0.01}, "value": 0.91},
                   "epochsRun": 3, "epochsSavedByPruning": 1},
        "training": {"epoch": 3, "epochs": 3, "bestEpoch": 2,
                     "bestMetrics": {"val_accuracy": 0.85}},
        "findings": {
            "overfitting": {"verdict": "suspected", "gap": 0.12, "bestEpoch": 2,
                            "rules": ["val_loss_rising"],
                            "evidence": ["val_loss rose after epoch 2"]},
            "cost": {"currency": "USD", "cpuHours": 0.02, "total": 0.0123,
                     "byStage": {"training": {"seconds": 60, "cpuHours": 0.02, "gpuHours": 0,
                                              "memoryGiBHours": 0.03, "cost": 0.0123}}},
        },
        "artifacts": {"model": str(storage / "train" / "model.pt")},
    }


def failed_status() -> dict[str, Any]:
    """A job that failed in augmentation: it never trained."""
    message = "augment-0 exited with code 1: ValueError: no images"
    return {
        "phase": "Failed",
        "conditions": [{"type": "Failed", "status": "True", "reason": "WorkUnitFailed",
                        "message": message, "lastTransitionTime": "2026-01-01T00:00:10Z"}],
        "stages": {"augmentation": {"phase": "Failed", "jobs": ["augment-0"],
                                    "message": message},
                   "training": {"phase": "Pending"}},
        "findings": {"cost": {"currency": "USD", "total": 0.0001}},
    }


def run_finish(tmp_path: Path, storage: Path, status: dict[str, Any]) -> tuple[
        subprocess.CompletedProcess[str], dict[str, Any]]:
    """The unit with a pod's environment: HOME and matplotlib's config in /tmp."""
    job = storage / "job.yaml"
    job.write_text(yaml.safe_dump(base_manifest(), sort_keys=False))
    home = tmp_path / "home"
    env = {**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(home / "matplotlib")}
    result_file = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "kubetrain.workloads.finish", "--job", str(job),
         "--storage", str(storage), "--status", json.dumps(status),
         "--result", str(result_file)],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(result_file.read_text())
    # The same result goes to stdout as the protocol's `result` event.
    events = [e for e in map(parse_event, proc.stdout.splitlines()) if e]
    assert events[-1]["event"] == "result" and events[-1]["summary"] == result
    return proc, result


def test_report_curve_and_status_of_a_trained_job(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    (storage / "train").mkdir(parents=True)
    (storage / "train" / "history.json").write_text(json.dumps(HISTORY))
    (storage / "tuning").mkdir()
    (storage / "tuning" / "trials.json").write_text(json.dumps(TRIALS))
    status = succeeded_status(storage)

    _, result = run_finish(tmp_path, storage, status)

    assert result["unit"] == "report" and result["status"] == "succeeded"
    assert result["report"] == str(storage / "report.md")
    assert result["loss_curve"] == str(storage / "loss-curve.png")
    assert result["seconds"] >= 0
    assert (storage / "loss-curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (storage / "report.md").read_text()
    assert "**Phase:** Succeeded" in report
    assert "**Verdict: suspected**" in report and "val_loss rose after epoch 2" in report
    assert "Total: 0.012300 USD" in report
    assert "**Best trial 0:** 0.91" in report
    assert "| 1 | pruned | None | 1 | None | 1e-05 |" in report, "the trials table is missing"
    assert "| 3 | 0.3 | nan | 0.8 |" in report, "the epochs table is missing"
    written = yaml.safe_load((storage / "status.yaml").read_text())
    assert written["kind"] == "TrainingJob" and written["metadata"]["name"] == "test-job"
    assert written["spec"]["training"]["epochs"] == 4
    assert written["status"]["phase"] == "Succeeded"
    assert written["status"]["findings"]["overfitting"]["verdict"] == "suspected"
    assert written["status"]["artifacts"] == {
        "model": str(storage / "train" / "model.pt"),
        "history": str(storage / "train" / "history.json"),
        "lossCurve": str(storage / "loss-curve.png"),
        "report": str(storage / "report.md"),
        "status": str(storage / "status.yaml"),
    }


def test_a_job_that_never_trained_still_gets_its_report(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()

    _, result = run_finish(tmp_path, storage, failed_status())

    assert result["status"] == "succeeded"
    assert result["loss_curve"] is None
    assert not (storage / "loss-curve.png").exists()
    report = (storage / "report.md").read_text()
    assert "**Phase:** Failed" in report
    assert "**Failed** (WorkUnitFailed): augment-0 exited with code 1" in report
    assert "## Training" not in report and "## Epochs" not in report
    written = yaml.safe_load((storage / "status.yaml").read_text())["status"]
    assert written["phase"] == "Failed"
    assert "lossCurve" not in written["artifacts"]


def test_an_unreadable_status_fails_the_unit_with_a_message(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    job = storage / "job.yaml"
    job.write_text(yaml.safe_dump(base_manifest(), sort_keys=False))
    result_file = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "kubetrain.workloads.finish", "--job", str(job),
         "--storage", str(storage), "--status", '{"phase": "Sideways"}',
         "--result", str(result_file)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    result = json.loads(result_file.read_text())
    assert result["status"] == "failed" and "phase" in result["message"]
    assert not (storage / "report.md").exists()
