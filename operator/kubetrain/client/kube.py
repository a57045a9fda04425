"""The client's cluster side: the Kubernetes API with the caller's own credentials (kubeconfig
or a pod's service account), a watch for waiting, API errors as typed errors."""

from __future__ import annotations

import base64
import builtins
import io
import json
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream

from .. import __version__
from ..api.resource import GROUP, PLURAL, VERSION, TrainingJob
from ..api.status import Phase, TrainingJobStatus
from ..controller.builders import LABEL_JOB, LABEL_UNIT
from ..pipeline.plan import REPORT_UNIT
from .errors import AlreadyExists, ClientError, Forbidden, InvalidSpec, NotFound
from .pods import ARTIFACTS_MOUNT, artifact_pod, choose_pod, storage_location

T = TypeVar("T")
WATCH_SECONDS = 60  # one watch request; renewed until the job ends or the caller's timeout
POD_READY_SECONDS = 120


@cache
def _api_client() -> client.ApiClient:
    """The ``kubernetes`` package's client with the caller's credentials, loaded once (the
    operator uses its own lighter client: controller/kube.py)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.ApiClient()
    api.user_agent = f"kubetrain/{__version__}"
    return api


def api_error(error: ApiException, what: str) -> ClientError:
    """An API server refusal as the client's typed error."""
    try:
        body = json.loads(error.body or "{}")
    except ValueError:
        body = {}
    message = body.get("message") or error.reason or str(error)
    if error.status == 404:
        return NotFound(f"{what}: not found ({message})")
    if error.status in (401, 403):
        return Forbidden(f"{what}: forbidden ({message})")
    if error.status == 409:
        return AlreadyExists(f"{what}: {message}")
    if error.status == 422:
        causes = (body.get("details") or {}).get("causes") or []
        problems = [f"{c.get('field', '(top level)')}: {c.get('message', '')}" for c in causes]
        return InvalidSpec(problems or [message], what)
    return ClientError(f"{what}: {error.status} {message}")


def _call(what: str, request: Callable[[], T]) -> T:
    try:
        return request()
    except ApiException as error:
        raise api_error(error, what) from None


