"""Tracking's pure parts: which run a unit is, its parameters, and what a result records."""

from __future__ import annotations

import pytest
from kubetrain.api import ManifestError, parse_training_job
from kubetrain.tracking.naming import flat_params, plan_unit_name, sweep_params, unit_run
from kubetrain.tracking.records import sweep_record
from support import base_manifest


def test_unit_names_map_to_runs() -> None:
    assert unit_run("j", "train", None).run_name == "j/train"
    fold = unit_run("j", "fold-1", 1)
    assert (fold.kind, fold.run_name, fold.tags["kubetrain.fold"]) == ("fold", "j/fold-1", "1")
    trial = unit_run("j", "tuning/trial-12", None)
    assert (trial.kind, trial.trial, trial.run_name) == ("trial", 12, "j/trial-12")
    assert plan_unit_name(trial) == "trial-0"
    assert unit_run("j", "remediate-1", None).kind == "remediate-1"


def test_params_are_the_spec_flattened_with_the_trial_over_them() -> None:
    spec = parse_training_job(base_manifest()).spec
    params = flat_params(spec, {"learningRate": 0.01})
    assert params["training.learningRate"] == "0.003"
    assert params["model.builtin"] == "mlp"
    assert params["param.learningRate"] == "0.01"
    assert all(len(v) <= 500 for v in params.values())


def test_sweep_record_has_the_best_trial_and_the_counts() -> None:
    spec = parse_training_job(base_manifest(tuning={
        "enabled": True, "searchSpace": {"dropout": {"type": "float", "low": 0, "high": 0.5}}}
    )).spec
    assert sweep_params(spec)["searchSpace.dropout"] == '{"type": "float", "low": 0.0, ' \
        '"high": 0.5, "log": false}'
    record = sweep_record(spec, {"status": "succeeded", "trials": {"complete": 3, "pruned": 1},
                                 "best": {"trial": 2, "params": {"dropout": 0.1},
                                          "value": 0.25}, "epochs_saved_by_pruning": 4})
    assert record.metrics == {"trials_complete": 3.0, "trials_pruned": 1.0,
                              "epochs_saved_by_pruning": 4.0, "best_val_loss": 0.25}
    assert record.tags["kubetrain.best.trial"] == "2"
    assert record.tags["kubetrain.best.param.dropout"] == "0.1"


@pytest.mark.parametrize("uri", ["mlflow.local:5000", "ftp://x", "http://"])
def test_a_bad_tracking_uri_names_the_field(uri: str) -> None:
    with pytest.raises(ManifestError, match=r"spec\.tracking\.mlflow\.uri: "):
        parse_training_job(base_manifest(tracking={"mlflow": {"uri": uri}}))


def test_a_failing_destination_is_switched_off_with_a_warning_without_secrets() -> None:
    from pathlib import Path

    from kubetrain.tracking import RunRecord, UnitTracker

    class Refusing:
        name, takes_files = "mlflow", True
        calls = 0

        def start(self, params: object) -> None:
            raise ConnectionError("http://alice:s3cret@mlflow:5000 refused")

        def epoch(self, step: int, metrics: object) -> None:
            Refusing.calls += 1

        def finish(self, *args: object) -> None:
            Refusing.calls += 1

    tracker = UnitTracker([Refusing()])
    tracker.start({})
    tracker.epoch({"epoch": 1, "val_loss": 0.5})
    tracker.finish(RunRecord(files=[Path("/nonexistent")]))
    assert Refusing.calls == 0  # off after its first failure: no more waiting on it
    [warning] = tracker.warnings
    assert warning.startswith("mlflow: logging the parameters failed")
    assert "s3cret" not in warning and "http://***@mlflow:5000" in warning
    assert tracker.report_into({})["tracking_warnings"] == [warning]
