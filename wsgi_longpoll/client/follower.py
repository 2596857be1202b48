"""Follow categories for hours: resume after every answer, reconnect, back off, stop.

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

Against this package's server (``docs/protocol.md``, "Extensions"), a follower may follow
several categories with one cursor and one poll at a time, and it tells its user when the
server dropped events it had not handed out yet (:class:`GapDetected`). With
``stream=True`` it reads a stream of Server-Sent Events instead of long polls: one
request that the server keeps open for ``timeout_seconds``, then a reconnect with
``Last-Event-ID``; the cursor, the gaps and the pauses after errors are the same.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import requests

from ..event import Event, Gap
from .api import (
    SUBSCRIPTION_TIMEOUT_MARGIN_SECONDS,
    ClientError,
    Header,
    InvalidResponse,
    SubscriptionRequest,
    SubscriptionResponse,
    Transport,
    _error_message,
    _header_fields,
    _session_for,
    _with_local_host,
    subscription,
)
from .sse import EVENT_STREAM, SSEMessage, SSEParser, parse_stream_id

__all__ = ["Backoff", "Cursor", "Follower", "GapDetected", "SubscriptionRejected"]

logger = logging.getLogger(__name__)

#: Statuses that say "try again later"; other statuses but 200 end the follower.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class SubscriptionRejected(ClientError):
    """The server refused the subscription in a way that trying again cannot fix.

    Raised by the follower's iterator for a ``{"error": ...}`` answer (an invalid category
    or timeout) and for an answer whose status is neither 200 nor one of
    :data:`RETRYABLE_STATUSES` (a hook's or a token's 401 or 403, a 404 for a wrong URL,
    a 400). The message says which, with the server's own message;
    :attr:`status_code` and :attr:`error` hold them.
    """

    def __init__(self, message: str, status_code: int, error: str | None = None) -> None:
        super().__init__(message)
        #: The answer's HTTP status.
        self.status_code = status_code
        #: The server's message: the ``error`` of its JSON body (or its short plain-text
        #: body), or ``None`` when it gave none.
        self.error = error


class GapDetected(Exception):
    """The server dropped events that the follower had not handed out yet.

    A server keeps a limited number of events per category for a limited time; a
    follower that falls behind (a slow loop, a long outage, a saved cursor that is too
    old) asks for events that are gone. This package's server says so (golongpoll's never
    does), and the follower reports it once, after handing out every event of the answer
    that said so: it calls its *on_gap* callback with this exception, or, without one,
    raises it from the iteration. Iterate again (or :meth:`Follower.run` again) to go on:
    the follower's :attr:`~Follower.cursor` is already past the gap, so the gap is not
    reported again.

    :param message: what happened, in words.
    :param gaps: one :class:`~wsgi_longpoll.event.Gap` per category that lost events.
    :param cursor: the follower's cursor in the poll whose answer reported the gaps.
    """

    def __init__(self, message: str, gaps: Sequence[Gap], cursor: Cursor | None) -> None:
        super().__init__(message)
        #: The categories that lost events; in each, the events after :attr:`cursor` up to
        #: and including the event ``(gap.since_time, gap.last_id)`` were dropped unseen.
        self.gaps = list(gaps)
        #: Where the follower was when it asked: nothing before it was lost.
        self.cursor = cursor


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
    """Every event of some categories, in order and once, across reconnects and restarts.

    Iterate over it (``for event in follower``), or hand it a callback with :meth:`run`;
    either blocks until :meth:`stop` is called, from another thread or from the loop's
    own body. Only one iteration may run at a time; a stopped follower stays stopped.

    :param url: the subscription endpoint, e.g. ``"http://localhost:8080/events"``.
    :param category: the category to follow, or a sequence of categories to follow with
        one cursor (an extension of this package's server: each poll waits on all of
        them, the events come in publish order across them; a golongpoll server follows
        the first one only). Repeats are ignored. This package's server takes up to 16
        categories per request by default and rejects more (:class:`SubscriptionRejected`).
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
    :param on_gap: called with a :class:`GapDetected` when the server dropped events the
        follower had not handed out, once the events of the answer that said so are
        handed out; ``None`` (the default) raises the :class:`GapDetected` from the
        iteration instead. An exception from *on_gap* ends the iteration and propagates.
    :param sleep: called with the length of each pause instead of waiting for it (the
        default waits, and :meth:`stop` cuts the wait short). Tests pass a fake clock.
    :param stream: read a stream of Server-Sent Events (this package's server, see
        ``docs/protocol.md``) instead of long polls: the server keeps each request open
        for *timeout_seconds* and sends the events as they come; then the follower
        reconnects from its cursor (``Last-Event-ID``). A gap is reported when the server
        sends it, before the events that follow it.
    :param token: a subscribe token (see :mod:`wsgi_longpoll.tokens`), sent as
        ``Authorization: Bearer <token>``, for a server that requires one; or a function
        that returns one, called before the first request and again whenever the server
        refuses the token (401 or 403: it expired), so that a follower runs for longer
        than a token lasts. A token refused again at once ends the iteration
        (:class:`SubscriptionRejected`).
    """

    #: The default long-poll timeout, in seconds: below the 60 s idle timeout of many
    #: proxies and load balancers.
    default_timeout_seconds = 45

    def __init__(
        self,
        url: str,
        category: str | Sequence[str],
        *,
        start: Cursor | int | None = None,
        timeout_seconds: int = default_timeout_seconds,
        header: Header | None = None,
        username: str = "",
        password: str = "",
        transport: Transport = None,
        backoff: Backoff | None = None,
        on_gap: Callable[[GapDetected], object] | None = None,
        sleep: Callable[[float], object] | None = None,
        stream: bool = False,
        token: str | Callable[[], str] | None = None,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError(f"url must be a non-empty str, not {url!r}")
        if token is not None and not (isinstance(token, str) or callable(token)):
            raise TypeError(f"token must be a str or a function, not {token!r}")
        if token is not None and username and password:
            raise ValueError("a token and basic auth both need the Authorization header: "
                             "give one of them")
        categories = _categories(category)
        if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int):
            raise TypeError(f"timeout_seconds must be an int, not {timeout_seconds!r}")
        if timeout_seconds < 1:
            raise ValueError(f"timeout_seconds must be at least 1, not {timeout_seconds!r}")
        self.url = url
        #: The categories followed, without repeats, in the order given.
        self.categories = categories
        #: The first of :attr:`categories` (the one a golongpoll server follows).
        self.category = categories[0]
        self.on_gap = on_gap
        self.timeout_seconds = timeout_seconds
        self.header = header
        self.username = username
        self.password = password
        self.backoff = backoff if backoff is not None else Backoff()
        #: Whether it reads streams of Server-Sent Events rather than long polls.
        self.stream = stream
        self._sleep = sleep
        self._token_source = token
        #: The token sent, once known.
        self._token: str | None = token if isinstance(token, str) else None
        #: Whether the token was just fetched again after a refusal (a second refusal
        #: is final).
        self._token_renewed = False
        self._owns_session = transport is None
        self._transport: Transport = requests.Session() if transport is None else transport

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
        # The gap last reported for each category: a server may name it again (a cursor it
        # cannot pass, see _pass_gaps) and it must not be reported twice.
        self._reported_gaps: dict[str, Gap] = {}
        self._condition = threading.Condition()
        self._stopping = False
        self._iterating = False
        self._response: requests.Response | None = None  # the open stream, if any

    @property
    def cursor(self) -> Cursor | None:
        """Where the follower is: just after the last event handed out (or after the
        newest event the server dropped, past a gap).

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
        """Yield each event of the categories once, oldest first, until :meth:`stop`.

        :raises SubscriptionRejected: if the server refuses the subscription for good.
        :raises GapDetected: without *on_gap*, when the server dropped events that were
            not handed out; iterate again to go on after it.
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
        this one, run again) gets that event again. Without *on_gap*, a
        :class:`GapDetected` ends the run too; run again to go on after the gap.
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
        response = self._response
        if response is not None:  # ends the stream reader's wait on the socket
            _hang_up(response)
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
        if self.stream:
            yield from self._follow_streams()
            return
        failures = 0
        while not self._stopping:
            asked = self._cursor
            try:
                response = self._poll()
                if response is None:
                    return
                self._check(response)
            except SubscriptionRejected as rejection:
                if self._renew_token(rejection):
                    continue
                raise
            except (requests.RequestException, _Retryable) as error:
                failures += 1
                delay = self.backoff.delay(failures)
                logger.warning(
                    "polling %s for %s failed (%s, %d in a row); retrying in %.2f s",
                    self.url, self._names, error, failures, delay,
                )
                self._pause(delay)
                continue
            self._token_renewed = False
            if failures:
                logger.info("polling %s for %s works again", self.url, self._names)
                failures = 0
            events = response.events
            if not events:
                self._after_timeout(response.timestamp)
            last = len(events) - 1
            for index, event in enumerate(events):
                if self._handed_out(event):
                    self._skip(event)
                    continue
                self._advance(event)
                yield event
                if self._stopping and index < last:
                    # The rest, and the answer's gaps, are left for a later follower. Past
                    # the last event the gaps are reported even so: the cursor may be past
                    # them, and a later follower would never hear of them.
                    return
            if response.gaps:
                self._pass_gaps(response.gaps, asked, came_empty=not events)

    def _follow_streams(self) -> Iterator[Event]:
        failures = 0
        while not self._stopping:
            asked = self._cursor
            reader = _StreamReader(self)
            try:
                for message in reader.messages():
                    self._token_renewed = False
                    if failures:
                        logger.info("streaming %s for %s works again", self.url, self._names)
                        failures = 0
                    if message.event == "gap":
                        self._report_streamed_gap(_decode_message(message, Gap.from_dict), asked)
                    elif message.event == "message":
                        event = _decode_message(message, Event.from_dict)
                        if self._handed_out(event):
                            self._skip(event)
                            continue
                        self._advance(event)
                        yield event
                    if self._stopping:
                        return
            except SubscriptionRejected as rejection:
                if self._renew_token(rejection):
                    continue
                raise
            except (requests.RequestException, _Retryable) as error:
                self._start_from_stream(reader.parser)
                if self._stopping:
                    return
                failures = 1 if reader.opened else failures + 1
                delay = self.backoff.delay(failures)
                logger.warning(
                    "streaming %s for %s failed (%s, %d in a row); reconnecting in %.2f s",
                    self.url, self._names, error, failures, delay,
                )
                self._pause(delay)
                continue
            finally:
                reader.close()
            # The server ended the stream (its timeout, or it drains): reconnect at once.
            self._start_from_stream(reader.parser)
            failures = 0

    def _renew_token(self, rejection: SubscriptionRejected) -> bool:
        """Whether a fresh token is worth a try after *rejection*: it refused the token
        (401, 403), the token comes from a function, and it was not just fetched."""
        source = self._token_source
        if (rejection.status_code not in (401, 403) or not callable(source)
                or self._token_renewed):
            return False
        logger.info("the server refused the subscribe token (%s): fetching another",
                    rejection.error or f"HTTP {rejection.status_code}")
        self._token = None
        self._token_renewed = True
        return True

    def _header(self) -> dict[str, str]:
        """The request headers: *header*'s, and the token's."""
        fields = _header_fields(self.header)
        source = self._token_source
        if source is not None:
            if self._token is None and callable(source):
                self._token = source()
            fields["Authorization"] = f"Bearer {self._token}"
        return fields

    def _start_from_stream(self, parser: SSEParser) -> None:
        """Started from now with nothing handed out: go on from where the stream started
        (its opening ``id``), so that the next one misses nothing published between."""
        if self._cursor is not None or not parser.last_event_id:
            return
        cursor = parse_stream_id(parser.last_event_id)
        if cursor is not None:
            self._cursor = Cursor(*cursor)
            self._ids_at_cursor_time = {cursor[1]} if cursor[1] else set()

    def _report_streamed_gap(self, gap: Gap, asked: Cursor | None) -> None:
        """Report *gap* once. The cursor moves past it with the events that follow."""
        if self._reported_gaps.get(gap.category) == gap:
            return
        self._reported_gaps[gap.category] = gap
        if asked == Cursor(0):
            return
        detected = GapDetected(
            f"the server dropped events of {gap.category!r} (up to "
            f"{gap.since_time}/{gap.last_id}) before this follower got them "
            "(its buffer size or time to live)",
            [gap],
            asked,
        )
        logger.info("%s", detected)
        if self.on_gap is None:
            raise detected
        self.on_gap(detected)

    def _stream_request(self) -> tuple[list[tuple[str, str | int]], dict[str, str]]:
        """The query and the headers of the next stream."""
        first, *more = self.categories
        params: list[tuple[str, str | int]] = [("category", first)]
        params.extend(("categories", category) for category in more)
        params.append(("timeout", self.timeout_seconds))
        fields = self._header()
        fields["Accept"] = EVENT_STREAM
        fields["Cache-Control"] = "no-cache"
        cursor = self._cursor
        if cursor is not None:
            fields["Last-Event-ID"] = f"{cursor.since_time}:{cursor.last_id}"
        return params, fields

    @property
    def _names(self) -> str:
        return ", ".join(repr(category) for category in self.categories)

    def _subscription_request(self) -> SubscriptionRequest:
        cursor = self._cursor
        first, *more = self.categories
        if cursor is None:
            return SubscriptionRequest(first, self.timeout_seconds, categories=more)
        since_time = cursor.since_time
        if since_time == 0 and not cursor.last_id:
            # subscription() leaves since_time=0 out of the query, which means "now";
            # -1 asks for the same events (timestamp > -1, that is >= 0).
            since_time = -1
        return SubscriptionRequest(
            first, self.timeout_seconds, since_time, cursor.last_id, categories=more
        )

    def _poll(self) -> SubscriptionResponse | None:
        """One long poll, in a daemon thread; ``None`` if :meth:`stop` came first."""
        request = self._subscription_request()
        header: Header | None = self._header() if self._token_source is not None else self.header
        outcome: list[SubscriptionResponse | BaseException] = []

        def send() -> None:
            result: SubscriptionResponse | BaseException
            try:
                result = subscription(
                    self.url, header, request, self.username, self.password,
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
        status = response.status_code
        _refused(status, response.error if status == 200 else response.refusal,
                 f"the subscription to {self._names}")

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

    def _pass_gaps(self, gaps: list[Gap], asked: Cursor | None, *, came_empty: bool) -> None:
        """Move the cursor past *gaps* where it safely can, and report the new ones.

        Every event after the cursor that the server had was in the answer, so nothing it
        publishes later comes before the newest event it dropped: when no event came, or
        the gap is newer than the last one, the next poll asks after the gap. Otherwise
        (the same millisecond, order unknown) the cursor stays, and the server may name
        the same gap again; it is reported once.
        """
        newest = max(gaps, key=lambda gap: gap.since_time)
        cursor = self._cursor
        if cursor is None or newest.since_time > cursor.since_time or (
            came_empty and newest.since_time == cursor.since_time
        ):
            if cursor is None or newest.since_time != cursor.since_time:
                self._ids_at_cursor_time = set()
            self._ids_at_cursor_time.add(newest.last_id)
            self._cursor = Cursor(newest.since_time, newest.last_id)
        fresh = [gap for gap in gaps if self._reported_gaps.get(gap.category) != gap]
        self._reported_gaps.update((gap.category, gap) for gap in gaps)
        if not fresh or asked == Cursor(0):
            # Started from 0, "everything the server still has": nothing was missed.
            return
        names = ", ".join(
            f"{gap.category!r} (up to {gap.since_time}/{gap.last_id})" for gap in fresh
        )
        detected = GapDetected(
            f"the server dropped events of {names} before this follower got them "
            "(its buffer size or time to live)",
            fresh,
            asked,
        )
        logger.info("%s; going on from %s", detected, self._cursor)
        if self.on_gap is None:
            raise detected
        self.on_gap(detected)

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


def _categories(category: str | Sequence[str]) -> tuple[str, ...]:
    """*category* as a tuple of categories without repeats; a clear error for bad ones."""
    names: Iterable[object]
    if isinstance(category, str):
        names = (category,)
    elif isinstance(category, bytes) or not isinstance(category, Iterable):
        raise TypeError(
            f"category must be a str or a sequence of str, not {type(category).__name__}"
        )
    else:
        names = category
    categories: dict[str, None] = {}
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"a category must be a str, not {name!r}")
        if not name:
            raise ValueError("a category must be a non-empty str, not ''")
        categories[name] = None
    if not categories:
        raise ValueError("at least one category must be given")
    return tuple(categories)


class _Retryable(Exception):
    """An answer that says "try again later"."""


def _decode_message(message: SSEMessage, decode: Callable[[Any], Any]) -> Any:
    try:
        return decode(json.loads(message.data))
    except ValueError as error:
        raise InvalidResponse(f"the stream sent an invalid {message.event}: {error}") from error


class _StreamReader:
    """One stream request, read in a daemon thread; the iterating thread takes its
    messages, and :meth:`Follower.stop` ends the wait for the next one at once."""

    def __init__(self, follower: Follower) -> None:
        self.follower = follower
        self.parser = SSEParser()
        self._items: deque[SSEMessage | BaseException | None] = deque()
        self._thread = threading.Thread(
            target=self._read, name="wsgi_longpoll-follower-stream", daemon=True
        )
        self._closed = False
        #: Whether the server answered with a stream.
        self.opened = False

    def messages(self) -> Iterator[SSEMessage]:
        """The stream's messages until it ends; its errors raised."""
        follower = self.follower
        condition = follower._condition
        with condition:
            if follower._stopping:
                return
            self._thread.start()
        while True:
            with condition:
                condition.wait_for(lambda: bool(self._items) or follower._stopping)
                if follower._stopping:
                    return
                item = self._items.popleft()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Let go of the stream (the reader thread ends with it)."""
        with self.follower._condition:
            self._closed = True
            response = self.follower._response
            self.follower._response = None
        if response is not None:
            _hang_up(response)

    def _put(self, item: SSEMessage | BaseException | None) -> None:
        condition = self.follower._condition
        with condition:
            self._items.append(item)
            condition.notify_all()

    def _read(self) -> None:
        follower = self.follower
        try:
            params, fields = follower._stream_request()
            margin = SUBSCRIPTION_TIMEOUT_MARGIN_SECONDS
            auth = (
                requests.auth.HTTPBasicAuth(
                    follower.username.encode("utf-8"), follower.password.encode("utf-8")
                )
                if follower.username and follower.password
                else None
            )
            with _session_for(follower._transport) as session:
                response = session.get(
                    _with_local_host(follower.url), params=params, headers=fields, auth=auth,
                    timeout=(margin, follower.timeout_seconds + margin), stream=True,
                )
                with follower._condition:
                    if self._closed or follower._stopping:
                        response.close()
                        return
                    follower._response = response
                self._check(response)
                self.opened = True
                for line in _lines(response):
                    message = self.parser.feed(line)
                    if message is not None:
                        self._put(message)
            self._put(None)
        except BaseException as error:  # handed to the iterating thread
            self._put(error)

    def _check(self, response: requests.Response) -> None:
        follower = self.follower
        status = response.status_code
        content_type = response.headers.get("Content-Type", "")
        if status == 200 and content_type.split(";")[0].strip() == EVENT_STREAM:
            return
        _refused(status, _error_message(response), f"the stream of {follower._names}")
        raise InvalidResponse(
            f"the server answered a stream request with {content_type or 'no Content-Type'}, "
            f"not {EVENT_STREAM} (is it this package's server?)"
        )


def _refused(status: int, error: str | None, what: str) -> None:
    """Raise for an answer of *status* with the server's message *error* to *what* (the
    subscription to ...), unless it is a 200 without an error.

    :raises _Retryable: for one of :data:`RETRYABLE_STATUSES`.
    :raises SubscriptionRejected: for any other status but 200, or a 200 with an error.
    """
    if status in RETRYABLE_STATUSES:
        raise _Retryable(f"HTTP {status}" if error is None else f"HTTP {status}: {error}")
    if status == 200 and error is None:
        return
    message = (f"the server rejected {what}" if status == 200
               else f"the server answered HTTP {status} to {what}")
    raise SubscriptionRejected(message if error is None else f"{message}: {error}",
                               status, error)


def _hang_up(response: requests.Response) -> None:
    """Close a stream's connection, also while another thread waits on it: closing the
    response alone would leave the socket open until that thread lets go of it."""
    connection = getattr(response.raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        response.close()


def _lines(response: requests.Response) -> Iterator[str]:
    """The stream's lines as they come, without their line ends (LF or CRLF)."""
    pending = b""
    for chunk in response.iter_content(chunk_size=None):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.removesuffix(b"\r").decode("utf-8", "replace")
