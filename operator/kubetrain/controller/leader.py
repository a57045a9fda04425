"""Leader election on a Lease (coordination.k8s.io/v1): one active operator, the others wait.

With ``kubetrain operator --leader-elect`` (the chart turns it on when ``replicas`` > 1) the
operator first takes the Lease ``--lease-name`` in ``--lease-namespace``; only the holder runs
kopf (its watches and handlers) and the periodic pass. A standby polls the Lease every
``retrySeconds`` and meanwhile answers the liveness endpoint and serves /metrics (it is healthy
while it waits).

The holder renews the Lease every ``retrySeconds``, each write conditional on the Lease's
resourceVersion (a concurrent writer gets 409 Conflict). When it has not renewed for
``renewDeadlineSeconds`` (API server unreachable, renewals failing) or finds the Lease held by
another, it stops at once: the process exits with ``EXIT_LEADERSHIP_LOST``, the Deployment
restarts the container and it comes back as a standby. On a clean stop (SIGTERM, an upgrade)
it releases the Lease after kopf has stopped (deletes it, conditional on its resourceVersion:
nothing is left after an uninstall), so a standby takes over within one retry.

Why the two are never active at once: a standby takes a held Lease only after it has seen the
same version of it, unchanged, for ``leaseSeconds`` on its own monotonic clock (no comparison of
clocks across machines); the holder stops ``renewDeadlineSeconds`` (< ``leaseSeconds``) after the
start of its last successful renewal, which is before that version was written, so before any
standby can have seen it. The difference of the two is the margin for a slow process.
A container restarted in the same pod (same identity) takes its own Lease back at once: its
previous process is gone.

Takeover after the holder dies without releasing (SIGKILL, node lost): leaseSeconds plus up to
one retry plus kopf's start, about 10-14 s with the defaults (10 s, 7 s, 2 s).

The decisions (``sight``, ``decide``, ``must_stand_down``, ``claim``) are pure functions in
``lease.py``, with the election's settings; ``Elector`` drives them against a ``LeaseStore``
(the API server, or a fake in tests).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlparse

from prometheus_client import Gauge

from . import kube
from .kube import LEASES, ApiError
from .lease import (
    Action,
    ElectionConfig,
    LeaseRecord,
    Sighting,
    claim,
    decide,
    micro_time,
    must_stand_down,
    sight,
)
from .metrics import REGISTRY

LOG = logging.getLogger("kubetrain.leader")
EXIT_LEADERSHIP_LOST = 3

ACTIVE = Gauge("kubetrain_leader", "1 while this replica is the active operator (holds the "
               "Lease, or runs without leader election), 0 while it stands by",
               registry=REGISTRY)


# --- talking to a store of Leases ------------------------------------------------------------

class Conflict(Exception):
    """The Lease changed (or appeared) since it was read: the write was refused."""


class LeaseStore(Protocol):
    def read(self) -> LeaseRecord | None: ...

    def create(self, spec: dict[str, Any]) -> LeaseRecord: ...

    def replace(self, spec: dict[str, Any], resource_version: str,
                timeout: float) -> LeaseRecord: ...

    def delete(self, resource_version: str, timeout: float) -> None: ...


def _record(lease: dict[str, Any]) -> LeaseRecord:
    spec = lease.get("spec") or {}

    def when(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None

    return LeaseRecord(holder=spec.get("holderIdentity") or None,
                       lease_seconds=float(spec.get("leaseDurationSeconds") or 0),
                       acquire_time=when(spec.get("acquireTime")),
                       renew_time=when(spec.get("renewTime")),
                       transitions=int(spec.get("leaseTransitions") or 0),
                       resource_version=lease["metadata"]["resourceVersion"])


class KubeLeaseStore:
    """The Lease on the API server, through its own connection pool (renewals never wait
    behind the handlers' requests)."""

    def __init__(self, name: str, namespace: str, request_timeout: float = 5.0,
                 owner: dict[str, Any] | None = None) -> None:
        self._api = kube.Kube(pool_size=2)  # credentials: in a pod, else the kubeconfig
        self._name, self._namespace = name, namespace
        self._timeout = request_timeout
        self._owner = owner

    def _body(self, spec: dict[str, Any], resource_version: str | None = None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self._name, "namespace": self._namespace,
                                    "labels": {"app.kubernetes.io/name": "kubetrain",
                                               "app.kubernetes.io/component": "leader-election"}}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        if self._owner is not None:
            metadata["ownerReferences"] = [self._owner]
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                "spec": spec}

    def read(self) -> LeaseRecord | None:
        try:
            return _record(self._api.get(LEASES, self._namespace, self._name,
                                         timeout=self._timeout))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def create(self, spec: dict[str, Any]) -> LeaseRecord:
        try:
            return _record(self._api.create(LEASES, self._namespace, self._body(spec),
                                            timeout=self._timeout))
        except ApiError as error:
            if error.status == 409:
                raise Conflict("the Lease was created by another replica") from None
            raise

    def replace(self, spec: dict[str, Any], resource_version: str,
                timeout: float) -> LeaseRecord:
        try:
            return _record(self._api.replace(LEASES, self._namespace, self._name,
                                             self._body(spec, resource_version),
                                             timeout=max(timeout, 0.1)))
        except ApiError as error:
            if error.status == 409:
                raise Conflict("the Lease changed since it was read") from None
            raise

    def delete(self, resource_version: str, timeout: float) -> None:
        try:
            self._api.delete(LEASES, self._namespace, self._name,
                             resource_version=resource_version, timeout=max(timeout, 0.1))
        except ApiError as error:
            if error.status == 409:
                raise Conflict("the Lease changed since it was read") from None
            if error.status != 404:
                raise


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _exit_now(reason: str) -> None:
    """Stop acting at once: no handler may run past this point."""
    LOG.error("standing down at %s: %s; exiting with %d so the pod restarts as a standby",
              micro_time(_utcnow()), reason, EXIT_LEADERSHIP_LOST)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_LEADERSHIP_LOST)


