"""The long-poll paths answered natively, and every held subscriber parked on its socket.

The protocol is :class:`~wsgi_longpoll.endpoints.Endpoints`' (the one the
:class:`~wsgi_longpoll.wsgi.middleware.LongpollMiddleware` drives): this module feeds it
a request's parts and writes its :class:`~wsgi_longpoll.endpoints.Answer`, or parks its
:class:`~wsgi_longpoll.endpoints.Hold`. Hooks get a werkzeug ``Request``, built only when
a hook is set.

A hold comes from the native paths, or from a WSGI application under the bridge (a Flask
or Django view, a middleware wrapped in others) through the environ key
:data:`~wsgi_longpoll.endpoints.HOLD_KEY`: then the application's own headers (a session
cookie, CORS) go with the answer.

A long poll with nothing to answer yet is a :class:`ParkedPoll`: a
:class:`~wsgi_longpoll.manager.Subscriber` holding its connection. The manager's
:meth:`~ParkedPoll.deliver` writes the answer to the socket at once, without blocking,
from whatever greenlet or thread published; subscribers handed the same events share one
encoded answer. Only a partial write (a full socket buffer) is left to the connection's
greenlet. While parked, that greenlet waits on the socket, which wakes it for the next
request (the answer already written) or the client's end of file (a hang-up, or a
half-close whose answer is still owed: see :class:`ParkedPoll`), and on a timer for the
protocol's timeout answer.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import weakref
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import gevent
from gevent.hub import Waiter
from gevent.monkey import get_original

from .._gevent import peek, peer_closed, raw_socket, read_watcher
from ..endpoints import SUBSCRIBE_HEADERS, Answer, Endpoints, Hold, RequestParts, refusal
from ..event import Event
from ..manager import CapacityExceeded, LongpollManager, StorageUnavailable, Subscriber
from ..protocol import events_body, now_ms, timeout_body
from ..sse import KEEP_ALIVE, batch_body
from ..wsgi.middleware import LongpollMiddleware, RequestContext
from .http import Connection, Request, send_all
from .wsgi import WSGIBridge, make_environ

if TYPE_CHECKING:
    from gevent.hub import Hub

__all__ = ["LongpollRouter", "ParkedPoll", "ParkedStream"]

logger = logging.getLogger(__name__)

_OK = b"200 OK"

# The claim of an answer: deliver (any thread, the manager's lock held), release (the
# hub) and the timeout (the connection's greenlet) race to answer; one wins.
_allocate_lock = get_original("_thread", "allocate_lock")
_claim_lock = _allocate_lock()
_monotonic = get_original("time", "monotonic")
_get_thread_ident = get_original("_thread", "get_ident")

#: Why a parked connection's greenlet woke.
_READABLE, _TIMER, _WAKE, _CHECK = 1, 2, 3, 4


def _path_bytes(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.encode("latin-1")  # PATH_INFO is the raw path decoded as latin-1
    except UnicodeEncodeError:
        return path.encode("utf-8")


def _reset(sock: Any) -> bool:
    """Whether the connection of *sock* failed (the peer reset it)."""
    try:
        return bool(raw_socket(sock).getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    except OSError:
        return True


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("latin-1")


class LongpollRouter:
    """Routes a connection's requests: the middleware's long-poll paths natively, every
    other path to the WSGI application through the bridge; parks every hold.

    :param middleware: the long-poll settings (paths, hooks, limits) and manager, or
        ``None``: every request goes to the application (whose views may hold).
    :param bridge: the bridge to the application for every other path.
    :param max_request_body_size: the largest body of a request to the application.
    :param native: answer the long-poll paths here; ``False`` sends them through the
        bridge too (to the middleware in the application), for a middleware such as CORS
        that must see their answers.
    """

    def __init__(self, middleware: LongpollMiddleware | None, bridge: WSGIBridge,
                 max_request_body_size: int, *, native: bool = True) -> None:
        self.bridge = bridge
        bridge.park = self.park
        self.max_request_body_size = max_request_body_size
        #: Every manager a subscriber was parked on: drained when the server stops.
        self.managers: weakref.WeakSet[LongpollManager] = weakref.WeakSet()
        self._parked_on: LongpollManager | None = None
        #: The protocol; its checks see a :class:`RequestContext` (``None`` when there are none).
        self.endpoints: Endpoints[Any] | None = None
        self.subscription_path = self.publish_path = None
        self.max_body_size = max_request_body_size
        self.native = native and middleware is not None
        self._checks = False
        if middleware is not None:
            self.managers.add(middleware.manager)
            endpoints = self.endpoints = middleware.endpoints
            options = endpoints.options
            self.subscription_path = _path_bytes(options.subscription_path)
            self.publish_path = _path_bytes(options.publish_path)
            self.max_body_size = options.max_body_size
            self._checks = any((endpoints.before_subscription, endpoints.before_publish,
                                endpoints.authorize_subscribe, endpoints.authorize_publish))
        #: The last answer encoded for a delivery: ``(events, head, response, body)``.
        self.answer_cache: tuple[Any, bytes, bytes, bytes] = (None, b"", b"", b"")
        #: The last stream write encoded for a delivery: ``(events, body)``.
        self.stream_cache: tuple[Any, bytes] = (None, b"")

    def _route(self, path: bytes) -> bytes:
        return unquote_to_bytes(path) if b"%" in path else path

    def body_limit(self, path: bytes) -> tuple[int, bool]:
        path = self._route(path)
        if path == self.publish_path:
            return self.max_body_size, True
        if path == self.subscription_path:
            return self.max_body_size, False
        return self.max_request_body_size, False

    def handle(self, connection: Connection, request: Request) -> None:
        if not self.native:
            self.bridge.handle(connection, request)
            return
        path = self._route(request.path)
        if path == self.subscription_path:
            handler = self.subscribe
        elif path == self.publish_path:
            handler = self.publish
        else:
            self.bridge.handle(connection, request)
            return
        try:
            handler(connection, request)
        except OSError:
            raise
        except Exception:
            logger.exception("answering %s failed", path.decode("latin-1"))
            connection.keep_alive = request.keep_alive = False
            connection.send_response(request, b"500 Internal Server Error",
                                     b"Content-Type: text/plain; charset=utf-8\r\n",
                                     b"Internal Server Error\n")

    def _context(self, connection: Connection, request: Request) -> RequestContext:
        """What the hooks and authorize functions see (made only when one is set)."""
        base = self.bridge.base_environ
        return RequestContext(lambda: make_environ(connection, request, base))

    @staticmethod
    def send(connection: Connection, request: Request, answer: Answer,
             extra: bytes = b"") -> None:
        """Write *answer* (with the header lines *extra*)."""
        connection.send_response(request, answer.status_bytes, answer.headers.raw + extra,
                                 answer.body)

    def subscribe(self, connection: Connection, request: Request) -> None:
        assert self.endpoints is not None
        accept = request.header(b"accept")
        if accept is None:
            parts = RequestParts(request.method.decode("latin-1"),
                                 request.query.decode("latin-1"))
        else:
            parts = RequestParts(
                request.method.decode("latin-1"), request.query.decode("latin-1"),
                accept.decode("latin-1"),
                # Only a stream reads it (Accept: text/event-stream).
                _text(request.header(b"last-event-id")) if b"event-stream" in accept else "",
            )
        if self.endpoints.tokens is not None:
            parts.authorization = _text(request.header(b"authorization"))
        result = self.endpoints.subscribe(
            parts, self._context(connection, request) if self._checks else None)
        if isinstance(result, Answer):
            self.send(connection, request, result)
        else:
            self.park(connection, request, self.endpoints.manager, result, b"")

    def publish(self, connection: Connection, request: Request) -> None:
        assert self.endpoints is not None
        method = request.method.decode("latin-1")
        key = request.header(b"idempotency-key")
        parts = RequestParts(method, "", "", "", None if key is None else key.decode("latin-1"),
                             request.body if method == "POST" else b"")
        self.send(connection, request, self.endpoints.publish(
            parts, self._context(connection, request) if self._checks else None))

    # -- holds --------------------------------------------------------------------------

    def park(self, connection: Connection, request: Request, manager: LongpollManager,
             hold: Hold, extra: bytes) -> None:
        """Answer *hold* on *connection*: at once if events are there, else from the
        publisher. *extra* are header lines to send with it (an application's own)."""
        if manager is not self._parked_on:  # a WeakSet's add makes a weak reference
            self.managers.add(manager)
            self._parked_on = manager
        if hold.stream:
            self._stream(connection, request, manager, hold, extra)
            return
        poll = ParkedPoll(self, manager, connection, request, hold.headers.raw + extra)
        try:
            delivery = manager.attach(poll, hold.categories, hold.since_time, hold.last_id)
        except (CapacityExceeded, StorageUnavailable) as error:
            self.refuse(connection, request, error, extra)
            return
        if delivery is not None:
            if delivery.events:
                body = events_body(delivery.events, delivery.gaps)
            else:
                body = timeout_body(now_ms(), delivery.gaps)
            connection.send_response(request, _OK, poll.head, body)
            return
        poll.wait(hold.timeout)

    def refuse(self, connection: Connection, request: Request,
               error: CapacityExceeded | StorageUnavailable, extra: bytes) -> None:
        """Answer a hold the manager refused (503), and close the connection: at the
        subscriber cap, a refused client that kept its connection open would hold a
        descriptor that ``/healthz`` and every other request need."""
        connection.keep_alive = request.keep_alive = False
        self.send(connection, request, refusal(error, SUBSCRIBE_HEADERS), extra)

    def encode(self, poll: ParkedPoll, events: list[Event]) -> bytes:
        """The whole response of *poll* to *events*, encoded once for every poll that
        gets the same list in one delivery with the same headers (and no gaps); the body
        alone is shared by those whose headers differ (a session cookie of their own)."""
        connection, request = poll.connection, poll.request
        if poll.gaps:
            body = events_body(events, poll.gaps)
            return connection.response_head(request, _OK, poll.head, len(body)) + body
        cached_events, head, response, body = self.answer_cache
        if cached_events is not events:
            body = events_body(events)
            head = response = b""
            self.answer_cache = (events, head, response, body)
        if request.version != "1.1" or not request.keep_alive or connection.server.closing:
            return connection.response_head(request, _OK, poll.head, len(body)) + body
        if head == poll.head and response:
            connection.keep_alive = True
            return response
        response = connection.response_head(request, _OK, poll.head, len(body)) + body
        self.answer_cache = (events, poll.head, response, body)
        return response

    def _stream(self, connection: Connection, request: Request, manager: LongpollManager,
                hold: Hold, extra: bytes) -> None:
        """A stream of Server-Sent Events (see :mod:`wsgi_longpoll.sse`), written to from
        the publisher."""
        stream = ParkedStream(self, manager, connection, request)
        categories = hold.categories
        try:
            delivery = manager.attach(stream, categories, hold.since_time, hold.last_id)
        except (CapacityExceeded, StorageUnavailable) as error:
            self.refuse(connection, request, error, extra)
            return
        connection.keep_alive = request.keep_alive = False  # the stream ends with the socket
        frame = stream.frame
        head = connection.response_head(
            request, _OK,
            hold.headers.raw + extra
            + (b"Transfer-Encoding: chunked\r\n" if stream.chunked else b""),
            None,
        )
        try:
            send_all(connection.sock, head + frame(hold.start))
            # Whatever is buffered after the cursor comes first, a batch at a time, until
            # the stream waits for what is published next (or the server drains).
            while delivery is not None and delivery.events:
                send_all(connection.sock, frame(batch_body(delivery.events, delivery.gaps)))
                last = delivery.events[-1]
                delivery = manager.attach(stream, categories, last.timestamp, last.id)
        except (CapacityExceeded, StorageUnavailable) as error:
            logger.warning("ending an event stream: %s", error)
            return
        except OSError:
            return
        if delivery is not None:  # draining: what it found, and the end
            with contextlib.suppress(OSError):
                send_all(connection.sock, frame(batch_body([], delivery.gaps)) + stream.last)
            return
        # Registered: the gaps its read found go first, then what was delivered meanwhile.
        if stream.gaps:
            with stream.lock:
                stream.pending = frame(batch_body([], stream.gaps)) + stream.pending
        stream.run(hold.timeout, hold.keepalive)


class ParkedPoll(Subscriber):
    """A long poll waiting on its connection; answered straight to the socket.

    A client that shuts its side of the connection while it waits (its end of file)
    has either hung up or half-closed (``shutdown(SHUT_WR)``: it sent its request and
    waits for the answer); a reader cannot tell them apart. So the poll then writes its
    answer's head at once (``Transfer-Encoding: chunked``, or on HTTP/1.0 a body that
    ends with the connection), and the peer's kernel tells: a client that closed answers
    data with a reset, within a round trip (the poll is dropped and its slot freed); a
    half-closed one takes the head and gets the body when events come or at the
    timeout, as usual, then the answers to requests it sent before its end of file.

    The reset is looked for over :attr:`PROBE_CHECKS`. A client that half-closes and only
    later hangs up keeps its slot until its answer is written (nothing is sent to it
    meanwhile), as does one on HTTP/1.0 that sent more requests before its end of file
    (no head is written early: it would end the connection before their answers).
    """

    __slots__ = ("router", "manager", "connection", "request", "head", "answered", "pending",
                 "broken", "waiter", "hub", "watching", "deferred", "answer")

    #: Seconds between the looks for a reset after the head is written to a client that
    #: shut its side (about 6 s in all: a reset comes a round trip after the head).
    PROBE_CHECKS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)

    def __init__(self, router: LongpollRouter, manager: LongpollManager,
                 connection: Connection, request: Request, head: bytes) -> None:
        super().__init__()
        self.router = router
        self.manager = manager
        #: The answer's header lines.
        self.head = head
        self.connection = connection
        self.request = request
        self.answered = False
        #: What is left to write after a partial write.
        self.pending = b""
        self.broken = False
        self.waiter: Waiter | None = None
        self.hub: Hub | None = None
        #: Whether the socket wakes the greenlet after the answer (else deliver must).
        self.watching = True
        #: The client shut its side: the greenlet writes the answer (its head is out).
        self.deferred = False
        #: The events to answer with when :attr:`deferred` (``[]``: the timeout answer).
        self.answer: list[Event] | None = None

    def _claim(self) -> bool:
        with _claim_lock:
            if self.answered:
                return False
            self.answered = True
            return True

    def deliver(self, events: list[Event]) -> bool:
        if self._claim():
            if self.deferred:  # final once claimed: it is set under the claim's lock
                self.answer = events
                self._wake()
            else:
                self._write(self.router.encode(self, events))
        return True

    def release(self) -> None:
        if self._claim():
            if self.deferred:
                self.answer = []
            else:
                request = self.request
                body = timeout_body(now_ms(), self.gaps)
                self._write(self.connection.response_head(request, _OK, self.head, len(body))
                            + body)
        self._wake()

    def _write(self, data: bytes) -> None:
        """Write *data* without blocking; leave the rest (if any) to the greenlet."""
        sock = self.connection.sock
        raw = raw_socket(sock)
        try:
            sent = raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.broken = True
            self._wake()
            return
        if sent < len(data):
            self.pending = data[sent:]
            self._wake()
            return
        connection = self.connection
        connection.busy = False
        if not connection.keep_alive:
            # Tell the client this was all (it may wait for the end); its hang-up wakes
            # the greenlet, which closes the socket.
            try:
                raw.shutdown(socket.SHUT_WR)
            except OSError:
                self.broken = True
                self._wake()
                return
        if not self.watching:
            self._wake()

    def _wake(self) -> None:
        waiter, hub = self.waiter, self.hub
        if waiter is None or hub is None:
            return  # not waiting yet: it looks at its state before it waits
        if hub.thread_ident == _get_thread_ident():
            hub.loop.run_callback(waiter.switch, _WAKE)
        else:
            hub.loop.run_callback_threadsafe(waiter.switch, _WAKE)

    def wait(self, timeout: float) -> None:
        """Park until answered, timed out, hung up on or released (the greenlet's part)."""
        connection = self.connection
        hub = gevent.get_hub()
        loop = hub.loop
        waiter = Waiter(hub)
        deadline = _monotonic() + max(timeout, 0.0)
        timer = loop.timer(max(timeout, 0.0))
        timer.start(waiter.switch, _TIMER)
        sock = connection.sock
        # The socket's own read watcher, idle while the greenlet is parked here.
        io = read_watcher(sock, loop)
        io.start(waiter.switch, _READABLE)
        request = self.request
        request.headers = []  # what a parked poll holds on to is what it costs: only
        request.body_parts = []  # the version, keep-alive and method are needed now
        self.waiter, self.hub = waiter, hub
        # With the next request read already, the socket will not wake the greenlet:
        # the answer must.
        self.watching = not (connection.queue or connection.current is not None
                             or connection.failure is not None or connection.upgraded)
        hung_up = False
        try:
            while not (self.broken or self.pending):
                if self.answered and not self.watching:
                    break
                reason = waiter.get()
                waiter.clear()
                if reason == _READABLE and not self.answered:
                    io.stop()  # the next request (answered after this one) or the end
                    queued, self.watching = not self.watching, False
                    try:
                        peeked = peek(sock)
                    except OSError:  # reset
                        hung_up = True
                        break
                    # A hang-up or a half-close: the head tells, but on HTTP/1.0 it
                    # ends the connection, and the requests read after this one with it.
                    if peeked == b"" and (request.version == "1.1" or not queued):
                        timer.stop()
                        hung_up = not self._wait_after_shut(waiter, loop, deadline)
                        break
                    continue
                if reason == _WAKE and not (self.broken or self.pending or self.answered):
                    continue
                break
        finally:  # also when the wait is cancelled (the socket shut from elsewhere)
            timer.close()
            io.stop()
            self.waiter = None
            self.manager.detach(self)
        if hung_up:
            connection.keep_alive = False
            self._claim()
            return
        if self.deferred:
            return
        request = self.request
        if self._claim():  # timed out
            body = timeout_body(now_ms(), self.gaps)
            connection.send_response(request, _OK, self.head, body)
            return
        if self.broken:
            connection.keep_alive = False
            return
        if self.pending:
            pending, self.pending = self.pending, b""
            send_all(connection.sock, pending)
        connection.keep_alive = request.keep_alive and not connection.server.closing
        connection.server.log_access(connection, request, _OK, None)

    def _wait_after_shut(self, waiter: Waiter, loop: Any, deadline: float) -> bool:
        """The client shut its side: write the answer's head, look for the reset of a
        client that is gone, and write the body when it comes. Whether the client was
        still there (else the caller drops the poll)."""
        with _claim_lock:
            if not self.answered:
                self.deferred = True
        if not self.deferred:  # answered meanwhile: written (or left to the caller)
            return True
        connection, request = self.connection, self.request
        sock = connection.sock
        chunked = request.version == "1.1"
        if not chunked:
            request.keep_alive = False  # the body ends with the connection
        head = connection.response_head(
            request, _OK, self.head + b"Transfer-Encoding: chunked\r\n" if chunked else self.head,
            None)
        try:
            # Without waiting: a client that leaves earlier answers unread is not waited for.
            if raw_socket(sock).send(head) < len(head):
                return False
        except OSError:  # BlockingIOError too
            return False
        # No other switch until the answer is in (so no wake is lost).
        timer = loop.timer(max(deadline - _monotonic(), 0.0))
        timer.start(waiter.switch, _TIMER)
        checks = iter(self.PROBE_CHECKS)
        check = loop.timer(next(checks))
        check.start(waiter.switch, _CHECK)
        try:
            while self.answer is None:
                reason = waiter.get()
                waiter.clear()
                if reason == _TIMER:
                    if self._claim():
                        self.answer = []
                elif reason == _CHECK:
                    if _reset(sock):  # a client that closed: its kernel answered the head
                        return False
                    delay = next(checks, None)
                    if delay is not None:
                        check.close()
                        check = loop.timer(delay)
                        check.start(waiter.switch, _CHECK)
        finally:
            timer.close()
            check.close()
        events = self.answer
        body = events_body(events, self.gaps) if events else timeout_body(now_ms(), self.gaps)
        try:
            send_all(sock, b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked else body)
        except OSError:
            return False
        connection.server.log_access(connection, request, _OK, len(body))
        return True


