"""The operator's queue in front of the pool: which waiting TrainingJobs may start now.

A pure decision over a snapshot of the jobs the operator watches (admission.py keeps it from
kopf's index): how many run cluster-wide and per namespace, and who waits. Waiting jobs start
highest ``spec.runPolicy.priority`` first, then first come (creation time), first served. A
job that its namespace's limit holds back does not hold back jobs of other namespaces.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limits:
    """How many jobs may run at once; 0 means no limit."""

    cluster: int = 0
    namespace: int = 0

    @property
    def enabled(self) -> bool:
        return self.cluster > 0 or self.namespace > 0


@dataclass(frozen=True)
class Entry:
    """One watched job as the queue sees it."""

    uid: str
    namespace: str
    name: str
    created: str
    """metadata.creationTimestamp (RFC 3339 in UTC, so it sorts as text)."""
    priority: int = 0
    running: bool = False
    """Holds a place in the pool: admitted, not suspended, not finished."""


def order_key(entry: Entry) -> tuple[int, str, str, str]:
    """Higher priority first, then older first; namespace and name break exact ties."""
    return (-entry.priority, entry.created, entry.namespace, entry.name)


@dataclass(frozen=True)
class Waiting:
    """A job that must wait: its place (1 = next) and which limit holds it."""

    position: int
    held_by: str
    """"cluster" or "namespace"."""


@dataclass
class QueueDecision:
    admit: list[str] = field(default_factory=list)
    """Uids that may start now, in queue order."""
    waiting: dict[str, Waiting] = field(default_factory=dict)
    """Uid → its place, for the jobs that wait."""
    running: int = 0
    """Jobs holding a place cluster-wide after the admissions."""
    running_in: dict[str, int] = field(default_factory=dict)
    """Namespace → jobs holding a place there after the admissions."""


def decide(entries: Iterable[Entry], limits: Limits) -> QueueDecision:
    """Admit waiting jobs in queue order while the limits leave room; number the rest."""
    entries = list(entries)
    total = sum(1 for e in entries if e.running)
    per_namespace = Counter(e.namespace for e in entries if e.running)
    decision = QueueDecision()
    for entry in sorted((e for e in entries if not e.running), key=order_key):
        if limits.cluster and total >= limits.cluster:
            held_by = "cluster"
        elif limits.namespace and per_namespace[entry.namespace] >= limits.namespace:
            held_by = "namespace"
        else:
            decision.admit.append(entry.uid)
            total += 1
            per_namespace[entry.namespace] += 1
            continue
        decision.waiting[entry.uid] = Waiting(len(decision.waiting) + 1, held_by)
    decision.running, decision.running_in = total, dict(per_namespace)
    return decision


def waiting_message(waiting: Waiting, limits: Limits, decision: QueueDecision,
                    namespace: str) -> str:
    """Why a job waits, for its Queued condition."""
    if waiting.held_by == "cluster":
        held = f"{decision.running} of {limits.cluster} jobs run cluster-wide"
    else:
        held = (f"{decision.running_in.get(namespace, 0)} of {limits.namespace} jobs run in "
                f"namespace {namespace}")
    return f"position {waiting.position} in the queue: {held}"
