"""The engine interface: what every storage engine does for the manager.

The :class:`~wsgi_longpoll.manager.LongpollManager` validates, counts and keeps the
subscribers that wait; an engine keeps the events. The two meet here and nowhere else:
the manager calls the methods of :class:`Engine`, and the engine hands live events back
through the one :data:`Listener` it was bound to. No engine imports the manager.

Every event has a :data:`Position` in one publish order across all categories, so that
one cursor ``(since_time, last_id)`` resumes several categories at once.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..event import Event, Gap

__all__ = [
    "Engine",
    "Listener",
    "Position",
    "ReadResult",
    "WatchCounts",
    "data_digest",
    "merge_by_position",
]

#: Where an event stands in the publish order: ``(timestamp in ms, sequence number)``.
#: Positions compare as tuples; ``(0, 0)`` comes before every event.
Position = tuple[int, int]

class Listener(Protocol):
    """What an engine calls with live events: ``(position, event)`` pairs in position order
    across every category of the batch; and *gaps*, ``(position, gap)`` pairs: the newest
    event a category dropped before it could be delivered (a shared engine's reader found
    it gone), for the subscribers whose cursor is older."""

    def __call__(
        self, batch: Sequence[tuple[Position, Event]],
        gaps: Sequence[tuple[Position, Gap]] = (),
    ) -> None: ...


def merge_by_position(
    runs: Iterable[list[tuple[Position, Event]]],
) -> list[tuple[Position, Event]]:
    """Merge runs of ``(position, event)`` pairs, each in position order, into one."""
    runs = [run for run in runs if run]
    if len(runs) <= 1:
        return runs[0] if runs else []
    return list(heapq.merge(*runs, key=_position))


def _position(entry: tuple[Position, Event]) -> Position:
    return entry[0]


_CANONICAL = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False)
_UNSORTED = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def data_digest(data: Any) -> bytes:
    """A digest of *data* as JSON values: the same whatever the whitespace or the order of
    object keys it came with. Two publishes with the same idempotency key must agree on it.

    :raises TypeError: if *data* cannot be encoded as JSON.
    :raises ValueError: for a value JSON cannot hold (NaN, infinities).
    """
    try:
        text = _CANONICAL.encode(data)
    except TypeError:  # keys that do not sort (a Python caller's int and str keys)
        text = _UNSORTED.encode(data)
    return hashlib.sha256(text.encode("ascii")).digest()  # ensure_ascii: escapes only


class WatchCounts:
    """How many watches each category has: :meth:`Engine.watch` and
    :meth:`Engine.unwatch` are counted per category."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __contains__(self, category: object) -> bool:
        return category in self._counts

    def add(self, categories: Iterable[str]) -> None:
        """One more watch of each of *categories*."""
        counts = self._counts
        for category in categories:
            counts[category] = counts.get(category, 0) + 1

    def remove(self, categories: Iterable[str]) -> list[str]:
        """One watch fewer of each of *categories*; return those no longer watched."""
        counts = self._counts
        unwatched = []
        for category in categories:
            count = counts.get(category, 0) - 1
            if count > 0:
                counts[category] = count
            else:
                counts.pop(category, None)
                unwatched.append(category)
        return unwatched


@dataclass(slots=True)
class ReadResult:
    """What :meth:`Engine.read` found."""

    #: The events after the cursor, in publish order across the categories read.
    events: list[Event] = field(default_factory=list)
    #: A gap for each category that dropped events the cursor had not seen.
    gaps: list[Gap] = field(default_factory=list)
    #: Where a subscriber that found nothing waits from: every event published after the
    #: read has a greater position, and no event at or before it is after the cursor.
    position: Position = (0, 0)


class Engine(ABC):
    """Where a manager keeps events, and how it learns of new ones.

    Every method is safe to call from any thread or greenlet. :meth:`watch` and
    :meth:`unwatch` must never block; the others may wait for storage (Redis), and raise
    :class:`~wsgi_longpoll.errors.StorageUnavailable` when it cannot be reached.

    Live delivery: after :meth:`bind`, the engine calls the listener with every event
    published (by this process or, for a shared engine, any other) in a category that is
    watched, each event after the position its watchers asked for, in position order
    within each call. Calls never overlap, and a later call never carries a position
    lower than an earlier call carried for the same category, except to catch up a new
    watch: a listener that keeps a cursor per subscriber and skips what is not after it
    sees every event once.
    """

    #: Events kept per category; the oldest go first.
    max_event_buffer_size: int
    #: Events older than this (seconds) are dropped; ``None`` keeps them.
    event_time_to_live_seconds: float | None
    #: How many categories may hold events at once.
    max_categories: int

    @abstractmethod
    def bind(self, listener: Listener) -> None:
        """Hand live events to *listener* from now on (one listener per engine)."""

    #: How long an idempotency key is remembered, in seconds.
    idempotency_window_seconds: float = 300.0

    @abstractmethod
    def append(self, category: str, data: Any, idempotency_key: str | None = None) -> Event:
        """Store a new event of *category* and return it, with its id and timestamp.

        The event is stored (or handed to the listener, when the engine does not keep
        events that are served at once) when this returns. With *idempotency_key*, an
        append to the same category with the same key within
        :attr:`idempotency_window_seconds` stores nothing and returns the event the first
        one stored, so that a publisher can retry safely; the same key with other *data*
        (other JSON values, see :func:`data_digest`) raises :class:`IdempotencyConflict`.

        :raises TypeError: if *data* cannot be encoded as JSON.
        :raises ValueError: for a value JSON cannot hold (NaN, infinities).
        :raises CapacityExceeded: if *category* is new and ``max_categories`` hold events.
        :raises IdempotencyConflict: if *idempotency_key* stands for another event of
            *category*; nothing was stored.
        :raises StorageUnavailable: if the event could not be stored; it was not published.
        :raises OutcomeUnknown: if the store did not confirm in time; it may be published.
        """

    @abstractmethod
    def read(
        self, categories: Sequence[str], since_time: int | None, last_id: str | None
    ) -> ReadResult:
        """The events after the cursor ``(since_time, last_id)`` in *categories*.

        Without *since_time*, no events: only the position to wait from ("now").
        """

    @abstractmethod
    def events(self, category: str) -> list[Event]:
        """The events *category* holds now, oldest first (expired ones left out)."""

    @abstractmethod
    def counts(self) -> tuple[int, int]:
        """``(categories that hold events, events held)``."""

    @property
    def buffered_bytes(self) -> int:
        """The bytes this process holds for buffered events (``0`` for an engine that
        keeps them elsewhere, such as Redis)."""
        return 0

    @property
    def idempotency_key_bytes(self) -> int:
        """The bytes this process holds for idempotency keys (``0`` for an engine that
        keeps them elsewhere, such as Redis)."""
        return 0

    @abstractmethod
    def check(self) -> None:
        """Make sure that events can be stored now (for health checks).

        :raises StorageUnavailable: naming what fails (Redis unreachable, a failed disk).
        """

    @abstractmethod
    def watch(self, categories: Sequence[str], after: Position) -> None:
        """Deliver the events of *categories* after *after* to the listener, now and as
        they come, until a matching :meth:`unwatch`. Watches are counted per category."""

    @abstractmethod
    def unwatch(self, categories: Sequence[str]) -> None:
        """End one :meth:`watch` of *categories*."""

    @abstractmethod
    def close(self) -> None:
        """Release connections, threads and files; write out what must be written."""
