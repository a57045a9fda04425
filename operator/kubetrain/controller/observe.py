"""What the operator sees of a TrainingJob's children, reduced to plain values.

The handler lists the children by label and turns them into these views; ``observations``
turns the pods of each work unit into the stage engine's :class:`Observation`, so the reconcile
decision (reconcile.py) is a pure function tested without a cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..pipeline.actions import Observation, Seen
from ..pipeline.plan import Plan
from .builders import LABEL_ATTEMPT, LABEL_RANK, LABEL_ROLE, LABEL_STAGE, LABEL_UNIT

# Pod-level reasons a pod fails for that are the node's doing, not the program's.
LOST_REASONS = frozenset({"Evicted", "NodeLost", "Preempting", "Shutdown", "NodeShutdown",
                          "Terminated", "UnexpectedAdmissionError"})


@dataclass(frozen=True)
class PodView:
    name: str
    unit: str
    stage: str
    rank: int
    role: str
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    attempt: int = 0
    deleting: bool = False
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    started: datetime | None = None
    finished: datetime | None = None
    created: datetime | None = None

    @property
    def result(self) -> dict[str, Any] | None:
        """The work unit's summary from the termination message, when it is JSON."""
        if not self.message:
            return None
        try:
            data = json.loads(self.message)
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    @property
    def done(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


@dataclass
class Observed:
    """The children of one TrainingJob, and the latest progress read from pod logs."""

    pods: list[PodView] = field(default_factory=list)
    services: set[str] = field(default_factory=set)
    config_maps: set[str] = field(default_factory=set)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Unit name → its latest JSON-line event from the rank-0 pod's log."""

    def unit_pods(self, unit: str) -> list[PodView]:
        return sorted((p for p in self.pods if p.unit == unit), key=lambda p: (p.rank, p.name))


def parse_time(value: Any) -> datetime | None:
    """A Kubernetes timestamp ("2026-01-01T00:00:00Z") as a datetime; None stays None."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def pod_view(pod: dict[str, Any]) -> PodView:
    """A PodView from a pod as the API returns it (a dict in camelCase)."""
    meta = pod.get("metadata") or {}
    lab = meta.get("labels") or {}
    status = pod.get("status") or {}
    terminated: dict[str, Any] = {}
    started = parse_time(status.get("startTime"))
    # The unit's own container ("worker") reports; a program container beside it does not.
    containers = sorted(status.get("containerStatuses") or [],
                        key=lambda c: c.get("name") == "worker")
    for container in containers:
        state = container.get("state") or {}
        if state.get("terminated"):
            terminated = state["terminated"]
        elif state.get("running"):
            started = parse_time(state["running"].get("startedAt")) or started
    return PodView(
        name=meta.get("name", ""),
        unit=lab.get(LABEL_UNIT, ""),
        stage=lab.get(LABEL_STAGE, ""),
        rank=int(lab.get(LABEL_RANK, "0")),
        role=lab.get(LABEL_ROLE, "worker"),
        phase=status.get("phase", "Pending"),
        attempt=int(lab.get(LABEL_ATTEMPT, "0")),
        deleting=meta.get("deletionTimestamp") is not None,
        exit_code=terminated.get("exitCode"),
        # an eviction is told on the pod (status.reason), not on its container
        reason=terminated.get("reason") or status.get("reason"),
        message=terminated.get("message"),
        started=parse_time(terminated.get("startedAt")) or started,
        finished=parse_time(terminated.get("finishedAt")),
        created=parse_time(meta.get("creationTimestamp")),
    )


def _seconds(pods: list[PodView], now: datetime) -> float:
    """Wall seconds the gang has held its resources: its longest-running pod."""
    spans = [((p.finished or now) - p.started).total_seconds()
             for p in pods if p.started is not None]  # a pod waiting for a node holds nothing
    return max(0.0, max(spans, default=0.0))


def unit_observation(pods: list[PodView], nodes: int, now: datetime,
                     progress: dict[str, Any] | None = None) -> Observation:
    """The engine's view of one unit from its pods (those of its latest attempt)."""
    if not pods:
        return Observation(Seen.NOT_STARTED)
    attempt = max(p.attempt for p in pods)
    current = sorted((p for p in pods if p.attempt == attempt), key=lambda p: p.rank)
    seconds = _seconds(current, now)
    failed = [p for p in current if p.phase == "Failed"]
    if any(p.deleting for p in current):
        return Observation(Seen.STOPPING, attempt, seconds)
    if any(p.reason in LOST_REASONS for p in failed):
        return Observation(Seen.LOST, attempt, seconds)  # the node let it go: not its fault
    if failed:
        pod = failed[0]
        return Observation(Seen.FAILED, attempt, seconds, result=pod.result,
                           exit_code=pod.exit_code, reason=pod.reason,
                           output=None if pod.result else pod.message)
    if len(current) < nodes:
        return Observation(Seen.LOST, attempt, seconds)
    if all(p.phase == "Succeeded" for p in current):
        return Observation(Seen.SUCCEEDED, attempt, seconds, result=current[0].result)
    return Observation(Seen.RUNNING, attempt, seconds, progress=progress)


def observations(observed: Observed, plan: Plan, now: datetime) -> dict[str, Observation]:
    """Every unit with children, as the engine reads them."""
    by_unit: dict[str, list[PodView]] = {}
    for pod in observed.pods:
        by_unit.setdefault(pod.unit, []).append(pod)
    result = {}
    for name, pods in by_unit.items():
        unit = plan.unit(name)
        result[name] = unit_observation(pods, unit.nodes if unit else 1, now,
                                        observed.progress.get(name))
    return result
