"""Many tiny real TrainingJobs through the operator's queue: does the pool stay full, never over?

All jobs are applied at once to an operator started with ``KUBETRAIN_MAX_RUNNING_JOBS=LIMIT``.
Each job trains the digits MLP for one epoch in a real worker pod. Measured in the same run:

- the most jobs running at once, three ways: status snapshots (phase Running), the jobs' own
  [startTime, completionTime) spans, and their training pods' [created, finished) lives;
- the total time (first creation to last completion) against the ideal: the sum of the jobs'
  own times (startTime to completionTime, as measured in this run) / LIMIT, i.e. a pool kept
  full with no gap between one job's end and the next one's start;
- the mean gap: from a job's completion to the next admission (the queue's own delay).

    python bench/job_queue.py [--jobs 200] [--limit 4] [--timer 5] [--json FILE]

Needs the machine's cluster (/var/lib/localk8s/env, or KUBECONFIG) with the worker image, and
the cluster lock held around it: ``flock /tmp/kubetrain-cluster.lock python bench/job_queue.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_scale import REPO, kubectl, use_local_cluster

HOST_STORAGE = Path("/var/lib/kubetrain-test")


def _version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    return next(line.split('"')[1] for line in text.splitlines() if line.startswith("version"))


def manifest(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"dataset": {"builtin": "digits"},
                     "model": {"builtin": "mlp", "params": {"hiddenUnits": [32]}},
                     "training": {"epochs": 1, "batchSize": 64,
                                  "resources": {"cpu": "100m", "memory": "768Mi"}}}}


def seconds(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most half-open [start, end) intervals that overlap at one moment."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


@dataclass
class Summary:
    jobs: int
    limit: int
    succeeded: int
    most_running_status: int
    most_running_spans: int
    most_running_pods: int
    total_seconds: float
    job_seconds_sum: float
    ideal_seconds: float
    ratio: float
    mean_gap_seconds: float


def summarize(statuses: dict[str, dict[str, Any]], pod_lives: list[tuple[float, float]],
              most_running_status: int, created: float, limit: int) -> Summary:
    """The figures from the final statuses, the training pods and the snapshots' maximum."""
    done = {n: s for n, s in statuses.items() if s.get("startTime") and s.get("completionTime")}
    spans = sorted((seconds(s["startTime"]), seconds(s["completionTime"])) for s in done.values())
    job_sum = sum(end - start for start, end in spans)
    total = max((end for _, end in spans), default=created) - created
    ideal = job_sum / limit
    # Each admission after the first LIMIT follows a completion: the wait from the k-th
    # completion to the (LIMIT + k)-th start is what the queue itself adds.
    starts = sorted(start for start, _ in spans)
    ends = sorted(end for _, end in spans)
    gaps = [max(0.0, start - end) for start, end in zip(starts[limit:], ends, strict=False)]
    return Summary(jobs=len(statuses), limit=limit,
                   succeeded=sum(s.get("phase") == "Succeeded" for s in statuses.values()),
                   most_running_status=most_running_status,
                   most_running_spans=most_at_once(spans),
                   most_running_pods=most_at_once(pod_lives),
                   total_seconds=round(total, 1), job_seconds_sum=round(job_sum, 1),
                   ideal_seconds=round(ideal, 1),
                   ratio=round(total / ideal, 3) if ideal else float("nan"),
                   mean_gap_seconds=round(sum(gaps) / len(gaps), 2) if gaps else 0.0)


def _prepare(namespace: str) -> None:
    """A fresh namespace with the claim kubetrain-data on a hostPath volume (as the tests)."""
    kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=180s", check=False)
    kubectl("delete", "pv", f"{namespace}-data", "--wait=true", check=False)
    host = HOST_STORAGE / namespace
    shutil.rmtree(host, ignore_errors=True)
    host.mkdir(parents=True, exist_ok=True)
    host.chmod(0o777)
    kubectl("create", "namespace", namespace)
    volume = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": f"{namespace}-data"},
              "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteMany"],
                       "persistentVolumeReclaimPolicy": "Retain",
                       "claimRef": {"namespace": namespace, "name": "kubetrain-data"},
                       "hostPath": {"path": str(host), "type": "Directory"}}}
    kubectl("apply", "-f", "-", input=yaml.safe_dump(volume))
    kubectl("apply", "-n", namespace, "-f",
            str(REPO / "examples" / "storage" / "kubetrain-data.yaml"))


