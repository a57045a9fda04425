"""Experiment tracking of the work units: TensorBoard event files and MLflow runs.

A work unit opens a ``UnitTracker``; every call to a tracking sink goes through it, and a sink
that fails (a server that does not answer, a package the image lacks) is switched off with a
warning: tracking never fails the training. The warnings travel in the unit's result
(``tracking_warnings``), from which both executors make the ``TrackingDegraded`` condition.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ..api.spec import TrainingJobSpec
from .naming import UnitRun
from .records import RunRecord

__all__ = ["RunRecord", "TrackingSink", "UnitRun", "UnitTracker"]

USERINFO = re.compile(r"(\w+://)[^/@\s]+@")
"""A user and password in a URL: the warnings go to status and events, the secrets must not."""


class TrackingSink(Protocol):
    """One destination of a unit's run."""

    name: str
    takes_files: bool
    """Whether finish() stores files: a unit makes its plots only for a sink that takes them."""

    def start(self, params: Mapping[str, str]) -> None: ...

    def epoch(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def finish(self, metrics: Mapping[str, float], tags: Mapping[str, str],
               artifacts: list[Path], documents: Mapping[str, Any], status: str) -> None:
        """Final metrics, tags, files and JSON documents (``findings.json``); ends the run."""


class UnitTracker:
    """The unit's run in every tracking destination the spec names (none: a no-op)."""

    def __init__(self, sinks: list[TrackingSink]) -> None:
        self.sinks = sinks
        self.warnings: list[str] = []

    @classmethod
    def open(cls, spec: TrainingJobSpec, run: UnitRun, storage: Path,
             enabled: bool = True) -> UnitTracker:
        """The tracker of one unit; ``enabled`` False (a DDP rank other than 0) tracks nothing."""
        if not enabled:
            return cls([])
        tracker = cls([])
        if spec.tracking.tensorboard:
            tracker._add(lambda: _tensorboard_sink(storage, run), "tensorboard")
        if spec.tracking.mlflow is not None:
            mlflow_spec = spec.tracking.mlflow
            tracker._add(lambda: _mlflow_sink(mlflow_spec, run, storage), "mlflow")
        return tracker

    def _add(self, make: Callable[[], TrackingSink], name: str) -> None:
        try:
            self.sinks.append(make())
        except Exception as error:
            self._warn(name, "start", error)

    def _warn(self, name: str, what: str, error: BaseException) -> None:
        detail = USERINFO.sub(r"\1***@", f"{type(error).__name__}: {error}")
        message = f"{name}: {what} failed, tracking switched off for this unit: {detail}"[:300]
        self.warnings.append(message)
        print(f"warning: tracking {message}", file=sys.stderr, flush=True)

    def _each(self, what: str, call: Callable[[TrackingSink], None]) -> None:
        for sink in list(self.sinks):
            try:
                call(sink)
            except Exception as error:
                self.sinks.remove(sink)
                self._warn(sink.name, what, error)

    def start(self, params: Mapping[str, str]) -> None:
        self._each("logging the parameters", lambda s: s.start(params))

    def epoch(self, metrics: Mapping[str, Any]) -> None:
        step = int(metrics["epoch"])
        numbers = {k: float(v) for k, v in metrics.items()
                   if k != "epoch" and isinstance(v, int | float)}
        self._each(f"logging epoch {step}", lambda s: s.epoch(step, numbers))

    @property
    def takes_files(self) -> bool:
        return any(sink.takes_files for sink in self.sinks)

    def finish(self, record: RunRecord) -> None:
        files = [path for path in record.files if path.is_file()]
        self._each("finishing the run", lambda s: s.finish(
            record.metrics, record.tags, files, record.documents, record.status))

    def report_into(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The unit's result with the tracking warnings, for the executor's condition."""
        if self.warnings:
            summary["tracking_warnings"] = self.warnings[:3]
        return summary


def _tensorboard_sink(storage: Path, run: UnitRun) -> TrackingSink:
    from .tensorboard import TensorBoardSink

    return TensorBoardSink(storage, run)


def _mlflow_sink(spec: Any, run: UnitRun, storage: Path) -> TrackingSink:
    from .mlflow import MlflowSink

    return MlflowSink(spec, run, storage)
