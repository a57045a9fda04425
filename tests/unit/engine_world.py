"""A scripted world for the stage engine: units 'run' as the test says, no process, no cluster.

``World.step()`` calls the engine with what the world holds, then carries the step out the way
an executor does: a launch makes the unit Running (for the attempt launched), a stop makes it
gone. Tests move units on with ``finish``, ``fail``, ``vanish`` and ``tick``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kubetrain.api import parse_training_job
from kubetrain.api.resource import TrainingJob
from kubetrain.api.status import TrainingJobStatus
from kubetrain.pipeline.actions import Context, Launch, Observation, Seen, Step
from kubetrain.pipeline.engine import advance
from kubetrain.pipeline.plan import Plan, plan

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def make_job(name: str = "digits", **spec: Any) -> TrainingJob:
    body: dict[str, Any] = {
        "dataset": {"builtin": "digits"},
        "model": {"builtin": "mlp"},
        "training": {"epochs": 10, "resources": {"cpu": "1", "memory": "2Gi"}},
    }
    body.update(copy.deepcopy(spec))
    return parse_training_job({"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
                               "metadata": {"name": name, "generation": 1}, "spec": body})


def sweep_spec(**tuning: Any) -> dict[str, Any]:
    return {"enabled": True, "sampler": "random", "trials": 4, "parallelism": 2,
            "searchSpace": {"learningRate": {"type": "float", "low": 1e-4, "high": 1e-1,
                                             "log": True}}, **tuning}


def train_result(**extra: Any) -> dict[str, Any]:
    return {"unit": "train", "status": "succeeded", "task": "classification", "epochs": 10,
            "epochs_run": 10, "best_epoch": 8, "best_metrics": {"val_loss": 0.2,
                                                                 "val_accuracy": 0.95},
            "test_metrics": {"test_accuracy": 0.94}, "seconds_after_best": 2.0,
            "overfitting": {"verdict": "none"}, "history": "/s/train/history.json",
            "model": "/s/train/model.pt", **extra}


def trial_result(number: int, state: str = "complete", value: float | None = 0.3,
                 **extra: Any) -> dict[str, Any]:
    return {"unit": f"trial-{number}", "status": "succeeded", "trial": number, "state": state,
            "value": value if state == "complete" else None,
            "params": {"learningRate": 0.01 * (number + 1)}, "epochs_run": 3, **extra}


def summary_result(**extra: Any) -> dict[str, Any]:
    return {"unit": "tune-summary", "status": "succeeded", "study": "digits",
            "trials": {"total": 4, "complete": 4}, "epochs_run": 12,
            "epochs_saved_by_pruning": 0,
            "best": {"trial": 1, "params": {"learningRate": 0.02}, "value": 0.1}, **extra}


RESULTS = {"train": train_result, "fold": train_result}


@dataclass
class World:
    job: TrainingJob
    now: datetime = T0
    units: dict[str, Observation] = field(default_factory=dict)
    started: dict[str, datetime] = field(default_factory=dict)
    launches: list[Launch] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    plan: Plan = field(init=False)

    def __post_init__(self) -> None:
        self.plan = plan(self.job.spec, self.job.metadata.name)

    @property
    def status(self) -> TrainingJobStatus:
        assert self.job.status is not None
        return self.job.status

    def step(self, **context: Any) -> Step:
        for name, seen in list(self.units.items()):
            if seen.state == Seen.RUNNING:  # seconds so far
                seconds = (self.now - self.started[name]).total_seconds()
                self.units[name] = replace(seen, seconds=seconds)
        ctx = Context(now=self.now, storage="/s", **context)
        step = advance(self.plan, self.job, dict(self.units), ctx)
        self.job = self.job.model_copy(update={"status": step.status})
        for stop in step.stop:
            self.units.pop(stop.unit, None)
        for launch in step.launch:
            self.launches.append(launch)
            self.units[launch.unit.name] = Observation(Seen.RUNNING, launch.attempt)
            self.started[launch.unit.name] = self.now
        self.steps.append(step)
        return step

    def tick(self, seconds: float = 10) -> None:
        self.now += timedelta(seconds=seconds)

    def running(self) -> list[str]:
        return sorted(n for n, s in self.units.items() if s.state == Seen.RUNNING)

    def finish(self, name: str, result: dict[str, Any] | None = None) -> None:
        seen = self.units[name]
        kind = self.plan.unit(name).kind  # type: ignore[union-attr]
        result = result if result is not None else RESULTS.get(
            kind, lambda: {"unit": name, "status": "succeeded"})()
        self.units[name] = Observation(Seen.SUCCEEDED, seen.attempt,
                                       (self.now - self.started[name]).total_seconds(),
                                       result=result, exit_code=0)

    def fail(self, name: str, code: int = 1, output: str = "Traceback: boom",
             result: dict[str, Any] | None = None) -> None:
        seen = self.units[name]
        self.units[name] = Observation(Seen.FAILED, seen.attempt,
                                       (self.now - self.started[name]).total_seconds(),
                                       exit_code=code, output=output, result=result)

    def vanish(self, name: str) -> None:
        self.units.pop(name)

    def launched(self) -> list[str]:
        return [launch.unit.name for launch in self.launches]

    def unit(self, name: str) -> Any:
        for stage in self.status.stages.values():
            if name in stage.units:
                return stage.units[name]
        raise KeyError(name)

    def condition(self, type_: str) -> Any:
        return next((c for c in self.status.conditions if c.type == type_), None)
