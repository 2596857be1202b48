"""Storage engines: where a manager keeps the events of each category.

The :class:`~wsgi_longpoll.manager.LongpollManager` owns the subscribers that wait and
wakes them; an engine owns the events. :class:`MemoryEngine`, the default, keeps them in
one :class:`~wsgi_longpoll.buffer.EventBuffer` per category of this process.
:class:`wsgi_longpoll.engines.redis.RedisEngine` keeps them in Redis Streams, shared by
every process and host that points at the same Redis.

Both give events one publish order across every category, so that one cursor
``(since_time, last_id)`` resumes several categories at once without loss or repeats.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any, Protocol

from ..event import Event, Gap
from ..protocol import now_ms
from .buffer import EventBuffer

__all__ = [
    "CapacityExceeded",
    "MemoryEngine",
    "Persister",
    "StorageUnavailable",
]

logger = logging.getLogger(__name__)


class CapacityExceeded(RuntimeError):
    """A limit of the manager is reached (categories held, waiting subscribers).

    Nothing was changed; the same call may succeed later.
    """


class StorageUnavailable(RuntimeError):
    """The shared event store (Redis) cannot be reached or did not answer in time.

    A publish that raises this was not acknowledged; it may be retried.
    """


class Persister(Protocol):
    """Where a manager keeps its events across restarts (see :mod:`wsgi_longpoll.persist`)."""

    def load(self) -> Iterable[Event]:
        """The stored events, in any order."""

    def append(self, event: Event) -> None:
        """Store *event*; called once for each published event, in publish order."""

    @property
    def wants_compaction(self) -> bool:
        """Whether the store has grown enough to be rewritten by :meth:`compact`."""

    def compact(self, events: list[Event]) -> None:
        """Replace what is stored by exactly *events* (what the buffers hold), atomically.

        Events appended afterwards follow them.
        """

    def close(self) -> None:
        """Write out everything appended and release the file."""


class MemoryEngine:
    """Events in the memory of this process: one :class:`EventBuffer` per category.

    Not thread-safe on its own: the manager calls every method with its lock held, so
    that storing an event and handing it to the waiting subscribers is one step.

    :param max_event_buffer_size: events kept per category.
    :param event_time_to_live_seconds: events older than this are dropped; ``None``
        keeps them.
    :param max_categories: how many categories may hold events at once.
    :param persister: stores every event and gives them back on start.
    """

    #: How often, at most, every category is swept for expired events.
    sweep_interval_ms = 1000

    def __init__(
        self,
        max_event_buffer_size: int,
        event_time_to_live_seconds: float | None,
        max_categories: int,
        persister: Persister | None = None,
    ) -> None:
        self.max_event_buffer_size = max_event_buffer_size
        self.max_categories = max_categories
        self._ttl_ms = (
            None if event_time_to_live_seconds is None
            else int(event_time_to_live_seconds * 1000)
        )
        self._buffers: dict[str, EventBuffer] = {}
        self._last_timestamp = 0
        #: Publish order across every category: a cursor means the same in all of them.
        self._last_seq = 0
        self._next_sweep = 0
        self._persister = persister
        if persister is not None:
            self._restore(persister.load())

    def append(self, category: str, data: Any, keep: bool = True) -> Event:
        """Make the next event of *category* and store it (unless *keep* is false).

        :raises CapacityExceeded: if *category* is new and ``max_categories`` hold events.
        :raises TypeError: if *data* cannot be encoded as JSON.
        """
        if category not in self._buffers and len(self._buffers) >= self.max_categories:
            self.sweep()  # expired categories may make room
            if len(self._buffers) >= self.max_categories:
                raise CapacityExceeded(
                    f"{self.max_categories} categories hold events already (max_categories)"
                )
        # Monotonic across every category: (timestamp, publish order) never disagree.
        timestamp = max(now_ms(), self._last_timestamp)
        event = Event(timestamp, category, str(uuid.uuid4()), data)
        event.to_json()  # encode once, here: a value JSON cannot hold fails the publish
        self._last_timestamp = timestamp
        self._last_seq += 1
        if keep:
            buffer = self._buffers.get(category)
            if buffer is None:
                buffer = self._buffers[category] = EventBuffer(self.max_event_buffer_size)
            buffer.append(event, self._last_seq)
        persister = self._persister
        if persister is not None:
            persister.append(event)
            if persister.wants_compaction:
                persister.compact(self.all_events())
        self.sweep(timestamp)
        return event

    def read(
        self,
        categories: Sequence[str],
        since_time: int,
        last_id: str | None,
        delete: bool = False,
    ) -> tuple[list[Event], list[Gap]]:
        """The events after the cursor in *categories*, in publish order, and the gaps.

        A :class:`Gap` names each category that dropped events the cursor had not seen.
        With *delete*, the events returned are removed from their buffers.
        """
        self.sweep()
        buffers = []
        for category in categories:
            buffer = self._buffers.get(category)
            if buffer is not None:
                if self._ttl_ms is not None:
                    buffer.expire(now_ms() - self._ttl_ms)
                buffers.append((category, buffer))
        last_seq = None
        if last_id is not None:
            for _, buffer in buffers:
                last_seq = buffer.seq_of(last_id)
                if last_seq is not None:
                    break
        gaps = []
        found: list[tuple[EventBuffer, list[Event]]] = []
        for category, buffer in buffers:
            if buffer.missed(since_time, last_id, last_seq):
                assert buffer.floor is not None
                gaps.append(Gap(category, buffer.floor.timestamp, buffer.floor.id))
            events = buffer.after(since_time, last_id, last_seq)
            if events:
                found.append((buffer, events))
        if not found:
            return [], gaps
        if len(found) == 1:
            result = found[0][1]
        else:  # several categories: merge in publish order
            numbered = [
                (buffer.seq_of(event.id), event) for buffer, events in found for event in events
            ]
            numbered.sort(key=itemgetter(0))
            result = [event for _, event in numbered]
        if delete:
            for buffer, events in found:
                buffer.drop_newest(len(events))
        return result, gaps

    def events(self, category: str) -> list[Event]:
        """The events *category* holds now, oldest first (expired ones left out)."""
        self.sweep()
        buffer = self._buffers.get(category)
        if buffer is None:
            return []
        if self._ttl_ms is not None:
            buffer.expire(now_ms() - self._ttl_ms)
        return buffer.events()

    def seq_of(self, event: Event) -> int | None:
        """The publish number of a buffered *event*: events sort by it in publish order."""
        buffer = self._buffers.get(event.category)
        return None if buffer is None else buffer.seq_of(event.id)

    def counts(self) -> tuple[int, int]:
        """``(categories, buffered events)``."""
        return len(self._buffers), sum(len(buffer) for buffer in self._buffers.values())

    def sweep(self, now: int | None = None) -> None:
        """Drop expired events and forget categories empty for a whole time to live.

        Runs at most once a ``sweep_interval_ms``; *now* is the clock, in epoch ms.
        """
        if self._ttl_ms is None:
            return
        if now is None:
            now = now_ms()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep_interval_ms
        cutoff = now - self._ttl_ms
        forget = cutoff - self._ttl_ms
        for category in list(self._buffers):
            buffer = self._buffers[category]
            buffer.expire(cutoff)
            # An empty category is forgotten once it has been empty for a whole time to
            # live; until then it remembers what it dropped, for the gap signal.
            if not len(buffer) and (buffer.floor is None or buffer.floor.timestamp < forget):
                del self._buffers[category]

    def all_events(self) -> list[Event]:
        """Every buffered event, in publish order."""
        numbered = [
            (buffer.seq_of(event.id), event)
            for buffer in self._buffers.values()
            for event in buffer.events()
        ]
        numbered.sort(key=itemgetter(0))
        return [event for _, event in numbered]

    def close(self) -> None:
        """Close the persister, which writes out every event it was given."""
        if self._persister is not None:
            self._persister.close()

    def _restore(self, events: Iterable[Event]) -> None:
        ordered = sorted(events, key=lambda event: event.timestamp)  # stable: ties keep order
        cutoff = None if self._ttl_ms is None else now_ms() - self._ttl_ms
        for event in ordered:
            if cutoff is None or event.timestamp >= cutoff:
                self._last_seq += 1
                buffer = self._buffers.get(event.category)
                if buffer is None:
                    buffer = self._buffers[event.category] = EventBuffer(
                        self.max_event_buffer_size
                    )
                buffer.append(event, self._last_seq)
            self._last_timestamp = max(self._last_timestamp, event.timestamp)
        if self._persister is not None:
            self._persister.compact(self.all_events())
        logger.info("restored %d events in %d categories", len(ordered), len(self._buffers))
