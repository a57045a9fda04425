"""The operator's own timer: every ``timerSeconds`` a pass reconciles the jobs that are active.

kopf's handlers reconcile a job on its own events (create, resume, a spec change, its turn in
the queue). While something can change without an event on the job itself (its children run,
it waits in the queue, or it waits for its TTL) it is also reconciled by this pass,
``timerSeconds`` after its last reconcile. The pass replaced kopf's per-job timers: a kopf timer
needs kopf's finalizer on the job, which kopf adds by a PATCH of its own as soon as the job
becomes active and removes by another when it is deleted; that PATCH cost the API server about
as much as a new job's ConfigMap and Pod together (``bench/api_request_costs.py``), and an
operator that was gone left the finalizers behind to block deletions. The pass needs none: the
jobs it reconciles come from the watch events (``ActiveJobs.seen``, called by the operator's
event handler), so a new job costs one write of its own (its first status).

A job is reconciled by one thing at a time: kopf's handler and the pass take the same
``job_lock``. A pass writes the status only if the job is still the version it reconciled (a
conditional PATCH), so a newer status written meanwhile by a handler is never overwritten by
an older view; the next pass sees the new version.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..api.status import Phase

LOG = logging.getLogger(__name__)
WORKERS = 4
"""Reconciles a pass runs at once (each mostly waits on the API server)."""


def is_active(body: Mapping[str, Any]) -> bool:
    """Whether the pass reconciles this job: only while something can change without an event
    on the job itself, that is, while its children run, it waits in the queue, or it waits for
    its TTL.

    Not a fresh job (no status yet): the create handler reconciles it at once. Not a suspended
    job (its running children were stopped when it was suspended; resuming is a spec change)
    nor a finished one (unless it waits for its TTL): 1,000 idle jobs cost the API server
    nothing.
    """
    status = body.get("status") or {}
    phase = status.get("phase")
    run_policy = (body.get("spec") or {}).get("runPolicy") or {}
    if not phase:
        return False
    if phase == Phase.SUSPENDED and run_policy.get("suspend"):
        return False
    if phase in (Phase.SUCCEEDED, Phase.FAILED):
        return run_policy.get("ttlSecondsAfterFinished") is not None
    return True


def uid_of(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("uid") or "")


@dataclass
class _Tracked:
    body: Mapping[str, Any]
    """The job as the watch last showed it."""
    last: float
    """When it was last reconciled (by a handler or a pass), on the monotonic clock."""
    busy: bool = False
    """A pass reconciles it now."""


class ActiveJobs:
    """The active jobs, kept from the watch events, and when each is next due."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[str, _Tracked] = {}

    def seen(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event: the job is tracked while it is active, its latest version kept.
        A job that becomes active was just reconciled (its status was written): its first
        pass comes ``interval`` later."""
        uid = uid_of(body)
        if not uid:
            return
        with self._lock:
            if event_type == "DELETED" or not is_active(body):
                self._jobs.pop(uid, None)
            elif uid in self._jobs:
                self._jobs[uid].body = body
            else:
                self._jobs[uid] = _Tracked(body, self._clock())

    def reconciled(self, uid: str) -> None:
        """A handler reconciled the job: its next pass comes ``interval`` later."""
        with self._lock:
            if uid in self._jobs:
                self._jobs[uid].last = self._clock()

    def clear(self) -> None:
        """Forget every job: an operator that starts (again, in the same process: kopf's
        test runner) learns its jobs from its own watch."""
        with self._lock:
            self._jobs.clear()

    def forget(self, uid: str) -> None:
        """The job is gone though no watch event said so (a watch that restarted from a new
        listing does not replay deletions): the pass stops reconciling it."""
        with self._lock:
            self._jobs.pop(uid, None)

    def take_due(self) -> list[str]:
        """The jobs due now, marked busy until ``done``."""
        now = self._clock()
        with self._lock:
            due = [uid for uid, job in self._jobs.items()
                   if not job.busy and now - job.last >= self.interval]
            for uid in due:
                self._jobs[uid].busy = True
        return due

    def body(self, uid: str) -> Mapping[str, Any] | None:
        """The job's latest version; None once it was deleted or is no longer active."""
        with self._lock:
            job = self._jobs.get(uid)
            return job.body if job is not None else None

    def done(self, uid: str) -> None:
        with self._lock:
            if uid in self._jobs:
                self._jobs[uid].busy = False
                self._jobs[uid].last = self._clock()

    def next_due(self) -> float:
        """Seconds until the next job comes due (``interval`` when none is tracked)."""
        now = self._clock()
        with self._lock:
            waits = [job.last + self.interval - now for job in self._jobs.values()
                     if not job.busy]
        return max(min(waits, default=self.interval), 0.0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)


class JobLocks:
    """One lock per job, so a job is reconciled by one thing at a time (striped: a fixed set
    of locks, a job's chosen by its uid; two jobs rarely share one, and nothing to clean up)."""

    def __init__(self, stripes: int = 64) -> None:
        self._locks = [threading.Lock() for _ in range(stripes)]

    @contextmanager
    def held(self, uid: str) -> Iterator[None]:
        with self._locks[zlib.crc32(uid.encode()) % len(self._locks)]:
            yield


class PeriodicPass:
    """A thread that hands each due job to ``reconcile`` (on ``WORKERS`` threads) until stopped.
    A failed reconcile is logged; the job comes due again ``interval`` later."""

    def __init__(self, jobs: ActiveJobs, locks: JobLocks,
                 reconcile: Callable[[Mapping[str, Any]], None],
                 workers: int = WORKERS) -> None:
        self._jobs = jobs
        self._locks = locks
        self._reconcile = reconcile
        self._workers = workers
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="kubetrain-pass")
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; wait (up to ``timeout``) for the reconciles in flight."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        with ThreadPoolExecutor(self._workers, thread_name_prefix="kubetrain-pass") as pool:
            while not self._stop.is_set():
                for uid in self._jobs.take_due():
                    pool.submit(self._one, uid)
                self._stop.wait(min(self._jobs.next_due(), self._jobs.interval))

    def _one(self, uid: str) -> None:
        try:
            with self._locks.held(uid):
                body = self._jobs.body(uid)  # the newest version, read under the lock
                if body is not None and not self._stop.is_set():
                    self._reconcile(body)
        except Exception:  # the next pass tries again
            LOG.exception("the periodic reconcile of the job with uid %s failed", uid)
        finally:
            self._jobs.done(uid)
