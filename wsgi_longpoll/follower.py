"""Follow a category for hours: resume after every answer, reconnect, back off, stop.

:func:`~wsgi_longpoll.client.subscription` sends one long poll. A :class:`Follower` sends
them one after the other for as long as it runs and hands out each event once, in order:

.. code-block:: python

    follower = Follower("http://localhost:8080/events", "notifications")
    for event in follower:  # blocks; follower.stop() from another thread ends it
        handle(event)
        save(follower.cursor)  # to start a later process where this one left off

After each answer the next poll asks for the events after the last one received
(``since_time`` and ``last_id``, the :class:`Cursor`), so an event published while no poll
was waiting (between two polls, while the server restarted, while the network was down) is
fetched by the next poll as long as the server still has it in its buffer. A long-poll
timeout answer is followed at once by the next poll; an error (no answer, a 5xx status, an
answer that is not the protocol's) by a pause that grows after each error in a row
(:class:`Backoff`, exponential with full jitter) and starts over after the next answer.

Polls go through :func:`~wsgi_longpoll.client.subscription`, so URLs, basic auth, extra
headers and the *transport* (a :class:`requests.Session` with the adapters, retries and
pooling of your choice) mean exactly what they mean there. Each poll runs in a short-lived
daemon thread while the iterating thread waits for its answer or for :meth:`Follower.stop`,
so ``stop`` ends the wait at once, whatever the long-poll timeout; the abandoned request
ends by itself when the server answers it.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import requests

from .client import (
    ClientError,
    SubscriptionRequest,
    SubscriptionResponse,
    _Header,
    _Transport,
    subscription,
)
from .event import Event

__all__ = ["Backoff", "Cursor", "Follower", "SubscriptionRejected"]

logger = logging.getLogger(__name__)

#: Statuses that say "try again later"; other statuses but 200 end the follower.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class SubscriptionRejected(ClientError):
    """The server refused the subscription in a way that trying again cannot fix.

    Raised by the follower's iterator for a ``{"error": ...}`` answer (an invalid category
    or timeout) and for an answer whose status is neither 200 nor one of
    :data:`RETRYABLE_STATUSES` (a hook's 401 or 403, a 404 for a wrong URL). The message
    says which; :attr:`status_code` and :attr:`error` hold the details.
    """

    def __init__(self, message: str, status_code: int, error: str | None = None) -> None:
        super().__init__(message)
        #: The answer's HTTP status.
        self.status_code = status_code
        #: The server's error message (of a 200 ``{"error": ...}`` answer), or ``None``.
        self.error = error


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a follower is in a category: after the event ``(since_time, last_id)``.

    The next poll asks for the events with ``timestamp > since_time`` and for those with
    ``timestamp == since_time`` that come after the event *last_id*. With an empty
    *last_id* it means "every event published after *since_time*".

    :param since_time: epoch milliseconds: the timestamp of the last event received.
    :param last_id: the id of that event, or ``""``.
    """

    since_time: int
    last_id: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.since_time, bool) or not isinstance(self.since_time, int):
            raise TypeError(f"since_time must be an int, not {self.since_time!r}")
        if not isinstance(self.last_id, str):
            raise TypeError(f"last_id must be a str, not {self.last_id!r}")

    @classmethod
    def after(cls, event: Event) -> Cursor:
        """The cursor just after *event*."""
        return cls(event.timestamp, event.id)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form: ``{"since_time": ..., "last_id": ...}``, the query's names."""
        return {"since_time": self.since_time, "last_id": self.last_id}

    @classmethod
    def from_dict(cls, value: Any) -> Cursor:
        """Read back what :meth:`to_dict` gave.

        :raises ValueError: if *value* is not such a mapping.
        """
        if not isinstance(value, dict):
            raise ValueError(f"a cursor must be a dict, not {type(value).__name__}")
        try:
            return cls(value["since_time"], value.get("last_id", ""))
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a cursor: {value!r}") from error


