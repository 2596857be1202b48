"""The manager: the subscribers that wait for events, and the engine that keeps the events.

It knows nothing of HTTP and nothing of how events are stored. Code in the same process
publishes with :meth:`LongpollManager.publish`; the middleware calls
:meth:`LongpollManager.subscribe` for each long poll, and a server that answers parked
connections itself hands the manager a :class:`Subscriber` of its own
(:meth:`LongpollManager.attach`). The engine (:mod:`wsgi_longpoll.engines`) hands live
events back through :meth:`LongpollManager.deliver`, the one delivery path of every engine.
"""

from __future__ import annotations

import logging
import socket
import weakref
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import gevent
from gevent.hub import Waiter
from gevent.monkey import get_original

from ._gevent import peer_closed
from .backlog import StreamBacklog
from .budget import (
    BUFFERED_EVENTS,
    IDEMPOTENCY_KEYS,
    PARKED_ANSWERS,
    STREAM_BACKLOGS,
    BudgetOptions,
    MemoryBudget,
)
from .engines.base import Engine, Position
from .engines.memory import MemoryEngine, Persister
from .engines.options import MemoryOptions, RedisOptions
from .errors import (
    CapacityExceeded,
    IdempotencyConflict,
    ManagerClosed,
    OutcomeUnknown,
    ReplicationIncomplete,
    StorageRefused,
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
    "StorageRefused",
    "StorageUnavailable",
    "Subscriber",
    "live_managers",
]

logger = logging.getLogger(__name__)

# A real OS lock even when the process is monkey-patched: publish may come from any OS
# thread, and the lock is never held across a greenlet switch.
_allocate_lock = get_original("_thread", "allocate_lock")
_get_thread_ident = get_original("_thread", "get_ident")


