"""Hyperparameters (from a tuning trial, or the best trial) applied to a spec."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.spec import TUNABLE_PARAMETERS, TUNABLE_PREFIX_MODEL, TrainingJobSpec


def apply_params(spec: TrainingJobSpec, params: Mapping[str, Any]) -> TrainingJobSpec:
    """A copy of spec with the named hyperparameters set; validated like the manifest itself.

    With training.command, names other than the built-in ones (learningRate, ...) belong to the
    user's program: they reach it through ``program_params`` and leave the spec as it is.
    """
    data = spec.model_dump(by_alias=True, exclude_none=True)
    for name, value in params.items():
        if name in TUNABLE_PARAMETERS:
            data["training"][name] = value
        elif spec.custom:
            continue
        elif name.startswith(TUNABLE_PREFIX_MODEL):
            data["model"].setdefault("params", {})[name[len(TUNABLE_PREFIX_MODEL):]] = value
        else:
            raise ValueError(f"{name!r} is not a tunable hyperparameter")
    return TrainingJobSpec.model_validate(data)


def program_params(spec: TrainingJobSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """What a custom program gets as its parameters (KUBETRAIN_PARAMS, ${params.NAME}): the
    training settings it may use, training.params, then the trial's (or best trial's) values
    over them."""
    training = spec.training.model_dump(by_alias=True, include={
        "epochs", "batch_size", "optimizer", "learning_rate", "momentum", "schedule",
        "weight_decay", "dropout", "label_smoothing"})
    return {**training, **spec.training.params, **params}
