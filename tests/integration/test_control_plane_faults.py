"""Faults of the control plane on the real cluster, with the operator as a local process.

The API server down for 20 s mid-training and mid-sweep, etcd killed mid-job, kubelet restarted
mid-training, and the operator SIGKILLed five times across every stage of examples/digits.yaml.
Each job must succeed with a complete status and no pod created twice for one attempt; the
operator of the control-plane faults must ride them out in one process (same PID, never exited).

The faults come from the local cluster's tool (../shared/localk8s/restart.sh, or
$KUBETRAIN_FAULT_TOOL), run as root; without it these tests skip with the reason. Each test
prints one ``[fault figures]`` line (recovery seconds, epochs lost, children created): run with
``-s`` (or ``-rP``) to see them.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s import (
    REPO,
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
FAULT_TOOL = Path(os.environ.get("KUBETRAIN_FAULT_TOOL")
                  or REPO.parent / "shared" / "localk8s" / "restart.sh")
STAGES = ("augmentation", "tuning", "training", "explanation")


@pytest.fixture
def fault_tool(cluster: dict[str, str]) -> Path:
    if not FAULT_TOOL.is_file():
        pytest.skip(f"no fault-injection tool at {FAULT_TOOL}: the local cluster's "
                    "restart.sh (../shared/localk8s/), or set KUBETRAIN_FAULT_TOOL")
    if os.geteuid() != 0:
        pytest.skip("stopping the cluster's components needs root")
    return FAULT_TOOL


def _node_ready() -> bool:
    listed = kubectl("get", "nodes", "-o", "json", check=False, timeout=30)
    if listed.returncode != 0:
        return False
    nodes = yaml.safe_load(listed.stdout)["items"]
    return bool(nodes) and all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
        for n in nodes)


def inject(tool: Path, component: str, *options: str) -> float:
    """Stop ``component`` (restart.sh), bring it back; the seconds until /readyz answered.
    Returns once the node is Ready again too."""
    done = subprocess.run(["bash", str(tool), component, *options], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"API ready ([0-9.]+) s", done.stdout)
    assert found, done.stdout
    wait_for(_node_ready, 180, "the node to be Ready again", interval=1)
    return float(found.group(1))


class Children:
    """Every pod of a job seen over the run, polled each second in a thread: the uids seen
    under each (pod name, attempt label). Two uids for one key: a pod created twice."""

    def __init__(self, namespace: str, job: str) -> None:
        self.namespace, self.job = namespace, job
        self.uids: dict[tuple[str, str], set[str]] = {}
        self.stages: dict[tuple[str, str], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def record(self) -> list[dict[str, Any]]:
        try:
            listed = kubectl("get", "pods", "-n", self.namespace, "-l",
                             f"kubetrain.io/job={self.job}", "-o", "json", check=False,
                             timeout=30)
        except subprocess.TimeoutExpired:  # etcd is down: the API server holds the request
            return []
        if listed.returncode != 0:  # the API server is down: the next poll sees them
            return []
        pods: list[dict[str, Any]] = yaml.safe_load(listed.stdout)["items"]
        for pod in pods:
            labels = pod["metadata"].get("labels") or {}
            key = (pod["metadata"]["name"], labels.get("kubetrain.io/attempt", "-"))
            self.uids.setdefault(key, set()).add(pod["metadata"]["uid"])
            self.stages[key] = labels.get("kubetrain.io/stage", "-")
        return pods

    def _poll(self) -> None:
        while not self._stop.wait(1):
            self.record()

    def __enter__(self) -> Children:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.record()

    def created(self) -> int:
        return sum(len(uids) for uids in self.uids.values())

    def duplicates(self) -> dict[str, int]:
        return {f"{name}@{attempt}": len(uids) for (name, attempt), uids in self.uids.items()
                if len(uids) > 1}

    def by_stage(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for key, uids in self.uids.items():
            counts[self.stages[key]] = counts.get(self.stages[key], 0) + len(uids)
        return counts


def _resource_version(namespace: str, name: str) -> str | None:
    got = kubectl("get", "trainingjob", name, "-n", namespace, "-o",
                  "jsonpath={.metadata.resourceVersion}", check=False, timeout=30)
    return got.stdout.strip() if got.returncode == 0 else None


def _log_tail(log: Path, lines: int = 40) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def report(tmp_path: Path, test: str, figures: dict[str, Any]) -> None:
    """The test's figures: printed (pytest -s / -rP) and kept in the test's tmp folder."""
    (tmp_path / "figures.json").write_text(json.dumps(figures, indent=2))
    print(f"\n[fault figures] {test}: {json.dumps(figures)}")


@pytest.fixture
def operator_process(namespace: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One operator process for the whole test; its log in the test's tmp folder."""
    proc = start_operator(namespace, tmp_path / "operator.log")
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def ride_out(tool: Path, component: str, options: tuple[str, ...], namespace: str, job: str,
             proc: subprocess.Popen[bytes], log: Path) -> dict[str, float]:
    """Inject the fault while ``job`` runs; then measure how soon the same operator process
    wrote the job again and saw a job created after the fault (its watch is back).

    A suspended probe job is enough to show the watch: only a watch event makes kopf run the
    create handler that gives it its phase.
    """
    pid = proc.pid
    version = _resource_version(namespace, job)
    outage = inject(tool, component, *options)
    back = time.time()
    probe = f"{job}-probe"
    apply_job(namespace, small_job(probe, runPolicy={"suspend": True}))
    applied = time.time()

    def written() -> bool:
        return _resource_version(namespace, job) not in (None, version)

    wait_for(written, 180, f"the operator to write {job} again", interval=0.5)
    first_write = time.time() - back
    wait_for(lambda: job_status(namespace, probe).get("phase"), 180,
             "the operator to see a job created after the fault", interval=0.5)
    new_job_seen = time.time() - applied
    kubectl("delete", "tj", probe, "-n", namespace, "--wait=false")
    assert proc.poll() is None and proc.pid == pid, \
        f"the operator exited during the fault:\n{_log_tail(log)}"
    return {"api_ready_s": round(outage, 1), "first_write_s": round(first_write, 1),
            "new_job_seen_s": round(new_job_seen, 1)}


