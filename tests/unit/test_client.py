"""kubetrain.Client's pure parts: jobs from what a user passes, progress events, readable money
and status, the cluster side's pod choices and API errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubernetes.client.rest import ApiException
from kubetrain.api.resource import TrainingJob
from kubetrain.api.spec import TrainingJobSpec
from kubetrain.api.status import (
    BudgetStatus,
    CostFinding,
    OverfittingFinding,
    Phase,
    StagePhase,
    StageStatus,
    TrainingJobStatus,
)
from kubetrain.client import (
    AlreadyExists,
    Forbidden,
    InvalidSpec,
    NotFound,
    describe,
    format_money,
    job_from,
)
from kubetrain.client.events import progress_events
from kubetrain.client.kube import api_error
from kubetrain.client.pods import artifact_pod, choose_pod, storage_location

SPEC = {"dataset": {"builtin": "digits"}, "model": {"builtin": "mlp"},
        "training": {"epochs": 3}}


def test_a_dict_without_a_name_gets_one_from_its_dataset() -> None:
    job, _ = job_from({"spec": SPEC})
    assert job.metadata.name.startswith("digits-") and len(job.metadata.name) == 12
    assert job_from({"spec": SPEC})[0].metadata.name != job.metadata.name


def test_a_pydantic_spec_and_a_name_override() -> None:
    spec = TrainingJobSpec.model_validate(SPEC)
    job, _ = job_from(spec, name="mine")
    assert job.metadata.name == "mine" and job.spec.training.epochs == 3


def test_a_manifest_path_resolves_relative_paths_against_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
                                "metadata": {"name": "a"}, "spec": SPEC}))
    job, base = job_from(path)
    assert (job.metadata.name, base) == ("a", tmp_path)


def test_an_invalid_spec_names_the_field() -> None:
    bad = {**SPEC, "training": {"epochs": 3, "learningRate": -1}}
    with pytest.raises(InvalidSpec) as caught:
        job_from({"spec": bad})
    assert caught.value.problems == ["spec.training.learningRate: must be greater than 0 "
                                     "(got -1)"]


def test_money_is_never_in_exponent_form() -> None:
    assert format_money(3e-05, "USD") == "0.000030 USD"
    assert format_money(0.0271, "EUR") == "0.027 EUR"
    assert format_money(12.345, "USD") == "12.35 USD"
    assert format_money(0, "USD") == "0.00 USD"


def _status(**kwargs: object) -> TrainingJobStatus:
    return TrainingJobStatus.model_validate(kwargs)


def test_progress_events_report_changes_only() -> None:
    first = _status(phase="Running", currentStage="training", progress="epoch 2/6",
                    stages={"training": {"phase": "Running"}})
    events = progress_events(None, first)
    assert [(e.kind, e.message) for e in events] == [
        ("phase", "phase Running"), ("stage", "training running"),
        ("progress", "training: epoch 2/6")]
    assert progress_events(first, first) == []
    later = first.model_copy(update={"progress": "epoch 3/6"})
    assert [e.message for e in progress_events(first, later)] == ["training: epoch 3/6"]


def test_findings_and_the_final_cost_are_events() -> None:
    running = _status(phase="Running")
    done = running.model_copy(deep=True)
    done.phase = Phase.SUCCEEDED
    done.stages["training"] = StageStatus(phase=StagePhase.SUCCEEDED)
    done.findings.overfitting = OverfittingFinding(verdict="overfitting",
                                                   evidence=["gap 0.4 > 0.1 for 3 epochs"])
    done.findings.cost = CostFinding(total=4e-05, budget=BudgetStatus(
        max_cost=3e-05, spent=4e-05, exceeded=True))
    events = progress_events(running, done)
    assert [e.kind for e in events][:2] == ["stage", "phase"]  # the stage ended, then the job
    messages = [e.message for e in events if e.kind == "finding"]
    assert messages == ["overfitting: overfitting (gap 0.4 > 0.1 for 3 epochs)",
                        "budget exceeded: spent 4e-05 of 3e-05", "cost 0.000040 USD"]


def test_describe_shows_phase_stages_findings_and_money() -> None:
    status = _status(phase="Succeeded", best="val_accuracy=0.98 @ epoch 5",
                     stages={"training": {"phase": "Succeeded", "cost": 2e-05}},
                     findings={"cost": {"total": 2e-05, "cpuHours": 0.0007},
                               "overfitting": {"verdict": "none", "bestEpoch": 5}})
    text = describe("digits", status)
    assert text.splitlines()[0] == "TrainingJob digits: Succeeded"
    assert "training      Succeeded     0.000020 USD" in text
    assert "overfitting: none (best epoch 5)" in text
    assert "cost: 0.000020 USD" in text and "e-05" not in text


def _pod(name: str, unit: str, created: str) -> dict[str, object]:
    return {"metadata": {"name": name, "creationTimestamp": created,
                         "labels": {"kubetrain.io/unit": unit}}}


def test_logs_default_to_the_newest_pod_and_name_the_units_when_one_is_missing() -> None:
    pods = [_pod("j-train-0", "train", "2026-01-01T00:00:02Z"),
            _pod("j-augment-0", "augment", "2026-01-01T00:00:01Z")]
    assert choose_pod("j", pods, None)["metadata"]["name"] == "j-train-0"
    assert choose_pod("j", pods, "augment")["metadata"]["name"] == "j-augment-0"
    with pytest.raises(NotFound, match="units with pods: augment, train"):
        choose_pod("j", pods, "explain")


def _job(artifacts: dict[str, str]) -> TrainingJob:
    job, _ = job_from({"metadata": {"name": "d", "namespace": "ml"}, "spec": SPEC})
    return job.model_copy(update={"status": _status(phase="Succeeded", artifacts=artifacts)})


def test_storage_is_found_from_the_artifact_paths() -> None:
    job = _job({"status": "/data/kubetrain-data/kubetrain/ml/d/status.yaml"})
    assert storage_location(job) == ("kubetrain-data", "kubetrain/ml/d")
    with pytest.raises(NotFound, match="no artifacts yet"):
        storage_location(_job({}))


def test_the_artifact_pod_mounts_the_claim_read_only_as_non_root() -> None:
    pod = artifact_pod(_job({}), "kubetrain-data", "worker:1", "d-artifacts-x")
    volume = pod["spec"]["volumes"][0]["persistentVolumeClaim"]
    container = pod["spec"]["containers"][0]
    assert volume == {"claimName": "kubetrain-data", "readOnly": True}
    assert container["volumeMounts"][0]["readOnly"] is True
    assert container["securityContext"]["runAsNonRoot"] is True
    assert pod["metadata"]["namespace"] == "ml"


def _api(status: int, body: dict[str, object]) -> ApiException:
    error = ApiException(status=status, reason="x")
    error.body = json.dumps(body)
    return error


def test_api_errors_become_typed_errors() -> None:
    assert isinstance(api_error(_api(404, {"message": "gone"}), "TrainingJob a"), NotFound)
    forbidden = api_error(_api(403, {"message": "user u cannot create"}), "TrainingJob a")
    assert isinstance(forbidden, Forbidden) and "user u cannot create" in str(forbidden)
    assert isinstance(api_error(_api(409, {}), "TrainingJob a"), AlreadyExists)
    invalid = api_error(_api(422, {"details": {"causes": [
        {"field": "spec.training.epochs", "message": "must be >= 1"}]}}), "TrainingJob a")
    assert isinstance(invalid, InvalidSpec)
    assert invalid.problems == ["spec.training.epochs: must be >= 1"]


def test_submit_wait_shows_the_run_commands_lines_from_statuses() -> None:
    from kubetrain.client.display import StatusDisplay
    from kubetrain.local.display import Display
    from rich.console import Console

    console = Console(record=True, width=200)
    feed = StatusDisplay(Display(enabled=False, console=console))
    running = {"phase": "Running", "stages": {"training": {"phase": "Running", "units": {
        "train": {"phase": "Running"}}}}}
    for epoch in (1, 2, 2):
        feed.update(_status(**running, training={"epoch": epoch, "epochs": 6, "metrics": {
            "train_loss": 0.5, "val_loss": 0.25, "val_accuracy": 0.9}}))
    feed.update(_status(phase="Succeeded", stages={"training": {"phase": "Succeeded", "units": {
        "train": {"phase": "Succeeded"}, "report": {"phase": "Succeeded"}}}}))
    assert console.export_text().splitlines() == [
        "training: starting train",
        "train epoch 1/6 loss 0.5000  val_loss 0.2500  val_acc 0.9000",
        "train epoch 2/6 loss 0.5000  val_loss 0.2500  val_acc 0.9000",
        "train: done"]


def test_submit_refuses_a_bad_manifest_before_reaching_a_cluster(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[
                                                                     str]) -> None:
    from kubetrain.cli import EXIT_INVALID, main

    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({"spec": {**SPEC, "training": {"epochs": 3, "optimiser": "x"}}}))
    assert main(["submit", str(path), "-n", "nowhere"]) == EXIT_INVALID
    error = capsys.readouterr().err
    assert "spec.training.optimiser: unknown field; did you mean `optimizer`?" in error


def test_a_manifest_for_another_namespace_is_refused_naming_the_field() -> None:
    from kubetrain.client.kube import KubeBackend

    backend = KubeBackend.__new__(KubeBackend)  # no API client: refused before any request
    backend.namespace = "ml"
    job, _ = job_from({"metadata": {"name": "a", "namespace": "prod"}, "spec": SPEC})
    with pytest.raises(InvalidSpec, match=r"metadata\.namespace: prod differs from the "
                       r"namespace asked for \(ml\)"):
        backend.submit(job)


class _FakeCustom:
    """The custom-objects API as the watch sees it: gets return the latest object."""

    def __init__(self) -> None:
        self.gets = 0
        self.latest = _raw("Pending", "1")

    def get_namespaced_custom_object(self, *args: object) -> dict[str, object]:
        self.gets += 1
        return self.latest

    def list_namespaced_custom_object(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("called only through the watch")


def _raw(phase: str, version: str) -> dict[str, object]:
    job, _ = job_from({"metadata": {"name": "w"}, "spec": SPEC})
    body = job.to_manifest()
    body["metadata"]["resourceVersion"] = version
    body["status"] = {"phase": phase}
    return body


def test_waiting_follows_a_watch_and_recovers_from_an_expired_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetrain.client import kube

    custom = _FakeCustom()
    streams = [[{"type": "MODIFIED", "object": _raw("Running", "2")},
                {"type": "ERROR", "object": {"code": 410, "message": "too old"}}],
               [{"type": "MODIFIED", "object": _raw("Succeeded", "9")}]]
    versions: list[object] = []

    class FakeWatch:
        def stream(self, func: object, *args: object, **kwargs: object) -> object:
            versions.append(kwargs["resource_version"])
            assert kwargs["field_selector"] == "metadata.name=w"
            for event in streams.pop(0):
                if event["type"] == "ERROR":  # meanwhile the job moved on
                    custom.latest = _raw("Running", "5")
                yield event

        def stop(self) -> None:
            pass

    monkeypatch.setattr(kube.watch, "Watch", FakeWatch)
    backend = kube.KubeBackend.__new__(kube.KubeBackend)
    backend.namespace, backend.custom = "ml", custom  # type: ignore[assignment]
    phases = [s.phase for s in backend.statuses("w", timeout=30)]
    assert phases == ["Pending", "Running", "Running", "Succeeded"]
    assert versions == ["1", "5"] and custom.gets == 2  # one get at the start, one after 410
