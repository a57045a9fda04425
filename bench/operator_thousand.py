"""1,000 TrainingJobs created at once: status for every one, the operator's memory and its API
traffic (outside CI: several minutes on the 2-core machine).

The mix: ``--real`` tiny training jobs (their pods are created but their image is never
pulled: first children suffice) and the rest suspended. Measured:

- admission: seconds until every job has a status (phase and conditions) and every real job its
  first children; none lost (a job without status), none duplicated (a pod beyond the expected
  ones, or a child of a suspended job);
- the operator's peak RSS (sampled every 0.1 s) and its RSS with the 1,000 jobs idle;
- API traffic from the API server's own ``apiserver_request_total`` (``kubectl get --raw
  /metrics``), diffed around each phase, by resource and verb, less the benchmark's own calls:
  requests per job while they are admitted and over their whole life (to deletion), and
  requests per second while the 1,000 jobs sit idle (no status patch when nothing changed).

    python bench/operator_thousand.py [--jobs 1000] [--real 20] [--idle 60] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_scale import (
    REPO,
    Operator,
    expected_children,
    fresh_namespace,
    kubectl,
    training_manifest,
    use_local_cluster,
)

RESOURCES = ("trainingjobs", "pods", "services", "configmaps", "events")
METRIC = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$')


def api_requests() -> Counter[tuple[str, str, str]]:
    """(resource[/subresource], verb, namespaced?) → requests served so far, for our kinds."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for line in kubectl("get", "--raw", "/metrics").splitlines():
        match = METRIC.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("resource") not in RESOURCES:
            continue
        resource = labels["resource"] + (f"/{labels['subresource']}"
                                         if labels.get("subresource") else "")
        counts[(resource, labels.get("verb", ""), labels.get("scope", ""))] += \
            int(float(match["value"]))
    return counts


