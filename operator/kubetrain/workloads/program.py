"""The user's program (training.command) as the runner sees it: its output line by line, a
stop request (a stop file, SIGTERM, SIGKILL after a grace period) and its exit code, whether it
is the runner's child process or runs in another container of the pod (``kubetrain.launcher``).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..launcher import EXIT_CODE_FILE, LAUNCH_FILE, OUTPUT_FIFO, PID_FILE

STOP_GRACE_SECONDS = 30.0
"""How long a program asked to stop may take to save its checkpoint before it is killed."""


class Program:
    """The user's program: its output line by line, a stop request, its exit code."""

    def __init__(self, stop_file: Path) -> None:
        self.stop_file = stop_file
        self.stop_requested = False

    def lines(self) -> Iterator[str]:
        raise NotImplementedError

    def wait(self) -> int:
        raise NotImplementedError

    def signal(self, signum: int) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Ask the program to end (stop file, then SIGTERM); SIGKILL after ``grace`` seconds."""
        if self.stop_requested:
            return
        self.stop_requested = True
        self.stop_file.parent.mkdir(parents=True, exist_ok=True)
        self.stop_file.touch()
        self.signal(signal.SIGTERM)

        def kill_later() -> None:
            deadline = time.time() + grace
            while self.alive() and time.time() < deadline:
                time.sleep(0.2)
            if self.alive():
                self.signal(signal.SIGKILL)
        threading.Thread(target=kill_later, daemon=True).start()


class ChildProgram(Program):
    """The program as this process's child (locally, and in a pod of an image with kubetrain)."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path,
                 stop_file: Path) -> None:
        super().__init__(stop_file)
        self.proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     errors="replace")

    def lines(self) -> Iterator[str]:
        assert self.proc.stdout is not None
        yield from self.proc.stdout

    def wait(self) -> int:
        return self.proc.wait()

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signum)

    def alive(self) -> bool:
        return self.proc.poll() is None


class ContainerProgram(Program):
    """The program in another container of this pod (an image without kubetrain), reached
    through a shared folder: a launch file it sources, a FIFO for its output, its pid (the pod
    shares one process namespace) and its exit code."""

    def __init__(self, command: list[str], env: dict[str, str], folder: Path,
                 stop_file: Path) -> None:
        super().__init__(stop_file)
        self.folder = folder
        for name in (OUTPUT_FIFO, PID_FILE, EXIT_CODE_FILE, LAUNCH_FILE):
            (folder / name).unlink(missing_ok=True)
        os.mkfifo(folder / OUTPUT_FIFO)
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        launch = folder / f".{LAUNCH_FILE}"
        launch.write_text(f"{exports}set -- {shlex.join(command)}\n")
        os.replace(launch, folder / LAUNCH_FILE)
        self.pid: int | None = None

    def lines(self) -> Iterator[str]:
        # Opening blocks until the program's side opens the FIFO; EOF when it exits.
        with (self.folder / OUTPUT_FIFO).open(errors="replace") as output:
            yield from output

    def _pid(self) -> int | None:
        if self.pid is None:
            with contextlib.suppress(OSError, ValueError):
                self.pid = int((self.folder / PID_FILE).read_text())
        return self.pid

    def wait(self) -> int:
        deadline = time.time() + 30
        while time.time() < deadline:
            with contextlib.suppress(OSError, ValueError):
                return int((self.folder / EXIT_CODE_FILE).read_text())
            time.sleep(0.2)
        return 137  # the program container went away without an exit code (killed)

    def signal(self, signum: int) -> None:
        pid = self._pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def alive(self) -> bool:
        pid = self._pid()
        if pid is None:
            return not (self.folder / EXIT_CODE_FILE).exists()
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
