"""The reconciles' Kubernetes Events, posted after the children: once reconciles have paused.

A burst of new jobs (50 applied at once) keeps the reconcile workers busy creating children;
each job's two Events (Planned, StageRunning) are API writes as heavy as a child's, and posted
during the burst they take the API server (and the operator's loop) from the children of the
jobs still waiting. Held here, they are posted once no reconcile has run for ``quiet`` seconds
(a burst's reconciles follow each other closer than that, with short gaps between them: posting
at the first gap put many Events inside the burst), or, under a steady stream of reconciles,
once the oldest has waited ``max_delay`` seconds. Nothing is lost: a flusher thread posts
whatever comes due. One job alone sees its Events ``quiet`` seconds after its reconcile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..api.resource import API_VERSION, KIND
from . import kube

LOG = logging.getLogger(__name__)

MAX_DELAY_SECONDS = 5.0
QUIET_SECONDS = 1.0
COMPONENT = "kubetrain-operator"


class HeldEvents:
    """Events held while reconciles run. ``_take_due`` decides (under the lock, from the
    clock); the flusher thread, started with the first held Event, posts outside the lock."""

    def __init__(self, max_delay: float = MAX_DELAY_SECONDS, quiet: float = QUIET_SECONDS,
                 clock: Callable[[], float] = time.monotonic, flusher: bool = True) -> None:
        self._cond = threading.Condition()
        self._clock = clock
        self._max_delay = max_delay
        self._quiet = quiet
        self._running = 0
        self._held: list[Callable[[], None]] = []
        self._oldest = 0.0
        self._last_end = float("-inf")
        self._flusher = flusher
        self._thread: threading.Thread | None = None

    def begin(self) -> None:
        """A reconcile starts."""
        with self._cond:
            self._running += 1

    def end(self) -> None:
        """A reconcile finished: its Events come due ``quiet`` seconds later if none starts."""
        with self._cond:
            self._running -= 1
            self._last_end = self._clock()
            self._cond.notify()

    def hold(self, post: Callable[[], None]) -> None:
        """Post later (at once when no reconcile runs or ran within ``quiet`` seconds)."""
        with self._cond:
            if not self._held:
                self._oldest = self._clock()
            self._held.append(post)
            due = self._take_due()
            if self._held and self._flusher and self._thread is None:
                self._thread = threading.Thread(target=self._flush_forever, daemon=True,
                                                name="kubetrain-events")
                self._thread.start()
            self._cond.notify()
        _post(due)

    def flush(self) -> float | None:
        """Post what is due now; the seconds until the rest may come due (None: none held)."""
        with self._cond:
            due = self._take_due()
            wait = self._next_check()
        _post(due)
        return wait

    @property
    def held(self) -> int:
        return len(self._held)

    def _take_due(self) -> list[Callable[[], None]]:
        now = self._clock()
        quiet = self._running == 0 and now - self._last_end >= self._quiet
        if self._held and (quiet or now - self._oldest >= self._max_delay):
            due, self._held = self._held, []
            return due
        return []

    def _next_check(self) -> float | None:
        if not self._held:
            return None
        now = self._clock()
        aged = self._oldest + self._max_delay - now
        if self._running:
            return max(aged, 0.0)
        return max(min(aged, self._last_end + self._quiet - now), 0.0)

    def _flush_forever(self) -> None:
        while True:
            with self._cond:
                self._cond.wait(timeout=self._next_check())
            self.flush()


def _post(calls: list[Callable[[], None]]) -> None:
    for call in calls:
        try:
            call()
        except Exception as error:  # e.g. kopf's loop closed: the operator is stopping
            # An Event is not worth a reconcile, nor the flusher thread (it posts the rest).
            LOG.warning("an Event was not posted: %s", error)


def job_event(body: Mapping[str, Any], *, type: str, reason: str,
              message: str) -> Callable[[], None]:
    """A Kubernetes Event about the TrainingJob ``body``, to be posted later from any thread
    (posted by the operator's own client: the periodic pass runs outside kopf's handlers,
    where kopf's event queue is not reachable)."""
    metadata = body.get("metadata") or {}
    namespace = metadata.get("namespace") or "default"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{metadata.get('name', 'trainingjob')}.",
                     "namespace": namespace},
        "involvedObject": {"apiVersion": API_VERSION, "kind": KIND,
                           "name": metadata.get("name"), "namespace": namespace,
                           "uid": metadata.get("uid")},
        "type": type, "reason": reason, "message": message[:1000],
        "source": {"component": COMPONENT},  # the "From" column of kubectl describe
        "reportingComponent": COMPONENT,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }

    def post() -> None:
        kube.api().create(kube.EVENTS, namespace, event)
    return post


EVENTS = HeldEvents()
