"""The reconcile decision: the stage engine's step, in Kubernetes objects.

One pure function, called on create, resume, spec change and by the periodic pass over active
jobs. The pods of each work unit become the engine's observations (observe.py); its launches
become pods and Services (builders.py), its stops pod deletions. Children have fixed names, so
creating one that exists is harmless, and a child launched by a reconcile whose status was
never written is adopted by the engine, not launched twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..api.resource import TrainingJob
from ..api.status import Phase, StagePhase, TrainingJobStatus
from ..pipeline.actions import Context, Event
from ..pipeline.engine import advance
from ..pipeline.plan import Plan, plan
from . import builders as b
from .observe import Observed, observations
from .validate import semantic_problems


@dataclass
class Decision:
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str, int]] = field(default_factory=list)
    """(kind, name, grace seconds) of children to delete."""
    status: TrainingJobStatus = field(default_factory=TrainingJobStatus)
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False
    """ttlSecondsAfterFinished passed: delete the TrainingJob itself."""


def job_plan(job: TrainingJob) -> Plan:
    return plan(job.spec, job.metadata.name)


def reconcile(job: TrainingJob, observed: Observed, settings: b.WorkerSettings,
              now: datetime) -> Decision:
    """The one reconcile decision for a TrainingJob (pure: no API calls, no clock)."""
    the_plan = job_plan(job)
    terminal = job.status is not None and Phase(job.status.phase).terminal
    problems = () if terminal else tuple(semantic_problems(job, settings))
    ctx = Context(now=now, storage=b.storage_dir(job, settings) if not problems else "",
                  problems=problems)
    step = advance(the_plan, job, observations(observed, the_plan, now), ctx)
    decision = Decision(status=step.status, events=step.events, delete_job=step.expired)
    existing = {"Pod": {p.name for p in observed.pods}, "Service": set(observed.services),
                "ConfigMap": set(observed.config_maps)}

    def ensure(obj: dict[str, Any]) -> None:
        names = existing[obj["kind"]]
        if obj["metadata"]["name"] not in names:
            decision.create.append(obj)
            names.add(obj["metadata"]["name"])  # once a decision

    if step.launch:
        ensure(b.job_config_map(job))
    for stage in step.status.stages.values():  # a running unit's Services, if one was deleted
        for name, record in stage.units.items():
            unit = the_plan.unit(name)
            if unit is not None and record.phase == StagePhase.RUNNING:
                for service in b.unit_services(job, unit):
                    ensure(service)
    for launch in step.launch:
        if launch.status_file is not None:
            ensure(b.status_config_map(job, launch.status_file))
        for obj in (*b.unit_services(job, launch.unit),
                    *b.unit_pods(job, launch.unit, launch.attempt, settings, launch.args,
                                 status_file=launch.status_file is not None)):
            ensure(obj)
    for stop in step.stop:
        for pod in observed.pods:
            if pod.unit == stop.unit and not pod.deleting:
                decision.delete.append(("Pod", pod.name, stop.grace_seconds))
    return decision
