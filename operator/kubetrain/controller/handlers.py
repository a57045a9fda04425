"""kopf handlers: thin glue between the API server and the pure reconcile decision.

One reconcile runs on create, resume, a spec change and a job's turn in the queue (kopf's
handlers), and every ``timerSeconds`` while the job is active (the operator's own periodic
pass, periodic.py: it needs no finalizer, where a kopf timer did). It observes the children,
asks ``reconcile`` what to do, does it, and writes the status. Errors become conditions. An
event handler keeps the metrics' count of jobs by phase and the pass's list of active jobs.

Settings come from the operator configuration (settings.py: $KUBETRAIN_CONFIG plus env vars).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

import kopf

from ..api.resource import GROUP, PLURAL, VERSION, ManifestError, parse_training_job
from ..api.status import Phase, Reason, StagePhase, TrainingJobStatus
from ..pipeline import status as st
from ..report import parse_event
from . import admission, kube, metrics
from . import builders as b
from .observe import Observed, pod_view
from .periodic import ActiveJobs, JobLocks, PeriodicPass, uid_of
from .posting import EVENTS, job_event
from .reconcile import Decision, reconcile
from .settings import OperatorConfig, current_config, resolve_prices

LOG = logging.getLogger(__name__)
TIMER_SECONDS = current_config().timer_seconds
# How kopf retries its own API requests (status patches, the watch's listing) while the API
# server or etcd is unreachable or answers 5xx: up to 10 s apart, so the operator writes again
# within ~10 s of the API coming back, for ~5 minutes in all (kopf's default, 1, 1, 2, ..., 21,
# gives up after ~54 s).
API_ERROR_BACKOFFS = (1.0, 1.0, 2.0, 3.0, 5.0, *(10.0,) * 29)

ACTIVE = ActiveJobs(TIMER_SECONDS)
"""The jobs the periodic pass reconciles, kept by ``watch_event``."""
JOB_LOCKS = JobLocks()
"""One reconcile of a job at a time, from a kopf handler or the pass."""


LEGACY_DIFFBASE = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
"""Where earlier operators kept the handled spec (an annotation): still read, never written."""


class StatusDiffBase(kopf.StatusDiffBaseStorage):
    """kopf's record of the last handled spec, in ``status.kopf`` (written in the same PATCH as
    the status, where an annotation took a PATCH of its own). A job handled by an earlier
    operator is read from its annotation, so an upgrade resumes it instead of creating it
    again; kopf's old annotations (``kubetrain.io/...``) stay out of the essence, as before."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        essence = super().build(body=body, extra_fields=extra_fields)
        annotations = essence.get("metadata", {}).get("annotations", {})
        for key in [k for k in annotations if k.startswith(f"{GROUP}/")]:
            del annotations[key]
        if "annotations" in essence.get("metadata", {}) and not annotations:
            del essence["metadata"]["annotations"]
        if "metadata" in essence and not essence["metadata"]:
            del essence["metadata"]
        return essence

    def fetch(self, *, body: kopf.Body) -> Any:
        found = super().fetch(body=body)
        return found if found is not None else LEGACY_DIFFBASE.fetch(body=body)


class QuietEventHandlerLog(logging.Filter):
    """kopf logs each handler's success at INFO; for ``watch_event``, an event handler, that is
    a line for every watch event of every job (5 a job over its life, 250 for a burst of 50):
    noise in the log and the operator's CPU spent in a burst. Its failures are still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Handler 'watch_event' succeeded."


QUIET_EVENT_HANDLER_LOG = QuietEventHandlerLog()


@kopf.on.startup()
def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    """kopf's settings, /metrics, and the periodic pass (stopped by ``stop_periodic``)."""
    configure(settings)
    ACTIVE.clear()
    # The pass reconciles with kopf's queue index, which kopf hands to this handler too (and
    # fills before any job's handler runs; the pass's jobs come from those same handlers).
    memo.periodic = PeriodicPass(ACTIVE, JOB_LOCKS,
                                 partial(reconcile_on_timer, index=kwargs.get(admission.INDEX)))
    memo.periodic.start()


