"""Cost finding: requested resources * wall hours * price, per stage and in total.

The model is OpenCost's (``max(request, usage) * hours * price`` per container) with requests
only: kubetrain knows what each work unit requested and how long it ran, and a requested core
is billed whether or not it is busy. Everything here is pure arithmetic on numbers the caller
collected; nothing reads the cluster.

Sums are taken over unrounded values and rounded once at the end (money and hours to 6
decimals), so that a total never differs from its parts by accumulated rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kubetrain.api.spec import BudgetSpec, PricesSpec
from kubetrain.api.status import BudgetStatus, CostFinding, StageCost

_SECONDS_PER_HOUR = 3600.0
_MONEY_DIGITS = 6
_HOURS_DIGITS = 6
# Seconds are reported, not billed; milliseconds are as precise as the timers behind them.
_SECONDS_DIGITS = 3


def format_money(amount: float, currency: str) -> str:
    """``0.42 USD``; small amounts keep two significant digits (``0.000031 USD``, not 3e-05)."""
    if amount <= 0:
        return f"0.00 {currency}"
    decimals = max(2, 1 - math.floor(math.log10(amount)))
    return f"{amount:.{decimals}f} {currency}"


@dataclass(frozen=True)
class Usage:
    """What one work unit (or one stage) requested, and for how long it ran.

    ``cpu``, ``memory_gib`` and ``gpus`` are per node; ``nodes`` multiplies all three, like the
    gang of training pods does.
    """

    stage: str
    seconds: float
    nodes: int = 1
    cpu: float = 1.0
    """Cores requested per node."""
    memory_gib: float = 2.0
    """GiB requested per node."""
    gpus: int = 0
    """GPUs requested per node."""

    def __post_init__(self) -> None:
        # A negative duration or request would silently produce a negative (refund) cost.
        for name in ("seconds", "nodes", "cpu", "memory_gib", "gpus"):
            if getattr(self, name) < 0:
                raise ValueError(f"Usage.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class _Amounts:
    """Unrounded resource-hours and cost; rounded only when turned into a status model."""

    seconds: float = 0.0
    cpu_hours: float = 0.0
    gpu_hours: float = 0.0
    memory_gib_hours: float = 0.0
    cost: float = 0.0

    def __add__(self, other: _Amounts) -> _Amounts:
        return _Amounts(
            self.seconds + other.seconds,
            self.cpu_hours + other.cpu_hours,
            self.gpu_hours + other.gpu_hours,
            self.memory_gib_hours + other.memory_gib_hours,
            self.cost + other.cost,
        )

    def to_stage_cost(self) -> StageCost:
        return StageCost(
            seconds=round(self.seconds, _SECONDS_DIGITS),
            cpu_hours=round(self.cpu_hours, _HOURS_DIGITS),
            gpu_hours=round(self.gpu_hours, _HOURS_DIGITS),
            memory_gi_b_hours=round(self.memory_gib_hours, _HOURS_DIGITS),
            cost=round(self.cost, _MONEY_DIGITS),
        )


def _amounts(usage: Usage, prices: PricesSpec) -> _Amounts:
    hours = usage.seconds / _SECONDS_PER_HOUR
    cpu_hours = usage.nodes * usage.cpu * hours
    gpu_hours = usage.nodes * usage.gpus * hours
    memory_gib_hours = usage.nodes * usage.memory_gib * hours
    cost = (
        cpu_hours * prices.cpu_hour
        + gpu_hours * prices.gpu_hour
        + memory_gib_hours * prices.memory_gi_b_hour
    )
    return _Amounts(usage.seconds, cpu_hours, gpu_hours, memory_gib_hours, cost)


def hourly_rate(usage: Usage, prices: PricesSpec) -> float:
    """Price of one wall hour of ``usage``'s requests (all nodes), unrounded."""
    return _amounts(replace(usage, seconds=_SECONDS_PER_HOUR), prices).cost


def stage_cost(usage: Usage, prices: PricesSpec) -> StageCost:
    """Resource-hours and cost of one usage."""
    return _amounts(usage, prices).to_stage_cost()


def budget_exceeded(spent: float, budget: BudgetSpec | None) -> bool:
    """True once ``spent`` reaches the budget: reaching it stops work, like a spent card."""
    return budget is not None and spent >= budget.max_cost


def summarize_cost(
    usages: Sequence[Usage],
    prices: PricesSpec,
    *,
    budget: BudgetSpec | None = None,
    epoch_seconds: Sequence[float] = (),
    best_epoch: int | None = None,
    training_usage: Usage | None = None,
    pruned_epochs_saved: int | None = None,
    cost_per_epoch: float | None = None,
    seconds_after_best: float | None = None,
) -> CostFinding:
    """The cost finding of a job.

    - ``by_stage``: usages sharing a stage name (folds, trials, shards) are summed; a stage's
      ``seconds`` is then work-unit seconds, not wall time.
    - ``after_best_epoch``: the seconds of the epochs after ``best_epoch`` (``epoch_seconds[i]``
      is epoch ``i + 1``) priced at ``training_usage``'s hourly rate; when ``training_usage``
      is omitted, the last usage of the ``training`` stage is used. It is what early stopping
      at the best epoch would have saved. ``seconds_after_best`` gives those seconds directly
      (the operator reads them from the training unit's result, not the per-epoch history).
    - ``saved_by_pruning``: ``pruned_epochs_saved * cost_per_epoch`` when both are given.
    - ``budget``: spent is the total; exceeded once the total reaches ``maxCost``.
    """
    per_stage: dict[str, _Amounts] = {}
    for usage in usages:
        per_stage[usage.stage] = per_stage.get(usage.stage, _Amounts()) + _amounts(usage, prices)
    total = sum(per_stage.values(), _Amounts())
    total_cost = round(total.cost, _MONEY_DIGITS)

    rate_usage = training_usage
    if rate_usage is None:
        training = [u for u in usages if u.stage == "training"]
        rate_usage = training[-1] if training else None
    after_best = 0.0
    if rate_usage is not None and (best_epoch is not None or seconds_after_best is not None):
        # Epochs are 1-based, so the epochs after the best start at index best_epoch.
        seconds_after = (
            seconds_after_best
            if seconds_after_best is not None
            else sum(epoch_seconds[max(best_epoch or 0, 0) :])
        )
        after_best = seconds_after / _SECONDS_PER_HOUR * hourly_rate(rate_usage, prices)

    saved = (
        round(pruned_epochs_saved * cost_per_epoch, _MONEY_DIGITS)
        if pruned_epochs_saved is not None and cost_per_epoch is not None
        else None
    )

    return CostFinding(
        currency=prices.currency,
        cpu_hours=round(total.cpu_hours, _HOURS_DIGITS),
        gpu_hours=round(total.gpu_hours, _HOURS_DIGITS),
        memory_gi_b_hours=round(total.memory_gib_hours, _HOURS_DIGITS),
        total=total_cost,
        by_stage={stage: amounts.to_stage_cost() for stage, amounts in per_stage.items()},
        after_best_epoch=round(after_best, _MONEY_DIGITS),
        saved_by_pruning=saved,
        budget=(
            BudgetStatus(
                max_cost=budget.max_cost,
                spent=total_cost,
                exceeded=budget_exceeded(total_cost, budget),
            )
            if budget is not None
            else None
        ),
    )
