"""Installing kubetrain as a user does, on the real cluster (the images, not the repo's code).

Helm: `helm install`, `kubectl apply -f examples/digits.yaml` until Succeeded with findings
(the acceptance run: every stage, the sweep's best parameters in the final training), the
metrics, `helm test`, `helm uninstall`, and nothing of kubetrain left. Then `kubectl apply -f
manifests/` (the same chart rendered with its defaults) running a small job, and `kubectl
delete -f manifests/`.

Both images must be in the cluster and current (`make test` runs hack/build-images.sh, which
rebuilds an image whose sources changed). The operator runs from its image with the chart's
defaults; only the pull policy is Never, so a missing image fails fast instead of pulling.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from k8s import (
    REPO,
    WORKER_IMAGE,
    apply_job,
    check_image,
    earlier_operator_job,
    get_json,
    kubectl,
    release_training_jobs,
    small_job,
    wait_for,
    wait_phase,
)
from support import helm, tool

pytestmark = pytest.mark.cluster
SYSTEM = "kubetrain-system"  # the plain manifests' namespace; the Helm release's here too
OPERATOR_IMAGE = WORKER_IMAGE.replace("worker", "operator")
HELM = tool("helm")
LABEL = "app.kubernetes.io/part-of=kubetrain"
CRD = "trainingjobs.kubetrain.io"


def _remove_installation() -> None:
    """Whatever an interrupted run left: the release or the plain install (jobs first)."""
    if HELM and "kubetrain" in helm("list", "-n", SYSTEM, "-q", check=False).stdout.split():
        helm("uninstall", "kubetrain", "-n", SYSTEM, "--wait", "--timeout", "3m", check=False)
    if kubectl("get", "deployment", "kubetrain", "-n", SYSTEM, check=False).returncode == 0:
        kubectl("delete", "trainingjobs", "--all", "-A", "--timeout=120s", check=False,
                timeout=150)
    release_training_jobs(None)  # no operator is left to clear their finalizers
    kubectl("delete", "clusterroles,clusterrolebindings", "-l", LABEL, check=False)
    kubectl("delete", "namespace", SYSTEM, "--ignore-not-found", "--wait=false", check=False)
    wait_for(lambda: kubectl("get", "namespace", SYSTEM, check=False).returncode != 0, 180,
             f"namespace {SYSTEM} to go")
    _ensure_crd()


def _ensure_crd() -> None:
    """The CRD back (the other cluster tests need it), once a deletion of it has finished."""
    def settled() -> bool:
        found = kubectl("get", "crd", CRD, "-o", "json", check=False)
        return found.returncode != 0 or "deletionTimestamp" not in json.loads(
            found.stdout)["metadata"]

    wait_for(settled, 120, f"the deletion of {CRD} to finish")
    kubectl("apply", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", f"crd/{CRD}")


@pytest.fixture
def clean_cluster(cluster: dict[str, str]) -> Iterator[None]:
    if HELM is None:
        pytest.skip("helm not found (hack/local-cluster.sh up installs it)")
    check_image(OPERATOR_IMAGE, ["kubetrain", "--version"], "hack/build-images.sh operator")
    _remove_installation()
    yield
    _remove_installation()


def _run_digits(namespace: str) -> dict[str, Any]:
    """examples/digits.yaml as the README says, until it succeeds with its findings."""
    kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "digits.yaml"))
    status = wait_phase(namespace, "digits", ("Succeeded", "Failed"), timeout=900)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    assert {name: stage["phase"] for name, stage in status["stages"].items()} == {
        "augmentation": "Succeeded", "tuning": "Succeeded", "training": "Succeeded",
        "explanation": "Succeeded"}
    findings = status["findings"]
    assert findings["overfitting"]["verdict"] == "none"  # as the README says
    assert findings["cost"]["total"] > 0 and findings["cost"]["currency"] == "USD"
    assert set(findings["cost"]["byStage"]) == {"augmentation", "tuning", "training",
                                                "explanation"}
    assert status["training"]["testMetrics"]["test_accuracy"] >= 0.95
    assert status["augmentation"]["added"] > 0
    assert findings["explanation"]["completenessError"] < 0.05
    best = status["tuning"]["best"]
    assert status["tuning"]["trials"]["total"] == 6 and best["params"]
    # The final training ran with the sweep's best parameters.
    train_pod = get_json("pods", "digits-train-0", "-n", namespace)
    command = train_pod["spec"]["containers"][0]["command"]
    assert json.loads(command[command.index("--params") + 1]) == best["params"]
    return status


def _operator_logs() -> str:
    return kubectl("logs", "-n", SYSTEM, "deployment/kubetrain", check=False).stdout


# An HTTP 403 as the Kubernetes client and kopf print it ("(403)", "403 Forbidden",
# "status=403"), not the digits of a log line's milliseconds ("11:42:34,403").
_REFUSED = re.compile(r"Forbidden|(?<![,.\d])403(?!\d)")


def _refusals(logs: str) -> list[str]:
    """The operator's log lines that say the API server refused it a right."""
    return [line for line in logs.splitlines() if _REFUSED.search(line)]


