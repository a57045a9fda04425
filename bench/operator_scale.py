"""50 TrainingJobs applied at once: how long until each one's first-stage children exist?

Two cases, each beside its own floor measured in the same run:

- ``training``: a training-only job (first children: the job's ConfigMap, the gang's Services
  and its rank-0 training pod);
- ``digits``: ``examples/digits.yaml`` (first children: its ConfigMap and the augmentation
  unit's pod), a lighter floor that shows the operator's fixed cost per job.

The floor: the same TrainingJobs and exactly the children the operator's first reconcile
creates (the pure ``reconcile`` decision on a job with no children), written directly with the
Python client from 8 threads, no operator. With the operator, the TrainingJobs are created
the same way (8 threads), and the time runs until every job's first children exist (seen by
watches opened before the jobs are created: no polling load on the machine). The operator
runs as ``kubetrain operator -n NS`` in its own process; its peak RSS is sampled. The pods'
image is never pulled: the benchmark measures the control plane, not training.

Each case runs the floor and the operator in turns (``--repeat``, 3 by default) and reports the
ratio of their medians, each run's figures beside it, and the CPU seconds the control plane's
processes, the benchmark and the operator used while the jobs were admitted (medians).

    python bench/operator_scale.py [--jobs 50] [--case training|digits|both] [--repeat 3]
                                   [--json FILE]

What each request costs the API server: ``bench/api_request_costs.py``.

Needs a cluster (KUBECONFIG, or the machine's /var/lib/localk8s/env) with the CRD applicable.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from kubetrain.api import parse_training_job  # noqa: E402
from kubetrain.controller import builders  # noqa: E402
from kubetrain.controller.observe import Observed  # noqa: E402
from kubetrain.controller.reconcile import Decision, reconcile  # noqa: E402

LOCAL_ENV = Path("/var/lib/localk8s/env")
ABSENT_IMAGE = "kubetrain-bench-absent:0"
SETTINGS = builders.WorkerSettings(worker_image=ABSENT_IMAGE, image_pull_policy="Never")


def use_local_cluster() -> None:
    if os.environ.get("KUBECONFIG") or not LOCAL_ENV.exists():
        return
    for line in LOCAL_ENV.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            os.environ[key] = value.replace("$PATH", os.environ.get("PATH", ""))


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    return subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True,
                          check=check, timeout=300).stdout


def training_manifest(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"dataset": {"builtin": "digits"},
                     "model": {"builtin": "mlp"},
                     "training": {"epochs": 1, "resources": {"cpu": "10m", "memory": "64Mi"}},
                     "storage": {"pvc": "bench-data"}}}


def digits_manifest(name: str, namespace: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((REPO / "examples" / "digits.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"].setdefault("storage", {})["pvc"] = "bench-data"
    return body


CASES: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "training": training_manifest, "digits": digits_manifest}


def first_decision(body: dict[str, Any], uid: str = "bench") -> Decision:
    """The operator's first reconcile of this job (the pure decision on a job with no children)."""
    job = parse_training_job({**body, "metadata": {**body["metadata"], "uid": uid}})
    return reconcile(job, Observed(), SETTINGS, datetime.now(UTC))


def first_children(body: dict[str, Any], uid: str = "bench") -> list[dict[str, Any]]:
    """The children the operator's first reconcile of this job creates."""
    return first_decision(body, uid).create


def expected_children(bodies: list[dict[str, Any]]) -> dict[str, set[tuple[str, str]]]:
    """Job name → the (kind, name) of its first children."""
    return {b["metadata"]["name"]: {(c["kind"], c["metadata"]["name"])
                                    for c in first_children(b)} for b in bodies}


KINDS = ("Pod", "Service", "ConfigMap")


