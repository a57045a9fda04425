"""Custom script mode: ``python -m kubetrain.workloads.script`` runs the user's program
(``spec.training.command``) as a training unit, a cross-validation fold or a tuning trial.

The program needs no kubetrain: it reads ``KUBETRAIN_*`` environment variables (or placeholders
in its arguments), trains, and prints kubetrain's JSON lines (``kubetrain.report``). This runner
is the unit's process (one per rank under torchrun): it writes the unit's data split as numpy
files, starts the program, passes its output through, keeps the per-epoch history in the job's
storage, asks it to stop (SIGTERM and a stop file) when a pruner or the overfitting finding says
so, and at the end reports the same result the built-in trainer reports, findings included.
The public contract is in docs/custom-script.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from ..api import load_training_job
from ..api.metrics import is_maximized, monitored_metric
from ..api.spec import PLACEHOLDER, TrainingJobSpec
from ..data import DatasetError
from ..findings.overfitting import analyze_overfitting, should_stop_for_overfitting
from ..launcher import cancel
from ..pipeline.params import apply_params, program_params
from ..report import Reporter, parse_event, refuse, write_json_atomic
from ..tracking import UnitTracker
from ..tracking.naming import flat_params, unit_run
from ..usage import USAGE_FILE
from .program import ChildProgram, ContainerProgram, Program
from .train import (
    HISTORY_FILE,
    SpecProblem,
    finish_tracking,
    parse_args,
    result_path,
    training_data,
)
from .trainer import OVERFITTING_STOP, EpochCallback, EpochObserver

TAIL_LINES = 60
"""Lines of the program's output kept for the failure message (torchrun's summary included)."""
MODEL_FILES = ("model.ts", "model.pt2")
"""Where a program saves its model for the explanation stage: TorchScript or torch.export."""
PRUNED = "pruned"
TERMINATED = "terminated by signal"


@dataclass
class Locations:
    """Where a program's files go; each becomes a KUBETRAIN_* variable and a placeholder."""

    storage: Path
    unit_dir: Path
    data_dir: Path

    @property
    def checkpoint_dir(self) -> Path:
        return self.unit_dir / "checkpoints"

    @property
    def stop_file(self) -> Path:
        return self.unit_dir / "STOP"


def substitute(command: list[str], values: Mapping[str, Any],
               params: Mapping[str, Any]) -> list[str]:
    """The command with its ${name} and ${params.NAME} placeholders filled in.

    A ${params.NAME} that no parameter has is a mistake in the spec (SpecProblem, naming the
    argument), not an empty string the program would misread.
    """
    out = []
    for i, arg in enumerate(command):
        def fill(match: re.Match[str], i: int = i) -> str:
            name = match.group(1)
            if name.startswith("params."):
                key = name[len("params."):]
                if key not in params:
                    raise SpecProblem(
                        f"spec.training.command[{i}]: ${{{name}}} is not one of the parameters "
                        f"({', '.join(sorted(params))}); add it to tuning.searchSpace")
                return _text(params[key])
            return _text(values.get(name, ""))
        out.append(PLACEHOLDER.sub(fill, arg))
    return out


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list | bool) or value is None \
        else str(value)


def program_environment(spec: TrainingJobSpec, args: argparse.Namespace, where: Locations,
                        params: Mapping[str, Any], epochs: int) -> dict[str, str]:
    """The documented KUBETRAIN_* variables (the rank comes from torchrun: RANK, WORLD_SIZE)."""
    env = {
        "KUBETRAIN_STORAGE": str(where.storage),
        "KUBETRAIN_UNIT": args.unit,
        "KUBETRAIN_UNIT_DIR": str(where.unit_dir),
        "KUBETRAIN_CHECKPOINT_DIR": str(where.checkpoint_dir),
        "KUBETRAIN_MODEL_DIR": str(where.unit_dir),
        "KUBETRAIN_DATA_DIR": str(where.data_dir),
        "KUBETRAIN_STOP_FILE": str(where.stop_file),
        "KUBETRAIN_PARAMS": json.dumps(params),
        "KUBETRAIN_EPOCHS": str(epochs),
        "KUBETRAIN_SEED": str(spec.dataset.seed),
        "KUBETRAIN_MONITOR": monitored_metric(spec),
    }
    if args.fold is not None:
        env["KUBETRAIN_FOLD"] = str(args.fold)
    trial = re.search(r"trial-(\d+)$", args.unit)
    if trial:
        env["KUBETRAIN_TRIAL"] = trial.group(1)
    return env


