"""The queue in front of the pool on a real cluster: five tiny jobs through a limit of two.

The operator runs as its own process with KUBETRAIN_MAX_RUNNING_JOBS=2. Four jobs are created
one after another (distinct creation seconds), then one with a higher priority and one
suspended. Never more than two run (seen in every status snapshot, in the jobs' start and
completion times, and in their training pods' lives), the waiting ones show their places, the
urgent one starts before the older ones, the rest in creation order, all succeed, and the
suspended one takes no place. 50 to 70 s on the 2-core test machine.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from k8s import (
    apply_job,
    get_json,
    kubectl,
    small_job,
    start_operator,
    wait_for,
    wait_for_events,
)

pytestmark = pytest.mark.cluster
LIMIT = 2
# Created in this order, a second apart; their names sort the other way, so that a tie broken
# by name instead of creation time would show.
FIFO = ["q-d", "q-c", "q-b", "q-a"]
URGENT = "q-urgent"


@pytest.fixture
def queued_operator(namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KUBETRAIN_MAX_RUNNING_JOBS", str(LIMIT))
    proc = start_operator(namespace)
    yield
    kubectl("delete", "trainingjobs.kubetrain.io", "--all", "-n", namespace, "--wait=false",
            check=False)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def tiny_job(name: str, **policy: Any) -> dict[str, Any]:
    manifest = small_job(name, runPolicy=policy)
    manifest["spec"]["training"]["epochs"] = 2
    return manifest


def _time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most half-open [start, end) intervals that overlap at one moment."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in edges:  # an end at the same second as a start comes first
        now += step
        most = max(most, now)
    return most


def test_jobs_over_the_limit_wait_their_turn(namespace: str, queued_operator: None) -> None:
    for name in FIFO:
        apply_job(namespace, tiny_job(name))
        time.sleep(1.1)
    apply_job(namespace, tiny_job(URGENT, priority=10))
    apply_job(namespace, tiny_job("q-paused", suspend=True))
    names = [*FIFO, URGENT]
    snapshots: list[dict[str, dict[str, Any]]] = []

    def all_finished() -> bool:
        items = get_json("trainingjobs", "-n", namespace)["items"]
        snapshot = {j["metadata"]["name"]: j.get("status") or {} for j in items}
        snapshots.append(snapshot)
        return all(snapshot.get(n, {}).get("phase") in ("Succeeded", "Failed") for n in names)

    wait_for(all_finished, 420, "the five jobs to finish", interval=1)
    final = snapshots[-1]
    for name in names:
        assert final[name]["phase"] == "Succeeded", json.dumps(final[name])[:1500]
        assert "queue" not in final[name]
    assert final["q-paused"]["phase"] == "Suspended"
    # Never more than LIMIT running, in any snapshot of the statuses.
    assert max(sum(s.get("phase") == "Running" for s in snap.values()) for snap in snapshots) \
        <= LIMIT
    # Nor by the jobs' own start and completion times.
    spans = [(_time(final[n]["startTime"]), _time(final[n]["completionTime"])) for n in names]
    assert _most_at_once(spans) == LIMIT
    # Nor by their training pods' lives (created when admitted, ended before completion).
    pods = get_json("pods", "-n", namespace, "-l", "kubetrain.io/stage=training")["items"]
    lives = [(_time(p["metadata"]["creationTimestamp"]),
              _time(p["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]))
             for p in pods]
    assert len(lives) == len(names) and _most_at_once(lives) == LIMIT
    # The waiting ones showed their places: the urgent one first, then by creation time.
    places = [{n: s["queue"]["position"] for n, s in snap.items() if s.get("queue")}
              for snap in snapshots]
    assert {URGENT: 1, "q-b": 2, "q-a": 3} in places, places[:20]
    queued = [s for snap in snapshots for s in snap.values() if s.get("phase") == "Queued"]
    assert queued and all(c["reason"] == "Queued" and "jobs run cluster-wide" in c["message"]
                          for s in queued for c in s["conditions"] if c["type"] == "Queued")
    # Start order: the first two at once, then the urgent one, then first come first served.
    starts = {n: _time(final[n]["startTime"]) for n in names}
    assert max(starts["q-d"], starts["q-c"]) <= starts[URGENT] <= starts["q-b"] <= starts["q-a"]
    assert starts[URGENT] >= min(_time(final[n]["completionTime"]) for n in ("q-d", "q-c"))
    first = min(starts.values())
    print(f"queue: {len(snapshots)} snapshots; start, end (s after the first start): "
          + ", ".join(f"{n} {s - first:.0f}-{e - first:.0f}"
                      for n, (s, e) in sorted(zip(names, spans, strict=True),
                                              key=lambda i: i[1])))
    wait_for_events(namespace, "q-a", {("Normal", "Queued"), ("Normal", "Admitted")})
