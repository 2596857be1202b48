"""The manager: the subscribers that wait for events, and the engine that keeps the events.

It knows nothing of HTTP and nothing of how events are stored. Code in the same process
publishes with :meth:`LongpollManager.publish`; the middleware calls
:meth:`LongpollManager.subscribe` for each long poll, and a server that answers parked
connections itself hands the manager a :class:`Subscriber` of its own
(:meth:`LongpollManager.attach`). The engine (:mod:`wsgi_longpoll.engines`) hands live
events back through :meth:`LongpollManager.deliver`, the one delivery path of every engine.
"""

from __future__ import annotations

import socket
import weakref
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import gevent
from gevent.hub import Waiter
from gevent.monkey import get_original

from ._gevent import peer_closed
from .engines.base import Engine, Position
from .engines.memory import MemoryEngine, Persister
from .engines.options import MemoryOptions, RedisOptions
from .errors import (
    CapacityExceeded,
    IdempotencyConflict,
    ManagerClosed,
    OutcomeUnknown,
    ReplicationIncomplete,
    StorageUnavailable,
)
from .event import Event, Gap
from .limits import MAX_DEFAULT_WAITING, default_max_waiting, warn_if_above_open_files_limit
from .options import at_least, build, check_options, option, options_of
from .protocol import validate_category

if TYPE_CHECKING:
    from gevent.hub import Hub

__all__ = [
    "CapacityExceeded",
    "Delivery",
    "IdempotencyConflict",
    "LongpollManager",
    "ManagerClosed",
    "ManagerOptions",
    "ManagerStats",
    "OutcomeUnknown",
    "ReplicationIncomplete",
    "StorageUnavailable",
    "Subscriber",
    "live_managers",
]

# A real OS lock even when the process is monkey-patched: publish may come from any OS
# thread, and the lock is never held across a greenlet switch.
_allocate_lock = get_original("_thread", "allocate_lock")
_get_thread_ident = get_original("_thread", "get_ident")


@dataclass(frozen=True, kw_only=True)
class ManagerOptions:
    """The manager's own options (its engine's are :class:`~.engines.MemoryOptions`' or
    :class:`~.engines.RedisOptions`'), each defined once (see :mod:`wsgi_longpoll.options`).

    :raises TypeError: naming the option, for a value of the wrong type.
    :raises ValueError: naming the option, for a value out of range.
    """

    max_longpoll_timeout_seconds: int = option(
        110, check=at_least(0),
        help="the longest long-poll 'timeout' a client may ask for; 0 means the default",
    )
    max_waiting_subscribers: int | None = option(
        None, check=at_least(1),
        help="subscribers that may wait at once; one more is refused (503). None: what the "
        "open-files limit (ulimit -n) allows, less the files open and some headroom, at "
        "most 50,000",
    )

    def __post_init__(self) -> None:
        check_options(self)


#: The options of the engine the manager builds, by name: its keyword arguments.
_ENGINE_OPTIONS = options_of(MemoryOptions, RedisOptions)


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


class Subscriber(ABC):
    """Something that waits for events: a parked long poll, a stream.

    :meth:`LongpollManager.attach` sets :attr:`categories`, :attr:`cursor` and
    :attr:`gaps`; the manager then calls :meth:`deliver` with the events after the
    cursor as they are published, until the subscriber is done or detached.
    """

    __slots__ = ("categories", "cursor", "gaps")

    def __init__(self) -> None:
        #: The categories it waits on.
        self.categories: tuple[str, ...] = ()
        #: The position of the newest event handed to it; the manager moves it.
        self.cursor: Position = (0, 0)
        #: The gaps found when it attached: answer them with its events.
        self.gaps: list[Gap] = []

    @abstractmethod
    def deliver(self, events: list[Event]) -> bool:
        """Take *events* (oldest first, all after the cursor).

        Called with the manager's lock held, from whichever thread or greenlet published:
        never block, never switch greenlets. Every single-category subscriber that gets
        the same events in one delivery gets the same list object, so that an answer can
        be encoded once (compare with ``is``).

        :returns: ``True`` when done waiting: the manager forgets the subscriber at once.
            ``False`` to go on receiving until :meth:`LongpollManager.detach`.
        """

    @abstractmethod
    def release(self) -> None:
        """Answer now: the manager drains. Called without the manager's lock; the
        subscriber then calls :meth:`LongpollManager.detach`."""


