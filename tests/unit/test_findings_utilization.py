"""findings.utilization: pure rules on what units measured against what they requested."""

from __future__ import annotations

import itertools
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from kubetrain.api.results import UnitUsage
from kubetrain.api.spec import TrainingJobSpec
from kubetrain.findings.cost import Usage
from kubetrain.findings.utilization import UnitUse, analyze_utilization
from kubetrain.usage import UsageSampler, summarize


def _spec(cpu: str = "4", memory: str = "8Gi", gpus: int = 0) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({
        "dataset": {"builtin": "digits"}, "model": {"builtin": "cnn"},
        "training": {"batchSize": 64, "resources": {"cpu": cpu, "memory": memory,
                                                    "gpusPerNode": gpus}}})


def _unit(name: str = "train", cpu: float = 4, memory: float = 8, seconds: float = 600,
          gpus: int = 0, **usage: float) -> UnitUse:
    measured = UnitUsage(seconds=seconds, samples=100, **usage) if usage else None
    return UnitUse(name=name, requested=Usage("training", seconds, cpu=cpu, memory_gib=memory,
                                             gpus=gpus), sized=True, usage=measured)


def test_a_request_four_times_the_use_is_flagged_with_the_value_that_fits_and_the_saving() -> None:
    finding = analyze_utilization([_unit(cpu_p95=1.0, cpu_mean=0.9, memory_peak_gib=2.0)],
                                  _spec())
    assert finding is not None and finding.measured_units == 1
    assert finding.cpu_used_share == 0.25 and finding.memory_used_share == 0.25
    cpu = next(i for i in finding.issues if i.kind == "cpuOverRequested")
    assert (cpu.field, cpu.current, cpu.suggested) == ("training.resources.cpu", "4", "1.5")
    # 600 s at 2.5 cores fewer, at the default price per core-hour
    assert cpu.saving == pytest.approx(600 / 3600 * 2.5 * 0.031611, rel=1e-3)
    memory = next(i for i in finding.issues if i.kind == "memoryOverRequested")
    assert (memory.current, memory.suggested) == ("8Gi", "2.75Gi")  # 2 GiB x 1.3, rounded up
    assert memory.saving is not None and memory.saving > 0


def test_well_sized_units_get_the_shares_and_no_issue() -> None:
    finding = analyze_utilization([_unit(cpu_p95=3.5, memory_peak_gib=5.0)], _spec())
    assert finding is not None and finding.issues == []
    assert finding.cpu_used_share == 0.875


def test_the_most_demanding_unit_sizes_the_field() -> None:
    # a trial asks for one worker's share; the training gang for the whole; the field fits both
    units = [_unit("trial-0", cpu=1, memory=2, cpu_p95=0.9, memory_peak_gib=1.5),
             _unit("train", cpu_p95=1.0, memory_peak_gib=1.0)]
    finding = analyze_utilization(units, _spec())
    assert finding is not None and finding.cpu_used_share == 0.9
    assert not [i for i in finding.issues if i.kind.endswith("OverRequested")]


def test_oomkilled_unit_is_told_with_a_larger_request() -> None:
    oom = UnitUse(name="train", requested=Usage("training", 30, cpu=4, memory_gib=8),
                  sized=True, exit_reason="OOMKilled")
    finding = analyze_utilization([oom], _spec())
    assert finding is not None
    [issue] = finding.issues
    assert issue.kind == "oomKilled" and issue.suggested == "16Gi"


def test_an_idle_gpu_starved_by_loading_is_flagged_with_the_idle_cost() -> None:
    starved = _unit(gpus=1, seconds=3600, cpu_p95=4.0, memory_peak_gib=6, gpu_util_median=20,
                    gpu_memory_peak_gib=4, gpu_memory_total_gib=80, cpu_mean_while_gpu_low=3.8)
    finding = analyze_utilization([starved], _spec(gpus=1))
    assert finding is not None and finding.gpu_util_median == 20
    kinds = {i.kind: i for i in finding.issues}
    assert set(kinds) == {"lowGpuUtilization", "dataLoadingBound", "gpuMemoryHeadroom"}
    assert kinds["lowGpuUtilization"].saving == pytest.approx(0.8 * 2.933908, rel=1e-4)
    well_fed = _unit(gpus=1, seconds=3600, cpu_p95=1.5, memory_peak_gib=6, gpu_util_median=93,
                     gpu_memory_peak_gib=60, gpu_memory_total_gib=80,
                     cpu_mean_while_gpu_low=1.0)
    finding = analyze_utilization([well_fed], _spec(gpus=1))
    assert finding is not None and not [i for i in finding.issues if "Gpu" in i.kind]


def test_nothing_measured_is_no_finding() -> None:
    assert analyze_utilization([_unit()], _spec()) is None
    short = UnitUse(name="train", requested=Usage("training", 1), sized=True,
                    usage=UnitUsage(samples=2, cpu_p95=0.1, memory_peak_gib=0.1))
    assert analyze_utilization([short], _spec()) is None


def test_summary_of_a_recorded_series() -> None:
    samples = [{"t": 0.5 * i, "cpu": c, "memory": m * 2**30}
               for i, (c, m) in enumerate([(1.0, 1.0), (2.0, 1.5), (1.5, 1.2), (0.5, 1.1)])]
    summary = summarize(samples, 2.0)
    assert summary["cpu_mean"] == 1.25 and summary["cpu_p95"] == 2.0
    assert summary["memory_peak_gib"] == 1.5 and summary["samples"] == 4
    assert UnitUsage.model_validate(summary).cpu_p95 == 2.0


def test_the_sampler_counts_the_cpu_seconds_of_a_child_process(tmp_path: Path) -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler = UsageSampler(interval=0.2, series_path=tmp_path / "usage.jsonl").start()
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\n"
                             "while time.time() - t < 3: pass"])
    busy.wait()
    summary = sampler.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    series = [json.loads(line) for line in (tmp_path / "usage.jsonl").read_text().splitlines()]
    assert len(series) == summary["samples"] >= 10
    # cores x seconds between samples: the child's CPU seconds, less at most its last interval
    # (a process that ended takes that with it); the machine may be shared, so not "1 core"
    seen = sum(s["cpu"] * (s["t"] - p["t"]) for p, s in itertools.pairwise(series))
    seen += series[0]["cpu"] * series[0]["t"]
    assert used - 0.5 <= seen <= used * 1.1 + 0.1, (seen, used)
    assert summary["memory_peak_gib"] > 0.005
