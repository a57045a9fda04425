"""Two operator replicas with leader election (a Lease): one active, one standing by.

The active one is SIGKILLed in the middle of training; the standby takes the Lease over and
finishes the job. Shown from the cluster's own records: every pod was created once, by the
replica whose managedFields manager it carries (``kubetrain-<identity>``), inside that
replica's active window (from its "active at" log line to its death); the Lease changed holder
once. Then a clean stop (SIGTERM) hands the Lease to a third replica, and a holder that finds
its Lease taken exits with code 3. Prints the takeover gaps (SIGKILL to the Lease's new holder
and to the first write to the TrainingJob; SIGTERM to the new holder) for the note.
About 45 seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from k8s import apply_job, get_json, kubectl, operator_env, small_job, wait_for, wait_phase

pytestmark = pytest.mark.cluster
LEASE = "kubetrain-operator"
ACTIVE_LINE = re.compile(r"active at (\S+Z): holds Lease")


def start_replica(namespace: str, identity: str, log: Path) -> subprocess.Popen[bytes]:
    """`kubetrain operator --leader-elect` as its own process, its log in ``log``."""
    with operator_env(namespace):
        env = dict(os.environ)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kubetrain.cli", "operator", "-n", namespace,
             "--liveness", "http://127.0.0.1:0/healthz", "--leader-elect",
             "--lease-namespace", namespace, "--lease-name", LEASE, "--identity", identity],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def lease(namespace: str) -> dict[str, Any]:
    result = kubectl("get", "lease", LEASE, "-n", namespace, "-o", "json", check=False)
    spec: dict[str, Any] = json.loads(result.stdout)["spec"] if result.returncode == 0 else {}
    return spec


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def active_since(log: Path) -> list[float]:
    return [parse_time(m.group(1)) for m in ACTIVE_LINE.finditer(log.read_text())]


def creator(pod: dict[str, Any]) -> str | None:
    managers = [f.get("manager", "") for f in pod["metadata"].get("managedFields") or []]
    return next((m.removeprefix("kubetrain-") for m in managers if m.startswith("kubetrain-")),
                None)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_standby_takes_over_when_the_active_operator_is_killed(namespace: str,
                                                               tmp_path: Path) -> None:
    logs = {name: tmp_path / f"{name}.log" for name in ("op-a", "op-b")}
    procs = {name: start_replica(namespace, name, log) for name, log in logs.items()}
    try:
        first = wait_for(lambda: lease(namespace).get("holderIdentity"), 60, "a Lease holder",
                         interval=0.5)
        standby = next(name for name in procs if name != first)
        # Long enough to be mid-training when the active one is killed (a fast machine ran
        # 40 epochs to the end before that: the standby then had nothing left to create).
        apply_job(namespace, small_job("standby", training={
            "epochs": 200, "batchSize": 32, "learningRate": 0.003,
            "resources": {"cpu": "500m", "memory": "1Gi"}}))
        wait_for(lambda: any(p["status"].get("phase") == "Running"
                             for p in get_json("pods", "-n", namespace)["items"]),
                 240, "a running pod")
        time.sleep(4)
        job_version = get_json("tj", "standby", "-n", namespace)["metadata"]["resourceVersion"]
        before = {p["metadata"]["name"]: p["metadata"]["uid"]
                  for p in get_json("pods", "-n", namespace)["items"]}
        killed_at = time.time()
        stop(procs[first])
        new_holder_at = first_write_at = None
        while time.time() - killed_at < 90 and (new_holder_at is None or first_write_at is None):
            now = time.time()
            if new_holder_at is None and lease(namespace).get("holderIdentity") == standby:
                new_holder_at = now
            if first_write_at is None and get_json("tj", "standby", "-n", namespace)[
                    "metadata"]["resourceVersion"] != job_version:
                first_write_at = now
            time.sleep(0.25)
        status = wait_phase(namespace, "standby", ("Succeeded", "Failed"), timeout=300)
        pods = get_json("pods", "-n", namespace, "--show-managed-fields")["items"]
        assert procs[standby].poll() is None, logs[standby].read_text()[-3000:]
        kubectl("delete", "trainingjobs.kubetrain.io", "standby", "-n", namespace, "--timeout=60s")
        # a clean stop (SIGTERM, as in a rolling upgrade) releases the Lease to a third replica
        logs["op-c"] = tmp_path / "op-c.log"
        procs["op-c"] = start_replica(namespace, "op-c", logs["op-c"])
        wait_for(lambda: "standing by" in logs["op-c"].read_text(), 60, "op-c to stand by",
                 interval=0.5)
        terminated_at = time.time()
        os.killpg(procs[standby].pid, signal.SIGTERM)
        terminated = procs[standby].wait(timeout=60)
        wait_for(lambda: lease(namespace).get("holderIdentity") == "op-c", 60,
                 "op-c to take the released Lease", interval=0.25)
        handover = time.time() - terminated_at
        # someone else takes the Lease: the holder must stop at once, with exit code 3
        kubectl("patch", "lease", LEASE, "-n", namespace, "--type=merge",
                "-p", '{"spec": {"holderIdentity": "intruder"}}')
        exit_code = procs["op-c"].wait(timeout=30)
    finally:
        for proc in procs.values():
            stop(proc)
    assert status["phase"] == "Succeeded", json.dumps(status)[:2000]
    assert new_holder_at is not None, logs[standby].read_text()[-3000:]
    assert terminated == 0 and "released Lease" in logs[standby].read_text()
    assert exit_code == 3 and "standing down" in logs["op-c"].read_text()
    # one became active at the start; the other only after the first had been killed
    starts = {name: active_since(log) for name, log in logs.items()}
    assert len(starts[first]) == 1 and len(starts[standby]) == 1, starts
    assert starts[standby][0] < terminated_at < starts["op-c"][0]
    assert "standing by" in logs[standby].read_text()
    assert starts[first][0] < killed_at < starts[standby][0]
    windows = {first: (starts[first][0], killed_at), standby: (starts[standby][0], terminated_at)}
    # every pod created once (the ones from before the kill are the same objects), by a
    # replica while it was the active one
    assert len({p["metadata"]["name"] for p in pods}) == len(pods)
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}
    assert all(uids.get(name) == uid for name, uid in before.items()), (before, uids)
    created_by: dict[str, list[str]] = {first: [], standby: []}
    for pod in pods:
        who = creator(pod)
        assert who in windows, (pod["metadata"]["name"], who)
        created = parse_time(pod["metadata"]["creationTimestamp"])  # whole seconds
        begin, end = windows[who]
        assert int(begin) <= created <= end, (pod["metadata"]["name"], who, created, windows)
        created_by[who].append(pod["metadata"]["name"])
    assert created_by[first] and created_by[standby], created_by  # both did part of the job
    gap_log = starts[standby][0] - killed_at
    print(f"\nstandby takeover after SIGKILL: active (log) {gap_log:.1f}s, Lease holder changed "
          f"{new_holder_at - killed_at:.1f}s, first TrainingJob write "
          f"{(first_write_at - killed_at) if first_write_at else float('nan'):.1f}s; "
          f"after SIGTERM (Lease released) {handover:.1f}s; "
          f"pods by {first}: {sorted(created_by[first])}, by {standby}: "
          f"{sorted(created_by[standby])}")
