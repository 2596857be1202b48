"""A category's event buffer: publish order, eviction, time to live, cursor search."""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from .event import Event

__all__ = ["EventBuffer"]


def _timestamp(event: Event) -> int:
    return event.timestamp


class EventBuffer:
    """The events one category keeps, oldest first, at most *max_size* of them.

    Events must be appended in non-decreasing timestamp order (the manager's clock
    guarantees it), so a cursor is found by bisection on timestamps and by a
    dictionary lookup of ids, never by scanning.

    :param max_size: how many events to keep; appending beyond it evicts the oldest.
    """

    __slots__ = ("_events", "_start", "_first_seq", "_seq_by_id", "max_size")

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        #: Events live in ``_events[_start:]``; the dead prefix is cut off in bulk.
        self._events: list[Event] = []
        self._start = 0
        #: The sequence number of ``_events[_start]``; each event keeps its number.
        self._first_seq = 0
        self._seq_by_id: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._events) - self._start

    def events(self) -> list[Event]:
        """Every buffered event, oldest first."""
        return self._events[self._start :]

    def oldest(self) -> Event | None:
        """The oldest buffered event, if any."""
        return self._events[self._start] if len(self) else None

    def append(self, event: Event) -> None:
        """Add *event* as the newest, evicting the oldest beyond ``max_size``."""
        last = self._events[-1] if len(self) else None
        if last is not None and event.timestamp < last.timestamp:
            raise ValueError("events must be appended in timestamp order")
        self._seq_by_id[event.id] = self._first_seq + len(self)
        self._events.append(event)
        if len(self) > self.max_size:
            self._drop_oldest(len(self) - self.max_size)

    def expire(self, cutoff: int) -> int:
        """Drop the events with ``timestamp < cutoff``; return how many went."""
        position = bisect_left(self._events, cutoff, lo=self._start, key=_timestamp)
        count = position - self._start
        if count:
            self._drop_oldest(count)
        return count

    def after(self, since_time: int, last_id: str | None = None) -> list[Event]:
        """The events after the cursor ``(since_time, last_id)``, oldest first.

        Without *last_id*, the events with ``timestamp > since_time``. With it, the
        events with ``timestamp >= since_time`` that come after the event *last_id*;
        if *last_id* is not buffered (evicted, expired), every event with
        ``timestamp >= since_time``.
        """
        return self._events[self._position_after(since_time, last_id) :]

    def take_after(self, since_time: int, last_id: str | None = None) -> list[Event]:
        """Like :meth:`after`, and remove what it returns from the buffer."""
        position = self._position_after(since_time, last_id)
        taken = self._events[position:]
        if taken:
            del self._events[position:]
            for event in taken:
                del self._seq_by_id[event.id]
        return taken

    def _position_after(self, since_time: int, last_id: str | None) -> int:
        if last_id is None:
            return bisect_right(self._events, since_time, lo=self._start, key=_timestamp)
        position = bisect_left(self._events, since_time, lo=self._start, key=_timestamp)
        seq = self._seq_by_id.get(last_id)
        if seq is not None:
            position = max(position, self._start + seq - self._first_seq + 1)
        return position

    def _drop_oldest(self, count: int) -> None:
        for event in self._events[self._start : self._start + count]:
            del self._seq_by_id[event.id]
        self._start += count
        self._first_seq += count
        # Cut the dead prefix off once it outweighs the live part: amortised O(1).
        if self._start > 64 and self._start * 2 > len(self._events):
            del self._events[: self._start]
            self._start = 0
