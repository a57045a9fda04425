"""What each request a new TrainingJob costs takes of the API server's CPU.

The 50-job burst (``operator_scale.py``) stops near 2x its floor on the 2-core machine because
the API server is the bottleneck there; this measures why, per request kind, sent ``--jobs``
times from 8 threads against the local cluster (the API server's process is found by name):
the floor's three creates (the TrainingJob, its ConfigMap, its first pod), the one write only
the operator makes on the way (its first status PATCH), and an Event. (Until the operator ran
its own periodic pass, kopf's timer also put its finalizer on every job: a PATCH that cost
4.6-11 ms here, more than a Pod's create; bench/README.md.)

    python bench/api_request_costs.py [--jobs 50] [--case training|digits|both] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from operator_scale import (
    CASES,
    REPO,
    clients,
    cpu_seconds,
    first_children,
    first_decision,
    fresh_namespace,
    kubectl,
    pid_of,
    use_local_cluster,
)


def first_status(body: dict[str, Any]) -> dict[str, Any]:
    """The status the operator's first reconcile writes (as JSON, kopf's state aside)."""
    status = first_decision(body).status
    return {"status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}


def request_costs(case: str, jobs: int, namespace: str) -> dict[str, float]:
    """The API server's CPU milliseconds per request of each kind a new job costs, each kind
    sent ``jobs`` times from 8 threads: the floor's three creates, and the write only the
    operator makes on the way (the status PATCH). Events besides."""
    fresh_namespace(namespace)
    custom, core = clients()
    api_server = pid_of("kube-apiserver")
    if api_server is None:
        raise SystemExit("needs the API server's process on this machine (a local cluster)")
    bodies = [CASES[case](f"bench-{i}", namespace) for i in range(jobs)]
    uids: dict[str, str] = {}
    group = ("kubetrain.io", "v1alpha1", namespace, "trainingjobs")

    def create_job(body: dict[str, Any]) -> None:
        uids[body["metadata"]["name"]] = custom.create_namespaced_custom_object(
            *group, body)["metadata"]["uid"]

    def child(kind: str) -> Callable[[dict[str, Any]], None]:
        create = {"Pod": core.create_namespaced_pod, "ConfigMap": core.create_namespaced_config_map}

        def one(body: dict[str, Any]) -> None:
            name = body["metadata"]["name"]
            for made in first_children(body, uids[name]):
                if made["kind"] == kind:
                    create[kind](namespace, made)
        return one

    def event(body: dict[str, Any]) -> None:
        core.create_namespaced_event(namespace, {
            "metadata": {"generateName": "bench-"}, "type": "Normal", "reason": "Planned",
            "message": "the job's plan", "involvedObject": {
                "kind": "TrainingJob", "namespace": namespace, "name": body["metadata"]["name"],
                "uid": uids[body["metadata"]["name"]], "apiVersion": "kubetrain.io/v1alpha1"}})

    steps: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("TrainingJob create", create_job),
        ("ConfigMap create", child("ConfigMap")),
        ("Pod create", child("Pod")),
        ("status PATCH", lambda b: custom.patch_namespaced_custom_object_status(
            *group, b["metadata"]["name"], first_status(b))),
        ("Event create", event)]
    costs: dict[str, float] = {}
    try:
        for label, step in steps:
            before = cpu_seconds(api_server)
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(step, bodies))
            costs[label] = round((cpu_seconds(api_server) - before) * 1000 / jobs, 1)
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--case", choices=[*CASES, "both"], default="both")
    parser.add_argument("--namespace", default="kt-bench-costs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    use_local_cluster()
    kubectl("apply", "-f", str(REPO / "crds"))
    costs = {case: request_costs(case, args.jobs, args.namespace)
             for case in (CASES if args.case == "both" else [args.case])}
    for case, by_kind in costs.items():
        print(f"{case}: the API server's CPU ms per request: "
              + ", ".join(f"{kind} {ms}" for kind, ms in by_kind.items()))
    if args.json:
        args.json.write_text(json.dumps(costs, indent=1))


if __name__ == "__main__":
    main()
