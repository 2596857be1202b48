"""The memory budget: one bound, in bytes, on everything clients can make a server hold.

Clients make a long-poll server hold four kinds of things, each of which grows with what
they send or with how slowly they read:

- **buffered events** (:data:`BUFFERED_EVENTS`): what publishers sent, kept for the
  subscribers that resume (the in-memory engine's buffers);
- **idempotency keys** (:data:`IDEMPOTENCY_KEYS`): what a retried publish must find
  again (the in-memory engine's key table; never the event itself);
- **stream backlogs** (:data:`STREAM_BACKLOGS`): what Server-Sent Events streams were
  sent and their readers have not taken yet;
- **parked answers** (:data:`PARKED_ANSWERS`): long-poll answers written to a socket that
  its reader has not taken yet.

A :class:`MemoryBudget` splits the one option ``max_memory_bytes`` (:class:`BudgetOptions`)
between them by fixed shares (:data:`SHARES`), so that one kind can never crowd out
another, and says what each kind holds. Each kind keeps to its share its own way: the
oldest events go first (with the gap signal), the oldest keys are forgotten first, the
streams furthest behind are cut, and new subscribers are refused while parked answers
fill their share.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gevent.monkey import get_original

from .options import at_least, check_options, option

__all__ = [
    "BUFFERED_EVENTS",
    "BudgetOptions",
    "IDEMPOTENCY_KEYS",
    "KINDS",
    "PARKED_ANSWERS",
    "STREAM_BACKLOGS",
    "MemoryBudget",
    "MemoryUse",
    "SHARES",
    "share",
]

# A real OS lock even when the process is monkey-patched: answers are written from any
# thread that publishes, and the lock is never held across a greenlet switch.
_allocate_lock = get_original("_thread", "allocate_lock")

#: The bytes of the events the in-memory engine buffers (their JSON and bookkeeping).
BUFFERED_EVENTS = "buffered_events"
#: The bytes of the idempotency keys the in-memory engine remembers.
IDEMPOTENCY_KEYS = "idempotency_keys"
#: The bytes Server-Sent Events streams hold that their readers have not taken yet.
STREAM_BACKLOGS = "stream_backlogs"
#: The bytes of long-poll answers held until their readers take them.
PARKED_ANSWERS = "parked_answers"
#: Every kind, in the order the statistics list them.
KINDS = (BUFFERED_EVENTS, IDEMPOTENCY_KEYS, STREAM_BACKLOGS, PARKED_ANSWERS)
#: Each kind's share of a budget; they add up to one.
SHARES: Mapping[str, float] = {
    BUFFERED_EVENTS: 1 / 2,
    IDEMPOTENCY_KEYS: 1 / 8,
    STREAM_BACKLOGS: 1 / 4,
    PARKED_ANSWERS: 1 / 8,
}


def share(max_memory_bytes: int | None, kind: str) -> int | None:
    """The bytes *kind* may hold of a budget of *max_memory_bytes* (at least 1), by
    :data:`SHARES`; ``None`` for no budget."""
    if max_memory_bytes is None:
        return None
    return max(1, int(max_memory_bytes * SHARES[kind]))


@dataclass(frozen=True, kw_only=True)
class BudgetOptions:
    """The budget's one option (the manager's: :class:`~wsgi_longpoll.manager.ManagerOptions`
    inherits it; see :mod:`wsgi_longpoll.options`).

    :raises TypeError: naming the option, for a value of the wrong type.
    :raises ValueError: naming the option, for a value out of range.
    """

    max_memory_bytes: int | None = option(
        512 * 1024 * 1024, check=at_least(1), zero_means_none=True,
        help="the most bytes clients can make the server hold, split between buffered "
        "events (1/2: the oldest of all go first, with the gap signal), idempotency keys "
        "(1/8: the oldest are forgotten first), stream backlogs (1/4: the streams furthest "
        "behind are cut) and unread long-poll answers (1/8: new subscribers get 503); "
        "None (or 0): no bound but the others",
    )

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True, slots=True)
class MemoryUse:
    """What each kind holds now, in bytes (see :meth:`MemoryBudget.use`)."""

    buffered_events: int
    idempotency_keys: int
    stream_backlogs: int
    parked_answers: int

    @property
    def total(self) -> int:
        """Every kind together."""
        return (self.buffered_events + self.idempotency_keys + self.stream_backlogs
                + self.parked_answers)


class MemoryBudget:
    """The one byte budget of a :class:`~wsgi_longpoll.manager.LongpollManager`.

    Each kind of thing held gets its share of *max_bytes* (:attr:`shares`; the shares add
    up to one, so the kinds together stay within the budget). What each kind holds is
    either counted here, with :meth:`hold` and :meth:`release` (parked answers), or read
    when asked from the functions that know it (:meth:`add_source`: the engine's events
    and keys, a server's streams).

    :param max_bytes: the budget (``max_memory_bytes``); ``None``: no bound (each kind
        still says what it holds).
    :raises ValueError: for a budget under one byte.
    """

    #: Each kind's share of the budget.
    shares: Mapping[str, float] = SHARES

    def __init__(self, max_bytes: int | None) -> None:
        BudgetOptions(max_memory_bytes=max_bytes)  # checked
        #: The budget, in bytes; ``None``: no bound.
        self.max_bytes = max_bytes
        self._lock = _allocate_lock()
        self._counted = dict.fromkeys(KINDS, 0)
        #: What :meth:`hold` counts, by kind and identity: ``[object, holds]`` (the
        #: object is kept, so that its identity is not reused while it is counted).
        self._objects: dict[tuple[str, int], list[Any]] = {}
        #: Per kind, the functions that say what else it holds; a bound method is held
        #: weakly, so that a server that is gone stops counting.
        self._sources: dict[str, list[Callable[[], Callable[[], int] | None]]] = {
            kind: [] for kind in KINDS
        }

    def limit(self, kind: str) -> int | None:
        """The bytes *kind* may hold (at least 1); ``None`` when there is no budget."""
        return share(self.max_bytes, kind)

    def hold(self, kind: str, data: bytes) -> None:
        """Count *data* as held by *kind* until a matching :meth:`release`.

        The same object held several times (one encoded answer shared by every poll of
        a delivery) counts once, for as long as any hold lasts.
        """
        with self._lock:
            entry = self._objects.get((kind, id(data)))
            if entry is None:
                self._objects[kind, id(data)] = [data, 1]
                self._counted[kind] += len(data)
            else:
                entry[1] += 1

    def release(self, kind: str, data: bytes) -> None:
        """End one :meth:`hold` of *data*."""
        with self._lock:
            entry = self._objects[kind, id(data)]
            entry[1] -= 1
            if not entry[1]:
                del self._objects[kind, id(data)]
                self._counted[kind] -= len(data)

    def add_source(self, kind: str, source: Callable[[], int]) -> None:
        """Add what *source* returns to what *kind* holds, each time it is asked.

        A bound method is held weakly: it counts while its object lives.
        """
        reference: Callable[[], Callable[[], int] | None]
        if hasattr(source, "__self__") and hasattr(source, "__func__"):
            reference = weakref.WeakMethod(source)
        else:
            reference = _strong(source)
        with self._lock:
            sources = self._sources[kind]
            sources[:] = [known for known in sources if known() is not None]
            sources.append(reference)

    def held(self, kind: str) -> int:
        """The bytes *kind* holds now."""
        with self._lock:
            held = self._counted[kind]
            sources = list(self._sources[kind])
        for reference in sources:
            source = reference()
            if source is not None:
                held += source()
        return held

    def exhausted(self, kind: str) -> bool:
        """Whether *kind* holds its whole share (or more)."""
        limit = self.limit(kind)
        return limit is not None and self.held(kind) >= limit

    def use(self) -> MemoryUse:
        """What each kind holds now."""
        return MemoryUse(**{kind: self.held(kind) for kind in KINDS})


def _strong(value: Any) -> Callable[[], Any]:
    return lambda: value
