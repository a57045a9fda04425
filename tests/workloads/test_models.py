"""The built-in networks take exactly the parameters the spec allows (BUILTIN_MODEL_PARAMS)."""

from __future__ import annotations

import pytest
import torch
from kubetrain.api.spec import BUILTIN_MODEL_PARAMS, ModelSpec
from kubetrain.models import build_model


def _shape(builtin: str) -> tuple[int, ...]:
    return (4,) if builtin == "mlp" else (1, 8, 8)


def _weights(builtin: str, **params: object) -> int:
    model = build_model(ModelSpec(builtin=builtin, params=params), _shape(builtin), 3, 0.0)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("builtin", sorted(BUILTIN_MODEL_PARAMS))
def test_builtin_model_builds_from_the_table_defaults(builtin: str) -> None:
    model = build_model(ModelSpec(builtin=builtin), _shape(builtin), 3, 0.0).eval()
    assert model(torch.rand(2, *_shape(builtin))).shape == (2, 3)


@pytest.mark.parametrize(("builtin", "key"), [
    (builtin, key) for builtin, params in BUILTIN_MODEL_PARAMS.items() for key in params])
def test_every_allowed_parameter_changes_the_network(builtin: str, key: str) -> None:
    default = BUILTIN_MODEL_PARAMS[builtin][key]
    small = [3] if isinstance(default, tuple) else 1
    assert _weights(builtin, **{key: small}) < _weights(builtin)