def assert_complete(status: dict[str, Any], stages: tuple[str, ...], log: Path) -> None:
    """Succeeded, with every stage's record, the findings and the cost."""
    assert status.get("phase") == "Succeeded", \
        f"{json.dumps(status)[:2000]}\noperator log:\n{_log_tail(log)}"
    assert {n: s["phase"] for n, s in status["stages"].items()} == \
        dict.fromkeys(stages, "Succeeded")
    for name in stages:
        units = status["stages"][name]["units"]
        assert units and all(u["phase"] in ("Succeeded", "Failed") for u in units.values())
        assert status["stages"][name]["completionTime"]
    assert status["findings"]["overfitting"]["verdict"]
    cost = status["findings"]["cost"]
    assert cost["total"] > 0 and set(cost["byStage"]) == set(stages)
    assert status["training"]["testMetrics"]["test_accuracy"] > 0.5


def _epochs_lost(status: dict[str, Any], epoch_at_fault: int) -> int:
    unit = status["stages"]["training"]["units"]["train"]
    if unit.get("restarts", 0) == 0:
        return 0
    return epoch_at_fault - int(unit.get("result", {}).get("resumed_from_epoch", 0))


def training_job(name: str) -> dict[str, Any]:
    """About a minute of training on 2 cores (batch 16), checkpointed every epoch."""
    return small_job(name, training={
        "epochs": 120, "batchSize": 16, "learningRate": 0.001,
        "checkpoint": {"everyEpochs": 1}, "resources": {"cpu": "500m", "memory": "1Gi"}})