def _cleanup(namespace: str, operator: subprocess.Popen[bytes]) -> None:
    kubectl("delete", "trainingjobs.kubetrain.io", "--all", "-n", namespace, "--wait=false",
            check=False)
    os.killpg(operator.pid, signal.SIGKILL)
    operator.wait()
    kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    kubectl("delete", "pv", f"{namespace}-data", "--wait=false", check=False)
    shutil.rmtree(HOST_STORAGE / namespace, ignore_errors=True)


def run(jobs: int, limit: int, timer: float, namespace: str, timeout: float) -> Summary:
    # This checkout's CRD (phase Queued, status.queue): another one refuses the queue's status.
    kubectl("apply", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            "crd/trainingjobs.kubetrain.io")
    _prepare(namespace)
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator"),
           "KUBETRAIN_WORKER_IMAGE": f"kubetrain-worker:{_version()}",
           "KUBETRAIN_IMAGE_PULL_POLICY": "Never", "KUBETRAIN_DEFAULT_PVC": "kubetrain-data",
           "KUBETRAIN_DEV_SOURCE": str(REPO / "operator"), "KUBETRAIN_METRICS_PORT": "0",
           "KUBETRAIN_TIMER_SECONDS": str(timer), "KUBETRAIN_MAX_RUNNING_JOBS": str(limit)}
    operator = subprocess.Popen([sys.executable, "-m", "kubetrain.cli", "operator", "-n",
                                 namespace, "--liveness", "http://127.0.0.1:0/healthz"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        time.sleep(3)
        names = [f"q{i:03d}" for i in range(jobs)]
        created = time.time()
        kubectl("apply", "-f", "-", input=yaml.safe_dump_all(
            [manifest(n, namespace) for n in names]))
        most_running, deadline = 0, time.time() + timeout
        while True:
            items = json.loads(kubectl("get", "tj", "-n", namespace, "-o", "json"))["items"]
            statuses = {j["metadata"]["name"]: j.get("status") or {} for j in items}
            phases = [s.get("phase") for s in statuses.values()]
            most_running = max(most_running, phases.count("Running"))
            finished = sum(p in ("Succeeded", "Failed") for p in phases)
            print(f"{time.time() - created:6.0f}s  running {phases.count('Running')}  queued "
                  f"{phases.count('Queued')}  finished {finished}/{jobs}", file=sys.stderr)
            if finished == jobs or time.time() > deadline:
                break
            time.sleep(2)
        pods = json.loads(kubectl("get", "pods", "-n", namespace, "-l",
                                  "kubetrain.io/stage=training", "-o", "json"))["items"]
        lives = []
        for pod in pods:
            state = (pod["status"].get("containerStatuses") or [{}])[0].get("state") or {}
            end = (state.get("terminated") or {}).get("finishedAt")
            lives.append((seconds(pod["metadata"]["creationTimestamp"]),
                          seconds(end) if end else time.time()))
        return summarize(statuses, lives, most_running, created, limit)
    finally:
        _cleanup(namespace, operator)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--timer", type=float, default=5.0,
                        help="the operator's timerSeconds (the chart's default: 5)")
    parser.add_argument("--namespace", default="kt-bench-queue")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.limit < 1:
        parser.error("--jobs and --limit must be at least 1")
    use_local_cluster()
    summary = run(args.jobs, args.limit, args.timer, args.namespace, args.timeout)
    print(json.dumps(asdict(summary), indent=2))
    if args.json:
        args.json.write_text(json.dumps(asdict(summary), indent=2))
    ok = summary.succeeded == args.jobs and max(
        summary.most_running_status, summary.most_running_spans,
        summary.most_running_pods) <= args.limit
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