class _WaitingGreenlet(Subscriber):
    """The subscriber of :meth:`LongpollManager.subscribe`: a greenlet on a gevent Waiter."""

    __slots__ = ("pending", "waiter", "hub")

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.pending: list[Event] = []
        self.waiter = Waiter(hub)
        self.hub = hub

    def deliver(self, events: list[Event]) -> bool:
        if not self.pending:
            self.release()
        self.pending.extend(events)
        return False

    def release(self) -> None:
        # A Waiter may only be switched from its hub; any thread may ask the hub to.
        hub = self.hub
        if hub.thread_ident == _get_thread_ident():
            hub.loop.run_callback(self.waiter.switch, None)
        else:
            hub.loop.run_callback_threadsafe(self.waiter.switch, None)


class LongpollManager:
    """Owns the subscribers waiting for events, and the engine that stores the events.

    Options are golongpoll's, in snake case, with its defaults; but for the manager's own
    (:class:`ManagerOptions`), they configure the engine the manager builds
    (:class:`~.engines.MemoryOptions`, :class:`~.engines.RedisOptions`; pass *engine*
    instead to configure one yourself). The defaults are those classes'.

    :param max_longpoll_timeout_seconds: the longest ``timeout`` a subscriber may ask
        for; ``0`` means the default.
    :param max_event_buffer_size: how many events each category keeps; the oldest go first.
    :param event_time_to_live_seconds: events older than this are never served and are
        purged; ``None`` (or ``0``) keeps them for ever.
    :param delete_event_after_first_retrieval: remove an event from its buffer once it has
        been served, whether from the buffer or to the subscribers waiting when it came.
    :param engine: where the events are kept: a :class:`~wsgi_longpoll.engines.Engine`,
        such as :class:`~wsgi_longpoll.engines.MemoryEngine` or
        :class:`~wsgi_longpoll.engines.RedisEngine`. Excludes the engine options above
        and below.
    :param persister: stores every event and gives them back on start
        (see :class:`wsgi_longpoll.engines.persist.FilePersister`).
    :param max_categories: how many categories may hold events at once; a new one pushes
        out the category idle longest that nobody waits on (its subscribers get the gap
        signal), and only when every category has waiting subscribers does publishing to
        one more raise :class:`CapacityExceeded`.
    :param max_buffered_bytes: the most bytes of events held across every category
        (in memory); the oldest events of all go first, with the gap signal. ``None``: no
        bound but the others.
    :param max_waiting_subscribers: how many subscribers may wait at once; one more
        raises :class:`CapacityExceeded`. ``None``: what the open-files limit allows (see
        :func:`wsgi_longpoll.limits.default_max_waiting`); a value above that limit is
        logged as a warning.
    :param redis_url: keep the events in Redis Streams at this URL instead of in this
        process (see :mod:`wsgi_longpoll.engines.redis` and ``docs/scaling.md``), so that
        every process and host pointed at it serves one event stream. Needs the
        ``redis`` extra; excludes *persister* (Redis's own AOF/RDB keeps the events)
        and *delete_event_after_first_retrieval*.
    :param redis_key_prefix: put before every Redis key, so that several applications
        share one Redis.
    :param redis_min_replicas: with Redis, a publish returns only once this many replicas
        of the primary have the event (Redis ``WAIT``), so that a failover to one of them
        loses no event :meth:`publish` returned; fewer in time raise
        :class:`ReplicationIncomplete`.

    ``publish`` is safe from any thread or greenlet. A subscriber waits on the gevent hub
    of its own thread. The in-memory manager starts no thread or greenlet of its own;
    with Redis, one reader per process (a daemon thread, or a greenlet when gevent has
    patched the process) starts when the first subscriber waits.
    """

    #: The default ``max_categories``.
    default_max_categories = MemoryOptions.max_categories
    #: The most ``max_waiting_subscribers`` is by default, however high the open-files limit.
    default_max_waiting_subscribers = MAX_DEFAULT_WAITING

    def __init__(
        self,
        max_longpoll_timeout_seconds: int = ManagerOptions.max_longpoll_timeout_seconds,
        max_event_buffer_size: int = MemoryOptions.max_event_buffer_size,
        event_time_to_live_seconds: float | None = MemoryOptions.event_time_to_live_seconds,
        delete_event_after_first_retrieval: bool = (
            MemoryOptions.delete_event_after_first_retrieval),
        *,
        engine: Engine | None = None,
        persister: Persister | None = None,
        max_categories: int = MemoryOptions.max_categories,
        max_waiting_subscribers: int | None = ManagerOptions.max_waiting_subscribers,
        max_buffered_bytes: int | None = MemoryOptions.max_buffered_bytes,
        redis_url: str | None = RedisOptions.url,
        redis_key_prefix: str = RedisOptions.key_prefix,
        redis_min_replicas: int = RedisOptions.min_replicas,
    ) -> None:
        # The engine's options, by name: the parameters are named after them.
        engine_options = {
            name: value for name, value in locals().items() if name in _ENGINE_OPTIONS
        }
        #: The manager's own options, checked.
        self.options = ManagerOptions(
            max_longpoll_timeout_seconds=max_longpoll_timeout_seconds,
            max_waiting_subscribers=max_waiting_subscribers,
        )
        if max_waiting_subscribers is None:
            max_waiting_subscribers = default_max_waiting()
        else:
            warn_if_above_open_files_limit(max_waiting_subscribers)
        #: Subscribers that may wait at once; one more raises :class:`CapacityExceeded`.
        self.max_waiting_subscribers: int = max_waiting_subscribers
        self.max_longpoll_timeout_seconds = (
            max_longpoll_timeout_seconds or ManagerOptions.max_longpoll_timeout_seconds
        )
        if engine is None:
            engine = _build_engine(engine_options, persister)
        else:
            given = [name for name, value in engine_options.items()
                     if value != _ENGINE_OPTIONS[name].default]
            if persister is not None:
                given.append("persister")
            if given:
                raise ValueError(
                    f"engine= excludes the engine's options ({', '.join(given)}): give "
                    "them to the engine"
                )
        #: Where the events are kept.
        self.engine: Engine = engine
        self._lock = _allocate_lock()
        self._waiters: dict[str, dict[Subscriber, None]] = {}
        self._waiting = 0
        self._events_published = 0
        self._events_delivered = 0
        self._publish_errors = 0
        self._draining = False
        self._closed = False
        engine.bind(self.deliver)
        with _live_lock:
            _live.add(self)

    @property
    def max_event_buffer_size(self) -> int:
        """How many events each category keeps (the engine's)."""
        return self.engine.max_event_buffer_size

    @property
    def event_time_to_live_seconds(self) -> float | None:
        """How long events are kept, in seconds; ``None``: for ever (the engine's)."""
        return self.engine.event_time_to_live_seconds

    @property
    def max_categories(self) -> int:
        """How many categories may hold events at once (the engine's)."""
        return self.engine.max_categories

    @property
    def delete_event_after_first_retrieval(self) -> bool:
        """Whether served events are removed (an option of the in-memory engine)."""
        return getattr(self.engine, "delete_event_after_first_retrieval", False)

    # -- publishing -------------------------------------------------------------------

    def publish(self, category: str, data: Any, *, idempotency_key: str | None = None) -> Event:
        """Publish *data* to *category*; the engine hands it to the waiting subscribers.

        The event is stored (and handed to the persister) when this returns.

        :param category: 1 to 1024 bytes of UTF-8.
        :param data: any JSON-serialisable value except ``None``.
        :param idempotency_key: makes retries safe: a publish to the same category with
            the same key and the same *data* (as JSON values: whitespace and the order of
            object keys aside) within the engine's ``idempotency_window_seconds``
            (5 minutes) publishes nothing and returns the event the first one published.
        :returns: the event, with its id and timestamp.
        :raises ValueError: for an invalid category or ``None`` data.
        :raises TypeError: if *data* cannot be encoded as JSON.
        :raises ManagerClosed: once :meth:`close` has been called.
        :raises CapacityExceeded: if *category* is new and ``max_categories`` hold events.
        :raises IdempotencyConflict: (a :class:`ValueError`) if *idempotency_key* was used
            in *category* within the window for other *data*; nothing was published.
        :raises StorageUnavailable: if the engine could not store the event (Redis
            unreachable); the event was not published.
        :raises OutcomeUnknown: (a :class:`StorageUnavailable`) if the engine did not
            confirm in time: the event may be published; retry with the same
            *idempotency_key* to publish it at most once.
        :raises ReplicationIncomplete: (an :class:`OutcomeUnknown`) with
            ``redis_min_replicas``, if too few replicas confirmed the event in time: it is
            published, but a failover may lose it; retry with the same *idempotency_key*.
        """
        validate_category(category)
        if data is None:
            raise ValueError("data must not be None")
        try:
            if self._closed:
                raise ManagerClosed("the manager is closed")
            event = self.engine.append(category, data, idempotency_key)
        except (ManagerClosed, CapacityExceeded, StorageUnavailable):
            with self._lock:
                self._publish_errors += 1
            raise
        with self._lock:
            self._events_published += 1
        return event

    def deliver(
        self, batch: Sequence[tuple[Position, Event]],
        gaps: Sequence[tuple[Position, Gap]] = (),
    ) -> None:
        """Hand each waiting subscriber the events of *batch* after its cursor.

        The engine's listener: *batch* is in position order. Each of *gaps* (events of
        its category dropped before they could be delivered, the newest at its position)
        goes to the subscribers whose cursor is older, with their next answer.
        Subscribers that are done (:meth:`Subscriber.deliver` returned ``True``) are
        forgotten.
        """
        finished: list[Subscriber] = []
        with self._lock:
            waiters = self._waiters
            for position, gap in gaps:
                for subscriber in waiters.get(gap.category, ()):
                    if subscriber.cursor < position and gap not in subscriber.gaps:
                        subscriber.gaps.append(gap)
            by_category: dict[str, list[tuple[Position, Event]]] = {}
            for entry in batch:
                if entry[1].category in waiters:
                    by_category.setdefault(entry[1].category, []).append(entry)
            several: dict[Subscriber, None] = {}
            for category, entries in by_category.items():
                first, last = entries[0][0], entries[-1][0]
                shared: list[Event] | None = None
                for subscriber in waiters[category]:
                    if len(subscriber.categories) > 1:
                        several[subscriber] = None
                        continue
                    cursor = subscriber.cursor
                    if cursor >= last:
                        continue
                    if cursor < first:
                        if shared is None:
                            shared = [event for _, event in entries]
                        events = shared
                    else:
                        events = [event for position, event in entries if position > cursor]
                    subscriber.cursor = last
                    self._events_delivered += len(events)
                    if subscriber.deliver(events):
                        finished.append(subscriber)
            for subscriber in several:
                cursor, categories = subscriber.cursor, subscriber.categories
                mine = [
                    (position, event) for position, event in batch
                    if position > cursor and event.category in categories
                ]
                if mine:
                    subscriber.cursor = mine[-1][0]
                    self._events_delivered += len(mine)
                    if subscriber.deliver([event for _, event in mine]):
                        finished.append(subscriber)
            for subscriber in finished:
                self._remove(subscriber)
        for subscriber in finished:
            self.engine.unwatch(subscriber.categories)

    # -- subscribing ------------------------------------------------------------------

    def attach(
        self,
        subscriber: Subscriber,
        categories: str | Sequence[str],
        since_time: int | None = None,
        last_id: str | None = None,
    ) -> Delivery | None:
        """Answer *subscriber* at once, or register it to wait for events.

        With *since_time*, buffered events after the cursor ``(since_time, last_id)``
        are the answer (see :meth:`subscribe`); without it, only events published from
        now on count.

        :returns: a :class:`Delivery` to answer with now (events found, or the manager
            drains); ``None`` when the subscriber waits: the manager calls its
            :meth:`~Subscriber.deliver` or :meth:`~Subscriber.release`, and its owner
            calls :meth:`detach` when it stops waiting (timeout, hang-up).
        :raises ValueError: for an invalid category.
        :raises CapacityExceeded: if ``max_waiting_subscribers`` are waiting already.
        :raises StorageUnavailable: if the engine cannot be read (Redis unreachable).
        """
        categories = (categories,) if isinstance(categories, str) else tuple(categories)
        if not categories:
            raise ValueError("at least one category is needed")
        for category in categories:
            validate_category(category)
        found = self.engine.read(categories, since_time, last_id)
        with self._lock:
            if found.events:
                self._events_delivered += len(found.events)
                return Delivery(found.events, found.gaps)
            if self._draining:
                return Delivery([], found.gaps)
            if self._waiting >= self.max_waiting_subscribers:
                raise CapacityExceeded(
                    f"{self.max_waiting_subscribers} subscribers are waiting already "
                    "(max_waiting_subscribers)"
                )
            subscriber.categories = categories
            subscriber.cursor = found.position
            subscriber.gaps = found.gaps
            self._waiting += 1
            for category in categories:
                self._waiters.setdefault(category, {})[subscriber] = None
        try:
            self.engine.watch(categories, found.position)
        except BaseException:  # a failed, killed or timed-out watch leaves nothing behind
            self.detach(subscriber)
            raise
        return None

    def detach(self, subscriber: Subscriber) -> None:
        """Stop handing events to *subscriber*. Idempotent; never call it from
        :meth:`Subscriber.deliver`."""
        with self._lock:
            if not self._remove(subscriber):
                return
        self.engine.unwatch(subscriber.categories)

    def _remove(self, subscriber: Subscriber) -> bool:
        """Forget *subscriber* (called with the lock held); whether it was waiting."""
        categories = subscriber.categories
        if not categories or subscriber not in self._waiters.get(categories[0], ()):
            return False
        self._waiting -= 1
        for category in categories:
            waiters = self._waiters[category]
            del waiters[subscriber]
            if not waiters:
                del self._waiters[category]
        return True

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
        count. A subscriber woken by an event gets every event delivered to it until it
        stops waiting. No events means the wait timed out, the manager drained, or
        *connection* (the client's socket) was closed by the peer.

        :param categories: one category, or several.
        :raises ValueError: for an invalid category.
        :raises CapacityExceeded: if ``max_waiting_subscribers`` are waiting already.
        :raises StorageUnavailable: if the engine cannot be read (Redis unreachable).
        """
        subscriber = _WaitingGreenlet(gevent.get_hub())
        delivery = self.attach(subscriber, categories, since_time, last_id)
        if delivery is not None:
            return delivery
        try:
            self._wait(subscriber, timeout, connection)
        finally:
            self.detach(subscriber)
        return Delivery(subscriber.pending, subscriber.gaps)

    @staticmethod
    def _wait(
        subscriber: _WaitingGreenlet, timeout: float, connection: socket.socket | None
    ) -> None:
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
                if peer_closed(connection):
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
        """The events *category* holds now, oldest first (expired ones left out).

        :raises StorageUnavailable: if the engine cannot be read (Redis unreachable).
        """
        return self.engine.events(category)

    def waiting_count(self, category: str | None = None) -> int:
        """How many subscribers are waiting, in *category* or in all categories."""
        with self._lock:
            if category is not None:
                return len(self._waiters.get(category, ()))
            return self._waiting

    def stats(self) -> ManagerStats:
        """A snapshot of the manager's counters.

        ``categories`` and ``buffered_events`` are the engine's (with Redis: every
        process's); the other counters are this manager's.

        :raises StorageUnavailable: if the engine cannot be read (Redis unreachable).
        """
        categories, buffered = self.engine.counts()
        with self._lock:
            return ManagerStats(
                categories=categories,
                buffered_events=buffered,
                waiting_subscribers=self._waiting,
                events_published=self._events_published,
                events_delivered=self._events_delivered,
                publish_errors=self._publish_errors,
            )

    def check(self) -> None:
        """Make sure that events can be published now (for health checks).

        :raises ManagerClosed: once :meth:`close` has been called.
        :raises StorageUnavailable: if the engine cannot store events (Redis unreachable,
            a persister whose writes fail).
        """
        if self._closed:
            raise ManagerClosed("the manager is closed")
        self.engine.check()

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
            waiting = {
                subscriber: None
                for waiters in self._waiters.values()
                for subscriber in waiters
            }
        for subscriber in waiting:
            subscriber.release()

    def close(self) -> None:
        """:meth:`drain`, then refuse new events and close the engine. Idempotent."""
        self.drain()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.engine.close()


#: Every manager made in this process and not yet garbage-collected.
_live: weakref.WeakSet[LongpollManager] = weakref.WeakSet()
_live_lock = _allocate_lock()


def live_managers() -> list[LongpollManager]:
    """The managers of this process that are not closed, in no particular order.

    A server finds here the managers an application built, wherever it keeps them (a
    Flask extension, a Django app): :class:`~wsgi_longpoll.server.gunicorn.LongpollWorker`
    checks them at boot (:mod:`wsgi_longpoll.multiprocess`) and sizes its connection
    limit from their ``max_waiting_subscribers``.
    """
    with _live_lock:
        managers = list(_live)
    return [manager for manager in managers if not manager.closed]


def _build_engine(options: dict[str, Any], persister: Persister | None) -> Engine:
    """The engine that :class:`LongpollManager`'s golongpoll-style *options* describe
    (the engine options, by name)."""
    if options["redis_url"] is None:
        memory = options_of(MemoryOptions)
        given = [name for name, item in options_of(RedisOptions).items()
                 if name in options and name not in memory and options[name] != item.default]
        if given:
            raise ValueError(f"{', '.join(given)} needs redis_url: without it the events are "
                             "kept in this process's memory")
        return MemoryEngine(**asdict(build(MemoryOptions, options)), persister=persister)
    redis_options = build(RedisOptions, options)  # checked before anything is imported
    if persister is not None:
        raise ValueError(
            "persister does not work with redis_url: Redis keeps the events "
            "(turn on its AOF for durability)"
        )
    if options["delete_event_after_first_retrieval"]:
        raise ValueError("delete_event_after_first_retrieval does not work with redis_url")
    try:
        from .engines.redis import RedisEngine
    except ImportError as error:
        raise ImportError(
            "redis_url needs redis-py: pip install 'wsgi_longpoll[redis]'"
        ) from error
    return RedisEngine(**asdict(redis_options))