def configure(settings: kopf.OperatorSettings) -> None:
    # Our own prefixes, so kubetrain never collides with another kopf operator's state. No
    # handler needs a finalizer now; kopf removes this one from jobs that an earlier operator
    # (with kopf timers) had put it on.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # kopf's state in the status (status.kopf), not in annotations: a job's first handling then
    # costs one PATCH (the status with kopf's record of the handled spec), not two.
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.persistence.diffbase_storage = StatusDiffBase()
    # Watches are re-established every 2 minutes: a silently dropped connection costs at most
    # that, instead of hanging forever (kopf's default has no timeout).
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    # The default of 300 s per API request is far too long for an operator that must react.
    settings.networking.request_timeout = 30
    settings.networking.error_backoffs = API_ERROR_BACKOFFS
    settings.execution.max_workers = 8
    # The reconciles' Events are posted by the operator (posting.py); kopf posts only its own
    # warnings and errors, on at most 4 connections.
    settings.posting.worker_limit = 4
    settings.posting.level = logging.WARNING
    logging.getLogger("kopf.objects").addFilter(QUIET_EVENT_HANDLER_LOG)
    # Watching given namespaces: no cluster-wide scans of namespaces and CRDs, which a
    # namespaced installation (Roles only) may not do. The resources are discovered once.
    settings.scanning.disabled = bool(current_config().namespaces)
    metrics.serve(current_config().metrics_port)


@kopf.on.cleanup()
def stop_periodic(memo: kopf.Memo, **_: Any) -> None:
    periodic = memo.get("periodic")
    if periodic is not None:  # waits for its reconciles in flight
        periodic.stop()


@kopf.on.probe(id="reconciler")
def probe(**_: Any) -> str:
    return "ok"


