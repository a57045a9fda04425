"""TensorBoard event files of a unit, one run folder per unit under ``<storage>/tensorboard``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .naming import UnitRun

TENSORBOARD_DIR = "tensorboard"


def run_dir(storage: Path, run: UnitRun) -> Path:
    """Where a unit's event files go: ``tensorboard --logdir <storage>/tensorboard`` lists every
    unit (train, fold-N, trial-N) as a run of its own."""
    return storage / TENSORBOARD_DIR / run.unit


class TensorBoardSink:
    name = "tensorboard"
    takes_files = False

    def __init__(self, storage: Path, run: UnitRun) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(log_dir=str(run_dir(storage, run)))

    def start(self, params: Mapping[str, str]) -> None:
        table = "\n".join(f"| {k} | {v} |" for k, v in sorted(params.items()))
        self.writer.add_text("parameters", "| parameter | value |\n|---|---|\n" + table, 0)
        self.writer.flush()

    def epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(_tag(name), value, step)
        self.writer.flush()  # a reader (or a killed pod) sees every finished epoch

    def finish(self, metrics: Mapping[str, float], tags: Mapping[str, str],
               artifacts: list[Path], documents: Mapping[str, Any], status: str) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(f"final/{name}", value, 0)
        self.writer.close()


def _tag(metric: str) -> str:
    """``val_loss`` → ``loss/val``: TensorBoard groups a metric's splits in one chart."""
    split, _, name = metric.partition("_")
    if split in ("train", "val", "test") and name:
        return f"{name}/{split}"
    return metric
