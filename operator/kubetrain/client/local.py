"""The client's local side: each job runs `kubetrain run`'s engine on a background thread."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from ..api.resource import ManifestError, TrainingJob
from ..api.status import Phase, TrainingJobStatus
from ..local.display import Display
from ..local.executor import LocalExecutor, preflight
from .errors import AlreadyExists, ClientError, InvalidSpec, NotFound

FOLLOW_INTERVAL = 0.5  # how often a followed log file is read again


@dataclass
class _Run:
    executor: LocalExecutor
    thread: threading.Thread
    changed: threading.Condition = field(default_factory=threading.Condition)
    version: int = 0
    error: BaseException | None = None


class LocalBackend:
    """Jobs of this process, run here; storage under ``storage_root/<name>``."""

    def __init__(self, storage_root: Path) -> None:
        self.storage_root = storage_root
        self.runs: dict[str, _Run] = {}

    def _run(self, name: str) -> _Run:
        run = self.runs.get(name)
        if run is None:
            raise NotFound(f"no TrainingJob {name!r} in this client (local executor); known: "
                           f"{', '.join(self.runs) or 'none'}")
        return run

    def storage(self, name: str) -> Path:
        return (self.storage_root / name).resolve()

    def submit(self, job: TrainingJob, base_dir: Path) -> TrainingJob:
        name = job.metadata.name
        if name in self.runs and self.runs[name].thread.is_alive():
            raise AlreadyExists(f"TrainingJob {name!r} is running already")
        try:
            preflight(job, base_dir)  # data and model problems: refused here, as on `run`
        except ManifestError as error:
            raise InvalidSpec(error.problems, name) from None
        holder: list[_Run] = []

        def observe(status: TrainingJobStatus) -> None:
            run = holder[0]
            with run.changed:
                run.version += 1
                run.changed.notify_all()

        # Progress reaches the caller as events (Client.wait): the run itself prints nothing.
        executor = LocalExecutor(job, base_dir=base_dir, storage=self.storage(name),
                                 display=Display(enabled=False, console=Console(quiet=True)),
                                 observer=observe)
        run = _Run(executor, threading.Thread(target=lambda: self._main(run), daemon=True,
                                              name=f"kubetrain-{name}"))
        holder.append(run)
        self.runs[name] = run
        run.thread.start()
        return self.get(name)

    @staticmethod
    def _main(run: _Run) -> None:
        try:
            run.executor.run()
        except BaseException as error:  # kept for wait() to raise
            run.error = error
        finally:
            with run.changed:
                run.version += 1
                run.changed.notify_all()

    def get(self, name: str) -> TrainingJob:
        executor = self._run(name).executor
        return executor.job.model_copy(update={"status": executor.status.model_copy(deep=True)})

    def list(self) -> list[TrainingJob]:
        return [self.get(name) for name in self.runs]

    def statuses(self, name: str, timeout: float | None) -> Iterator[TrainingJobStatus]:
        """The job's status now, then each new one, until it ends or ``timeout`` passes."""
        run = self._run(name)
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = -1
        while True:
            with run.changed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                run.changed.wait_for(lambda seen=seen: run.version != seen  # type: ignore[misc]
                                     or not run.thread.is_alive(),
                                     timeout=left)
                seen = run.version
            status = self.get(name).status or TrainingJobStatus()
            if Phase(status.phase).terminal:
                # The run ends after the report unit (report.md) and the stopped units are done.
                run.thread.join(left)
            yield status
            if not run.thread.is_alive():
                if run.error is not None:
                    raise ClientError(f"the local run of {name} failed: {run.error}")
                return

    def set_suspended(self, name: str, suspend: bool) -> None:
        self._run(name).executor.set_suspended(suspend)

    def delete(self, name: str) -> None:
        """Stop the run (its storage stays) and forget the job."""
        run = self._run(name)
        run.executor.stop()
        run.thread.join()
        del self.runs[name]

    def logs(self, name: str, unit: str | None, follow: bool) -> Iterator[str]:
        run = self._run(name)
        units = [u.name for stage in run.executor.plan.stages for u in stage.units]
        unit = unit or _latest_unit(run.executor.status, units)
        if unit not in units:
            raise NotFound(f"TrainingJob {name} has no unit {unit!r}; its units: "
                           f"{', '.join(units)}")
        log = run.executor.log_of(unit)
        assert log is not None
        yield from _read(log, follow=lambda: follow and run.thread.is_alive())

    def get_artifacts(self, name: str, destination: Path) -> Path:
        self._run(name)
        source = self.storage(name)
        shutil.copytree(source, destination, dirs_exist_ok=True)
        return destination


def _latest_unit(status: TrainingJobStatus, units: list[str]) -> str:
    """The unit that started last (the one a person most likely wants), else the first."""
    started = [(record.start_time or "", unit) for stage in status.stages.values()
               for unit, record in stage.units.items() if record.start_time]
    return max(started)[1] if started else units[0]


def _read(path: Path, follow: object) -> Iterator[str]:
    """A log file's lines; while ``follow()`` is true, the lines written after them too."""
    offset = 0
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        complete = text[offset:].rpartition("\n")
        chunk = complete[0] + complete[1]
        offset += len(chunk)
        yield from chunk.splitlines()
        if not callable(follow) or not follow():
            rest = text[offset:]
            if rest:
                yield rest
            return
        time.sleep(FOLLOW_INTERVAL)

