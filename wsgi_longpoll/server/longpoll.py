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
from a callback of the server's hub after the publisher has its answer; subscribers
handed the same events share one encoded answer (one response, whatever their HTTP
version and keep-alive), and so do re-polls that find the same events in the buffer.
Only a partial write (a full socket buffer) is left to the connection's greenlet. While
parked, that greenlet waits on the socket, which wakes it for the next request (the
answer already written) or the client's end of file (a hang-up, or a half-close whose
answer is still owed: see :class:`ParkedPoll`), and on a timer for the protocol's
timeout answer.
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

from .._gevent import peek, peer_closed, raw_socket, read_watcher, send_all
from ..backlog import Frame
from ..budget import PARKED_ANSWERS
from ..endpoints import SUBSCRIBE_HEADERS, Answer, Endpoints, Hold, RequestParts, refusal
from ..event import Event
from ..manager import CapacityExceeded, LongpollManager, StorageUnavailable, Subscriber
from ..protocol import events_body, now_ms, timeout_body
from ..sse import KEEP_ALIVE, batch_body
from ..wsgi.middleware import LongpollMiddleware, RequestContext
from .http import Connection, Request, http_date
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
_READABLE, _TIMER, _WAKE, _CHECK, _WRITABLE = 1, 2, 3, 4, 5

#: The most frames one write of a stream's backlog hands the kernel (``IOV_MAX`` is 1024).
_FRAMES_PER_WRITE = 512


class _Encodings:
    """The encodings made last, kept while they are small: a fan-out (or the re-polls of
    a hot channel, which come back together) finds the answer it shares here."""

    __slots__ = ("entries", "size")

    #: Beyond either, the encodings kept are dropped (but the newest).
    max_entries = 64
    max_bytes = 1024 * 1024

    def __init__(self) -> None:
        self.entries: dict[object, Any] = {}
        self.size = 0

    def get(self, key: object) -> Any:
        return self.entries.get(key)

    def put(self, key: object, value: Any, size: int) -> None:
        entries = self.entries
        if len(entries) >= self.max_entries or self.size + size > self.max_bytes:
            entries.clear()
            self.size = 0
        entries[key] = value
        self.size += size


