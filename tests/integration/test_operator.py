"""The operator on a real cluster: TrainingJobs reconciled into pods, status, events, policy."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from typing import Any

import pytest
from k8s import (
    HOST_STORAGE,
    REPO,
    apply_job,
    earlier_operator_job,
    get_json,
    job_status,
    kubectl,
    small_job,
    start_operator,
    wait_for,
    wait_for_events,
    wait_phase,
)

pytestmark = pytest.mark.cluster
EXAMPLES = REPO / "examples"


def _pods(namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json("pods", "-n", namespace).get("items", [])
    return items


def test_small_job_succeeds_with_findings_columns_and_events(namespace: str,
                                                            operator: Any) -> None:
    # prices from a ConfigMap in the job's namespace (spec.findings.cost.priceConfigMap)
    kubectl("create", "configmap", "team-prices", "-n", namespace, "--from-literal=cpuHour=0.5",
            "--from-literal=memoryGiBHour=0.01", "--from-literal=gpuHour=3",
            "--from-literal=currency=EUR")
    apply_job(namespace, small_job("digits-small",
                                   findings={"cost": {"priceConfigMap": "team-prices"}}))
    status = wait_phase(namespace, "digits-small", ("Succeeded", "Failed"), timeout=300)
    assert status["phase"] == "Succeeded", json.dumps(status)[:2000]
    assert status["findings"]["cost"]["currency"] == "EUR"
    assert status["training"]["testMetrics"]["test_accuracy"] > 0.85
    assert status["findings"]["overfitting"]["verdict"] == "none"  # seeded: gap 0.02 < 0.1
    cost = status["findings"]["cost"]
    assert cost["total"] > 0 and cost["byStage"]["training"]["seconds"] > 0
    unit = status["stages"]["training"]["units"]["train"]
    assert unit["phase"] == "Succeeded" and unit["result"]["status"] == "succeeded"
    # measured inside the pod: what the unit used against its requests
    assert unit["result"]["usage"]["samples"] >= 4 and unit["result"]["usage"]["cpu_p95"] > 0
    assert status["findings"]["utilization"]["measuredUnits"] >= 1
    table = kubectl("get", "tj", "-n", namespace).stdout
    for column in ("PHASE", "STAGE", "PROGRESS", "BEST", "OVERFIT", "COST", "AGE"):
        assert column in table
    assert "Succeeded" in table and "epoch 6/6" in table
    wait_for_events(namespace, "digits-small", {("Normal", "StageRunning"),
                                                ("Normal", "Succeeded")})
    described = kubectl("describe", "trainingjobs.kubetrain.io", "digits-small", "-n",
                        namespace).stdout
    assert "StageRunning" in described and "kubetrain-operator" in described  # its Events
    # report.md, the loss curve and status.yaml in the job's storage, written by the report
    # pod after the job ended, where status.artifacts says
    folder = f"kubetrain/{namespace}/digits-small"
    assert status["artifacts"]["report"] == f"/data/kubetrain-data/{folder}/report.md"
    host = HOST_STORAGE / namespace / folder
    wait_for(lambda: (host / "status.yaml").exists(), 120, "the report pod's files")
    assert "Succeeded" in (host / "report.md").read_text()
    assert (host / "loss-curve.png").stat().st_size > 0
    pod = next(p for p in _pods(namespace) if p["metadata"]["name"] == "digits-small-train-0")
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["containers"][0]["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"


INVALID = [
    ({"dataset": {"uri": "data/train.csv", "target": "label"}}, "spec.dataset.uri"),
    # a command beside the built-in model: one or the other
    ({"training": {"command": ["python", "train.py"]}}, "spec.model: remove it"),
    ({"model": {"entrypoint": "mypkg.nets:build"}}, "spec.image"),
    ({"tuning": {"enabled": True, "searchSpace": {"learningRate": {
        "type": "float", "low": 0.1, "high": 0.01}}}}, "spec.tuning.searchSpace.learningRate"),
    ({"findings": {"cost": {"priceConfigMap": "no-such-prices"}}},
     "spec.findings.cost.priceConfigMap"),
]


@pytest.mark.parametrize(("change", "field"), INVALID)
def test_invalid_spec_sets_condition_and_creates_nothing(namespace: str, operator: Any,
                                                         change: dict[str, Any],
                                                         field: str) -> None:
    apply_job(namespace, small_job("invalid", **change))
    status = wait_phase(namespace, "invalid", ("Failed",), timeout=60)
    invalid = next(c for c in status["conditions"] if c["type"] == "Invalid")
    assert invalid["status"] == "True" and invalid["reason"] == "InvalidSpec"
    assert field in invalid["message"]
    assert _pods(namespace) == []
    assert get_json("jobs", "-n", namespace)["items"] == []


def test_deleted_training_pod_resumes_from_checkpoint(namespace: str, operator: Any) -> None:
    # Long enough that the pod is surely deleted mid-run on an idle machine too.
    manifest = small_job("resume", training={
        "epochs": 200, "batchSize": 16, "learningRate": 0.001,
        "checkpoint": {"everyEpochs": 1}, "resources": {"cpu": "500m", "memory": "1Gi"}})
    apply_job(namespace, manifest)
    wait_for(lambda: (job_status(namespace, "resume").get("training") or {}).get("epoch", 0)
             >= 3, 240, "3 epochs")
    pod = next(p for p in _pods(namespace) if p["metadata"]["name"] == "resume-train-0")
    assert pod["status"]["phase"] == "Running", "training finished before the test deleted it"
    kubectl("delete", "pod", "resume-train-0", "-n", namespace, "--wait=false")
    status = wait_phase(namespace, "resume", ("Succeeded", "Failed"), timeout=600)
    assert status["phase"] == "Succeeded", json.dumps(status)[:2000]
    result = status["stages"]["training"]["units"]["train"]["result"]
    # (A null in a status patch deletes the key: a run that never resumed has none.)
    assert result.get("resumed_from_epoch", 0) >= 3
    assert status["training"]["epoch"] == 200


def test_deleting_the_job_removes_all_children_within_30s(namespace: str,
                                                          operator: Any) -> None:
    apply_job(namespace, small_job("doomed", training={"epochs": 200, "batchSize": 16}))
    wait_for(lambda: any(p["status"].get("phase") == "Running" for p in _pods(namespace)),
             180, "a running training pod")
    kubectl("delete", "tj", "doomed", "-n", namespace, "--wait=false")
    started = time.time()

    def gone() -> bool:
        kinds = ("pods", "services", "jobs", "configmaps")
        left = [item for kind in kinds for item in get_json(kind, "-n", namespace)["items"]
                if item["metadata"].get("labels", {}).get("kubetrain.io/job") == "doomed"]
        return not left

    wait_for(gone, 60, "children to be garbage-collected", interval=1)
    assert time.time() - started <= 30


def test_jobs_carry_no_finalizer_and_an_earlier_operators_is_removed(namespace: str,
                                                                     operator: Any) -> None:
    """The periodic pass needs no finalizer (kopf's timer did): a running job has none, and
    one that an earlier operator version put on a job is removed, so deleting it never hangs."""
    apply_job(namespace, small_job("plain", training={"epochs": 200, "batchSize": 16}))
    apply_job(namespace, earlier_operator_job("upgraded"))
    wait_for(lambda: job_status(namespace, "plain").get("phase") == "Running", 180,
             "a running job")
    wait_for(lambda: not get_json("trainingjobs.kubetrain.io", "upgraded", "-n", namespace)[
        "metadata"].get("finalizers"), 60, "the earlier operator's finalizer to be removed")
    assert job_status(namespace, "upgraded")["phase"] == "Suspended"
    time.sleep(6)  # at least one periodic pass over the running job
    assert not get_json("trainingjobs.kubetrain.io", "plain", "-n", namespace)[
        "metadata"].get("finalizers")
    kubectl("delete", "trainingjobs.kubetrain.io", "plain", "upgraded", "-n", namespace,
            "--timeout=30s")


def test_operator_killed_three_times_job_still_succeeds(namespace: str) -> None:
    manifest = small_job("survivor", training={
        "epochs": 60, "batchSize": 32, "learningRate": 0.003,
        "crossValidation": {"folds": 2}, "resources": {"cpu": "500m", "memory": "1Gi"}})
    apply_job(namespace, manifest)
    created: Counter[str] = Counter()
    seen_uids: dict[str, str] = {}
    proc = start_operator(namespace)
    try:
        for _ in range(3):
            wait_for(lambda: any(p["status"].get("phase") == "Running"
                                 for p in _pods(namespace)), 240, "a running pod")
            time.sleep(4)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            for pod in _pods(namespace):
                name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
                if seen_uids.get(name) != uid:
                    seen_uids[name] = uid
                    created[name] += 1
            time.sleep(2)
            proc = start_operator(namespace)
        status = wait_phase(namespace, "survivor", ("Succeeded", "Failed"), timeout=600)
        for pod in _pods(namespace):
            name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
            if seen_uids.get(name) != uid:
                seen_uids[name] = uid
                created[name] += 1
    finally:
        kubectl("delete", "tj", "survivor", "-n", namespace, "--wait=false", check=False)
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert status["phase"] == "Succeeded", json.dumps(status)[:2000]
    # Every pod was created exactly once: no duplicates, no stage rerun from scratch.
    assert created and all(count == 1 for count in created.values()), created
    assert set(created) == {"survivor-fold-0-0", "survivor-fold-1-0", "survivor-train-0",
                            "survivor-report"}
    units = status["stages"]["training"]["units"]
    assert all(u["restarts"] == 0 and u["phase"] == "Succeeded" for u in units.values())
    assert status["training"]["crossValidation"]["folds"] == 2
