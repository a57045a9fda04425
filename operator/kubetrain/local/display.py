"""Live progress on the terminal (stderr): a bar per work unit with its epoch and metrics."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


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


class Display:
    """Progress bars when enabled (a terminal or --progress); plain lines to stderr otherwise."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.tasks: dict[str, Any] = {}

    def _ensure(self) -> Progress:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("epochs"), TimeElapsedColumn(), TextColumn("{task.fields[metrics]}"),
                console=self.console,
            )
            self.progress.start()
        return self.progress

    def start_unit(self, name: str, epochs: int) -> None:
        if self.enabled:
            self.tasks[name] = self._ensure().add_task(f"training {name}", total=epochs,
                                                       metrics="starting")

    def epoch(self, name: str, event: dict[str, Any]) -> None:
        metrics = format_metrics(event)
        if self.enabled and name in self.tasks:
            assert self.progress is not None
            self.progress.update(self.tasks[name], completed=event["epoch"],
                                 total=event.get("epochs"), metrics=metrics)
        elif not self.enabled:
            self.console.print(f"{name} epoch {event['epoch']}/{event.get('epochs')} {metrics}",
                               highlight=False)

    def note(self, name: str, message: str) -> None:
        self.console.print(f"[cyan]{name}[/]: {message}")

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {message}")

    def finish_unit(self, name: str, ok: bool) -> None:
        if self.enabled and name in self.tasks and self.progress is not None:
            self.progress.update(self.tasks[name], metrics=(
                self.progress.tasks[self.tasks[name]].fields["metrics"] + ("" if ok else
                                                                           "  [red]failed")))

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
