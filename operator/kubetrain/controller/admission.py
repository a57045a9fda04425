"""The queue in front of the pool, as the operator runs it (the decision is queue.py's).

With a limit set (``maxRunningJobs``, ``maxRunningJobsPerNamespace``), every reconcile of a job
that has not started (or asks to resume) goes through ``Admissions.hold`` first: the job starts
when the queue admits it, else its status says Queued with its place, and the engine is not
called. What runs and what waits comes from a kopf index (kept in memory from the watch
events, no listing); a job admitted here counts as running until the watch shows it Running,
and one lock around the decision keeps two concurrent reconciles from both taking the last
place. A job with Kueue's queue label is left to Kueue: it neither waits nor counts here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import kopf

from ..api.resource import GROUP, PLURAL, VERSION, TrainingJob
from ..api.status import Phase, QueueStatus, Reason, TrainingJobStatus
from ..pipeline import status as st
from ..pipeline.actions import Event
from . import kube
from .builders import LABEL_QUEUE
from .posting import EVENTS, job_event
from .queue import Entry, Limits, QueueDecision, decide, waiting_message
from .settings import OperatorConfig, current_config
from .validate import semantic_problems

LOG = logging.getLogger(__name__)
INDEX = "queue_jobs"
"""The index's name: the keyword under which kopf hands it to the handlers."""
TURN = f"queue.{GROUP}/turn"
"""Annotation set on a waiting job when a place frees for it: its reconcile runs at once
(an update handler watches it) instead of at the next periodic pass. Not under ``kubetrain.io/``:
kopf leaves its own storage prefix out of the diffs, so no handler would see it change."""


def kueue_managed(body: Mapping[str, Any]) -> bool:
    """Kueue admits this job: its queue label is set, or spec.runPolicy.queueName sets it."""
    labels = (body.get("metadata") or {}).get("labels") or {}
    policy = (body.get("spec") or {}).get("runPolicy") or {}
    return bool(labels.get(LABEL_QUEUE) or policy.get("queueName"))


def entry_of(body: Mapping[str, Any]) -> Entry | None:
    """The job as the queue sees it; None when it takes no part (finished, suspended, Kueue)."""
    metadata = body.get("metadata") or {}
    policy = (body.get("spec") or {}).get("runPolicy") or {}
    phase = (body.get("status") or {}).get("phase") or Phase.PENDING
    if phase in (Phase.SUCCEEDED, Phase.FAILED) or policy.get("suspend") or \
            kueue_managed(body) or not metadata.get("uid"):
        return None
    priority = policy.get("priority", 0)
    return Entry(uid=metadata["uid"], namespace=metadata.get("namespace") or "",
                 name=metadata.get("name") or "",
                 created=metadata.get("creationTimestamp") or "",
                 priority=priority if isinstance(priority, int) else 0,
                 running=phase == Phase.RUNNING)


def _takes_part(body: kopf.Body, **_: Any) -> bool:
    return current_config().queue_limits().enabled and entry_of(body) is not None


@kopf.index(GROUP, VERSION, PLURAL, when=_takes_part)
async def queue_jobs(body: kopf.Body, **_: Any) -> Entry | None:
    """Kept by kopf from the watch: the jobs that run or wait (others drop out by ``when``)."""
    return entry_of(body)


def leave_queue(status: TrainingJobStatus, message: str, at: str) -> None:
    """The job goes on to the engine: a Queued one becomes what it was before it waited
    (Pending, or Suspended when it had run: the engine then resumes it from its checkpoints)."""
    if status.phase == Phase.QUEUED:
        status.phase = Phase.SUSPENDED if status.start_time else Phase.PENDING
        status.progress = None
    status.queue = None
    if any(c.type == "Queued" and c.status == "True" for c in status.conditions):
        st.set_condition(status, "Queued", "False", Reason.ADMITTED, message, at)


def enter_queue(status: TrainingJobStatus, position: int, message: str, at: str) -> None:
    """The job waits: phase Queued, its place in status.queue and the Progress column."""
    status.phase = Phase.QUEUED
    status.queue = QueueStatus(position=position)
    status.progress = f"queue position {position}"
    st.set_condition(status, "Queued", "True", Reason.QUEUED, message, at)


