"""LongpollManager: publishing, waiting subscribers, options, threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import gevent
import pytest

from wsgi_longpoll.engines import Engine, MemoryEngine
from wsgi_longpoll.event import Event
from wsgi_longpoll.manager import CapacityExceeded, LongpollManager, ManagerClosed


@pytest.fixture
def manager(make_engine: Callable[..., Engine]) -> Iterator[LongpollManager]:
    """A manager on each engine in turn (memory, memory with a persister, Redis)."""
    manager = LongpollManager(engine=make_engine())
    yield manager
    manager.close()



def wait_for_waiters(manager: LongpollManager, count: int, category: str | None = None) -> None:
    with gevent.Timeout(10):
        while manager.waiting_count(category) < count:
            gevent.sleep(0.001)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_longpoll_timeout_seconds": -1}, "max_longpoll_timeout_seconds"),
        ({"max_event_buffer_size": 0}, "max_event_buffer_size"),
        ({"event_time_to_live_seconds": -1}, "event_time_to_live_seconds"),
    ],
)
def test_invalid_options_are_refused_by_name(options: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LongpollManager(**options)  # type: ignore[arg-type]


def test_defaults_are_golongpolls() -> None:
    manager = LongpollManager()
    assert manager.max_longpoll_timeout_seconds == 110
    assert manager.max_event_buffer_size == 250
    assert manager.event_time_to_live_seconds is None
    assert manager.delete_event_after_first_retrieval is False
    assert LongpollManager(0).max_longpoll_timeout_seconds == 110


@pytest.mark.parametrize(
    ("category", "data", "error"),
    [
        ("", 1, ValueError),
        ("x" * 1025, 1, ValueError),
        (5, 1, TypeError),
        ("c", None, ValueError),
        ("c", object(), TypeError),
        ("c", {"set": {1}}, TypeError),
    ],
)
def test_publish_refuses_what_cannot_be_an_event(
    manager: LongpollManager, category: object, data: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        manager.publish(category, data)  # type: ignore[arg-type]
    assert manager.buffered_events("c") == []


def test_publish_returns_the_buffered_event(manager: LongpollManager) -> None:
    event = manager.publish("c", {"k": [1]})
    assert isinstance(event, Event)
    assert event.category == "c" and event.data == {"k": [1]}
    assert str(__import__("uuid").UUID(event.id)) == event.id
    assert manager.buffered_events("c") == [event]


def test_subscribe_with_since_time_answers_at_once(manager: LongpollManager) -> None:
    first = manager.publish("c", 1)
    second = manager.publish("c", 2)
    assert manager.subscribe("c", 5, since_time=0).events == [first, second]
    resumed = manager.subscribe("c", 5, since_time=first.timestamp, last_id=first.id)
    assert resumed.events == [second]


def test_subscribe_without_since_time_waits_for_new_events(manager: LongpollManager) -> None:
    manager.publish("c", "old")
    waiter = gevent.spawn(lambda: manager.subscribe("c", 10).events)
    wait_for_waiters(manager, 1)
    new = manager.publish("c", "new")
    assert waiter.get(timeout=10) == [new]
    assert manager.waiting_count() == 0


def test_waiter_gets_every_event_published_while_it_waited(manager: LongpollManager) -> None:
    waiter = gevent.spawn(lambda: manager.subscribe("c", 10).events)
    wait_for_waiters(manager, 1)
    published = [manager.publish("c", n) for n in range(5)]  # no switch in between
    got = waiter.get(timeout=10)
    if isinstance(manager.engine, MemoryEngine):
        assert got == published
    else:  # Redis: what this process's reader had read when the answer was made
        assert got and got == published[: len(got)]


def test_waiters_in_other_categories_stay_asleep(manager: LongpollManager) -> None:
    other = gevent.spawn(lambda: manager.subscribe("other", 10).events)
    mine = gevent.spawn(lambda: manager.subscribe("c", 10).events)
    wait_for_waiters(manager, 2)
    event = manager.publish("c", 1)
    assert mine.get(timeout=10) == [event]
    assert not other.ready()
    assert manager.waiting_count("other") == 1
    other.kill()
    assert manager.waiting_count() == 0


def test_many_waiters_all_get_the_event(manager: LongpollManager) -> None:
    waiters = [gevent.spawn(lambda: manager.subscribe("c", 10).events) for _ in range(500)]
    wait_for_waiters(manager, 500)
    event = manager.publish("c", 1)
    assert all(waiter.get(timeout=10) == [event] for waiter in waiters)


def test_timeout_returns_no_events(manager: LongpollManager) -> None:
    assert manager.subscribe("c", 0.05).events == []
    assert manager.waiting_count() == 0


def test_timestamps_never_go_backwards(manager: LongpollManager, engine_clock: list[int]) -> None:
    first = manager.publish("a", 1)
    engine_clock[0] -= 5000  # the wall clock steps back
    second = manager.publish("b", 2)
    third = manager.publish("a", 3)
    assert first.timestamp <= second.timestamp <= third.timestamp
    # resuming from the first event finds the later one, despite the clock
    assert manager.subscribe("a", 1, since_time=first.timestamp, last_id=first.id).events == [third]


def test_same_millisecond_events_resume_in_publish_order(
    manager: LongpollManager, engine_clock: list[int]
) -> None:
    events = [manager.publish("c", n) for n in range(10)]
    if isinstance(manager.engine, MemoryEngine):  # its clock is frozen; Redis keeps its own
        assert len({event.timestamp for event in events}) == 1
    for index, event in enumerate(events):
        resumed = manager.subscribe("c", 1, since_time=event.timestamp, last_id=event.id).events
        assert resumed == events[index + 1 :] or index == 9


def test_buffer_size_keeps_the_newest() -> None:
    manager = LongpollManager(max_event_buffer_size=3)
    events = [manager.publish("c", n) for n in range(5)]
    assert manager.subscribe("c", 1, since_time=0).events == events[2:]


def test_expired_events_are_never_served_and_are_purged(engine_clock: list[int]) -> None:
    manager = LongpollManager(event_time_to_live_seconds=10)
    old = manager.publish("old", 1)
    engine_clock[0] += 5_000
    kept = manager.publish("kept", 2)
    engine_clock[0] += 5_001  # "old" is now 10.001 s old; "kept" 5.001 s
    assert manager.subscribe("old", 0.01, since_time=0).events == []
    assert manager.subscribe("kept", 1, since_time=0).events == [kept]
    assert manager.stats().buffered_events == 1  # "old" purged, not just hidden
    assert old.timestamp < kept.timestamp


def test_expired_categories_are_swept_without_being_asked_for(engine_clock: list[int]) -> None:
    manager = LongpollManager(event_time_to_live_seconds=1)
    for n in range(100):
        manager.publish(f"c{n}", n)
    engine_clock[0] += 2_000
    manager.publish("fresh", 1)
    assert manager.engine.counts() == (101, 1)  # empty categories remember their gaps
    engine_clock[0] += 2_000  # empty for a whole time to live: forgotten
    manager.publish("fresh", 2)
    assert manager.engine.counts() == (1, 1)  # the first "fresh" expired too


def test_delete_after_first_retrieval_from_the_buffer() -> None:
    manager = LongpollManager(delete_event_after_first_retrieval=True)
    event = manager.publish("c", 1)
    assert manager.subscribe("c", 1, since_time=0).events == [event]
    assert manager.subscribe("c", 0.01, since_time=0).events == []


def test_delete_after_first_retrieval_serves_every_waiter_then_forgets() -> None:
    manager = LongpollManager(delete_event_after_first_retrieval=True)
    waiters = [gevent.spawn(lambda: manager.subscribe("c", 10).events) for _ in range(3)]
    wait_for_waiters(manager, 3)
    event = manager.publish("c", 1)
    assert [waiter.get(timeout=10) for waiter in waiters] == [[event]] * 3
    assert manager.buffered_events("c") == []


def test_close_answers_waiters_at_once_and_refuses_events() -> None:
    manager = LongpollManager()
    waiters = [gevent.spawn(lambda: manager.subscribe("c", 60).events) for _ in range(10)]
    wait_for_waiters(manager, 10)
    manager.close()
    assert [waiter.get(timeout=5) for waiter in waiters] == [[]] * 10
    with pytest.raises(ManagerClosed):
        manager.publish("c", 1)
    assert manager.subscribe("c", 60).events == []
    manager.close()  # idempotent


def test_publish_from_other_threads_wakes_greenlets(manager: LongpollManager) -> None:
    waiter = gevent.spawn(lambda: manager.subscribe("c", 10).events)
    wait_for_waiters(manager, 1)
    published: list[Event] = []
    thread = threading.Thread(target=lambda: published.append(manager.publish("c", 1)))
    thread.start()
    assert waiter.get(timeout=10) == published
    thread.join(5)


def test_subscriber_in_another_thread_is_woken_by_this_one(manager: LongpollManager) -> None:
    got: list[list[Event]] = []
    thread = threading.Thread(target=lambda: got.append(manager.subscribe("c", 10).events))
    thread.start()
    deadline = gevent.Timeout(10)
    with deadline:
        while manager.waiting_count() < 1:
            gevent.sleep(0.001)
    event = manager.publish("c", 1)
    thread.join(10)
    assert got == [[event]]


def test_concurrent_publishers_and_resuming_subscribers_lose_nothing() -> None:
    """Greenlets and OS threads publish; subscribers resume with since_time/last_id."""
    manager = LongpollManager(max_event_buffer_size=10_000)
    per_publisher = 200
    publishers = 4

    def publish_all(name: str) -> None:
        for n in range(per_publisher):
            manager.publish("c", f"{name}-{n}")
            if n % 10 == 0:
                gevent.sleep(0)

    def follow() -> list[str]:
        seen: list[str] = []
        since_time, last_id = 0, None
        while len(seen) < per_publisher * publishers:
            events = manager.subscribe("c", 5, since_time=since_time, last_id=last_id).events
            assert events, "timed out before every event arrived"
            seen.extend(event.data for event in events)
            since_time, last_id = events[-1].timestamp, events[-1].id
        return seen

    followers = [gevent.spawn(follow) for _ in range(5)]
    threads = [
        threading.Thread(target=publish_all, args=(f"thread{n}",)) for n in range(publishers // 2)
    ]
    for thread in threads:
        thread.start()
    greenlets = [gevent.spawn(publish_all, f"greenlet{n}") for n in range(publishers // 2)]
    gevent.joinall(greenlets, timeout=30, raise_error=True)
    for thread in threads:
        thread.join(30)
    expected = manager.buffered_events("c")
    assert len(expected) == per_publisher * publishers
    for follower in followers:
        seen = follower.get(timeout=30)
        assert seen == [event.data for event in expected]  # all, once, in publish order


def test_stats_count_what_happened() -> None:
    manager = LongpollManager(max_event_buffer_size=2)
    assert manager.stats().events_published == 0
    for n in range(3):
        manager.publish("a", n)
    manager.publish("b", 1)
    waiters = [gevent.spawn(lambda: manager.subscribe(["a", "b"], 10).events) for _ in range(2)]
    wait_for_waiters(manager, 2, "a")
    stats = manager.stats()
    assert (stats.categories, stats.buffered_events, stats.waiting_subscribers) == (2, 3, 2)
    manager.publish("b", 2)
    gevent.joinall(waiters, timeout=10)
    assert manager.subscribe("a", 1, since_time=0).events  # 2 more delivered
    manager.close()
    with pytest.raises(ManagerClosed):
        manager.publish("a", 9)
    stats = manager.stats()
    assert stats.events_published == 5
    assert stats.events_delivered == 2 + 2
    assert stats.publish_errors == 1
    assert stats.waiting_subscribers == 0


def test_max_categories_pushes_out_the_category_idle_longest() -> None:
    manager = LongpollManager(max_categories=2)
    a = manager.publish("a", 1)
    b = manager.publish("b", 1)
    manager.publish("a", 2)  # "b" is now the one published to least recently
    manager.publish("c", 1)
    assert manager.stats().categories == 2
    assert manager.buffered_events("b") == []
    assert [event.data for event in manager.buffered_events("a")] == [1, 2]
    # a subscriber that had not seen "b"'s event is told of the gap, and can resume
    delivery = manager.subscribe("b", 0.01, since_time=a.timestamp - 1)
    assert delivery.events == []
    assert [(gap.category, gap.last_id) for gap in delivery.gaps] == [("b", b.id)]
    assert manager.subscribe("b", 0.01, since_time=b.timestamp, last_id=b.id).gaps == []
    again = manager.publish("b", 2)  # back, still remembering what it dropped
    delivery = manager.subscribe("b", 1, since_time=a.timestamp - 1)
    assert delivery.events == [again] and delivery.gaps[0].last_id == b.id
    assert manager.stats().publish_errors == 0


def test_every_category_pushed_out_under_churn_resumes_with_a_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Few floors kept: the rest share one, and no pushed-out category is silent.
    monkeypatch.setattr(MemoryEngine, "max_kept_floors", 5, raising=False)
    manager = LongpollManager(max_categories=3)
    start = manager.publish("start", 0)
    published = {f"c{n}": manager.publish(f"c{n}", n) for n in range(50)}
    order = {event.id: index for index, event in enumerate(published.values())}
    for category, event in published.items():
        gaps = manager.subscribe(category, 0.001, since_time=start.timestamp,
                                 last_id=start.id).gaps
        if not manager.buffered_events(category):  # pushed out: its own or the shared floor
            assert [gap.category for gap in gaps] == [category]
            assert order[gaps[0].last_id] >= order[event.id]
    # The last pushed out keep their own floor, exactly.
    for n in range(42, 47):
        gaps = manager.subscribe(f"c{n}", 0.001, since_time=start.timestamp,
                                 last_id=start.id).gaps
        assert gaps[0].last_id == published[f"c{n}"].id
    # A cursor newer than the shared floor is not told of a gap it cannot have.
    last = published["c49"]
    assert manager.subscribe("never", 0.001, since_time=last.timestamp).gaps == []


def test_floors_of_pushed_out_categories_are_kept_at_least_a_time_to_live(
    engine_clock: list[int],
) -> None:
    manager = LongpollManager(max_categories=1, event_time_to_live_seconds=10)
    a = manager.publish("a", 1)
    manager.publish("b", 1)  # pushes out "a"
    engine_clock[0] += 19_000  # "a"'s event is 19 s old: its floor still counts
    manager.publish("b", 2)
    gaps = manager.subscribe("a", 0.001, since_time=a.timestamp - 1).gaps
    assert [gap.last_id for gap in gaps] == [a.id]
    engine_clock[0] += 2_000  # two times to live: forgotten, like an emptied category
    manager.publish("b", 3)
    assert manager.subscribe("a", 0.001, since_time=a.timestamp - 1).gaps == []


def test_max_categories_refuses_only_when_every_category_has_subscribers() -> None:
    manager = LongpollManager(max_categories=2)
    manager.publish("a", 1)
    manager.publish("b", 1)
    parked = [gevent.spawn(manager.subscribe, category, 10) for category in "ab"]
    wait_for_waiters(manager, 2)
    with pytest.raises(CapacityExceeded, match="max_categories"):
        manager.publish("c", 1)
    assert manager.stats().publish_errors == 1
    manager.publish("a", 2)  # an existing category is fine
    parked[0].join(10)
    manager.publish("c", 1)  # "a" is no longer watched: pushed out
    assert manager.buffered_events("a") == []
    gevent.killall(parked)


def test_max_buffered_bytes_drops_the_oldest_events_of_all_with_a_gap() -> None:
    engine = MemoryEngine(max_buffered_bytes=2000)  # two events of 300 bytes, with overhead
    manager = LongpollManager(engine=engine)
    first = manager.publish("a", "x" * 300)
    manager.publish("b", "y" * 300)
    manager.publish("a", "z" * 300)
    assert engine.buffered_bytes <= 2000
    assert [e.data[0] for e in manager.buffered_events("a")] == ["z"]  # the oldest went
    manager.publish("c", "w" * 300)  # and then the oldest left, "b"'s
    assert engine.buffered_bytes <= 2000
    assert manager.buffered_events("b") == []
    assert manager.stats().buffered_events == 2
    delivery = manager.subscribe("a", 1, since_time=first.timestamp - 1)
    assert [gap.last_id for gap in delivery.gaps] == [first.id]


def test_a_buffer_holds_each_event_once_as_json() -> None:
    manager = LongpollManager()
    published = manager.publish("a", {"big": "x" * 100_000})
    [held] = manager.buffered_events("a")
    assert held == published and held.to_json() == published.to_json()
    assert held.data == {"big": "x" * 100_000}
    assert held.data is not held.data  # decoded from the JSON on each access: not kept


def test_max_waiting_subscribers_refuses_one_more(manager: LongpollManager) -> None:
    small = LongpollManager(max_waiting_subscribers=2)
    waiters = [gevent.spawn(small.subscribe, "c", 10) for _ in range(2)]
    wait_for_waiters(small, 2)
    with pytest.raises(CapacityExceeded, match="max_waiting_subscribers"):
        small.subscribe("c", 10)
    small.publish("c", 1)
    gevent.joinall(waiters, timeout=10)
    assert small.subscribe("c", 0.01).events == []  # room again
