"""What a work unit actually used: a sampler thread in each unit, stdlib only (plus NVML when
``nvidia-ml-py`` is installed and a GPU is visible).

Every ``interval`` seconds it reads, for the unit's process tree (the unit, its DataLoader
workers, a custom program; under torchrun the agent and all its local ranks):

- CPU: the tree's user + system seconds (``/proc/PID/stat``), as cores busy since the last
  sample;
- memory: in a pod, the container's working set (its memory cgroup, as the kubelet counts
  it); elsewhere the tree's proportional set size every 4 s (``/proc/PID/smaps_rollup``: a
  page shared by the trainer and its forked workers counts once; else the resident set);
- GPU (NVML): utilisation, memory used and total, power, of the devices the unit sees.

The series goes to a file in the job's storage (one JSON object per sample); the summary goes
into the unit's result (``usage``), from which ``findings.utilization`` is computed. Reading
``/proc`` a few times a second costs well under 1 % of a core (``bench/usage_overhead.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INTERVAL_SECONDS = 0.5
TREE_EVERY = 20
"""Samples between scans of /proc for the tree's processes (new DataLoader workers, ranks)."""
MEMORY_EVERY = 8
"""Samples between readings of the tree's proportional set size (costly: the kernel walks the
page tables); in a pod the container's cgroup is read at every sample instead (cheap)."""
USAGE_FILE = "usage.jsonl"
"""The series' file in a unit's folder of the job's storage."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
GiB = 2**30


def _tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc (the processes that exist now)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def _container_memory() -> int | None:
    """In a pod: the container's working set (its cgroup's usage less inactive file cache,
    as the kubelet counts it against the limit); elsewhere None."""
    if "KUBERNETES_SERVICE_HOST" not in os.environ:
        return None
    try:
        v2 = Path("/sys/fs/cgroup/memory.current")
        if v2.exists():
            usage, stat_file, key = int(v2.read_text()), Path("/sys/fs/cgroup/memory.stat"), \
                "inactive_file"
        else:
            base = Path("/sys/fs/cgroup/memory")
            usage = int((base / "memory.usage_in_bytes").read_text())
            stat_file, key = base / "memory.stat", "total_inactive_file"
        for line in stat_file.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return max(0, usage - int(value))
        return usage
    except (OSError, ValueError):
        return None


def _memory_bytes(pid: int) -> int:
    """Proportional set size (shared pages split between their users), else resident."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