def _operator_pod() -> str | None:
    pods = get_json("pods", "-n", SYSTEM, "-l", "app.kubernetes.io/component=operator")
    running = [p["metadata"]["name"] for p in pods.get("items", [])
               if p["status"].get("phase") == "Running" and not p["metadata"].get(
                   "deletionTimestamp")]
    return running[0] if len(running) == 1 else None


def _metrics() -> str:
    return kubectl("get", "--raw", f"/api/v1/namespaces/{SYSTEM}/services/"
                   "kubetrain:metrics/proxy/metrics").stdout


def _leftovers(namespace: str) -> list[str]:
    """What of kubetrain is still in the cluster (the CRD aside)."""
    crd = kubectl("get", "crd", CRD, check=False).returncode == 0
    left = [f"TrainingJob {i['metadata']['namespace']}/{i['metadata']['name']}"
            for i in (get_json("trainingjobs", "-A").get("items", []) if crd else [])]
    for kind in ("pods", "jobs", "services", "configmaps"):
        for item in get_json(kind, "-n", namespace, "-l", "kubetrain.io/job").get("items", []):
            left.append(f"{kind} {namespace}/{item['metadata']['name']}")
    for kind in ("pods", "jobs", "services", "configmaps", "serviceaccounts", "roles",
                 "rolebindings", "deployments", "leases"):
        for item in get_json(kind, "-n", SYSTEM).get("items", []) if kubectl(
                "get", "namespace", SYSTEM, check=False).returncode == 0 else []:
            name = item["metadata"]["name"]
            if name not in ("kube-root-ca.crt", "default") and not name.startswith("default-"):
                left.append(f"{kind} {SYSTEM}/{name}")
    for kind in ("clusterroles", "clusterrolebindings"):
        left += [f"{kind} {i['metadata']['name']}"
                 for i in get_json(kind, "-l", LABEL).get("items", [])]
    return left


def _assert_nothing_left(namespace: str) -> None:
    left: list[str] = []

    def clean() -> bool:
        nonlocal left
        left = _leftovers(namespace)
        return not left

    try:
        wait_for(clean, 120, "kubetrain's objects to go")
    except AssertionError:
        raise AssertionError(f"left behind: {left}") from None


