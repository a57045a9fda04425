"""What changed between two statuses of a job, as progress events; readable money and status.

Pure functions: both executors feed them the statuses they see (a watch on the cluster, the
engine's steps locally), so a callback hears the same events from either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..api.status import Phase, StagePhase, TrainingJobStatus
from ..findings.cost import format_money

EventKind = Literal["phase", "stage", "progress", "finding"]


@dataclass(frozen=True)
class ProgressEvent:
    """One change a person would want to hear about, with the whole status it came from."""

    kind: EventKind
    message: str
    status: TrainingJobStatus


def _cost_text(status: TrainingJobStatus) -> str | None:
    cost = status.findings.cost
    return format_money(cost.total, cost.currency) if cost else None


def progress_events(before: TrainingJobStatus | None,
                    after: TrainingJobStatus) -> list[ProgressEvent]:
    """The events between two observations of a job (``before`` None: the first one)."""
    old = before or TrainingJobStatus()
    events: list[ProgressEvent] = []

    def add(kind: EventKind, message: str) -> None:
        events.append(ProgressEvent(kind, message, after))

    phase_changed = before is None or old.phase != after.phase
    ended = Phase(after.phase).terminal
    if phase_changed and not ended:
        add("phase", f"phase {after.phase}")
    for name, stage in after.stages.items():
        previous = old.stages.get(name)
        changed = previous is None or previous.phase != stage.phase
        if changed and stage.phase != StagePhase.PENDING:
            add("stage", f"{name} {str(stage.phase).lower()}"
                + (f": {stage.message}" if stage.message else ""))
    if after.progress and (after.progress, after.best) != (old.progress, old.best):
        where = f"{after.current_stage}: " if after.current_stage else ""
        add("progress", f"{where}{after.progress}" + (f" (best {after.best})"
                                                      if after.best else ""))
    if phase_changed and ended:  # after the stages and progress that led to it
        add("phase", f"phase {after.phase}")
    over, was = after.findings.overfitting, old.findings.overfitting
    if over and (was is None or was.verdict != over.verdict):
        add("finding", f"overfitting: {over.verdict}"
            + (f" ({over.evidence[0]})" if over.evidence else ""))
    explained, had = after.findings.explanation, old.findings.explanation
    if explained and (had is None or had.top_features != explained.top_features):
        top = ", ".join(f.feature for f in explained.top_features[:3])
        add("finding", f"explanation ({explained.method}): top features {top}")
    budget, had_budget = (after.findings.cost.budget if after.findings.cost else None,
                          old.findings.cost.budget if old.findings.cost else None)
    if budget and budget.exceeded and not (had_budget and had_budget.exceeded):
        add("finding", f"budget exceeded: spent {budget.spent} of {budget.max_cost}")
    if phase_changed and ended:
        cost = _cost_text(after)
        if cost:
            add("finding", f"cost {cost}")
    return events


def describe(name: str, status: TrainingJobStatus) -> str:
    """The job's status for people: phase, stages, progress, findings and cost."""
    lines = [f"TrainingJob {name}: {status.phase}"
             + (f" (stage {status.current_stage}, {status.progress})"
                if status.current_stage and status.progress else "")]
    failed = next((c for c in status.conditions if c.type == "Failed" and c.status == "True"),
                  None)
    if failed:
        lines.append(f"  reason: {failed.reason}: {failed.message}")
    queued = next((c for c in status.conditions if c.type == "Queued" and c.status == "True"),
                  None)
    if queued and status.phase == "Queued":
        lines.append(f"  queued: {queued.message}")
    if status.stages:
        lines.append("stages:")
        for stage_name, stage in status.stages.items():
            cost = status.findings.cost
            money = f"  {format_money(stage.cost, cost.currency)}" \
                if stage.cost is not None and cost else ""
            message = f"  {stage.message}" if stage.message else ""
            lines.append(f"  {stage_name:<13} {stage.phase:<12}{money}{message}")
    if status.best:
        lines.append(f"best: {status.best}")
    if status.training and status.training.test_metrics:
        tests = ", ".join(f"{k}={v:.4g}" for k, v in status.training.test_metrics.items())
        lines.append(f"test: {tests}")
    findings = status.findings
    if findings.overfitting:
        over = findings.overfitting
        lines.append(f"overfitting: {over.verdict}"
                     + (f" (best epoch {over.best_epoch})" if over.best_epoch else ""))
        lines += [f"  - {e}" for e in over.evidence]
        lines += [f"  recommend: {r}" for r in over.recommendations]
    if findings.explanation:
        top = ", ".join(f"{f.feature} ({f.mean_abs_shap:.3g})"
                        for f in findings.explanation.top_features[:5])
        lines.append(f"explanation ({findings.explanation.method}): {top}")
    if findings.cost:
        cost = findings.cost
        lines.append(f"cost: {format_money(cost.total, cost.currency)} "
                     f"({cost.cpu_hours:.4f} CPU-h, {cost.gpu_hours:.4f} GPU-h)"
                     + (f"; after best epoch {format_money(cost.after_best_epoch, cost.currency)}"
                        if cost.after_best_epoch else ""))
        if cost.budget:
            lines.append(f"budget: {format_money(cost.budget.spent, cost.currency)} of "
                         f"{format_money(cost.budget.max_cost, cost.currency)}"
                         + (" (exceeded)" if cost.budget.exceeded else ""))
    if status.artifacts:
        lines.append("artifacts: " + ", ".join(sorted(status.artifacts)))
    return "\n".join(lines)
