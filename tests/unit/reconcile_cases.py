"""Shared by the reconcile tests: a job, hand-made pod observations, one reconcile step."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from kubetrain.api import parse_training_job
from kubetrain.api.resource import TrainingJob
from kubetrain.api.status import TrainingJobStatus
from kubetrain.controller.builders import OperatorSettings
from kubetrain.controller.observe import Observed, PodView
from kubetrain.controller.reconcile import Decision, reconcile

SETTINGS = OperatorSettings()
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
UID = "9d1f0e2a-aaaa-bbbb-cccc-000000000001"
GANG = ["mnist-train-0", "mnist-train-1"]
GANG_SERVICES = {"mnist-train", "mnist-train-workers"}


def make_job(name: str = "mnist", **spec: Any) -> TrainingJob:
    manifest: dict[str, Any] = {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ml", "uid": UID, "generation": 3},
        "spec": {
            "dataset": {"builtin": "digits"},
            "model": {"builtin": "mlp"},
            "storage": {"pvc": "shared"},
            "training": {"epochs": 20, "resources": {"nodes": 2, "cpu": "2", "memory": "4Gi"}},
        },
    }
    manifest["spec"].update(copy.deepcopy(spec))
    return parse_training_job(manifest)


def pod(name: str, phase: str = "Running", *, unit: str = "train", stage: str = "training",
        rank: int | None = None, started: datetime | None = None,
        finished: datetime | None = None, **extra: Any) -> PodView:
    return PodView(name=name, unit=unit, stage=stage,
                   rank=int(name.rsplit("-", 1)[1]) if rank is None else rank,
                   role="worker", phase=phase, started=started, finished=finished, **extra)


def names(decision: Decision, kind: str | None = None) -> list[str]:
    return [o["metadata"]["name"] for o in decision.create if kind in (None, o["kind"])]


def reasons(decision: Decision) -> list[str]:
    return [reason for _, reason, _ in decision.events]


def condition(status: TrainingJobStatus, type_: str) -> Any:
    return next(c for c in status.conditions if c.type == type_)


def step(job: TrainingJob, observed: Observed, now: datetime = NOW) -> Decision:
    """One reconcile; its status becomes the job's status for the next one."""
    decision = reconcile(job, observed, SETTINGS, now)
    job.status = decision.status
    return decision


def started_gang(job: TrainingJob) -> Observed:
    """Run the first reconcile, and observe what it created as Running."""
    decision = step(job, Observed())
    assert sorted(names(decision, "Pod")) == GANG
    return Observed(pods=[pod(n, started=NOW) for n in GANG], services=set(GANG_SERVICES),
                    config_maps={"mnist-job"})


TRAIN_RESULT = {
    "epochs_run": 14, "best_epoch": 11, "stopped_early": True, "stop_reason": "early_stopping",
    "final_metrics": {"train_loss": 0.05, "val_loss": 0.21, "val_accuracy": 0.95},
    "best_metrics": {"val_loss": 0.19, "val_accuracy": 0.962},
    "test_metrics": {"test_accuracy": 0.958, "test_loss": 0.2},
    "checkpoint": "/data/shared/kubetrain/ml/mnist/checkpoints/best.pt",
    "samples_per_second": 1234.5,
    "history": [{"epoch": 1, "val_loss": 1.0}],
    "epoch_seconds": [1.0, 2.0],
}


def succeeded_gang(result: dict[str, Any], seconds: float = 600.0) -> list[PodView]:
    start = NOW - timedelta(seconds=seconds)
    return [pod(n, "Succeeded", started=start, finished=NOW, exit_code=0,
                message=json.dumps(result) if n.endswith("-0") else None) for n in GANG]
