"""The reconciles' Kubernetes Events, posted after the children: once no reconcile is in flight.

A burst of new jobs (50 applied at once) keeps every reconcile worker busy creating children;
each job's two Events (Planned, StageRunning) are API writes as heavy as a child's, and posted
at once they take the API server from the children of the jobs still waiting. Held here, they
are posted as soon as no reconcile runs, or, under a steady stream of reconciles, by the first
one to finish ``max_delay`` seconds after the oldest was held. Nothing is lost: the last
reconcile to finish posts whatever is held. One job alone sees no delay (its reconcile is the
only one in flight).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import kopf

LOG = logging.getLogger(__name__)

MAX_DELAY_SECONDS = 5.0


class HeldEvents:
    """Events held while reconciles run; ``post`` is called outside the lock."""

    def __init__(self, max_delay: float = MAX_DELAY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._max_delay = max_delay
        self._running = 0
        self._held: list[Callable[[], None]] = []
        self._oldest = 0.0

    def begin(self) -> None:
        """A reconcile starts."""
        with self._lock:
            self._running += 1

    def hold(self, post: Callable[[], None]) -> None:
        """Post later (at once when no reconcile is in flight)."""
        with self._lock:
            if self._running == 0:
                due = [post]
            else:
                if not self._held:
                    self._oldest = self._clock()
                self._held.append(post)
                due = []
        _post(due)

    def end(self) -> None:
        """A reconcile finished: post what is held if it was the last one, or held too long."""
        with self._lock:
            self._running -= 1
            due: list[Callable[[], None]] = []
            if self._held and (self._running == 0
                               or self._clock() - self._oldest >= self._max_delay):
                due, self._held = self._held, []
        _post(due)

    @property
    def held(self) -> int:
        return len(self._held)


def _post(calls: list[Callable[[], None]]) -> None:
    for call in calls:
        try:
            call()
        except RuntimeError as error:  # kopf's loop closed: the operator is stopping
            LOG.warning("an Event was not posted: %s", error)


def kopf_event(body: kopf.Body, **fields: Any) -> Callable[[], None]:
    """``kopf.event(body, ...)`` to be called later, from any thread: in this handler's context
    (kopf finds its event queue there)."""
    return partial(contextvars.copy_context().run, kopf.event, body, **fields)


EVENTS = HeldEvents()
