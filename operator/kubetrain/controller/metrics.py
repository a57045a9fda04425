"""The operator's Prometheus metrics, served on ``metricsPort`` at /metrics.

- ``kubetrain_trainingjobs{phase}``: TrainingJobs the operator watches, by phase (a gauge
  computed at scrape time from the jobs seen in the watch stream).
- ``kubetrain_stage_duration_seconds{stage,result}``: wall time of each stage that finished
  (a histogram; one observation when the reconcile that ends the stage writes its status).
- ``kubetrain_reconcile_errors_total{reason}``: reconciles that failed (API errors, bad specs,
  unexpected exceptions).
- ``kubetrain_reconciles_total`` and ``kubetrain_reconcile_duration_seconds``: all reconciles.

The stage observations are decided by a pure function of the status before and after a
reconcile, so an operator restart (which re-reads finished stages) does not count them twice.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..api.status import Phase, StagePhase, TrainingJobStatus
from .observe import parse_time

REGISTRY = CollectorRegistry(auto_describe=True)
PHASES: tuple[str, ...] = tuple(phase.value for phase in Phase)
FINISHED_STAGE = (StagePhase.SUCCEEDED, StagePhase.FAILED)


class JobPhases(Collector):
    """The phase of every TrainingJob seen in the watch stream, exported as counts by phase."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[str, str] = {}

    def set(self, uid: str, phase: str | None) -> None:
        with self._lock:
            self._phases[uid] = phase or "Pending"

    def forget(self, uid: str) -> None:
        with self._lock:
            self._phases.pop(uid, None)

    def counts(self) -> dict[str, int]:
        with self._lock:
            phases = list(self._phases.values())
        others = sorted(set(phases) - set(PHASES))
        return {phase: phases.count(phase) for phase in (*PHASES, *others)}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("kubetrain_trainingjobs",
                                   "TrainingJobs watched by this operator, by phase",
                                   labels=["phase"])
        for phase, count in self.counts().items():
            family.add_metric([phase], count)
        yield family


JOBS = JobPhases()
REGISTRY.register(JOBS)
STAGE_SECONDS = Histogram(
    "kubetrain_stage_duration_seconds", "Wall time of finished stages, start to completion",
    ["stage", "result"], registry=REGISTRY,
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400))
RECONCILE_ERRORS = Counter(
    "kubetrain_reconcile_errors_total", "Reconciles of a TrainingJob that failed, by reason",
    ["reason"], registry=REGISTRY)
RECONCILES = Counter("kubetrain_reconciles_total", "Reconciles of TrainingJobs",
                     registry=REGISTRY)
RECONCILE_SECONDS = Histogram(
    "kubetrain_reconcile_duration_seconds", "Time one reconcile takes (observe, decide, act)",
    registry=REGISTRY, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120))


def _seconds(start: str | None, end: str | None) -> float | None:
    begin, finish = parse_time(start), parse_time(end)
    if begin is None or finish is None:
        return None
    return max(0.0, (finish - begin).total_seconds())


def finished_stages(before: TrainingJobStatus | None,
                    after: TrainingJobStatus) -> list[tuple[str, str, float]]:
    """(stage, result, seconds) of the stages this reconcile finished: pure, for the histogram."""
    done: list[tuple[str, str, float]] = []
    for name, stage in after.stages.items():
        if stage.phase not in FINISHED_STAGE:
            continue
        previous = before.stages.get(name) if before is not None else None
        if previous is not None and previous.phase in FINISHED_STAGE:
            continue
        seconds = _seconds(stage.start_time, stage.completion_time)
        if seconds is not None:
            done.append((name, stage.phase, seconds))
    return done


def record_stages(before: TrainingJobStatus | None, after: TrainingJobStatus) -> None:
    for stage, result, seconds in finished_stages(before, after):
        STAGE_SECONDS.labels(stage=stage, result=result).observe(seconds)


_serving: set[int] = set()


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Serve /metrics from a background thread, once per port (no-op for port 0).

    Once: kopf runs the startup handlers again when an operator restarts in the same process
    (tests run several operators one after another).
    """
    if port and port not in _serving:
        start_http_server(port, addr=address, registry=REGISTRY)
        _serving.add(port)
