"""The reporting protocol (``kubetrain.report``) of every work unit, in a pod or a local process.

- progress: one JSON object per line on stdout, tagged ``{"kubetrain": 1, "event": ...}``;
  other stdout lines are ordinary logs. The executor (local, or the operator reading pod logs)
  picks the tagged lines out.
- result: a final summary of at most 4 KB of JSON written to a result file: in a pod that is
  ``/dev/termination-log``, which Kubernetes puts in the container's termination message.
- large outputs: files in the job's storage directory, named in the summary.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

PROTOCOL_VERSION = 1
EXECUTOR_PID_ENV = "KUBETRAIN_EXECUTOR_PID"
"""Set by the local executor: a unit may end itself when that process dies."""
SPEC_PROBLEM_EXIT = 2
"""Exit code of a unit that found the spec cannot work (its result names the fields)."""
TAG = "kubetrain"
# Kubernetes truncates termination messages at 4096 bytes; stay under it.
MAX_RESULT_BYTES = 4096
TERMINATION_LOG = Path("/dev/termination-log")


def _clean(value: Any) -> Any:
    """JSON has no NaN or Infinity: report them as strings so the line stays parseable."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def encode_event(event: str, **fields: Any) -> str:
    return json.dumps(_clean({TAG: PROTOCOL_VERSION, "event": event, **fields}))


def parse_event(line: str) -> dict[str, Any] | None:
    """The event on a stdout line, or None for an ordinary log line."""
    line = line.strip()
    if not line.startswith("{") or f'"{TAG}"' not in line:
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get(TAG) != PROTOCOL_VERSION:
        return None
    return data


def parse_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        event = parse_event(line)
        if event is not None:
            yield event


def compact_result(summary: dict[str, Any]) -> str:
    """The summary as JSON within MAX_RESULT_BYTES, dropping the bulkiest fields first."""
    data = _clean(dict(summary))
    text = json.dumps(data, separators=(",", ":"))
    if len(text.encode()) <= MAX_RESULT_BYTES:
        return text
    # Lists (histories, per-sample values) live in files; keep the scalars.
    for key in sorted(data, key=lambda k: -len(json.dumps(data[k]))):
        if isinstance(data[key], list | dict):
            data[key] = "truncated: see files in storage"
            data["truncated"] = True
            text = json.dumps(data, separators=(",", ":"))
            if len(text.encode()) <= MAX_RESULT_BYTES:
                return text
    raise ValueError("result summary does not fit in 4 KB even without lists")


def default_result_path() -> Path | None:
    """The termination-message file in a pod (the kubelet creates it writable), else None."""
    if TERMINATION_LOG.exists() and os.access(TERMINATION_LOG, os.W_OK):
        return TERMINATION_LOG
    return None


class Reporter:
    """Emits progress events and the final result. Only rank 0 of a DDP gang reports."""

    def __init__(self, result_path: Path | None, *, enabled: bool = True,
                 stream: TextIO | None = None, usage_series: Path | None = None) -> None:
        """With ``usage_series`` (the units do), a sampler measures what the unit's process
        tree uses (``kubetrain.usage``) from now to the result, which gets its summary as
        ``usage``; the series goes to that file."""
        self.result_path = result_path
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.usage: Any = None
        if enabled and usage_series is not None:
            from .usage import UsageSampler, unit_root

            self.usage = UsageSampler(root=unit_root(), series_path=usage_series).start()

    def event(self, event: str, **fields: Any) -> None:
        if self.enabled:
            print(encode_event(event, **fields), file=self.stream, flush=True)

    def result(self, summary: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.usage is not None:
            summary = {**summary, "usage": self.usage.stop()}
        text = compact_result(summary)
        if self.result_path is not None:
            self.result_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.result_path.with_name(self.result_path.name + ".tmp")
            if self.result_path == TERMINATION_LOG:
                self.result_path.write_text(text)
            else:
                tmp.write_text(text)
                os.replace(tmp, self.result_path)
        self.event("result", summary=json.loads(text))


def read_result(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write a JSON file so that a reader never sees half of it (a killed writer leaves none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_clean(data), indent=1))
    os.replace(tmp, path)


def refuse(path: Path | None, problems: list[str]) -> int:
    """End a unit that found problems with the spec only the data shows (a missing column, a
    model that does not fit the input): the result names the fields, and the executor makes the
    job Invalid instead of retrying. Returns the exit code."""
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    Reporter(path).result({"status": "failed", "problems": problems,
                           "message": "; ".join(problems)[:500]})
    return SPEC_PROBLEM_EXIT


# --- the helper for your own training program (training.command) ------------------------------
# `from kubetrain import report` imports the standard library only (no torch, no numpy): an
# image needs kubetrain's files, not its dependencies. Printing the same JSON lines yourself
# works as well (docs/custom-script.md).

STOP_FILE_ENV = "KUBETRAIN_STOP_FILE"


def _say(event: str, **fields: Any) -> None:
    """One line of the protocol, from rank 0 only (RANK from torchrun; one process: 0)."""
    if os.environ.get("RANK", "0") == "0":
        print(encode_event(event, **fields), flush=True)


def epoch(number: int, **metrics: float) -> None:
    """Report one finished epoch (rank 0 reports; other ranks' calls print nothing):
    ``report.epoch(3, train_loss=0.4, val_loss=0.5,
    val_accuracy=0.9)``. train_loss and val_loss feed the overfitting finding; the monitored
    metric (KUBETRAIN_MONITOR) drives early-stopping bookkeeping, pruning and the sweep."""
    _say("epoch", epoch=int(number), **{k: float(v) for k, v in metrics.items()})


def test(**metrics: float) -> None:
    """Report the final metrics on the test split (names starting with ``test_``)."""
    _say("test", **{k if k.startswith("test_") else f"test_{k}": float(v)
                    for k, v in metrics.items()})


def model(path: str | os.PathLike[str], *, epoch: int | None = None) -> None:
    """Say where the delivered model is (TorchScript ``.ts`` or torch.export ``.pt2``) and, if
    it is not the last epoch's, which epoch's weights it holds."""
    fields: dict[str, Any] = {"path": str(path)}
    if epoch is not None:
        fields["epoch"] = int(epoch)
    _say("model", **fields)


def checkpoint(number: int, path: str | os.PathLike[str]) -> None:
    """Report a saved checkpoint (shown in the unit's progress)."""
    _say("checkpoint", epoch=int(number), path=str(path))


def should_stop() -> bool:
    """True once kubetrain asked this program to stop (pruned, overfitting with action: stop,
    the job suspended or stopped): save a checkpoint and exit. kubetrain also sends SIGTERM."""
    path = os.environ.get(STOP_FILE_ENV)
    return path is not None and Path(path).exists()
