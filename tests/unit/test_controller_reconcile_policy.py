"""The reconcile decision under the run policy (suspend, deadline, TTL), for invalid specs and
for finished jobs, and the names of a job's children; on the fake cluster of reconcile_cases.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from kubetrain.api.status import Phase, TrainingJobStatus
from kubetrain.controller import builders as b
from kubetrain.controller.builders import WorkerSettings
from kubetrain.controller.observe import Observed
from kubetrain.controller.reconcile import reconcile
from kubetrain.controller.validate import semantic_problems
from kubetrain.pipeline.actions import Event
from kubetrain.pipeline.plan import plan
from reconcile_cases import (
    GANG,
    NOW,
    SETTINGS,
    Cluster,
    arg,
    condition,
    created,
    deleted,
    make_job,
    names,
    reasons,
    running_gang,
    sweep,
    train_result,
    unit_status,
)

# ----- suspend and resume --------------------------------------------------------------------


def test_suspend_deletes_running_pods_and_resume_relaunches_them() -> None:
    cluster = running_gang()
    cluster.job.spec.run_policy.suspend = True
    decision = cluster.reconcile()
    assert deleted(decision) == GANG
    assert decision.create == []
    assert decision.status.phase == "Suspended"
    assert condition(decision.status, "Suspended").status == "True"
    assert reasons(decision) == ["Suspended"]
    # Still suspended, pods gone: nothing more to do, no new event.
    cluster.settle()
    decision = cluster.reconcile()
    assert decision.create == [] and decision.delete == [] and decision.events == []
    assert decision.status.phase == "Suspended"
    # Resume: the gang starts again from its checkpoint, as a new attempt.
    cluster.job.spec.run_policy.suspend = False
    decision = cluster.reconcile()
    assert decision.status.phase == "Running"
    assert condition(decision.status, "Suspended").status == "False"
    assert "Resumed" in reasons(decision)
    assert names(decision) == GANG
    assert [cluster.attempt(n) for n in GANG] == [1, 1]
    # A suspend is not a failure: it does not use up a restart.
    assert unit_status(cluster.job, "train").restarts == 0


def test_resume_waits_until_the_suspended_pods_are_gone() -> None:
    cluster = running_gang()
    cluster.job.spec.run_policy.suspend = True
    cluster.reconcile()
    cluster.job.spec.run_policy.suspend = False
    decision = cluster.reconcile()  # the old pods are still terminating
    assert decision.status.phase == "Running"
    assert decision.create == [] and decision.delete == []
    cluster.settle()
    assert names(cluster.reconcile()) == GANG


def test_suspend_before_start_creates_nothing() -> None:
    cluster = Cluster(make_job(runPolicy={"suspend": True}))
    decision = cluster.reconcile()
    assert decision.status.phase == "Suspended"
    assert decision.create == []


def test_suspend_deletes_unfinished_units_only() -> None:
    cluster = Cluster(make_job(augmentation={"enabled": True, "shards": 2}))
    cluster.reconcile()
    cluster.run()
    cluster.succeed("mnist-augment-0", {"status": "succeeded", "shard": 0, "shards": 2})
    cluster.reconcile()
    assert unit_status(cluster.job, "augment-0").phase == "Succeeded"
    cluster.job.spec.run_policy.suspend = True
    decision = cluster.reconcile()
    assert deleted(decision) == ["mnist-augment-1"]
    cluster.settle()
    cluster.job.spec.run_policy.suspend = False
    decision = cluster.reconcile()
    assert names(decision) == ["mnist-augment-1"]  # the finished shard is not run again
    assert unit_status(cluster.job, "augment-0").phase == "Succeeded"


# ----- deadlines, invalid specs, finished jobs -----------------------------------------------


def test_active_deadline_fails_the_job_and_deletes_its_pods() -> None:
    cluster = running_gang(runPolicy={"activeDeadlineSeconds": 600})
    cluster.now = NOW + timedelta(seconds=599)
    assert cluster.reconcile().status.phase == "Running"
    cluster.now = NOW + timedelta(seconds=601)
    decision = cluster.reconcile()
    status = decision.status
    assert status.phase == "Failed"
    assert condition(status, "Failed").reason == "DeadlineExceeded"
    assert "600" in condition(status, "Failed").message
    assert deleted(decision) == GANG
    assert names(decision) == ["mnist-final-status", "mnist-report"]


def test_active_deadline_fails_the_stage_that_ran() -> None:
    cluster = running_gang(runPolicy={"activeDeadlineSeconds": 600})
    cluster.now = NOW + timedelta(seconds=601)
    decision = cluster.reconcile()
    assert decision.status.stages["training"].phase == "Failed"


def test_missing_pvc_is_invalid_and_nothing_is_created() -> None:
    cluster = Cluster(make_job(storage={}))
    decision = cluster.reconcile()
    status = decision.status
    assert status.phase == "Failed"
    invalid = condition(status, "Invalid")
    assert invalid.status == "True"
    assert invalid.reason == "InvalidSpec"
    assert invalid.message.startswith("spec.storage.pvc:")
    assert condition(status, "Failed").reason == "InvalidSpec"
    assert decision.create == []
    assert decision.events == [Event("Warning", "InvalidSpec", invalid.message)]
    # A failed job stays failed: later reconciles do nothing.
    decision = cluster.reconcile()
    assert decision.create == [] and decision.events == []


def test_operator_default_pvc_makes_the_same_job_valid() -> None:
    cluster = Cluster(make_job(storage={}), settings=WorkerSettings(default_pvc="runs"))
    decision = cluster.reconcile()
    assert decision.status.phase == "Running"
    pod = created(decision, "mnist-train-0")
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == ["runs"]
    assert arg(pod, "--storage") == "/data/runs/kubetrain/ml/mnist"


def test_local_dataset_path_is_invalid() -> None:
    cluster = Cluster(make_job(dataset={"uri": "data/train.csv", "target": "label"}))
    decision = cluster.reconcile()
    assert decision.status.phase == "Failed"
    message = condition(decision.status, "Invalid").message
    assert message.startswith("spec.dataset.uri: 'data/train.csv' is a local path")
    assert decision.create == []


def test_pvc_dataset_uri_is_valid() -> None:
    cluster = Cluster(make_job(dataset={"uri": "pvc://datasets/train.csv", "target": "label"}))
    assert cluster.reconcile().status.phase == "Running"


def test_invalid_spec_lists_every_problem() -> None:
    job = make_job(storage={}, dataset={"uri": "/home/me/x.npz"})
    problems = semantic_problems(job, SETTINGS)
    assert [p.split(":")[0] for p in problems] == ["spec.storage.pvc", "spec.dataset.uri"]
    decision = Cluster(job).reconcile()
    assert condition(decision.status, "Invalid").message == "; ".join(problems)


def test_spec_turned_invalid_while_running_deletes_the_pods() -> None:
    cluster = running_gang()
    cluster.job.spec.storage.pvc = None
    decision = cluster.reconcile()
    assert decision.status.phase == "Failed"
    assert condition(decision.status, "Invalid").message.startswith("spec.storage.pvc:")
    assert decision.create == []
    assert deleted(decision) == GANG


def test_entrypoint_needs_an_image() -> None:
    job = make_job(model={"entrypoint": "mypkg.models:build"})
    assert any(p.startswith("spec.image:") for p in semantic_problems(job, SETTINGS))
    job = make_job(model={"entrypoint": "mypkg.models:build"}, image="me/worker:1")
    assert semantic_problems(job, SETTINGS) == []


def test_finished_job_creates_nothing() -> None:
    for phase in ("Succeeded", "Failed"):
        job = make_job()
        job.status = TrainingJobStatus(phase=phase, completion_time="2025-03-01T11:00:00Z")
        decision = reconcile(job, Observed(), SETTINGS, NOW)
        assert decision.create == [] and decision.delete == [] and decision.events == []
        assert decision.status.phase == phase
        assert decision.delete_job is False


def test_pods_still_running_after_the_job_ended_are_deleted() -> None:
    cluster = running_gang()
    assert cluster.job.status is not None
    cluster.job.status.phase = Phase.FAILED  # e.g. by a reconcile whose deletions were lost
    decision = cluster.reconcile()
    assert deleted(decision) == GANG
    assert decision.create == []


def test_ttl_deletes_the_job_only_after_it_passed() -> None:
    job = make_job(runPolicy={"ttlSecondsAfterFinished": 300})
    job.status = TrainingJobStatus(phase="Succeeded", completion_time="2025-03-01T12:00:00Z")
    assert reconcile(job, Observed(), SETTINGS, NOW + timedelta(seconds=299)).delete_job is False
    assert reconcile(job, Observed(), SETTINGS, NOW + timedelta(seconds=300)).delete_job is True
    running = make_job(runPolicy={"ttlSecondsAfterFinished": 0})
    assert reconcile(running, Observed(), SETTINGS, NOW + timedelta(days=1)).delete_job is False


def test_ttl_counts_from_the_end_of_a_job_that_ran() -> None:
    cluster = running_gang(runPolicy={"ttlSecondsAfterFinished": 60})
    cluster.succeed_unit("train", train_result())
    assert cluster.reconcile().delete_job is False  # the reconcile that ends it
    cluster.tick(59)
    assert cluster.reconcile().delete_job is False
    cluster.tick(1)
    assert cluster.reconcile().delete_job is True


# ----- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [
    {"crossValidation": {"folds": 20}, "resources": {"nodes": 1}},
    {"resources": {"nodes": 16}},
])
def test_longest_valid_name_gives_child_names_that_fit(training: dict[str, Any]) -> None:
    """Every Service and Pod name of the longest accepted job name fits in 63."""
    spec: dict[str, Any] = {"augmentation": {"enabled": True, "shards": 64},
                            "tuning": sweep(trials=10000, parallelism=256),
                            "training": training, "explanation": {"enabled": True}}
    length = 63
    while semantic_problems(make_job("j" * length, **spec), SETTINGS):
        length -= 1
    job = make_job("j" * length, **spec)
    assert semantic_problems(make_job("j" * (length + 1), **spec), SETTINGS)[0].startswith(
        "metadata.name: at most")
    the_plan = plan(job.spec, job.metadata.name)
    tuning = the_plan.stage("tuning")
    assert tuning is not None and tuning.groups[0].sweep is not None
    units = [*(u for s in the_plan.stages for u in s.units), tuning.groups[0].sweep.unit(9999),
             the_plan.report]
    objects = [b.job_config_map(job)]
    for unit in units:
        assert unit is not None
        objects += [*b.unit_services(job, unit), *b.unit_pods(job, unit, 99, SETTINGS)]
    longest = max(objects, key=lambda o: len(o["metadata"]["name"]))
    assert len(longest["metadata"]["name"]) <= 63, longest["metadata"]["name"]
    for obj in objects:
        if obj["kind"] == "Pod" and "subdomain" in obj["spec"]:
            assert len(obj["spec"]["subdomain"]) <= 63


def test_name_starting_with_a_digit_is_invalid() -> None:
    # Service names are DNS-1035 labels: the API server refuses "2024-run-train".
    job = make_job("2024-run")
    assert any(p.startswith("metadata.name:") for p in semantic_problems(job, SETTINGS))
    decision = Cluster(job).reconcile()
    assert decision.status.phase == "Failed"
    assert decision.create == []
