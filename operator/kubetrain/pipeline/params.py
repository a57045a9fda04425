"""Hyperparameters (from a tuning trial, or the best trial) applied to a spec."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.spec import TUNABLE_PARAMETERS, TUNABLE_PREFIX_MODEL, TrainingJobSpec


def apply_params(spec: TrainingJobSpec, params: Mapping[str, Any]) -> TrainingJobSpec:
    """A copy of spec with the named hyperparameters set; validated like the manifest itself."""
    data = spec.model_dump(by_alias=True, exclude_none=True)
    for name, value in params.items():
        if name in TUNABLE_PARAMETERS:
            data["training"][name] = value
        elif name.startswith(TUNABLE_PREFIX_MODEL):
            data["model"].setdefault("params", {})[name[len(TUNABLE_PREFIX_MODEL):]] = value
        else:
            raise ValueError(f"{name!r} is not a tunable hyperparameter")
    return TrainingJobSpec.model_validate(data)
