"""Observing children: pods as the API server returns them, read into PodView, and the pods of
each work unit turned into the stage engine's Observation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from kubetrain.controller import builders as b
from kubetrain.controller.observe import (
    Observed,
    PodView,
    observations,
    pod_view,
    unit_observation,
)
from kubetrain.pipeline.actions import Seen
from kubetrain.pipeline.plan import plan
from reconcile_cases import NOW, make_job


def pod(name: str, phase: str = "Running", *, unit: str = "train", rank: int | None = None,
        started: datetime | None = NOW - timedelta(seconds=100), **extra: Any) -> PodView:
    """A pod of a unit made by hand; it started 100 s before NOW unless told."""
    return PodView(name=name, unit=unit, stage="training",
                   rank=int(name.rsplit("-", 1)[1]) if rank is None else rank, role="train",
                   phase=phase, started=started, **extra)


# ----- pods as the API returns them ----------------------------------------------------------


def test_pod_view_reads_labels_and_the_termination_message() -> None:
    result = {"epochs_run": 3}
    view = pod_view({
        "metadata": {"name": "mnist-train-1", "creationTimestamp": "2025-03-01T11:00:00Z",
                     "labels": {b.LABEL_UNIT: "train", b.LABEL_STAGE: "training",
                                b.LABEL_RANK: "1", b.LABEL_ATTEMPT: "2",
                                b.LABEL_ROLE: "train"}},
        "status": {"phase": "Succeeded", "startTime": "2025-03-01T11:00:05Z",
                   "containerStatuses": [{"state": {"terminated": {
                       "exitCode": 0, "reason": "Completed", "message": json.dumps(result),
                       "startedAt": "2025-03-01T11:00:10Z",
                       "finishedAt": "2025-03-01T11:10:10Z"}}}]},
    })
    assert (view.name, view.unit, view.stage, view.rank) == ("mnist-train-1", "train",
                                                             "training", 1)
    assert (view.attempt, view.role) == (2, "train")
    assert view.phase == "Succeeded" and view.done and not view.deleting
    assert view.exit_code == 0 and view.reason == "Completed"
    assert view.result == result
    assert view.started == datetime(2025, 3, 1, 11, 0, 10, tzinfo=UTC)
    assert view.finished == datetime(2025, 3, 1, 11, 10, 10, tzinfo=UTC)
    assert view.created == datetime(2025, 3, 1, 11, 0, 0, tzinfo=UTC)


def test_beside_a_program_container_the_runner_container_reports() -> None:
    # A program in its own image: the runner ("worker") has the result and the exit code,
    # whichever order the API lists the containers in.
    runner = {"name": "worker", "state": {"terminated": {
        "exitCode": 3, "message": json.dumps({"status": "failed", "message": "code 3"})}}}
    program = {"name": "program", "state": {"terminated": {"exitCode": 0, "message": ""}}}
    for order in ([runner, program], [program, runner]):
        view = pod_view({"metadata": {"name": "own-train-0", "labels": {b.LABEL_UNIT: "train"}},
                         "status": {"phase": "Failed", "containerStatuses": order}})
        assert view.exit_code == 3 and view.result == {"status": "failed", "message": "code 3"}


def test_pod_view_of_a_running_deleting_pod() -> None:
    view = pod_view({
        "metadata": {"name": "mnist-train-0", "deletionTimestamp": "2025-03-01T12:00:00Z",
                     "labels": {b.LABEL_UNIT: "train", b.LABEL_RANK: "0"}},
        "status": {"phase": "Running", "startTime": "2025-03-01T11:00:00Z",
                   "containerStatuses": [{"state": {"running": {
                       "startedAt": "2025-03-01T11:00:20Z"}}}]},
    })
    assert view.deleting is True
    assert view.done is False
    assert view.started == datetime(2025, 3, 1, 11, 0, 20, tzinfo=UTC)
    assert view.finished is None
    assert view.result is None
    assert view.attempt == 0  # pods without the label are the first attempt


def test_pod_view_of_a_pod_the_builders_made() -> None:
    job = make_job(training={"resources": {"nodes": 1}})
    unit = plan(job.spec, "mnist").unit("train")
    assert unit is not None
    (pod,) = b.unit_pods(job, unit, 4, b.WorkerSettings())
    view = pod_view(pod)
    assert (view.name, view.unit, view.stage, view.rank, view.attempt, view.role) == (
        "mnist-train-0", "train", "training", 0, 4, "train")
    assert view.phase == "Pending" and view.started is None


def test_non_json_termination_message_is_no_result() -> None:
    assert pod("x-0", message="Traceback: boom").result is None
    assert pod("x-0", message="[1, 2]").result is None
    assert pod("x-0", message='{"a": 1}').result == {"a": 1}


# ----- a unit's pods as the engine sees them -------------------------------------------------


def test_no_pods_is_not_started() -> None:
    assert unit_observation([], 2, NOW).state == Seen.NOT_STARTED


def test_a_gang_succeeds_only_when_every_rank_succeeded_and_rank_0_gives_the_result() -> None:
    done = [pod("t-1", "Succeeded", finished=NOW, exit_code=0, message='{"rank": 1}'),
            pod("t-0", "Succeeded", finished=NOW, exit_code=0, message='{"rank": 0}')]
    seen = unit_observation(done, 2, NOW)
    assert seen.state == Seen.SUCCEEDED
    assert seen.result == {"rank": 0}
    half = [done[1], pod("t-1")]
    assert unit_observation(half, 2, NOW).state == Seen.RUNNING


def test_a_failed_rank_fails_the_gang_with_its_exit_code_reason_and_output() -> None:
    seen = unit_observation([pod("t-0"), pod("t-1", "Failed", exit_code=137, reason="OOMKilled",
                                             message="Killed\n")], 2, NOW)
    assert seen.state == Seen.FAILED
    assert (seen.exit_code, seen.reason, seen.output) == (137, "OOMKilled", "Killed\n")
    assert seen.result is None


def test_a_failed_pod_with_a_json_result_reports_it_as_result_not_output() -> None:
    result = {"status": "failed", "message": "dataset not found"}
    seen = unit_observation([pod("t-0", "Failed", exit_code=1, message=json.dumps(result))], 1,
                            NOW)
    assert seen.state == Seen.FAILED
    assert seen.result == result and seen.output is None


def test_a_gang_missing_a_pod_is_lost() -> None:
    assert unit_observation([pod("t-0")], 2, NOW).state == Seen.LOST


def test_a_unit_with_a_pod_being_deleted_is_stopping() -> None:
    seen = unit_observation([pod("t-0"), pod("t-1", "Failed", deleting=True)], 2, NOW)
    assert seen.state == Seen.STOPPING


def test_only_the_latest_attempt_counts() -> None:
    old = pod("t-1", "Failed", attempt=0, exit_code=1)
    new = [pod("t-0", "Succeeded", attempt=1, finished=NOW, message='{"ok": true}'),
           pod("t-1", "Succeeded", attempt=1, finished=NOW)]
    seen = unit_observation([old, *new], 2, NOW)
    assert (seen.state, seen.attempt, seen.result) == (Seen.SUCCEEDED, 1, {"ok": True})
    # Pods of an older attempt alone: they are observed as that attempt (the engine stops them).
    seen = unit_observation([old], 2, NOW)
    assert (seen.state, seen.attempt) == (Seen.FAILED, 0)


def test_seconds_are_the_longest_running_pod_until_now_or_its_end() -> None:
    pods = [pod("t-0", started=NOW - timedelta(seconds=300), finished=NOW - timedelta(seconds=60),
                phase="Succeeded"),
            pod("t-1", started=NOW - timedelta(seconds=200))]
    assert unit_observation(pods, 2, NOW).seconds == 240.0
    pods = [pod("t-0", started=NOW - timedelta(seconds=300)), pods[1]]
    assert unit_observation(pods, 2, NOW).seconds == 300.0


def test_a_pod_waiting_to_be_scheduled_has_held_nothing_yet() -> None:
    waiting = pod("t-0", "Pending", started=None, created=NOW - timedelta(hours=2))
    assert unit_observation([waiting], 1, NOW).seconds == 0.0


def test_progress_is_passed_on_only_while_the_unit_runs() -> None:
    event = {"event": "epoch", "epoch": 3}
    assert unit_observation([pod("t-0")], 1, NOW, event).progress == event
    done = pod("t-0", "Succeeded", message="{}")
    assert unit_observation([done], 1, NOW, event).progress is None


def test_an_evicted_pod_is_lost_not_failed() -> None:
    # Lost, the engine relaunches the unit without using a restart, and replaces a trial
    # instead of counting it as a failed trial.
    view = pod_view({
        "metadata": {"name": "mnist-trial-3", "labels": {
            b.LABEL_UNIT: "trial-3", b.LABEL_STAGE: "tuning", b.LABEL_RANK: "0"}},
        "status": {"phase": "Failed", "reason": "Evicted",
                   "message": "The node was low on resource: memory.",
                   "startTime": "2025-03-01T11:00:00Z"},
    })
    assert unit_observation([view], 1, NOW).state == Seen.LOST


def test_observations_group_pods_by_unit_with_the_plan_s_node_count() -> None:
    the_plan = plan(make_job(tuning={"enabled": True, "trials": 2, "searchSpace": {
        "learningRate": {"type": "float", "low": 0.001, "high": 0.1}}}).spec, "mnist")
    observed = Observed(pods=[
        pod("mnist-train-0"),  # a gang of two: one pod is not enough
        pod("mnist-trial-0", unit="trial-0", rank=0),
        pod("mnist-study", unit="study", rank=0),
    ])
    seen = observations(observed, the_plan, NOW)
    assert set(seen) == {"train", "trial-0", "study"}
    assert seen["train"].state == Seen.LOST
    assert seen["trial-0"].state == Seen.RUNNING
    assert seen["study"].state == Seen.RUNNING


def test_observations_carry_the_progress_read_from_the_logs() -> None:
    the_plan = plan(make_job(training={"resources": {"nodes": 1}}).spec, "mnist")
    event = {"event": "epoch", "epoch": 2, "epochs": 20}
    observed = Observed(pods=[pod("mnist-train-0")], progress={"train": event})
    assert observations(observed, the_plan, NOW)["train"].progress == event