class Elector:
    """One replica's side of the election: wait for the Lease, then keep it or stop."""

    def __init__(self, config: ElectionConfig, store: LeaseStore, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = _utcnow,
                 sleep: Callable[[float], None] = time.sleep,
                 stand_down: Callable[[str], None] = _exit_now) -> None:
        self.config, self.store = config, store
        self._clock, self._wall, self._sleep, self._stand_down = clock, wall, sleep, stand_down
        self.sighting: Sighting | None = None
        self.record: LeaseRecord | None = None  # the Lease as last written by this replica
        self.last_renewed = -math.inf
        self.leading = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # standby
    def try_acquire(self) -> bool:
        """One round: read the Lease, decide, write. True when this replica now holds it."""
        me = self.config.identity
        started = self._clock()
        try:
            record = self.store.read()
            self.sighting = sight(self.sighting, record, started)
            action = decide(record, me, self.sighting, started)
            if action == Action.WAIT:
                return False
            spec = claim(record, me, self._wall(), self.config.lease_seconds)
            if record is None:
                written = self.store.create(spec)
            else:
                written = self.store.replace(spec, record.resource_version,
                                             self.config.renew_deadline_seconds)
        except Conflict:
            return False  # another replica wrote first: read again next round
        except Exception as error:  # the API server unreachable: a standby just keeps trying
            LOG.warning("leader election: cannot read or take the Lease: %s", error)
            return False
        self.record, self.last_renewed, self.leading = written, started, True
        ACTIVE.set(1)
        LOG.info("active at %s: holds Lease %s/%s as %s (transitions %d, previous holder %s)",
                 micro_time(self._wall()), self.config.namespace, self.config.lease_name, me,
                 written.transitions, record.holder if record else None)
        return True

    def wait_until_leader(self) -> None:
        LOG.info("standing by at %s as %s: waiting for Lease %s/%s",
                 micro_time(self._wall()), self.config.identity, self.config.namespace,
                 self.config.lease_name)
        ACTIVE.set(0)
        while not self.try_acquire():
            self._sleep(self.config.retry_seconds)

    # holder
    def renew_once(self) -> None:
        """One renewal; stands down when the Lease is another's or the deadline has passed."""
        assert self.record is not None
        started = self._clock()
        if must_stand_down(self.last_renewed, started, self.config.renew_deadline_seconds):
            self._lose(f"no renewal for {started - self.last_renewed:.1f}s")
            return
        remaining = self.last_renewed + self.config.renew_deadline_seconds - started
        try:
            spec = claim(self.record, self.config.identity, self._wall(),
                         self.config.lease_seconds)
            self.record = self.store.replace(spec, self.record.resource_version, remaining)
            self.last_renewed = started
        except Conflict:
            try:
                current = self.store.read()
            except Exception as error:
                LOG.warning("leader election: cannot read the Lease: %s", error)
                return
            if current is None or current.holder != self.config.identity:
                self._lose(f"the Lease is held by {current.holder if current else 'nobody'}")
            else:  # our own earlier write went through after all: renew from it next time
                self.record = current
        except Exception as error:
            LOG.warning("leader election: renewal failed (stops %.1fs after the last one): %s",
                        self.config.renew_deadline_seconds, error)

    def check_deadline(self) -> None:
        now = self._clock()
        if self.leading and must_stand_down(self.last_renewed, now,
                                            self.config.renew_deadline_seconds):
            self._lose(f"no renewal for {now - self.last_renewed:.1f}s")

    def _lose(self, reason: str) -> None:
        self.leading = False
        ACTIVE.set(0)
        self._stand_down(reason)

    def start_renewing(self) -> None:
        """Renew every retrySeconds, and a watchdog that stops the process at the deadline even
        while a renewal hangs, both on their own threads (a busy event loop cannot delay them)."""
        def renew() -> None:
            while not self._stop.wait(self.config.retry_seconds):
                self.renew_once()

        def watch() -> None:
            while not self._stop.wait(0.2):
                self.check_deadline()

        for target, name in ((renew, "lease-renew"), (watch, "lease-watchdog")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def release(self) -> None:
        """Stop renewing and give the Lease up (after kopf has stopped)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.config.renew_deadline_seconds)
        if not self.leading or self.record is None:
            return
        self.leading = False
        ACTIVE.set(0)
        try:
            self.store.delete(self.record.resource_version, self.config.retry_seconds)
            LOG.info("released Lease %s/%s at %s", self.config.namespace,
                     self.config.lease_name, micro_time(self._wall()))
        except Exception as error:  # a standby takes over when the Lease expires
            LOG.warning("leader election: could not release the Lease: %s", error)


# --- the standby's health endpoint ---------------------------------------------------------

def serve_standby_health(url: str) -> ThreadingHTTPServer:
    """Answer the liveness URL (200 "standby") until kopf takes its port over."""
    parsed = urlparse(url)
    path = parsed.path or "/"

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path.split("?", 1)[0] == path
            body = b'{"standby": true}\n' if ok else b"not found\n"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json" if ok else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # no line per probe
            pass

    port = 80 if parsed.port is None else parsed.port
    server = ThreadingHTTPServer((parsed.hostname or "0.0.0.0", port), Health)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="standby-health", daemon=True).start()
    return server


def lease_owner(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The holder's own Pod as the Lease's owner ($POD_NAME and $POD_UID, from the downward
    API in the chart): when the holder's pod is deleted (an uninstall, a rollout, a node
    drain) the garbage collector deletes the Lease too, even where the holder could not
    release it (killed, or its RBAC already gone). None outside a pod."""
    name, uid = environ.get("POD_NAME"), environ.get("POD_UID")
    if not name or not uid:
        return None
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}


def become_leader(config: ElectionConfig, liveness_url: str | None) -> Elector:
    """Block as a standby (healthy on ``liveness_url``) until this replica holds the Lease;
    then renew it in the background."""
    elector = Elector(config, KubeLeaseStore(config.lease_name, config.namespace,
                                             owner=lease_owner(os.environ)))
    server = serve_standby_health(liveness_url) if liveness_url else None
    try:
        elector.wait_until_leader()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    elector.start_renewing()
    return elector