class Admissions:
    """The admit decision under one lock, and the jobs admitted but not yet seen Running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._admitted: set[str] = set()
        self._left: set[str] = set()
        """Jobs whose reconcile saw them leave the pool before the watch shows it: the jobs
        woken for their places must not find them still running."""

    def _snapshot(self, indexed: Iterable[Entry]) -> dict[str, Entry]:
        """The index with what this process knows sooner (call with the lock held)."""
        entries = {e.uid: e for e in indexed}
        self._left &= entries.keys()  # gone from the index: the watch caught up
        for uid in self._left:
            del entries[uid]
        # The watch caught up (Running), or the job left (finished, suspended, deleted).
        self._admitted = {uid for uid in self._admitted
                          if uid in entries and not entries[uid].running}
        return entries

    def decide(self, me: Entry, indexed: Iterable[Entry], limits: Limits) -> QueueDecision:
        """Admit ``me`` if the queue lets it start now (then it counts as running at once)."""
        with self._lock:
            entries = self._snapshot(indexed)
            self._left.discard(me.uid)
            entries[me.uid] = me
            if me.uid in self._admitted:
                decision = QueueDecision(admit=[me.uid])
            else:
                for uid in self._admitted:
                    entries[uid] = replace(entries[uid], running=True)
                decision = decide(entries.values(), limits)
                if me.uid in decision.admit:
                    self._admitted.add(me.uid)
            return decision

    def admit(self, job: TrainingJob, body: Mapping[str, Any], indexed: Iterable[Entry],
              config: OperatorConfig, now: datetime) -> tuple[bool, list[Event]]:
        """(True, events) when the job must wait: ``job.status`` then says Queued with its
        place. False: the engine goes on; a Queued status was turned back into what it was."""
        limits = config.queue_limits()
        me = entry_of(body) if limits.enabled else None
        at = st.timestamp(now)
        if me is None or me.running or semantic_problems(job, config.worker_settings()):
            if job.status is not None:  # an invalid spec fails at once instead of waiting
                leave_queue(job.status, "left the queue", at)
            return False, []
        decision = self.decide(me, indexed, limits)
        status = job.status = job.status or TrainingJobStatus()
        if me.uid in decision.admit:
            events = [Event("Normal", Reason.ADMITTED, "admitted from the queue")] \
                if status.phase == Phase.QUEUED else []
            leave_queue(status, "admitted", at)
            return False, events
        waiting = decision.waiting[me.uid]
        message = waiting_message(waiting, limits, decision, me.namespace)
        events = [Event("Normal", Reason.QUEUED, message)] if status.phase != Phase.QUEUED \
            else []
        enter_queue(status, waiting.position, message, at)
        return True, events

    def next_up(self, leaving: str, indexed: Iterable[Entry],
                limits: Limits) -> list[Entry]:
        """The waiting jobs that may start now that ``leaving`` gave up its place."""
        if not limits.enabled:
            return []
        with self._lock:
            self._left.add(leaving)
            entries = self._snapshot(indexed)
            for uid in self._admitted:
                entries[uid] = replace(entries[uid], running=True)
        return [entries[uid] for uid in decide(entries.values(), limits).admit]

    def hand_over(self, leaving: str, index: Any, config: OperatorConfig, at: str) -> None:
        """A job left the pool: wake the jobs that take its place (a patch of TURN each)."""
        indexed: Iterable[Entry] = index.get(None, ()) if index is not None else ()
        for entry in self.next_up(leaving, indexed, config.queue_limits()):
            try:
                kube.api().merge_patch(kube.TRAINING_JOBS, entry.namespace, entry.name,
                                       {"metadata": {"annotations": {TURN: at}}})
            except kube.ApiError as error:  # the periodic pass still admits it, only later
                if error.status != 404:
                    LOG.warning("could not wake %s/%s in the queue: %s %s", entry.namespace,
                                entry.name, error.status, error.reason)

    def hold(self, job: TrainingJob, body: Mapping[str, Any], index: Any,
             config: OperatorConfig, now: datetime) -> bool:
        """``admit`` with kopf's index, its events posted: True when the job must wait."""
        indexed: Iterable[Entry] = index.get(None, ()) if index is not None else ()
        wait, events = self.admit(job, body, indexed, config, now)
        for event in events:
            EVENTS.hold(job_event(body, type=event.type, reason=event.reason,
                                  message=event.message))
        return wait


ADMISSIONS = Admissions()
