"""Findings on Kubernetes: the same pure analyses, fed from unit results and pod times."""

from __future__ import annotations

from datetime import datetime

from ..api.resource import TrainingJob
from ..api.status import OverfittingFinding, TrainingJobStatus
from ..findings.cost import Usage, summarize_cost
from ..pipeline import status as st
from ..pipeline.plan import plan
from .builders import tuning_work_unit


def finish_findings(job: TrainingJob, status: TrainingJobStatus, now: datetime) -> None:
    """Overfitting from the training unit's result; cost from the units' pod-seconds.

    The training work unit analyses its own history (it has all of it) and reports the finding
    in its result; the operator only files it. Cost follows OpenCost: requested resources times
    the pods' real running time.
    """
    at = st.timestamp(now)
    training = status.stages.get("training")
    train = training.units.get("train") if training else None
    if train is not None and isinstance(train.result.get("overfitting"), dict):
        finding = OverfittingFinding.model_validate(train.result["overfitting"])
        st.apply_overfitting(status, finding, at)
    units = {u.name: u for stage in plan(job.spec).stages for u in stage.units}
    usages = []
    for stage_status in status.stages.values():
        for name, unit_status in stage_status.units.items():
            unit = units.get(name) or tuning_work_unit(job, name)
            if unit is None or not unit_status.seconds:
                continue
            usages.append(Usage(stage=unit.stage, seconds=unit_status.seconds, nodes=1,
                                cpu=unit.cpu, memory_gib=unit.memory_gib,
                                gpus=unit.gpus_per_node))
    if not usages:
        return
    cost = job.spec.findings.cost
    train_unit = units.get("train")
    rate = (Usage(stage="training", seconds=0.0, nodes=train_unit.nodes, cpu=train_unit.cpu,
                  memory_gib=train_unit.memory_gib, gpus=train_unit.gpus_per_node)
            if train_unit else None)
    after = train.result.get("seconds_after_best") if train is not None else None
    status.findings.cost = summarize_cost(
        usages, cost.prices, budget=cost.budget, training_usage=rate,
        seconds_after_best=float(after) if isinstance(after, int | float) else None,
    )
    for name, stage_status in status.stages.items():
        by_stage = status.findings.cost.by_stage.get(name)
        if by_stage is not None:
            stage_status.cost = by_stage.cost