def _list(kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
    """The children of one kind as plain dicts (camelCase, as the API sends them)."""
    return kube.api().list(kube.KINDS[kind], namespace, label_selector=selector)


def observe(namespace: str, name: str, running_units: list[str]) -> Observed:
    """List the job's children by label; read live progress from running rank-0 pods."""
    selector = f"{b.LABEL_JOB}={name}"
    pods = [pod_view(p) for p in _list("Pod", namespace, selector)]
    observed = Observed(
        pods=pods,
        services={s["metadata"]["name"] for s in _list("Service", namespace, selector)},
        config_maps={c["metadata"]["name"] for c in _list("ConfigMap", namespace, selector)},
    )
    for pod in pods:
        if pod.unit in running_units and pod.rank == 0 and pod.phase == "Running":
            observed.progress[pod.unit] = _latest_event(namespace, pod.name) or {}
    return observed


def _latest_event(namespace: str, pod: str) -> dict[str, Any] | None:
    try:
        # "worker": the unit's own container (a program container beside it prints no events)
        text = kube.api().pod_log(namespace, pod, container="worker", tail_lines=40)
    except kube.ApiError:
        return None
    latest = None
    for line in text.splitlines():
        event = parse_event(line)
        if event is not None and event.get("event") in ("epoch", "trial"):
            latest = event
    return latest


def _create(obj: dict[str, Any], namespace: str) -> None:
    try:
        kube.api().create(kube.KINDS[obj["kind"]], namespace, obj)
    except kube.ApiError as error:
        if error.status != 409:  # already exists: another reconcile got there first
            raise


def _delete(kind: str, name: str, namespace: str, grace: int) -> None:
    try:
        kube.api().delete(kube.KINDS[kind], namespace, name,
                          grace_period_seconds=grace if kind == "Pod" else None)
    except kube.ApiError as error:
        if error.status != 404:
            raise


def _status_patch(status: TrainingJobStatus) -> dict[str, Any]:
    """The status as a merge patch: unset fields become null (deleted), '' becomes null too.

    Kubernetes 1.20 built with a recent Go rejects empty strings in schema-checked fields.
    """
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return None if value == "" else value

    patch: dict[str, Any] = clean(status.model_dump(mode="json", by_alias=True))
    return patch


def status_patch_if_changed(before: TrainingJobStatus | None,
                            after: TrainingJobStatus) -> dict[str, Any] | None:
    """The status patch, or None when the status did not change: an idle job (suspended,
    finished, waiting for its TTL) costs the API server no write on every periodic pass."""
    patch = _status_patch(after)
    return None if before is not None and patch == _status_patch(before) else patch


RECONCILE_ERROR = "ReconcileError"  # the condition's type (its reason has the same name)


def recovered(status: TrainingJobStatus, at: str) -> None:
    """A reconcile that went through ends an earlier ReconcileError (it stays, False, with
    the last error in its message: an outage the job rode out stays on record)."""
    for condition in status.conditions:
        if condition.type == RECONCILE_ERROR and condition.status == "True":
            st.set_condition(status, RECONCILE_ERROR, "False", Reason.RECONCILE_ERROR,
                             f"reconciled again after: {condition.message}", at)


def _apply(decision: Decision, body: Mapping[str, Any], namespace: str, name: str) -> None:
    for obj in decision.create:
        _create(obj, namespace)
    for kind, child, grace in decision.delete:
        _delete(kind, child, namespace, grace)
    for event in decision.events:  # after the children, and after other jobs' (posting.py)
        EVENTS.hold(job_event(body, type=event.type, reason=event.reason,
                              message=event.message))
    if decision.delete_job:
        _api_custom_delete(namespace, name)


def _api_custom_delete(namespace: str, name: str) -> None:
    try:
        kube.api().delete(kube.TRAINING_JOBS, namespace, name)
    except kube.ApiError as error:
        if error.status != 404:
            raise


def _reporting_units(status: TrainingJobStatus | None) -> list[str]:
    """Running units whose live progress the status shows: the final training (epochs), a
    sweep run inside one unit (Ray Tune)."""
    if status is None:
        return []
    return [name for stage in status.stages.values() for name, unit in stage.units.items()
            if unit.phase == StagePhase.RUNNING and name in ("train", "tune")]


@kopf.on.event(GROUP, VERSION, PLURAL)
async def watch_event(event: kopf.RawEvent, **_: Any) -> None:
    """Keep the metrics' jobs-by-phase gauge and the periodic pass's active jobs. Async: kopf
    runs it on its loop for every watch event, not through its thread pool."""
    obj = event.get("object") or {}
    uid = uid_of(obj)
    if not uid:
        return
    ACTIVE.seen(event.get("type"), obj)
    if event.get("type") == "DELETED":
        metrics.JOBS.forget(uid)
    else:
        metrics.JOBS.set(uid, (obj.get("status") or {}).get("phase"))


def _read_prices_config_map(namespace: str, name: str) -> dict[str, str]:
    try:
        config_map = kube.api().get(kube.CONFIG_MAPS, namespace, name)
    except kube.ApiError as error:
        if error.status == 404:
            raise ManifestError([f"spec.findings.cost.priceConfigMap: ConfigMap {name!r} not "
                                 f"found in namespace {namespace!r}"]) from None
        raise
    return dict(config_map.get("data") or {})


def _parse(document: dict[str, Any], namespace: str, name: str,
           config: OperatorConfig) -> Any:
    """The TrainingJob with its effective prices; ManifestError when the spec cannot run."""
    job = parse_training_job(document, f"TrainingJob {namespace}/{name}")
    cost = job.spec.findings.cost
    table = (_read_prices_config_map(namespace, cost.price_config_map)
             if cost.price_config_map else None)
    cost.prices = resolve_prices(cost.prices, table, config.prices, cost.price_config_map)
    return job


# The handlers retry without limit (every 10 s): a fresh job, a suspended one or a finished one
# is not in the periodic pass (periodic.is_active), so a handler that kopf marked failed for good
# during a long API-server outage would leave the job unhandled until the operator restarted. A
# spec the operator cannot run is not retried: it becomes the Invalid condition at once.
@kopf.on.create(GROUP, VERSION, PLURAL, retries=None, backoff=10, timeout=None)
@kopf.on.resume(GROUP, VERSION, PLURAL, retries=None, backoff=10, timeout=None)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", retries=None, backoff=10, timeout=None)
@kopf.on.update(GROUP, VERSION, PLURAL, id="queue-turn",
                field=("metadata", "annotations", admission.TURN),
                retries=None, backoff=10, timeout=None)
def reconcile_handler(body: kopf.Body, patch: kopf.Patch, namespace: str | None, name: str,
                      **kwargs: Any) -> None:
    """kopf's reconcile of a TrainingJob (kopf writes the status it leaves in ``patch``)."""
    uid = uid_of(body)
    with JOB_LOCKS.held(uid):
        try:
            reconcile_job(body, patch.status, namespace or "default", name,
                          kwargs.get(admission.INDEX))
        finally:
            ACTIVE.reconciled(uid)


def reconcile_on_timer(body: Mapping[str, Any], index: Any) -> None:
    """The periodic pass's reconcile of an active job. Its status is written only if the job
    is still the version reconciled (else a newer status may be there: the next pass goes on
    from it). An API error is logged; the next pass tries again."""
    metadata = body.get("metadata") or {}
    namespace, name = metadata.get("namespace") or "default", str(metadata.get("name"))
    status: dict[str, Any] = {}
    try:
        reconcile_job(body, status, namespace, name, index)
    except kopf.TemporaryError as error:
        LOG.warning("TrainingJob %s/%s: %s (the next pass tries again)", namespace, name, error)
    finally:
        if status:
            _write_status(namespace, name, metadata.get("resourceVersion"), status,
                          uid_of(body))


def _write_status(namespace: str, name: str, version: str | None, status: dict[str, Any],
                  uid: str) -> None:
    patch: dict[str, Any] = {"status": status}
    if version:
        patch["metadata"] = {"resourceVersion": version}
    try:
        kube.api().merge_patch(kube.TRAINING_JOBS, namespace, name, patch, subresource="status")
    except kube.ApiError as error:
        if error.status == 409:  # changed since it was read: the next pass sees the new one
            LOG.info("TrainingJob %s/%s changed during its reconcile; its status is left to "
                     "the next pass", namespace, name)
        elif error.status == 404:  # deleted, its deletion missed by the watch (children it
            ACTIVE.forget(uid)     # may have made now go by their ownerReference's GC)
        else:
            LOG.warning("TrainingJob %s/%s: its status was not written: API error %s: %s",
                        namespace, name, error.status, error.reason)


def reconcile_job(body: Mapping[str, Any], status_out: MutableMapping[str, Any],
                  namespace: str, name: str, queue_index: Any = None) -> None:
    """The single reconcile of a TrainingJob: the status to write goes into ``status_out``
    (left empty when nothing changed); the decision itself is pure (reconcile.py)."""
    started = time.perf_counter()
    metrics.RECONCILES.inc()
    EVENTS.begin()
    try:
        _reconcile(body, status_out, namespace, name, queue_index)
    except kopf.TemporaryError:
        raise  # counted where it was raised
    except Exception:
        metrics.RECONCILE_ERRORS.labels(reason="Unexpected").inc()
        raise
    finally:
        EVENTS.end()
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)


