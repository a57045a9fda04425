"""Tracking from pods: the trials, the training and the sweep log to an MLflow server started by
the test on this machine (reached at the node's address), with credentials from a Secret; and a
server no pod can reach leaves the job Succeeded with a TrackingDegraded condition and event."""

from __future__ import annotations

import json
from typing import Any

import pytest
from k8s import HOST_STORAGE, apply_job, get_json, kubectl, wait_for_events, wait_phase
from mlflowserver import MlflowServer
from support import base_manifest, free_port

pytestmark = pytest.mark.cluster


def _node_address() -> str:
    node = get_json("nodes")["items"][0]
    return str(next(a["address"] for a in node["status"]["addresses"]
                    if a["type"] == "InternalIP"))


def _sweep(name: str, uri: str, **mlflow: Any) -> dict[str, Any]:
    manifest = base_manifest(
        training={"epochs": 2, "batchSize": 64, "learningRate": 0.003},
        tuning={"enabled": True, "sampler": "random", "trials": 2, "parallelism": 2,
                "pruner": "none", "searchSpace": {
                    "learningRate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}},
        tracking={"tensorboard": True, "mlflow": {"uri": uri, **mlflow}})
    manifest["metadata"]["name"] = name
    return manifest


def test_pods_log_the_sweep_and_its_trials_to_mlflow(namespace: str, operator: Any,
                                                     mlflow_server: MlflowServer) -> None:
    kubectl("create", "secret", "generic", "mlflow-creds", "-n", namespace,
            "--from-literal=MLFLOW_TRACKING_USERNAME=kubetrain",
            "--from-literal=MLFLOW_TRACKING_PASSWORD=not-checked-by-the-test-server")
    experiment = f"cluster-{namespace}"
    apply_job(namespace, _sweep("tracked", mlflow_server.uri(_node_address()),
                                experiment=experiment, credentials={"secret": "mlflow-creds"}))
    status = wait_phase(namespace, "tracked", ("Succeeded", "Failed"), timeout=600)
    assert status["phase"] == "Succeeded", json.dumps(status)[:3000]
    assert "TrackingDegraded" not in {c["type"] for c in status["conditions"]}, \
        json.dumps(status["conditions"])
    client: Any = mlflow_server.client()
    found = client.get_experiment_by_name(experiment)
    runs = {r.info.run_name: r for r in client.search_runs([found.experiment_id])}
    assert set(runs) == {"tracked/sweep", "tracked/trial-0", "tracked/trial-1", "tracked/train"}
    sweep_id = runs["tracked/sweep"].info.run_id
    assert all(runs[f"tracked/trial-{n}"].data.tags["mlflow.parentRunId"] == sweep_id
               for n in (0, 1))
    train = runs["tracked/train"]
    assert len(client.get_metric_history(train.info.run_id, "val_loss")) == 2
    assert {"model.pt", "loss-curve.png"} <= {a.path for a in
                                              client.list_artifacts(train.info.run_id)}
    # The password reached the pods only as a reference to the Secret.
    seen = kubectl("get", "tj,pods,events", "-n", namespace, "-o", "yaml").stdout
    assert "not-checked-by-the-test-server" not in seen
    # TensorBoard's files are in the job's storage, one folder per unit.
    logs = HOST_STORAGE / namespace
    assert {p.parent.name for p in logs.rglob("events.out.tfevents.*")} >= {
        "train", "trial-0", "trial-1"}


def test_an_unreachable_tracking_server_warns_and_the_job_succeeds(namespace: str,
                                                                  operator: Any) -> None:
    port = free_port()  # nothing listens there
    manifest = base_manifest(training={"epochs": 2, "batchSize": 64, "learningRate": 0.003},
                             tracking={"mlflow": {"uri": f"http://{_node_address()}:{port}"}})
    manifest["metadata"]["name"] = "untracked"
    apply_job(namespace, manifest)
    status = wait_phase(namespace, "untracked", ("Succeeded", "Failed"), timeout=400)
    assert status["phase"] == "Succeeded", json.dumps(status)[:3000]
    degraded = next(c for c in status["conditions"] if c["type"] == "TrackingDegraded")
    assert degraded["reason"] == "TrackingUnavailable"
    assert degraded["message"].startswith("train: mlflow: ")
    wait_for_events(namespace, "untracked", {("Warning", "TrackingUnavailable")})
