"""Utilisation findings: what the work units used against what they requested.

Pure functions of numbers the units measured (``kubetrain.usage``, summarized in each unit's
result) and the executor saw (an OOMKilled pod); nothing here reads the cluster. Like the
overfitting rules, each issue names the spec field to change, the value that would have
fitted, and what it would have saved at the job's prices.

Requests come from ``training.resources`` for every unit that does the job's work (a training
gang asks for all of it per node; a trial, an augmentation shard or the explanation for one
worker's share), so one field value sizes them all: the value that fits is the one that fits the
most demanding of them, with headroom. The light helper units (study server, summaries, the
data fetch) have fixed small requests and are not judged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ..api.quantity import parse_cpu, parse_memory_gib
from ..api.results import UnitUsage
from ..api.spec import TrainingJobSpec
from ..api.status import UtilizationFinding, UtilizationIssue, UtilizationKind
from .cost import Usage, stage_cost

CPU_HEADROOM = 1.25
"""The suggested CPU request is the peak (95th percentile) use times this."""
MEMORY_HEADROOM = 1.3
"""The suggested memory request is the peak use times this."""
OVER_REQUEST = 2.0
"""A request at least this many times the suggested value is flagged."""
MIN_SAMPLES = 4
"""A unit with fewer samples (under about 2 s) says too little to size anything by."""
LOW_GPU_UTIL = 40.0
"""Median GPU utilisation (%) below which a GPU unit is flagged."""
GPU_MEMORY_HEADROOM = 0.35
"""Peak GPU memory below this share of the GPU's: room for a larger batch or a smaller GPU."""
LOADER_BUSY = 0.8
"""CPU use (share of the request) while the GPU waits that marks a data-loading bound unit."""


@dataclass(frozen=True)
class UnitUse:
    """One work unit: its requests and seconds (priced as for the cost finding), what it
    measured, and how its last attempt ended."""

    name: str
    requested: Usage
    """Requests per node and seconds, as the cost finding prices them."""
    sized: bool
    """Its requests come from training.resources (not a fixed helper request)."""
    usage: UnitUsage | None = None
    exit_reason: str | None = None


def _cpu_text(cores: float) -> str:
    if cores < 1:
        return f"{max(100, math.ceil(cores * 10) * 100)}m"
    return f"{math.ceil(cores * 2) / 2:g}"


def _memory_text(gib: float) -> str:
    if gib < 1:
        return f"{max(256, math.ceil(gib * 4) * 256)}Mi"
    return f"{math.ceil(gib * 4) / 4:g}Gi"


def _saving(units: Sequence[UnitUse], spec: TrainingJobSpec, cpu_factor: float = 1.0,
            memory_factor: float = 1.0) -> float:
    """What the units would have cost less with their CPU and memory requests scaled."""
    prices = spec.findings.cost.prices
    return sum(stage_cost(u.requested, prices).cost
               - stage_cost(replace(u.requested, cpu=u.requested.cpu * cpu_factor,
                                    memory_gib=u.requested.memory_gib * memory_factor),
                            prices).cost
               for u in units)


def _measured(units: Sequence[UnitUse]) -> list[tuple[UnitUse, UnitUsage]]:
    return [(u, u.usage) for u in units
            if u.sized and u.usage is not None and u.usage.samples >= MIN_SAMPLES]


@dataclass(frozen=True)
class _Resource:
    """How one request of training.resources is judged and written."""

    name: str
    kind: UtilizationKind
    what: str
    """What the share is of, and which figure of the use: for the message."""
    headroom: float
    floor: float
    text: Callable[[float], str]
    parse: Callable[[str], float]


_CPU = _Resource("cpu", "cpuOverRequested", "the cores they requested (95th percentile)",
                 CPU_HEADROOM, 0.1, _cpu_text, parse_cpu)
_MEMORY = _Resource("memory", "memoryOverRequested", "the memory they requested (peak)",
                    MEMORY_HEADROOM, 0.25, _memory_text, parse_memory_gib)


def _over_request(resource: _Resource, share: float, units: Sequence[UnitUse],
                  spec: TrainingJobSpec) -> UtilizationIssue | None:
    """The issue when ``training.resources.<name>`` is at least OVER_REQUEST times what would
    have fitted ``share`` of it with headroom; None when it is not."""
    current = getattr(spec.training.resources, resource.name)
    value = resource.parse(current)
    fits = resource.text(max(resource.floor, value * share * resource.headroom))
    factor = resource.parse(fits) / value
    if factor > 1 / OVER_REQUEST:
        return None
    scale = {"cpu_factor" if resource.name == "cpu" else "memory_factor": factor}
    field = f"training.resources.{resource.name}"
    return UtilizationIssue(
        kind=resource.kind, units=[u.name for u in units], field=field, current=current,
        suggested=fits, saving=round(_saving(units, spec, **scale), 6),
        message=(f"the units used at most {share:.0%} of {resource.what}: {field} {current} "
                 f"-> {fits} would have fitted with headroom"))


