"""``spec.tuning``: the hyperparameter search (space, objectives, sampler, pruning, selection)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ..base import ApiModel
from ..metrics import DEFAULT_METRIC, Direction, Metric, direction_of
from .common import FieldProblem


class SearchDimension(ApiModel):
    """One hyperparameter of the search space."""

    type: Literal["float", "int", "categorical"]
    """float or int (a range from low to high), or categorical (a list of choices)."""
    low: float | None = None
    """Lower bound of a float or int dimension (inclusive)."""
    high: float | None = None
    """Upper bound of a float or int dimension (inclusive)."""
    log: bool = False
    """Sample on a log scale (low must be > 0)."""
    step: float | None = Field(default=None, gt=0)
    """Grid step for int and float (needed by the grid sampler for numbers)."""
    choices: list[Any] | None = Field(default=None, min_length=1)
    """The values of a categorical dimension."""

    @model_validator(mode="after")
    def _bounds(self) -> SearchDimension:
        if self.type == "categorical":
            if not self.choices:
                raise FieldProblem("choices", "a categorical dimension needs a list of values")
            if self.low is not None or self.high is not None:
                raise FieldProblem(
                    "low" if self.low is not None else "high",
                    "a categorical dimension takes `choices`, not `low`/`high`",
                )
            return self
        if self.low is None or self.high is None:
            raise FieldProblem(
                "low" if self.low is None else "high",
                f"a {self.type} dimension needs `low` and `high` (or use type: categorical)",
            )
        if self.low >= self.high:
            raise FieldProblem("low", f"must be less than `high` (got {self.low} >= {self.high})")
        if self.log and self.low <= 0:
            raise FieldProblem("low", f"must be > 0 with `log: true` (got {self.low})")
        if self.choices is not None:
            raise FieldProblem(
                "choices", f"a {self.type} dimension takes `low`/`high`; use type: categorical"
            )
        return self


# Hyperparameters a sweep may set, and where they land in the spec.
TUNABLE_PARAMETERS = (
    "learningRate", "weightDecay", "dropout", "batchSize", "optimizer", "momentum",
    "labelSmoothing", "epochs", "schedule",
)
TUNABLE_PREFIX_MODEL = "model."


class ObjectiveSpec(ApiModel):
    """The validation metric the sweep optimizes, and in which direction."""

    metric: Metric = DEFAULT_METRIC
    """The validation metric each trial reports."""
    direction: Direction = "minimize"
    """maximize for val_accuracy; minimize for val_loss and val_rmse."""


ObjectiveName = Literal["val_loss", "val_accuracy", "val_rmse", "cost", "trainSeconds"]
"""What a sweep can optimize: a validation metric, or what a trial costs."""
RESOURCE_OBJECTIVES = ("cost", "trainSeconds")
"""Objectives measured on the trial itself rather than on its validation split."""
MULTI_OBJECTIVE_SAMPLERS = ("nsga2", "tpe", "gp", "random", "grid")
"""The samplers that take several objectives (Optuna's CMA-ES takes one)."""


class TuningObjectiveSpec(ApiModel):
    """One objective of a multi-objective sweep."""

    name: ObjectiveName
    """val_loss, val_accuracy or val_rmse (the trial's best epoch); trainSeconds (the seconds of
    its epochs); cost (those seconds x the trial's requested resources x the job's prices)."""
    direction: Direction | None = None
    """maximize for val_accuracy, minimize for the others (the default: the one that is right)."""

    @property
    def resolved_direction(self) -> Direction:
        return self.direction or direction_of(self.name)

    @property
    def is_metric(self) -> bool:
        return self.name not in RESOURCE_OBJECTIVES

    @model_validator(mode="after")
    def _direction(self) -> TuningObjectiveSpec:
        expected = direction_of(self.name)
        if self.direction is not None and self.direction != expected:
            raise FieldProblem("direction", f"must be {expected} for {self.name}")
        return self


class SelectionSpec(ApiModel):
    """Which trial of a multi-objective sweep trains the final model."""

    cheapest_within: float = Field(ge=0, le=1000)
    """The cheapest complete trial (by its cost) whose metric (the first validation metric of
    tuning.objectives) is within this of the best trial's: 0.01 = one point of accuracy."""


class TuningSpec(ApiModel):
    """The tuning stage: a hyperparameter sweep whose best trial feeds the final training."""

    enabled: bool = False
    """Run the sweep before the final training."""
    backend: Literal["optuna", "ray"] = "optuna"
    """optuna (one study shared by all trial processes) or ray (Ray Tune)."""
    sampler: Literal["grid", "random", "tpe", "cmaes", "gp", "nsga2"] = "tpe"
    """How trials pick values: grid, random, tpe (Bayesian), cmaes, gp (Gaussian process), or
    nsga2 (genetic, for several objectives)."""
    pruner: Literal["none", "median", "hyperband", "successive-halving"] = "median"
    """Stops unpromising trials early; none runs every trial to the end."""
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    objectives: list[TuningObjectiveSpec] | None = Field(default=None, min_length=2,
                                                         max_length=4)
    """Several objectives instead of objective (e.g. val_accuracy and cost): status holds the
    Pareto front; samplers nsga2, tpe, gp, random, grid; no pruner (Optuna prunes one
    objective only)."""
    selection: SelectionSpec | None = None
    """With objectives: the rule that picks the trial whose parameters train the final model;
    default: the trial with the best metric."""
    trials: int = Field(default=20, ge=1, le=10000)
    """Trials in the sweep."""
    parallelism: int = Field(default=2, ge=1, le=256)
    """Trials running at once, each in its own process (pod)."""
    epochs_per_trial: int | None = Field(default=None, ge=1, le=10000)
    """Epochs of each trial; defaults to training.epochs."""
    search_space: dict[str, SearchDimension] = Field(default_factory=dict)
    """Hyperparameter name → dimension. Names: learningRate, weightDecay, dropout, batchSize,
    optimizer, momentum, labelSmoothing, epochs, schedule, or model.<param>."""
    storage: str | None = None
    """An external Optuna storage URL (postgresql://...); default: a study server on the job's
    storage."""

    @model_validator(mode="after")
    def _space(self) -> TuningSpec:
        if not self.enabled:
            return self
        if {"parallelism", "trials"} <= self.model_fields_set and self.parallelism > self.trials:
            # As Katib does: both set and contradictory is a mistake; a default is just capped.
            raise FieldProblem(
                "parallelism", f"{self.parallelism} is more than tuning.trials "
                f"({self.trials}); set tuning.parallelism <= tuning.trials"
            )
        if not self.search_space:
            raise FieldProblem(
                "searchSpace", "needs at least one hyperparameter when tuning is on: "
                f"{', '.join(TUNABLE_PARAMETERS)}, model.<param>, or your command's own names"
            )
        if self.sampler == "grid":
            for name, dim in self.search_space.items():
                if dim.type != "categorical" and dim.step is None:
                    raise FieldProblem(
                        f"searchSpace.{name}.step",
                        f"required by the grid sampler for a {dim.type} dimension "
                        "(or use another sampler: random, tpe, cmaes, gp)",
                    )
        expected = direction_of(self.objective.metric)
        if self.objective.direction != expected:
            raise FieldProblem(
                "objective.direction", f"must be {expected} for {self.objective.metric}"
            )
        return self

    @model_validator(mode="after")
    def _objectives(self) -> TuningSpec:
        if not self.enabled:
            return self
        if self.objectives is None:
            if self.selection is not None:
                raise FieldProblem(
                    "selection", "needs several objectives (tuning.objectives, e.g. "
                    "val_accuracy and cost); with one objective the best trial is taken")
            return self
        # (A written-out spec carries the default objective: only another one contradicts.)
        if self.objective != ObjectiveSpec():
            raise FieldProblem("objective", "set either objective (one) or objectives "
                               "(several), not both")
        seen: set[str] = set()
        for i, objective in enumerate(self.objectives):
            if objective.name in seen:
                raise FieldProblem(f"objectives[{i}].name", f"{objective.name} is already an "
                                   "objective; each objective once")
            seen.add(objective.name)
        if not any(o.is_metric for o in self.objectives):
            raise FieldProblem("objectives", "needs a validation metric (val_loss, "
                               "val_accuracy or val_rmse) beside "
                               + ", ".join(o.name for o in self.objectives))
        if self.pruner != "none":
            raise FieldProblem(
                "pruner", f"{self.pruner} cannot be used with several objectives: Optuna "
                "prunes single-objective studies only; set pruner: none")
        if self.sampler not in MULTI_OBJECTIVE_SAMPLERS:
            raise FieldProblem(
                "sampler", f"{self.sampler} optimizes one objective; with several use "
                + ", ".join(MULTI_OBJECTIVE_SAMPLERS))
        if self.backend != "optuna":
            raise FieldProblem("backend", f"{self.backend} runs single-objective sweeps; use "
                               "optuna with several objectives")
        return self

    @property
    def multi_objective(self) -> bool:
        return self.objectives is not None

    @property
    def objective_list(self) -> list[TuningObjectiveSpec]:
        """The sweep's objectives in order: ``objectives``, or the one ``objective``."""
        if self.objectives is not None:
            return list(self.objectives)
        return [TuningObjectiveSpec(name=self.objective.metric,
                                    direction=self.objective.direction)]

    @property
    def metric_objective(self) -> ObjectiveSpec:
        """The validation metric that names the best trial: ``objective``, or the first metric
        among ``objectives``."""
        if self.objectives is None:
            return self.objective
        first = next(o for o in self.objectives if o.is_metric)
        metric: Metric = first.name  # type: ignore[assignment]  # is_metric: not cost
        return ObjectiveSpec(metric=metric, direction=first.resolved_direction)
