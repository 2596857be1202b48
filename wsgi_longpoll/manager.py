"""The manager: per-category event buffers and the subscribers waiting on them.

It knows nothing of HTTP. Code in the same process publishes with
:meth:`LongpollManager.publish`; the middleware calls :meth:`LongpollManager.subscribe`
for each long poll.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent
from gevent.hub import Waiter
from gevent.monkey import get_original

from .engines.memory import CapacityExceeded, MemoryEngine, Persister, StorageUnavailable
from .event import Event, Gap
from .protocol import validate_category

if TYPE_CHECKING:
    from gevent.hub import Hub

    from .engines.redis import Position, RedisEngine

__all__ = [
    "CapacityExceeded",
    "Delivery",
    "LongpollManager",
    "ManagerClosed",
    "ManagerStats",
    "Persister",
    "StorageUnavailable",
]

logger = logging.getLogger(__name__)

# Real OS primitives even when the process is monkey-patched: publish may come from
# any OS thread, and the lock is never held across a greenlet switch.
_allocate_lock = get_original("_thread", "allocate_lock")
_get_thread_ident = get_original("_thread", "get_ident")

_DEFAULT_MAX_TIMEOUT = 110


class ManagerClosed(RuntimeError):
    """The manager was closed; it accepts no more events."""


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

    __slots__ = ("pending", "waiter", "hub", "cursor")

    def __init__(self, hub: Hub) -> None:
        self.pending: list[Event] = []
        self.waiter = Waiter(hub)
        self.hub = hub
        #: With a shared engine: the stream position of the last event delivered.
        self.cursor: Position = (0, 0)


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
    """Owns the long polls waiting for events, and the engine that stores the events.

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
    :param redis_url: keep the events in Redis Streams at this URL instead of in this
        process (see :mod:`wsgi_longpoll.engines.redis` and ``docs/scaling.md``), so that
        every process and host pointed at it serves one event stream. Needs the
        ``redis`` extra; excludes *persister* (Redis's own AOF/RDB keeps the events)
        and *delete_event_after_first_retrieval*.
    :param redis_key_prefix: put before every Redis key, so that several applications
        share one Redis.

    ``publish`` is safe from any thread or greenlet. A subscriber waits on the gevent hub
    of its own thread. The in-memory manager starts no thread or greenlet of its own;
    with Redis, one reader per process (a daemon thread, or a greenlet when gevent has
    patched the process) starts when the first subscriber waits.
    """

    _engine: MemoryEngine
    _redis: RedisEngine | None

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
        redis_url: str | None = None,
        redis_key_prefix: str = "wsgi_longpoll:",
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
        self._lock = _allocate_lock()
        self._waiters: dict[str, dict[_Subscriber, None]] = {}
        self._waiting = 0
        self._events_published = 0
        self._events_delivered = 0
        self._publish_errors = 0
        self._draining = False
        self._closed = False
        self._redis = None
        if redis_url is not None:
            if persister is not None:
                raise ValueError(
                    "persister does not work with redis_url: Redis keeps the events "
                    "(turn on its AOF for durability)"
                )
            if delete_event_after_first_retrieval:
                raise ValueError(
                    "delete_event_after_first_retrieval does not work with redis_url"
                )
            try:
                from .engines.redis import RedisEngine
            except ImportError as error:
                raise ImportError(
                    "redis_url needs redis-py: pip install 'wsgi_longpoll[redis]'"
                ) from error

            self._redis = RedisEngine(
                redis_url, redis_key_prefix, max_event_buffer_size,
                self.event_time_to_live_seconds, max_categories,
            )
            return
        with self._lock:
            self._engine = MemoryEngine(
                max_event_buffer_size, self.event_time_to_live_seconds, max_categories,
                persister,
            )

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
        :raises CapacityExceeded: if *category* is new and ``max_categories`` hold events.
        :raises StorageUnavailable: with Redis, if it cannot be reached or did not answer
            in time; the event was not published.
        """
        validate_category(category)
        if data is None:
            raise ValueError("data must not be None")
        if self._redis is not None:
            return self._publish_shared(self._redis, category, data)
        with self._lock:
            if self._closed:
                self._publish_errors += 1
                raise ManagerClosed("the manager is closed")
            waiters = self._waiters.get(category)
            try:
                event = self._engine.append(
                    category, data, not (waiters and self.delete_event_after_first_retrieval)
                )
            except CapacityExceeded:
                self._publish_errors += 1
                raise
            self._events_published += 1
            woken = self._deliver(event, waiters) if waiters else None
        if woken:
            self._schedule_wake(woken)
        return event

    def _publish_shared(self, engine: RedisEngine, category: str, data: Any) -> Event:
        # Redis delivers the event to every process's reader, this one's included.
        if self._closed:
            with self._lock:
                self._publish_errors += 1
            raise ManagerClosed("the manager is closed")
        try:
            event = engine.append(category, data)
        except (CapacityExceeded, StorageUnavailable):
            with self._lock:
                self._publish_errors += 1
            raise
        with self._lock:
            self._events_published += 1
        return event

    @staticmethod
    def _deliver_after(
        events: list[tuple[Position, Event]],
        waiters: dict[_Subscriber, None],
        woken: dict[Hub, list[_Subscriber]],
    ) -> None:
        """Hand each subscriber the *events* after its cursor (called with the lock held)."""
        for subscriber in waiters:
            was_empty = not subscriber.pending
            for position, event in events:
                if position > subscriber.cursor:
                    subscriber.pending.append(event)
                    subscriber.cursor = position
            if was_empty and subscriber.pending:
                woken.setdefault(subscriber.hub, []).append(subscriber)

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
        :raises CapacityExceeded: if ``max_waiting_subscribers`` are waiting already.
        :raises StorageUnavailable: with Redis, if it cannot be reached or did not answer
            in time.
        """
        if isinstance(categories, str):
            categories = (categories,)
        if self._redis is not None:
            return self._subscribe_shared(
                self._redis, categories, timeout, since_time, last_id, connection
            )
        with self._lock:
            gaps: list[Gap] = []
            if since_time is not None:
                events, gaps = self._engine.read(
                    categories, since_time, last_id, self.delete_event_after_first_retrieval
                )
                if events:
                    self._events_delivered += len(events)
                    return Delivery(events, gaps)
            else:
                self._engine.sweep()
            if self._draining:
                return Delivery([], gaps)
            subscriber = self._register(categories)
        try:
            self._wait(subscriber, timeout, connection)
        finally:
            events = self._unregister(subscriber, categories)
        return Delivery(events, gaps)

    def _subscribe_shared(
        self, engine: RedisEngine, categories: Sequence[str], timeout: float,
        since_time: int | None, last_id: str | None, connection: socket.socket | None,
    ) -> Delivery:
        now = None
        if since_time is None:
            # "Now" is where the reader stands in every category it follows already: no
            # round trip for the thousands of subscribers that park on a busy category.
            with self._lock:
                reader = engine._reader
                if reader is not None and reader.pid == os.getpid():
                    known = [reader.positions.get(category) for category in categories]
                    if None not in known:
                        now = max(known)  # type: ignore[type-var]
        if now is None:
            events, gaps, now = engine.read(categories, since_time, last_id)
        else:
            events, gaps = [], []
        with self._lock:
            if events:
                self._events_delivered += len(events)
                return Delivery(events, gaps)
            if self._draining:
                return Delivery([], gaps)
            subscriber = self._register(categories)
            # The reader reads from the cursor on: an event published since the read
            # above (by any process) is delivered, and none twice.
            cursor = now if since_time is None else engine.start_position(since_time, last_id)
            subscriber.cursor = cursor
            reader = engine.follow(self)
            target = reader.track(categories, cursor)
        try:
            if target is not None:
                reader.interrupt(target)
            self._wait(subscriber, timeout, connection)
        finally:
            events = self._unregister(subscriber, categories)
        if len(categories) > 1 and len(events) > 1:
            events.sort(key=lambda event: engine.position_of(event) or (0, 0))
        return Delivery(events, gaps)

    def _register(self, categories: Sequence[str]) -> _Subscriber:
        """Add a waiting subscriber to *categories* (called with the lock held)."""
        if self._waiting >= self.max_waiting_subscribers:
            raise CapacityExceeded(
                f"{self.max_waiting_subscribers} subscribers are waiting already "
                "(max_waiting_subscribers)"
            )
        subscriber = _Subscriber(gevent.get_hub())
        self._waiting += 1
        for category in categories:
            self._waiters.setdefault(category, {})[subscriber] = None
        return subscriber

    def _unregister(self, subscriber: _Subscriber, categories: Sequence[str]) -> list[Event]:
        """Remove *subscriber*; return the events delivered to it."""
        with self._lock:
            self._waiting -= 1
            for category in categories:
                waiters = self._waiters.get(category)
                if waiters is not None:
                    waiters.pop(subscriber, None)
                    if not waiters:
                        del self._waiters[category]
                        if self._redis is not None and self._redis._reader is not None:
                            self._redis._reader.untrack(category)
            events = subscriber.pending
            subscriber.pending = []
            self._events_delivered += len(events)
        return events

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

    def buffered_events(self, category: str) -> list[Event]:
        """The events *category* holds now, oldest first (expired ones left out)."""
        if self._redis is not None:
            return self._redis.events(category)
        with self._lock:
            return self._engine.events(category)

    def waiting_count(self, category: str | None = None) -> int:
        """How many subscribers are waiting, in *category* or in all categories."""
        with self._lock:
            if category is not None:
                return len(self._waiters.get(category, ()))
            return self._waiting

    def stats(self) -> ManagerStats:
        """A consistent snapshot of the manager's counters.

        With Redis, ``categories`` and ``buffered_events`` count every process's events
        (one Redis script that visits every category); the other counters are this
        process's.

        :raises StorageUnavailable: with Redis, if it cannot be reached.
        """
        shared = None if self._redis is None else self._redis.counts()
        with self._lock:
            categories, buffered = self._engine.counts() if shared is None else shared
            return ManagerStats(
                categories=categories,
                buffered_events=buffered,
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
        """:meth:`drain`, then refuse new events and close the engine. Idempotent."""
        self.drain()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._redis is not None:
            self._redis.close()
        else:
            self._engine.close()