@dataclass(frozen=True)
class Backoff:
    """How long a :class:`Follower` pauses after errors: exponential, with full jitter.

    After the *n*-th error in a row the pause is drawn uniformly from
    ``[0, min(maximum_seconds, initial_seconds * multiplier ** (n - 1))]`` ("full jitter"),
    so that many clients cut off by the same failure do not come back all at once.

    :param initial_seconds: the ceiling of the first pause.
    :param maximum_seconds: the ceiling that pauses never exceed.
    :param multiplier: how much the ceiling grows after each error in a row.
    :param random: a function returning a float in ``[0, 1)``; replace it to make the pauses
        reproducible.
    """

    initial_seconds: float = 0.5
    maximum_seconds: float = 30.0
    multiplier: float = 2.0
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.initial_seconds > 0:
            raise ValueError(f"initial_seconds must be above 0, not {self.initial_seconds!r}")
        if not self.maximum_seconds >= self.initial_seconds:
            raise ValueError(
                f"maximum_seconds ({self.maximum_seconds!r}) must be at least "
                f"initial_seconds ({self.initial_seconds!r})"
            )
        if not self.multiplier >= 1:
            raise ValueError(f"multiplier must be at least 1, not {self.multiplier!r}")

    def ceiling(self, failures: int) -> float:
        """The longest pause after *failures* errors in a row (``failures >= 1``)."""
        if failures < 1:
            raise ValueError(f"failures must be at least 1, not {failures!r}")
        try:
            grown = self.initial_seconds * self.multiplier ** (failures - 1)
        except OverflowError:
            return self.maximum_seconds
        return min(self.maximum_seconds, grown)

    def delay(self, failures: int) -> float:
        """A pause drawn from ``[0, ceiling(failures)]``."""
        return self.random() * self.ceiling(failures)


