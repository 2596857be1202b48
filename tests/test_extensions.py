"""Protocol extensions: several categories in one subscribe, and the gap signal (the
parser and the manager; their answers on every adapter are in test_protocol_suite.py)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import requests
from conftest import publish_concurrently

from wsgi_longpoll import LongpollManager, Server
from wsgi_longpoll.event import Event, Gap
from wsgi_longpoll.protocol import ProtocolError, parse_subscribe_query

# -- several categories -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "categories"),
    [
        ("timeout=5&category=a", ("a",)),
        ("timeout=5&category=a&categories=b&categories=c", ("a", "b", "c")),
        ("timeout=5&categories=b&categories=c", ("b", "c")),
        ("timeout=5&categories=b&category=a", ("a", "b")),
        ("timeout=5&category=a&categories=a&categories=b", ("a", "b")),
    ],
)
def test_categories_parameter(query: str, categories: tuple[str, ...]) -> None:
    assert parse_subscribe_query(query, 110, 16).categories == categories


@pytest.mark.parametrize(
    "query",
    [
        "timeout=5&categories=",
        "timeout=5&category=a&categories=",
        "timeout=5&category=&categories=b",
        "timeout=5&categories=" + "x" * 1025,
    ],
)
def test_every_named_category_must_be_valid(query: str) -> None:
    with pytest.raises(ProtocolError, match="Invalid subscription category"):
        parse_subscribe_query(query, 110, 16)


def test_one_category_is_the_default_limit_of_the_parser() -> None:
    with pytest.raises(ProtocolError, match="at most 1"):
        parse_subscribe_query("timeout=5&category=a&categories=b", 110)


def test_multi_category_answer_mixes_categories_in_publish_order() -> None:
    manager = LongpollManager()
    published = [manager.publish(category, n) for n, category in enumerate("abcabcabc")]
    delivery = manager.subscribe(["a", "b", "c"], 1, since_time=0)
    assert delivery.events == published
    middle = published[4]
    resumed = manager.subscribe(["a", "b", "c"], 1, since_time=middle.timestamp,
                                last_id=middle.id)
    assert resumed.events == published[5:]
    # the cursor's event is looked up in the categories asked for
    subset = manager.subscribe(["a", "c"], 1, since_time=published[5].timestamp,
                               last_id=published[5].id)
    assert subset.events == [event for event in published[6:] if event.category != "b"]


def test_multi_category_subscriber_gets_every_event_once_over_http(server: Server) -> None:
    """3 categories published concurrently; one cursor resumes all of them."""
    base = f"http://127.0.0.1:{server.port}"
    per_category = 60

    seen: list[tuple[str, int]] = []

    def follow() -> None:
        cursor: dict[str, Any] = {"since_time": 1}
        with requests.Session() as session:
            while len(seen) < 3 * per_category:
                params = {"timeout": 10, "category": "x", "categories": ["y", "z"], **cursor}
                events = session.get(f"{base}/events", params=params, timeout=30).json()["events"]
                seen.extend((event["category"], event["data"]) for event in events)
                cursor = {"since_time": events[-1]["timestamp"], "last_id": events[-1]["id"]}

    follower = threading.Thread(target=follow)
    follower.start()
    publish_concurrently(base, "xyz", per_category)
    follower.join(60)
    published = [  # the engine reads several categories in publish order
        (event.category, event.data)
        for event in server.manager.engine.read(["x", "y", "z"], 0, None).events
    ]
    assert len(published) == 3 * per_category
    assert seen == published  # every event, once, in publish order


# -- the gap signal ---------------------------------------------------------------------


def publish_ticking(manager: LongpollManager, engine_clock: list[int], count: int) -> list[Event]:
    events = []
    for n in range(count):
        engine_clock[0] += 1
        events.append(manager.publish("c", n))
    return events


def test_gap_when_unseen_events_were_evicted_for_size(engine_clock: list[int]) -> None:
    manager = LongpollManager(max_event_buffer_size=3)
    events = publish_ticking(manager, engine_clock, 6)  # events 0-2 evicted
    delivery = manager.subscribe("c", 1, since_time=events[0].timestamp, last_id=events[0].id)
    assert delivery.events == events[3:]
    assert delivery.gaps == [Gap("c", events[2].timestamp, events[2].id)]


@pytest.mark.parametrize(
    ("cursor_index", "with_last_id", "gap"),
    [
        (2, True, False),  # the newest evicted event was seen: nothing missed
        (3, True, False),  # a buffered cursor
        (1, True, True),  # event 2 was evicted unseen
        (2, False, False),  # since_time alone: everything at or before it was seen
        (1, False, True),
    ],
)
def test_gap_appears_exactly_when_an_unseen_event_was_evicted(
    engine_clock: list[int], cursor_index: int, with_last_id: bool, gap: bool
) -> None:
    manager = LongpollManager(max_event_buffer_size=3)
    events = publish_ticking(manager, engine_clock, 6)
    cursor = events[cursor_index]
    delivery = manager.subscribe(
        "c", 1, since_time=cursor.timestamp, last_id=cursor.id if with_last_id else None
    )
    assert bool(delivery.gaps) is gap


def test_gap_in_the_same_millisecond(engine_clock: list[int]) -> None:
    manager = LongpollManager(max_event_buffer_size=2)
    events = [manager.publish("c", n) for n in range(4)]  # one ms; 0 and 1 evicted
    seen_evicted = manager.subscribe("c", 1, since_time=events[0].timestamp, last_id=events[1].id)
    assert seen_evicted.gaps == [] and seen_evicted.events == events[2:]
    missed = manager.subscribe("c", 1, since_time=events[0].timestamp, last_id=events[0].id)
    assert missed.gaps == [Gap("c", events[1].timestamp, events[1].id)]


def test_gap_when_unseen_events_expired(engine_clock: list[int]) -> None:
    manager = LongpollManager(event_time_to_live_seconds=10)
    old = publish_ticking(manager, engine_clock, 3)
    engine_clock[0] += 20_000
    fresh = manager.publish("c", "fresh")
    delivery = manager.subscribe("c", 1, since_time=old[0].timestamp, last_id=old[0].id)
    assert delivery.events == [fresh]
    assert delivery.gaps == [Gap("c", old[2].timestamp, old[2].id)]


def test_gap_is_reported_even_when_every_event_expired(engine_clock: list[int]) -> None:
    manager = LongpollManager(event_time_to_live_seconds=10)
    old = publish_ticking(manager, engine_clock, 2)
    engine_clock[0] += 20_000
    delivery = manager.subscribe("c", 0.01, since_time=old[0].timestamp, last_id=old[0].id)
    assert delivery.events == []
    assert delivery.gaps == [Gap("c", old[1].timestamp, old[1].id)]
    resumed = manager.subscribe("c", 0.01, since_time=old[1].timestamp, last_id=old[1].id)
    assert resumed.gaps == []  # the gap's cursor resumes without a gap


def test_no_gap_without_since_time_nor_without_eviction(engine_clock: list[int]) -> None:
    manager = LongpollManager(max_event_buffer_size=3)
    assert manager.subscribe("c", 0.01).gaps == []
    events = publish_ticking(manager, engine_clock, 3)
    assert manager.subscribe("c", 1, since_time=1).gaps == []  # nothing evicted yet
    publish_ticking(manager, engine_clock, 3)
    assert manager.subscribe("c", 0.01).gaps == []  # first subscribe: no cursor
    delete_mode = LongpollManager(delete_event_after_first_retrieval=True)
    served = delete_mode.publish("c", 1)
    assert delete_mode.subscribe("c", 1, since_time=0).events == [served]
    assert delete_mode.subscribe("c", 0.01, since_time=0).gaps == []  # served is not lost
    assert events


def test_gap_rides_on_a_timeout_answer() -> None:
    gap = Gap("c", 5, "0414d492-e103-4154-8986-3ecf755168eb")
    from wsgi_longpoll.protocol import timeout_body

    assert json.loads(timeout_body(9, [gap])) == {
        "timeout": "no events before timeout", "timestamp": 9,
        "gaps": [{"category": "c", "since_time": 5, "last_id": gap.last_id}],
    }