@dataclass(frozen=True, kw_only=True)
class ManagerOptions(BudgetOptions):
    """The manager's own options (its engine's are :class:`~.engines.MemoryOptions`' or
    :class:`~.engines.RedisOptions`'), each defined once (see :mod:`wsgi_longpoll.options`):
    the memory budget's (:class:`~wsgi_longpoll.budget.BudgetOptions`) and these.

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
    #: Bytes of the events buffered in this process (see :mod:`wsgi_longpoll.budget`;
    #: ``0`` with Redis, which holds them).
    buffered_event_bytes: int = 0
    #: Bytes of the idempotency keys remembered in this process (``0`` with Redis).
    idempotency_key_bytes: int = 0
    #: Bytes that event streams were sent and their readers have not taken yet.
    stream_backlog_bytes: int = 0
    #: Bytes of long-poll answers their readers have not taken yet.
    parked_answer_bytes: int = 0


class Subscriber(ABC):
    """Something that waits for events: a parked long poll, a stream.

    :meth:`LongpollManager.attach` sets :attr:`categories`, :attr:`cursor` and
    :attr:`gaps`; the manager then calls :meth:`deliver` with the events after the
    cursor as they are published, until the subscriber is done or detached.

    A subscriber with a :attr:`hub` is delivered to on that hub's loop, after the
    publisher has its answer (the publisher's wait does not grow with the subscribers);
    one without, from inside :meth:`LongpollManager.publish`.
    """

    __slots__ = ("categories", "cursor", "gaps")

    #: The gevent hub whose loop delivers to it, or ``None``: inside the publish call.
    #: Its :meth:`attach <LongpollManager.attach>` and :meth:`detach
    #: <LongpollManager.detach>` must come from that hub's thread.
    hub: Hub | None = None

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

        Called from a callback of the subscriber's :attr:`hub` (or, without one, with the
        manager's lock held, from whichever thread or greenlet published): never block,
        never switch greenlets. Every single-category subscriber at the same position
        gets the same list object in one delivery, so that an answer can be encoded once
        (compare with ``is``).

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
        self.hub: Hub = hub

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
    :param max_memory_bytes: the most bytes clients can make the server hold, split by
        fixed shares between the events buffered in memory (the oldest of all go first,
        with the gap signal), the idempotency keys remembered (the oldest are forgotten
        first), the backlogs of event streams and the long-poll answers not yet read
        (new subscribers are refused); see :mod:`wsgi_longpoll.budget` and
        :attr:`budget`. ``None``: no bound but the others. With *engine*, the events and
        keys keep to the engine's own limits.
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
    :param redis_replica_timeout: how long, in seconds, a publish waits for
        *redis_min_replicas* replicas to confirm it.

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
        max_memory_bytes: int | None = ManagerOptions.max_memory_bytes,
        redis_url: str | None = RedisOptions.url,
        redis_key_prefix: str = RedisOptions.key_prefix,
        redis_min_replicas: int = RedisOptions.min_replicas,
        redis_replica_timeout: float = RedisOptions.replica_timeout,
    ) -> None:
        # The engine's options, by name: the parameters are named after them.
        engine_options = {
            name: value for name, value in locals().items() if name in _ENGINE_OPTIONS
        }
        #: The manager's own options, checked.
        self.options = ManagerOptions(
            max_longpoll_timeout_seconds=max_longpoll_timeout_seconds,
            max_waiting_subscribers=max_waiting_subscribers,
            max_memory_bytes=max_memory_bytes,
        )
        if max_waiting_subscribers is None:
            max_waiting_subscribers = default_max_waiting()
        else:
            warn_if_above_open_files_limit(max_waiting_subscribers)
        #: Subscribers that may wait at once; one more raises :class:`CapacityExceeded`.
        self.max_waiting_subscribers: int = max_waiting_subscribers
        #: The memory budget: what each kind of thing clients make the server hold may
        #: take of ``max_memory_bytes``, and what it holds (:meth:`MemoryBudget.use`).
        self.budget = MemoryBudget(max_memory_bytes)
        self.max_longpoll_timeout_seconds = (
            max_longpoll_timeout_seconds or ManagerOptions.max_longpoll_timeout_seconds
        )
        if engine is None:
            engine = _build_engine(engine_options, persister, self.budget)
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
        self.budget.add_source(BUFFERED_EVENTS, self._buffered_event_bytes)
        self.budget.add_source(IDEMPOTENCY_KEYS, self._idempotency_key_bytes)
        self._lock = _allocate_lock()
        #: The waiting subscribers by the hub that delivers to them (``None``: the
        #: publisher, inside the publish call).
        self._fanouts: dict[Hub | None, _Fanout] = {}
        # An event not kept (delete after first retrieval) goes to whoever waits when it
        # is published, not to whoever waits later.
        self._deferred = not getattr(engine, "delete_event_after_first_retrieval", False)
        self._waiting = 0
        self._events_published = 0
        self._events_delivered = 0
        self._publish_errors = 0
        self._draining = False
        self._closed = False
        #: The frames the streams of this manager hold for readers that are behind, and
        #: their cap (``stream_backlog.bytes``, ``stream_backlog.max_bytes``): the
        #: budget's share for stream backlogs.
        self.stream_backlog = backlog = StreamBacklog()
        stream_share = self.budget.limit(STREAM_BACKLOGS)
        if stream_share is not None:
            backlog.max_bytes = stream_share
        self.budget.add_source(STREAM_BACKLOGS, lambda: backlog.bytes)
        engine.bind(self.deliver)
        with _live_lock:
            _live.add(self)

    def _buffered_event_bytes(self) -> int:
        return self.engine.buffered_bytes

    def _idempotency_key_bytes(self) -> int:
        return self.engine.idempotency_key_bytes

    @property
    def max_memory_bytes(self) -> int | None:
        """The memory budget, in bytes; ``None``: no bound."""
        return self.budget.max_bytes

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

        The event is stored (and handed to the persister) when this returns; the
        subscribers waiting on a gevent hub get it from a callback of their hub, after
        this returns (see :meth:`deliver`).

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
        goes to the subscribers whose cursor is older, with their next answer (at once:
        before the events of *batch* reach them). Subscribers without a hub
        get them now; the others from a callback of their hub, which the first batch
        since the last one schedules (and which takes every batch queued by then), so
        that the publisher's answer does not wait for the fan-out and each subscriber
        gets its events in publish order. Subscribers that are done
        (:meth:`Subscriber.deliver` returned ``True``) are forgotten.
        """
        finished: list[Subscriber] = []
        with self._lock:
            for position, gap in gaps:
                for fanout in self._fanouts.values():
                    for subscriber in fanout.waiters.get(gap.category, ()):
                        if subscriber.cursor < position and gap not in subscriber.gaps:
                            subscriber.gaps.append(gap)
            gone: list[_Fanout] = []
            for hub, fanout in self._fanouts.items():
                waiters = fanout.waiters
                if not any(entry[1].category in waiters for entry in batch):
                    continue
                if hub is None:
                    done, delivered = self._fan_out(waiters, batch)
                    self._events_delivered += delivered
                    finished += done
                    continue
                loop = hub.loop
                if loop is None:  # a destroyed hub: nothing will ever wake its subscribers
                    gone.append(fanout)
                    continue
                fanout.batches.append(batch)
                if not fanout.scheduled:
                    fanout.scheduled = True
                    if hub.thread_ident == _get_thread_ident():
                        loop.run_callback(self._flush, fanout)
                    else:
                        loop.run_callback_threadsafe(self._flush, fanout)
            for fanout in gone:
                finished += {subscriber: None for waiters in fanout.waiters.values()
                             for subscriber in waiters}
            for subscriber in finished:
                self._remove(subscriber)
        for subscriber in finished:
            self.engine.unwatch(subscriber.categories)

    def _flush(self, fanout: _Fanout) -> None:
        """Deliver what was queued for the subscribers of *fanout* (on its hub)."""
        try:
            with self._lock:
                fanout.scheduled = False
                batches, fanout.batches = fanout.batches, []
            if not batches:
                return
            # Only this hub's thread adds or removes its subscribers (see Subscriber.hub):
            # the fan-out runs without the lock, and publishers meanwhile only queue.
            finished, delivered = self._fan_out(fanout.waiters, _merge(batches))
            with self._lock:
                self._events_delivered += delivered
                for subscriber in finished:
                    self._remove(subscriber)
            for subscriber in finished:
                self.engine.unwatch(subscriber.categories)
        except Exception:  # a callback of the hub: nobody else would hear of it
            logger.exception("delivering events failed")

    def _fan_out(self, waiters: dict[str, dict[Subscriber, None]],
                 batch: Sequence[tuple[Position, Event]]) -> tuple[list[Subscriber], int]:
        """Hand the subscribers of *waiters* the events of *batch* (in position order)
        after their cursor; return those that are done, and how many events went."""
        finished: list[Subscriber] = []
        delivered = 0
        by_category: dict[str, list[tuple[Position, Event]]] = {}
        for entry in batch:
            if entry[1].category in waiters:
                by_category.setdefault(entry[1].category, []).append(entry)
        several: dict[Subscriber, None] = {}
        for category, entries in by_category.items():
            first, last = entries[0][0], entries[-1][0]
            # The events after each position, one list for every subscriber there.
            shared: dict[int, list[Event]] = {}
            positions: list[Position] | None = None
            for subscriber in list(waiters.get(category, ())):
                if len(subscriber.categories) > 1:
                    several[subscriber] = None
                    continue
                cursor = subscriber.cursor
                if cursor >= last:
                    continue
                if cursor < first:
                    start = 0
                else:
                    if positions is None:
                        positions = [position for position, _ in entries]
                    start = bisect_right(positions, cursor)
                events = shared.get(start)
                if events is None:
                    events = shared[start] = [event for _, event in entries[start:]]
                subscriber.cursor = last
                delivered += len(events)
                if subscriber.deliver(events):
                    finished.append(subscriber)
        for subscriber in several:
            if subscriber in finished:
                continue
            cursor, categories = subscriber.cursor, subscriber.categories
            mine = [
                (position, event) for position, event in batch
                if position > cursor and event.category in categories
            ]
            if mine:
                subscriber.cursor = mine[-1][0]
                delivered += len(mine)
                if subscriber.deliver([event for _, event in mine]):
                    finished.append(subscriber)
        return finished, delivered

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
        :raises CapacityExceeded: if ``max_waiting_subscribers`` are waiting already, or
            long-poll answers not yet read fill their share of ``max_memory_bytes``.
        :raises StorageUnavailable: if the engine cannot be read (Redis unreachable).
        """
        categories = (categories,) if isinstance(categories, str) else tuple(categories)
        if not categories:
            raise ValueError("at least one category is needed")
        for category in categories:
            validate_category(category)
        if self.budget.exhausted(PARKED_ANSWERS):
            raise CapacityExceeded(
                f"{self.budget.held(PARKED_ANSWERS)} bytes of answers wait for their "
                f"readers, the share of max_memory_bytes ({self.budget.max_bytes}) for them"
            )
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
            hub = subscriber.hub if self._deferred else None
            fanout = self._fanouts.get(hub)
            if fanout is None:
                fanout = self._fanouts[hub] = _Fanout()
            waiters = fanout.waiters
            for category in categories:
                waiters.setdefault(category, {})[subscriber] = None
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
        hub = subscriber.hub if self._deferred else None
        fanout = self._fanouts.get(hub)
        if (not categories or fanout is None
                or subscriber not in fanout.waiters.get(categories[0], ())):
            return False
        self._waiting -= 1
        for category in categories:
            waiters = fanout.waiters[category]
            del waiters[subscriber]
            if not waiters:
                del fanout.waiters[category]
        if not fanout.waiters:  # what it still has queued is for nobody
            del self._fanouts[hub]
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
                return sum(len(fanout.waiters.get(category, ()))
                           for fanout in self._fanouts.values())
            return self._waiting

    def stats(self) -> ManagerStats:
        """A snapshot of the manager's counters.

        ``categories`` and ``buffered_events`` are the engine's (with Redis: every
        process's); the other counters are this manager's.

        :raises StorageUnavailable: if the engine cannot be read (Redis unreachable).
        """
        categories, buffered = self.engine.counts()
        use = self.budget.use()
        with self._lock:
            return ManagerStats(
                categories=categories,
                buffered_events=buffered,
                waiting_subscribers=self._waiting,
                events_published=self._events_published,
                events_delivered=self._events_delivered,
                publish_errors=self._publish_errors,
                buffered_event_bytes=use.buffered_events,
                idempotency_key_bytes=use.idempotency_keys,
                stream_backlog_bytes=use.stream_backlogs,
                parked_answer_bytes=use.parked_answers,
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
                for fanout in self._fanouts.values()
                for waiters in fanout.waiters.values()
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


class _Fanout:
    """The subscribers delivered to from one hub, and the batches queued for them."""

    __slots__ = ("waiters", "batches", "scheduled")

    def __init__(self) -> None:
        #: Category to its subscribers, in the order they came.
        self.waiters: dict[str, dict[Subscriber, None]] = {}
        #: The engine's batches not delivered yet, in the order it handed them.
        self.batches: list[Sequence[tuple[Position, Event]]] = []
        #: Whether a callback of the hub is to deliver them.
        self.scheduled = False


def _merge(
    batches: list[Sequence[tuple[Position, Event]]],
) -> Sequence[tuple[Position, Event]]:
    """The batches queued for a fan-out as one, in position order, each event once (an
    engine's catch-up of a new watch repeats events and goes back in position)."""
    if len(batches) == 1:
        return batches[0]
    merged = [entry for batch in batches for entry in batch]
    if all(merged[i][0] < merged[i + 1][0] for i in range(len(merged) - 1)):
        return merged
    return sorted(dict(merged).items())


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


def _build_engine(options: dict[str, Any], persister: Persister | None,
                  budget: MemoryBudget) -> Engine:
    """The engine that :class:`LongpollManager`'s golongpoll-style *options* describe
    (the engine options, by name), within the events' and keys' shares of *budget*."""
    if options["redis_url"] is None:
        memory = options_of(MemoryOptions)
        given = [name for name, item in options_of(RedisOptions).items()
                 if name in options and name not in memory and options[name] != item.default]
        if given:
            raise ValueError(f"{', '.join(given)} needs redis_url: without it the events are "
                             "kept in this process's memory")
        return MemoryEngine(**asdict(build(MemoryOptions, options)), persister=persister,
                            max_buffered_bytes=budget.limit(BUFFERED_EVENTS),
                            max_idempotency_key_bytes=budget.limit(IDEMPOTENCY_KEYS))
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
