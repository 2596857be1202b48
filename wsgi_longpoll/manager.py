"""The manager: per-category event buffers and the subscribers waiting on them.

It knows nothing of HTTP. Code in the same process publishes with
:meth:`LongpollManager.publish`; the middleware calls :meth:`LongpollManager.subscribe`
for each long poll.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Protocol

import gevent
from gevent.hub import Waiter
from gevent.monkey import get_original

from .buffer import EventBuffer
from .event import Event, Gap
from .protocol import now_ms, validate_category

if TYPE_CHECKING:
    from gevent.hub import Hub

__all__ = [
    "CapacityExceeded",
    "Delivery",
    "LongpollManager",
    "ManagerClosed",
    "ManagerStats",
    "Persister",
]

logger = logging.getLogger(__name__)

# Real OS primitives even when the process is monkey-patched: publish may come from
# any OS thread, and the lock is never held across a greenlet switch.
_allocate_lock = get_original("_thread", "allocate_lock")
_get_thread_ident = get_original("_thread", "get_ident")

_DEFAULT_MAX_TIMEOUT = 110


class ManagerClosed(RuntimeError):
    """The manager was closed; it accepts no more events."""


class CapacityExceeded(RuntimeError):
    """A limit of the manager is reached (categories held, waiting subscribers).

    Nothing was changed; the same call may succeed later.
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


@dataclass(slots=True)
class Delivery:
    """What a subscribe call got: events oldest first, and the gaps before them.

    No events means the wait timed out, the manager drained, or the client hung up.
    """

    events: list[Event] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ManagerStats:
    """A snapshot of a manager's counters (see :meth:`LongpollManager.stats`)."""

    #: Categories that hold events (or remember dropped ones, for the gap signal).
    categories: int
    #: Events held in every buffer.
    buffered_events: int
    #: Subscribers waiting now.
    waiting_subscribers: int
    #: Events accepted by :meth:`LongpollManager.publish` since the manager was made.
    events_published: int
    #: Events handed to subscribers (one event to ten subscribers counts ten).
    events_delivered: int
    #: Publish calls that failed after validation (closed manager, storage errors).
    publish_errors: int


class _Subscriber:
    """One waiting long poll: the events delivered to it and how to wake it."""

    __slots__ = ("pending", "waiter", "hub")

    def __init__(self, hub: Hub) -> None:
        self.pending: list[Event] = []
        self.waiter = Waiter(hub)
        self.hub = hub


def _wake(subscribers: list[_Subscriber]) -> None:
    # Runs in the subscribers' hub: a Waiter may only be switched from there.
    for subscriber in subscribers:
        subscriber.waiter.switch(None)


