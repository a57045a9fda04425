"""Live progress on the terminal (stderr): a bar per work unit, and a trial table in sweeps."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..api.results import TrialResult, parse_result
from ..api.status import StagePhase, TrainingJobStatus
from ..pipeline.plan import TrialSweep

UNITS = {"training": "epochs", "tuning": "trials"}
TRIAL_ROWS = 8  # the latest trials shown live; the full table is in the report
SWEEP = "sweep"


def format_metrics(event: dict[str, Any]) -> str:
    parts = []
    for key, label in (("train_loss", "loss"), ("val_loss", "val_loss"),
                       ("val_accuracy", "val_acc"), ("val_rmse", "val_rmse")):
        value = event.get(key)
        if isinstance(value, int | float):
            parts.append(f"{label} {value:.4f}")
    if event.get("best_epoch"):
        parts.append(f"best {event['best_epoch']}")
    return "  ".join(parts)


def _format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_line(event: dict[str, Any]) -> str:
    value = event.get("value")
    params = ", ".join(f"{k}={_format_value(v)}" for k, v in (event.get("params") or {}).items())
    shown = f" value {value:.4f}" if isinstance(value, int | float) else ""
    return f"trial {event.get('number')} {event.get('state')}{shown} ({params})"


class Display:
    """Progress bars when enabled (a terminal or --progress); plain lines to stderr otherwise."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.shown: set[str] = set()
        self.progress: Progress | None = None
        self.live: Live | None = None
        self.tasks: dict[str, Any] = {}
        self.trials: dict[int, dict[str, Any]] = {}

    def _render(self) -> Group:
        assert self.progress is not None
        if not self.trials:
            return Group(self.progress)
        table = Table(title="trials", title_justify="left", expand=False)
        for column in ("#", "state", "value", "epoch", "params"):
            table.add_column(column)
        for number in sorted(self.trials)[-TRIAL_ROWS:]:
            trial = self.trials[number]
            value = trial.get("value")
            table.add_row(str(number), str(trial.get("state", "")),
                          f"{value:.4f}" if isinstance(value, int | float) else "",
                          str(trial.get("epoch") or ""),
                          ", ".join(f"{k}={_format_value(v)}"
                                    for k, v in (trial.get("params") or {}).items()))
        return Group(self.progress, table)

    def _ensure(self) -> Progress:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]{task.description:<13}"), BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"), TimeElapsedColumn(),
                TextColumn("{task.fields[metrics]}"),
            )
            self.live = Live(self._render(), console=self.console, refresh_per_second=4)
            self.live.start()
        return self.progress

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def start_unit(self, name: str, total: int | None, stage: str = "training") -> None:
        if self.enabled:
            self.tasks[name] = self._ensure().add_task(
                name, total=total,
                unit=UNITS.get(stage, ""), metrics="starting")
            self._refresh()
        else:
            self.console.print(f"{stage}: starting {name}", highlight=False)

    def epoch(self, name: str, event: dict[str, Any]) -> None:
        metrics = format_metrics(event)
        if self.enabled and name in self.tasks:
            assert self.progress is not None
            self.progress.update(self.tasks[name], completed=event["epoch"],
                                 total=event.get("epochs"), metrics=metrics)
        elif not self.enabled:
            self.console.print(f"{name} epoch {event['epoch']}/{event.get('epochs')} {metrics}",
                               highlight=False)

    def trial(self, name: str, event: dict[str, Any]) -> None:
        number = event.get("number")
        if isinstance(number, int):
            self.trials[number] = {**self.trials.get(number, {}), **event}
        counts = event.get("counts") or {}
        finished = sum(int(counts.get(k, 0)) for k in ("complete", "pruned", "failed"))
        best = event.get("best") or {}
        best_text = f"best {best['value']:.4f} (trial {best['trial']})" \
            if isinstance(best.get("value"), int | float) else ""
        if self.enabled and name in self.tasks:
            assert self.progress is not None
            self.progress.update(self.tasks[name], completed=finished, metrics=best_text)
            self._refresh()
        elif not self.enabled and event.get("state") != "running":
            self.console.print(f"{name} {trial_line(event)}  {best_text}", highlight=False)

    def sweep(self, status: TrainingJobStatus) -> None:
        """The sweep as one line of progress (trials done, best so far), a line per trial."""
        stage, tuning = status.stages.get("tuning"), status.tuning
        if stage is None or tuning is None:
            return
        if SWEEP not in self.shown:
            self.shown.add(SWEEP)
            self.start_unit(SWEEP, tuning.trials.total, "tuning")
        best = tuning.best.model_dump() if tuning.best else None
        for name, record in stage.units.items():
            if TrialSweep.index(name) is None or name in self.shown or \
                    not StagePhase(record.phase).finished:
                continue
            self.shown.add(name)
            result = parse_result("trial", record.result)
            trial = result if isinstance(result, TrialResult) else TrialResult()
            self.trial(SWEEP, {
                "number": trial.trial, "params": trial.params, "value": trial.value,
                "state": "replaced" if record.replaced else trial.state,
                "counts": tuning.trials.model_dump(), "best": best})
        if StagePhase(stage.phase).finished and f"{SWEEP}:done" not in self.shown:
            self.shown.add(f"{SWEEP}:done")
            self.finish_unit(SWEEP, ok=stage.phase == StagePhase.SUCCEEDED)

    def note(self, name: str, message: str) -> None:
        self.console.print(f"[cyan]{name}[/]: {message}")

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {message}")

    def finish_unit(self, name: str, ok: bool) -> None:
        if self.enabled and name in self.tasks and self.progress is not None:
            task = self.progress.tasks[self.tasks[name]]
            if task.total is None:
                self.progress.update(self.tasks[name], total=1, completed=1)
            self.progress.update(self.tasks[name], metrics=(
                task.fields["metrics"].replace("starting", "done") + ("" if ok else
                                                                      "  [red]failed")))
        elif not self.enabled:
            self.console.print(f"{name}: {'done' if ok else 'failed'}", highlight=False)

    def stop(self) -> None:
        if self.live is not None:
            self._refresh()
            self.live.stop()
        self.live = None
        self.progress = None