class Own:
    """The benchmark's own requests, so they are not counted as the operator's."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str, str]] = Counter()

    def get(self, plural: str, namespace: str, *extra: str) -> list[dict[str, Any]]:
        self.calls[(plural, "LIST", "namespace")] += 1
        items: list[dict[str, Any]] = json.loads(kubectl("get", plural, "-n", namespace,
                                                         *extra, "-o", "json"))["items"]
        return items


def diff(after: Counter[tuple[str, str, str]], before: Counter[tuple[str, str, str]],
         own: Counter[tuple[str, str, str]]) -> Counter[tuple[str, str, str]]:
    result: Counter[tuple[str, str, str]] = Counter()
    for key in set(after) | set(before):
        value = after[key] - before[key] - own[key]
        if value > 0:
            result[key] = value
    return result


def table(counts: Counter[tuple[str, str, str]]) -> dict[str, int]:
    """Counts by verb and resource (the scopes, namespace and cluster, added up)."""
    merged: Counter[str] = Counter()
    for (resource, verb, _), n in counts.items():
        merged[f"{verb} {resource}"] += n
    return dict(merged.most_common())


def manifests(jobs: int, real: int, namespace: str) -> list[dict[str, Any]]:
    bodies = []
    for i in range(jobs):
        body = training_manifest(f"job-{i:04d}", namespace)
        if i >= real:
            body["spec"]["runPolicy"] = {"suspend": True}
        bodies.append(body)
    return bodies


def check(namespace: str, bodies: list[dict[str, Any]], real: int, own: Own) -> dict[str, int]:
    jobs = {j["metadata"]["name"]: j for j in own.get("trainingjobs", namespace)}
    pods = own.get("pods", namespace, "-l", "kubetrain.io/job")
    expected = expected_children(bodies[:real])
    pods_of: Counter[str] = Counter(p["metadata"]["labels"]["kubetrain.io/job"] for p in pods)
    with_status = sum(1 for j in jobs.values() if (j.get("status") or {}).get("phase")
                      and (j.get("status") or {}).get("conditions") is not None)
    suspended = sum(1 for j in jobs.values()
                    if (j.get("status") or {}).get("phase") == "Suspended")
    have = {("Pod", p["metadata"]["name"]) for p in pods}
    real_ok = sum(1 for name, children in expected.items()
                  if {c for c in children if c[0] == "Pod"} <= have)
    extra = sum(max(0, n - sum(1 for c in expected.get(job, ()) if c[0] == "Pod"))
                for job, n in pods_of.items())
    finalized = sum(1 for j in jobs.values() if j["metadata"].get("finalizers"))
    return {"jobs": len(jobs), "with_status": with_status, "suspended": suspended,
            "real_with_children": real_ok, "duplicate_or_unexpected_pods": extra,
            "with_finalizer": finalized}


def snapshot(namespace: str, own: Own) -> dict[str, tuple[str, Any]]:
    """Job name → (resourceVersion, status)."""
    return {j["metadata"]["name"]: (j["metadata"]["resourceVersion"], j.get("status"))
            for j in own.get("trainingjobs", namespace)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--real", type=int, default=20)
    parser.add_argument("--idle", type=float, default=60, help="seconds of the idle window")
    parser.add_argument("--namespace", default="kt-bench-1k")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    use_local_cluster()
    kubectl("apply", "-f", str(REPO / "crds"))
    namespace = args.namespace
    fresh_namespace(namespace)
    bodies = manifests(args.jobs, args.real, namespace)
    own = Own()
    operator = Operator(namespace)
    time.sleep(8)  # up and watching
    idle_before = operator.rss_mib
    m0 = api_requests()
    started = time.perf_counter()
    kubectl("create", "-f", "-", input=yaml.safe_dump_all(bodies))
    own.calls[("trainingjobs", "POST", "namespace")] += len(bodies)
    state: dict[str, int] = {}
    while time.perf_counter() - started < 600:
        state = check(namespace, bodies, args.real, own)
        if state["with_status"] == args.jobs and state["real_with_children"] == args.real:
            break
        time.sleep(2)
    admitted = time.perf_counter() - started
    m1 = api_requests()
    admission = diff(m1, m0, own.calls)
    own.calls.clear()
    before_idle = snapshot(namespace, own)
    time.sleep(args.idle)
    after_idle = snapshot(namespace, own)
    m2 = api_requests()
    idle = diff(m2, m1, own.calls)
    written = [n for n, (version, _) in after_idle.items()
               if before_idle.get(n, ("", None))[0] != version]
    rss_idle = operator.rss_mib
    final = check(namespace, bodies, args.real, own)
    own.calls.clear()
    m2 = api_requests()
    deleting = time.perf_counter()
    kubectl("delete", "trainingjobs.kubetrain.io", "--all", "-n", namespace, "--wait=false")
    own.calls[("trainingjobs", "LIST", "namespace")] += 1
    own.calls[("trainingjobs", "DELETE", "namespace")] += len(bodies)
    while own.get("trainingjobs", namespace) and time.perf_counter() - deleting < 600:
        time.sleep(2)
    deleted = time.perf_counter() - deleting
    m3 = api_requests()
    deletion = diff(m3, m2, own.calls)
    operator.stop()
    kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    # A job's life: admitted, deleted, and its admission's Events, which the operator holds
    # until the burst's reconciles pause (so most are posted in the idle window). The real
    # jobs' periodic observations while idle are left out: they grow with the window's length
    # (idle_requests_per_second has them).
    held_events = Counter({key: n for key, n in idle.items() if key[:2] == ("events", "POST")})
    total = admission + deletion + held_events
    per_job = sum(total.values()) / args.jobs
    result = {
        "jobs": args.jobs, "real": args.real, "admission_seconds": round(admitted, 1),
        "at_admission": state, "after_idle": final,
        "deletion_seconds": round(deleted, 1),
        "rss_mib": {"before_jobs": round(idle_before, 1), "peak": round(operator.peak_rss_mib, 1),
                    "idle_with_jobs": round(rss_idle, 1)},
        "requests": {"admission": table(admission), "idle": table(idle),
                     "deletion": table(deletion)},
        "requests_per_job_admission": round(sum(admission.values()) / args.jobs, 2),
        "requests_per_job_life": round(per_job, 2),
        "idle_requests_per_second": round(sum(idle.values()) / args.idle, 2),
        "idle_status_patches": sum(n for (r, v, _), n in idle.items()
                                   if r.startswith("trainingjobs") and v == "PATCH"),
        # Jobs written while idle, and those of them whose status is the same before and after:
        # a write that changed nothing (a real job's status may record its pods' progress).
        "idle_jobs_written": len(written),
        "idle_writes_without_change": sum(1 for n in written
                                          if after_idle[n][1] == before_idle[n][1]),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