class _Encoded:
    """One encoding of a list of events: a long poll's answer body and the whole responses
    made of it (one per set of header lines, HTTP version and keep-alive), or a stream's
    frames."""

    __slots__ = ("events", "body", "date", "responses", "chunk", "plain")

    def __init__(self, events: list[Event], body: bytes) -> None:
        #: The list encoded (kept, so that its identity stays its own).
        self.events = events
        self.body = body
        #: The ``Date`` of the responses kept.
        self.date = b""
        self.responses: dict[tuple[bytes, str, bool], bytes] = {}
        #: A stream's write of :attr:`body`: as a chunk (HTTP/1.1), and as it is (1.0).
        self.chunk: Frame | None = None
        self.plain: Frame | None = None


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
            self._add_manager(middleware.manager)
            endpoints = self.endpoints = middleware.endpoints
            options = endpoints.options
            self.subscription_path = _path_bytes(options.subscription_path)
            self.publish_path = _path_bytes(options.publish_path)
            self.max_body_size = options.max_body_size
            self._checks = any((endpoints.before_subscription, endpoints.before_publish,
                                endpoints.authorize_subscribe, endpoints.authorize_publish))
        #: The answers encoded last: by the identity of a delivery's list of events, and
        #: by what an answer from the buffer holds (see :meth:`park`).
        self.encodings = _Encodings()
        #: The encoding of the delivery answered last (the list of events it encodes
        #: is a new one for each delivery).
        self.delivered: _Encoded | None = None

    def _add_manager(self, manager: LongpollManager) -> None:
        if manager in self.managers:
            return
        self.managers.add(manager)

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
            self._add_manager(manager)
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
            events = delivery.events
            budget = manager.budget
            if events and not delivery.gaps and request.method != b"HEAD":
                # Re-polls at the same position (a hot channel's subscribers come back
                # together) share one encoding: the same first and last event and count,
                # in the same categories, are the same events.
                key = (hold.categories, events[0].id, events[-1].id, len(events))
                encoded = self.encoded(key, events)
                budget.hold(PARKED_ANSWERS, encoded.body)  # until the reader takes it
                try:
                    send_all(connection.sock, self.response(poll, encoded))
                finally:
                    budget.release(PARKED_ANSWERS, encoded.body)
                connection.server.log_access(connection, request, _OK, len(encoded.body))
                return
            if events:
                body = events_body(events, delivery.gaps)
            else:
                body = timeout_body(now_ms(), delivery.gaps)
            budget.hold(PARKED_ANSWERS, body)  # until the reader takes it
            try:
                connection.send_response(request, _OK, poll.head, body)
            finally:
                budget.release(PARKED_ANSWERS, body)
            return
        try:
            poll.wait(hold.timeout)
        finally:
            if poll.held is not None:  # no delivery once the wait is over: it is final
                manager.budget.release(PARKED_ANSWERS, poll.held)

    def refuse(self, connection: Connection, request: Request,
               error: CapacityExceeded | StorageUnavailable, extra: bytes) -> None:
        """Answer a hold the manager refused (503), and close the connection: at the
        subscriber cap, a refused client that kept its connection open would hold a
        descriptor that ``/healthz`` and every other request need."""
        connection.keep_alive = request.keep_alive = False
        self.send(connection, request, refusal(error, SUBSCRIBE_HEADERS), extra)

    def encoded(self, key: object, events: list[Event]) -> _Encoded:
        """The encoding of *events*, shared by every answer made under *key* (what
        identifies the events)."""
        encodings = self.encodings
        encoded: _Encoded | None = encodings.get(key)
        if encoded is None:
            encoded = _Encoded(events, events_body(events))
            encodings.put(key, encoded, len(encoded.body))
        return encoded

    @staticmethod
    def response(poll: ParkedPoll, encoded: _Encoded, *, dated: bool = True) -> bytes:
        """The whole response of *poll* with *encoded*'s body: made once for every poll
        with the same header lines, HTTP version and keep-alive (``Connection: close``
        and HTTP/1.0 polls share theirs as keep-alive ones do); once a second, for its
        ``Date``, unless not *dated* (the responses of one delivery)."""
        connection, request = poll.connection, poll.request
        keep_alive = request.keep_alive and not connection.server.closing
        if dated:
            date = http_date()
            if encoded.date != date:
                encoded.date = date
                encoded.responses.clear()
        key = (poll.head, request.version, keep_alive)
        response = encoded.responses.get(key)
        if response is None:
            if len(encoded.responses) >= 16:  # heads of their own (session cookies)
                encoded.responses.clear()
            body = encoded.body
            response = encoded.responses[key] = (
                connection.response_head(request, _OK, poll.head, len(body)) + body)
        connection.keep_alive = keep_alive
        return response

    def encode(self, poll: ParkedPoll, events: list[Event]) -> bytes:
        """The whole response of *poll* to *events*, encoded once for every poll that
        gets the same list in one delivery (and no gaps; see :meth:`response`)."""
        if poll.gaps:
            connection = poll.connection
            body = events_body(events, poll.gaps)
            return connection.response_head(poll.request, _OK, poll.head, len(body)) + body
        encoded = self.delivered
        if encoded is None or encoded.events is not events:
            # By the list's identity: the encoding kept holds it, so no other list
            # can have its id meanwhile.
            encoded = self.delivered = self.encoded(id(events), events)
        return self.response(poll, encoded, dated=False)

    def stream_frame(self, events: list[Event], chunked: bool) -> Frame:
        """The write of *events* to a stream, one :class:`~wsgi_longpoll.backlog.Frame`
        for every stream that gets the same list in one delivery."""
        key = ("stream", id(events))  # the encoding kept holds the list (see encode)
        encodings = self.encodings
        encoded: _Encoded | None = encodings.get(key)
        if encoded is None:
            encoded = _Encoded(events, batch_body(events))
            encodings.put(key, encoded, len(encoded.body))
        if chunked:
            if encoded.chunk is None:
                body = encoded.body
                encoded.chunk = Frame(b"%x\r\n%s\r\n" % (len(body), body))
            return encoded.chunk
        if encoded.plain is None:
            encoded.plain = Frame(encoded.body)
        return encoded.plain

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
            stream.offer(Frame(frame(batch_body([], stream.gaps))), first=True)
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
                 "broken", "waiter", "hub", "watching", "deferred", "answer", "held")

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
        #: What is left to write after a partial write (a view of the answer, which
        #: every poll of a delivery may share).
        self.pending: bytes | memoryview = b""
        self.broken = False
        self.waiter: Waiter | None = None
        #: The hub of the connection's greenlet, which delivers to it.
        self.hub: Hub = gevent.get_hub()
        #: Whether the socket wakes the greenlet after the answer (else deliver must).
        self.watching = True
        #: The client shut its side: the greenlet writes the answer (its head is out).
        self.deferred = False
        #: The events to answer with when :attr:`deferred` (``[]``: the timeout answer).
        self.answer: list[Event] | None = None
        #: The answer :attr:`pending` is part of, held in the memory budget (parked
        #: answers) until the poll is done.
        self.held: bytes | None = None

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
            self.pending = memoryview(data)[sent:]  # not a copy: the answer may be shared
            # Held until the greenlet writes it: released when the poll is done (park).
            self.held = data
            self.manager.budget.hold(PARKED_ANSWERS, data)
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
        if waiter is None:
            return  # not waiting yet: it looks at its state before it waits
        if hub.thread_ident == _get_thread_ident():
            hub.loop.run_callback(waiter.switch, _WAKE)
        else:
            hub.loop.run_callback_threadsafe(waiter.switch, _WAKE)

    def wait(self, timeout: float) -> None:
        """Park until answered, timed out, hung up on or released (the greenlet's part)."""
        connection = self.connection
        hub = self.hub
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
        self.waiter = waiter
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
            connection.sock.sendall(pending)  # gevent waits for the socket to drain
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
        budget = self.manager.budget
        budget.hold(PARKED_ANSWERS, body)
        try:
            send_all(sock, b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked else body)
        except OSError:
            return False
        finally:
            budget.release(PARKED_ANSWERS, body)
        connection.server.log_access(connection, request, _OK, len(body))
        return True