class ChildWatch:
    """When each expected child appeared: one watch per kind, from a LIST's resourceVersion
    taken before the jobs are created (so none is missed), in the benchmark's process. A poll
    (three LISTs of every child each 0.1 s) took 0.5-0.65 of the 2 cores from the operator it
    measured, and added up to a poll's period and a LIST's time to what it measured."""

    def __init__(self, namespace: str, expected: dict[str, set[tuple[str, str]]]) -> None:
        from kubernetes import watch

        _, core = clients()
        self.expected = expected
        self.wanted: set[tuple[str, str]] = set().union(*expected.values())
        self.seen: set[tuple[str, str]] = set()
        self.done_at: float | None = None
        self._cond = threading.Condition()
        self._watches = []
        listers = {"Pod": core.list_namespaced_pod, "Service": core.list_namespaced_service,
                   "ConfigMap": core.list_namespaced_config_map}
        for kind in KINDS:
            listed = json.loads(listers[kind](namespace, label_selector=builders.LABEL_JOB,
                                              _preload_content=False).data)
            self._seen(kind, [item["metadata"]["name"] for item in listed["items"]])
            stream = watch.Watch()
            self._watches.append(stream)
            threading.Thread(target=self._watch, daemon=True, args=(
                kind, stream, listers[kind], namespace,
                listed["metadata"]["resourceVersion"])).start()

    def _watch(self, kind: str, stream: Any, lister: Any, namespace: str, version: str) -> None:
        from urllib3.exceptions import HTTPError

        try:
            for event in stream.stream(lister, namespace, label_selector=builders.LABEL_JOB,
                                       resource_version=version, timeout_seconds=600):
                if event and event.get("type") == "ADDED" and event.get("raw_object"):
                    self._seen(kind, [event["raw_object"]["metadata"]["name"]])
        except HTTPError:  # the stream cut when the namespace goes (after the measurement)
            return

    def _seen(self, kind: str, names: list[str]) -> None:
        with self._cond:
            self.seen |= {(kind, name) for name in names}
            if self.done_at is None and self.wanted <= self.seen:
                self.done_at = time.perf_counter()
                self._cond.notify_all()

    def wait(self, timeout: float) -> float | None:
        """The perf_counter time every expected child had appeared; None on timeout."""
        with self._cond:
            self._cond.wait_for(lambda: self.done_at is not None, timeout=timeout)
            return self.done_at

    def jobs_with_children(self) -> int:
        with self._cond:
            return sum(1 for children in self.expected.values() if children <= self.seen)

    def stop(self) -> None:
        for stream in self._watches:
            stream.stop()


TICK = os.sysconf("SC_CLK_TCK")
CLUSTER_PROCESSES = (
    "kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kubelet")


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system, its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuWindow:
    """CPU seconds spent during a window by the control plane's processes on this machine
    (found by name: a local cluster), the benchmark's own process and, when given, the
    operator's: where the 2 cores went while the jobs were admitted."""

    def __init__(self, operator_pid: int | None = None) -> None:
        self.pids = {name: pid for name in CLUSTER_PROCESSES if (pid := pid_of(name))}
        self.pids["benchmark"] = os.getpid()
        if operator_pid is not None:
            self.pids["operator"] = operator_pid
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        return {name: round(cpu_seconds(pid) - self.start[name], 2)
                for name, pid in self.pids.items()}


def pid_of(name: str) -> int | None:
    found = subprocess.run(["pgrep", "-x", name[:15]], capture_output=True, text=True).stdout
    return int(found.split()[0]) if found.split() else None


def fresh_namespace(namespace: str) -> None:
    kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=300s", check=False)
    kubectl("create", "namespace", namespace)


class Operator:
    """``kubetrain operator -n NS`` in its own process, its RSS sampled every 0.1 s."""

    def __init__(self, namespace: str, env: dict[str, str] | None = None) -> None:
        environ = {**os.environ, "KUBETRAIN_WORKER_IMAGE": ABSENT_IMAGE,
                   "KUBETRAIN_IMAGE_PULL_POLICY": "Never", "KUBETRAIN_TIMER_SECONDS": "5",
                   "KUBETRAIN_METRICS_PORT": "0", "PYTHONPATH": str(REPO / "operator"),
                   **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kubetrain.cli", "operator", "-n", namespace,
             "--liveness", "http://127.0.0.1:0/healthz"],
            env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.peak_rss_mib = 0.0
        self.rss_mib = 0.0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.rss_mib = int(line.split()[1]) / 1024
                        self.peak_rss_mib = max(self.peak_rss_mib, self.rss_mib)
            except OSError:
                return
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self.process.terminate()
        self.process.wait(timeout=30)


def delete_jobs(namespace: str) -> None:
    """Delete the jobs (their children go by garbage collection) and wait until they are gone."""
    kubectl("delete", "trainingjobs.kubetrain.io", "--all", "-n", namespace, "--wait=true",
            "--timeout=300s", check=False)


@dataclass(frozen=True)
class Run:
    """One run of the floor or of the operator's case."""

    seconds: float
    cpu_seconds: dict[str, float]
    apply_seconds: float = 0.0
    jobs_with_children: int = 0
    peak_rss_mib: float = 0.0


def run_operator(namespace: str, bodies: list[dict[str, Any]]) -> Run:
    fresh_namespace(namespace)
    expected = expected_children(bodies)
    operator = Operator(namespace)
    time.sleep(6)  # the operator is up and watching
    children = ChildWatch(namespace, expected)
    cpu = CpuWindow(operator.process.pid)
    started = time.perf_counter()
    create_jobs(namespace, bodies)  # as the floor creates them, so only the children differ
    applied = time.perf_counter() - started
    done_at = children.wait(timeout=300)
    cpu_used = cpu.stop()
    elapsed = (done_at if done_at is not None else time.perf_counter()) - started
    done = children.jobs_with_children()
    children.stop()
    delete_jobs(namespace)
    operator.stop()
    return Run(seconds=elapsed, cpu_seconds=cpu_used, apply_seconds=applied,
               jobs_with_children=done, peak_rss_mib=operator.peak_rss_mib)