def _reconcile(body: Mapping[str, Any], status_out: MutableMapping[str, Any], namespace: str,
               name: str, queue_index: Any = None) -> None:
    document = {**dict(body), "metadata": {**dict(body.get("metadata") or {}),
                                           "namespace": namespace}}
    document.pop("status", None)
    now = datetime.now(UTC)
    config = current_config()
    try:
        job = _parse(document, namespace, name, config)
    except ManifestError as error:
        metrics.RECONCILE_ERRORS.labels(reason="InvalidSpec").inc()
        status = TrainingJobStatus.model_validate(dict(body.get("status") or {}))
        message = "; ".join(error.problems)
        at = st.timestamp(now)
        st.set_condition(status, "Invalid", "True", Reason.INVALID_SPEC, message, at)
        if not Phase(status.phase).terminal:
            st.finish_job(status, Phase.FAILED, Reason.INVALID_SPEC, message, at)
            EVENTS.hold(job_event(body, type="Warning", reason="InvalidSpec", message=message))
        status_out.update(_status_patch(status))
        return
    except kube.ApiError as error:
        metrics.RECONCILE_ERRORS.labels(reason="ApiError").inc()
        raise kopf.TemporaryError(f"API error {error.status}: {error.reason}", delay=10) \
            from None
    raw_status = dict(body.get("status") or {})
    if raw_status:
        job.status = TrainingJobStatus.model_validate(raw_status)
    before = job.status.model_copy(deep=True) if job.status is not None else None
    if admission.ADMISSIONS.hold(job, body, queue_index, config, now):
        assert job.status is not None  # the queue wrote the job's place there
        changed = status_patch_if_changed(before, job.status)
        if changed is not None:
            status_out.update(changed)
        return
    try:
        # A job never reconciled has no children to see (were some left by a reconcile whose
        # status write was lost, creating them again is answered 409 and the next tick sees
        # them): three LISTs saved on the way to its first children.
        observed = (observe(namespace, name, _reporting_units(job.status))
                    if job.status is not None else Observed())
        decision = reconcile(job, observed, config.worker_settings(), now)
        _apply(decision, body, namespace, name)
        if before is not None and before.phase == Phase.RUNNING and \
                decision.status.phase != Phase.RUNNING:  # finished or suspended: a place frees
            admission.ADMISSIONS.hand_over(job.metadata.uid or "", queue_index, config,
                                           st.timestamp(now))
    except kube.ApiError as error:
        metrics.RECONCILE_ERRORS.labels(reason="ApiError").inc()
        status = job.status or TrainingJobStatus()
        st.set_condition(status, RECONCILE_ERROR, "True", Reason.RECONCILE_ERROR,
                         f"API error {error.status}: {error.reason}", st.timestamp(now))
        status_out.update(_status_patch(status))
        raise kopf.TemporaryError(f"API error {error.status}: {error.reason}", delay=10) \
            from None
    if not decision.delete_job:
        recovered(decision.status, st.timestamp(now))
        changed = status_patch_if_changed(before, decision.status)
        if changed is not None:
            status_out.update(changed)
        metrics.record_stages(before, decision.status)