def test_helm_install_run_test_uninstall(clean_cluster: None, namespace: str) -> None:
    helm("install", "kubetrain", str(REPO / "charts" / "kubetrain"), "-n", SYSTEM,
         "--create-namespace", "--wait", "--timeout", "3m",
         "--set", "image.pullPolicy=Never", "--set", "worker.image.pullPolicy=Never")
    status = _run_digits(namespace)
    assert status["training"]["epoch"] >= 1

    metrics = _metrics()
    assert 'kubetrain_trainingjobs{phase="Succeeded"} 1.0' in metrics
    for stage in ("augmentation", "tuning", "training", "explanation"):
        assert (f'kubetrain_stage_duration_seconds_count{{result="Succeeded",stage="{stage}"}}'
                " 1.0") in metrics, stage

    tested = helm("test", "kubetrain", "-n", SYSTEM, "--logs")
    assert "reconciled (phase Suspended)" in tested.stdout, tested.stdout
    logs = _operator_logs()
    assert not _refusals(logs), _refusals(logs)

    # A job with an earlier operator version's finalizer, applied just before the uninstall:
    # the README says the uninstall clears it too.
    apply_job(namespace, earlier_operator_job("upgraded"))
    helm("uninstall", "kubetrain", "-n", SYSTEM, "--wait", "--timeout", "5m")
    _assert_nothing_left(namespace)


def test_kubectl_apply_and_delete_plain_manifests(clean_cluster: None, namespace: str) -> None:
    manifests = REPO / "manifests"
    kubectl("apply", "-f", str(manifests))
    kubectl("rollout", "status", "-n", SYSTEM, "deployment/kubetrain", "--timeout=180s",
            timeout=200)
    # A small job: the helm test above runs the whole digits example on the same image and
    # chart; this one shows the rendered manifests install a working operator.
    apply_job(namespace, small_job("plain"))
    status = wait_phase(namespace, "plain", ("Succeeded", "Failed"), timeout=300)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    assert status["findings"]["cost"]["total"] > 0
    assert 'kubetrain_trainingjobs{phase="Succeeded"} 1.0' in _metrics()
    refusals = _refusals(_operator_logs())
    assert not refusals, refusals

    # the README's uninstall: the TrainingJobs while the operator runs, then the manifests
    kubectl("delete", "trainingjobs", "--all", "-A", "--wait", "--timeout=120s", timeout=150)
    kubectl("delete", "-f", str(manifests), "--wait", "--timeout=180s", timeout=200)
    _assert_nothing_left(namespace)
    assert kubectl("get", "crd", CRD, check=False).returncode != 0  # delete -f took it too
    _ensure_crd()


def test_helm_namespaced_scope_has_no_cluster_rights(clean_cluster: None, namespace: str) -> None:
    """rbac.scope=namespaced: Roles in the watched namespace only, and the operator works with
    them (helm test reconciles its TrainingJob there); other namespaces are left alone."""
    helm("install", "kubetrain", str(REPO / "charts" / "kubetrain"), "-n", SYSTEM,
         "--create-namespace", "--wait", "--timeout", "3m",
         "--set", "image.pullPolicy=Never", "--set", "worker.image.pullPolicy=Never",
         "--set", "rbac.scope=namespaced", "--set", f"watchNamespaces={{{namespace}}}")
    assert not get_json("clusterroles,clusterrolebindings", "-l", LABEL).get("items")
    assert [r["metadata"]["name"] for r in get_json("roles", "-n", namespace)["items"]] == [
        "kubetrain"]
    tested = helm("test", "kubetrain", "-n", SYSTEM, "--logs")
    assert f"TrainingJob {namespace}/" in tested.stdout and "reconciled" in tested.stdout

    # the README's upgrade: the CRD first, then the release; a new setting restarts the pod
    before = _operator_pod()
    kubectl("apply", "-f", str(REPO / "charts" / "kubetrain" / "crds"))
    helm("upgrade", "kubetrain", str(REPO / "charts" / "kubetrain"), "-n", SYSTEM,
         "--reuse-values", "--set-json", "config.timerSeconds=3", "--wait", "--timeout", "3m")
    config = get_json("configmap", "kubetrain-config", "-n", SYSTEM)["data"]["config.yaml"]
    assert "timerSeconds: 3" in config
    wait_for(lambda: _operator_pod() not in (None, before), 120, "the upgraded operator pod")

    # a job outside the watched namespaces gets no status from this operator
    other = {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
             "metadata": {"name": "unwatched", "namespace": SYSTEM},
             "spec": {"dataset": {"builtin": "iris"}, "model": {"builtin": "mlp"},
                      "storage": {"pvc": "none"}, "runPolicy": {"suspend": True}}}
    kubectl("apply", "-f", "-", input=yaml.safe_dump(other))
    inside = {**other, "metadata": {"name": "watched", "namespace": namespace}}
    kubectl("apply", "-f", "-", input=yaml.safe_dump(inside))
    wait_phase(namespace, "watched", ("Suspended",), timeout=60)
    assert not get_json("trainingjob", "unwatched", "-n", SYSTEM).get("status")
    logs = _operator_logs()
    assert not _refusals(logs), _refusals(logs)
    kubectl("delete", "trainingjob", "unwatched", "-n", SYSTEM)

    helm("uninstall", "kubetrain", "-n", SYSTEM, "--wait", "--timeout", "5m")
    _assert_nothing_left(namespace)


