"""The in-memory engine: one :class:`~.buffer.EventBuffer` per category of this process.

The default engine. Events live as long as the process (and across restarts with a
:class:`~.persist.FilePersister`); for several processes or hosts, use
:class:`~.redis.RedisEngine`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from gevent.monkey import get_original

from ..budget import BUFFERED_EVENTS, IDEMPOTENCY_KEYS, BudgetOptions, share
from ..errors import CapacityExceeded, IdempotencyConflict
from ..event import Event, Gap, new_event_id
from ..protocol import MAX_TIMESTAMP, now_ms
from .base import (
    Engine,
    Listener,
    Position,
    ReadResult,
    WatchCounts,
    data_digest,
    merge_by_position,
)
from .buffer import EventBuffer, Floor, missed
from .options import MemoryOptions

__all__ = ["MemoryEngine", "Persister"]

logger = logging.getLogger(__name__)

# A real OS lock even when the process is monkey-patched: publish may come from any OS
# thread, and the lock is never held across a greenlet switch.
_RLock = get_original("_thread", "RLock")

#: Higher than any sequence number: ``(ms, _LAST)`` comes after every event of ``ms``.
_LAST = 1 << 63

#: How many skipped events :meth:`MemoryEngine._restore` logs one by one.
_LOGGED_SKIPPED_EVENTS = 20

#: About what a remembered idempotency key costs beside its category and its own text:
#: the table's entry, its key tuple, what it stands for (see :class:`_Remembered`).
KEY_OVERHEAD_BYTES = 480


def _key_cost(category: str, key: str) -> int:
    return len(category) + len(key) + KEY_OVERHEAD_BYTES


class _Remembered(NamedTuple):
    """What an idempotency key stands for: enough to answer a retry, not the event."""

    expires: int  # epoch ms
    timestamp: int
    id: str
    digest: bytes  # of the data (see data_digest)


class Persister(Protocol):
    """Where the memory engine keeps its events across restarts (see :mod:`.persist`)."""

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

    def check(self) -> None:
        """Raise :class:`~wsgi_longpoll.errors.StorageUnavailable` if writing fails now."""

    def wait_written(self, event: Event) -> None:
        """Return once *event*, given to :meth:`append`, is written, if the persister
        acknowledges only what is written; at once otherwise. Called without locks."""

    def close(self) -> None:
        """Write out everything appended and release the file."""


class MemoryEngine(Engine):
    """Events in the memory of this process: one :class:`EventBuffer` per category.

    Live events are handed to the listener from inside :meth:`append`, with the engine's
    lock held, so that storing an event and delivering it is one step and deliveries
    follow publish order.

    The options are :class:`~.options.MemoryOptions`' (and their defaults):

    :param max_event_buffer_size: events kept per category.
    :param event_time_to_live_seconds: events older than this are dropped; ``None`` (or
        ``0``) keeps them.
    :param max_categories: how many categories may hold events at once. A new category
        beyond it pushes out the category published to least recently that nobody waits
        on; its floor (the newest event it held) is kept for the gap signal (see
        :attr:`max_kept_floors`), and a subscriber that had not seen it resumes with a gap,
        also once the category holds events again. Only when every category has
        subscribers waiting is the publish refused (:class:`CapacityExceeded`).
    :param persister: stores every event and gives them back on start.
    :param delete_event_after_first_retrieval: an event served from a buffer is removed
        from it, and an event published to a watched category is handed to its watchers
        and not kept (golongpoll's option).
    :param max_buffered_bytes: the most bytes of events held across every category
        (their JSON form and about :data:`~.buffer.EVENT_OVERHEAD_BYTES` each); beyond it
        the oldest events of all go first, and subscribers who had not seen them get the
        gap signal. ``None``: no bound but the others. The default is the events' share of
        ``max_memory_bytes``' (see :mod:`wsgi_longpoll.budget`), which is what a
        :class:`~wsgi_longpoll.manager.LongpollManager` gives the engine it builds.
    :param max_idempotency_key_bytes: the most bytes of idempotency keys remembered
        (about :data:`KEY_OVERHEAD_BYTES` each, with the key and its category); beyond it
        the oldest are forgotten first (a retry of a forgotten key publishes again).
        ``None``: no bound but :attr:`max_idempotency_keys`. The default is the keys'
        share of ``max_memory_bytes``'.
    """

    #: How often, at most, every category is swept for expired events, in ms.
    sweep_interval_ms = 1000
    #: The default ``max_buffered_bytes``: the events' share of the default budget.
    default_max_buffered_bytes = share(BudgetOptions.max_memory_bytes, BUFFERED_EVENTS)
    #: The default ``max_idempotency_key_bytes``: the keys' share of the default budget.
    default_max_idempotency_key_bytes = share(BudgetOptions.max_memory_bytes,
                                              IDEMPOTENCY_KEYS)
    #: How many idempotency keys are remembered at most (the oldest are forgotten first).
    max_idempotency_keys = 100_000
    #: How many floors of categories pushed out by ``max_categories`` are kept, each for
    #: as long as an emptied category keeps its own (two times to live after its event;
    #: for ever without a time to live), at about 300 bytes and the category's name each.
    #: Beyond it the oldest floor goes first into one floor shared by every category
    #: that has none of its own: a cursor older than it, in such a category, is given
    #: the gap (one that may have lost nothing: told rather than not).
    max_kept_floors = 10_000
    #: How long, in seconds, a subscriber handed events has to come back for the next
    #: ones: meanwhile its category keeps the events after them beyond
    #: ``max_event_buffer_size`` (``max_buffered_bytes`` and the time to live still
    #: apply), so that on a hot channel a re-poll that comes in time meets no eviction.
    #: ``0``: none (the size alone decides).
    repoll_grace_seconds = 30.0
    #: How far ahead of the clock a restored event's timestamp may be, in seconds.
    #: Timestamps never go back, so such an event holds every new event's timestamp at
    #: its own until the clock catches up; one further ahead is skipped with a warning.
    max_restored_lead_seconds = 60.0

    def __init__(
        self,
        max_event_buffer_size: int = MemoryOptions.max_event_buffer_size,
        event_time_to_live_seconds: float | None = MemoryOptions.event_time_to_live_seconds,
        max_categories: int = MemoryOptions.max_categories,
        persister: Persister | None = None,
        delete_event_after_first_retrieval: bool = (
            MemoryOptions.delete_event_after_first_retrieval),
        max_buffered_bytes: int | None = default_max_buffered_bytes,
        max_idempotency_key_bytes: int | None = default_max_idempotency_key_bytes,
    ) -> None:
        for name, value in (("max_buffered_bytes", max_buffered_bytes),
                            ("max_idempotency_key_bytes", max_idempotency_key_bytes)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or at least 1, not {value!r}")
        #: The engine's options, checked.
        self.options = MemoryOptions(
            max_event_buffer_size=max_event_buffer_size,
            event_time_to_live_seconds=event_time_to_live_seconds,
            max_categories=max_categories,
            delete_event_after_first_retrieval=delete_event_after_first_retrieval,
        )
        self.max_buffered_bytes = max_buffered_bytes
        self.max_idempotency_key_bytes = max_idempotency_key_bytes
        self.max_event_buffer_size = max_event_buffer_size
        self.event_time_to_live_seconds = event_time_to_live_seconds or None
        self.max_categories = max_categories
        self.delete_event_after_first_retrieval = delete_event_after_first_retrieval
        self._ttl_ms = (
            None if not event_time_to_live_seconds else int(event_time_to_live_seconds * 1000)
        )
        self._lock = _RLock()
        #: Least recently published to first.
        self._buffers: dict[str, EventBuffer] = {}
        #: The newest event of each category pushed out by ``max_categories``, for the gap
        #: signal, oldest first; ``max_kept_floors`` at most.
        self._forgotten: dict[str, Floor] = {}
        #: The newest of the floors let go to keep ``max_kept_floors``: the floor of every
        #: category that has none of its own.
        self._shared_floor: Floor | None = None
        #: Events and bytes held in every buffer.
        self._held = 0
        self._bytes = 0
        #: ``(seq, category)`` of the events held, oldest first (and some gone since):
        #: what ``max_buffered_bytes`` drops first.
        self._order: deque[tuple[int, str]] = deque()
        self._watched = WatchCounts()
        #: What each category keeps beyond its size for the subscribers handed events
        #: lately, oldest first: ``[made, until, seq]`` (epoch ms; the events after
        #: number ``seq`` are kept until then).
        self._kept: dict[str, deque[list[int]]] = {}
        #: ``(category, idempotency key)`` to what it stands for, oldest first, and the
        #: bytes they cost (see :func:`_key_cost`).
        self._keys: dict[tuple[str, str], _Remembered] = {}
        self._key_bytes = 0
        self._listener: Listener | None = None
        #: The position of the newest event: timestamps never go back, and the sequence
        #: numbers every event across every category in publish order.
        self._last_timestamp = 0
        self._last_seq = 0
        self._next_sweep = 0
        #: Where the events are kept across restarts, if anywhere.
        self.persister = persister
        if persister is not None:
            self._restore(persister.load())

    def bind(self, listener: Listener) -> None:
        self._listener = listener

    def append(self, category: str, data: Any, idempotency_key: str | None = None) -> Event:
        with self._lock:
            if self.persister is not None:  # refused before anything is stored
                self.persister.check()
            digest = b""
            if idempotency_key is not None:
                digest = data_digest(data)
                known = self._remembered(category, idempotency_key)
                if known is not None:
                    if known.digest != digest:
                        raise IdempotencyConflict(idempotency_key, category)
                    return Event(known.timestamp, category, known.id, data)
            timestamp = max(now_ms(), self._last_timestamp)
            event = Event(timestamp, category, new_event_id(), data)
            event.to_json()  # encode once, here: a value JSON cannot hold fails the publish
            event = event.compact()  # and keep that form alone
            if category not in self._buffers and len(self._buffers) >= self.max_categories:
                self.sweep()  # expired categories may make room
                if len(self._buffers) >= self.max_categories:
                    self._push_out_idle_category()
            buffer = self._buffers.pop(category, None)  # back in last: used most recently
            self._last_timestamp = timestamp
            self._last_seq += 1
            watched = category in self._watched
            if buffer is None and not (watched and self.delete_event_after_first_retrieval):
                buffer = EventBuffer(self.max_event_buffer_size)
                buffer.floor = self._forgotten.pop(category, self._shared_floor)
            if buffer is not None:
                self._buffers[category] = buffer
                if not (watched and self.delete_event_after_first_retrieval):
                    self._store(buffer, event, self._last_seq)
            persister = self.persister
            if persister is not None:
                persister.append(event)
                if persister.wants_compaction:
                    persister.compact(self.all_events())
            self.sweep(timestamp)
            if watched and self._listener is not None:
                self._keep(category, self._last_seq, timestamp)
                self._listener([((timestamp, self._last_seq), event)])
            if idempotency_key is not None:
                expires = timestamp + int(self.idempotency_window_seconds * 1000)
                self._remember(category, idempotency_key,
                               _Remembered(expires, timestamp, event.id, digest))
        if self.persister is not None:
            self.persister.wait_written(event)  # without the lock: it may wait for the disk
        return event

    def _remembered(self, category: str, key: str) -> _Remembered | None:
        """What *key* stands for in *category* within the window, if anything."""
        keys = self._keys
        now = now_ms()
        # Every key lives as long as the window: the oldest expire first.
        while keys and next(iter(keys.values())).expires < now:
            self._forget_oldest_key()
        return keys.get((category, key))

    def _keep(self, category: str, seq: int, now: int) -> None:
        """Keep the events of *category* after number *seq* (handed out: their
        subscribers come back after it) for ``repoll_grace_seconds`` from *now*."""
        if self.repoll_grace_seconds <= 0:
            return
        until = now + int(self.repoll_grace_seconds * 1000)
        kept = self._kept.get(category)
        if kept is None:
            if len(self._kept) > 2 * len(self._buffers) + 1024:
                for name in list(self._kept):
                    self._kept_after(name, now)
            self._kept[category] = deque([[now, until, seq]])
        elif now - kept[-1][0] < 1000:  # one entry a second: the oldest seq, kept longer
            kept[-1][1] = until
        else:
            kept.append([now, until, seq])

    def _kept_after(self, category: str, now: int) -> int | None:
        """The number after which *category*'s events are kept beyond its size, if any."""
        kept = self._kept.get(category)
        if kept is None:
            return None
        while kept and kept[0][1] < now:
            kept.popleft()
        if not kept:
            del self._kept[category]
            return None
        return kept[0][2]

    def _remember(self, category: str, key: str, remembered: _Remembered) -> None:
        """Remember *key* (new in *category*); forget the oldest keys beyond
        :attr:`max_idempotency_keys` and ``max_idempotency_key_bytes``."""
        keys = self._keys
        keys[category, key] = remembered
        self._key_bytes += _key_cost(category, key)
        limit = self.max_idempotency_key_bytes
        while len(keys) > 1 and (
            len(keys) > self.max_idempotency_keys
            or (limit is not None and self._key_bytes > limit)
        ):
            self._forget_oldest_key()

    def _forget_oldest_key(self) -> None:
        category, key = next(iter(self._keys))
        del self._keys[category, key]
        self._key_bytes -= _key_cost(category, key)

    def _store(self, buffer: EventBuffer, event: Event, seq: int) -> None:
        held, size = len(buffer), buffer.size_bytes
        buffer.append(event, seq, self._kept_after(event.category, event.timestamp)
                      if self._kept else None)
        self._held += len(buffer) - held
        self._bytes += buffer.size_bytes - size
        self._order.append((seq, event.category))
        if self.max_buffered_bytes is not None:
            while self._bytes > self.max_buffered_bytes and self._order:
                self._drop_oldest_of_all()
        if len(self._order) > 2 * self._held + 1024:  # mostly gone: start again
            self._order = deque(sorted(
                (seq, category)
                for category, buffer in self._buffers.items()
                for (_, seq), _ in buffer.entries_after_seq(0)
            ))

    def _drop_oldest_of_all(self) -> None:
        seq, category = self._order.popleft()
        buffer = self._buffers.get(category)
        if buffer is not None and buffer.oldest_seq() == seq:
            held, size = len(buffer), buffer.size_bytes
            buffer.drop_oldest(1)
            self._held += len(buffer) - held
            self._bytes += buffer.size_bytes - size

    def _push_out_idle_category(self) -> None:
        """Forget the category published to least recently that nobody watches."""
        for category in self._buffers:
            if category not in self._watched:
                break
        else:
            raise CapacityExceeded(
                f"{self.max_categories} categories hold events and have subscribers "
                "waiting (max_categories)"
            )
        buffer = self._buffers.pop(category)
        self._held -= len(buffer)
        self._bytes -= buffer.size_bytes
        newest = buffer.newest()
        if newest is not None:
            self._keep_floor(category, newest)
        logger.debug("max_categories: pushed out %r, the category idle longest", category)

    def _keep_floor(self, category: str, floor: Floor) -> None:
        """Remember *floor* for *category*, which holds no buffer any more; beyond
        ``max_kept_floors`` the oldest floor kept goes into the shared floor."""
        forgotten = self._forgotten
        forgotten[category] = floor
        while len(forgotten) > self.max_kept_floors:
            oldest = forgotten.pop(next(iter(forgotten)))
            shared = self._shared_floor
            if shared is None:
                logger.info(
                    "max_kept_floors (%d) reached: the categories pushed out longest ago "
                    "share one floor", self.max_kept_floors,
                )
            if shared is None or oldest.seq > shared.seq:
                self._shared_floor = oldest

    def _floor_of_absent(self, category: str) -> Floor | None:
        """The floor of *category*, which holds no buffer: its own, else the shared one."""
        floor = self._forgotten.get(category)
        return self._shared_floor if floor is None else floor

    def read(
        self, categories: Sequence[str], since_time: int | None, last_id: str | None
    ) -> ReadResult:
        with self._lock:
            self.sweep()
            now = (self._last_timestamp, self._last_seq)
            if since_time is None:
                return ReadResult(position=now)
            buffers = self._live_buffers(categories)
            last_seq = None
            if last_id is not None:
                for _, buffer in buffers:
                    last_seq = buffer.seq_of(last_id)
                    if last_seq is not None:
                        break
            gaps = [
                Gap(category, floor.timestamp, floor.id)
                for category in categories
                if category not in self._buffers
                and (floor := self._floor_of_absent(category)) is not None
                and missed(floor, since_time, last_id, last_seq)
            ]
            found: list[tuple[EventBuffer, list[tuple[Position, Event]]]] = []
            for category, buffer in buffers:
                if buffer.missed(since_time, last_id, last_seq):
                    assert buffer.floor is not None
                    gaps.append(Gap(category, buffer.floor.timestamp, buffer.floor.id))
                entries = buffer.entries_after(since_time, last_id, last_seq)
                if entries:
                    found.append((buffer, entries))
            if self.delete_event_after_first_retrieval:
                for buffer, entries in found:
                    self._drop_newest(buffer, len(entries))
            elif found:  # the subscriber comes back after them: keep what follows
                clock = now_ms()
                for _, entries in found:
                    self._keep(entries[-1][1].category, now[1], clock)
            merged = merge_by_position([entries for _, entries in found])
            position = now if since_time <= now[0] else (since_time, _LAST)
            return ReadResult([event for _, event in merged], gaps, position)

    def events(self, category: str) -> list[Event]:
        with self._lock:
            buffers = self._live_buffers((category,))
            return buffers[0][1].events() if buffers else []

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return len(self._buffers), self._held

    @property
    def buffered_bytes(self) -> int:
        """The bytes of the events held across every category (their JSON form and about
        :data:`~.buffer.EVENT_OVERHEAD_BYTES` each)."""
        return self._bytes

    @property
    def idempotency_key_bytes(self) -> int:
        """The bytes of the idempotency keys remembered (see :data:`KEY_OVERHEAD_BYTES`)."""
        return self._key_bytes

    def check(self) -> None:
        if self.persister is not None:
            self.persister.check()

    def watch(self, categories: Sequence[str], after: Position) -> None:
        with self._lock:
            self._watched.add(categories)
            # Catch up: what was published between the watcher's read and now.
            found = [
                (buffer, buffer.entries_after_seq(after[1]))
                for _, buffer in self._live_buffers(categories)
            ]
            found = [(buffer, entries) for buffer, entries in found if entries]
            if not found:
                return
            if self.delete_event_after_first_retrieval:
                for buffer, entries in found:
                    self._drop_newest(buffer, len(entries))
            else:
                clock = now_ms()
                for _, entries in found:
                    self._keep(entries[-1][1].category, self._last_seq, clock)
            if self._listener is not None:
                self._listener(merge_by_position([entries for _, entries in found]))

    def unwatch(self, categories: Sequence[str]) -> None:
        with self._lock:
            self._watched.remove(categories)

    def close(self) -> None:
        """Close the persister, which writes out every event it was given."""
        if self.persister is not None:
            self.persister.close()

    # -- housekeeping -----------------------------------------------------------------

    def sweep(self, now: int | None = None) -> None:
        """Drop expired events, and forget categories empty for a whole time to live and
        the floors as old as theirs.

        Runs at most once a ``sweep_interval_ms``; *now* is the clock, in epoch ms.
        """
        if self._ttl_ms is None:
            return
        if now is None:
            now = now_ms()
        with self._lock:
            if now < self._next_sweep:
                return
            self._next_sweep = now + self.sweep_interval_ms
            cutoff = now - self._ttl_ms
            forget = cutoff - self._ttl_ms
            for category in list(self._buffers):
                buffer = self._buffers[category]
                self._expire(buffer, cutoff)
                # An empty category is forgotten once it has been empty for a whole time
                # to live; until then it remembers what it dropped, for the gap signal.
                if not len(buffer) and (buffer.floor is None or buffer.floor.timestamp < forget):
                    del self._buffers[category]
            # Kept floors go by the same rule, the oldest first (kept in push-out order,
            # which is about their age: the category pushed out is the one idle longest).
            forgotten = self._forgotten
            while forgotten and next(iter(forgotten.values())).timestamp < forget:
                del forgotten[next(iter(forgotten))]
            if self._shared_floor is not None and self._shared_floor.timestamp < forget:
                self._shared_floor = None

    def all_events(self) -> list[Event]:
        """Every buffered event, in publish order."""
        with self._lock:
            merged = merge_by_position(
                [buffer.entries_after_seq(0) for buffer in self._buffers.values()]
            )
            return [event for _, event in merged]

    def _live_buffers(self, categories: Iterable[str]) -> list[tuple[str, EventBuffer]]:
        """The buffers of *categories* that exist, with their expired events dropped."""
        cutoff = None if self._ttl_ms is None else now_ms() - self._ttl_ms
        buffers = []
        for category in categories:
            buffer = self._buffers.get(category)
            if buffer is not None:
                if cutoff is not None:
                    self._expire(buffer, cutoff)
                buffers.append((category, buffer))
        return buffers

    def _expire(self, buffer: EventBuffer, cutoff: int) -> None:
        held, size = len(buffer), buffer.size_bytes
        if buffer.expire(cutoff):
            self._held += len(buffer) - held
            self._bytes += buffer.size_bytes - size

    def _drop_newest(self, buffer: EventBuffer, count: int) -> None:
        held, size = len(buffer), buffer.size_bytes
        buffer.drop_newest(count)
        self._held += len(buffer) - held
        self._bytes += buffer.size_bytes - size

    def _restore(self, events: Iterable[Event]) -> None:
        ordered = sorted(events, key=lambda event: event.timestamp)  # stable: ties keep order
        now = now_ms()
        cutoff = None if self._ttl_ms is None else now - self._ttl_ms
        # The clock must stay resumable (JavaScript's safe integers), and must not be held
        # by an event from the future for longer than max_restored_lead_seconds.
        latest = min(MAX_TIMESTAMP, now + int(self.max_restored_lead_seconds * 1000))
        skipped = 0
        for event in ordered:
            if not 0 <= event.timestamp <= latest:
                skipped += 1
                if skipped <= _LOGGED_SKIPPED_EVENTS:
                    why = (
                        f"more than {self.max_restored_lead_seconds:g} s ahead of the clock"
                        if 0 <= event.timestamp <= MAX_TIMESTAMP else "out of range"
                    )
                    logger.warning("skipped a stored event with timestamp %d (id %s): %s",
                                   event.timestamp, event.id, why)
                continue
            if cutoff is None or event.timestamp >= cutoff:
                self._last_seq += 1
                buffer = self._buffers.get(event.category)
                if buffer is None:
                    buffer = self._buffers[event.category] = EventBuffer(
                        self.max_event_buffer_size
                    )
                self._store(buffer, event.compact(), self._last_seq)
            self._last_timestamp = max(self._last_timestamp, event.timestamp)
        if self.persister is not None:
            self.persister.compact(self.all_events())
        if skipped > _LOGGED_SKIPPED_EVENTS:
            logger.warning("%d more stored events skipped", skipped - _LOGGED_SKIPPED_EVENTS)
        logger.info("restored %d events in %d categories", len(ordered) - skipped,
                    len(self._buffers))