def placeholder_values(env: Mapping[str, str], params: Mapping[str, Any]) -> dict[str, Any]:
    return {"epochs": env["KUBETRAIN_EPOCHS"], "seed": env["KUBETRAIN_SEED"],
            "storage": env["KUBETRAIN_STORAGE"], "unitDir": env["KUBETRAIN_UNIT_DIR"],
            "checkpointDir": env["KUBETRAIN_CHECKPOINT_DIR"],
            "modelDir": env["KUBETRAIN_MODEL_DIR"], "dataDir": env["KUBETRAIN_DATA_DIR"],
            "params": dict(params), "trial": env.get("KUBETRAIN_TRIAL", ""),
            "fold": env.get("KUBETRAIN_FOLD", "")}


def export_data(spec: TrainingJobSpec, args: argparse.Namespace, data_dir: Path) -> int:
    """The unit's splits as numpy files (X, y), as kubetrain loads and splits the dataset: the
    fold's rows for a fold, augmented rows appended to train. Returns the training rows."""
    data = training_data(spec, args)
    data_dir.mkdir(parents=True, exist_ok=True)
    parts = {"train.npz": data.train_rows, "val.npz": data.splits.val,
             "test.npz": data.splits.test}
    for name, (X, y) in parts.items():
        tmp = data_dir / f".{name}.{os.getpid()}.tmp.npz"
        np.savez(tmp, X=np.ascontiguousarray(X, dtype=np.float32), y=y)
        os.replace(tmp, data_dir / name)
    ds = data.dataset
    write_json_atomic(data_dir / "meta.json", {
        "task": ds.task, "kind": ds.kind, "input_shape": list(ds.input_shape),
        "num_outputs": ds.num_outputs, "class_names": ds.class_names,
        "feature_names": ds.feature_names, "augmented": data.augmented,
        "rows": {name[:-4]: len(y) for name, (_, y) in parts.items()},
        "run": os.environ.get("TORCHELASTIC_RUN_ID")})
    return len(data.train_rows[1])


def _numbers(event: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric fields of an event (metrics), NaN and infinities included."""
    out: dict[str, float] = {}
    for key, value in event.items():
        if key in ("kubetrain", "event") or isinstance(value, bool):
            continue
        numeric = isinstance(value, int | float)
        if numeric or (isinstance(value, str) and value in ("nan", "inf", "-inf")):
            out[key] = float(value)
    return {k: v for k, v in out.items() if k.startswith(prefix)}


@dataclass
class Run:
    """What the runner learned from the program's output."""

    history: list[dict[str, float]] = field(default_factory=list)
    test_metrics: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    model_epoch: int | None = None
    resumed_from: int | None = None
    stop_reason: str | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))


def _resolve_program(command: list[str]) -> list[str]:
    """``python`` or ``python3`` as the first word: the interpreter running this unit (locally
    the one kubetrain is installed in; in an image, the image's own)."""
    if command and command[0] in ("python", "python3"):
        return [sys.executable, *command[1:]]
    return command