class Follower:
    """Every event of a category, in order and once, across reconnects and restarts.

    Iterate over it (``for event in follower``), or hand it a callback with :meth:`run`;
    either blocks until :meth:`stop` is called, from another thread or from the loop's
    own body. Only one iteration may run at a time; a stopped follower stays stopped.

    :param url: the subscription endpoint, e.g. ``"http://localhost:8080/events"``.
    :param category: the category to follow.
    :param start: where to begin: ``None`` for the events published from now on, an
        ``int`` (epoch milliseconds) for the events published after that time (``0`` for
        everything the server still has), or a saved :class:`Cursor` to go on where an
        earlier follower stopped.
    :param timeout_seconds: the long-poll timeout asked of the server; it must not be
        above the server's maximum (110 by default).
    :param header: extra request headers, as for
        :func:`~wsgi_longpoll.client.subscription`.
    :param username: basic-auth user name (sent when both it and *password* are given).
    :param password: basic-auth password.
    :param transport: ``None`` (the follower makes a :class:`requests.Session` of its own
        and closes it when stopped), a :class:`requests.Session` to use (never closed
        here), or a :class:`requests.adapters.BaseAdapter` to send through.
    :param backoff: the pauses after errors; :class:`Backoff` defaults when ``None``.
    :param sleep: called with the length of each pause instead of waiting for it (the
        default waits, and :meth:`stop` cuts the wait short). Tests pass a fake clock.
    """

    #: The default long-poll timeout, in seconds: below the 60 s idle timeout of many
    #: proxies and load balancers.
    default_timeout_seconds = 45

    def __init__(
        self,
        url: str,
        category: str,
        *,
        start: Cursor | int | None = None,
        timeout_seconds: int = default_timeout_seconds,
        header: _Header | None = None,
        username: str = "",
        password: str = "",
        transport: _Transport = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError(f"url must be a non-empty str, not {url!r}")
        if not isinstance(category, str) or not category:
            raise ValueError(f"category must be a non-empty str, not {category!r}")
        if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int):
            raise TypeError(f"timeout_seconds must be an int, not {timeout_seconds!r}")
        if timeout_seconds < 1:
            raise ValueError(f"timeout_seconds must be at least 1, not {timeout_seconds!r}")
        self.url = url
        self.category = category
        self.timeout_seconds = timeout_seconds
        self.header = header
        self.username = username
        self.password = password
        self.backoff = backoff if backoff is not None else Backoff()
        self._sleep = sleep
        self._owns_session = transport is None
        self._transport: _Transport = requests.Session() if transport is None else transport

        if start is None or isinstance(start, Cursor):
            self._cursor = start
        elif isinstance(start, int) and not isinstance(start, bool):
            self._cursor = Cursor(start)
        else:
            raise TypeError(f"start must be None, an int or a Cursor, not {start!r}")
        # Ids of the events already handed out whose timestamp is the cursor's: a server
        # that no longer knows last_id sends every event of that millisecond again.
        self._ids_at_cursor_time: set[str] = (
            {self._cursor.last_id} if self._cursor is not None and self._cursor.last_id else set()
        )
        self._previous_cursor: Cursor | None = None  # before the last event handed out
        self._condition = threading.Condition()
        self._stopping = False
        self._iterating = False

    @property
    def cursor(self) -> Cursor | None:
        """Where the follower is: just after the last event handed out.

        ``None`` while it started from now and has handed out nothing. Save it, and give
        it as *start* to a later follower to go on from here.
        """
        return self._cursor

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping

    def __iter__(self) -> Iterator[Event]:
        return self.events()

    def events(self) -> Generator[Event, None, None]:
        """Yield each event of the category once, oldest first, until :meth:`stop`.

        :raises SubscriptionRejected: if the server refuses the subscription for good.
        :raises RuntimeError: if the follower is already being iterated.
        """
        with self._condition:
            if self._iterating:
                raise RuntimeError("this follower is already being iterated")
            self._iterating = True
        try:
            yield from self._follow()
        finally:
            with self._condition:
                self._iterating = False

    def run(self, callback: Callable[[Event], object]) -> None:
        """Call *callback* with each event until :meth:`stop`; the callback form of
        :meth:`events`.

        An exception from *callback* ends the run and propagates; :attr:`cursor` then
        points just before the event that failed, so a follower started from it (or
        this one, run again) gets that event again.
        """
        events = self.events()
        try:
            for event in events:
                try:
                    callback(event)
                except BaseException:
                    self._rewind(event)
                    raise
        finally:
            events.close()

    def stop(self) -> None:
        """Stop following; returns at once, from any thread, and is idempotent.

        A poll in progress is abandoned (the iteration ends without waiting for its
        answer), a pause after an error is cut short, and the events of an answer not yet
        handed out are left for a later follower started from :attr:`cursor`.
        """
        with self._condition:
            if self._stopping:
                return
            self._stopping = True
            self._condition.notify_all()
        if self._owns_session and isinstance(self._transport, requests.Session):
            # Closes the idle connections now; the abandoned one is closed when it returns.
            self._transport.close()

    close = stop

    def __enter__(self) -> Follower:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _follow(self) -> Iterator[Event]:
        failures = 0
        while not self._stopping:
            try:
                response = self._poll()
                if response is None:
                    return
                self._check(response)
            except SubscriptionRejected:
                raise
            except (requests.RequestException, _Retryable) as error:
                failures += 1
                delay = self.backoff.delay(failures)
                logger.warning(
                    "polling %s for %r failed (%s, %d in a row); retrying in %.2f s",
                    self.url, self.category, error, failures, delay,
                )
                self._pause(delay)
                continue
            if failures:
                logger.info("polling %s for %r works again", self.url, self.category)
                failures = 0
            if not response.events:
                self._after_timeout(response.timestamp)
                continue
            for event in response.events:
                if self._handed_out(event):
                    self._skip(event)
                    continue
                self._advance(event)
                yield event
                if self._stopping:
                    return

    def _subscription_request(self) -> SubscriptionRequest:
        cursor = self._cursor
        if cursor is None:
            return SubscriptionRequest(self.category, self.timeout_seconds)
        since_time = cursor.since_time
        if since_time == 0 and not cursor.last_id:
            # subscription() leaves since_time=0 out of the query, which means "now";
            # -1 asks for the same events (timestamp > -1, that is >= 0).
            since_time = -1
        return SubscriptionRequest(self.category, self.timeout_seconds, since_time, cursor.last_id)

    def _poll(self) -> SubscriptionResponse | None:
        """One long poll, in a daemon thread; ``None`` if :meth:`stop` came first."""
        request = self._subscription_request()
        outcome: list[SubscriptionResponse | BaseException] = []

        def send() -> None:
            result: SubscriptionResponse | BaseException
            try:
                result = subscription(
                    self.url, self.header, request, self.username, self.password,
                    self._transport,
                )
            except BaseException as error:  # handed to the waiting thread
                result = error
            with self._condition:
                outcome.append(result)
                self._condition.notify_all()

        thread = threading.Thread(target=send, name="wsgi_longpoll-follower-poll", daemon=True)
        with self._condition:
            if self._stopping:
                return None
            thread.start()
            self._condition.wait_for(lambda: bool(outcome) or self._stopping)
            if not outcome:
                return None
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _check(self, response: SubscriptionResponse) -> None:
        """Raise for an answer that is not events or a timeout."""
        if response.error is not None:
            raise SubscriptionRejected(
                f"the server rejected the subscription to {self.category!r}: {response.error}",
                response.status_code,
                response.error,
            )
        status = response.status_code
        if status in RETRYABLE_STATUSES:
            raise _Retryable(f"HTTP {status}")
        if status != 200:
            raise SubscriptionRejected(
                f"the server answered HTTP {status} to the subscription to {self.category!r}",
                status,
            )

    def _pause(self, delay: float) -> None:
        if self._sleep is not None:
            self._sleep(delay)
            return
        with self._condition:
            self._condition.wait_for(lambda: self._stopping, timeout=delay)

    def _after_timeout(self, server_time: int | None) -> None:
        # Keep the cursor: jumping to the server's time could skip an event published in
        # the same millisecond. Only a follower that started "from now" and has received
        # nothing needs a cursor, so that the next poll misses nothing published between
        # the two polls; no event can be at or before server_time - 1 and unseen, since
        # any such event would have ended the poll.
        if self._cursor is None and server_time is not None:
            self._cursor = Cursor(server_time - 1)
            self._ids_at_cursor_time = set()

    def _handed_out(self, event: Event) -> bool:
        cursor = self._cursor
        return cursor is not None and (
            event.timestamp < cursor.since_time
            or (event.timestamp == cursor.since_time and event.id in self._ids_at_cursor_time)
        )

    def _skip(self, event: Event) -> None:
        """Pass over *event*, handed out before, and move the cursor onto it if it can.

        A server that no longer knows ``last_id`` (lost in a restart) answers at once with
        the events of that millisecond it still has, all handed out before; the next poll
        must name one of those, or the server would answer the same again and again.
        """
        logger.debug("skipping event %s: already handed out", event.id)
        cursor = self._cursor
        if cursor is not None and event.timestamp == cursor.since_time:
            self._cursor = Cursor.after(event)

    def _advance(self, event: Event) -> None:
        cursor = self._cursor
        if cursor is None or event.timestamp != cursor.since_time:
            self._ids_at_cursor_time = set()
        self._ids_at_cursor_time.add(event.id)
        self._previous_cursor = cursor
        self._cursor = Cursor.after(event)

    def _rewind(self, event: Event) -> None:
        """Count *event*, the last one handed out, as not handed out."""
        if self._cursor != Cursor.after(event):
            return
        self._ids_at_cursor_time.discard(event.id)
        previous = self._cursor = self._previous_cursor
        if previous is not None and previous.last_id:
            self._ids_at_cursor_time.add(previous.last_id)


class _Retryable(Exception):
    """An answer that says "try again later"."""
