"""bench/job_queue.py's figures from statuses and pod lives (the run itself needs a cluster)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "job_queue.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kubetrain_bench_job_queue", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


def at(second: int) -> str:
    return f"2026-01-01T10:{second // 60:02d}:{second % 60:02d}Z"


def test_summary_of_a_pool_of_two() -> None:
    bench = load_bench()
    # Four 10 s jobs through a limit of two; the third and fourth start 2 s after a place frees.
    spans = {"a": (0, 10), "b": (1, 11), "c": (12, 22), "d": (13, 23)}
    statuses = {n: {"phase": "Succeeded", "startTime": at(s), "completionTime": at(e)}
                for n, (s, e) in spans.items()}
    created = bench.seconds(at(0))
    lives = [(bench.seconds(at(s)), bench.seconds(at(e)) - 1) for s, e in spans.values()]
    summary = bench.summarize(statuses, lives, 2, created, 2)
    assert (summary.succeeded, summary.most_running_spans, summary.most_running_pods) == (4, 2, 2)
    assert summary.job_seconds_sum == 40 and summary.ideal_seconds == 20
    assert summary.total_seconds == 23 and summary.ratio == pytest.approx(1.15)
    assert summary.mean_gap_seconds == 2


def test_an_overfilled_pool_shows() -> None:
    bench = load_bench()
    assert bench.most_at_once([(0, 10), (5, 15), (9, 12)]) == 3
    assert bench.most_at_once([(0, 10), (10, 20)]) == 1  # one ends as the next starts


def test_arguments_are_checked() -> None:
    with pytest.raises(SystemExit):
        load_bench().main(["--limit", "0"])