def _lease_holder() -> str | None:
    found = kubectl("get", "lease", "kubetrain", "-n", SYSTEM, "-o", "json", check=False)
    holder = json.loads(found.stdout)["spec"].get("holderIdentity") if found.returncode == 0 \
        else None
    return str(holder) if holder else None


def test_helm_two_replicas_standby_takes_over(clean_cluster: None, namespace: str) -> None:
    """replicas=2: one pod holds the Lease, the other stands by (Ready, answering /healthz);
    the active pod killed (deleted with no grace), another replica takes over and reconciles; helm
    test passes through the Service (either pod); uninstall leaves no Lease behind."""
    helm("install", "kubetrain", str(REPO / "charts" / "kubetrain"), "-n", SYSTEM,
         "--create-namespace", "--wait", "--timeout", "3m", "--set", "replicas=2",
         "--set", "image.pullPolicy=Never", "--set", "worker.image.pullPolicy=Never")
    pods = {p["metadata"]["name"] for p in get_json(
        "pods", "-n", SYSTEM, "-l", "app.kubernetes.io/component=operator")["items"]}
    active = wait_for(_lease_holder, 60, "a Lease holder")
    assert len(pods) == 2 and active in pods
    (waiting,) = pods - {active}
    assert "standing by" in kubectl("logs", "-n", SYSTEM, waiting).stdout
    killed_at = time.time()
    kubectl("delete", "pod", active, "-n", SYSTEM, "--grace-period=0", "--force",
            "--wait=false")
    # Deleting the holder's pod deletes its Lease (owned by the pod): the waiting replica or the
    # Deployment's replacement pod, whichever writes first, takes it; never the deleted one.
    standby = wait_for(lambda: (h := _lease_holder()) not in (None, active) and h, 60,
                       "another replica to take the Lease", interval=0.5)
    gap = time.time() - killed_at
    job = {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
           "metadata": {"name": "after-takeover", "namespace": namespace},
           "spec": {"dataset": {"builtin": "iris"}, "model": {"builtin": "mlp"},
                    "storage": {"pvc": "none"}, "runPolicy": {"suspend": True}}}
    kubectl("apply", "-f", "-", input=yaml.safe_dump(job))
    wait_phase(namespace, "after-takeover", ("Suspended",), timeout=60)
    reconciled = time.time() - killed_at
    tested = helm("test", "kubetrain", "-n", SYSTEM, "--logs")
    assert "reconciled (phase Suspended)" in tested.stdout, tested.stdout
    kubectl("delete", "trainingjob", "after-takeover", "-n", namespace)
    print(f"\nhelm replicas=2: {standby} took the Lease {gap:.1f}s after the active "
          f"pod was force-deleted; a new job reconciled {reconciled:.1f}s after")
    helm("uninstall", "kubetrain", "-n", SYSTEM, "--wait", "--timeout", "5m")
    _assert_nothing_left(namespace)