def _peer_closed(connection: socket.socket) -> bool:
    raw = getattr(connection, "_sock", connection)  # gevent's socket wraps a non-blocking one
    try:
        return raw.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class LongpollManager:
    """Owns the event buffers of every category and the long polls waiting on them.

    Options are golongpoll's, in snake case, with its defaults:

    :param max_longpoll_timeout_seconds: the longest ``timeout`` a subscriber may ask
        for; ``0`` means the default, 110.
    :param max_event_buffer_size: how many events each category keeps; the oldest go first.
    :param event_time_to_live_seconds: events older than this are never served and are
        purged; ``None`` (or ``0``) keeps them for ever.
    :param delete_event_after_first_retrieval: remove an event from its buffer once it has
        been served, whether from the buffer or to the subscribers waiting when it came.
    :param persister: stores every event and gives them back on start
        (see :class:`wsgi_longpoll.persist.FilePersister`).
    :param max_categories: how many categories may hold events at once; publishing to
        one more raises :class:`CapacityExceeded`.
    :param max_waiting_subscribers: how many subscribers may wait at once; one more
        raises :class:`CapacityExceeded`.

    ``publish`` is safe from any thread or greenlet. A subscriber waits on the gevent hub
    of its own thread. The manager starts no thread or greenlet of its own.
    """

    #: How often, at most, every category is swept for expired events.
    sweep_interval_ms = 1000
    #: The default ``max_categories``.
    default_max_categories = 100_000
    #: The default ``max_waiting_subscribers``.
    default_max_waiting_subscribers = 50_000

    def __init__(
        self,
        max_longpoll_timeout_seconds: int = _DEFAULT_MAX_TIMEOUT,
        max_event_buffer_size: int = 250,
        event_time_to_live_seconds: float | None = None,
        delete_event_after_first_retrieval: bool = False,
        *,
        persister: Persister | None = None,
        max_categories: int = default_max_categories,
        max_waiting_subscribers: int = default_max_waiting_subscribers,
    ) -> None:
        if max_longpoll_timeout_seconds < 0:
            raise ValueError("max_longpoll_timeout_seconds must be 0 (the default) or more")
        if max_event_buffer_size < 1:
            raise ValueError("max_event_buffer_size must be at least 1")
        if event_time_to_live_seconds is not None and event_time_to_live_seconds < 0:
            raise ValueError("event_time_to_live_seconds must be None, 0 (both: for ever) or more")
        if max_categories < 1:
            raise ValueError("max_categories must be at least 1")
        if max_waiting_subscribers < 1:
            raise ValueError("max_waiting_subscribers must be at least 1")
        self.max_categories = max_categories
        self.max_waiting_subscribers = max_waiting_subscribers
        self.max_longpoll_timeout_seconds = (
            max_longpoll_timeout_seconds or _DEFAULT_MAX_TIMEOUT
        )
        self.max_event_buffer_size = max_event_buffer_size
        self.event_time_to_live_seconds = event_time_to_live_seconds or None
        self.delete_event_after_first_retrieval = delete_event_after_first_retrieval
        self._ttl_ms = (
            None if self.event_time_to_live_seconds is None
            else int(self.event_time_to_live_seconds * 1000)
        )
        self._lock = _allocate_lock()
        self._buffers: dict[str, EventBuffer] = {}
        self._waiters: dict[str, dict[_Subscriber, None]] = {}
        self._waiting = 0
        self._last_timestamp = 0
        #: Publish order across every category: a cursor means the same in all of them.
        self._last_seq = 0
        self._events_published = 0
        self._events_delivered = 0
        self._publish_errors = 0
        self._next_sweep = 0
        self._draining = False
        self._closed = False
        self._persister = persister
        if persister is not None:
            self._restore(persister.load())

    # -- publishing -------------------------------------------------------------------

    def publish(self, category: str, data: Any) -> Event:
        """Publish *data* to *category* and wake the subscribers waiting on it.

        The event is in the buffer (and handed to the persister) when this returns.

        :param category: 1 to 1024 bytes of UTF-8.
        :param data: any JSON-serialisable value except ``None``.
        :returns: the event, with its id and timestamp.
        :raises ValueError: for an invalid category or ``None`` data.
        :raises TypeError: if *data* cannot be encoded as JSON.
        :raises ManagerClosed: once :meth:`close` has been called.
        """
        validate_category(category)
        if data is None:
            raise ValueError("data must not be None")
        with self._lock:
            if self._closed:
                self._publish_errors += 1
                raise ManagerClosed("the manager is closed")
            # Monotonic across every category: (timestamp, publish order) never disagree.
            if category not in self._buffers and len(self._buffers) >= self.max_categories:
                self._maybe_sweep(now_ms())  # expired categories may make room
                if len(self._buffers) >= self.max_categories:
                    self._publish_errors += 1
                    raise CapacityExceeded(
                        f"{self.max_categories} categories hold events already "
                        "(max_categories)"
                    )
            timestamp = max(now_ms(), self._last_timestamp)
            event = Event(timestamp, category, str(uuid.uuid4()), data)
            event.to_json()  # encode once, here: a value JSON cannot hold fails the publish
            self._last_timestamp = timestamp
            self._last_seq += 1
            self._events_published += 1
            waiters = self._waiters.get(category)
            if not (waiters and self.delete_event_after_first_retrieval):
                self._buffer(category).append(event, self._last_seq)
            if self._persister is not None:
                self._persister.append(event)
                if self._persister.wants_compaction:
                    self._persister.compact(self._all_buffered())
            woken = self._deliver(event, waiters) if waiters else None
            self._maybe_sweep(timestamp)
        if woken:
            self._schedule_wake(woken)
        return event

    def _buffer(self, category: str) -> EventBuffer:
        buffer = self._buffers.get(category)
        if buffer is None:
            buffer = self._buffers[category] = EventBuffer(self.max_event_buffer_size)
        return buffer

    @staticmethod
    def _deliver(
        event: Event, waiters: dict[_Subscriber, None]
    ) -> dict[Hub, list[_Subscriber]]:
        woken: dict[Hub, list[_Subscriber]] = {}
        for subscriber in waiters:
            subscriber.pending.append(event)
            if len(subscriber.pending) == 1:
                woken.setdefault(subscriber.hub, []).append(subscriber)
        return woken

    @staticmethod
    def _schedule_wake(woken: dict[Hub, list[_Subscriber]]) -> None:
        thread = _get_thread_ident()
        for hub, subscribers in woken.items():
            if hub.thread_ident == thread:
                hub.loop.run_callback(_wake, subscribers)
            else:
                hub.loop.run_callback_threadsafe(_wake, subscribers)

    # -- subscribing ------------------------------------------------------------------

    def subscribe(
        self,
        categories: str | Sequence[str],
        timeout: float,
        since_time: int | None = None,
        last_id: str | None = None,
        *,
        connection: socket.socket | None = None,
    ) -> Delivery:
        """Wait up to *timeout* seconds for events in *categories*.

        With *since_time*, buffered events after the cursor ``(since_time, last_id)``
        are returned at once, oldest first across every category (see
        :meth:`EventBuffer.after`), with a :class:`Gap` for each category that dropped
        events the cursor had not seen; without it only events published from now on
        count. No events means the wait timed out, the manager drained, or
        *connection* (the client's socket) was closed by the peer.

        :param categories: one category, or several.
        """
        if isinstance(categories, str):
            categories = (categories,)
        with self._lock:
            self._maybe_sweep(now_ms())
            gaps: list[Gap] = []
            if since_time is not None:
                last_seq = self._seq_of(categories, last_id)
                gaps = self._gaps(categories, since_time, last_id, last_seq)
                events = self._buffered_after(categories, since_time, last_id, last_seq)
                if events:
                    self._events_delivered += len(events)
                    return Delivery(events, gaps)
            if self._draining:
                return Delivery([], gaps)
            if self._waiting >= self.max_waiting_subscribers:
                raise CapacityExceeded(
                    f"{self.max_waiting_subscribers} subscribers are waiting already "
                    "(max_waiting_subscribers)"
                )
            subscriber = _Subscriber(gevent.get_hub())
            self._waiting += 1
            for category in categories:
                self._waiters.setdefault(category, {})[subscriber] = None
        try:
            self._wait(subscriber, timeout, connection)
        finally:
            with self._lock:
                self._waiting -= 1
                for category in categories:
                    waiters = self._waiters.get(category)
                    if waiters is not None:
                        waiters.pop(subscriber, None)
                        if not waiters:
                            del self._waiters[category]
                events = subscriber.pending
                subscriber.pending = []
                self._events_delivered += len(events)
        return Delivery(events, gaps)

    def _live_buffer(self, category: str) -> EventBuffer | None:
        buffer = self._buffers.get(category)
        if buffer is not None and self._ttl_ms is not None:
            buffer.expire(now_ms() - self._ttl_ms)
        return buffer

    def _seq_of(self, categories: Sequence[str], last_id: str | None) -> int | None:
        """The publish number of the event *last_id*, if one of *categories* holds it."""
        if last_id is None:
            return None
        for category in categories:
            buffer = self._live_buffer(category)
            seq = None if buffer is None else buffer.seq_of(last_id)
            if seq is not None:
                return seq
        return None

    def _gaps(
        self, categories: Sequence[str], since_time: int, last_id: str | None,
        last_seq: int | None,
    ) -> list[Gap]:
        gaps = []
        for category in categories:
            buffer = self._live_buffer(category)
            if buffer is not None and buffer.missed(since_time, last_id, last_seq):
                assert buffer.floor is not None
                gaps.append(Gap(category, buffer.floor.timestamp, buffer.floor.id))
        return gaps

    def _buffered_after(
        self, categories: Sequence[str], since_time: int, last_id: str | None,
        last_seq: int | None,
    ) -> list[Event]:
        found: list[tuple[EventBuffer, list[Event]]] = []
        for category in categories:
            buffer = self._live_buffer(category)
            if buffer is not None:
                events = buffer.after(since_time, last_id, last_seq)
                if events:
                    found.append((buffer, events))
        if not found:
            return []
        if len(found) == 1:
            result = found[0][1]
        else:  # several categories: merge in publish order
            numbered = [
                (buffer.seq_of(event.id), event) for buffer, events in found for event in events
            ]
            numbered.sort(key=itemgetter(0))
            result = [event for _, event in numbered]
        if self.delete_event_after_first_retrieval:
            for buffer, events in found:
                buffer.drop_newest(len(events))
        return result

    @staticmethod
    def _wait(subscriber: _Subscriber, timeout: float, connection: socket.socket | None) -> None:
        loop = subscriber.hub.loop
        switch = subscriber.waiter.switch
        timer = loop.timer(max(timeout, 0.0))
        timer.start(switch, None)
        watcher = None
        if connection is not None:
            watcher = loop.io(connection.fileno(), 1)

            def on_readable() -> None:
                assert watcher is not None
                watcher.stop()  # a pipelined request (data) or a hang-up: look once only
                if _peer_closed(connection):
                    switch(None)

            watcher.start(on_readable)
        try:
            subscriber.waiter.get()
        finally:
            timer.close()
            if watcher is not None:
                watcher.close()

    # -- housekeeping -----------------------------------------------------------------

    def _maybe_sweep(self, now: int) -> None:
        if self._ttl_ms is None or now < self._next_sweep:
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

    def _restore(self, events: Iterable[Event]) -> None:
        ordered = sorted(events, key=lambda event: event.timestamp)  # stable: ties keep order
        cutoff = None if self._ttl_ms is None else now_ms() - self._ttl_ms
        with self._lock:
            for event in ordered:
                if cutoff is None or event.timestamp >= cutoff:
                    self._last_seq += 1
                    self._buffer(event.category).append(event, self._last_seq)
                self._last_timestamp = max(self._last_timestamp, event.timestamp)
            if self._persister is not None:
                self._persister.compact(self._all_buffered())
        logger.info("restored %d events in %d categories", len(ordered), len(self._buffers))

    def _all_buffered(self) -> list[Event]:
        """Every buffered event, oldest first (called with the lock held)."""
        numbered = [
            (buffer.seq_of(event.id), event)
            for buffer in self._buffers.values()
            for event in buffer.events()
        ]
        numbered.sort(key=itemgetter(0))
        return [event for _, event in numbered]

    def buffered_events(self, category: str) -> list[Event]:
        """The events *category* holds now, oldest first (expired ones left out)."""
        with self._lock:
            self._maybe_sweep(now_ms())
            buffer = self._live_buffer(category)
            return [] if buffer is None else buffer.events()

    def waiting_count(self, category: str | None = None) -> int:
        """How many subscribers are waiting, in *category* or in all categories."""
        with self._lock:
            if category is not None:
                return len(self._waiters.get(category, ()))
            return self._waiting

    def stats(self) -> ManagerStats:
        """A consistent snapshot of the manager's counters."""
        with self._lock:
            return ManagerStats(
                categories=len(self._buffers),
                buffered_events=sum(len(buffer) for buffer in self._buffers.values()),
                waiting_subscribers=self._waiting,
                events_published=self._events_published,
                events_delivered=self._events_delivered,
                publish_errors=self._publish_errors,
            )

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def drain(self) -> None:
        """Answer every waiting subscriber now, and every later one at once.

        Publishing still works, so that requests in progress can finish; a later
        subscriber gets what the buffer holds after its cursor, or nothing.
        """
        with self._lock:
            self._draining = True
            woken: dict[Hub, list[_Subscriber]] = {}
            for waiters in self._waiters.values():
                for subscriber in waiters:
                    woken.setdefault(subscriber.hub, []).append(subscriber)
        self._schedule_wake(woken)

    def close(self) -> None:
        """:meth:`drain`, then refuse new events and close the persister. Idempotent."""
        self.drain()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._persister is not None:
            self._persister.close()
