"""Admission at scale on a real cluster, in CI: 100 TrainingJobs created at once.

``bench/operator_thousand.py`` (the 1,000-job benchmark, outside CI) run at a tenth of its size:
95 suspended jobs and 5 real ones (their pods are created, their image never pulled). Every job
gets a status (phase and conditions), every real one its first children; none is lost, no child
is duplicated or made for a suspended job; while the jobs sit idle the operator writes no
status that did not change; no job carries a finalizer; and deleting them all leaves none
behind. About 40 s on the 2-core test machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from k8s import REPO, kubectl

pytestmark = pytest.mark.cluster
JOBS, REAL = 100, 5


def test_a_hundred_jobs_at_once_each_get_a_status_and_none_is_lost(
        cluster: dict[str, str], tmp_path: Path) -> None:
    namespace = f"kt-scale-{uuid.uuid4().hex[:6]}"
    out = tmp_path / "scale.json"
    try:
        run = subprocess.run(
            [sys.executable, str(REPO / "bench" / "operator_thousand.py"), "--jobs", str(JOBS),
             "--real", str(REAL), "--idle", "15", "--namespace", namespace, "--json", str(out)],
            capture_output=True, text=True, timeout=900, env=cluster)
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    print(json.dumps(result, indent=1))  # the figures, for the note
    expected = {"jobs": JOBS, "with_status": JOBS, "suspended": JOBS - REAL,
                "real_with_children": REAL, "duplicate_or_unexpected_pods": 0,
                "with_finalizer": 0}
    assert result["at_admission"] == expected
    assert result["after_idle"] == expected  # none lost or duplicated later either
    # While idle the operator writes a job only when its status changed: never a suspended one
    # (at most the real ones, whose status follows their pods), never a write that changed
    # nothing.
    assert result["idle_writes_without_change"] == 0, result["requests"]["idle"]
    assert result["idle_jobs_written"] <= REAL
    assert result["idle_status_patches"] <= REAL, result["requests"]["idle"]
    # Deleted to the last one within the benchmark's 600 s.
    assert result["deletion_seconds"] < 600
    # The operator's API traffic is bounded: a suspended job costs its creation a handful of
    # requests (its status PATCH, Events), not a watch-and-poll per job.
    assert result["requests_per_job_life"] < 12, result["requests"]


def test_the_burst_benchmark_runs_and_every_job_gets_its_children(
        cluster: dict[str, str], tmp_path: Path) -> None:
    """``bench/operator_scale.py`` (the 50-job burst beside its floor, outside CI) at 10 jobs,
    once, and ``bench/api_request_costs.py`` at 5: the benchmarks the note's figures come from
    still run, and every job gets its first children."""
    namespace = f"kt-burst-{uuid.uuid4().hex[:6]}"
    out, costs = tmp_path / "burst.json", tmp_path / "costs.json"
    options = ["--case", "digits", "--namespace", namespace]
    try:
        run = subprocess.run([sys.executable, str(REPO / "bench" / "operator_scale.py"), *options,
                              "--jobs", "10", "--repeat", "1", "--json", str(out)],
                             capture_output=True, text=True, timeout=600, env=cluster)
        assert run.returncode == 0, run.stderr[-3000:]
        priced = subprocess.run([sys.executable, str(REPO / "bench" / "api_request_costs.py"),
                                 *options, "--jobs", "5", "--json", str(costs)],
                                capture_output=True, text=True, timeout=600, env=cluster)
        assert priced.returncode == 0, priced.stderr[-3000:]
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    [result] = json.loads(out.read_text())
    print(json.dumps(result, indent=1))
    assert result["operator_jobs_with_children"] == 10
    assert result["first_children"] == ["ConfigMap", "Pod"]
    assert result["operator_case_cpu_seconds"]["operator"] > 0
    assert set(json.loads(costs.read_text())["digits"]) == {
        "TrainingJob create", "ConfigMap create", "Pod create", "status PATCH", "Event create"}
