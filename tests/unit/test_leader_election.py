"""Leader election (kubetrain.controller.leader): the pure decisions, and two replicas driven
against one in-memory Lease store on a simulated clock (the cluster run is
tests/integration/test_standby_operator.py)."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubetrain.api.resource import ManifestError
from kubetrain.cli import main
from kubetrain.controller.leader import Conflict, Elector, lease_owner, serve_standby_health
from kubetrain.controller.lease import (
    Action,
    ElectionConfig,
    LeaseRecord,
    Sighting,
    claim,
    decide,
    election_config,
    must_stand_down,
    sight,
    timing_problems,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def lease(holder: str | None, version: str = "1", transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder=holder, lease_seconds=10, acquire_time=T0, renew_time=T0,
                       transitions=transitions, resource_version=version)


def test_decide() -> None:
    seen = Sighting("1", since=100.0)
    assert decide(None, "a", None, 0) == Action.CREATE
    assert decide(lease("a"), "a", seen, 100) == Action.RENEW  # also a restarted container
    assert decide(lease(None), "b", seen, 100) == Action.ACQUIRE  # released
    assert decide(lease("a"), "b", seen, 109.9) == Action.WAIT
    assert decide(lease("a"), "b", seen, 110) == Action.ACQUIRE  # unchanged for leaseSeconds
    # a version not seen before is never stale, however old its renewTime
    assert decide(lease("a", version="2"), "b", seen, 500) == Action.WAIT
    assert decide(lease("a"), "b", None, 500) == Action.WAIT


def test_sight_keeps_the_first_time_a_version_was_seen() -> None:
    first = sight(None, lease("a"), 5.0)
    assert first == Sighting("1", 5.0)
    assert sight(first, lease("a"), 9.0) is first
    assert sight(first, lease("a", version="2"), 9.0) == Sighting("2", 9.0)
    assert sight(first, None, 9.0) is None


def test_must_stand_down_at_the_renew_deadline() -> None:
    assert not must_stand_down(100.0, 106.9, 7)
    assert must_stand_down(100.0, 107.0, 7)


def test_claim_counts_transitions_and_keeps_the_acquire_time_on_renewal() -> None:
    now = T0 + timedelta(seconds=30)
    created = claim(None, "a", now, 10)
    assert created == {"holderIdentity": "a", "leaseDurationSeconds": 10,
                       "acquireTime": "2026-01-01T00:00:30.000000Z",
                       "renewTime": "2026-01-01T00:00:30.000000Z", "leaseTransitions": 0}
    renewed = claim(lease("a", transitions=2), "a", now, 10)
    assert renewed["acquireTime"] == "2026-01-01T00:00:00.000000Z"
    assert renewed["leaseTransitions"] == 2
    taken = claim(lease("a", transitions=2), "b", now, 10)
    assert (taken["holderIdentity"], taken["leaseTransitions"]) == ("b", 3)
    assert taken["acquireTime"] == taken["renewTime"]


def test_bad_timings_name_the_flag() -> None:
    assert timing_problems(10, 7, 2) == []
    assert any("--renew-deadline-seconds" in p for p in timing_problems(10, 10, 2))
    assert any("--retry-seconds" in p for p in timing_problems(10, 7, 7))
    assert any("--lease-seconds" in p for p in timing_problems(2.5, 1, 0.5))
    with pytest.raises(ManifestError, match="--lease-namespace"):
        election_config(lease_name=None, namespace=None, identity=None, lease_seconds=10,
                        renew_deadline_seconds=7, retry_seconds=2, environ={})
    config = election_config(lease_name=None, namespace=None, identity=None, lease_seconds=10,
                             renew_deadline_seconds=7, retry_seconds=2,
                             environ={"POD_NAME": "op-1", "POD_NAMESPACE": "kt"})
    assert (config.lease_name, config.namespace, config.identity) == \
        ("kubetrain-operator", "kt", "op-1")


def test_operator_command_refuses_bad_timings_before_starting(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["operator", "--leader-elect", "--lease-namespace", "kt",
                 "--lease-seconds", "5", "--renew-deadline-seconds", "6"])
    assert code == 2
    assert "--renew-deadline-seconds: 6.0 must be less than --lease-seconds" in \
        capsys.readouterr().err


class Store:
    """One Lease with the API server's optimistic concurrency (resourceVersion)."""

    def __init__(self) -> None:
        self.lease: LeaseRecord | None = None
        self.version = 0
        self.down: set[str] = set()  # replicas cut off from the API server

    def _write(self, spec: dict[str, Any]) -> LeaseRecord:
        self.version += 1
        def parse(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value else None

        self.lease = LeaseRecord(holder=spec["holderIdentity"],
                                 lease_seconds=spec["leaseDurationSeconds"],
                                 acquire_time=parse(spec["acquireTime"]),
                                 renew_time=parse(spec["renewTime"]),
                                 transitions=spec["leaseTransitions"],
                                 resource_version=str(self.version))
        return self.lease

    def view(self, who: str) -> StoreView:
        return StoreView(self, who)


class StoreView:
    def __init__(self, store: Store, who: str) -> None:
        self.store, self.who = store, who

    def _reach(self) -> None:
        if self.who in self.store.down:
            raise ConnectionError("API server unreachable")

    def read(self) -> LeaseRecord | None:
        self._reach()
        return self.store.lease

    def create(self, spec: dict[str, Any]) -> LeaseRecord:
        self._reach()
        if self.store.lease is not None:
            raise Conflict("exists")
        return self.store._write(spec)

    def replace(self, spec: dict[str, Any], resource_version: str,
                timeout: float) -> LeaseRecord:
        self._reach()
        if self.store.lease is None or self.store.lease.resource_version != resource_version:
            raise Conflict("changed")
        return self.store._write(spec)

    def delete(self, resource_version: str, timeout: float) -> None:
        self._reach()
        if self.store.lease is not None and self.store.lease.resource_version != \
                resource_version:
            raise Conflict("changed")
        self.store.lease = None


class World:
    """Replicas on one simulated clock, each acting every retrySeconds like the real threads."""

    def __init__(self) -> None:
        self.now = 0.0
        self.store = Store()
        self.config = ElectionConfig(lease_name="l", namespace="n", identity="",
                                     lease_seconds=10, renew_deadline_seconds=7,
                                     retry_seconds=2)
        self.electors: dict[str, Elector] = {}
        self.alive: set[str] = set()
        self.active: dict[str, list[list[float]]] = {}  # replica: [start, end] windows
        self.stood_down: dict[str, float] = {}

    def add(self, name: str) -> Elector:
        def stand_down(reason: str) -> None:
            self.stood_down[name] = self.now
            self.stop(name)

        elector = Elector(replace(self.config, identity=name), self.store.view(name),
                          clock=lambda: self.now,
                          wall=lambda: T0 + timedelta(seconds=self.now),
                          sleep=lambda s: None, stand_down=stand_down)
        self.electors[name] = elector
        self.alive.add(name)
        self.active[name] = []
        return elector

    def stop(self, name: str) -> None:  # SIGKILL, or the exit on standing down
        self.alive.discard(name)
        if self.active[name] and self.active[name][-1][1] == float("inf"):
            self.active[name][-1][1] = self.now

    def run(self, until: float, step: float = 0.1) -> None:
        while self.now < until - 1e-9:
            self.now = round(self.now + step, 6)
            tick = abs(self.now / self.config.retry_seconds
                       - round(self.now / self.config.retry_seconds)) < 1e-6
            for name in sorted(self.alive):
                elector = self.electors[name]
                if elector.leading:
                    elector.check_deadline()
                    if tick and name in self.alive:
                        elector.renew_once()
                elif tick and elector.try_acquire():
                    self.active[name].append([self.now, float("inf")])

    def overlaps(self) -> list[tuple[str, str]]:
        windows = [(n, w) for n, ws in self.active.items() for w in ws]
        return [(a, b) for i, (a, wa) in enumerate(windows) for b, wb in windows[i + 1:]
                if wa[0] < wb[1] and wb[0] < wa[1]]


def test_one_active_and_the_standby_takes_over_after_a_kill() -> None:
    world = World()
    world.add("a")
    world.add("b")
    world.run(60)
    assert [n for n, e in world.electors.items() if e.leading] == ["a"]  # b never took it
    assert world.store.lease is not None and world.store.lease.holder == "a"
    killed = world.now
    world.stop("a")
    world.run(90)
    assert world.electors["b"].leading and world.store.lease.holder == "b"
    takeover = world.active["b"][0][0] - killed
    assert 8 <= takeover <= 12.5, takeover  # leaseSeconds after b saw a's last renewal
    assert world.store.lease.transitions == 1
    assert world.overlaps() == []


def test_a_holder_cut_off_from_the_api_server_stops_before_the_standby_starts() -> None:
    world = World()
    world.add("a")
    world.run(20)
    world.add("b")
    world.run(40)
    world.store.down.add("a")  # a cannot renew; b still reads the Lease
    world.run(80)
    assert world.stood_down["a"] < world.active["b"][0][0]
    assert world.stood_down["a"] - world.active["a"][0][0] > 0
    assert world.overlaps() == []


def test_a_holder_that_finds_the_lease_taken_stops_at_once() -> None:
    world = World()
    world.add("a")
    world.run(10)
    record = world.store.lease
    assert record is not None
    world.store._write(claim(record, "intruder", T0, 10))  # e.g. a replica with a stale view
    world.run(12)
    assert world.stood_down["a"] <= 12 and not world.electors["a"].leading


def test_release_lets_the_standby_take_over_at_its_next_retry() -> None:
    world = World()
    world.add("a")
    world.run(10)
    world.add("b")
    world.run(20)
    world.electors["a"].release()
    world.stop("a")
    assert world.store.lease is None  # released: nothing left after an uninstall
    world.run(22.1)
    assert world.active["b"] and world.active["b"][0][0] - 20 <= 2
    assert world.store.lease is not None and world.store.lease.holder == "b"


def test_the_standby_answers_the_liveness_probe() -> None:
    server = serve_standby_health("http://127.0.0.1:0/healthz")
    port = server.server_address[1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200 and b"standby" in response.read()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    finally:
        server.shutdown()
        server.server_close()


def test_the_lease_is_owned_by_the_holders_pod_in_a_pod_only() -> None:
    """An uninstall deletes the pods; the garbage collector then deletes their Lease."""
    assert lease_owner({"POD_NAME": "op-1", "POD_UID": "u-1"}) == {
        "apiVersion": "v1", "kind": "Pod", "name": "op-1", "uid": "u-1"}
    assert lease_owner({"POD_NAME": "op-1"}) is None
    assert lease_owner({}) is None
