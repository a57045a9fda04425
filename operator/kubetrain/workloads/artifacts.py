"""Artifacts a person reads: the loss curve with the best epoch marked, and a report."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and in pods
import matplotlib.pyplot as plt

from ..api.resource import TrainingJob
from ..api.status import RemediationStatus, TrainingJobStatus, TuningStatus


def plot_loss_curve(history: Sequence[Mapping[str, float]], best_epoch: int | None,
                    path: Path, title: str) -> Path:
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss", color="#1f77b4")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation loss", color="#d62728")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="#2ca02c", linestyle="--", label=f"best epoch {best_epoch}")
    metric = "val_accuracy" if history and "val_accuracy" in history[0] else "val_rmse"
    if history and metric in history[0]:
        twin = ax.twinx()
        twin.plot(epochs, [h[metric] for h in history], color="#7f7f7f", alpha=0.6,
                  linestyle=":", label=metric)
        twin.set_ylabel(metric)
        twin.legend(loc="center right", frameon=False)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(loc="upper right", frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _augmentation_section(status: TrainingJobStatus) -> list[str]:
    aug = status.augmentation
    if aug is None:
        return []
    classes = sorted(set(aug.counts_before) | set(aug.counts_after))
    rows = [(c, aug.counts_before.get(c, 0), aug.counts_after.get(c, 0)) for c in classes]
    return (["", "## Augmentation", "", f"Added {aug.added} {aug.kind} training examples "
             "(training split only):", ""]
            + [f"- {op}" for op in aug.operations] + [""]
            + _table(rows, ["class", "before", "after"]))


def _tuning_section(status: TrainingJobStatus, trials: Sequence[Mapping[str, Any]]) -> list[str]:
    tuning = status.tuning
    if tuning is None:
        return []
    counts = tuning.trials
    lines = ["", "## Tuning", "",
             f"{tuning.backend} sweep, sampler {tuning.sampler}, pruner {tuning.pruner}: "
             f"{counts.complete} complete, {counts.pruned} pruned, {counts.failed} failed; "
             f"{tuning.epochs_run} epochs trained, {tuning.epochs_saved_by_pruning} saved by "
             "pruning."]
    if tuning.best:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in tuning.best.params.items())
        label = "Selected trial" if tuning.selection else "Best trial"
        lines += ["", f"**{label} {tuning.best.trial}:** {_fmt(tuning.best.value)} with "
                  f"{params} (used for the final training)"]
    lines += _selection_lines(tuning)
    if tuning.importances:
        lines += ["", "Parameter importances: " + ", ".join(
            f"{k} {v:.2f}" for k, v in tuning.importances.items())]
    if trials:
        names = sorted({k for t in trials for k in (t.get("params") or {})})
        rows = [[t.get("number"), t.get("state"), _fmt(t.get("value")), t.get("epochs"),
                 _fmt(t.get("cost")), *(_fmt((t.get("params") or {}).get(n)) for n in names)]
                for t in trials]
        lines += ["", *_table(rows, ["trial", "state", "value", "epochs", "cost", *names])]
    return lines


def _selection_lines(tuning: TuningStatus) -> list[str]:
    """With several objectives: the Pareto front and what the selection saved."""
    if not tuning.pareto_front:
        return []
    front = ", ".join(f"{p.trial} ({', '.join(f'{k} {_fmt(v)}' for k, v in p.values.items())})"
                      for p in tuning.pareto_front)
    lines = ["", f"Objectives {', '.join(tuning.objectives)}; Pareto front: trials {front}."]
    chosen = tuning.selection
    if chosen is not None:
        lines += ["", f"Selection {chosen.rule}: trial {chosen.trial} ({chosen.metric} "
                  f"{_fmt(chosen.value)}, cost {_fmt(chosen.cost)}) against the best "
                  f"{chosen.metric}, trial {chosen.best_metric_trial} "
                  f"({_fmt(chosen.best_metric_value)}, cost {_fmt(chosen.best_metric_cost)}): "
                  f"{chosen.saved_fraction:.0%} cheaper to train, {_fmt(chosen.metric_lost)} "
                  f"{chosen.metric} lost."]
    return lines


def _remediation_section(remediation: RemediationStatus) -> list[str]:
    """The attempts of action: remediate, the delivered one marked."""
    lines = ["", "### Remediation", "",
             f"Delivered: attempt {remediation.chosen} (chosen on {remediation.metric}); "
             f"{remediation.message}", ""]
    rows = []
    for a in remediation.attempts:
        added = ", ".join(f"{c.field}: {c.after}" for c in a.changes if c.field in a.added)
        rows.append((f"{a.attempt}{' (delivered)' if a.attempt == remediation.chosen else ''}",
                     added or "-", a.verdict or a.phase,
                     _fmt(a.validation.get(remediation.metric, float("nan"))),
                     _fmt(a.test.get("test_" + remediation.metric.removeprefix("val_"),
                                     float("nan"))),
                     _fmt(a.test_gain) if a.test_gain is not None else "-",
                     f"{a.cost:.6f}" if a.cost is not None else "-"))
    return lines + _table(rows, ["attempt", "added", "verdict", remediation.metric, "test",
                                 "test gain", "cost"])


def _explanation_section(status: TrainingJobStatus, report_dir: Path) -> list[str]:
    explanation = status.findings.explanation
    if explanation is None:
        return []
    error = explanation.completeness_error
    lines = ["", "## Explanation", "", f"Method {explanation.method}; completeness error "
             + (f"{error:.2%}" if error is not None else "unknown") + ".", ""]
    lines += _table([(f.feature, f"{f.mean_abs_shap:.4g}") for f in explanation.top_features],
                    ["feature", "mean |SHAP|"])
    for key, path in status.artifacts.items():
        if key.startswith("shap") and path.endswith(".png"):
            lines += ["", f"![{key}]({os.path.relpath(path, report_dir)})"]
    return lines


def write_report(job: TrainingJob, history: Sequence[Mapping[str, float]], path: Path,
                 trials: Sequence[Mapping[str, Any]] = ()) -> Path:
    """A Markdown report: outcome, stages, metrics, findings with evidence, cost, artifacts."""
    status = job.status
    assert status is not None
    name = job.metadata.name
    lines = [f"# TrainingJob {name}", "", f"**Phase:** {status.phase}", ""]
    for condition in status.conditions:
        if condition.type in ("Failed", "BudgetExceeded") and condition.status == "True":
            lines += [f"**{condition.type}** ({condition.reason}): {condition.message}", ""]
    lines += ["## Stages", ""]
    lines += _table([(n, s.phase, ", ".join(s.jobs), s.message or "")
                     for n, s in status.stages.items()],
                    ["stage", "phase", "work units", "message"])
    lines += _augmentation_section(status)
    lines += _tuning_section(status, trials)
    training = status.training
    if training:
        lines += ["", "## Training", ""]
        lines.append(f"Epochs run: {training.epoch} of {training.epochs}; best epoch: "
                     f"{training.best_epoch}; stopped early: {training.stopped_early}"
                     + (f" ({training.stop_reason})" if training.stop_reason else ""))
        lines.append("")
        rows = [(k, _fmt(v)) for k, v in {**training.best_metrics, **training.test_metrics}.items()]
        lines += _table(rows, ["metric (best epoch / test)", "value"])
        if training.cross_validation:
            cv = training.cross_validation
            lines += ["", f"Cross-validation ({cv.folds} folds): {cv.metric} = "
                      f"{cv.mean:.4f} ± {cv.std:.4f} (folds: "
                      + ", ".join(f"{v:.4f}" for v in cv.values) + ")"]
        if training.samples_per_second:
            lines += ["", f"Throughput: {training.samples_per_second:,.0f} samples/s"]
    over = status.findings.overfitting
    if over:
        lines += ["", "## Overfitting", "", f"**Verdict: {over.verdict}**"
                  + (f" (rules: {', '.join(over.rules)})" if over.rules else ""), ""]
        lines += [f"- {e}" for e in over.evidence]
        if over.recommendations:
            lines += ["", "Recommendations:", ""] + [f"- {r}" for r in over.recommendations]
        if over.remediation:
            lines += _remediation_section(over.remediation)
    lines += _explanation_section(status, path.parent)
    cost = status.findings.cost
    if cost:
        lines += ["", "## Cost", "", f"Total: {cost.total:.6f} {cost.currency} "
                  f"(CPU {cost.cpu_hours:.4f} h, GPU {cost.gpu_hours:.4f} h, memory "
                  f"{cost.memory_gi_b_hours:.4f} GiB-h); after the best epoch: "
                  f"{cost.after_best_epoch:.6f} {cost.currency}", ""]
        cost_rows = [(s, f"{c.seconds:.1f}", f"{c.cost:.6f}") for s, c in cost.by_stage.items()]
        lines += _table(cost_rows, ["stage", "seconds", f"cost ({cost.currency})"])
        if cost.saved_by_pruning:
            lines += ["", f"Saved by pruning: {cost.saved_by_pruning:.6f} {cost.currency}"]
        if cost.budget:
            lines += ["", f"Budget: {cost.budget.spent:.6f} of {cost.budget.max_cost} "
                      f"{'(exceeded)' if cost.budget.exceeded else ''}"]
    if history:
        lines += ["", "## Epochs", ""]
        keys = [k for k in ("train_loss", "val_loss", "val_accuracy", "val_rmse", "lr")
                if k in history[0]]
        lines += _table([[int(h["epoch"])] + [_fmt(h[k]) for k in keys] for h in history],
                        ["epoch", *keys])
    if status.artifacts:
        lines += ["", "## Artifacts", ""] + [f"- {k}: `{v}`" for k, v in status.artifacts.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
