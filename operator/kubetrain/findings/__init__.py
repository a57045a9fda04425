"""Findings: pure analyses of a run's metrics and resource usage (no I/O, no torch).

- :mod:`.overfitting`: the overfitting verdict, evidence and recommendations from per-epoch
  metrics.
- :mod:`.cost`: resource-hours and cost per stage, the cost after the best epoch, budgets.
"""

from .cost import (
    Usage,
    budget_exceeded,
    hourly_rate,
    stage_cost,
    summarize_cost,
)
from .overfitting import (
    analyze_overfitting,
    best_epoch,
    should_stop_for_overfitting,
)

__all__ = [
    "Usage",
    "analyze_overfitting",
    "best_epoch",
    "budget_exceeded",
    "hourly_rate",
    "should_stop_for_overfitting",
    "stage_cost",
    "summarize_cost",
]
