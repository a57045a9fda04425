"""A work unit as a local process group: started, followed line by line, stopped cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..pipeline.plan import WorkUnit
from ..report import parse_event


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


class UnitProcess:
    """A running work unit. Its stdout carries events; its stderr goes to a log file."""

    def __init__(self, unit: WorkUnit, command: list[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.unit = unit
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("a")
        environment = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        # Two DDP workers on a 2-core machine must not each start a thread per core.
        if unit.world_size > 1:
            environment.setdefault("OMP_NUM_THREADS", "1")
        self.started = time.time()
        # Its own session: Ctrl-C in the terminal reaches us, and we stop the whole group.
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
            env=environment, start_new_session=True,
        )
        self.finished: float | None = None

    def events(self) -> Iterator[dict[str, Any]]:
        """Events as they arrive; other stdout lines are copied to the log."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = parse_event(line)
            if event is None:
                self._log.write(line)
                self._log.flush()
            else:
                yield event

    def wait(self) -> int:
        code = self.proc.wait()
        self.finished = self.finished or time.time()
        self._log.close()
        return code

    @property
    def seconds(self) -> float:
        return (self.finished or time.time()) - self.started

    def terminate(self, grace: float = 15.0) -> None:
        """SIGTERM to the group (the trainer checkpoints and exits), SIGKILL after grace."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""
