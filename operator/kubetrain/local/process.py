"""A work unit as a local process group: started, followed line by line, stopped cleanly."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..pipeline.actions import Observation, Seen
from ..pipeline.plan import WorkUnit
from ..report import EXECUTOR_PID_ENV, parse_event, read_result

Line = tuple["UnitProcess", dict[str, Any] | None]
"""(process, event) from a unit's stdout; event None when the process exited."""


def command_for(unit: WorkUnit, extra_args: list[str]) -> list[str]:
    """The command line of a work unit: torchrun for a DDP gang, plain python otherwise.

    The local executor runs every rank of every node on this machine (one "node" of
    nodes x nprocPerNode workers); on Kubernetes each node is its own pod.
    """
    module_args = ["-m", unit.module, *unit.args, *extra_args]
    if unit.world_size == 1:
        return [sys.executable, *module_args]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={unit.world_size}", "--max-restarts=0", *module_args,
    ]


def process_observation(*, attempt: int, exit_code: int | None, stopping: bool, seconds: float,
                        progress: dict[str, Any] | None, result: dict[str, Any] | None,
                        output: str | None) -> Observation:
    """The engine's view of a unit's process group: running until it exits (exit_code set)."""
    if exit_code is None:
        return Observation(Seen.STOPPING if stopping else Seen.RUNNING, attempt, seconds,
                           progress=progress)
    return Observation(Seen.SUCCEEDED if exit_code == 0 else Seen.FAILED, attempt, seconds,
                       progress=progress, result=result, exit_code=exit_code, output=output)


class UnitProcess:
    """A running work unit. Its stdout carries events (to ``lines``); the rest goes to a log."""

    def __init__(self, unit: WorkUnit, attempt: int, command: list[str], log_path: Path,
                 result_path: Path, lines: queue.Queue[Line]) -> None:
        self.unit = unit
        self.attempt = attempt
        self.log_path = log_path
        self.result_path = result_path
        result_path.unlink(missing_ok=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("a")
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Workers side by side on a small machine must not each start a thread per core.
        if unit.world_size > 1 or unit.kind in ("trial", "augment-shard"):
            environment.setdefault("OMP_NUM_THREADS", "1")
        # A unit that supports it ends with this process, even if it is SIGKILLed.
        environment[EXECUTOR_PID_ENV] = str(os.getpid())
        self.started = time.time()
        self.finished: float | None = None
        self.progress: dict[str, Any] | None = None
        self.stop_deadline: float | None = None
        # Its own session: Ctrl-C in the terminal reaches us, and we stop the whole group.
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
            env=environment, start_new_session=True,
        )
        self._lines = lines
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = parse_event(line)
            if event is None:
                self._log.write(line)
                self._log.flush()
            else:
                if event.get("event") in ("epoch", "trial"):
                    self.progress = event
                self._lines.put((self, event))
        self.proc.wait()
        self.finished = time.time()
        self._log.close()
        self._lines.put((self, None))

    @property
    def alive(self) -> bool:
        return self.finished is None

    @property
    def seconds(self) -> float:
        return (self.finished or time.time()) - self.started

    def observation(self) -> Observation:
        ended = not self.alive
        return process_observation(
            attempt=self.attempt, exit_code=self.proc.returncode if ended else None,
            stopping=self.stop_deadline is not None, seconds=self.seconds,
            progress=self.progress, result=read_result(self.result_path) if ended else None,
            output=self.log_tail(3) if ended else None)

    def terminate(self, grace: float) -> None:
        """SIGTERM to the group (the trainer checkpoints and exits); SIGKILL after grace."""
        if not self.alive or self.stop_deadline is not None:
            return
        self.stop_deadline = time.time() + grace
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)

    def kill_if_overdue(self) -> None:
        if self.alive and self.stop_deadline is not None and time.time() > self.stop_deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""