def sweep_job(name: str) -> dict[str, Any]:
    """A sweep of 3 trials, 2 at once, each training for ~20 s; a short final training."""
    return small_job(name, training={"epochs": 2, "batchSize": 64, "learningRate": 0.003,
                                     "resources": {"cpu": "500m", "memory": "1Gi"}},
                     tuning={"enabled": True, "sampler": "random", "pruner": "none",
                             "trials": 3, "parallelism": 2, "epochsPerTrial": 40,
                             "searchSpace": {"batchSize": {"type": "categorical",
                                                           "choices": [16]},
                                             "learningRate": {"type": "float", "low": 1e-3,
                                                              "high": 1e-2, "log": True}}})


def _training_epoch(namespace: str, job: str) -> int:
    return int((job_status(namespace, job).get("training") or {}).get("epoch") or 0)


def _trials_running(namespace: str, job: str) -> bool:
    trials = (job_status(namespace, job).get("tuning") or {}).get("trials") or {}
    return int(trials.get("running") or 0) > 0


CONTROL_PLANE = [
    pytest.param("kube-apiserver", ("--down-for", "20"), "training", id="apiserver-training"),
    pytest.param("kube-apiserver", ("--down-for", "20"), "tuning", id="apiserver-sweep"),
    pytest.param("etcd", ("--kill",), "training", id="etcd-killed-training"),
]


@pytest.mark.parametrize(("component", "options", "stage"), CONTROL_PLANE)
def test_operator_rides_out_a_control_plane_outage(
        namespace: str, fault_tool: Path, operator_process: subprocess.Popen[bytes],
        tmp_path: Path, component: str, options: tuple[str, ...], stage: str) -> None:
    job = "outage"
    log = tmp_path / "operator.log"
    with Children(namespace, job) as children:
        if stage == "training":
            apply_job(namespace, training_job(job))
            wait_for(lambda: _training_epoch(namespace, job) >= 3, 300, "3 epochs")
            at_fault = _training_epoch(namespace, job)
        else:
            apply_job(namespace, sweep_job(job))
            wait_for(lambda: _trials_running(namespace, job), 300, "running trials")
            at_fault = 0
        figures = ride_out(fault_tool, component, options, namespace, job, operator_process,
                           log)
        status = wait_phase(namespace, job, ("Succeeded", "Failed"), timeout=400)
    stages = ("tuning", "training") if stage == "tuning" else ("training",)
    assert_complete(status, stages, log)
    assert operator_process.poll() is None, "the operator exited"
    assert children.duplicates() == {}
    if stage == "training":
        # the fault came mid-training (not after it)
        assert at_fault < status["training"]["epoch"] == 120
        figures["epochs_lost"] = _epochs_lost(status, at_fault)
    else:
        assert status["tuning"]["trials"]["complete"] == 3, json.dumps(
            {"tuning": status["tuning"], "units": status["stages"]["tuning"]["units"]})[:3000]
        figures["trials_replaced"] = sum(
            1 for u in status["stages"]["tuning"]["units"].values() if u.get("replaced"))
    figures["children_created"] = children.created()
    report(tmp_path, f"{component} {' '.join(options)} mid-{stage}", figures)


def test_kubelet_restart_mid_training_job_succeeds(
        namespace: str, fault_tool: Path, operator_process: subprocess.Popen[bytes],
        tmp_path: Path) -> None:
    job = "kubelet"
    log = tmp_path / "operator.log"
    with Children(namespace, job) as children:
        apply_job(namespace, training_job(job))
        wait_for(lambda: _training_epoch(namespace, job) >= 3, 300, "3 epochs")
        before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in children.record()}
        at_fault = _training_epoch(namespace, job)
        started = time.time()
        outage = inject(fault_tool, "kubelet")
        node_back = time.time() - started

        def progressed() -> bool:
            return _training_epoch(namespace, job) > at_fault or \
                job_status(namespace, job).get("phase") in ("Succeeded", "Failed")

        wait_for(progressed, 300, "training to go on after the kubelet restart", interval=0.5)
        resumed = time.time() - started
        status = wait_phase(namespace, job, ("Succeeded", "Failed"), timeout=400)
    assert_complete(status, ("training",), log)
    assert operator_process.poll() is None, "the operator exited"
    assert children.duplicates() == {}
    assert at_fault < status["training"]["epoch"] == 120
    unit = status["stages"]["training"]["units"]["train"]
    after = {name: uids for (name, _), uids in children.uids.items()}
    kept = unit["restarts"] == 0 and after[f"{job}-train-0"] == {before[f"{job}-train-0"]}
    # Either the pod kept running (same uid, no restart) or the gang restarted from its
    # checkpoint, not from scratch.
    assert kept or int(unit["result"].get("resumed_from_epoch", 0)) >= 1, json.dumps(unit)
    report(tmp_path, "kubelet restart mid-training", {
        "restart_s": round(outage, 1), "node_ready_s": round(node_back, 1),
        "training_progressed_s": round(resumed, 1), "pod_kept": kept,
        "restarts": unit["restarts"], "epochs_lost": _epochs_lost(status, at_fault),
        "children_created": children.created()})


