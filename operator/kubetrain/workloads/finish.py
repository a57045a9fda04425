"""The report work unit: ``python -m kubetrain.workloads.finish`` (a pod, or a local process).

It runs once a job has ended, with the job's final status (``--status``, camelCase JSON as the
resource carries it), and writes what a person reads into the job's storage: ``report.md``,
``loss-curve.png`` (when the training wrote a history; the best epoch marked) and
``status.yaml`` (the TrainingJob with that status). The local executor may call
``write_artifacts`` in-process instead.

It writes nothing but those files and its result, so it runs in a pod with a read-only root
filesystem (``HOME=/tmp``, ``MPLCONFIGDIR=/tmp/matplotlib``; matplotlib draws with Agg).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..api import TrainingJob, TrainingJobStatus, load_training_job
from ..api.results import ReportResult
from ..report import Reporter, default_result_path
from ..tuning.study import TRIALS_FILE, tuning_dir
from .args import add_common_arguments
from .artifacts import plot_loss_curve, write_report

UNIT = "report"
# Written by the training unit (workloads/train.py's HISTORY_FILE, not imported: it loads torch).
TRAINING_HISTORY = Path("train") / "history.json"
REPORT_FILE = "report.md"
LOSS_CURVE_FILE = "loss-curve.png"
STATUS_FILE = "status.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetrain.workloads.finish",
                                     description="kubetrain report work unit (report.md, loss "
                                                 "curve, status.yaml)")
    add_common_arguments(parser, result_default=f"<storage>/{UNIT}/result.json")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--status", metavar="JSON",
                       help="the job's final status, camelCase JSON (the resource's status)")
    given.add_argument("--status-file", type=Path, metavar="FILE",
                       help="the same, in a file (what the executors give: a big sweep's "
                            "status outgrows one command-line argument)")
    return parser.parse_args(argv)


def _number(value: Any) -> Any:
    """History values as numbers: the reporting protocol writes NaN and Infinity as text."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def read_history(storage: Path) -> list[dict[str, Any]]:
    """The training's epochs (``train/history.json``); empty when it never trained."""
    try:
        rows = json.loads((storage / TRAINING_HISTORY).read_text())
    except (OSError, json.JSONDecodeError):
        return []
    if not isinstance(rows, list):
        return []
    return [{k: _number(v) for k, v in row.items()} for row in rows if isinstance(row, dict)]


def read_trials(storage: Path) -> list[dict[str, Any]]:
    """The sweep's trials table (``tuning/trials.json``); empty without a sweep."""
    try:
        rows = json.loads((tuning_dir(storage) / TRIALS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


def _plottable(history: Sequence[Mapping[str, Any]]) -> bool:
    """Every epoch has both losses (a history from an older trainer might not)."""
    return bool(history) and all({"epoch", "train_loss", "val_loss"} <= h.keys()
                                 for h in history)


def write_artifacts(job: TrainingJob, storage: Path) -> ReportResult:
    """report.md, loss-curve.png (when there is a history) and status.yaml of an ended job."""
    started = time.time()
    if job.status is None:
        raise ValueError(f"TrainingJob {job.metadata.name} has no status to report")
    storage.mkdir(parents=True, exist_ok=True)
    history = read_history(storage)
    loss_curve: Path | None = None
    status = job.status.model_copy(deep=True)
    if _plottable(history):
        best = status.training.best_epoch if status.training else None
        loss_curve = plot_loss_curve(history, best, storage / LOSS_CURVE_FILE,
                                     f"{job.metadata.name}: loss per epoch")
        status.artifacts.setdefault("history", str(storage / TRAINING_HISTORY))
        status.artifacts.setdefault("lossCurve", str(loss_curve))
    report, status_file = storage / REPORT_FILE, storage / STATUS_FILE
    status.artifacts.setdefault("report", str(report))
    status.artifacts.setdefault("status", str(status_file))
    final = job.model_copy(update={"status": status})
    write_report(final, history, report, read_trials(storage))
    status_file.write_text(yaml.safe_dump(final.to_manifest(), sort_keys=False))
    return ReportResult(unit=UNIT, status="succeeded", report=str(report),
                        loss_curve=str(loss_curve) if loss_curve else None,
                        seconds=round(time.time() - started, 3))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reporter = Reporter(args.result or default_result_path()
                        or args.storage / UNIT / "result.json")
    try:
        job = load_training_job(args.job)
        text = args.status if args.status is not None else args.status_file.read_text()
        job.status = TrainingJobStatus.model_validate(json.loads(text))
        result = write_artifacts(job, args.storage)
    except Exception as error:
        traceback.print_exc()
        reporter.result({"unit": UNIT, "status": "failed",
                         "message": f"{type(error).__name__}: {error}"[:500]})
        return 1
    reporter.result({"unit": result.unit, "status": result.status, "report": result.report,
                     "loss_curve": result.loss_curve, "seconds": result.seconds})
    return 0


if __name__ == "__main__":
    sys.exit(main())
