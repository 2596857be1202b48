"""A category's event buffer: publish order, eviction, time to live, cursor search."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import NamedTuple

from ..event import Event

__all__ = ["EVENT_OVERHEAD_BYTES", "EventBuffer", "Floor", "event_cost", "missed"]

#: About what an event costs beside its JSON: the :class:`~wsgi_longpoll.event.Event`,
#: its id and category, its sequence number and its entries in the indexes.
EVENT_OVERHEAD_BYTES = 480


def event_cost(event: Event) -> int:
    """The bytes a buffer counts for *event*: its JSON and :data:`EVENT_OVERHEAD_BYTES`."""
    return len(event.to_json()) + EVENT_OVERHEAD_BYTES


def _timestamp(event: Event) -> int:
    return event.timestamp


#: What stands in the dead prefix of a buffer for the events it dropped.
_DROPPED = Event(0, "", "", 0)


class Floor(NamedTuple):
    """The newest event a buffer dropped for size or age: older cursors missed events."""

    timestamp: int
    seq: int
    id: str


class EventBuffer:
    """The events one category keeps, oldest first, at most *max_size* of them.

    Each event comes with its publish sequence number (unique and increasing across
    every buffer of a manager), and events arrive in non-decreasing timestamp order, so
    a cursor is found by bisection and by a dictionary lookup of ids, never by scanning.

    :param max_size: how many events to keep; appending beyond it evicts the oldest.
    """

    __slots__ = ("_events", "_seqs", "_start", "_seq_by_id", "floor", "max_size", "size_bytes")

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        #: Live events are ``_events[_start:]``; the dead prefix is cut off in bulk.
        self._events: list[Event] = []
        self._seqs: list[int] = []
        self._start = 0
        self._seq_by_id: dict[str, int] = {}
        #: The newest event dropped for size or age, if any.
        self.floor: Floor | None = None
        #: The bytes of the events held, as :func:`event_cost` counts them.
        self.size_bytes = 0

    def __len__(self) -> int:
        return len(self._events) - self._start

    def events(self) -> list[Event]:
        """Every buffered event, oldest first."""
        return self._events[self._start :]

    def seq_of(self, event_id: str) -> int | None:
        """The sequence number of the buffered event *event_id*, or ``None``."""
        return self._seq_by_id.get(event_id)

    def append(self, event: Event, seq: int, keep_after: int | None = None) -> None:
        """Add *event*, published as number *seq*, evicting the oldest beyond ``max_size``
        but those published after number *keep_after* (which a subscriber is still owed)."""
        if len(self) and (
            event.timestamp < self._events[-1].timestamp or seq <= self._seqs[-1]
        ):
            raise ValueError("events must be appended in timestamp and sequence order")
        self._seq_by_id[event.id] = seq
        self._events.append(event)
        self._seqs.append(seq)
        self.size_bytes += event_cost(event)
        excess = len(self) - self.max_size
        if excess > 0:
            if keep_after is not None:
                start = self._start
                excess = min(excess, bisect_right(self._seqs, keep_after, lo=start) - start)
            if excess > 0:
                self.drop_oldest(excess)

    def expire(self, cutoff: int) -> int:
        """Drop the events with ``timestamp < cutoff``; return how many went."""
        position = bisect_left(self._events, cutoff, lo=self._start, key=_timestamp)
        count = position - self._start
        if count:
            self.drop_oldest(count)
        return count

    def after(
        self, since_time: int, last_id: str | None = None, last_seq: int | None = None
    ) -> list[Event]:
        """The events after the cursor ``(since_time, last_id)``, oldest first.

        Without *last_id*, the events with ``timestamp > since_time``. With it, the
        events with ``timestamp >= since_time`` published after the event *last_id*; if
        that event is unknown (evicted, expired), every event with
        ``timestamp >= since_time``. *last_seq* gives the event's sequence number when
        it lives in another category's buffer.
        """
        return self._events[self._position_after(since_time, last_id, last_seq) :]

    def entries_after(
        self, since_time: int, last_id: str | None = None, last_seq: int | None = None
    ) -> list[tuple[tuple[int, int], Event]]:
        """:meth:`after`, each event with its position ``(timestamp, seq)``."""
        return self._entries(self._position_after(since_time, last_id, last_seq))

    def entries_after_seq(self, seq: int) -> list[tuple[tuple[int, int], Event]]:
        """The events published after number *seq*, each with its position."""
        return self._entries(bisect_right(self._seqs, seq, lo=self._start))

    def _entries(self, start: int) -> list[tuple[tuple[int, int], Event]]:
        return [
            ((event.timestamp, seq), event)
            for seq, event in zip(self._seqs[start:], self._events[start:], strict=True)
        ]

    def drop_newest(self, count: int) -> None:
        """Remove the *count* newest events (served, with delete after first retrieval)."""
        if count <= 0:
            return
        position = len(self._events) - min(count, len(self))
        for event in self._events[position:]:
            del self._seq_by_id[event.id]
            self.size_bytes -= event_cost(event)
        del self._events[position:]
        del self._seqs[position:]

    def missed(self, since_time: int, last_id: str | None, last_seq: int | None) -> bool:
        """Whether the cursor is older than an event this buffer dropped for size or age.

        *last_seq* is the sequence number of *last_id* if some buffer still holds it.
        """
        return self.floor is not None and missed(self.floor, since_time, last_id, last_seq)

    def newest(self) -> Floor | None:
        """The newest event held, as a :class:`Floor` (the floor itself when empty)."""
        if not len(self):
            return self.floor
        event = self._events[-1]
        return Floor(event.timestamp, self._seqs[-1], event.id)

    def _position_after(self, since_time: int, last_id: str | None, last_seq: int | None) -> int:
        if last_id is None:
            return bisect_right(self._events, since_time, lo=self._start, key=_timestamp)
        position = bisect_left(self._events, since_time, lo=self._start, key=_timestamp)
        if last_seq is None:
            last_seq = self._seq_by_id.get(last_id)
        if last_seq is not None:
            position = max(position, bisect_right(self._seqs, last_seq, lo=self._start))
        return position

    def oldest_seq(self) -> int | None:
        """The sequence number of the oldest event held, or ``None`` when empty."""
        return self._seqs[self._start] if len(self) else None

    def drop_oldest(self, count: int) -> None:
        """Drop the *count* oldest events (at least one held); the newest of them becomes
        the :attr:`floor`."""
        end = self._start + count
        events = self._events
        for event in events[self._start : end]:
            del self._seq_by_id[event.id]
            self.size_bytes -= event_cost(event)
        newest = events[end - 1]
        self.floor = Floor(newest.timestamp, self._seqs[end - 1], newest.id)
        # The dead prefix is never read again: let its events go now, not when it is cut.
        events[self._start : end] = [_DROPPED] * count
        self._start = end
        # Cut the dead prefix off once it outweighs the live part: amortised O(1).
        if self._start > 64 and self._start * 2 > len(self._events):
            del self._events[: self._start]
            del self._seqs[: self._start]
            self._start = 0


def missed(floor: Floor, since_time: int, last_id: str | None, last_seq: int | None) -> bool:
    """Whether the cursor ``(since_time, last_id)`` had not seen the dropped event *floor*.

    *last_seq* is the sequence number of *last_id* if some buffer still holds it.
    """
    if last_id is None:  # the client has seen everything up to since_time
        return floor.timestamp > since_time
    if last_seq is not None:  # the cursor is a known event
        return floor.timestamp >= since_time and floor.seq > last_seq
    # An unknown last_id: every event at since_time is resent, so only a dropped event
    # after since_time, or one at since_time that is not last_id itself, went unseen.
    return floor.timestamp > since_time or (
        floor.timestamp == since_time and floor.id != last_id
    )
