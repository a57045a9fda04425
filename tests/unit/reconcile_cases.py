"""Shared by the reconcile tests: a job, and a fake cluster that carries decisions out.

``Cluster`` holds a job's children the way the API server does (pods as API dicts, read back
through ``observe.pod_view`` like the handler reads them). ``Cluster.reconcile`` runs one
reconcile on what it holds and applies the decision as the handler does: created objects
appear (pods Pending, labelled with their attempt), deleted pods get a deletion timestamp and
are gone after ``settle``, and the decision's status becomes the job's status. The test moves
pods on in between (``run``, ``succeed``, ``fail``, ``vanish``, ``tick``).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from kubetrain.api import parse_training_job
from kubetrain.api.resource import TrainingJob
from kubetrain.api.status import TrainingJobStatus, UnitStatus
from kubetrain.controller import builders as b
from kubetrain.controller.builders import WorkerSettings
from kubetrain.controller.observe import Observed, pod_view
from kubetrain.controller.reconcile import Decision, reconcile

SETTINGS = WorkerSettings()
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
UID = "9d1f0e2a-aaaa-bbbb-cccc-000000000001"
GANG = ["mnist-train-0", "mnist-train-1"]
GANG_SERVICES = ["mnist-train-workers", "mnist-train"]
STORAGE = "/data/shared/kubetrain/ml/mnist"
PRICES = {"cpuHour": 0.1, "memoryGiBHour": 0.01, "gpuHour": 2.0, "currency": "EUR"}


def make_job(name: str = "mnist", **spec: Any) -> TrainingJob:
    """A job whose training is a gang of two single-process nodes (2 CPU, 4 GiB each)."""
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


def sweep(**tuning: Any) -> dict[str, Any]:
    """A tuning section: a random sweep over the learning rate."""
    return {"enabled": True, "sampler": "random", "trials": 3, "parallelism": 2,
            "searchSpace": {"learningRate": {"type": "float", "low": 1e-4, "high": 1e-1,
                                             "log": True}}, **tuning}


def train_result(**extra: Any) -> dict[str, Any]:
    """What the train unit writes to its termination message."""
    return {
        "unit": "train", "status": "succeeded", "task": "classification",
        "epochs": 20, "epochs_run": 14, "best_epoch": 11, "stopped_early": True,
        "stop_reason": "early_stopping",
        "final_metrics": {"train_loss": 0.05, "val_loss": 0.21, "val_accuracy": 0.95},
        "best_metrics": {"val_loss": 0.19, "val_accuracy": 0.962},
        "test_metrics": {"test_accuracy": 0.958, "test_loss": 0.2},
        "checkpoint": f"{STORAGE}/train/checkpoints/best.pt",
        "model": f"{STORAGE}/train/model.pt", "history": f"{STORAGE}/train/history.json",
        "samples_per_second": 1234.5, "epoch_seconds": [1.0, 2.0], **extra,
    }


def trial_result(index: int, state: str = "complete", value: float | None = None,
                 **extra: Any) -> dict[str, Any]:
    """What a trial unit writes: the study's trial number, its state, value and params."""
    return {"unit": f"trial-{index}", "status": "succeeded", "trial": index, "state": state,
            "value": (0.1 * (index + 1) if value is None else value)
            if state == "complete" else None,
            "params": {"learningRate": 0.01 * (index + 1)}, "epochs_run": 3, **extra}


def summary_result(**extra: Any) -> dict[str, Any]:
    return {"unit": "tune-summary", "status": "succeeded", "study": "mnist",
            "trials": {"total": 3, "complete": 1, "pruned": 1, "failed": 1},
            "best": {"trial": 0, "params": {"learningRate": 0.01}, "value": 0.1},
            "epochs_run": 7, **extra}


# ----- reading decisions -------------------------------------------------------------------


def names(decision: Decision, kind: str | None = None) -> list[str]:
    """Names of the objects a decision creates, in order (of one kind, if given)."""
    return [o["metadata"]["name"] for o in decision.create if kind in (None, o["kind"])]


def deleted(decision: Decision) -> list[str]:
    """Names of the pods a decision deletes, sorted."""
    return sorted(name for kind, name, _ in decision.delete if kind == "Pod")


def created(decision: Decision, name: str) -> dict[str, Any]:
    return next(o for o in decision.create if o["metadata"]["name"] == name)


def command(obj: dict[str, Any]) -> list[str]:
    (container,) = obj["spec"]["containers"]
    return list(container["command"])


def arg(obj: dict[str, Any], flag: str) -> str:
    """The value after ``flag`` in a pod's command."""
    cmd = command(obj)
    return cmd[cmd.index(flag) + 1]


def reasons(decision: Decision) -> list[str]:
    return [event.reason for event in decision.events]


def condition(status: TrainingJobStatus, type_: str) -> Any:
    return next(c for c in status.conditions if c.type == type_)


