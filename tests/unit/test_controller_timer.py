"""Which TrainingJobs get the operator's timer (and with it kopf's finalizer): only those whose
children run, so idle jobs cost the API server nothing (bench/operator_thousand.py)."""

from __future__ import annotations

from typing import Any

import pytest
from kubetrain.api.status import Reason, TrainingJobStatus
from kubetrain.controller.handlers import _is_active, recovered
from kubetrain.pipeline.status import set_condition


def body(phase: str | None, **run_policy: Any) -> dict[str, Any]:
    return {"spec": {"runPolicy": run_policy}, "status": {"phase": phase} if phase else {}}


@pytest.mark.parametrize(("job", "active"), [
    (body(None), False),  # fresh: the create handler reconciles it, no finalizer first
    (body(None, suspend=True), False),
    (body("Pending"), True),
    (body("Running"), True),
    (body("Suspended", suspend=True), False),  # its running children were stopped
    (body("Suspended", suspend=False), True),  # resumed: its children start again
    (body("Succeeded"), False),
    (body("Failed"), False),
    (body("Succeeded", ttlSecondsAfterFinished=60), True),  # waits to delete itself
])
def test_the_timer_runs_only_while_something_can_change(job: dict[str, Any],
                                                         active: bool) -> None:
    assert _is_active(job) is active  # type: ignore[arg-type]


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
