"""kopf handlers: thin glue between the API server and the pure reconcile decision.

One handler function is registered for create, resume, spec change and a timer that runs only
while a job is not finished (or waits for its TTL). It observes the children, asks
``reconcile`` what to do, does it, and writes the status. Errors become conditions. An event
handler (no finalizer) keeps the metrics' count of jobs by phase.

Settings come from the operator configuration (settings.py: $KUBETRAIN_CONFIG plus env vars).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import kopf

from ..api.resource import GROUP, PLURAL, VERSION, ManifestError, parse_training_job
from ..api.status import Phase, Reason, StagePhase, TrainingJobStatus
from ..pipeline import status as st
from ..report import parse_event
from . import admission, kube, metrics
from . import builders as b
from .observe import Observed, pod_view
from .posting import EVENTS, kopf_event
from .reconcile import Decision, reconcile
from .settings import OperatorConfig, current_config, resolve_prices

TIMER_SECONDS = current_config().timer_seconds
# How kopf retries its own API requests (status patches, the watch's listing) while the API
# server or etcd is unreachable or answers 5xx: up to 10 s apart, so the operator writes again
# within ~10 s of the API coming back, for ~5 minutes in all. kopf's default (1, 1, 2, ..., 21)
# gives up after ~54 s, and a timer whose status patch gives up ends for good: kopf never
# spawns it again for that job (until the operator restarts), and the job stops moving.
API_ERROR_BACKOFFS = (1.0, 1.0, 2.0, 3.0, 5.0, *(10.0,) * 29)


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
    """kopf logs each handler's success at INFO; for ``count_phase``, an event handler, that is
    a line for every watch event of every job (5 a job over its life, 250 for a burst of 50):
    noise in the log and the operator's CPU spent in a burst. Its failures are still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Handler 'count_phase' succeeded."


QUIET_EVENT_HANDLER_LOG = QuietEventHandlerLog()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Our own prefixes, so kubetrain never collides with another kopf operator's state.
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
    # kopf's own requests share one aiohttp session with no limit on its connections: a
    # burst's held Events, posted at once by as many workers, each opened a new TLS connection.
    # Four posting workers bound those (the watches and the status patches are not affected).
    settings.posting.worker_limit = 4
    settings.posting.level = logging.WARNING  # Events come from reconcile, not from kopf logs
    logging.getLogger("kopf.objects").addFilter(QUIET_EVENT_HANDLER_LOG)
    # Watching given namespaces: no cluster-wide scans of namespaces and CRDs, which a
    # namespaced installation (Roles only) may not do. The resources are discovered once.
    settings.scanning.disabled = bool(current_config().namespaces)
    metrics.serve(current_config().metrics_port)


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
    finished, waiting for its TTL) costs the API server no write on every timer tick."""
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


def _apply(decision: Decision, body: kopf.Body, namespace: str, name: str) -> None:
    for obj in decision.create:
        _create(obj, namespace)
    for kind, child, grace in decision.delete:
        _delete(kind, child, namespace, grace)
    for event in decision.events:  # after the children, and after other jobs' (posting.py)
        EVENTS.hold(kopf_event(body, type=event.type, reason=event.reason,
                               message=event.message[:1000]))
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


def _is_active(body: kopf.Body, **_: Any) -> bool:
    """Whether the job gets the timer (and with it kopf's finalizer): only while something
    can change without an event on the job itself, that is, while its children run.

    Not a fresh job (no status yet): the create handler reconciles it at once; were the timer
    due, kopf would first add its finalizer in a round trip of its own. Not a suspended job
    (its running children were stopped when it was suspended; resuming is a spec change) nor a
    finished one (unless it waits for its TTL): 1,000 idle jobs cost the API server nothing.
    """
    status = body.get("status") or {}
    phase = status.get("phase")
    spec = body.get("spec") or {}
    run_policy = spec.get("runPolicy") or {}
    if not phase:
        return False
    if phase == Phase.SUSPENDED and run_policy.get("suspend"):
        return False
    if phase in (Phase.SUCCEEDED, Phase.FAILED):
        return run_policy.get("ttlSecondsAfterFinished") is not None
    return True


@kopf.on.event(GROUP, VERSION, PLURAL)
async def count_phase(event: kopf.RawEvent, **_: Any) -> None:
    """Keep the metrics' jobs-by-phase gauge; event handlers add no finalizer. Async: kopf runs
    it on its loop for every watch event, not through its thread pool (it only sets a gauge)."""
    obj = event.get("object") or {}
    uid = (obj.get("metadata") or {}).get("uid")
    if not uid:
        return
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


# The event handlers retry without limit (every 10 s): a fresh job, a suspended one or a
# finished one has no timer (_is_active), so a handler that kopf marked failed for good during a
# long API-server outage would leave the job unhandled until the operator restarted. A spec the
# operator cannot run is not retried: it becomes the Invalid condition at once.
@kopf.on.create(GROUP, VERSION, PLURAL, retries=None, backoff=10, timeout=None)
@kopf.on.resume(GROUP, VERSION, PLURAL, retries=None, backoff=10, timeout=None)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", retries=None, backoff=10, timeout=None)
@kopf.on.update(GROUP, VERSION, PLURAL, id="queue-turn",
                field=("metadata", "annotations", admission.TURN),
                retries=None, backoff=10, timeout=None)
@kopf.timer(GROUP, VERSION, PLURAL, interval=TIMER_SECONDS, initial_delay=TIMER_SECONDS,
            idle=None, when=_is_active,
            retries=3, backoff=5, timeout=120)
def reconcile_handler(body: kopf.Body, patch: kopf.Patch, namespace: str | None, name: str,
                      **kwargs: Any) -> None:
    """The single reconcile of a TrainingJob; the decision itself is pure (reconcile.py)."""
    started = time.perf_counter()
    metrics.RECONCILES.inc()
    EVENTS.begin()
    try:
        _reconcile(body, patch, namespace or "default", name, kwargs.get(admission.INDEX))
    except kopf.TemporaryError:
        raise  # counted where it was raised
    except Exception:
        metrics.RECONCILE_ERRORS.labels(reason="Unexpected").inc()
        raise
    finally:
        EVENTS.end()
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)


def _reconcile(body: kopf.Body, patch: kopf.Patch, namespace: str, name: str,
               queue_index: Any = None) -> None:
    document = {**dict(body), "metadata": {**dict(body.metadata), "namespace": namespace}}
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
            kopf.event(body, type="Warning", reason="InvalidSpec", message=message[:1000])
        patch.status.update(_status_patch(status))
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
            patch.status.update(changed)
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
        patch.status.update(_status_patch(status))
        raise kopf.TemporaryError(f"API error {error.status}: {error.reason}", delay=10) \
            from None
    if not decision.delete_job:
        recovered(decision.status, st.timestamp(now))
        changed = status_patch_if_changed(before, decision.status)
        if changed is not None:
            patch.status.update(changed)
        metrics.record_stages(before, decision.status)
