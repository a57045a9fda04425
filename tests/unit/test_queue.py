"""The queue in front of the pool: the pure order (queue.py) and the admit step (admission.py)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import kopf
import pytest
from kubetrain.api.resource import GROUP, ManifestError, TrainingJob, parse_training_job
from kubetrain.api.status import Phase, TrainingJobStatus
from kubetrain.client.events import describe
from kubetrain.controller.admission import TURN, Admissions, entry_of
from kubetrain.controller.queue import Entry, Limits, decide
from kubetrain.controller.settings import OperatorConfig, parse_config

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def entry(name: str, minute: int, *, namespace: str = "ml", priority: int = 0,
          running: bool = False) -> Entry:
    return Entry(uid=f"uid-{name}", namespace=namespace, name=name,
                 created=f"2026-01-01T10:{minute:02d}:00Z", priority=priority, running=running)


def test_no_limit_admits_everyone() -> None:
    decision = decide([entry("a", 1), entry("b", 2, running=True)], Limits())
    assert decision.admit == ["uid-a"] and decision.waiting == {}


def test_first_come_first_served_by_creation_time() -> None:
    jobs = [entry("late", 9), entry("early", 1), entry("middle", 5), entry("r", 0, running=True)]
    decision = decide(jobs, Limits(cluster=2))
    assert decision.admit == ["uid-early"]
    assert {uid: w.position for uid, w in decision.waiting.items()} == \
        {"uid-middle": 1, "uid-late": 2}
    assert decision.running == 2


def test_higher_priority_jumps_ahead_and_fifo_holds_within_a_priority() -> None:
    jobs = [entry("old", 1), entry("urgent", 8, priority=5), entry("urgent-later", 9, priority=5),
            entry("low", 0, priority=-1)]
    decision = decide(jobs, Limits(cluster=1))
    assert decision.admit == ["uid-urgent"]
    assert [uid for uid, _ in sorted(decision.waiting.items(), key=lambda i: i[1].position)] == \
        ["uid-urgent-later", "uid-old", "uid-low"]


def test_a_full_namespace_holds_only_its_own_jobs() -> None:
    jobs = [entry("a-run", 0, namespace="a", running=True), entry("a-next", 1, namespace="a"),
            entry("b-next", 2, namespace="b")]
    decision = decide(jobs, Limits(cluster=3, namespace=1))
    assert decision.admit == ["uid-b-next"]
    assert decision.waiting["uid-a-next"].held_by == "namespace"
    assert decision.running_in == {"a": 1, "b": 1}


def test_running_jobs_over_a_lowered_limit_stay_and_block_the_rest() -> None:
    jobs = [entry(f"r{i}", i, running=True) for i in range(3)] + [entry("w", 9)]
    decision = decide(jobs, Limits(cluster=2))
    assert decision.admit == [] and decision.waiting["uid-w"].held_by == "cluster"


def body(name: str, *, phase: str | None = None, minute: int = 0, labels: dict[str, str] | None
         = None, **policy: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}",
                     "creationTimestamp": f"2026-01-01T10:{minute:02d}:00Z",
                     "labels": labels or {}},
        "spec": {"dataset": {"builtin": "digits"}, "model": {"builtin": "mlp"},
                 "storage": {"pvc": "shared"}, "runPolicy": policy},
    }
    if phase is not None:
        document["status"] = {"phase": phase}
    return document


def test_entry_of_leaves_out_finished_suspended_and_kueue_jobs() -> None:
    assert entry_of(body("done", phase="Succeeded")) is None
    assert entry_of(body("failed", phase="Failed")) is None
    assert entry_of(body("paused", phase="Running", suspend=True)) is None
    assert entry_of(body("kueue", labels={"kueue.x-k8s.io/queue-name": "team"})) is None
    assert entry_of(body("kueue-spec", queueName="team")) is None
    running = entry_of(body("run", phase="Running", priority=3))
    assert running is not None and running.running and running.priority == 3
    resuming = entry_of(body("resume", phase="Suspended"))
    assert resuming is not None and not resuming.running
    new = entry_of(body("new"))
    assert new is not None and not new.running and new.created == "2026-01-01T10:00:00Z"


CONFIG = OperatorConfig.model_validate({"maxRunningJobs": 1})


def job_of(document: dict[str, Any]) -> TrainingJob:
    job = parse_training_job({k: v for k, v in document.items() if k != "status"})
    if document.get("status"):
        job.status = TrainingJobStatus.model_validate(document["status"])
    return job


def test_a_job_over_the_limit_waits_with_its_place_then_starts() -> None:
    admissions = Admissions()
    running = entry_of(body("first", phase="Running"))
    assert running is not None
    second = body("second", minute=1)
    job = job_of(second)
    wait, events = admissions.admit(job, second, [running], CONFIG, NOW)
    assert wait and job.status is not None
    assert job.status.phase == Phase.QUEUED and job.status.queue is not None
    assert job.status.queue.position == 1 and job.status.progress == "queue position 1"
    (queued,) = [c for c in job.status.conditions if c.type == "Queued"]
    assert (queued.status, queued.reason) == ("True", "Queued")
    assert "1 of 1 jobs run cluster-wide" in queued.message
    assert [e.reason for e in events] == ["Queued"]
    assert describe("second", job.status).splitlines()[:2] == [
        "TrainingJob second: Queued",
        "  queued: position 1 in the queue: 1 of 1 jobs run cluster-wide"]
    # Still waiting: same place, no second event.
    wait, events = admissions.admit(job, {**second, "status": {"phase": "Queued"}}, [running],
                                    CONFIG, NOW)
    assert wait and events == []
    # The first one finished (it left the index): the second starts as a fresh job.
    wait, events = admissions.admit(job, {**second, "status": {"phase": "Queued"}}, [],
                                    CONFIG, NOW)
    assert not wait and [e.reason for e in events] == ["Admitted"]
    assert job.status.phase == Phase.PENDING and job.status.queue is None
    (queued,) = [c for c in job.status.conditions if c.type == "Queued"]
    assert (queued.status, queued.reason) == ("False", "Admitted")


def test_a_resumed_job_that_waited_is_resumed_by_the_engine() -> None:
    document = body("back", phase="Queued")
    job = job_of(document)
    assert job.status is not None
    job.status.start_time = "2026-01-01T10:05:00Z"  # it had run before its suspend
    wait, _ = Admissions().admit(job, document, [], CONFIG, NOW)
    assert not wait and job.status.phase == Phase.SUSPENDED


def test_an_admitted_job_counts_before_the_watch_shows_it_running() -> None:
    admissions = Admissions()
    first, second = body("first"), body("second", minute=1)
    indexed = [e for e in (entry_of(first), entry_of(second)) if e is not None]
    assert not admissions.admit(job_of(first), first, indexed, CONFIG, NOW)[0]
    # The index still shows the first one Pending: the second must wait all the same.
    assert admissions.admit(job_of(second), second, indexed, CONFIG, NOW)[0]
    # And the first, reconciled again before its Running status arrives, is still admitted.
    assert not admissions.admit(job_of(first), first, indexed, CONFIG, NOW)[0]


def test_concurrent_reconciles_never_admit_past_the_limit() -> None:
    admissions = Admissions()
    config = OperatorConfig.model_validate({"maxRunningJobs": 3})
    documents = [body(f"job-{i}", minute=i) for i in range(24)]
    indexed = [e for d in documents if (e := entry_of(d)) is not None]
    admitted: list[str] = []
    start = threading.Barrier(len(documents))

    def reconcile(document: dict[str, Any]) -> None:
        start.wait()
        if not admissions.admit(job_of(document), document, indexed, config, NOW)[0]:
            admitted.append(document["metadata"]["name"])

    threads = [threading.Thread(target=reconcile, args=(d,)) for d in documents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 3


def test_kueue_jobs_and_an_invalid_spec_do_not_wait() -> None:
    running = entry_of(body("first", phase="Running"))
    assert running is not None
    kueue = body("kueue", queueName="team-a")
    assert not Admissions().admit(job_of(kueue), kueue, [running], CONFIG, NOW)[0]
    bad = body("bad")
    bad["spec"]["storage"] = {}  # no claim and no default PVC: fails at once
    assert not Admissions().admit(job_of(bad), bad, [running], CONFIG, NOW)[0]


@pytest.mark.parametrize(("document", "problem"), [
    ({"maxRunningJobs": -1}, "maxRunningJobs"),
    ({"maxRunningJobsPerNamespace": "two"}, "maxRunningJobsPerNamespace"),
])
def test_bad_limits_name_the_setting(document: dict[str, Any], problem: str) -> None:
    with pytest.raises(ManifestError) as raised:
        parse_config(document, environ={})
    assert problem in str(raised.value)


def test_limits_from_the_environment() -> None:
    config = parse_config({}, environ={"KUBETRAIN_MAX_RUNNING_JOBS": "4",
                                       "KUBETRAIN_MAX_RUNNING_JOBS_PER_NAMESPACE": "2"})
    assert config.queue_limits() == Limits(cluster=4, namespace=2)
    assert not parse_config({}, environ={}).queue_limits().enabled


def test_a_freed_place_wakes_the_next_in_line() -> None:
    admissions = Admissions()
    limits = Limits(cluster=2)
    leaving, staying = entry("leaving", 0, running=True), entry("staying", 1, running=True)
    waiting = [entry("next", 2), entry("after", 3), entry("urgent", 9, priority=1)]
    woken = admissions.next_up("uid-leaving", [leaving, staying, *waiting], limits)
    assert [e.name for e in woken] == ["urgent"]
    assert admissions.next_up("uid-leaving", [leaving, *waiting], limits) == \
        [waiting[2], waiting[0]]
    assert admissions.next_up("uid-leaving", [leaving, *waiting], Limits()) == []


def test_the_woken_job_starts_before_the_watch_shows_the_place_free() -> None:
    admissions = Admissions()
    first = body("first", phase="Running")
    second = body("second", minute=1)
    indexed = [e for e in (entry_of(first), entry_of(second)) if e is not None]
    job = job_of(second)
    assert admissions.admit(job, second, indexed, CONFIG, NOW)[0]  # the place is taken
    # The first one's reconcile saw it finish; its Succeeded status is not in the index yet.
    assert [e.name for e in admissions.next_up("uid-first", indexed, CONFIG.queue_limits())] \
        == ["second"]
    assert not admissions.admit(job, second, indexed, CONFIG, NOW)[0]


def test_kopf_sees_the_turn_annotation_change() -> None:
    # kopf leaves the annotations under its storage prefix (kubetrain.io/, marked by
    # kubetrain.io/kopf-managed) out of the essence whose changes update handlers see.
    annotations = {f"{GROUP}/kopf-managed": "yes", TURN: "2026-01-01T12:00:00Z"}
    body = kopf.Body({"metadata": {"name": "j", "annotations": annotations}, "spec": {}})
    storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    kept = storage.build(body=body)["metadata"]["annotations"]
    assert kept == {TURN: "2026-01-01T12:00:00Z"}
    assert storage.build(body=kopf.Body({**body, "metadata": {"annotations": {
        f"{GROUP}/kopf-managed": "yes", f"{GROUP}/queue-turn": "x"}}})).get("metadata") is None