def run(args: argparse.Namespace, on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    """Run the program as this unit; the result has the fields of the built-in trainer's."""
    started = time.time()
    job = load_training_job(args.job)
    spec: TrainingJobSpec = job.spec
    user_command = spec.training.command
    assert user_command is not None, "custom script mode needs training.command"
    trial_params = json.loads(args.params) if args.params else {}
    spec = apply_params(spec, trial_params)
    epochs = int(trial_params.get("epochs") or args.epochs or spec.training.epochs)
    params = {**program_params(spec, trial_params), "epochs": epochs}
    unit_dir = args.storage / args.unit
    where = Locations(args.storage, unit_dir, unit_dir / "data")
    program_dir: Path | None = getattr(args, "program_dir", None)
    # Under torchrun each rank has a runner (RANK); beside a program container, each node's
    # pod has one (PET_NODE_RANK), and torchrun runs in the program's container.
    rank = int(os.environ.get("RANK") or os.environ.get("PET_NODE_RANK") or "0")
    main_rank = rank == 0
    # Beside a program container the program's processes are not this runner's: its own
    # tree would say the unit used nothing, so such a unit is not measured.
    reporter = Reporter(result_path(args), enabled=main_rank,
                        usage_series=None if program_dir else
                        args.storage / args.unit / USAGE_FILE)
    tracker = UnitTracker.open(spec, unit_run(job.metadata.name, args.unit, args.fold),
                               args.storage, enabled=main_rank)
    env = program_environment(spec, args, where, params, epochs)
    command = substitute(user_command, placeholder_values(env, params), params)
    if program_dir is None:
        command = _resolve_program(command)
    else:
        command = _torchrun(spec, args.unit) + command
    if main_rank:
        where.stop_file.unlink(missing_ok=True)
        rows = export_data(spec, args, where.data_dir)
        tracker.start(flat_params(spec, trial_params))
        reporter.event("start", unit=args.unit, command=shlex.join(user_command),
                       train=rows, epochs=epochs, world_size=int(os.environ.get("WORLD_SIZE")
                                                      or math.prod(_gang(spec, args.unit))))
    else:
        # The other ranks wait for rank 0's files (they share the storage on one node; on
        # several nodes the storage is a ReadWriteMany claim): this launch's, not an earlier
        # attempt's (torchrun gives each launch its own run id).
        _wait_for_data(where.data_dir)
    program: Program
    if program_dir is not None:  # another container of this pod runs it
        program = ContainerProgram(command, {**env, "PYTHONUNBUFFERED": "1",
                                             **_rank_env()}, program_dir, where.stop_file)
    else:
        program = ChildProgram(command, {**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                               getattr(args, "workdir", None) or Path.cwd(), where.stop_file)
    state = Run(history=_previous_history(unit_dir) if main_rank else [])
    terminated = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        terminated.set()
        program.stop()
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        _follow(program, spec, state, reporter, unit_dir, epochs, main_rank, on_epoch,
                tracker.epoch)
    except BaseException:
        program.stop(grace=0)
        program.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    code = program.wait()
    if not main_rank:
        return {"status": "succeeded" if code == 0 else "failed", "exit_code": code}
    return _summary(spec, args, state, code, terminated.is_set(), epochs, started, reporter,
                    unit_dir, tracker)


def _gang(spec: TrainingJobSpec, unit: str) -> tuple[int, int]:
    """(nodes, processes per node) of a unit: a trial is one process."""
    res = spec.training.resources
    return (1, 1) if unit.startswith("tuning/") else (res.nodes, res.workers_per_node)


def _torchrun(spec: TrainingJobSpec, unit: str) -> list[str]:
    """In a program container, torchrun (from the program's PyTorch) starts the ranks."""
    nodes, nproc = _gang(spec, unit)
    if nodes * nproc == 1:
        return []
    # multi-node: torchrun reads PET_NNODES, PET_NODE_RANK, PET_MASTER_* from the environment
    return ["torchrun", *(["--standalone"] if nodes == 1 else []),
            f"--nproc-per-node={nproc}", "--max-restarts=0", "--no-python"]


def _rank_env() -> dict[str, str]:
    """The multi-node torchrun settings this pod got, for the program's container."""
    return {k: v for k, v in os.environ.items() if k.startswith("PET_")}


def _wait_for_data(data_dir: Path, timeout: float = 600) -> None:
    run = os.environ.get("TORCHELASTIC_RUN_ID")
    deadline = time.time() + timeout
    while True:
        try:
            meta = json.loads((data_dir / "meta.json").read_text())
            if run is None or meta.get("run") == run:
                return
        except (OSError, json.JSONDecodeError):
            pass
        if time.time() > deadline:
            raise SystemExit(f"error: rank 0 never wrote {data_dir}")
        time.sleep(0.2)


def _previous_history(unit_dir: Path) -> list[dict[str, float]]:
    """The history an earlier attempt of this unit left (a resumed program continues it)."""
    try:
        data = json.loads((unit_dir / HISTORY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return [row for row in data if isinstance(row, dict)] if isinstance(data, list) else []


def _follow(program: Program, spec: TrainingJobSpec, state: Run, reporter: Reporter,
            unit_dir: Path, epochs: int, main_rank: bool,
            on_epoch: EpochCallback | None, observe: EpochObserver) -> None:
    """Pass the program's output through; act on its events (rank 0 only)."""
    last = time.time()
    first_epoch = True
    for line in program.lines():
        event = parse_event(line)
        if event is None:
            print(line, end="", flush=True)
            state.tail.append(line.rstrip("\n"))
            continue
        if not main_rank:
            continue  # rank 0 reports for the gang
        kind = event.get("event")
        if kind == "epoch" and isinstance(event.get("epoch"), int | float):
            metrics = _numbers(event)
            epoch = int(metrics["epoch"])
            metrics["epoch"] = epoch
            now = time.time()
            metrics.setdefault("seconds", round(now - last, 4))
            last = now
            if first_epoch and epoch > 1 and not state.resumed_from:
                state.resumed_from = epoch - 1
                reporter.event("resumed", epoch=epoch - 1)
            first_epoch = False
            # A resumed program reports again from its checkpoint: its new epochs replace the
            # old attempt's from there on.
            state.history = [h for h in state.history if h.get("epoch", 0) < epoch]
            state.history.append(metrics)
            write_json_atomic(unit_dir / HISTORY_FILE, state.history)
            best = _best_epoch(state.history, spec)
            reporter.event("epoch", epochs=epochs, best_epoch=best, **metrics)
            if main_rank:
                observe(dict(metrics))
            if program.stop_requested:
                continue
            if on_epoch is not None and on_epoch(dict(metrics)):
                state.stop_reason = PRUNED
            elif should_stop_for_overfitting(state.history, spec):
                state.stop_reason = OVERFITTING_STOP
            if state.stop_reason:
                reporter.event("stopped", epoch=epoch, reason=state.stop_reason)
                program.stop()
        elif kind == "test":
            state.test_metrics.update(_numbers(event, "test_"))
        elif kind == "model" and isinstance(event.get("path"), str):
            state.model = event["path"]
            if isinstance(event.get("epoch"), int):
                state.model_epoch = event["epoch"]
        elif kind == "result":
            found = event.get("summary")
            summary: dict[str, Any] = found if isinstance(found, dict) else dict(event)
            state.test_metrics.update(_numbers(summary.get("test_metrics") or {}, "test_"))
            if isinstance(summary.get("model"), str):
                state.model = summary["model"]
        elif kind in ("checkpoint", "stopped", "log"):
            reporter.event(str(kind), **{k: v for k, v in event.items()
                                         if k not in ("kubetrain", "event")})


def _best_epoch(history: list[dict[str, float]], spec: TrainingJobSpec) -> int | None:
    metric = monitored_metric(spec)
    scored = [(h[metric], int(h["epoch"])) for h in history
              if isinstance(h.get(metric), float) and math.isfinite(h[metric])]
    if not scored:
        return None
    pick = max if is_maximized(metric) else min
    # The first epoch with the best value, as early stopping counts it.
    return pick(scored, key=lambda pair: (pair[0], -pair[1]) if is_maximized(metric)
                else (pair[0], pair[1]))[1]


def _model_file(state: Run, unit_dir: Path) -> Path | None:
    if state.model:
        path = Path(state.model)
        return path if path.is_absolute() else unit_dir / path
    return next((unit_dir / n for n in MODEL_FILES if (unit_dir / n).exists()), None)


def _summary(spec: TrainingJobSpec, args: argparse.Namespace, state: Run, code: int,
             terminated: bool, epochs: int, started: float, reporter: Reporter,
             unit_dir: Path, tracker: UnitTracker) -> dict[str, Any]:
    history = state.history
    best = _best_epoch(history, spec)
    metric = monitored_metric(spec)
    best_row = next((h for h in history if h["epoch"] == best), None)
    summary: dict[str, Any] = {
        "unit": args.unit, "fold": args.fold, "status": "succeeded",
        "task": _task(unit_dir), "epochs": epochs, "epochs_run": len(history),
        "best_epoch": best,
        "best_metrics": {k: v for k, v in (best_row or {}).items()
                         if k.startswith(("train_", "val_"))},
        "final_metrics": {k: v for k, v in history[-1].items()
                          if k.startswith(("train_", "val_"))} if history else {},
        "test_metrics": state.test_metrics,
        "stopped_early": state.stop_reason is not None or (bool(history) and
                                                            len(history) < epochs),
        "stop_reason": state.stop_reason,
        "resumed_from_epoch": state.resumed_from,
        "seconds": round(time.time() - started, 3),
        "seconds_after_best": round(sum(h.get("seconds", 0.0) for h in history
                                        if best is not None and h["epoch"] > best), 3),
        "history": str(unit_dir / HISTORY_FILE),
        "checkpoint": str(unit_dir / "checkpoints"),
        "exit_code": code,
        "monitor": metric,
        # Under torchrun here: its WORLD_SIZE; beside a program container, the gang's size.
        "world_size": int(os.environ.get("WORLD_SIZE") or math.prod(_gang(spec, args.unit))),
    }
    stopped_by_us = state.stop_reason is not None or terminated
    if terminated:
        summary["status"] = "terminated"
        summary["stop_reason"] = TERMINATED
    elif code != 0 and not stopped_by_us:
        lines, failed_rank = _program_lines(list(state.tail))
        if failed_rank is not None:  # torchrun's summary names the rank that failed first
            code, rank = failed_rank
        tail = "\n".join(lines)[-1500:]
        where = f" (rank {rank})" if failed_rank is not None else ""
        summary["status"] = "failed"
        summary["exit_code"] = code
        summary["message"] = f"training.command exited with code {_exit_text(code)}{where}" + (
            f"; last lines:\n{tail}" if tail else "")
    if history and summary["status"] != "failed":
        delivered = state.model_epoch if state.model_epoch in {h["epoch"] for h in history} \
            else None
        summary["overfitting"] = analyze_overfitting(history, spec, delivered).model_dump(
            mode="json", by_alias=True, exclude_none=True)
    model = _model_file(state, unit_dir)
    if model is not None and model.exists():
        summary["model"] = str(model)
    write_json_atomic(unit_dir / HISTORY_FILE, history)
    finish_tracking(tracker, spec, summary, history, unit_dir)
    reporter.result(tracker.report_into(summary))
    return summary


TORCHRUN_LOG = re.compile(r"^[EWI]\d{4} .*(torch/distributed|torch\.distributed)")
TORCHRUN_ROOT_CAUSE = re.compile(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


def _program_lines(lines: list[str]) -> tuple[list[str], tuple[int, int] | None]:
    """The program's own last lines, without torchrun's log and failure summary, and the
    (exit code, rank) of the rank that failed first when torchrun's summary says it."""
    failed = None
    if "Root Cause (first observed failure):" in lines:
        start = lines.index("Root Cause (first observed failure):")
        found = TORCHRUN_ROOT_CAUSE.search("\n".join(lines[start:]))
        if found:
            failed = (int(found.group(2)), int(found.group(1)))
    summary = next((i for i, line in enumerate(lines) if set(line) == {"="} and
                    i + 1 < len(lines) and lines[i + 1].endswith(" FAILED")), len(lines))
    return [x for x in lines[:summary] if not TORCHRUN_LOG.match(x)], failed


def _task(unit_dir: Path) -> str:
    try:
        return str(json.loads((unit_dir / "data" / "meta.json").read_text())["task"])
    except (OSError, KeyError, json.JSONDecodeError):
        return "classification"


def _exit_text(code: int) -> str:
    return f"{code} (killed by signal {-code})" if code < 0 else str(code)


def exit_code(summary: Mapping[str, Any]) -> int:
    """The unit's own exit code: 0, 143 when terminated, else the program's (a signal: 128+N)."""
    if summary.get("status") == "terminated":
        return 143
    if summary.get("status") != "failed":
        return 0
    code = int(summary.get("exit_code") or 1)
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except DatasetError as error:
        return refuse(result_path(args), [f"spec.{error}"])
    except SpecProblem as error:
        return refuse(result_path(args), [str(error)])
    finally:
        cancel(args.program_dir)
    code = exit_code(summary)
    # The spec-problem exit code means "Invalid, do not retry"; a program's own 2 is a failure.
    return 1 if code == 2 else code


if __name__ == "__main__":
    sys.exit(main())
