"""One contract, every engine: memory, memory with a persister, Redis on a real redis-server.

Each test runs against each engine (the ``engine`` fixture); the manager's behaviour that
depends on the engine runs against each too (``manager``).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator, Sequence

import gevent
import pytest
from conftest import redis_engine_class, wait_until

from wsgi_longpoll import LongpollManager
from wsgi_longpoll.engines import Engine, MemoryEngine, Position
from wsgi_longpoll.errors import IdempotencyConflict
from wsgi_longpoll.event import Event


@pytest.fixture
def engine(make_engine: Callable[..., Engine]) -> Engine:
    return make_engine()


class Recorder:
    """A listener that keeps every batch it is handed."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[Position, Event]]] = []
        self._lock = threading.Lock()

    def __call__(self, batch: Sequence[tuple[Position, Event]]) -> None:
        with self._lock:
            self.batches.append(list(batch))

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return [event for batch in self.batches for _, event in batch]


def test_every_engine_implements_the_whole_interface() -> None:
    abstract = {
        name: inspect.signature(getattr(Engine, name))
        for name in Engine.__abstractmethods__
    }
    for engine_class in (MemoryEngine, redis_engine_class()):
        assert not engine_class.__abstractmethods__, engine_class
        for name, signature in abstract.items():
            implemented = inspect.signature(getattr(engine_class, name))
            assert list(implemented.parameters) == list(signature.parameters), (engine_class, name)


def test_a_cursor_resumes_after_the_later_of_since_time_and_last_id(engine: Engine) -> None:
    """docs/protocol.md, where we differ on purpose: a ``since_time`` earlier than the
    ``last_id`` event resumes after that event (golongpoll: after ``since_time``)."""
    engine.append("c", 1)
    seen = engine.append("c", 2)
    new = engine.append("c", 3)
    assert engine.read(["c"], seen.timestamp - 1000, seen.id).events == [new]


def test_reads_several_categories_in_publish_order(engine: Engine) -> None:
    published = [engine.append(category, n) for n in range(5) for category in "abc"]
    found = engine.read(["c", "a", "b"], 0, None)
    assert found.events == published
    assert found.gaps == []
    assert engine.read(["a"], 0, None).events == [e for e in published if e.category == "a"]


def test_resumes_after_a_cursor_in_the_same_millisecond(engine: Engine) -> None:
    published = [engine.append(category, n) for n in range(4) for category in "ab"]
    for index, seen in enumerate(published):
        after = engine.read(["a", "b"], seen.timestamp, seen.id).events
        assert after == published[index + 1 :]


def test_reading_without_a_cursor_gives_only_the_position_of_now(engine: Engine) -> None:
    engine.append("a", 1)
    found = engine.read(["a"], None, None)
    assert found.events == [] and found.gaps == []
    recorder = Recorder()
    engine.bind(recorder)
    engine.watch(["a"], found.position)
    try:
        later = engine.append("a", 2)
        wait_until(lambda: recorder.events == [later])
    finally:
        engine.unwatch(["a"])


def test_watchers_get_live_events_in_position_order_across_categories(engine: Engine) -> None:
    recorder = Recorder()
    engine.bind(recorder)
    start = engine.read(["a", "b"], None, None).position
    engine.watch(["a", "b"], start)
    try:
        published = [engine.append(category, n) for n in range(20) for category in "ab"]
        engine.append("unwatched", 0)
        wait_until(lambda: len(recorder.events) >= 40)
        assert recorder.events == published
        positions = [position for batch in recorder.batches for position, _ in batch]
        assert positions == sorted(positions) and positions[0] > start
    finally:
        engine.unwatch(["a", "b"])


def test_a_watch_catches_up_with_what_came_after_its_position(engine: Engine) -> None:
    recorder = Recorder()
    engine.bind(recorder)
    start = engine.read(["a"], None, None).position
    missed = engine.append("a", "published between the read and the watch")
    engine.watch(["a"], start)
    try:
        wait_until(lambda: recorder.events == [missed])
    finally:
        engine.unwatch(["a"])


def test_unwatched_categories_are_not_delivered(engine: Engine) -> None:
    recorder = Recorder()
    engine.bind(recorder)
    engine.watch(["a"], engine.read(["a"], None, None).position)
    engine.unwatch(["a"])
    engine.watch(["b"], engine.read(["b"], None, None).position)
    try:
        engine.append("a", 1)
        marker = engine.append("b", 2)
        wait_until(lambda: marker in recorder.events)
        assert recorder.events == [marker]
    finally:
        engine.unwatch(["b"])