class _Gpus:
    """NVML's view of the visible GPUs; ``None`` from :func:`open` without a driver or
    without ``nvidia-ml-py``."""

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self.nvml, self.handles = nvml, handles

    @classmethod
    def open(cls) -> _Gpus | None:
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except Exception:  # no package, no driver, no device
            return None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        indices = list(range(count))
        if visible:
            indices = [int(i) for i in visible.split(",") if i.strip().isdigit()
                       and int(i) < count]
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
        return cls(pynvml, handles) if handles else None

    def sample(self) -> dict[str, float]:
        util, used, total, power = [], 0, 0, 0.0
        for handle in self.handles:
            util.append(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            used, total = used + memory.used, total + memory.total
            with contextlib.suppress(Exception):  # not every board reports power
                power += self.nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
        return {"gpu_util": sum(util) / len(util), "gpu_memory": used,
                "gpu_memory_total": total, "gpu_watts": power}


@dataclass
class UsageSampler:
    """Samples the process tree of ``root`` on a daemon thread until :meth:`stop`."""

    root: int = field(default_factory=os.getpid)
    interval: float = INTERVAL_SECONDS
    series_path: Path | None = None
    samples: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gpus: _Gpus | None = None
        self._started = 0.0
        self._cpu: dict[int, float] = {}
        self._pids: list[int] = []
        self._ticks = 0

    def start(self) -> UsageSampler:
        self._gpus = _Gpus.open()
        self._started = time.monotonic()
        for pid in _tree(self.root):  # what the tree did before counts for nothing
            try:
                self._cpu[pid] = _cpu_seconds(pid)
            except (OSError, IndexError, ValueError):
                continue
        self._thread = threading.Thread(target=self._run, name="kubetrain-usage", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            with contextlib.suppress(Exception):
                self.samples.append(self._sample(now - self._started, now - last))
            last = now

    def _sample(self, at: float, elapsed: float) -> dict[str, float]:
        self._ticks += 1
        if self._ticks % TREE_EVERY == 1 or not self._pids:
            self._pids = _tree(self.root)  # a whole /proc scan: not every tick
        cpu_now: dict[int, float] = {}
        for pid in self._pids:
            try:
                cpu_now[pid] = _cpu_seconds(pid)
            except (OSError, IndexError, ValueError):  # ended since the scan
                continue
        self._pids = list(cpu_now)
        # Busy seconds since the last sample: each live process's growth (a new process: all
        # its seconds); the seconds of processes that ended since are lost with them, which
        # undercounts only what a process did in its last interval.
        busy = sum(cpu - self._cpu.get(pid, 0.0) for pid, cpu in cpu_now.items())
        self._cpu = cpu_now
        sample: dict[str, float] = {"t": round(at, 2),
                                    "cpu": round(max(busy, 0.0) / max(elapsed, 1e-6), 3)}
        container = _container_memory()
        if container is not None:
            sample["memory"] = container
        elif self._ticks % MEMORY_EVERY == 1:
            sample["memory"] = sum(_memory_bytes(pid) for pid in self._pids
                                   if os.path.exists(f"/proc/{pid}"))
        if self._gpus is not None:
            sample.update(self._gpus.sample())
        return sample

    def stop(self) -> dict[str, Any]:
        """Stop sampling; write the series (when asked) and return the summary."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval + 1)
        seconds = time.monotonic() - self._started if self._started else 0.0
        if self.series_path is not None and self.samples:
            try:
                self.series_path.parent.mkdir(parents=True, exist_ok=True)
                self.series_path.write_text("".join(json.dumps(s) + "\n" for s in self.samples))
            except OSError:
                pass
        return summarize(self.samples, seconds, str(self.series_path or "") or None)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(samples: list[dict[str, float]], seconds: float,
              series: str | None = None) -> dict[str, Any]:
    """The unit's ``usage`` summary (what ``api.results.UnitUsage`` reads) from its samples."""
    summary: dict[str, Any] = {"seconds": round(seconds, 3), "samples": len(samples)}
    if series:
        summary["series"] = series
    if not samples:
        return summary
    cpu = [s["cpu"] for s in samples]
    summary.update(cpu_mean=round(statistics.fmean(cpu), 3),
                   cpu_p95=round(_quantile(cpu, 0.95), 3),
                   memory_peak_gib=round(max(s.get("memory", 0) for s in samples) / GiB, 4))
    gpu = [s for s in samples if "gpu_util" in s]
    if gpu:
        util = [s["gpu_util"] for s in gpu]
        summary.update(
            gpu_util_median=round(statistics.median(util), 1),
            gpu_util_mean=round(statistics.fmean(util), 1),
            gpu_memory_peak_gib=round(max(s["gpu_memory"] for s in gpu) / GiB, 3),
            gpu_memory_total_gib=round(gpu[0]["gpu_memory_total"] / GiB, 3),
            gpu_watts_mean=round(statistics.fmean(s["gpu_watts"] for s in gpu), 1))
        # the CPU while the GPUs wait: for the data-loading finding
        low = [s["cpu"] for s in gpu if s["gpu_util"] < 50]
        if low:
            summary["cpu_mean_while_gpu_low"] = round(statistics.fmean(low), 3)
    return summary


def unit_root() -> int:
    """The process whose tree is the unit: under torchrun, the agent (all local ranks);
    otherwise this process."""
    return os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else os.getpid()