def unit_status(job: TrainingJob, name: str) -> UnitStatus:
    assert job.status is not None
    for stage in job.status.stages.values():
        if name in stage.units:
            return stage.units[name]
    raise KeyError(name)


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


# ----- the fake cluster --------------------------------------------------------------------


class Cluster:
    """One job's children as the API server holds them, moved on by the test."""

    def __init__(self, job: TrainingJob, now: datetime = NOW,
                 settings: WorkerSettings = SETTINGS) -> None:
        self.job = job
        self.now = now
        self.settings = settings
        self.pods: dict[str, dict[str, Any]] = {}
        self.services: set[str] = set()
        self.config_maps: set[str] = set()
        self.progress: dict[str, dict[str, Any]] = {}
        self.deletions: list[tuple[str, int]] = []
        """(pod, grace seconds) of every deletion asked for, in order."""

    # what the handler does

    def observed(self) -> Observed:
        return Observed(pods=[pod_view(p) for p in self.pods.values()],
                        services=set(self.services), config_maps=set(self.config_maps),
                        progress=dict(self.progress))

    def reconcile(self, *, status_written: bool = True) -> Decision:
        """One reconcile, carried out; ``status_written=False``: its status patch was lost."""
        decision = reconcile(self.job, self.observed(), self.settings, self.now)
        for obj in decision.create:
            name = obj["metadata"]["name"]
            kind = obj["kind"]
            held = {"Pod": self.pods, "Service": self.services,
                    "ConfigMap": self.config_maps}[kind]
            # The handler would get 409 Conflict: the reconcile must never ask.
            assert name not in held, f"{kind} {name} created while it exists"
            if kind == "Pod":
                pod = copy.deepcopy(obj)
                pod["metadata"]["creationTimestamp"] = _stamp(self.now)
                pod["status"] = {"phase": "Pending"}
                self.pods[name] = pod
            elif kind == "Service":
                self.services.add(name)
            else:
                self.config_maps.add(name)
        for kind, name, grace in decision.delete:
            assert kind == "Pod", kind
            self.deletions.append((name, grace))
            if name in self.pods:
                self.pods[name]["metadata"]["deletionTimestamp"] = _stamp(self.now)
        if status_written:
            self.job.status = decision.status
        return decision

    # what happens to pods meanwhile

    def tick(self, seconds: float = 10.0) -> None:
        self.now += timedelta(seconds=seconds)

    def settle(self) -> None:
        """Pods being deleted are gone."""
        self.pods = {n: p for n, p in self.pods.items()
                     if "deletionTimestamp" not in p["metadata"]}

    def pod_names(self, unit: str | None = None) -> list[str]:
        return sorted(n for n, p in self.pods.items()
                      if unit in (None, p["metadata"]["labels"][b.LABEL_UNIT]))

    def attempt(self, name: str) -> int:
        return int(self.pods[name]["metadata"]["labels"][b.LABEL_ATTEMPT])

    def run(self, *names: str) -> None:
        """The pods (default: every Pending one) are scheduled and running from now."""
        for name in names or [n for n, p in self.pods.items()
                              if p["status"]["phase"] == "Pending"]:
            self.pods[name]["status"] = {
                "phase": "Running", "startTime": _stamp(self.now),
                "containerStatuses": [{"state": {"running": {"startedAt": _stamp(self.now)}}}]}

    def _terminate(self, name: str, phase: str, exit_code: int, reason: str,
                   message: str | None) -> None:
        pod = self.pods[name]
        started = pod["status"].get("startTime", _stamp(self.now))
        terminated: dict[str, Any] = {"exitCode": exit_code, "reason": reason,
                                      "startedAt": started, "finishedAt": _stamp(self.now)}
        if message is not None:
            terminated["message"] = message
        pod["status"] = {"phase": phase, "startTime": started,
                         "containerStatuses": [{"state": {"terminated": terminated}}]}

    def succeed(self, name: str, result: dict[str, Any] | None = None) -> None:
        """The pod exited 0; ``result`` is its termination message (JSON)."""
        self._terminate(name, "Succeeded", 0, "Completed",
                        json.dumps(result) if result is not None else None)

    def succeed_unit(self, unit: str, result: dict[str, Any] | None = None) -> None:
        """Every pod of a unit exited 0; rank 0 wrote the result."""
        for name in self.pod_names(unit):
            rank = self.pods[name]["metadata"]["labels"][b.LABEL_RANK]
            self.succeed(name, result if rank == "0" else None)

    def fail(self, name: str, exit_code: int = 1, reason: str = "Error",
             message: str | None = None) -> None:
        self._terminate(name, "Failed", exit_code, reason, message)

    def vanish(self, *names: str) -> None:
        """Pods deleted from outside (kubectl delete, a node drained) and already gone."""
        for name in names:
            del self.pods[name]


def running_gang(**spec: Any) -> Cluster:
    """A job (make_job) whose first reconcile created the training gang, now running."""
    cluster = Cluster(make_job(**spec))
    cluster.reconcile()
    cluster.run()
    cluster.tick()
    return cluster
