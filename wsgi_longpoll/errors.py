"""The exceptions of the server side, one tree under :class:`LongpollError`.

Each also derives from the built-in exception whose meaning it has, so that callers can
catch by meaning (``except RuntimeError``) or by library (``except LongpollError``).
"""

from __future__ import annotations

__all__ = [
    "CapacityExceeded",
    "LongpollError",
    "ManagerClosed",
    "MemoryEngineInSeveralProcesses",
    "OutcomeUnknown",
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


class OutcomeUnknown(StorageUnavailable):
    """The store took the event but did not confirm it in time: it may be published.

    Retry with the same idempotency key to publish it at most once.
    """


class MemoryEngineInSeveralProcesses(LongpollError, RuntimeError):
    """A manager that keeps its events in this process's memory is to serve in one of
    several processes, where each subscriber would only see its own process's events.

    The message says what to do (see :mod:`wsgi_longpoll.multiprocess`).
    """
