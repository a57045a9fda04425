"""A TrainingJob's ``searchSpace`` as Optuna distributions (for ``study.ask``) and as a grid.

Optuna stores categorical choices as JSON and only knows scalars (str, int, float, bool, None);
a choice such as ``hiddenUnits: [128, 64]`` is stored as its JSON text and decoded back by
``decode_params``, so the params handed to training are the manifest's own values.

``log: true`` with a ``step``: Optuna samples a log range without a step, so the step only sets
the points of a grid (low, low + step, ... up to high).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..api.spec import SearchDimension

if TYPE_CHECKING:  # the grid arithmetic is also the planner's, which must not need Optuna
    from optuna.distributions import BaseDistribution, CategoricalChoiceType

# Digits kept from grid arithmetic, so 0.1 + 2 * 0.1 is 0.3 and not 0.30000000000000004.
_GRID_DIGITS = 12


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _encode_choice(value: Any) -> CategoricalChoiceType:
    return value if _scalar(value) else json.dumps(value, sort_keys=True)


def _bounds(dim: SearchDimension) -> tuple[float, float]:
    if dim.low is None or dim.high is None:  # the spec's validator guarantees both
        raise ValueError(f"a {dim.type} dimension needs low and high")
    return dim.low, dim.high


def _int_range(dim: SearchDimension) -> tuple[int, int, int]:
    low, high = _bounds(dim)
    lo, hi = math.ceil(low), math.floor(high)
    if lo > hi:
        raise ValueError(f"no integer between low {low} and high {high}")
    step = 1 if dim.log or dim.step is None else max(1, round(dim.step))
    return lo, hi, step


def _float_steps(dim: SearchDimension, step: float) -> tuple[float, int]:
    """The low bound and the number of whole steps that fit below high."""
    low, high = _bounds(dim)
    return low, math.floor((high - low) / step + 1e-9)


def distribution(dim: SearchDimension) -> BaseDistribution:
    """The Optuna distribution of one dimension."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if dim.type == "categorical":
        return CategoricalDistribution([_encode_choice(c) for c in dim.choices or []])
    if dim.type == "int":
        lo, hi, step = _int_range(dim)
        return IntDistribution(lo, hi, log=dim.log, step=step)
    low, high = _bounds(dim)
    if dim.step is None or dim.log:
        return FloatDistribution(low, high, log=dim.log)
    # Optuna wants high on the step grid; cut it down to the last whole step ourselves.
    low, steps = _float_steps(dim, dim.step)
    return FloatDistribution(low, round(low + steps * dim.step, _GRID_DIGITS), step=dim.step)


def distributions(space: Mapping[str, SearchDimension]) -> dict[str, BaseDistribution]:
    """Name → distribution, in the manifest's order (what ``study.ask`` takes)."""
    return {name: distribution(dim) for name, dim in space.items()}


def grid_values(dim: SearchDimension) -> list[CategoricalChoiceType]:
    """Every point of one dimension on the grid."""
    if dim.type == "categorical":
        return [_encode_choice(c) for c in dim.choices or []]
    if dim.type == "int":
        lo, hi, step = _int_range(dim)
        return list(range(lo, hi + 1, step))
    if dim.step is None:
        raise ValueError("the grid sampler needs a step for float dimensions")
    low, steps = _float_steps(dim, dim.step)
    return [round(low + i * dim.step, _GRID_DIGITS) for i in range(steps + 1)]


def grid_search_space(space: Mapping[str, SearchDimension]) -> dict[str, list[Any]]:
    """The search space as ``optuna.samplers.GridSampler`` takes it."""
    return {name: grid_values(dim) for name, dim in space.items()}


def grid_size(space: Mapping[str, SearchDimension]) -> int:
    """How many points the grid has (the most trials a grid search needs)."""
    return math.prod(len(values) for values in grid_search_space(space).values())


def decode_params(space: Mapping[str, SearchDimension],
                  params: Mapping[str, Any]) -> dict[str, Any]:
    """Params as sampled by Optuna → the manifest's values (lists back from their JSON text)."""
    decoded: dict[str, Any] = {}
    for name, value in params.items():
        dim = space.get(name)
        if dim is not None and dim.type == "categorical":
            originals = {_encode_choice(c): c for c in dim.choices or []}
            decoded[name] = originals.get(value, value)
        elif dim is not None and dim.type == "int":
            decoded[name] = int(value)
        else:
            decoded[name] = value
    return decoded