class ParkedStream(Subscriber):
    """A Server-Sent Events stream on its connection, written to from the publisher.

    Each delivery is written without blocking (one encoding for every stream that gets
    the same events); what the socket does not take waits in :attr:`pending`, in order,
    for the connection's greenlet, which also writes the keep-alive comments, ends the
    stream at its timeout or when the manager drains, and notices a hang-up.
    """

    __slots__ = ("router", "manager", "connection", "chunked", "pending", "flushing", "ended",
                 "lock", "waiter", "hub")

    #: The most a slow reader may leave unread before its stream is ended.
    max_pending = 8 * 1024 * 1024

    def __init__(self, router: LongpollRouter, manager: LongpollManager,
                 connection: Connection, request: Request) -> None:
        super().__init__()
        self.router = router
        self.manager = manager
        self.connection = connection
        #: HTTP/1.1: each write is a chunk; HTTP/1.0: the body ends with the connection.
        self.chunked = request.version != "1.0"
        self.pending = b""
        #: Whether the greenlet is writing :attr:`pending` (others then append to it);
        #: so too until the stream's head is out (see :meth:`run`).
        self.flushing = True
        self.ended = False
        self.lock = _allocate_lock()
        self.waiter: Waiter | None = None
        self.hub: Hub | None = None

    def frame(self, data: bytes) -> bytes:
        """*data* as one write of this stream's body (a chunk, on HTTP/1.1)."""
        return b"%x\r\n%s\r\n" % (len(data), data) if self.chunked and data else data

    @property
    def last(self) -> bytes:
        """What ends the body: the last chunk, on HTTP/1.1."""
        return b"0\r\n\r\n" if self.chunked else b""

    def deliver(self, events: list[Event]) -> bool:
        if not self.chunked:
            self.offer(batch_body(events))
            return self.ended
        router = self.router
        cached, body = router.stream_cache
        if cached is not events:
            body = self.frame(batch_body(events))
            router.stream_cache = (events, body)
        self.offer(body)
        return self.ended

    def release(self) -> None:
        self.ended = True
        self._wake()

    def offer(self, data: bytes) -> None:
        """Write *data* after what is pending, without blocking."""
        with self.lock:
            if self.ended:
                return
            if not (self.pending or self.flushing):
                sock = self.connection.sock
                try:
                    sent = raw_socket(sock).send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self.ended = True
                    sent = len(data)
                data = data[sent:]
            if data:
                self.pending += data
                if len(self.pending) > self.max_pending:
                    logger.warning("ending an event stream whose reader is %d bytes behind",
                                   len(self.pending))
                    self.ended = True
        if data or self.ended:
            self._wake()

    def _wake(self) -> None:
        waiter, hub = self.waiter, self.hub
        if waiter is None or hub is None:
            return
        if hub.thread_ident == _get_thread_ident():
            hub.loop.run_callback(waiter.switch, _WAKE)
        else:
            hub.loop.run_callback_threadsafe(waiter.switch, _WAKE)

    def run(self, timeout: float, keepalive: float) -> None:
        """The greenlet's part: write what is pending, keep the stream alive, end it."""
        connection = self.connection
        hub = gevent.get_hub()
        loop = hub.loop
        waiter = Waiter(hub)
        sock = connection.sock
        io = read_watcher(sock, loop)
        io.start(waiter.switch, _READABLE)
        self.waiter, self.hub = waiter, hub
        deadline = _monotonic() + timeout
        try:
            while not self.ended:
                with self.lock:
                    data, self.pending = self.pending, b""
                    self.flushing = bool(data)
                if data:
                    send_all(sock, data)
                    with self.lock:
                        self.flushing = False
                    continue
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    break
                timer = loop.timer(min(remaining, keepalive))
                timer.start(waiter.switch, _TIMER)
                try:
                    reason = waiter.get()
                finally:
                    timer.close()
                waiter.clear()
                if reason == _READABLE:
                    if peer_closed(sock):
                        break
                    io.stop()  # a pipelined request: it will not be answered
                elif reason == _TIMER and _monotonic() < deadline:
                    self.offer(self.frame(KEEP_ALIVE))
        except OSError:
            pass
        finally:
            with self.lock:
                broken, self.ended = self.ended and self.pending, True
            io.stop()
            self.waiter = None
            self.manager.detach(self)
            connection.keep_alive = False
        if not broken:  # ended on time, on drain or on hang-up: say the body is over
            with contextlib.suppress(OSError):
                send_all(sock, self.pending + self.last)
