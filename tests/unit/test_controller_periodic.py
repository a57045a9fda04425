"""The operator's periodic pass (controller/periodic.py): which jobs it reconciles (only those
that can change without an event of their own, so idle jobs cost the API server nothing and
no job needs a finalizer), when each comes due, and that a job is reconciled by one thing at a
time."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest
from kubetrain.api.status import Reason, TrainingJobStatus
from kubetrain.controller.handlers import recovered
from kubetrain.controller.periodic import ActiveJobs, JobLocks, PeriodicPass, is_active
from kubetrain.pipeline.status import set_condition
from support import FakeClock


def body(phase: str | None, uid: str = "u1", **run_policy: Any) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "name": f"job-{uid}", "resourceVersion": "1"},
            "spec": {"runPolicy": run_policy}, "status": {"phase": phase} if phase else {}}


@pytest.mark.parametrize(("job", "active"), [
    (body(None), False),  # fresh: the create handler reconciles it
    (body(None, suspend=True), False),
    (body("Pending"), True),
    (body("Queued"), True),  # waits for a place (a job that left it may not wake it)
    (body("Running"), True),
    (body("Suspended", suspend=True), False),  # its running children were stopped
    (body("Suspended", suspend=False), True),  # resumed: its children start again
    (body("Succeeded"), False),
    (body("Failed"), False),
    (body("Succeeded", ttlSecondsAfterFinished=60), True),  # waits to delete itself
])
def test_the_pass_reconciles_only_jobs_that_can_change_on_their_own(job: dict[str, Any],
                                                                     active: bool) -> None:
    assert is_active(job) is active


def test_a_job_comes_due_an_interval_after_its_last_reconcile() -> None:
    clock = FakeClock(100.0)
    jobs = ActiveJobs(interval=5.0, clock=clock)
    jobs.seen(None, body("Running"))  # just reconciled: its status made it active
    assert jobs.take_due() == [] and jobs.next_due() == 5.0
    clock.now += 3
    jobs.reconciled("u1")  # a handler reconciled it (a spec change): due 5 s from now
    clock.now += 4
    assert jobs.take_due() == []
    clock.now += 1
    assert jobs.take_due() == ["u1"]
    assert jobs.take_due() == []  # busy until done, never handed out twice
    clock.now += 7
    jobs.done("u1")
    assert jobs.next_due() == 5.0


def test_the_newest_version_is_kept_and_an_inactive_or_deleted_job_drops_out() -> None:
    jobs = ActiveJobs(interval=5.0, clock=FakeClock(100.0))
    jobs.seen(None, body("Pending"))
    newer = body("Running")
    jobs.seen("MODIFIED", newer)
    assert jobs.body("u1") is newer
    jobs.seen("MODIFIED", body("Succeeded"))  # finished, no TTL
    assert jobs.body("u1") is None and len(jobs) == 0
    jobs.seen("MODIFIED", body("Succeeded", ttlSecondsAfterFinished=0))
    jobs.seen("DELETED", body("Succeeded", ttlSecondsAfterFinished=0))
    assert len(jobs) == 0
    jobs.seen("ADDED", body(None, uid="u2"))  # fresh: not tracked until it has a status
    jobs.seen("ADDED", {"metadata": {}})  # no uid: ignored
    assert len(jobs) == 0
    jobs.seen(None, body("Running", uid="u3"))
    jobs.forget("u3")  # its status write found it gone (a deletion the watch missed)
    assert len(jobs) == 0 and jobs.take_due() == []
    jobs.seen(None, body("Running", uid="u4"))
    jobs.clear()  # an operator started again in the same process learns its own jobs
    assert len(jobs) == 0


def test_the_pass_reconciles_due_jobs_again_and_again_until_they_stop_being_active() -> None:
    jobs = ActiveJobs(interval=0.05)
    seen: list[str] = []
    failed = threading.Event()

    def reconcile(job: Mapping[str, Any]) -> None:
        seen.append(job["metadata"]["uid"])
        if job["metadata"]["uid"] == "bad":
            failed.set()
            raise RuntimeError("API error 0: no answer")  # logged; due again later

    jobs.seen(None, body("Running", uid="a"))
    jobs.seen(None, body("Running", uid="bad"))
    periodic = PeriodicPass(jobs, JobLocks(), reconcile, workers=2)
    periodic.start()
    try:
        deadline = time.monotonic() + 10
        while (seen.count("a") < 3 or seen.count("bad") < 3) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen.count("a") >= 3 and seen.count("bad") >= 3  # a failure does not stop it
        jobs.seen("MODIFIED", body("Succeeded", uid="a"))
        time.sleep(0.1)  # a reconcile in flight may finish
        count = seen.count("a")
        time.sleep(0.3)
        assert seen.count("a") == count  # finished: no longer reconciled
    finally:
        periodic.stop()
    assert failed.is_set()


def test_a_job_is_reconciled_by_one_thing_at_a_time() -> None:
    """The pass waits while a handler holds the job's lock, then reads its newest version."""
    jobs = ActiveJobs(interval=0.01)
    locks = JobLocks()
    versions: list[str] = []
    jobs.seen(None, body("Running"))
    periodic = PeriodicPass(jobs, locks,
                            lambda job: versions.append(job["metadata"]["resourceVersion"]))
    with locks.held("u1"):  # a kopf handler reconciles the job
        periodic.start()
        time.sleep(0.2)
        assert versions == []
        newer = body("Running")
        newer["metadata"]["resourceVersion"] = "2"  # the status the handler wrote
        jobs.seen("MODIFIED", newer)
    deadline = time.monotonic() + 5
    while not versions and time.monotonic() < deadline:
        time.sleep(0.01)
    periodic.stop()
    assert versions[0] == "2"


def test_a_reconcile_that_goes_through_ends_an_earlier_reconcile_error() -> None:
    status = TrainingJobStatus()
    set_condition(status, "ReconcileError", "True", Reason.RECONCILE_ERROR,
                  "API error 0: no answer from the API server", "2026-11-30T10:00:00Z")
    recovered(status, "2026-11-30T10:01:00Z")
    (condition,) = status.conditions
    assert (condition.status, condition.last_transition_time) == ("False", "2026-11-30T10:01:00Z")
    assert "API error 0" in condition.message
    recovered(status, "2026-11-30T10:02:00Z")  # nothing to end: unchanged
    assert condition.last_transition_time == "2026-11-30T10:01:00Z"
