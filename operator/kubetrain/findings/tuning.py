"""Multi-objective sweeps: the Pareto front of the complete trials and the selection rule.

Pure functions on :class:`TrialPoint` (a trial's parameters, objective values and cost); the
sweep's summary unit and the benchmarks call them, and nothing here reads a study.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..api.metrics import Direction
from ..api.status import TrialPoint, TuningSelection

Objectives = Sequence[tuple[str, Direction]]
"""(objective name, direction) pairs, in the spec's order."""


def _scores(point: TrialPoint, objectives: Objectives) -> tuple[float, ...]:
    """The point's objective values turned so that smaller is better on every axis."""
    return tuple(point.values[name] if direction == "minimize" else -point.values[name]
                 for name, direction in objectives)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether scores ``a`` beat ``b``: no worse on any axis, better on one (smaller wins)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and \
        any(x < y for x, y in zip(a, b, strict=True))


def pareto_front(points: Sequence[TrialPoint], objectives: Objectives) -> list[TrialPoint]:
    """The points no other point dominates, in trial order. A point missing an objective's
    value (a failed measurement) is left out."""
    usable = [p for p in points if all(name in p.values for name, _ in objectives)]
    scores = {p.trial: _scores(p, objectives) for p in usable}
    return sorted((p for p in usable
                   if not any(dominates(scores[q.trial], scores[p.trial]) for q in usable)),
                  key=lambda p: p.trial)


def _better(a: float, b: float, direction: Direction) -> bool:
    return a > b if direction == "maximize" else a < b


def best_by_metric(points: Sequence[TrialPoint], metric: str,
                   direction: Direction) -> TrialPoint | None:
    """The point with the best ``metric``; of equals, the cheapest, then the first trial."""
    candidates = [p for p in points if metric in p.values]
    if not candidates:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(candidates, key=lambda p: (sign * p.values[metric], _cost(p), p.trial))


def _cost(point: TrialPoint) -> float:
    return point.cost if point.cost is not None else float("inf")


def cheapest_within(points: Sequence[TrialPoint], metric: str, direction: Direction,
                    tolerance: float) -> TuningSelection | None:
    """The cheapest point whose ``metric`` is at most ``tolerance`` worse than the best one's
    (of equal cost, the better metric), with what it saves against the best-metric point.
    None while no point has the metric."""
    best = best_by_metric(points, metric, direction)
    if best is None:
        return None
    best_value = best.values[metric]

    def lost(point: TrialPoint) -> float:
        gap = best_value - point.values[metric]
        return gap if direction == "maximize" else -gap

    # A small epsilon: 0.97 and 0.98 are "within 0.01" although 0.98 - 0.97 > 0.01 in floats.
    within = [p for p in points if metric in p.values and lost(p) <= tolerance + 1e-12]
    sign = -1.0 if direction == "maximize" else 1.0
    chosen = min(within, key=lambda p: (_cost(p), sign * p.values[metric], p.trial))
    if chosen.cost is None or best.cost is None:
        chosen = best  # a trial without a cost (an older study's): nothing is known cheaper
    chosen_cost, best_cost = chosen.cost or 0.0, best.cost or 0.0
    saved = best_cost - chosen_cost
    return TuningSelection(
        rule=f"cheapestWithin {tolerance:g}", metric=metric, trial=chosen.trial,
        value=chosen.values[metric], cost=chosen_cost, best_metric_trial=best.trial,
        best_metric_value=best_value, best_metric_cost=best_cost,
        metric_lost=max(0.0, lost(chosen)), saved=saved,
        saved_fraction=saved / best_cost if best_cost > 0 else 0.0)
