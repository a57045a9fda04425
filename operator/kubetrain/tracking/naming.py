"""Pure naming of tracking runs: which run a unit is, its tags, its flattened parameters."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api.spec import TrainingJobSpec

TAG_PREFIX = "kubetrain."
MAX_PARAM_LENGTH = 500
"""MLflow's limit on a parameter's value (6000 on new servers; 500 on older ones)."""


@dataclass(frozen=True)
class UnitRun:
    """Which run a work unit logs: the job, the unit's folder name, its fold or trial."""

    job: str
    unit: str
    kind: str
    """train (the final training), fold, trial, sweep (a sweep's parent), explain."""
    fold: int | None = None
    trial: int | None = None

    @property
    def run_name(self) -> str:
        if self.kind == "fold":
            return f"{self.job}/fold-{self.fold}"
        if self.kind == "trial":
            return f"{self.job}/trial-{self.trial}"
        if self.kind == "sweep":
            return f"{self.job}/sweep"
        return f"{self.job}/{self.unit}"

    @property
    def tags(self) -> dict[str, str]:
        tags = {f"{TAG_PREFIX}job": self.job, f"{TAG_PREFIX}unit": self.unit,
                f"{TAG_PREFIX}kind": self.kind}
        if self.fold is not None:
            tags[f"{TAG_PREFIX}fold"] = str(self.fold)
        if self.trial is not None:
            tags[f"{TAG_PREFIX}trial"] = str(self.trial)
        return tags


def unit_run(job: str, unit: str, fold: int | None) -> UnitRun:
    """The run of a training unit from its folder name: ``tuning/trial-3`` is trial 3 of the
    sweep, a unit with a fold is that fold, any other is the unit itself (``train``)."""
    parent, _, base = unit.rpartition("/")
    if fold is not None:
        return UnitRun(job=job, unit=unit, kind="fold", fold=fold)
    if parent == "tuning" and base.startswith("trial-") and base[6:].isdigit():
        return UnitRun(job=job, unit=unit, kind="trial", trial=int(base[6:]))
    return UnitRun(job=job, unit=unit, kind=base or unit)


def plan_unit_name(run: UnitRun) -> str:
    """The unit's name in the plan (the costing's key): every trial is priced as trial-0."""
    return "trial-0" if run.kind == "trial" else run.unit


def flat_params(spec: TrainingJobSpec, params: Mapping[str, Any] | None = None
                ) -> dict[str, str]:
    """The spec's training-relevant fields as dotted camelCase keys (``training.learningRate``),
    with a trial's parameters (``param.<name>``) over them: what MLflow compares runs by."""
    sections = {"dataset": spec.dataset, "training": spec.training}
    if spec.model is not None:
        sections["model"] = spec.model
    flat: dict[str, str] = {}
    for name, section in sections.items():
        _flatten(section.model_dump(mode="json", by_alias=True, exclude_none=True), name, flat)
    for name, value in (params or {}).items():
        flat[f"param.{name}"] = str(value)
    return {k: v[:MAX_PARAM_LENGTH] for k, v in flat.items()}


def _flatten(value: Any, prefix: str, into: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}", into)
    elif not isinstance(value, dict):
        into[prefix] = str(value)


def numeric_metrics(prefix: str, values: Mapping[str, Any]) -> dict[str, float]:
    """The finite-or-not numbers of a result section under a prefix (``test_``, ``best_``);
    strings, lists and None are left out."""
    return {f"{prefix}{k}": float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def sweep_params(spec: TrainingJobSpec) -> dict[str, str]:
    """The sweep's parameters: the search space and how it is searched."""
    tuning = spec.tuning
    flat = {"tuning.backend": tuning.backend, "tuning.sampler": tuning.sampler,
            "tuning.pruner": str(tuning.pruner), "tuning.trials": str(tuning.trials),
            "tuning.parallelism": str(tuning.parallelism),
            "tuning.objectives": ",".join(f"{o.name}:{o.resolved_direction}"
                                          for o in tuning.objective_list)}
    for name, dimension in tuning.search_space.items():
        flat[f"searchSpace.{name}"] = json.dumps(
            dimension.model_dump(mode="json", by_alias=True, exclude_none=True))
    return {k: v[:MAX_PARAM_LENGTH] for k, v in flat.items()}
