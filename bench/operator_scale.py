"""50 TrainingJobs applied at once: how long until each one's first-stage children exist?

Baseline (the floor): creating the same objects directly with the Python client (8 threads),
no operator. Measured in one run against the same API server, plus the operator's peak
memory (RSS of its process, sampled). The worker pods are created but their image is never
pulled: the benchmark measures the control plane, not training.

    python bench/operator_scale.py [--jobs 50] [--namespace kt-bench]

Needs a cluster (KUBECONFIG, or the machine's /var/lib/localk8s/env) with the CRD applicable.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from kubetrain.api import parse_training_job  # noqa: E402
from kubetrain.controller import builders  # noqa: E402
from kubetrain.pipeline.plan import plan  # noqa: E402

LOCAL_ENV = Path("/var/lib/localk8s/env")


def _env() -> None:
    if os.environ.get("KUBECONFIG") or not LOCAL_ENV.exists():
        return
    for line in LOCAL_ENV.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            os.environ[key] = value.replace("$PATH", os.environ.get("PATH", ""))


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    return subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True,
                          check=check).stdout


def manifest(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"dataset": {"builtin": "digits"},
                     "model": {"builtin": "mlp"},
                     "training": {"epochs": 1, "resources": {"cpu": "10m", "memory": "64Mi"}},
                     "storage": {"pvc": "bench-data"}}}


def _count_children(namespace: str, names: list[str]) -> int:
    """TrainingJobs whose first-stage children (training pod) exist."""
    pods = json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
    have = {p["metadata"].get("labels", {}).get(builders.LABEL_JOB) for p in pods}
    return sum(1 for n in names if n in have)


def _fresh_namespace(namespace: str) -> None:
    kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=180s", check=False)
    kubectl("create", "namespace", namespace)


def run_operator(namespace: str, jobs: int) -> dict[str, float]:
    _fresh_namespace(namespace)
    env = {**os.environ, "KUBETRAIN_WORKER_IMAGE": "kubetrain-bench-absent:0",
           "KUBETRAIN_IMAGE_PULL_POLICY": "Never", "KUBETRAIN_TIMER_SECONDS": "5"}
    operator = subprocess.Popen([sys.executable, "-m", "kubetrain.cli", "operator", "-n",
                                 namespace, "--liveness", "http://127.0.0.1:0/healthz"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                for line in Path(f"/proc/{operator.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        peak[0] = max(peak[0], int(line.split()[1]) / 1024)
            except OSError:
                return
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time.sleep(6)  # the operator is up and watching
    names = [f"bench-{i}" for i in range(jobs)]
    started = time.perf_counter()
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all([manifest(n, namespace)
                                                           for n in names]))
    applied = time.perf_counter() - started
    while _count_children(namespace, names) < jobs:
        if time.perf_counter() - started > 300:
            break
        time.sleep(0.25)
    elapsed = time.perf_counter() - started
    done = _count_children(namespace, names)
    # Delete while the operator runs, so its finalizers are cleared.
    kubectl("delete", "trainingjobs", "--all", "-n", namespace, "--wait=true",
            "--timeout=180s", check=False)
    stop.set()
    operator.terminate()
    operator.wait(timeout=30)
    return {"seconds": elapsed, "apply_seconds": applied, "jobs_with_children": done,
            "peak_rss_mib": peak[0]}


def run_direct(namespace: str, jobs: int) -> dict[str, float]:
    """The floor: the same TrainingJobs and their children, written by the Python client."""
    from kubernetes import client, config

    _fresh_namespace(namespace)
    config.load_kube_config()
    custom, core = client.CustomObjectsApi(), client.CoreV1Api()
    settings = builders.OperatorSettings(worker_image="kubetrain-bench-absent:0",
                                         image_pull_policy="Never")

    def one(i: int) -> None:
        body = manifest(f"bench-{i}", namespace)
        created = custom.create_namespaced_custom_object("kubetrain.io", "v1alpha1", namespace,
                                                         "trainingjobs", body)
        job = parse_training_job({**body, "metadata": {**body["metadata"],
                                                       "uid": created["metadata"]["uid"]}})
        unit = plan(job.spec).stages[0].units[0]
        core.create_namespaced_config_map(namespace, builders.job_config_map(job))
        for service in builders.gang_services(job, unit):
            core.create_namespaced_service(namespace, service)
        for pod in builders.gang_pods(job, unit, settings):
            core.create_namespaced_pod(namespace, pod)

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(jobs)))
    elapsed = time.perf_counter() - started
    kubectl("delete", "trainingjobs", "--all", "-n", namespace, "--wait=false", check=False)
    return {"seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--namespace", default="kt-bench")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    _env()
    kubectl("apply", "-f", str(REPO / "crds"))
    direct = run_direct(args.namespace, args.jobs)
    operator = run_operator(args.namespace, args.jobs)
    kubectl("delete", "namespace", args.namespace, "--wait=false", check=False)
    result = {"jobs": args.jobs, "direct_client_seconds": round(direct["seconds"], 2),
              "operator_seconds": round(operator["seconds"], 2),
              "ratio": round(operator["seconds"] / direct["seconds"], 2),
              "operator_jobs_with_children": operator["jobs_with_children"],
              "kubectl_apply_seconds": round(operator["apply_seconds"], 2),
              "operator_peak_rss_mib": round(operator["peak_rss_mib"], 1)}
    print(f"{'what':<44}{'value':>10}")
    print(f"{'jobs applied at once':<44}{args.jobs:>10}")
    print(f"{'direct Python client, 8 threads (floor) s':<44}{result['direct_client_seconds']:>10}")
    print(f"{'operator: until every job has its pod, s':<44}{result['operator_seconds']:>10}")
    print(f"{'ratio operator / floor':<44}{result['ratio']:>10}")
    print(f"{'operator peak RSS, MiB':<44}{result['operator_peak_rss_mib']:>10}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