@cache
def clients() -> tuple[Any, Any]:
    from kubernetes import client, config

    config.load_kube_config()
    return client.CustomObjectsApi(), client.CoreV1Api()


def create_jobs(namespace: str, bodies: list[dict[str, Any]]) -> None:
    """The TrainingJobs alone, by the Python client from 8 threads (the floor's way)."""
    custom, _ = clients()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda body: custom.create_namespaced_custom_object(
            "kubetrain.io", "v1alpha1", namespace, "trainingjobs", body), bodies))


def run_direct(namespace: str, bodies: list[dict[str, Any]]) -> Run:
    """The floor: the same TrainingJobs and their first children, by the Python client."""
    fresh_namespace(namespace)
    custom, core = clients()
    create = {"Pod": core.create_namespaced_pod, "Service": core.create_namespaced_service,
              "ConfigMap": core.create_namespaced_config_map}

    def one(body: dict[str, Any]) -> None:
        created = custom.create_namespaced_custom_object("kubetrain.io", "v1alpha1", namespace,
                                                         "trainingjobs", body)
        for child in first_children(body, created["metadata"]["uid"]):
            create[child["kind"]](namespace, child)

    cpu = CpuWindow()
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, bodies))
    elapsed = time.perf_counter() - started
    cpu_used = cpu.stop()
    kubectl("delete", "trainingjobs.kubetrain.io", "--all", "-n", namespace, "--wait=false",
            check=False)
    return Run(seconds=elapsed, cpu_seconds=cpu_used)


def run_case(case: str, jobs: int, namespace: str, repeat: int) -> dict[str, Any]:
    """The floor and the operator's case in turns, ``repeat`` times each; the ratio is of their
    medians (the floor alone varied 0.43-1.06 s between single runs on the 2-core machine)."""
    bodies = [CASES[case](f"bench-{i}", namespace) for i in range(jobs)]
    directs, operators = [], []
    for _ in range(repeat):
        directs.append(run_direct(namespace, bodies))
        operators.append(run_operator(namespace, bodies))
    floor = statistics.median(d.seconds for d in directs)
    operator = statistics.median(o.seconds for o in operators)
    return {"case": case, "jobs": jobs, "repeat": repeat,
            "first_children": sorted(c["kind"] for c in first_children(bodies[0])),
            "direct_client_seconds": round(floor, 2),
            "operator_seconds": round(operator, 2),
            "ratio": round(operator / floor, 2),
            "direct_client_runs_seconds": [round(d.seconds, 2) for d in directs],
            "operator_runs_seconds": [round(o.seconds, 2) for o in operators],
            "operator_jobs_with_children": min(o.jobs_with_children for o in operators),
            "operator_case_jobs_created_seconds": round(statistics.median(
                o.apply_seconds for o in operators), 2),
            "operator_peak_rss_mib": round(max(o.peak_rss_mib for o in operators), 1),
            "direct_client_cpu_seconds": _median_cpu([d.cpu_seconds for d in directs]),
            "operator_case_cpu_seconds": _median_cpu([o.cpu_seconds for o in operators])}


def _median_cpu(runs: list[dict[str, float]]) -> dict[str, float]:
    return {name: round(statistics.median(r[name] for r in runs), 2) for name in runs[0]}


def _cpu_text(used: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds}" for name, seconds in used.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--case", choices=[*CASES, "both"], default="both")
    parser.add_argument("--namespace", default="kt-bench")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of the floor and of the operator's case (medians reported)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    use_local_cluster()
    kubectl("apply", "-f", str(REPO / "crds"))
    cases = list(CASES) if args.case == "both" else [args.case]
    results = [run_case(case, args.jobs, args.namespace, args.repeat) for case in cases]
    kubectl("delete", "namespace", args.namespace, "--wait=false", check=False)
    print(f"{'case':<10}{'first children':<28}{'floor s':>9}{'operator s':>12}{'ratio':>7}"
          f"{'with children':>15}{'peak RSS MiB':>14}")
    for r in results:
        print(f"{r['case']:<10}{' '.join(r['first_children']):<28}"
              f"{r['direct_client_seconds']:>9}{r['operator_seconds']:>12}{r['ratio']:>7}"
              f"{r['operator_jobs_with_children']:>10}/{r['jobs']:<4}"
              f"{r['operator_peak_rss_mib']:>14}")
    for r in results:
        print(f"{r['case']}: floor runs {r['direct_client_runs_seconds']} s, operator runs "
              f"{r['operator_runs_seconds']} s (the table: their medians)")
        print(f"{r['case']}: CPU seconds used during the floor "
              f"{_cpu_text(r['direct_client_cpu_seconds'])}; during the operator's case "
              f"{_cpu_text(r['operator_case_cpu_seconds'])}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
