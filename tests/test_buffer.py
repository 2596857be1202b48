"""EventBuffer: publish order, eviction, time to live and cursor search."""

from __future__ import annotations

import uuid

import pytest

from wsgi_longpoll.engines.buffer import EventBuffer
from wsgi_longpoll.event import Event


def make_events(*timestamps: int) -> list[Event]:
    return [Event(ts, "c", str(uuid.uuid4()), n) for n, ts in enumerate(timestamps)]


def filled(max_size: int, *timestamps: int) -> tuple[EventBuffer, list[Event]]:
    buffer = EventBuffer(max_size)
    events = make_events(*timestamps)
    for seq, event in enumerate(events, 1):
        buffer.append(event, seq)
    return buffer, events


def test_keeps_the_newest_events_up_to_its_size() -> None:
    buffer, events = filled(3, 1, 2, 3, 4, 5)
    assert buffer.events() == events[2:]
    assert len(buffer) == 3


@pytest.mark.parametrize(("timestamp", "seq"), [(4, 2), (5, 1)], ids=["older", "same-seq"])
def test_rejects_an_event_out_of_order(timestamp: int, seq: int) -> None:
    buffer, _ = filled(3, 5)
    with pytest.raises(ValueError, match="order"):
        buffer.append(make_events(timestamp)[0], seq)


@pytest.mark.parametrize(
    ("since_time", "last_index", "expected"),
    [
        (0, None, [0, 1, 2, 3, 4]),
        (10, None, [2, 3, 4]),  # strictly after since_time
        (19, None, [2, 3, 4]),
        (20, None, []),
        (10, 0, [1, 2, 3, 4]),  # same ms as since_time, after last_id
        (10, 1, [2, 3, 4]),
        (20, 3, [4]),
        (20, 4, []),
        (10, "unknown", [0, 1, 2, 3, 4]),  # unknown last_id: every ts >= since_time
        (15, 1, [2, 3, 4]),  # last_id older than since_time: since_time bounds it
        (5, 3, [4]),  # last_id newer than since_time: it bounds
    ],
)
def test_after_the_cursor(
    since_time: int, last_index: int | str | None, expected: list[int]
) -> None:
    buffer, events = filled(10, 10, 10, 20, 20, 20)
    if last_index is None:
        last_id = None
    elif last_index == "unknown":
        last_id = str(uuid.uuid4())
    else:
        assert isinstance(last_index, int)
        last_id = events[last_index].id
    assert [event.data for event in buffer.after(since_time, last_id)] == expected


def test_an_evicted_last_id_counts_as_unknown() -> None:
    buffer, events = filled(2, 10, 10, 10)
    assert buffer.after(10, events[0].id) == events[1:]


def test_cursor_search_stays_right_after_many_evictions() -> None:
    buffer = EventBuffer(10)
    events = make_events(*range(1000))
    for seq, event in enumerate(events, 1):
        buffer.append(event, seq)
    assert buffer.events() == events[-10:]
    assert buffer.after(995, events[995].id) == events[996:]
    assert buffer.after(0, events[992].id) == events[993:]


def test_expire_drops_events_older_than_the_cutoff() -> None:
    buffer, events = filled(10, 1, 2, 3, 4)
    assert buffer.expire(3) == 2
    assert buffer.events() == events[2:]
    assert buffer.after(0, events[0].id) == events[2:]


def test_drop_newest_removes_served_events() -> None:
    buffer, events = filled(10, 1, 2, 3, 4)
    buffer.drop_newest(2)
    assert buffer.events() == events[:2]
    assert buffer.after(0) == events[:2]
    assert buffer.floor is None  # served, not lost: no gap
    later = make_events(5)[0]
    buffer.append(later, 10)
    assert buffer.after(1, events[0].id) == [events[1], later]