def test_keeps_the_newest_events_and_reports_the_gap(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(max_event_buffer_size=3)
    published = [engine.append("a", n) for n in range(5)]
    assert engine.events("a") == published[2:]
    found = engine.read(["a"], published[0].timestamp, published[0].id)
    assert found.events == published[2:]
    [gap] = found.gaps
    assert (gap.category, gap.since_time, gap.last_id) == (
        "a", published[1].timestamp, published[1].id
    )
    assert engine.read(["a"], published[1].timestamp, published[1].id).gaps == []


def test_counts_categories_and_events(engine: Engine) -> None:
    assert engine.counts() == (0, 0)
    for category in "aab":
        engine.append(category, category)
    assert engine.counts() == (2, 3)
    assert engine.events("nothing") == []


def test_an_idempotency_key_stores_a_retried_append_once(engine: Engine) -> None:
    first = engine.append("a", "once", idempotency_key="key-1")
    assert engine.append("a", "once", idempotency_key="key-1") == first
    other = engine.append("b", "once", idempotency_key="key-1")  # keys are per category
    fresh = engine.append("a", "twice", idempotency_key="key-2")
    assert engine.read(["a", "b"], 0, None).events == [first, other, fresh]


def test_an_idempotency_key_reused_for_other_data_is_refused(engine: Engine) -> None:
    first = engine.append("a", {"id": 7, "items": [1, 2]}, idempotency_key="key-1")
    # The same data as JSON values (object keys in another order): the same event.
    assert engine.append("a", {"items": [1, 2], "id": 7}, idempotency_key="key-1") == first
    for other in ({"id": 8, "items": [1, 2]}, {"id": 7, "items": [2, 1]}, "text",
                  {"id": 7.0, "items": [1, 2]}, {"id": True, "items": [1, 2]}):
        with pytest.raises(IdempotencyConflict, match="'key-1'") as refused:
            engine.append("a", other, idempotency_key="key-1")
        assert (refused.value.key, refused.value.category) == ("key-1", "a")
        assert isinstance(refused.value, ValueError)
    assert engine.read(["a"], 0, None).events == [first]


def test_refuses_values_json_cannot_hold(engine: Engine) -> None:
    with pytest.raises(TypeError):
        engine.append("a", object())
    with pytest.raises(ValueError):
        engine.append("a", float("nan"))
    assert engine.counts() == (0, 0)


# -- the manager on every engine ----------------------------------------------------------


@pytest.fixture
def manager(engine: Engine) -> Iterator[LongpollManager]:
    manager = LongpollManager(engine=engine)
    yield manager
    manager.close()


def test_manager_wakes_a_subscriber_of_several_categories_in_publish_order(
    manager: LongpollManager,
) -> None:
    got = gevent.spawn(manager.subscribe, ["a", "b"], 10)
    with gevent.Timeout(10):
        while manager.waiting_count() < 1:
            gevent.sleep(0.001)
    published = [manager.publish(category, n) for n in range(3) for category in "ba"]
    delivery = got.get(timeout=10)
    assert delivery.events == published[: len(delivery.events)]
    assert delivery.events and manager.waiting_count() == 0


def test_manager_followers_get_every_event_once_under_concurrent_publishers(
    manager: LongpollManager,
) -> None:
    """Four greenlets publish to three categories while one cursor follows all three."""
    per_publisher = 60
    seen: list[Event] = []

    def follow() -> None:
        since_time, last_id = 0, None
        while len(seen) < 4 * per_publisher:
            delivery = manager.subscribe(["x", "y", "z"], 5, since_time, last_id)
            seen.extend(delivery.events)
            if delivery.events:
                since_time, last_id = delivery.events[-1].timestamp, delivery.events[-1].id

    def publish(name: str) -> None:
        for n in range(per_publisher):
            manager.publish("xyz"[n % 3], f"{name}-{n}")
            gevent.sleep(0)

    follower = gevent.spawn(follow)
    gevent.joinall([gevent.spawn(publish, f"p{n}") for n in range(4)], timeout=30)
    follower.join(timeout=30)
    assert follower.successful(), follower.exception
    assert len(seen) == len({event.id for event in seen}) == 4 * per_publisher
    assert seen == manager.engine.read(["x", "y", "z"], 0, None).events


def test_manager_refuses_engine_options_beside_an_engine(engine: Engine) -> None:
    with pytest.raises(ValueError, match="engine= excludes"):
        LongpollManager(max_event_buffer_size=3, engine=engine)


def test_a_subscriber_killed_while_it_registers_leaves_nothing_behind(
    manager: LongpollManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(categories: Sequence[str], after: Position) -> None:
        raise gevent.GreenletExit  # as a kill or a timeout lands in the engine's watch

    monkeypatch.setattr(manager.engine, "watch", interrupted)
    with pytest.raises(gevent.GreenletExit):
        manager.subscribe("c", 10)
    assert manager.waiting_count() == 0
