"""The stage engine's decisions on a real cluster: budget stop, sweeps that lose pods, suspend
mid-sweep, the operator killed mid-sweep, augmentation shards at once."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from k8s import (
    apply_job,
    get_json,
    job_status,
    kubectl,
    small_job,
    start_operator,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.cluster
TIMER_SECONDS = 3  # KUBETRAIN_TIMER_SECONDS in operator_env
BUDGET_GRACE_SECONDS = 5  # pipeline.engine.BUDGET_GRACE_SECONDS


def _pods(namespace: str, job: str) -> list[dict[str, Any]]:
    return [p for p in get_json("pods", "-n", namespace).get("items", [])
            if p["metadata"].get("labels", {}).get("kubetrain.io/job") == job]


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def sweep_job(name: str, *, trials: int, parallelism: int, epochs: int) -> dict[str, Any]:
    """A random sweep whose trials each train for a while (batch 16: ~0.3 s an epoch)."""
    return small_job(name, training={"epochs": 2, "batchSize": 64, "learningRate": 0.003,
                                     "resources": {"cpu": "500m", "memory": "1Gi"}},
                     tuning={"enabled": True, "sampler": "random", "pruner": "none",
                             "trials": trials, "parallelism": parallelism,
                             "epochsPerTrial": epochs,
                             "searchSpace": {"batchSize": {"type": "categorical",
                                                           "choices": [16]},
                                             "learningRate": {"type": "float", "low": 1e-3,
                                                              "high": 1e-2, "log": True}}})


def _trial_units(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    units = status["stages"]["tuning"]["units"]
    return {n: u for n, u in units.items() if n.startswith("trial-")}


def _counted(status: dict[str, Any]) -> list[str]:
    return [n for n, u in _trial_units(status).items()
            if u["phase"] in ("Succeeded", "Failed") and not u.get("replaced")]


def _unit_phase(namespace: str, job: str, unit: str) -> str | None:
    stages = job_status(namespace, job).get("stages") or {}
    for stage in stages.values():
        if unit in (stage.get("units") or {}):
            return str(stage["units"][unit]["phase"])
    return None


MAX_COST = 1.5e-4
EPOCHS = 5000


def test_budget_stop_removes_running_pods_and_fails_with_the_cost(namespace: str,
                                                                  operator: Any) -> None:
    # 500m CPU + 1 GiB at the default prices is ~5.6e-6 USD a second: ~27 s of the pod.
    # An epoch takes 0.05-0.3 s, so 5,000 epochs run far past the budget (500 once finished
    # inside it in CI, and the budget was only exceeded when the finished pod was costed).
    apply_job(namespace, small_job("budget", training={
        "epochs": EPOCHS, "batchSize": 16, "resources": {"cpu": "500m", "memory": "1Gi"}},
        findings={"cost": {"budget": {"maxCost": MAX_COST, "action": "stop"}}}))
    running = wait_for(lambda: (s := job_status(namespace, "budget")).get("phase") == "Running"
                       and (s.get("findings", {}).get("cost") or {}).get("total", 0) > 0
                       and (s.get("training") or {}).get("epoch", 0) >= 1 and s,
                       240, "a running cost and epochs while the job runs")
    assert running["findings"]["cost"]["total"] < MAX_COST
    header, row = kubectl("get", "tj", "budget", "-n", namespace).stdout.splitlines()[:2]
    at = header.index("COST")
    assert float(row[at:].split()[0]) > 0  # the Cost column while the job runs
    status = wait_phase(namespace, "budget", ("Succeeded", "Failed"), timeout=240)
    exceeded = next(c for c in status["conditions"] if c["type"] == "BudgetExceeded")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert exceeded["status"] == "True" and failed["reason"] == "BudgetExceeded"
    assert status["findings"]["cost"]["total"] >= MAX_COST
    assert status["findings"]["cost"]["budget"]["exceeded"] is True
    assert status["training"]["epoch"] < EPOCHS
    stopped_at = _time(exceeded["lastTransitionTime"])
    deleting: list[dict[str, Any]] = []

    def train_pods_gone() -> bool:
        pods = [p for p in _pods(namespace, "budget")
                if p["metadata"]["labels"].get("kubetrain.io/unit") == "train"]
        deleting.extend(p["metadata"] for p in pods if p["metadata"].get("deletionTimestamp"))
        return not pods

    wait_for(train_pods_gone, 90, "the training pod to be gone", interval=0.5)
    gone_after = (datetime.now(stopped_at.tzinfo) - stopped_at).total_seconds()
    if deleting:  # seen while it stopped: when the operator asked, and with what grace
        meta = deleting[0]
        assert meta["deletionGracePeriodSeconds"] == BUDGET_GRACE_SECONDS
        asked = _time(meta["deletionTimestamp"]) - timedelta(seconds=BUDGET_GRACE_SECONDS)
        # asked in the reconcile that found the budget spent (timestamps are to the second)
        assert (asked - stopped_at).total_seconds() <= TIMER_SECONDS + 1
    # Gone once the kubelet has stopped it: two observation intervals, the grace period, and
    # the kubelet's teardown, which took ~12 s on this 2-core node in one CI run, 29 s with a
    # second test run beside it and 33 s in another CI run (44 s in all). When the operator
    # asked, the operator's part, is checked above to the second; this bound is the kubelet's
    # and only catches a pod left running.
    assert gone_after <= 2 * TIMER_SECONDS + BUDGET_GRACE_SECONDS + 60, gone_after


def test_a_deleted_trial_pod_is_replaced_and_the_sweep_reaches_its_count(
        namespace: str, operator: Any) -> None:
    apply_job(namespace, sweep_job("lose", trials=3, parallelism=2, epochs=40))
    wait_for(lambda: _unit_phase(namespace, "lose", "trial-0") == "Running"
             and any(p["metadata"]["name"] == "lose-trial-0"
                     and p["status"].get("phase") == "Running" for p in _pods(namespace, "lose")),
             240, "trial-0 running")
    # At once: its 40 epochs take only seconds on a fast machine, and a trial that told the
    # study it completed before its pod went is no lost trial (CI saw 4 complete that way).
    kubectl("delete", "pod", "lose-trial-0", "-n", namespace, "--wait=false")
    status = wait_phase(namespace, "lose", ("Succeeded", "Failed"), timeout=600)
    assert status["phase"] == "Succeeded", json.dumps(status)[:3000]
    trials = _trial_units(status)
    assert trials["trial-0"]["replaced"] is True
    assert len(_counted(status)) == 3
    study = status["tuning"]["trials"]
    assert study["complete"] == 3  # the study: three complete trials
    # The lost one failed if it had asked the study for a trial before its pod went (deleted
    # while Python still started, it had none: CI saw that); either way none is left running.
    assert study["running"] == 0 and study["failed"] <= 1
    assert study["total"] == study["complete"] + study["pruned"] + study["failed"]
    assert status["findings"]["cost"]["byStage"]["tuning"]["cost"] > 0
    assert all(u.get("cost", 0) > 0 for n, u in trials.items() if n in _counted(status))


def test_suspend_mid_sweep_then_resume_reaches_the_count_with_no_trial_run_twice(
        namespace: str, operator: Any) -> None:
    apply_job(namespace, sweep_job("pause", trials=4, parallelism=2, epochs=25))

    def one_done_one_running() -> bool:
        trials = _trial_units(job_status(namespace, "pause")) if job_status(
            namespace, "pause").get("stages", {}).get("tuning") else {}
        phases = [u["phase"] for u in trials.values()]
        return "Succeeded" in phases and "Running" in phases

    wait_for(one_done_one_running, 400, "a finished trial and a running one")
    kubectl("patch", "tj", "pause", "-n", namespace, "--type=merge", "-p",
            '{"spec":{"runPolicy":{"suspend":true}}}')
    wait_phase(namespace, "pause", ("Suspended",), timeout=60)
    wait_for(lambda: not _pods_running(namespace, "pause"), 90, "the pods to stop")
    suspended = job_status(namespace, "pause")
    finished_before = {n for n, u in _trial_units(suspended).items() if u["phase"] == "Succeeded"}
    kubectl("patch", "tj", "pause", "-n", namespace, "--type=merge", "-p",
            '{"spec":{"runPolicy":{"suspend":false}}}')
    status = wait_phase(namespace, "pause", ("Succeeded", "Failed"), timeout=600)
    assert status["phase"] == "Succeeded", json.dumps(status)[:3000]
    trials = _trial_units(status)
    assert finished_before and all(trials[n]["phase"] == "Succeeded" for n in finished_before)
    assert len(_counted(status)) == 4
    assert any(u.get("replaced") for u in trials.values())  # the one the suspend cut short
    # Each trial unit asked the study for one trial at most: no trial ran twice.
    assert all(u["attempt"] == 0 for u in trials.values())
    assert status["tuning"]["trials"]["total"] <= len(trials)
    assert status["tuning"]["trials"]["complete"] == 4


def _pods_running(namespace: str, job: str) -> list[str]:
    return [p["metadata"]["name"] for p in _pods(namespace, job)
            if p["status"].get("phase") in ("Pending", "Running")
            and p["metadata"]["labels"].get("kubetrain.io/unit") != "report"]


def test_operator_killed_during_a_sweep_makes_no_duplicate_trial_pods(namespace: str) -> None:
    apply_job(namespace, sweep_job("kill", trials=4, parallelism=2, epochs=15))
    uids: dict[str, set[str]] = {}

    def record() -> None:
        for pod in _pods(namespace, "kill"):
            uids.setdefault(pod["metadata"]["name"], set()).add(pod["metadata"]["uid"])

    proc = start_operator(namespace)
    try:
        for _ in range(2):
            wait_for(lambda: any(n.startswith("kill-trial") for n in _pods_running(
                namespace, "kill")), 300, "a running trial pod")
            time.sleep(3)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            record()
            time.sleep(2)
            proc = start_operator(namespace)
        deadline = time.time() + 600
        while time.time() < deadline and job_status(namespace, "kill").get("phase") not in (
                "Succeeded", "Failed"):
            record()
            time.sleep(1)
        status = job_status(namespace, "kill")
        record()
    finally:
        kubectl("delete", "tj", "kill", "-n", namespace, "--wait=false", check=False)
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert status["phase"] == "Succeeded", json.dumps(status)[:3000]
    assert {name: len(u) for name, u in uids.items() if len(u) > 1} == {}
    assert len(_counted(status)) == 4
    assert status["tuning"]["trials"]["complete"] == 4


def test_augmentation_shards_run_at_once(namespace: str, operator: Any) -> None:
    # Three one-process shards of 300m each fit on the test node beside the operator.
    apply_job(namespace, small_job("shards", training={
        "epochs": 2, "batchSize": 64, "resources": {"cpu": "300m", "memory": "1Gi"}},
        augmentation={"enabled": True, "multiplier": 4, "shards": 3, "parallelism": 3,
                      "image": {"rotation": 10, "noiseStd": 0.05}}))
    status = wait_phase(namespace, "shards", ("Succeeded", "Failed"), timeout=400)
    assert status["phase"] == "Succeeded", json.dumps(status)[:3000]
    spans = []
    for pod in _pods(namespace, "shards"):
        if pod["metadata"]["labels"].get("kubetrain.io/role") != "augment-shard":
            continue
        state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        spans.append((_time(pod["metadata"]["creationTimestamp"]), _time(state["finishedAt"])))
    assert len(spans) == 3
    # The operator created every shard's pod before any shard finished: it started them at
    # once (with parallelism 1 the next pod comes only after one ends). When they start is
    # the scheduler's: with the previous test's pods still terminating on the 2-core node, one
    # waited Pending for CPU and started after another had finished (a CI run saw it).
    assert max(created for created, _ in spans) <= min(end for _, end in spans), spans


def test_a_spec_the_data_refuses_is_invalid_on_the_cluster_too(namespace: str,
                                                               operator: Any) -> None:
    # `kubetrain run` refuses this before it starts (exit 2); the operator has no data to
    # check, so the first unit that loads it reports the problem and the job is Invalid.
    apply_job(namespace, small_job("nodata", dataset={"builtin": "breast_cancer"},
                                   model={"builtin": "cnn"}))
    status = wait_phase(namespace, "nodata", ("Succeeded", "Failed"), timeout=240)
    invalid = next(c for c in status["conditions"] if c["type"] == "Invalid")
    assert invalid["reason"] == "InvalidSpec"
    assert invalid["message"].startswith("spec.model.builtin: cnn needs image data")
    assert status["stages"]["training"]["units"]["train"]["restarts"] == 0
