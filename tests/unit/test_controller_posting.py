"""A reconcile's Events are held until no reconcile runs (bench/operator_scale.py: a burst's
Events come after its children)."""

from __future__ import annotations

from kubetrain.controller.posting import HeldEvents


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_events_wait_until_no_reconcile_runs() -> None:
    posted: list[str] = []
    events = HeldEvents(max_delay=5, clock=Clock())
    events.begin()
    events.begin()
    events.hold(lambda: posted.append("a"))
    events.end()  # another reconcile still runs
    assert posted == []
    events.hold(lambda: posted.append("b"))
    events.end()
    assert posted == ["a", "b"]
    assert events.held == 0


def test_an_event_outside_a_reconcile_is_posted_at_once() -> None:
    posted: list[str] = []
    events = HeldEvents(clock=Clock())
    events.hold(lambda: posted.append("a"))
    assert posted == ["a"]


def test_under_a_steady_stream_of_reconciles_events_wait_at_most_max_delay() -> None:
    posted: list[str] = []
    clock = Clock()
    events = HeldEvents(max_delay=5, clock=clock)
    events.begin()  # one reconcile that never ends within the test
    events.begin()
    events.hold(lambda: posted.append("a"))
    clock.now = 4.9
    events.end()
    assert posted == []
    events.begin()
    events.hold(lambda: posted.append("b"))
    clock.now = 5.0
    events.end()
    assert posted == ["a", "b"]


def test_an_event_is_posted_even_when_its_reconcile_fails() -> None:
    posted: list[str] = []
    events = HeldEvents(clock=Clock())
    events.begin()
    try:
        events.hold(lambda: posted.append("a"))
        raise RuntimeError("API down")
    except RuntimeError:
        pass
    finally:
        events.end()
    assert posted == ["a"]
