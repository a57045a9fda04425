"""The metric decisions every module imports from kubetrain.api.metrics."""

from __future__ import annotations

from typing import Any

import pytest
from kubetrain.api.metrics import (
    direction_of,
    headline_metric,
    is_maximized,
    monitored_metric,
    task_of_metric,
)
from kubetrain.api.spec import TrainingJobSpec


def _spec(training: dict[str, Any], dataset: dict[str, Any] | None = None) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({
        "dataset": dataset or {"builtin": "digits"}, "model": {"builtin": "mlp"},
        "training": training,
    })


@pytest.mark.parametrize(("metric", "maximized", "direction"), [
    ("val_accuracy", True, "maximize"),
    ("val_loss", False, "minimize"),
    ("val_rmse", False, "minimize"),
])
def test_only_accuracy_is_maximized(metric: str, maximized: bool, direction: str) -> None:
    assert is_maximized(metric) is maximized
    assert direction_of(metric) == direction


def test_monitored_metric_is_the_monitor_only_while_early_stopping_is_enabled() -> None:
    assert monitored_metric(_spec({})) == "val_loss"
    assert monitored_metric(_spec({"earlyStopping": {"monitor": "val_accuracy"}})) == (
        "val_accuracy")
    disabled = _spec({"earlyStopping": {"enabled": False, "monitor": "val_accuracy"}})
    assert monitored_metric(disabled) == "val_loss"


def test_headline_and_task_of_each_metric() -> None:
    assert headline_metric("classification") == "val_accuracy"
    assert headline_metric("regression") == "val_rmse"
    assert task_of_metric("val_accuracy") == "classification"
    assert task_of_metric("val_rmse") == "regression"
    assert task_of_metric("val_loss") is None


@pytest.mark.parametrize(("dataset", "task"), [
    ({"builtin": "digits"}, "classification"),
    ({"builtin": "diabetes"}, "regression"),
    ({"builtin": "iris", "task": "regression"}, "regression"),
    ({"uri": "data.csv", "target": "y"}, None),
    ({"uri": "data.csv", "target": "y", "task": "classification"}, "classification"),
])
def test_declared_task_from_the_spec(dataset: dict[str, Any], task: str | None) -> None:
    assert _spec({}, dataset).dataset.declared_task == task


def test_explicit_task_decides_the_metric_check_even_on_a_builtin() -> None:
    """diabetes loaded as classes takes val_accuracy and refuses val_rmse."""
    diabetes_classes = {"builtin": "diabetes", "task": "classification"}
    _spec({"earlyStopping": {"monitor": "val_accuracy"}}, diabetes_classes)
    with pytest.raises(ValueError, match="val_rmse needs a regression dataset"):
        _spec({"earlyStopping": {"monitor": "val_rmse"}}, diabetes_classes)