class ParkedStream(Subscriber):
    """A Server-Sent Events stream on its connection, written to from the publisher.

    Each delivery is one write of every event published since the last (the manager
    batches what was published while it fanned out), made without blocking, of one
    :class:`~wsgi_longpoll.backlog.Frame` shared by every stream at the same position.
    What the socket does not take waits in the stream's backlog, in order, the frames
    themselves and not copies, for the connection's greenlet, which writes the whole
    backlog in one ``sendmsg`` when the socket drains; it also writes the keep-alive
    comments, ends the stream at its timeout or when the manager drains, and notices a
    hang-up. A stream more than :attr:`max_pending` bytes behind is ended, and so are the
    streams furthest behind while every backlog together holds more than the manager's
    :attr:`~wsgi_longpoll.backlog.StreamBacklog.max_bytes`; their readers reconnect with
    ``Last-Event-ID``.
    """

    __slots__ = ("router", "manager", "connection", "chunked", "frames", "offset", "behind",
                 "started", "ended", "broken", "lock", "waiter", "hub", "backlog")

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
        #: The backlog: what is owed to the reader, oldest first, and how much of the
        #: first frame is written.
        self.frames: list[Frame] = []
        self.offset = 0
        #: The bytes of the backlog not written yet.
        self.behind = 0
        #: Whether the greenlet wrote the stream's head: deliveries may write at once.
        self.started = False
        self.ended = False
        #: Ended with a write cut short (its reader too far behind, a failed socket): no
        #: more is written, not even the end of the body.
        self.broken = False
        self.lock = _allocate_lock()
        self.waiter: Waiter | None = None
        #: The hub of the connection's greenlet, which delivers to it.
        self.hub: Hub = gevent.get_hub()
        self.backlog = manager.stream_backlog

    def frame(self, data: bytes) -> bytes:
        """*data* as one write of this stream's body (a chunk, on HTTP/1.1)."""
        return b"%x\r\n%s\r\n" % (len(data), data) if self.chunked and data else data

    @property
    def last(self) -> bytes:
        """What ends the body: the last chunk, on HTTP/1.1."""
        return b"0\r\n\r\n" if self.chunked else b""

    def deliver(self, events: list[Event]) -> bool:
        self.offer(self.router.stream_frame(events, self.chunked))
        return self.ended

    def release(self) -> None:
        self.ended = True
        self._wake()

    def offer(self, frame: Frame, *, first: bool = False) -> None:
        """Write *frame* after the backlog (before it, *first*, while the greenlet has not
        started), without blocking."""
        data = frame.data
        with self.lock:
            if self.ended:
                return
            sent = 0
            if self.started and not self.frames:
                try:
                    sent = raw_socket(self.connection.sock).send(data)
                except BlockingIOError:
                    pass
                except OSError:
                    self.ended = self.broken = True
                    sent = len(data)
                if sent == len(data):
                    if self.ended:
                        self._wake()
                    return
                self.offset = sent
            if first:
                self.frames.insert(0, frame)
            else:
                self.frames.append(frame)
            self.behind += len(data) - sent
            self.backlog.hold(self, frame)
            too_far = self.behind > self.max_pending
        if too_far:
            logger.warning("ending an event stream whose reader is %d bytes behind",
                           self.behind)
            self.cut()
            return
        self.backlog.enforce()
        self._wake()

    def cut(self) -> None:
        """End the stream now, its backlog unwritten (its reader is too far behind)."""
        with self.lock:
            self.ended = self.broken = True
            frames, self.frames = self.frames, []
            self.offset = self.behind = 0
        self.backlog.release(self, frames, True)
        self._wake()

    def _write_backlog(self, raw: Any) -> bool:
        """Write what the socket takes of the backlog, in one ``sendmsg``; whether it
        took all that was asked (else it is full)."""
        with self.lock:
            frames = self.frames[:_FRAMES_PER_WRITE]
            offset = self.offset
        if not frames:
            return True
        buffers = [memoryview(frame.data) for frame in frames]
        buffers[0] = buffers[0][offset:]
        try:
            sent = raw.sendmsg(buffers)
        except BlockingIOError:
            return False
        written: list[Frame] = []
        with self.lock:
            if self.broken:  # cut meanwhile (from another thread)
                return True
            self.behind -= sent
            sent += self.offset
            for frame in frames:
                if sent < len(frame.data):
                    break
                sent -= len(frame.data)
                written.append(frame)
            del self.frames[:len(written)]
            self.offset = sent
            self.backlog.release(self, written, not self.frames)
        return self.offset == 0 and len(written) == len(frames)

    def _wake(self) -> None:
        waiter, hub = self.waiter, self.hub
        if waiter is None:
            return
        if hub.thread_ident == _get_thread_ident():
            hub.loop.run_callback(waiter.switch, _WAKE)
        else:
            hub.loop.run_callback_threadsafe(waiter.switch, _WAKE)

    def run(self, timeout: float, keepalive: float) -> None:
        """The greenlet's part: write the backlog, keep the stream alive, end it."""
        connection = self.connection
        hub = self.hub
        loop = hub.loop
        waiter = Waiter(hub)
        sock = connection.sock
        raw = raw_socket(sock)
        io = read_watcher(sock, loop)
        io.start(waiter.switch, _READABLE)
        writable = None  # made when the socket is first full
        self.waiter = waiter
        deadline = _monotonic() + timeout
        with self.lock:
            self.started = True
        try:
            while not self.ended:
                full = False
                if self.frames:
                    if self._write_backlog(raw):
                        continue
                    full = True
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    break
                if full:
                    if writable is None:
                        writable = loop.io(raw.fileno(), 2)
                    writable.start(waiter.switch, _WRITABLE)
                timer = loop.timer(remaining if full else min(remaining, keepalive))
                timer.start(waiter.switch, _TIMER)
                try:
                    reason = waiter.get()
                finally:
                    timer.close()
                    if writable is not None:
                        writable.stop()
                waiter.clear()
                if reason == _READABLE:
                    if peer_closed(sock):
                        break
                    io.stop()  # a pipelined request: it will not be answered
                elif reason == _TIMER and not full and _monotonic() < deadline:
                    self.offer(Frame(self.frame(KEEP_ALIVE)))
        except OSError:
            self.broken = True
        finally:
            with self.lock:
                # Ended on time, on drain or on hang-up with a backlog: its end unwritten.
                broken = self.broken or bool(self.frames)
                self.ended = True
                frames, self.frames = self.frames, []
                self.behind = 0
            self.backlog.release(self, frames, True)
            io.stop()
            if writable is not None:
                writable.close()
            self.waiter = None
            self.manager.detach(self)
            connection.keep_alive = False
        if not broken:  # ended on time, on drain or on hang-up: say the body is over
            with contextlib.suppress(OSError):
                send_all(sock, self.last)