class KubeBackend:
    """TrainingJobs in one namespace of the cluster the kubeconfig points at."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(_api_client())
        self.core = client.CoreV1Api(_api_client())

    def _what(self, name: str) -> str:
        return f"TrainingJob {self.namespace}/{name}"

    def submit(self, job: TrainingJob) -> TrainingJob:
        if job.metadata.namespace not in (None, self.namespace):
            raise InvalidSpec([f"metadata.namespace: {job.metadata.namespace} differs from the "
                               f"namespace asked for ({self.namespace}); remove it or ask for "
                               "that namespace"], self._what(job.metadata.name))
        body = job.to_manifest()
        body.pop("status", None)
        body["metadata"]["namespace"] = self.namespace
        created: Any = _call(self._what(job.metadata.name), lambda: (
            self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                        body)))
        return TrainingJob.model_validate(created)

    def _raw(self, name: str) -> Any:
        return _call(self._what(name), lambda: self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name))

    def get(self, name: str) -> TrainingJob:
        return TrainingJob.model_validate(self._raw(name))

    def list(self) -> list[TrainingJob]:
        listed: Any = _call(f"TrainingJobs in {self.namespace}", lambda: (
            self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)))
        return [TrainingJob.model_validate(item) for item in listed["items"]]

    def statuses(self, name: str, timeout: float | None) -> Iterator[TrainingJobStatus]:
        """The job's status now, then each change the API server sends on a watch."""
        deadline = None if timeout is None else time.monotonic() + timeout
        raw = self._raw(name)
        version = raw["metadata"]["resourceVersion"]
        status = TrainingJob.model_validate(raw).status or TrainingJobStatus()
        yield status
        while not Phase(status.phase).terminal:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            seconds = int(min(WATCH_SECONDS, left if left is not None else WATCH_SECONDS)) + 1
            watcher = watch.Watch()
            try:
                for event in watcher.stream(
                        self.custom.list_namespaced_custom_object, GROUP, VERSION,
                        self.namespace, PLURAL, field_selector=f"metadata.name={name}",
                        resource_version=version, timeout_seconds=seconds):
                    obj = event["object"]
                    if event["type"] == "DELETED":
                        raise NotFound(f"{self._what(name)} was deleted while waiting")
                    if event["type"] == "ERROR":  # e.g. the version expired: read it anew
                        raise ApiException(status=410, reason=str(obj))
                    version = obj["metadata"]["resourceVersion"]
                    status = TrainingJob.model_validate(obj).status or TrainingJobStatus()
                    yield status
                    if Phase(status.phase).terminal:
                        return
            except ApiException as error:
                if error.status != 410:  # 410: the version is too old; start again from now
                    raise api_error(error, self._what(name)) from None
                raw = self._raw(name)
                version = raw["metadata"]["resourceVersion"]
                status = TrainingJob.model_validate(raw).status or TrainingJobStatus()
                yield status  # what the lost events would have brought
            finally:
                watcher.stop()

    def set_suspended(self, name: str, suspend: bool) -> None:
        _call(self._what(name), lambda: self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name,
            {"spec": {"runPolicy": {"suspend": suspend}}}))

    def delete(self, name: str) -> None:
        _call(self._what(name), lambda: self.custom.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name))

    def _pods(self, name: str) -> builtins.list[dict[str, Any]]:
        listed = _call(f"pods of {self._what(name)}", lambda: self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{LABEL_JOB}={name}"))
        pods = [self.core.api_client.sanitize_for_serialization(p) for p in listed.items]
        return [p for p in pods if (p["metadata"].get("labels") or {}).get(
            "app.kubernetes.io/component") != "get-artifacts"]

    def logs(self, name: str, unit: str | None, follow: bool) -> Iterator[str]:
        self._raw(name)  # NotFound for the job itself before "no pods"
        pod = choose_pod(name, self._pods(name), unit)
        pod_name = pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]["name"]
        response: Any = _call(f"log of pod {pod_name}", lambda: (
            self.core.read_namespaced_pod_log(pod_name, self.namespace, container=container,
                                              follow=follow, _preload_content=False)))
        rest = b""
        try:
            for chunk in response.stream(4096):
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    yield line.decode(errors="replace")
            if rest:
                yield rest.decode(errors="replace")
        finally:
            response.release_conn()

    def _image(self, job: TrainingJob) -> str:
        for pod in self._pods(job.metadata.name):
            return str(pod["spec"]["containers"][0]["image"])
        return job.spec.image or f"kubetrain-worker:{__version__}"

    def get_artifacts(self, name: str, destination: Path) -> Path:
        """Copy the job's storage folder here through a pod that mounts its claim (removed
        afterwards): the caller needs rights to create pods and exec into them."""
        job = self.get(name)
        claim, folder = storage_location(job)
        self._wait_for_report(name)
        pod_name = f"{name[:40]}-artifacts-{uuid.uuid4().hex[:5]}"
        body = artifact_pod(job.model_copy(update={"metadata": job.metadata.model_copy(
            update={"namespace": self.namespace})}), claim, self._image(job), pod_name)
        _call(f"pod {pod_name}", lambda: self.core.create_namespaced_pod(self.namespace, body))
        try:
            self._wait_running(pod_name)
            data = self._exec_base64(pod_name, f"{ARTIFACTS_MOUNT}/{folder}")
        finally:
            try:
                self.core.delete_namespaced_pod(pod_name, self.namespace, grace_period_seconds=0)
            except ApiException as error:
                if error.status != 404:
                    raise api_error(error, f"pod {pod_name}") from None
        destination.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            archive.extractall(destination, filter="data")
        return destination

    def _wait_for_report(self, name: str) -> None:
        """The report unit starts when the job ends and writes report.md: let it finish."""
        deadline = time.monotonic() + POD_READY_SECONDS
        while time.monotonic() < deadline:
            running = [p for p in self._pods(name)
                       if (p["metadata"].get("labels") or {}).get(LABEL_UNIT) == REPORT_UNIT
                       and (p.get("status") or {}).get("phase") in ("Pending", "Running")]
            if not running:
                return
            time.sleep(1)

    def _wait_running(self, pod_name: str) -> None:
        deadline = time.monotonic() + POD_READY_SECONDS
        while time.monotonic() < deadline:
            pod: Any = _call(f"pod {pod_name}", lambda: self.core.read_namespaced_pod(
                pod_name, self.namespace))
            if pod.status.phase == "Running":
                return
            if pod.status.phase in ("Failed", "Succeeded"):
                raise ClientError(f"the artifacts pod {pod_name} ended ({pod.status.phase})")
            time.sleep(1)
        raise ClientError(f"the artifacts pod {pod_name} did not start in "
                          f"{POD_READY_SECONDS}s (is its claim mountable here?)")

    def _exec_base64(self, pod_name: str, folder: str) -> bytes:
        """``tar`` of the folder, sent as base64 text (the exec stream is text)."""
        response: Any = _call(f"exec in pod {pod_name}", lambda: stream(
            self.core.connect_get_namespaced_pod_exec, pod_name, self.namespace,
            command=["sh", "-c", f'tar -C "{folder}" -cf - . | base64'],
            stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False))
        out, err = [], []
        while response.is_open():
            response.update(timeout=1)
            if response.peek_stdout():
                out.append(response.read_stdout())
            if response.peek_stderr():
                err.append(response.read_stderr())
        response.close()
        if response.returncode:
            raise ClientError(f"copying {folder} failed: {''.join(err).strip()}")
        return base64.b64decode("".join(out))
