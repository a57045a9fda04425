"""The stage engine's contract: what an executor observed of its units, and what to do next.

An executor (local processes, or pods on Kubernetes) turns what it sees into one
:class:`Observation` per work unit, calls ``engine.advance`` and carries out the returned
:class:`Step`: launch these units, stop those, write the status, post the events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from ..api.status import TrainingJobStatus
from .plan import WorkUnit


class Seen(StrEnum):
    """What an executor sees of a unit's current children (pods, or a process group)."""

    NOT_STARTED = "NotStarted"
    """Nothing exists: never launched, or gone."""
    RUNNING = "Running"
    """Launched and not finished (pods pending or running, a live process)."""
    SUCCEEDED = "Succeeded"
    """Every process exited 0 (every pod of a gang succeeded)."""
    FAILED = "Failed"
    """A process exited non-zero (a pod of the gang failed)."""
    STOPPING = "Stopping"
    """Being removed (a pod with a deletion timestamp, a process told to stop)."""
    LOST = "Lost"
    """Part of it vanished while it ran (a pod of a gang deleted, evicted, its node gone)."""


@dataclass(frozen=True)
class Observation:
    """One unit as its executor sees it now."""

    state: Seen
    attempt: int = 0
    """The attempt the children were launched for (a pod label, or the process's record)."""
    seconds: float = 0.0
    """Wall seconds this attempt has held its resources so far (or held until it ended)."""
    progress: Mapping[str, Any] | None = None
    """The latest progress event (``epoch`` or ``trial``) of the unit's reporting protocol."""
    result: Mapping[str, Any] | None = None
    """The unit's result object, once it ended (termination message, or result file)."""
    exit_code: int | None = None
    reason: str | None = None
    """Why it ended, as the executor knows it (Error, OOMKilled, Evicted, ...)."""
    output: str | None = None
    """The last lines of its output, for the message of a failure."""


@dataclass(frozen=True)
class Context:
    """What the engine needs besides the job and the observations."""

    now: datetime
    storage: str
    """The job's storage folder as the units see it (artifact paths in status)."""
    problems: tuple[str, ...] = ()
    """Problems with the spec that only the executor can see (Kubernetes: no storage claim);
    any makes the job Invalid."""
    interrupted: bool = False
    """The local executor was interrupted (Ctrl-C): stop everything, fail the job."""


@dataclass(frozen=True)
class Launch:
    unit: WorkUnit
    attempt: int
    args: tuple[str, ...] = ()
    """Arguments the engine adds: the best trial's parameters."""
    status_file: str | None = None
    """Content of a file the unit reads with ``--status-file`` (the report unit: the job's
    final status as JSON); the executor decides where the file lives."""


@dataclass(frozen=True)
class Stop:
    unit: str
    grace_seconds: int = 30
    """Time between SIGTERM and SIGKILL: a trainer checkpoints when told to stop."""


@dataclass(frozen=True)
class Event:
    type: str
    """Normal or Warning."""
    reason: str
    message: str


@dataclass
class Step:
    """What to do now: the new status, units to launch and to stop, events to post."""

    status: TrainingJobStatus
    launch: list[Launch] = field(default_factory=list)
    stop: list[Stop] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    expired: bool = False
    """runPolicy.ttlSecondsAfterFinished has passed: delete the job itself."""
