"""The job's cost from its units' seconds, running ones included: one place for both executors.

Each unit's requests come from the plan; its seconds from the engine's record (every attempt,
and the running attempt so far), so the Cost column moves while the job runs and a budget can
stop work that is still running.
"""

from __future__ import annotations

from ..api.results import TrainingResult, TuningResult, UnitResult
from ..api.spec import TrainingJobSpec
from ..api.status import CostFinding, TrainingJobStatus, UtilizationFinding
from ..findings.cost import Usage, hourly_rate, stage_cost, summarize_cost
from ..findings.utilization import UnitUse, analyze_utilization
from .plan import TRIAL_PREFIX, Plan, WorkUnit, plan


def unit_usage(unit: WorkUnit, seconds: float) -> Usage:
    """The one way a unit's requests become a priced :class:`Usage`: every node of a gang."""
    return Usage(stage=unit.stage, seconds=seconds, nodes=unit.nodes, cpu=unit.cpu,
                 memory_gib=unit.memory_gib, gpus=unit.gpus_per_node)


def trial_cost(spec: TrainingJobSpec, seconds: float) -> float | None:
    """What a trial unit's requests cost over ``seconds`` at the job's prices, unrounded (the
    ``cost`` objective: trials of a few seconds differ in the 7th decimal). None without a
    trial unit in the plan (the Ray backend runs its trials inside one unit)."""
    return unit_cost(spec, f"{TRIAL_PREFIX}0", seconds)


def unit_cost(spec: TrainingJobSpec, unit_name: str, seconds: float) -> float | None:
    """What the planned unit ``unit_name`` requests cost over ``seconds`` at the job's prices,
    unrounded; None when the plan has no such unit."""
    unit = plan(spec).unit(unit_name)
    if unit is None:
        return None
    return seconds / 3600.0 * hourly_rate(unit_usage(unit, 0.0), spec.findings.cost.prices)


def job_cost(plan: Plan, spec: TrainingJobSpec, status: TrainingJobStatus,
             train: TrainingResult | None, summary: TuningResult | None) -> CostFinding:
    """The cost finding, and each unit's and stage's cost written into ``status``."""
    prices = spec.findings.cost.prices
    usages: list[Usage] = []
    trials_cost = 0.0
    for stage in status.stages.values():
        for name, unit_status in stage.units.items():
            unit = plan.unit(name)
            if unit is None or not unit_status.seconds:
                continue
            usage = unit_usage(unit, unit_status.seconds)
            usages.append(usage)
            unit_status.cost = stage_cost(usage, prices).cost
            if unit.kind == "trial":
                trials_cost += unit_status.cost
    train_unit = plan.unit("train")
    cost_per_epoch = None
    if summary is not None and summary.epochs_run:
        cost_per_epoch = trials_cost / summary.epochs_run
    finding = summarize_cost(
        usages, prices, budget=spec.findings.cost.budget,
        training_usage=unit_usage(train_unit, 0.0) if train_unit else None,
        seconds_after_best=train.seconds_after_best if train else None,
        pruned_epochs_saved=summary.epochs_saved_by_pruning if summary else None,
        cost_per_epoch=cost_per_epoch,
    )
    if status.tuning is not None:
        status.tuning.trials_cost = round(trials_cost, 6)
    for name, stage_status in status.stages.items():
        by_stage = finding.by_stage.get(name)
        stage_status.cost = by_stage.cost if by_stage is not None else None
    return finding


def job_utilization(plan: Plan, spec: TrainingJobSpec,
                    status: TrainingJobStatus) -> UtilizationFinding | None:
    """The utilisation finding from every ended unit's measured usage and exit reason."""
    units: list[UnitUse] = []
    for stage in status.stages.values():
        for name, unit_status in stage.units.items():
            unit = plan.unit(name)
            if unit is None or not unit_status.seconds:
                continue
            result = UnitResult.model_validate(unit_status.result or {})
            units.append(UnitUse(
                name=name, requested=unit_usage(unit, unit_status.seconds),
                sized=unit.sized,
                usage=result.usage, exit_reason=unit_status.exit_reason))
    return analyze_utilization(units, spec)
