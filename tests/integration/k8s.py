"""Helpers and fixtures for the operator tests against a real Kubernetes API server.

Cluster: $KUBECONFIG, else the machine's local cluster (/var/lib/localk8s/env, as started by
hack/local-cluster.sh or ../shared/localk8s/up.sh). Worker image: built and loaded by
hack/build-images.sh. `make test` starts (or finds) the cluster and builds the images that are
missing or stale (hack/test-cluster.sh). Without either, these tests are skipped with the reason;
with KUBETRAIN_REQUIRE_CLUSTER=1 (.ci/run on CI with a cluster) such a skip fails (conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import cluster_env

REPO = Path(__file__).resolve().parents[2]
HOST_STORAGE = Path("/var/lib/kubetrain-test")


def _cluster_env() -> dict[str, str] | None:
    """KUBECONFIG as given, else the cluster hack/local-cluster.sh started (or found)."""
    env = cluster_env()
    if not env.get("KUBECONFIG") or not shutil.which("kubectl", path=env.get("PATH")):
        return None
    return env


def _version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    return next(line.split('"')[1] for line in text.splitlines() if line.startswith("version"))


WORKER_IMAGE = f"kubetrain-worker:{_version()}"


def check_image(image: str, command: list[str], build: str) -> None:
    """Skip (with the command that fixes it) when the cluster cannot run ``image``."""
    name = f"kubetrain-image-check-{uuid.uuid4().hex[:6]}"
    kubectl("run", name, "-n", "default", f"--image={image}", "--restart=Never",
            "--image-pull-policy=Never", "--command", "--", *command)
    try:
        def state() -> str | None:
            pod = get_json("pod", name, "-n", "default")
            phase = pod["status"].get("phase")
            if phase in ("Succeeded", "Failed"):
                return str(phase)
            for container in pod["status"].get("containerStatuses") or []:
                waiting = (container.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in ("ErrImageNeverPull", "ErrImagePull",
                                             "InvalidImageName"):
                    return str(waiting["reason"])
            return None

        outcome = wait_for(state, 180, f"the {image} check pod")
    finally:
        kubectl("delete", "pod", name, "-n", "default", "--wait=false", check=False)
    if outcome != "Succeeded":
        pytest.skip(f"the cluster has no usable {image} ({outcome}): run {build}")


def release_training_jobs(namespace: str | None) -> None:
    """Strip the finalizers of the TrainingJobs in ``namespace`` (None: all), for when no
    operator is left to clear them. No CRD (an install test deleted it): nothing to do."""
    where = ["-n", namespace] if namespace else ["-A"]
    listed = kubectl("get", "trainingjobs", *where, "-o", "json", check=False)
    for job in yaml.safe_load(listed.stdout)["items"] if listed.returncode == 0 else []:
        kubectl("patch", "trainingjob", job["metadata"]["name"], "-n",
                job["metadata"]["namespace"], "--type=merge", "-p",
                '{"metadata":{"finalizers":[]}}', check=False)


def _remove_stale_namespaces() -> None:
    """Namespaces an interrupted earlier run left behind: their pods hold the node's CPUs."""
    for item in get_json("namespaces").get("items", []):
        name = item["metadata"]["name"]
        if not name.startswith("kt-") or item["status"].get("phase") == "Terminating":
            continue
        release_training_jobs(name)
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def _wait_for_served_schema(env: dict[str, str]) -> None:
    """An updated CRD is Established at once (the old one was), but the API server validates
    with its new schema a moment later: wait until it accepts every example (server dry run)."""
    examples = [str(p) for p in sorted((REPO / "examples").glob("*.yaml"))]
    deadline = time.time() + 60
    while True:
        dry = subprocess.run(["kubectl", "apply", "--dry-run=server", "-n", "default",
                              *[arg for path in examples for arg in ("-f", path)]],
                             capture_output=True, text=True, env=env)
        if dry.returncode == 0:
            return
        if time.time() > deadline:
            raise AssertionError(f"the examples do not pass the served CRD schema: {dry.stderr}")
        time.sleep(1)


@pytest.fixture(scope="session")
def cluster() -> Iterator[dict[str, str]]:
    env = _cluster_env()
    if env is None:
        pytest.skip("no Kubernetes cluster: set KUBECONFIG or run hack/local-cluster.sh up")
    probe = subprocess.run(["kubectl", "get", "--raw", "/readyz"], env=env,
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"Kubernetes API not reachable: {probe.stderr.strip()[:200]}")
    os.environ["KUBECONFIG"] = env["KUBECONFIG"]
    os.environ["PATH"] = env["PATH"]
    check_image(WORKER_IMAGE, ["python", "-c", "import kubetrain"],
                "hack/build-images.sh worker")
    subprocess.run(["kubectl", "apply", "-f", str(REPO / "crds")], check=True,
                   capture_output=True, env=env)
    subprocess.run(["kubectl", "wait", "--for=condition=Established", "--timeout=60s",
                    "crd/trainingjobs.kubetrain.io"], check=True, capture_output=True, env=env)
    _wait_for_served_schema(env)
    _remove_stale_namespaces()
    yield env


def kubectl(*args: str, input: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True,
                          check=check, timeout=timeout)


def get_json(*args: str) -> Any:
    return yaml.safe_load(kubectl("get", *args, "-o", "json").stdout)


