"""``kubetrain.Client``: one API over both executors, for notebooks and scripts.

    client = Client()                      # the cluster of the kubeconfig (namespace: its own)
    client = Client(executor="local")      # `kubetrain run`'s engine, in the background
    job = client.submit("examples/digits.yaml")
    client.wait(job.metadata.name, on_progress=lambda e: print(e.message))
    client.status(job.metadata.name).findings.overfitting.verdict
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import yaml

from ..api.resource import (
    API_VERSION,
    KIND,
    ManifestError,
    TrainingJob,
    load_training_job,
    parse_training_job,
)
from ..api.spec import TrainingJobSpec
from ..api.status import Phase, TrainingJobStatus
from ..findings.cost import format_money
from .errors import AlreadyExists, ClientError, Forbidden, InvalidSpec, NotFound, WaitTimeout
from .events import ProgressEvent, describe, progress_events
from .kube import KubeBackend
from .local import LocalBackend

__all__ = ["AlreadyExists", "Client", "ClientError", "Forbidden", "InvalidSpec", "NotFound",
           "ProgressEvent", "WaitTimeout", "describe", "format_money", "generated_name",
           "job_from"]

JobSource = str | Path | dict[str, Any] | TrainingJob | TrainingJobSpec


def generated_name(spec: dict[str, Any] | None) -> str:
    """A name for a job submitted without one: its dataset's name and a random suffix."""
    dataset = (spec or {}).get("dataset") or {}
    base = str(dataset.get("builtin") or "job").replace("_", "-")
    return f"{base}-{uuid.uuid4().hex[:5]}"


def job_from(source: JobSource, name: str | None = None) -> tuple[TrainingJob, Path]:
    """The TrainingJob a manifest path, a dict, a spec or a job describes, and the folder its
    relative paths are resolved against. ``name`` overrides; none at all: one is generated."""
    base = Path.cwd()
    if isinstance(source, TrainingJobSpec):
        source = {"spec": source.model_dump(mode="json", by_alias=True, exclude_none=True)}
    elif isinstance(source, TrainingJob):
        source = source.to_manifest()
    elif isinstance(source, str | Path):
        path = Path(source)
        base = path.resolve().parent
        try:
            document = yaml.safe_load(path.read_text())
        except OSError as error:
            raise InvalidSpec([f"cannot read the file: {error.strerror}"], str(path)) from None
        except yaml.YAMLError as error:
            raise InvalidSpec([f"(top level): not valid YAML: {error}"], str(path)) from None
        if not (isinstance(document, dict) and (document.get("metadata") or {}).get("name")):
            source = document if isinstance(document, dict) else {}
        else:
            try:
                job = load_training_job(path)
            except ManifestError as error:
                raise InvalidSpec(error.problems, str(path)) from None
            return _named(job, name), base
    document = {"apiVersion": API_VERSION, "kind": KIND, **source}
    metadata = dict(document.get("metadata") or {})
    metadata["name"] = name or metadata.get("name") or generated_name(document.get("spec"))
    document["metadata"] = metadata
    document.pop("status", None)
    try:
        return parse_training_job(document, f"TrainingJob {metadata['name']}"), base
    except ManifestError as error:
        raise InvalidSpec(error.problems, error.source) from None


def _named(job: TrainingJob, name: str | None) -> TrainingJob:
    if not name:
        return job
    return job.model_copy(update={"metadata": job.metadata.model_copy(update={"name": name})})


class Client:
    """Submit, watch, inspect and manage TrainingJobs on a cluster or on this machine."""

    def __init__(self, executor: Literal["kubernetes", "local"] = "kubernetes", *,
                 namespace: str | None = None, storage: str | Path | None = None) -> None:
        """``namespace``: the kubeconfig's current one by default. ``storage``: the local
        executor's folder (a job's files go to ``storage/<name>``; ./kubetrain-runs)."""
        self.executor = executor
        self.namespace: str | None = None
        self._local: LocalBackend | None = None
        self._kube: KubeBackend | None = None
        if executor == "local":
            self._local = LocalBackend(Path(storage or Path.cwd() / "kubetrain-runs"))
        elif executor == "kubernetes":
            self.namespace = namespace or _current_namespace()
            self._kube = KubeBackend(self.namespace)
        else:
            raise ValueError(f"executor must be 'kubernetes' or 'local' (got {executor!r})")

    @property
    def _backend(self) -> LocalBackend | KubeBackend:
        backend = self._local or self._kube
        assert backend is not None
        return backend

    def submit(self, job: JobSource, *, name: str | None = None) -> TrainingJob:
        """Validate and start a job; returns it as created (with its name)."""
        parsed, base = job_from(job, name)
        if self._local is not None:
            return self._local.submit(parsed, base)
        assert self._kube is not None
        return self._kube.submit(parsed)

    def get(self, name: str) -> TrainingJob:
        return self._backend.get(name)

    def status(self, name: str) -> TrainingJobStatus:
        return self.get(name).status or TrainingJobStatus()

    def list(self) -> list[TrainingJob]:
        return self._backend.list()

    def statuses(self, name: str, timeout: float | None = None) -> Iterator[TrainingJobStatus]:
        """The job's status now, then each new one, until it ends (or ``timeout``)."""
        return self._backend.statuses(name, timeout)

    def watch(self, name: str, timeout: float | None = None) -> Iterator[ProgressEvent]:
        """The job's progress events as they happen, until it ends (or ``timeout``)."""
        before: TrainingJobStatus | None = None
        for status in self.statuses(name, timeout):
            yield from progress_events(before, status)
            before = status

    def wait(self, name: str, *, on_progress: Callable[[ProgressEvent], None] | None = None,
             timeout: float | None = None) -> TrainingJob:
        """Until the job succeeds or fails; each progress event goes to ``on_progress``.
        Raises WaitTimeout when ``timeout`` seconds pass first."""
        for event in self.watch(name, timeout):
            if on_progress is not None:
                on_progress(event)
        job = self.get(name)
        if not Phase((job.status or TrainingJobStatus()).phase).terminal:
            raise WaitTimeout(f"TrainingJob {name} still "
                              f"{(job.status or TrainingJobStatus()).phase} after {timeout}s")
        return job

    def suspend(self, name: str) -> None:
        """runPolicy.suspend: running units stop (a sweep keeps its trials); resume continues."""
        self._backend.set_suspended(name, True)

    def resume(self, name: str) -> None:
        self._backend.set_suspended(name, False)

    def delete(self, name: str) -> None:
        """Delete the job (on a cluster its pods go with it; locally its files stay)."""
        self._backend.delete(name)

    def logs(self, name: str, unit: str | None = None, follow: bool = False) -> Iterator[str]:
        """A unit's log lines (default: the unit that started last); ``follow`` streams on."""
        return self._backend.logs(name, unit, follow)

    def get_artifacts(self, name: str, destination: str | Path) -> Path:
        """Copy the job's files (model, report, plots, history) into ``destination``."""
        return self._backend.get_artifacts(name, Path(destination))


def _current_namespace() -> str:
    from kubernetes import config

    try:
        _, context = config.list_kube_config_contexts()
    except config.ConfigException:
        return "default"  # in a pod: the service account's namespace would be better
    return str((context or {}).get("context", {}).get("namespace") or "default")
