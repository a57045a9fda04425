"""The Lease behind leader election: the election's settings, what a Lease holds, and the
pure decisions a replica makes about it (``sight``, ``decide``, ``must_stand_down``,
``claim``). ``leader.py`` drives them against the API server; why they keep two replicas from
being active at once is told there.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..api.resource import ManifestError

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_LEASE_NAME = "kubetrain-operator"


# --- settings -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ElectionConfig:
    """Where the Lease is, who this replica is, and the timings (seconds)."""

    lease_name: str
    namespace: str
    identity: str
    lease_seconds: int = 10
    renew_deadline_seconds: float = 7.0
    retry_seconds: float = 2.0


def timing_problems(lease_seconds: float, renew_deadline_seconds: float,
                    retry_seconds: float) -> list[str]:
    """What is wrong with the timings: each positive, retry < renew deadline < lease."""
    problems = []
    if lease_seconds < 1 or lease_seconds != int(lease_seconds):
        problems.append(f"--lease-seconds: {lease_seconds} is not a whole number >= 1")
    if retry_seconds <= 0:
        problems.append(f"--retry-seconds: {retry_seconds} must be > 0")
    if not renew_deadline_seconds < lease_seconds:
        problems.append(f"--renew-deadline-seconds: {renew_deadline_seconds} must be less than "
                        f"--lease-seconds ({lease_seconds}), else two operators may be active "
                        "at once")
    if retry_seconds > 0 and not retry_seconds < renew_deadline_seconds:
        problems.append(f"--retry-seconds: {retry_seconds} must be less than "
                        f"--renew-deadline-seconds ({renew_deadline_seconds})")
    return problems


def default_identity(environ: Mapping[str, str]) -> str:
    """$POD_NAME (the chart sets it from the downward API), else host-pid."""
    return environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def default_namespace(environ: Mapping[str, str]) -> str | None:
    """$POD_NAMESPACE, else the service account's namespace (in a pod), else None."""
    if environ.get("POD_NAMESPACE"):
        return environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


def election_config(*, lease_name: str | None, namespace: str | None, identity: str | None,
                    lease_seconds: float, renew_deadline_seconds: float, retry_seconds: float,
                    environ: Mapping[str, str] | None = None) -> ElectionConfig:
    """The settings from the command line, with defaults from the environment; ManifestError
    naming the flag when one is wrong."""
    environ = os.environ if environ is None else environ
    problems = timing_problems(lease_seconds, renew_deadline_seconds, retry_seconds)
    namespace = namespace or default_namespace(environ)
    if not namespace:
        problems.append("--lease-namespace: not given, and neither $POD_NAMESPACE nor a service "
                        "account namespace is there (outside a pod, name the namespace)")
    if problems:
        raise ManifestError(problems, "leader election")
    assert namespace is not None
    return ElectionConfig(lease_name=lease_name or DEFAULT_LEASE_NAME, namespace=namespace,
                          identity=identity or default_identity(environ),
                          lease_seconds=int(lease_seconds),
                          renew_deadline_seconds=renew_deadline_seconds,
                          retry_seconds=retry_seconds)


# --- the Lease and the pure decisions -------------------------------------------------------

@dataclass(frozen=True)
class LeaseRecord:
    """What matters of a Lease object."""

    holder: str | None
    lease_seconds: float
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int
    resource_version: str


class Action(StrEnum):
    CREATE = "create"    # there is no Lease yet
    ACQUIRE = "acquire"  # released, or its holder has not renewed for leaseSeconds
    RENEW = "renew"      # ours (also after a restart of this container: same identity)
    WAIT = "wait"        # another's, still valid


@dataclass(frozen=True)
class Sighting:
    """A version of the Lease and when this replica first saw it (its monotonic clock)."""

    resource_version: str
    since: float


def sight(previous: Sighting | None, record: LeaseRecord | None, now: float) -> Sighting | None:
    """The sighting after reading ``record`` at ``now``: kept while the version is unchanged."""
    if record is None:
        return None
    if previous is not None and previous.resource_version == record.resource_version:
        return previous
    return Sighting(record.resource_version, now)


def decide(record: LeaseRecord | None, me: str, sighting: Sighting | None,
           now: float) -> Action:
    """What a replica does with the Lease it just read."""
    if record is None:
        return Action.CREATE
    if record.holder == me:
        return Action.RENEW
    if not record.holder:
        return Action.ACQUIRE
    if sighting is None or sighting.resource_version != record.resource_version:
        return Action.WAIT  # not seen long enough to know it is stale
    return Action.ACQUIRE if now - sighting.since >= record.lease_seconds else Action.WAIT


def must_stand_down(last_renewed: float, now: float, renew_deadline_seconds: float) -> bool:
    """The holder stops when its last successful renewal started renewDeadline ago or more."""
    return now - last_renewed >= renew_deadline_seconds


def micro_time(moment: datetime) -> str:
    """A MicroTime as the API server wants it (RFC 3339, microseconds, Z)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claim(record: LeaseRecord | None, me: str, wall: datetime, lease_seconds: int) -> dict[
        str, Any]:
    """The Lease spec that makes (or keeps) ``me`` the holder."""
    taking = record is None or record.holder != me
    acquired = wall if taking or record is None or record.acquire_time is None \
        else record.acquire_time
    transitions = 0 if record is None else record.transitions + (1 if taking else 0)
    return {"holderIdentity": me, "leaseDurationSeconds": lease_seconds,
            "acquireTime": micro_time(acquired), "renewTime": micro_time(wall),
            "leaseTransitions": transitions}
