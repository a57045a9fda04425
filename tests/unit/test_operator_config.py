"""The operator's configuration file, price resolution and metrics (no cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetrain.api.resource import ManifestError
from kubetrain.api.spec import PricesSpec
from kubetrain.api.status import StagePhase, StageStatus, TrainingJobStatus
from kubetrain.controller import metrics
from kubetrain.controller.settings import load_config, parse_config, resolve_prices
from prometheus_client import generate_latest
from support import kubetrain


def test_defaults_without_a_file_or_environment() -> None:
    config = load_config(None, environ={})
    assert config.worker_image.startswith("kubetrain-worker:")
    assert config.namespaces == [] and config.metrics_port == 9090
    assert config.prices == PricesSpec()
    assert config.worker_settings().default_pvc is None


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("workerImage: registry.example/kubetrain-worker:9\n"
                    "defaultPVC: shared\nnamespaces: [ml, research]\n"
                    "prices: {cpuHour: 0.05, currency: EUR}\nmetricsPort: 9191\n")
    config = load_config(path, environ={"KUBETRAIN_DEFAULT_PVC": "scratch",
                                        "KUBETRAIN_NAMESPACES": "a, b"})
    assert config.worker_image == "registry.example/kubetrain-worker:9"
    assert config.default_pvc == "scratch" and config.namespaces == ["a", "b"]
    assert config.prices.cpu_hour == 0.05 and config.prices.currency == "EUR"
    assert config.prices.gpu_hour == PricesSpec().gpu_hour
    settings = config.worker_settings()
    assert (settings.worker_image, settings.default_pvc) == (config.worker_image, "scratch")


@pytest.mark.parametrize(("document", "environ", "expected"), [
    ({"workerimage": "x"}, {}, "workerimage: unknown field"),
    ({"imagePullPolicy": "Sometimes"}, {}, "imagePullPolicy: must be one of"),
    ({"metricsPort": 70000}, {}, "metricsPort: must be less than or equal to 65535"),
    ({"prices": {"cpuHour": -1}}, {}, "prices.cpuHour: must be greater than or equal to 0"),
    ({}, {"KUBETRAIN_TIMER_SECONDS": "0"}, "timerSeconds (from $KUBETRAIN_TIMER_SECONDS)"),
    ([1, 2], {}, "must be a YAML mapping"),
])
def test_bad_configuration_names_the_field(document: object, environ: dict[str, str],
                                           expected: str) -> None:
    with pytest.raises(ManifestError) as error:
        parse_config(document, environ)
    assert expected in str(error.value)


def test_unreadable_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", environ={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("prices: [\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_config(broken, environ={})


TABLE = PricesSpec(cpu_hour=1.0, memory_gi_b_hour=0.1, gpu_hour=10.0, currency="EUR")


def test_prices_spec_fields_then_config_map_then_table() -> None:
    assert resolve_prices(PricesSpec(), None, TABLE) == TABLE
    from_map = resolve_prices(PricesSpec(), {"gpuHour": " 7.5 "}, TABLE, "p")
    assert (from_map.cpu_hour, from_map.gpu_hour, from_map.currency) == (1.0, 7.5, "EUR")
    gbp = resolve_prices(PricesSpec(), {"cpuHour": "2", "memoryGiBHour": "0.2", "gpuHour": "9",
                                        "currency": "GBP"}, TABLE, "p")
    assert (gbp.cpu_hour, gbp.currency) == (2.0, "GBP")
    spec = PricesSpec.model_validate({"gpuHour": 3.0})
    mixed = resolve_prices(spec, {"gpuHour": "7.5", "cpuHour": "2"}, TABLE, "p")
    assert (mixed.cpu_hour, mixed.gpu_hour, mixed.memory_gi_b_hour) == (2.0, 3.0, 0.1)


def test_bad_price_config_map_names_the_field() -> None:
    with pytest.raises(ManifestError, match=r"priceConfigMap \(p\): unknown keys gpu; allowed"):
        resolve_prices(PricesSpec(), {"gpu": "1"}, TABLE, "p")
    with pytest.raises(ManifestError, match=r"priceConfigMap \(p\): cpuHour"):
        resolve_prices(PricesSpec(), {"cpuHour": "cheap"}, TABLE, "p")
    with pytest.raises(ManifestError, match="sets currency USD but not memoryGiBHour, gpuHour"):
        resolve_prices(PricesSpec(), {"cpuHour": "1", "currency": "USD"}, TABLE, "p")


def _status(**stages: tuple[str, str | None, str | None]) -> TrainingJobStatus:
    return TrainingJobStatus(stages={
        name: StageStatus(phase=StagePhase(phase), start_time=start, completion_time=end)
        for name, (phase, start, end) in stages.items()})


def test_stage_durations_are_counted_once() -> None:
    running = _status(tuning=("Running", "2026-01-01T00:00:00Z", None))
    done = _status(tuning=("Succeeded", "2026-01-01T00:00:00Z", "2026-01-01T00:01:30Z"),
                   training=("Failed", "2026-01-01T00:01:30Z", "2026-01-01T00:01:40Z"))
    assert metrics.finished_stages(running, done) == [("tuning", "Succeeded", 90.0),
                                                      ("training", "Failed", 10.0)]
    assert metrics.finished_stages(done, done) == []  # a later reconcile, or a restart
    assert metrics.finished_stages(None, _status(x=("Skipped", None, None))) == []


def test_jobs_are_counted_by_their_latest_phase() -> None:
    jobs = metrics.JobPhases()
    jobs.set("a", "Running")
    jobs.set("b", "Running")
    jobs.set("c", None)
    jobs.set("b", "Succeeded")
    jobs.forget("c")
    counts = jobs.counts()
    assert (counts["Running"], counts["Succeeded"]) == (1, 1)
    assert sum(counts.values()) == 2


def test_every_phase_is_exported_also_at_zero() -> None:
    jobs = metrics.JobPhases()
    jobs.set("a", "Running")
    assert jobs.counts()["Pending"] == 0
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'kubetrain_trainingjobs{phase="Suspended"}' in text


def test_metrics_exposition() -> None:
    """(The registry is the process's: in-process operators of other tests add to it.)"""

    def sample(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    bucket = {"le": "30.0", "result": "Succeeded", "stage": "augmentation"}
    before = sample("kubetrain_stage_duration_seconds_bucket", **bucket)
    errors = sample("kubetrain_reconcile_errors_total", reason="ApiError")
    metrics.record_stages(None, _status(
        augmentation=("Succeeded", "2026-01-01T00:00:00Z", "2026-01-01T00:00:20Z")))
    metrics.RECONCILE_ERRORS.labels(reason="ApiError").inc()
    assert sample("kubetrain_stage_duration_seconds_bucket", **bucket) == before + 1
    assert sample("kubetrain_reconcile_errors_total", reason="ApiError") == errors + 1
    assert "kubetrain_reconcile_duration_seconds" in generate_latest(metrics.REGISTRY).decode()


def test_operator_refuses_a_bad_configuration_before_starting(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("workerImage: kubetrain-worker:1\nimagePullPolicy: Sometimes\n")
    proc = kubetrain("operator", "--config", str(path), timeout=60)
    assert proc.returncode == 2
    assert f"{path} is invalid" in proc.stderr and "imagePullPolicy: must be one of" in \
        proc.stderr


def test_check_reports_an_operator_that_does_not_answer() -> None:
    proc = kubetrain("check", "--health", "http://127.0.0.1:9/healthz", "--metrics",
                     "http://127.0.0.1:9/metrics", timeout=60)
    assert proc.returncode == 1
    assert "FAILED: liveness endpoint http://127.0.0.1:9/healthz" in proc.stderr
    assert "FAILED: metrics endpoint http://127.0.0.1:9/metrics" in proc.stderr


def test_an_unchanged_status_is_not_written_again() -> None:
    from kubetrain.api.status import Phase, TrainingJobStatus
    from kubetrain.controller.handlers import status_patch_if_changed

    suspended = TrainingJobStatus(phase=Phase.SUSPENDED, progress="epoch 3/10")
    assert status_patch_if_changed(suspended, suspended.model_copy(deep=True)) is None
    running = suspended.model_copy(update={"phase": Phase.RUNNING})
    patch = status_patch_if_changed(suspended, running)
    assert patch is not None and patch["phase"] == "Running"
    assert status_patch_if_changed(None, running) == patch  # a new job: always written


def test_kopf_retries_its_api_requests_through_a_five_minute_outage(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf gives up an API request when its error backoffs run out (a handler's status patch
    among them). The operator's backoffs outlast an API server or etcd down for minutes, and
    stay short enough to write soon after it is back."""
    import kopf
    from kubetrain.controller import handlers

    monkeypatch.setenv("KUBETRAIN_METRICS_PORT", "0")
    settings = kopf.OperatorSettings()
    handlers.configure(settings=settings)
    backoffs = list(settings.networking.error_backoffs)
    assert sum(backoffs) >= 300 and max(backoffs) <= 10


def test_event_handlers_retry_until_the_api_answers() -> None:
    """A job outside the periodic pass (fresh, suspended, finished) is moved only by its event
    handlers: none of them may give up for good during an outage."""
    import kopf
    from kubetrain.controller import handlers  # noqa: F401  (registers the handlers)

    registry = kopf.get_default_registry()
    changing = list(registry._changing.get_all_handlers())
    assert {h.reason for h in changing} >= {"create", "update", None}  # None: resume
    for handler in changing:
        assert handler.retries is None and handler.timeout is None, handler.id


def test_no_handler_needs_a_finalizer() -> None:
    """No kopf timer, daemon or deletion handler: kopf puts no finalizer on a job (the PATCH
    it costs per job, and deletions that hang once the operator is gone); the periodic pass
    does a timer's work."""
    import kopf
    from kubetrain.controller import handlers  # noqa: F401  (registers the handlers)

    registry = kopf.get_default_registry()
    handlers_of_all_kinds = [*registry._changing.get_all_handlers(),
                             *registry._spawning.get_all_handlers(),
                             *registry._watching.get_all_handlers()]
    assert handlers_of_all_kinds
    assert not [h.id for h in handlers_of_all_kinds if getattr(h, "requires_finalizer", False)]
    assert not list(registry._spawning.get_all_handlers())
