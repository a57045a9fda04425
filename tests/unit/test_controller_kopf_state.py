"""kopf's state in ``status.kopf``: a new job's first handling is one PATCH (the status with
kopf's record of the handled spec), not a second one for annotations (bench/operator_scale.py)."""

from __future__ import annotations

import json
import logging

import kopf
import pytest
from kubetrain.api.crd import build_crd
from kubetrain.api.resource import GROUP
from kubetrain.controller import handlers
from kubetrain.controller.admission import TURN
from kubetrain.controller.handlers import StatusDiffBase, configure


def test_kopf_state_goes_in_the_status_patch_not_in_annotations(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers.metrics, "serve", lambda port: None)  # no /metrics server
    settings = kopf.OperatorSettings()
    configure(settings=settings)
    body = kopf.Body({"metadata": {"name": "j", "annotations": {TURN: "t"}},
                      "spec": {"epochs": 1}, "status": {"phase": "Running"}})
    patch = kopf.Patch()
    storage = settings.persistence.diffbase_storage
    essence = storage.build(body=body)
    storage.store(body=body, patch=patch, essence=essence)
    assert set(patch) == {"status"}  # one PATCH, of the status subresource
    stored = json.loads(patch["status"]["kopf"]["last-handled-configuration"])
    assert stored == {"spec": {"epochs": 1}, "metadata": {"annotations": {TURN: "t"}}}
    # The CRD keeps it (a structural schema would prune an undeclared field).
    status = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "status"]
    assert status["properties"]["kopf"]["x-kubernetes-preserve-unknown-fields"] is True


def test_a_job_handled_by_an_earlier_operator_is_read_from_its_annotation() -> None:
    legacy = {f"{GROUP}/kopf-managed": "yes",
              f"{GROUP}/last-handled-configuration": '{"spec":{"epochs":1}}\n', TURN: "t"}
    body = kopf.Body({"metadata": {"name": "j", "annotations": legacy},
                      "spec": {"epochs": 1}})
    storage = StatusDiffBase()
    assert storage.fetch(body=body) == {"spec": {"epochs": 1}}
    # kopf's old annotations stay out of the essence, as the annotation storage left them.
    assert storage.build(body=body) == {"spec": {"epochs": 1},
                                        "metadata": {"annotations": {TURN: "t"}}}


def test_watch_event_successes_stay_out_of_the_log(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A line for every watch event of every job, dropped; other handlers' lines and
    watch_event's failures stay."""
    monkeypatch.setattr(handlers.metrics, "serve", lambda port: None)
    configure(settings=kopf.OperatorSettings())
    logger = logging.getLogger("kopf.objects")
    with caplog.at_level(logging.INFO, logger="kopf.objects"):
        logger.info("Handler 'watch_event' succeeded.")
        logger.info("Handler 'reconcile_handler' succeeded.")
        logger.error("Handler 'watch_event' failed with an exception. Will ignore.")
    assert [r.getMessage() for r in caplog.records] == [
        "Handler 'reconcile_handler' succeeded.",
        "Handler 'watch_event' failed with an exception. Will ignore."]
