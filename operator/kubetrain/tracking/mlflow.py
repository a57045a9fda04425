"""MLflow runs of a unit, through ``MlflowClient`` (mlflow-skinny is enough: no server stack).

A trial's run is a child of the sweep's run (the ``mlflow.parentRunId`` tag MLflow's UI nests
by). Trials start in parallel pods, so the sweep's run is found by its tags or created; when two
trials create one at once, every trial settles on the oldest and the others are deleted.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..api.spec import MlflowSpec
from .naming import UnitRun

# MLflow retries a request for minutes by default; a tracking server that does not answer must
# cost the training seconds, not minutes (the user can still set these).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "terminated": "KILLED"}


class MlflowSink:
    name = "mlflow"
    takes_files = True

    def __init__(self, spec: MlflowSpec, run: UnitRun, storage: Path) -> None:
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=spec.uri)
        self.run = run
        self.experiment_id = experiment_id(self.client, spec.experiment or run.job)
        self.run_id: str | None = None

    def start(self, params: Mapping[str, str]) -> None:
        tags = dict(self.run.tags)
        if self.run.kind == "trial":
            tags["mlflow.parentRunId"] = sweep_run_id(self.client, self.experiment_id,
                                                      self.run.job)
        if self.run.kind == "sweep":  # the trials may have made it already
            self.run_id = sweep_run_id(self.client, self.experiment_id, self.run.job)
        else:
            self.run_id = find_or_create_run(self.client, self.experiment_id, self.run, tags)
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])

    def epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        self.client.log_batch(self._id(), metrics=[Metric(k, v, now, step)
                                                   for k, v in metrics.items()])

    def finish(self, metrics: Mapping[str, float], tags: Mapping[str, str],
               artifacts: list[Path], documents: Mapping[str, Any], status: str) -> None:
        from mlflow.entities import Metric, RunTag

        run_id, now = self._id(), _now_ms()
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        for name, document in documents.items():
            self.client.log_dict(run_id, dict(document), f"{name}.json")
        self.client.set_terminated(run_id, STATUS.get(status, "FINISHED"))

    def _id(self) -> str:
        if self.run_id is None:
            raise RuntimeError("the run was not started")
        return self.run_id


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def experiment_id(client: Any, name: str) -> str:
    """The experiment's id, creating it (parallel units may race: the loser reads it)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except Exception:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _search(client: Any, experiment: str, tags: Mapping[str, str]) -> list[Any]:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment], filter_string=query, max_results=50,
                              order_by=["attributes.start_time ASC"])
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def find_or_create_run(client: Any, experiment: str, run: UnitRun,
                       tags: Mapping[str, str]) -> str:
    """The unit's run: a unit started again (a resumed pod) continues its run."""
    found = _search(client, experiment, run.tags)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return str(found[0].info.run_id)
    created = client.create_run(experiment, tags=dict(tags), run_name=run.run_name)
    return str(created.info.run_id)


def sweep_run_id(client: Any, experiment: str, job: str) -> str:
    """The sweep's parent run, found by its tags or created; of two created at once, the
    oldest wins and the other is deleted (every trial reads the same order)."""
    sweep = UnitRun(job=job, unit="tuning", kind="sweep")
    found = _search(client, experiment, sweep.tags)
    if not found:
        client.create_run(experiment, tags=sweep.tags, run_name=sweep.run_name)
        found = _search(client, experiment, sweep.tags)
    for extra in found[1:]:
        with contextlib.suppress(Exception):  # another trial deleted it first
            client.delete_run(extra.info.run_id)
    return str(found[0].info.run_id)
