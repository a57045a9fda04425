"""The Pareto front and the selection rule of a multi-objective sweep (pure functions)."""

from __future__ import annotations

import pytest
from kubetrain.api.status import TrialPoint
from kubetrain.findings.tuning import (
    best_by_metric,
    cheapest_within,
    dominates,
    pareto_front,
)

ACCURACY_AND_COST = [("val_accuracy", "maximize"), ("cost", "minimize")]


def point(trial: int, accuracy: float, cost: float | None) -> TrialPoint:
    values = {"val_accuracy": accuracy}
    if cost is not None:
        values["cost"] = cost
    return TrialPoint(trial=trial, params={"epochs": trial}, values=values, cost=cost)


# The most accurate trial (3) costs 10; trial 1 is nearly as good at 4; trial 2 is cheap and
# poor; trial 0 is beaten by trial 1 on both (less accurate, dearer); trial 4 ties trial 1's
# accuracy at a higher cost.
SWEEP = [point(0, 0.95, 6.0), point(1, 0.975, 4.0), point(2, 0.90, 1.0), point(3, 0.98, 10.0),
         point(4, 0.975, 5.0)]


def test_dominates_needs_no_worse_everywhere_and_better_somewhere() -> None:
    assert dominates((1.0, 2.0), (1.0, 3.0))
    assert not dominates((1.0, 3.0), (1.0, 3.0))  # equal: neither beats the other
    assert not dominates((0.0, 4.0), (1.0, 3.0))  # better on one, worse on the other


def test_the_front_keeps_the_trials_nothing_beats_on_every_objective() -> None:
    front = pareto_front(SWEEP, ACCURACY_AND_COST)
    assert [p.trial for p in front] == [1, 2, 3]


def test_the_front_follows_each_objectives_direction() -> None:
    # Minimizing accuracy (nonsense, but a direction is a direction) turns the front around.
    front = pareto_front(SWEEP, [("val_accuracy", "minimize"), ("cost", "minimize")])
    assert [p.trial for p in front] == [2]


def test_a_trial_without_an_objectives_value_is_left_off_the_front() -> None:
    front = pareto_front([*SWEEP, point(5, 0.99, None)], ACCURACY_AND_COST)
    assert 5 not in [p.trial for p in front]


def test_best_by_metric_breaks_ties_by_cost() -> None:
    best = best_by_metric(SWEEP, "val_accuracy", "maximize")
    assert best is not None and best.trial == 3
    tie = best_by_metric([point(4, 0.975, 5.0), point(1, 0.975, 4.0)], "val_accuracy",
                         "maximize")
    assert tie is not None and tie.trial == 1
    assert best_by_metric([], "val_accuracy", "maximize") is None


def test_cheapest_within_one_point_picks_the_cheap_near_best_trial_and_says_the_saving() -> None:
    selection = cheapest_within(SWEEP, "val_accuracy", "maximize", 0.01)
    assert selection is not None
    assert selection.trial == 1 and selection.value == 0.975 and selection.cost == 4.0
    assert (selection.best_metric_trial, selection.best_metric_value,
            selection.best_metric_cost) == (3, 0.98, 10.0)
    assert selection.metric_lost == pytest.approx(0.005)
    assert selection.saved == pytest.approx(6.0)
    assert selection.saved_fraction == pytest.approx(0.6)
    assert selection.rule == "cheapestWithin 0.01"


def test_the_tolerance_is_inclusive_and_zero_means_the_best() -> None:
    # 0.98 - 0.97 is 0.010000000000000009 in floats: still "within 0.01".
    edge = cheapest_within([point(0, 0.98, 10.0), point(1, 0.97, 2.0)], "val_accuracy",
                           "maximize", 0.01)
    assert edge is not None and edge.trial == 1
    exact = cheapest_within(SWEEP, "val_accuracy", "maximize", 0.0)
    assert exact is not None and exact.trial == 3 and exact.saved == 0.0
    wide = cheapest_within(SWEEP, "val_accuracy", "maximize", 0.5)
    assert wide is not None and wide.trial == 2 and wide.metric_lost == pytest.approx(0.08)


def test_a_minimized_metric_counts_its_tolerance_upwards() -> None:
    losses = [TrialPoint(trial=0, values={"val_loss": 0.10}, cost=9.0),
              TrialPoint(trial=1, values={"val_loss": 0.105}, cost=3.0),
              TrialPoint(trial=2, values={"val_loss": 0.2}, cost=1.0)]
    selection = cheapest_within(losses, "val_loss", "minimize", 0.01)
    assert selection is not None and selection.trial == 1
    assert selection.metric_lost == pytest.approx(0.005)


def test_without_costs_the_best_metric_trial_stays_selected() -> None:
    selection = cheapest_within([point(0, 0.98, None), point(1, 0.975, 1.0)], "val_accuracy",
                                "maximize", 0.01)
    assert selection is not None and selection.trial == 0 and selection.saved == 0.0
    assert cheapest_within([], "val_accuracy", "maximize", 0.01) is None