def _right_sizing(measured: list[tuple[UnitUse, UnitUsage]], spec: TrainingJobSpec,
                  finding: UtilizationFinding) -> None:
    units = [u for u, _ in measured]
    cpu = [m.cpu_p95 / u.requested.cpu for u, m in measured
           if m.cpu_p95 is not None and u.requested.cpu > 0]
    memory = [m.memory_peak_gib / u.requested.memory_gib for u, m in measured
              if m.memory_peak_gib is not None and u.requested.memory_gib > 0]
    if cpu:
        finding.cpu_used_share = round(max(cpu), 3)
    if memory:
        finding.memory_used_share = round(max(memory), 3)
    for resource, shares in ((_CPU, cpu), (_MEMORY, memory)):
        issue = _over_request(resource, max(shares), units, spec) if shares else None
        if issue is not None:
            finding.issues.append(issue)


def _gpus(measured: list[tuple[UnitUse, UnitUsage]], spec: TrainingJobSpec,
          finding: UtilizationFinding) -> None:
    gpu = [(u, m) for u, m in measured if m.gpu_util_median is not None and u.requested.gpus]
    if not gpu:
        return
    weights = [u.requested.seconds or 1.0 for u, _ in gpu]
    util = sum(w * (m.gpu_util_median or 0.0) for w, (_, m) in zip(weights, gpu, strict=True))
    finding.gpu_util_median = round(util / sum(weights), 1)
    price = spec.findings.cost.prices.gpu_hour
    low = [(u, m) for u, m in gpu if (m.gpu_util_median or 0.0) < LOW_GPU_UTIL]
    if low:
        idle = sum(u.requested.seconds / 3600 * u.requested.gpus * u.requested.nodes
                   * (1 - (m.gpu_util_median or 0.0) / 100) * price for u, m in low)
        loading = [u.name for u, m in low if m.cpu_mean_while_gpu_low is not None
                   and m.cpu_mean_while_gpu_low >= LOADER_BUSY * u.requested.cpu]
        finding.issues.append(UtilizationIssue(
            kind="lowGpuUtilization", units=[u.name for u, _ in low],
            field="training.batchSize", current=str(spec.training.batch_size),
            suggested=str(spec.training.batch_size * 2), saving=round(idle, 6),
            message=(f"the GPUs were busy {finding.gpu_util_median:.0f}% of the time (median): "
                     "a larger training.batchSize (with the learning rate scaled), or fewer "
                     "GPUs (training.resources.gpusPerNode)")))
        if loading:
            finding.issues.append(UtilizationIssue(
                kind="dataLoadingBound", units=loading, field="training.resources.cpu",
                current=spec.training.resources.cpu,
                suggested=_cpu_text(parse_cpu(spec.training.resources.cpu) * 2),
                message=("the GPUs waited while the CPUs were saturated: input loading is the "
                         "bottleneck; more cores for loader workers (training.resources.cpu), "
                         "or the data in memory (dataset.streaming: never)")))
    roomy = [u.name for u, m in gpu if m.gpu_memory_peak_gib is not None
             and m.gpu_memory_total_gib and m.gpu_memory_peak_gib
             < GPU_MEMORY_HEADROOM * m.gpu_memory_total_gib]
    if roomy:
        finding.issues.append(UtilizationIssue(
            kind="gpuMemoryHeadroom", units=roomy, field="training.batchSize",
            current=str(spec.training.batch_size), suggested=str(spec.training.batch_size * 2),
            message=(f"the units used under {GPU_MEMORY_HEADROOM:.0%} of the GPU's memory: "
                     "a larger training.batchSize, or a smaller GPU")))


def analyze_utilization(units: Sequence[UnitUse],
                        spec: TrainingJobSpec) -> UtilizationFinding | None:
    """The utilisation finding of a job from its units; None when nothing was measured and no
    unit was killed for memory."""
    measured = _measured(units)
    oom = [u for u in units if u.exit_reason == "OOMKilled"]
    if not measured and not oom:
        return None
    finding = UtilizationFinding(measured_units=len(measured))
    if oom:
        memory = spec.training.resources.memory
        finding.issues.append(UtilizationIssue(
            kind="oomKilled", units=[u.name for u in oom], field="training.resources.memory",
            current=memory, suggested=_memory_text(parse_memory_gib(memory) * 2),
            message=("killed for exceeding its memory limit (OOMKilled): raise "
                     f"training.resources.memory (e.g. {memory} -> "
                     f"{_memory_text(parse_memory_gib(memory) * 2)}), or stream the data "
                     "(dataset.streaming)")))
    _right_sizing(measured, spec, finding)
    _gpus(measured, spec, finding)
    return finding
