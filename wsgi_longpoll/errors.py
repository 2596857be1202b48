"""The exceptions of the server side, one tree under :class:`LongpollError`.

Each also derives from the built-in exception whose meaning it has, so that callers can
catch by meaning (``except RuntimeError``) or by library (``except LongpollError``).
"""

from __future__ import annotations

__all__ = [
    "CapacityExceeded",
    "EventsLost",
    "IdempotencyConflict",
    "LongpollError",
    "ManagerClosed",
    "MemoryEngineInSeveralProcesses",
    "OutcomeUnknown",
    "ReplicationIncomplete",
    "StorageRefused",
    "StorageUnavailable",
]


class LongpollError(Exception):
    """The base of every error the manager and the engines raise on purpose."""


class ManagerClosed(LongpollError, RuntimeError):
    """The manager was closed; it accepts no more events."""


class CapacityExceeded(LongpollError, RuntimeError):
    """A limit of the manager is reached (categories held, waiting subscribers).

    Nothing was changed; the same call may succeed later.
    """


class StorageUnavailable(LongpollError, RuntimeError):
    """The engine cannot store or read events now (Redis unreachable, a failed disk).

    A publish that raises this was not acknowledged; it may be retried.
    """


class StorageRefused(StorageUnavailable):
    """The store answered a command with an error: Redis out of memory (``OOM``), a
    read-only replica (``READONLY``), busy with a script (``BUSY``). Nothing was stored
    (for a publish); the same call may succeed once the store's problem is solved.

    :param where: the store, as shown in messages (Redis's address).
    :param reply: the store's own message.
    """

    def __init__(self, where: str, reply: str) -> None:
        super().__init__(f"Redis at {where} answered: {reply}")
        #: The store, as shown in messages.
        self.where = where
        #: The store's own message.
        self.reply = reply


class OutcomeUnknown(StorageUnavailable):
    """The store took the event but did not confirm it in time: it may be published.

    Retry with the same idempotency key to publish it at most once.
    """


class ReplicationIncomplete(OutcomeUnknown):
    """The primary stored the event, but fewer of its replicas than asked for confirmed
    it in time (``redis_min_replicas``): it is published and may be delivered, yet a
    failover before the replicas catch up may lose it.

    Retry with the same idempotency key: the retry publishes nothing new, and succeeds
    once enough replicas have the event.

    :param confirmed: how many replicas confirmed it.
    :param required: how many were asked for.
    :param timeout_seconds: how long they were waited for.
    :param where: the Redis, as shown in messages.
    """

    def __init__(self, confirmed: int, required: int, timeout_seconds: float,
                 where: str) -> None:
        super().__init__(
            f"Redis at {where} stored the event, but only {confirmed} of the {required} "
            f"replicas asked for (redis_min_replicas) confirmed it within "
            f"{timeout_seconds:g} s: it is published and may be delivered, yet a failover "
            "before the replicas catch up may lose it"
        )
        #: How many replicas confirmed the event.
        self.confirmed = confirmed
        #: How many were asked for.
        self.required = required


class MemoryEngineInSeveralProcesses(LongpollError, RuntimeError):
    """A manager that keeps its events in this process's memory is to serve in one of
    several processes, where each subscriber would only see its own process's events.

    The message says what to do (see :mod:`wsgi_longpoll.multiprocess`).
    """


class IdempotencyConflict(LongpollError, ValueError):
    """A publish reused an idempotency key of its category for another event.

    Within the idempotency window, a key stands for one event: a retry must carry the same
    data (as JSON values: whitespace and the order of object keys aside). Nothing was
    published; publish a new event with a new key.

    :param key: the idempotency key that was reused.
    :param category: the category it was used in.
    """

    def __init__(self, key: str, category: str) -> None:
        super().__init__(
            f"the Idempotency-Key {key!r} was used for another event in category "
            f"{category[:100]!r}: use a new key for a new event"
        )
        #: The idempotency key that was reused.
        self.key = key
        #: The category it was used in.
        self.category = category


class EventsLost(LongpollError, RuntimeError):
    """Events that were published could not be written to the persist file: they are lost.

    Raised by :meth:`wsgi_longpoll.server.Server.stop` once everything is stopped and
    closed, when the persister still held events it could not write (a full disk, a
    file-size limit, an I/O error); ``wsgi-longpoll serve`` exits with status 1 then.

    :param events: the events lost.
    :param acknowledged_events: of them, those whose publish was answered as a success
        (all of them, unless publishes are acknowledged only after the write).
    :param size_bytes: the bytes of those events.
    :param file_name: the persist file.
    """

    def __init__(
        self, events: int, acknowledged_events: int, size_bytes: int, file_name: str
    ) -> None:
        super().__init__(
            f"{events} events ({size_bytes} bytes; {acknowledged_events} acknowledged "
            f"events) could not be written to {file_name} and are lost"
        )
        #: The events lost.
        self.events = events
        #: Of them, those whose publish was answered as a success.
        self.acknowledged_events = acknowledged_events
        #: Their bytes.
        self.size_bytes = size_bytes
        #: The persist file.
        self.file_name = file_name