def digits_small() -> dict[str, Any]:
    """examples/digits.yaml with every stage, made smaller: 4 trials of 3 epochs, 6 epochs."""
    manifest: dict[str, Any] = yaml.safe_load((REPO / "examples" / "digits.yaml").read_text())
    spec = manifest["spec"]
    assert all(spec[s]["enabled"] for s in ("augmentation", "tuning", "explanation"))
    spec["tuning"].update(trials=4, epochsPerTrial=3)
    spec["training"]["epochs"] = 6
    return manifest


def _stage_started(namespace: str, job: str, stage: str) -> bool:
    stages = job_status(namespace, job).get("stages") or {}
    if (stages.get(stage) or {}).get("phase") in ("Succeeded", "Failed"):
        return True
    return any(p["metadata"].get("labels", {}).get("kubetrain.io/stage") == stage
               for p in get_json("pods", "-n", namespace, "-l",
                                 f"kubetrain.io/job={job}").get("items", []))


def test_operator_killed_five_times_across_every_stage_of_digits(
        namespace: str, fault_tool: Path, tmp_path: Path) -> None:
    """Five SIGKILLs at seeded random moments: one in each stage's run and one more in the
    sweep, each a random 0-4 s after the stage's first pod appeared."""
    seed = int(os.environ.get("KUBETRAIN_FAULT_SEED") or random.randrange(10**6))
    rng = random.Random(seed)
    print(f"\n[fault seed] KUBETRAIN_FAULT_SEED={seed}")
    job = "digits"
    log = tmp_path / "operator.log"
    kills: list[dict[str, Any]] = []
    proc = start_operator(namespace, log)
    try:
        with Children(namespace, job) as children:
            kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(digits_small()))
            for stage in ("augmentation", "tuning", "tuning", "training", "explanation"):
                wait_for(lambda stage=stage: _stage_started(namespace, job, stage), 400,
                         f"the {stage} stage")
                delay, down = rng.uniform(0, 4), rng.uniform(0, 3)
                time.sleep(delay)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                children.record()
                kills.append({"stage": stage, "after_s": round(delay, 1),
                              "down_s": round(down, 1),
                              "phase": (job_status(namespace, job).get("stages") or {}).get(
                                  stage, {}).get("phase")})
                time.sleep(down)
                proc = start_operator(namespace, log)
            status = wait_phase(namespace, job, ("Succeeded", "Failed"), timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    restarts = {f"{s}/{n}": u["restarts"] for s, stage in (status.get("stages") or {}).items()
                for n, u in stage["units"].items() if u.get("restarts")}
    report(tmp_path, "operator SIGKILLed 5 times across digits.yaml", {
        "seed": seed, "kills": kills, "children_created": children.created(),
        "children_by_stage": children.by_stage(), "unit_restarts": restarts,
        "trials": (status.get("tuning") or {}).get("trials")})
    assert_complete(status, STAGES, log)
    assert children.duplicates() == {}, children.uids
    trials = status["tuning"]["trials"]  # median pruning: some trials end pruned
    assert trials["total"] == trials["complete"] + trials["pruned"] == 4, trials
