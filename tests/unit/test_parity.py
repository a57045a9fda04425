"""Both executors, one engine: every example, fed the same scripted unit outcomes through the
local adapter's mapping (processes) and the operator's (pods), gives the same sequence of stage
states and the same final status."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from engine_world import T0, summary_result, train_result, trial_result
from kubetrain.api import parse_training_job
from kubetrain.api.resource import TrainingJob
from kubetrain.api.status import TrainingJobStatus
from kubetrain.controller.builders import LABEL_ATTEMPT, LABEL_RANK, LABEL_UNIT, WorkerSettings
from kubetrain.controller.observe import Observed, PodView
from kubetrain.controller.reconcile import reconcile
from kubetrain.local.process import process_observation
from kubetrain.pipeline.actions import Context
from kubetrain.pipeline.engine import advance
from kubetrain.pipeline.plan import TrialSweep, WorkUnit, plan

EXAMPLES = sorted(p for p in (Path(__file__).parents[2] / "examples").glob("*.yaml"))
SETTINGS = WorkerSettings(default_pvc="runs")
TICK = timedelta(seconds=7)


def outcome(unit: WorkUnit) -> dict[str, Any]:
    """What each kind of unit reports in this script (trials alternate complete and pruned)."""
    if unit.kind == "trial":
        index = TrialSweep.index(unit.name) or 0
        return trial_result(index, state="pruned" if index % 3 == 2 else "complete",
                            value=0.5 - 0.01 * index)
    if unit.kind in ("train", "fold"):
        return train_result(unit=unit.name)
    if unit.kind == "tune-summary":
        return summary_result()
    if unit.kind == "explain":
        return {"status": "succeeded", "method": "gradient", "top_features": [
            {"feature": "pixel_3_4", "mean_abs_shap": 0.25}], "analysis": "/s/a.json"}
    if unit.kind == "augment-merge":
        return {"status": "succeeded", "kind": "image", "added": 500}
    return {"status": "succeeded"}


@dataclass
class Run:
    """A scripted run: each unit runs one tick after its launch, then ends with its outcome."""

    job: TrainingJob
    now: Any = T0
    started: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, str]] = field(default_factory=list)

    def record(self, status: TrainingJobStatus) -> None:
        self.job = self.job.model_copy(update={"status": status})
        stages = {n: str(s.phase) for n, s in status.stages.items()}
        if not self.history or self.history[-1] != stages:
            self.history.append(stages)


def run_locally(job: TrainingJob) -> Run:
    """The local adapter's mapping: a launch is a process; it exits 0 one tick later."""
    run, the_plan = Run(job), plan(job.spec, job.metadata.name)
    procs: dict[str, tuple[WorkUnit, int]] = {}
    for _ in range(200):
        observed = {}
        for name, (unit, attempt) in procs.items():
            ended = run.now - run.started[name] >= TICK and not unit.service
            observed[name] = process_observation(
                attempt=attempt, exit_code=0 if ended else None, stopping=False,
                seconds=(run.now - run.started[name]).total_seconds(), progress=None,
                result=outcome(unit) if ended else None, output=None)
        step = advance(the_plan, run.job, observed, Context(now=run.now, storage="/s"))
        run.record(step.status)
        for stop in step.stop:
            procs.pop(stop.unit, None)
        for launch in step.launch:
            procs[launch.unit.name] = (launch.unit, launch.attempt)
            run.started[launch.unit.name] = run.now
        if str(step.status.phase) in ("Succeeded", "Failed"):
            return run
        run.now += TICK
    raise AssertionError("the local run did not end")


def run_on_kubernetes(job: TrainingJob) -> Run:
    """The operator's mapping: launches are pods; a pod ends one tick later with its
    termination message."""
    run, the_plan = Run(job), plan(job.spec, job.metadata.name)
    pods: dict[str, dict[str, Any]] = {}
    for _ in range(200):
        views = []
        for name, pod in pods.items():
            labels = pod["metadata"]["labels"]
            unit = the_plan.unit(labels[LABEL_UNIT])
            assert unit is not None
            started = run.started[labels[LABEL_UNIT]]
            ended = run.now - started >= TICK and not unit.service
            views.append(PodView(
                name=name, unit=unit.name, stage=unit.stage, rank=int(labels[LABEL_RANK]),
                role=unit.kind, attempt=int(labels[LABEL_ATTEMPT]),
                phase="Succeeded" if ended else "Running", started=started,
                finished=started + TICK if ended else None, exit_code=0 if ended else None,
                message=json.dumps(outcome(unit)) if ended else None))
        observed = Observed(pods=views)
        decision = reconcile(run.job, observed, SETTINGS, run.now)
        run.record(decision.status)
        for kind, name, _ in decision.delete:
            if kind == "Pod":
                pods.pop(name, None)
        for obj in decision.create:
            if obj["kind"] == "Pod":
                pods[obj["metadata"]["name"]] = obj
                run.started[obj["metadata"]["labels"][LABEL_UNIT]] = run.now
        if str(decision.status.phase) in ("Succeeded", "Failed"):
            return run
        run.now += TICK
    raise AssertionError("the Kubernetes run did not end")


def final_fields(status: TrainingJobStatus) -> dict[str, Any]:
    """The status a user reads, without times and paths (which differ by executor)."""
    data = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    for key in ("startTime", "completionTime", "artifacts", "conditions"):
        data.pop(key, None)
    for stage in data.get("stages", {}).values():
        for key in ("startTime", "completionTime"):
            stage.pop(key, None)
        for unit in stage.get("units", {}).values():
            for key in ("startTime", "completionTime"):
                unit.pop(key, None)
    data["conditions"] = sorted((c.type, c.status, c.reason) for c in status.conditions)
    return data


def _load(path: Path) -> TrainingJob:
    manifest = yaml.safe_load(path.read_text())
    manifest["metadata"]["namespace"] = "ml"
    manifest["metadata"]["uid"] = "uid-1"
    return parse_training_job(manifest)


RUNS: dict[str, Callable[[TrainingJob], Run]] = {"local": run_locally,
                                                 "kubernetes": run_on_kubernetes}


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_gets_the_same_stages_and_status_from_both_executors(
        example: Path) -> None:
    local, cluster = run_locally(_load(example)), run_on_kubernetes(_load(example))
    assert local.history == cluster.history
    assert local.job.status is not None and cluster.job.status is not None
    assert local.job.status.phase == "Succeeded"
    assert final_fields(local.job.status) == final_fields(cluster.job.status)
    # and each example went through each of its stages in order
    stages = list(local.history[-1])
    assert all(h.get(s) != "Running" or all(v == "Succeeded" for v in list(h.values())[
        :stages.index(s)]) for h in local.history for s in stages)