@pytest.fixture
def namespace(cluster: dict[str, str]) -> Iterator[str]:
    """A namespace with the PVC of examples/storage/ on a hostPath volume, removed afterwards.

    The volume is pre-bound to that claim (claimRef), so it cannot go to another test's.
    """
    name = f"kt-{uuid.uuid4().hex[:8]}"
    host = HOST_STORAGE / name
    host.mkdir(parents=True, exist_ok=True)
    host.chmod(0o777)  # pods run as uid 1000; a hostPath volume ignores fsGroup
    kubectl("create", "namespace", name)
    volume = {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": f"{name}-data", "labels": {"kubetrain-test": name}},
        "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteMany"],
                 "persistentVolumeReclaimPolicy": "Retain",
                 "claimRef": {"namespace": name, "name": "kubetrain-data"},
                 "hostPath": {"path": str(host), "type": "Directory"}},
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(volume))
    kubectl("apply", "-n", name, "-f", str(REPO / "examples" / "storage" / "kubetrain-data.yaml"))
    yield name
    # TrainingJobs first, while an operator may still clear finalizers; then strip any left.
    kubectl("delete", "trainingjobs", "--all", "-n", name, "--wait=false", check=False)
    release_training_jobs(name)
    kubectl("delete", "namespace", name, "--wait=false", check=False)
    kubectl("delete", "pv", f"{name}-data", "--wait=false", check=False)
    shutil.rmtree(host, ignore_errors=True)


@contextlib.contextmanager
def operator_env(namespace: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("KUBETRAIN_WORKER_IMAGE", "KUBETRAIN_DEFAULT_PVC",
                                            "KUBETRAIN_IMAGE_PULL_POLICY",
                                            "KUBETRAIN_TIMER_SECONDS",
                                            "KUBETRAIN_DEV_SOURCE",
                                            "KUBETRAIN_METRICS_PORT")}
    os.environ.update({"KUBETRAIN_WORKER_IMAGE": WORKER_IMAGE,
                       "KUBETRAIN_DEFAULT_PVC": "kubetrain-data",
                       "KUBETRAIN_IMAGE_PULL_POLICY": "Never",
                       # The code under test, mounted over the image's copy (one-node cluster).
                       "KUBETRAIN_DEV_SOURCE": str(REPO / "operator"),
                       "KUBETRAIN_TIMER_SECONDS": "3",
                       # the in-process operators serve no metrics (test_install.py reads
                       # those of the installed operator)
                       "KUBETRAIN_METRICS_PORT": "0"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_operator(namespace: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """The operator as its own process (`kubetrain operator`), for tests that kill it; its
    output appended to ``log`` when given (for the failure's story), else discarded."""
    with operator_env(namespace):
        env = dict(os.environ)
    out: Any = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "kubetrain.cli", "operator", "-n", namespace,
             "--liveness", "http://127.0.0.1:0/healthz"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log is not None:
            out.close()


@pytest.fixture
def operator(namespace: str) -> Iterator[Any]:
    """The operator in-process (kopf's KopfRunner), watching only the test's namespace."""
    from kopf.testing import KopfRunner

    with operator_env(namespace), KopfRunner(
        ["run", "--standalone", "-n", namespace, "-m", "kubetrain.controller.handlers"],
    ) as runner:
        yield runner


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 2.0) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_for_events(namespace: str, name: str, wanted: set[tuple[str, str]],
                    timeout: float = 30) -> list[dict[str, Any]]:
    """The Events about ``name`` once those of the wanted (type, reason) are all there: the
    operator posts a reconcile's Events once reconciles pause for a second (posting.py), so
    the last ones come shortly after the status that they go with."""
    def found() -> list[dict[str, Any]] | None:
        events: list[dict[str, Any]] = get_json(
            "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")[
            "items"]
        return events if wanted <= {(e["type"], e["reason"]) for e in events} else None
    result: list[dict[str, Any]] = wait_for(found, timeout, f"the Events {sorted(wanted)}",
                                            interval=1)
    return result


def apply_job(namespace: str, manifest: dict[str, Any]) -> None:
    manifest = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
    kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


def job_status(namespace: str, name: str) -> dict[str, Any]:
    result = kubectl("get", "trainingjob", name, "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        return {}
    status: dict[str, Any] = yaml.safe_load(result.stdout).get("status") or {}
    return status


def wait_phase(namespace: str, name: str, phases: tuple[str, ...], timeout: float) -> dict[
        str, Any]:
    status: dict[str, Any] = wait_for(
        lambda: (s := job_status(namespace, name)).get("phase") in phases and s,
        timeout, f"{name} to reach {phases}")
    return status


def small_job(name: str, **spec: Any) -> dict[str, Any]:
    """A small digits job that trains in well under a minute on 2 cores."""
    body: dict[str, Any] = {
        "dataset": {"builtin": "digits"},
        "model": {"builtin": "mlp", "params": {"hiddenUnits": [64]}},
        "training": {"epochs": 6, "batchSize": 64, "learningRate": 0.003,
                     "resources": {"cpu": "500m", "memory": "1Gi"}},
    }
    body.update(spec)
    return {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name}, "spec": body}


def earlier_operator_job(name: str) -> dict[str, Any]:
    """A suspended small job carrying the finalizer an earlier operator version (kopf timers)
    put on every job; the current operator removes it, and so does the uninstall."""
    manifest = small_job(name, runPolicy={"suspend": True})
    manifest["metadata"]["finalizers"] = ["kubetrain.io/finalizer"]
    return manifest
