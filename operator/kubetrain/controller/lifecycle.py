"""Installation lifecycle: the Helm chart's test (`kubetrain check`) and pre-delete hook
(`kubetrain cleanup`).

cleanup deletes every TrainingJob the operator watches and waits until they are gone, while the
operator still runs: their pods go with them, and a finalizer that an earlier operator version
(with kopf timers) put on a job is removed by the running operator, so an uninstall never
leaves jobs (or namespaces) stuck in Terminating behind a stopped operator.

check is what `helm test` runs: the operator's liveness endpoint answers, its /metrics has the
kubetrain metrics, and a suspended TrainingJob created for the test is reconciled (phase
Suspended: nothing runs) and then deleted.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

from ..api.resource import API_VERSION, KIND
from . import kube
from .kube import TRAINING_JOBS, ApiError


def _jobs(api: kube.Kube, namespaces: list[str]) -> list[tuple[str, str]]:
    items = ([item for ns in namespaces for item in api.list(TRAINING_JOBS, ns)]
             if namespaces else api.list(TRAINING_JOBS))
    return [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items]


def _wait(condition: Callable[[], bool], timeout: float, interval: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def delete_training_jobs(namespaces: list[str], timeout: float,
                         log: Callable[[str], None] = print) -> int:
    """Delete the TrainingJobs in ``namespaces`` (empty: all) and wait until they are gone.

    Returns how many were deleted; raises TimeoutError naming those left after ``timeout``.
    """
    api = kube.api()
    where = ", ".join(namespaces) if namespaces else "all namespaces"
    try:
        jobs = _jobs(api, namespaces)
    except ApiError as error:
        if error.status != 404:
            raise
        log(f"no TrainingJob resource in {where} (the CRD is gone): nothing to delete")
        return 0
    log(f"{len(jobs)} TrainingJob(s) in {where}")
    for namespace, name in jobs:
        try:
            api.delete(TRAINING_JOBS, namespace, name)
            log(f"deleting {namespace}/{name}")
        except ApiError as error:
            if error.status != 404:
                raise
    left: list[tuple[str, str]] = jobs
    def gone() -> bool:
        nonlocal left
        left = _jobs(api, namespaces)
        return not left
    if not _wait(gone, timeout):
        names = ", ".join(f"{ns}/{n}" for ns, n in left)
        raise TimeoutError(f"after {timeout:.0f}s these TrainingJobs still exist: {names} "
                           "(a finalizer left on them? the running operator removes "
                           "kubetrain's)")
    log(f"all {len(jobs)} deleted")
    return len(jobs)


def _get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body.decode()


def check_installation(health_url: str, metrics_url: str | None, namespace: str | None,
                       timeout: float, log: Callable[[str], None] = print) -> list[str]:
    """Problems found with a running installation (empty: it works)."""
    problems: list[str] = []
    try:
        _get(health_url)
        log(f"ok: liveness endpoint {health_url}")
    except OSError as error:
        problems.append(f"liveness endpoint {health_url}: {error}")
    if metrics_url:
        try:
            text = _get(metrics_url)
            missing = [m for m in ("kubetrain_trainingjobs", "kubetrain_reconciles_total",
                                   "kubetrain_reconcile_errors_total") if m not in text]
            if missing:
                problems.append(f"metrics {metrics_url}: missing {', '.join(missing)}")
            else:
                log(f"ok: metrics endpoint {metrics_url}")
        except OSError as error:
            problems.append(f"metrics endpoint {metrics_url}: {error}")
    if namespace:
        problems += _check_reconcile(namespace, timeout, log)
    return problems


def _check_reconcile(namespace: str, timeout: float, log: Callable[[str], None]) -> list[str]:
    """A suspended TrainingJob must reach phase Suspended, then be deleted cleanly."""
    api = kube.api()
    name = f"kubetrain-check-{uuid.uuid4().hex[:6]}"
    body: dict[str, Any] = {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "check"}},
        "spec": {"dataset": {"builtin": "iris"}, "model": {"builtin": "mlp"},
                 "training": {"epochs": 1},
                 # the claim is never mounted: a suspended job starts no pods
                 "storage": {"pvc": "kubetrain-check"},
                 "runPolicy": {"suspend": True}},
    }
    api.create(TRAINING_JOBS, namespace, body)
    problems = []
    phase: str | None = None

    def suspended() -> bool:
        nonlocal phase
        obj: Any = api.get(TRAINING_JOBS, namespace, name)
        phase = (obj.get("status") or {}).get("phase")
        return phase == "Suspended"

    if _wait(suspended, timeout):
        log(f"ok: TrainingJob {namespace}/{name} reconciled (phase Suspended)")
    else:
        problems.append(f"TrainingJob {namespace}/{name} not reconciled within {timeout:.0f}s "
                        f"(phase {phase!r}, expected 'Suspended'): is {namespace} watched?")
    api.delete(TRAINING_JOBS, namespace, name)

    def deleted() -> bool:
        try:
            api.get(TRAINING_JOBS, namespace, name)
        except ApiError as error:
            if error.status == 404:
                return True
            raise
        return False

    if _wait(deleted, timeout):
        log(f"ok: TrainingJob {namespace}/{name} deleted")
    else:
        problems.append(f"TrainingJob {namespace}/{name} still exists {timeout:.0f}s after "
                        "its deletion (held by a finalizer? see its metadata.finalizers)")
    return problems
