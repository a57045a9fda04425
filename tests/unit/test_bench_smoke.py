"""The training-throughput benchmark runs end to end (tiny settings; no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "train_throughput.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kubetrain_bench_train_throughput", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


def test_quick_run_gives_a_row_per_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench()
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    try:
        assert bench.main(["--quick", "--repeats", "1", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)  # the benchmark sets it process-wide
    results = json.loads(out.read_text())["results"]
    expected = [c.name for c in bench.cpu_cases(quick=True)]
    assert [r["case"] for r in results] == expected
    for row in results:
        for side in ("kubetrain", "hand-written"):
            assert row[side]["samples_per_s"] > 0
            assert len(row[side]["all"]) == 1
        assert row["ratio"] > 0
    table = capsys.readouterr().out
    assert all(name in table for name in expected)


COST_BENCH = BENCH.parent / "tune_cost.py"


def test_cost_aware_tuning_bench_runs_both_arms_and_compares_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("kubetrain_bench_tune_cost", COST_BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    try:
        assert bench.main(["--datasets", "iris", "--seeds", "0", "--trials", "3",
                           "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)  # the benchmark sets it process-wide
    figures = json.loads(out.read_text())
    rows = {r["arm"]: r for r in figures["results"]}
    assert set(rows) == set(bench.ARMS) == {"single", "cost-aware", "cost-nsga2"}
    for row in rows.values():
        assert row["final_cost"] > 0 and 0 <= row["test_accuracy"] <= 1
        assert set(row["params"]) == {"epochs", "learningRate", "batchSize",
                                      "model.hiddenUnits"}
    assert rows["single"]["selection"] is None and rows["cost-aware"]["selection"] is not None
    assert [v["arm"] for v in figures["verdicts"]] == ["cost-aware", "cost-nsga2"]
    pair = figures["verdicts"][0]["pairs"][0]
    assert pair["cost_ratio"] == pytest.approx(
        rows["cost-aware"]["final_cost"] / rows["single"]["final_cost"])
    assert "--- cost-nsga2 against single" in capsys.readouterr().out


def test_usage_overhead_bench_times_both_arms_and_the_sampler(tmp_path: Path) -> None:
    path = BENCH.parent / "usage_overhead.py"
    spec = importlib.util.spec_from_file_location("kubetrain_bench_usage_overhead", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        row = module.main(["--rounds", "1", "--steps", "3", "--json", str(tmp_path / "o.json")])
    finally:
        torch.set_num_threads(threads)
    assert row["step_ms_off"] > 0 and row["step_ms_on"] > 0 and row["sample_ms"] > 0
    assert json.loads((tmp_path / "o.json").read_text()) == row


def test_gpu_bench_cpu_mode_gives_every_row_beside_its_baseline(tmp_path: Path) -> None:
    """bench/gpu.sh itself, in its CPU mode: the same code paths as on a GPU, small (about a
    minute). No speed is checked: the goals are the GPU's."""
    path = BENCH.parent / "gpu.py"
    spec = importlib.util.spec_from_file_location("kubetrain_bench_gpu", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)  # for its case names and stages only
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    out = tmp_path / "gpu.json"
    run = subprocess.run(["bash", str(BENCH.parent / "gpu.sh"), "--cpu", "--json", str(out)],
                         env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["env"]["device"] == "cpu"
    rows = figures["rows"]
    cases = [c.name for c in bench.trainer_cases(bench.Sizes.for_device(False))]
    trainer = [(r["case"].split()[0], r["baseline"]) for r in rows if r["stage"] == "trainer"]
    assert trainer == [(c, b) for c in cases for b in ("hand-written best", "naive fp32 eager")]
    by_stage = {stage: [r for r in rows if r["stage"] == stage] for stage in bench.STAGES}
    assert [r["baseline"] for r in by_stage["augment"]] == ["raw kornia (on device)"]
    assert [r["ours"] for r in by_stage["explain"]] == ["kubetrain gradient",
                                                        "completeness error"]
    assert [r["case"].split()[0] for r in by_stage["findings"]] == ["starved", "well-fed"]
    assert [r["case"] for r in by_stage["units"]] == ["augment-0", "trial-0", "train",
                                                      "explain"]
    assert all(r["ours"] == "ran on cpu" for r in by_stage["units"])
    for row in rows:
        if row["stage"] in ("trainer", "augment", "explain") and row["unit"] != "share":
            assert row["value"] > 0 and row["baseline_value"] > 0 and row["ratio"] > 0, row
        assert row["met"] is None  # the goals are the GPU's
    assert "gpu.sh: python" in run.stdout  # the script's own preamble ran
    assert all(case in run.stdout for case in cases)
