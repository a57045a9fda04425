"""Observing children: pods as the API server returns them, read into PodView."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from kubetrain.controller import builders as b
from kubetrain.controller.observe import pod_view
from reconcile_cases import pod

# ----- observe: pods as the API returns them ---------------------------------------------------


def test_pod_view_reads_labels_and_the_termination_message() -> None:
    result = {"epochs_run": 3}
    view = pod_view({
        "metadata": {"name": "mnist-train-1", "creationTimestamp": "2025-03-01T11:00:00Z",
                     "labels": {b.LABEL_UNIT: "train", b.LABEL_STAGE: "training",
                                b.LABEL_RANK: "1"}},
        "status": {"phase": "Succeeded", "startTime": "2025-03-01T11:00:05Z",
                   "containerStatuses": [{"state": {"terminated": {
                       "exitCode": 0, "reason": "Completed", "message": json.dumps(result),
                       "startedAt": "2025-03-01T11:00:10Z",
                       "finishedAt": "2025-03-01T11:10:10Z"}}}]},
    })
    assert (view.name, view.unit, view.stage, view.rank) == ("mnist-train-1", "train",
                                                             "training", 1)
    assert view.phase == "Succeeded" and view.done and not view.deleting
    assert view.exit_code == 0 and view.reason == "Completed"
    assert view.result == result
    assert view.started == datetime(2025, 3, 1, 11, 0, 10, tzinfo=UTC)
    assert view.finished == datetime(2025, 3, 1, 11, 10, 10, tzinfo=UTC)
    assert view.created == datetime(2025, 3, 1, 11, 0, 0, tzinfo=UTC)


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


def test_non_json_termination_message_is_no_result() -> None:
    assert pod("x-0", message="Traceback: boom").result is None
    assert pod("x-0", message="[1, 2]").result is None
    assert pod("x-0", message='{"a": 1}').result == {"a": 1}
