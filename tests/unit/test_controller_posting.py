"""A reconcile's Events are held until reconciles have paused (bench/operator_scale.py: a
burst's Events come after its children)."""

from __future__ import annotations

import threading

import pytest
from kubetrain.controller.posting import HeldEvents
from support import FakeClock


def test_events_wait_until_no_reconcile_has_run_for_the_quiet_period() -> None:
    posted: list[str] = []
    clock = FakeClock()
    events = HeldEvents(max_delay=5, quiet=1, clock=clock, flusher=False)
    events.begin()
    events.begin()
    events.hold(lambda: posted.append("a"))
    events.end()  # another reconcile still runs
    assert events.flush() == 5.0 and posted == []
    events.hold(lambda: posted.append("b"))
    clock.now = 0.5
    events.end()  # none runs now, but one may follow within the quiet period
    assert events.flush() == 1.0 and posted == []
    clock.now = 1.2
    events.begin()  # it did: the wait starts again when it ends
    events.end()
    clock.now = 2.1
    assert events.flush() == pytest.approx(0.1) and posted == []
    clock.now = 2.2
    assert events.flush() is None
    assert posted == ["a", "b"] and events.held == 0


def test_an_event_after_a_quiet_period_is_posted_at_once() -> None:
    posted: list[str] = []
    clock = FakeClock()
    events = HeldEvents(quiet=1, clock=clock, flusher=False)
    events.hold(lambda: posted.append("a"))  # no reconcile ever ran
    assert posted == ["a"]
    events.begin()
    events.end()
    clock.now = 1.0
    events.hold(lambda: posted.append("b"))
    assert posted == ["a", "b"]


def test_under_a_steady_stream_of_reconciles_events_wait_at_most_max_delay() -> None:
    posted: list[str] = []
    clock = FakeClock()
    events = HeldEvents(max_delay=5, quiet=1, clock=clock, flusher=False)
    events.begin()  # one reconcile that never ends within the test
    events.hold(lambda: posted.append("a"))
    clock.now = 4.9
    events.begin()
    events.hold(lambda: posted.append("b"))
    events.end()
    assert events.flush() is not None and posted == []
    clock.now = 5.0
    assert events.flush() is None
    assert posted == ["a", "b"]


def test_the_flusher_thread_posts_what_comes_due() -> None:
    done = threading.Event()
    events = HeldEvents(max_delay=5, quiet=0.05)
    events.begin()
    events.hold(done.set)
    events.end()
    assert done.wait(timeout=5)
    assert events.held == 0


def test_an_event_is_posted_even_when_its_reconcile_fails() -> None:
    done = threading.Event()
    events = HeldEvents(quiet=0.05)
    events.begin()
    try:
        events.hold(done.set)
        raise RuntimeError("API down")
    except RuntimeError:
        pass
    finally:
        events.end()
    assert done.wait(timeout=5)


def test_an_event_that_cannot_be_posted_does_not_stop_the_others() -> None:
    done = threading.Event()

    def broken() -> None:
        raise ValueError("kopf's queue is gone")

    events = HeldEvents(quiet=0.05)
    events.begin()
    events.hold(broken)
    events.end()
    events.begin()
    events.hold(done.set)  # after the flusher met the broken one
    events.end()
    assert done.wait(timeout=5)


def test_an_event_names_its_training_job_and_is_posted_by_the_operators_client(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Posted with the operator's own client (the periodic pass runs outside kopf's handlers,
    where kopf's event queue is out of reach), only when called, its message cut to 1,000."""
    from kubetrain.controller import kube, posting

    created: list[tuple[object, str, dict[str, object]]] = []

    class FakeKube:
        def create(self, resource: object, namespace: str, body: dict[str, object]) -> None:
            created.append((resource, namespace, body))

    monkeypatch.setattr(kube, "api", lambda: FakeKube())
    job = {"metadata": {"name": "digits", "namespace": "team-a", "uid": "u-1"}}
    post = posting.job_event(job, type="Warning", reason="StageFailed", message="x" * 1500)
    assert created == []
    post()
    ((resource, namespace, event),) = created
    assert (resource, namespace) == (kube.EVENTS, "team-a")
    assert event["involvedObject"] == {"apiVersion": "kubetrain.io/v1alpha1",
                                       "kind": "TrainingJob", "name": "digits",
                                       "namespace": "team-a", "uid": "u-1"}
    assert (event["type"], event["reason"], len(str(event["message"]))) == (
        "Warning", "StageFailed", 1000)
    assert event["metadata"] == {"generateName": "digits.", "namespace": "team-a"}
