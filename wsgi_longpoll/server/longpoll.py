"""The long-poll paths answered natively: no WSGI environ or ``start_response`` on them.

The validation, limits, status codes and bodies are those of
:class:`~wsgi_longpoll.wsgi.middleware.LongpollMiddleware` (whose settings this reads),
built from :mod:`wsgi_longpoll.protocol`, so the wire is the same byte for byte. Hooks get a
werkzeug ``Request``, built only when a hook is set.

A long poll with nothing to answer yet is a :class:`ParkedPoll`: a
:class:`~wsgi_longpoll.manager.Subscriber` holding its connection. The manager's
:meth:`~ParkedPoll.deliver` writes the answer to the socket at once, without blocking,
from whatever greenlet or thread published; subscribers handed the same events share one
encoded answer. Only a partial write (a full socket buffer) is left to the connection's
greenlet. While parked, that greenlet waits on the socket, which wakes it for the next
request (the answer already written) or a hang-up, and on a timer for the protocol's
timeout answer.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import gevent
from gevent.hub import Waiter
from gevent.monkey import get_original
from werkzeug.wrappers import Request as WerkzeugRequest
from werkzeug.wrappers import Response

from ..errors import LongpollError
from ..event import Event
from ..manager import (
    CapacityExceeded,
    LongpollManager,
    ManagerClosed,
    StorageUnavailable,
    Subscriber,
)
from ..protocol import (
    PUBLISH_METHOD_ERROR,
    PUBLISH_SUCCESS_BODY,
    SUBSCRIBE_METHOD_ERROR,
    ProtocolError,
    error_body,
    events_body,
    now_ms,
    parse_idempotency_key,
    parse_publish_body,
    parse_subscribe_query,
    timeout_body,
)
from ..sse import (
    KEEP_ALIVE,
    LAST_EVENT_ID_ERROR,
    accepts_event_stream,
    batch_body,
    parse_last_event_id,
    stream_start,
)
from ..wsgi.answers import HOOK_FORBIDDEN_ERROR, RETRY_AFTER_SECONDS, refusal
from ..wsgi.middleware import Hook, LongpollMiddleware
from .http import Connection, Request, send_all
from .wsgi import WSGIBridge, make_environ

if TYPE_CHECKING:
    from gevent.hub import Hub

__all__ = ["LongpollRouter", "ParkedPoll", "ParkedStream"]

logger = logging.getLogger(__name__)

_JSON = b"Content-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n"
_SUBSCRIBE = (_JSON + b"Cache-Control: no-cache, no-store, must-revalidate\r\n"
              b"Pragma: no-cache\r\nExpires: 0\r\n")
_RETRY = b"Retry-After: %s\r\n" % RETRY_AFTER_SECONDS.encode("ascii")
_OK = b"200 OK"
_STREAM = (b"Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
           b"X-Accel-Buffering: no\r\nX-Content-Type-Options: nosniff\r\n")
_FORBIDDEN_BODY = error_body(HOOK_FORBIDDEN_ERROR)

# The claim of an answer: deliver (any thread, the manager's lock held), release (the
# hub) and the timeout (the connection's greenlet) race to answer; one wins.
_allocate_lock = get_original("_thread", "allocate_lock")
_claim_lock = _allocate_lock()
_monotonic = get_original("time", "monotonic")
_get_thread_ident = get_original("_thread", "get_ident")

#: Why a parked connection's greenlet woke.
_READABLE, _TIMER, _WAKE = 1, 2, 3


def _path_bytes(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.encode("latin-1")  # PATH_INFO is the raw path decoded as latin-1
    except UnicodeEncodeError:
        return path.encode("utf-8")


class LongpollRouter:
    """Routes a connection's requests: the middleware's long-poll paths natively, every
    other path to the WSGI application through the bridge.

    :param middleware: the long-poll settings (paths, hooks, limits) and manager.
    :param bridge: the bridge to the application for every other path.
    :param max_request_body_size: the largest body of a request to the application.
    :param native: answer the long-poll paths here; ``False`` sends them through the
        bridge too (to the middleware in the application), for a middleware such as CORS
        that must see their answers.
    """

    def __init__(self, middleware: LongpollMiddleware, bridge: WSGIBridge,
                 max_request_body_size: int, *, native: bool = True) -> None:
        self.manager: LongpollManager = middleware.manager
        self.middleware = middleware
        self.bridge = bridge
        self.subscription_path = _path_bytes(middleware.subscription_path)
        self.publish_path = _path_bytes(middleware.publish_path)
        self.native = native
        self.max_body_size = middleware.max_body_size
        self.max_request_body_size = max_request_body_size
        #: The last answer encoded for a delivery: ``(events, date, response)``.
        self.answer_cache: tuple[Any, bytes, bytes] = (None, b"", b"")
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
        path = self._route(request.path)
        if not self.native:
            self.bridge.handle(connection, request)
            return
        if path == self.subscription_path and self._native_subscribe(request):
            handler = self.stream if _wants_stream(request) else self.subscribe
        elif path == self.publish_path and self.middleware.authorize_publish is None:
            handler = self.publish
        else:  # the application, or what only the middleware does (see below)
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

    def _native_subscribe(self, request: Request) -> bool:
        """Whether this subscription is answered here, the same as the middleware would.

        The middleware answers, through the bridge: ``authorize_subscribe``, and a
        subscribe hook on a query naming more than one ``category`` (it runs the hook once
        per category, on a rewritten query).
        """
        middleware = self.middleware
        if middleware.authorize_subscribe is not None:
            return False
        if middleware.before_subscription is not None:
            query = request.query
            if b"categories" in query or query.count(b"category") > 1:
                return False
        return True

    # -- hooks --------------------------------------------------------------------------

    def _rejected(self, hook: Hook | None, connection: Connection, request: Request,
                  headers: bytes) -> bool:
        """Run *hook*; whether it rejected the request (and the rejection was sent)."""
        if hook is None:
            return False
        environ = make_environ(connection, request, self.bridge.base_environ)
        verdict = hook(WerkzeugRequest(environ))
        if verdict is True:
            return False
        if isinstance(verdict, Response):
            self.bridge.run(connection, request, environ, verdict)
            return True
        if verdict is False:
            connection.send_response(request, b"403 Forbidden", headers, _FORBIDDEN_BODY)
            return True
        raise TypeError(f"a hook must return True, False or a Response, not {verdict!r}")

    # -- subscribe ----------------------------------------------------------------------

    def _refused_subscription(self, connection: Connection, request: Request) -> bool:
        """Run the subscribe hook and check the method; whether the refusal was sent."""
        if self._rejected(self.middleware.before_subscription, connection, request,
                          _SUBSCRIBE):
            return True
        if request.method != b"GET":
            connection.send_response(request, b"405 Method Not Allowed",
                                     _SUBSCRIBE + b"Allow: GET\r\n",
                                     error_body(SUBSCRIBE_METHOD_ERROR))
            return True
        return False

    def subscribe(self, connection: Connection, request: Request) -> None:
        middleware = self.middleware
        if self._refused_subscription(connection, request):
            return
        manager = self.manager
        try:
            query = parse_subscribe_query(request.query.decode("latin-1"),
                                          manager.max_longpoll_timeout_seconds,
                                          middleware.max_categories_per_request)
        except ProtocolError as error:
            connection.send_response(request, _OK, _SUBSCRIBE, error_body(str(error)))
            return
        poll = ParkedPoll(self, connection, request)
        try:
            delivery = manager.attach(poll, query.categories, query.since_time, query.last_id)
        except (CapacityExceeded, StorageUnavailable) as error:
            _refuse(connection, request, _SUBSCRIBE, error)
            return
        if delivery is not None:
            if delivery.events:
                body = events_body(delivery.events, delivery.gaps)
            else:
                body = timeout_body(now_ms(), delivery.gaps)
            connection.send_response(request, _OK, _SUBSCRIBE, body)
            return
        poll.wait(query.timeout)

    def encode(self, poll: ParkedPoll, events: list[Event]) -> bytes:
        """The whole response of *poll* to *events*, encoded once for every poll that
        gets the same list in one delivery (and has no gaps to report)."""
        connection, request = poll.connection, poll.request
        if poll.gaps or request.version != "1.1" or not request.keep_alive or \
                connection.server.closing:
            body = events_body(events, poll.gaps)
            return connection.response_head(request, _OK, _SUBSCRIBE, len(body)) + body
        cached_events, date, response = self.answer_cache
        if cached_events is events:
            connection.keep_alive = True
            return response
        body = events_body(events)
        response = connection.response_head(request, _OK, _SUBSCRIBE, len(body)) + body
        self.answer_cache = (events, date, response)
        return response

    # -- Server-Sent Events -------------------------------------------------------------

    def stream(self, connection: Connection, request: Request) -> None:
        """A subscription answered as a stream of Server-Sent Events, as the middleware
        answers it (see :mod:`wsgi_longpoll.sse`), written to from the publisher."""
        middleware = self.middleware
        if self._refused_subscription(connection, request):
            return
        max_timeout = self.manager.max_longpoll_timeout_seconds
        try:
            query = parse_subscribe_query(request.query.decode("latin-1"), max_timeout,
                                          middleware.max_categories_per_request,
                                          default_timeout=max_timeout)
            since_time, last_id = query.since_time, query.last_id
            header = request.header(b"last-event-id")
            if header:
                since_time, last_id = parse_last_event_id(header.decode("latin-1"))
        except ProtocolError as error:
            status = b"400 Bad Request" if error.args[0] == LAST_EVENT_ID_ERROR else _OK
            connection.send_response(request, status, _SUBSCRIBE, error_body(str(error)))
            return
        if since_time is None:
            since_time = now_ms() - 1  # every event of this millisecond on
        stream = ParkedStream(self, connection, request)
        start = stream_start(middleware.sse_retry_ms, since_time, last_id)
        try:
            delivery = self.manager.attach(stream, query.categories, since_time, last_id)
        except (CapacityExceeded, StorageUnavailable) as error:
            _refuse(connection, request, _SUBSCRIBE, error)
            return
        connection.keep_alive = request.keep_alive = False  # the stream ends with the socket
        frame = stream.frame
        head = connection.response_head(
            request, _OK, _STREAM + (b"Transfer-Encoding: chunked\r\n" if stream.chunked else b""),
            None,
        )
        try:
            send_all(connection.sock, head + frame(start))
            # Whatever is buffered after the cursor comes first, a batch at a time, until
            # the stream waits for what is published next (or the server drains).
            while delivery is not None and delivery.events:
                send_all(connection.sock, frame(batch_body(delivery.events, delivery.gaps)))
                last = delivery.events[-1]
                delivery = self.manager.attach(stream, query.categories, last.timestamp,
                                               last.id)
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
        stream.run(query.timeout, middleware.sse_keepalive_seconds)

    # -- publish ------------------------------------------------------------------------

    def publish(self, connection: Connection, request: Request) -> None:
        post = request.method == b"POST"
        body = request.body if post else b""
        if self._rejected(self.middleware.before_publish, connection, request, _JSON):
            return
        if not post:
            connection.send_response(request, b"405 Method Not Allowed",
                                     _JSON + b"Allow: POST\r\n", error_body(PUBLISH_METHOD_ERROR))
            return
        try:
            document = parse_publish_body(body)
            raw_key = request.header(b"idempotency-key")
            key = parse_idempotency_key(None if raw_key is None else raw_key.decode("latin-1"))
            self.manager.publish(document.category, document.data, idempotency_key=key)
        except ProtocolError as error:
            connection.send_response(request, b"400 Bad Request", _JSON, error_body(str(error)))
        except (ManagerClosed, CapacityExceeded, StorageUnavailable) as error:
            _refuse(connection, request, _JSON, error)
        else:
            connection.send_response(request, _OK, _JSON, PUBLISH_SUCCESS_BODY)


def _refuse(
    connection: Connection, request: Request, headers: bytes, error: LongpollError
) -> None:
    """Answer the manager's refusal *error* as the WSGI layer does (:func:`refusal`)."""
    answer = refusal(error)
    if answer.retry_after:
        headers += _RETRY
    connection.send_response(request, answer.status.encode("ascii"), headers,
                             error_body(answer.message))


def _peer_closed(sock: Any) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK) == b"")
    except BlockingIOError:
        return False
    except OSError:
        return True


class ParkedPoll(Subscriber):
    """A long poll waiting on its connection; answered straight to the socket."""

    __slots__ = ("router", "connection", "request", "answered", "pending", "broken",
                 "waiter", "hub", "watching")

    def __init__(self, router: LongpollRouter, connection: Connection, request: Request) -> None:
        super().__init__()
        self.router = router
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

    def _claim(self) -> bool:
        with _claim_lock:
            if self.answered:
                return False
            self.answered = True
            return True

    def deliver(self, events: list[Event]) -> bool:
        if self._claim():
            self._write(self.router.encode(self, events))
        return True

    def release(self) -> None:
        if self._claim():
            request = self.request
            body = timeout_body(now_ms(), self.gaps)
            self._write(self.connection.response_head(request, _OK, _SUBSCRIBE, len(body)) + body)
        self._wake()

    def _write(self, data: bytes) -> None:
        """Write *data* without blocking; leave the rest (if any) to the greenlet."""
        sock = self.connection.sock
        raw = getattr(sock, "_sock", sock)
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
        timer = loop.timer(max(timeout, 0.0))
        timer.start(waiter.switch, _TIMER)
        sock = connection.sock
        # The socket's own read watcher, idle while the greenlet is parked here.
        io = getattr(sock, "_read_event", None) or loop.io(sock.fileno(), 1)
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
                    if _peer_closed(getattr(connection.sock, "_sock", connection.sock)):
                        hung_up = True
                        break
                    io.stop()  # a pipelined request: answered after this one
                    self.watching = False
                    continue
                if reason == _WAKE and not (self.broken or self.pending or self.answered):
                    continue
                break
        finally:  # also when the wait is cancelled (the socket shut from elsewhere)
            timer.close()
            io.stop()
            self.waiter = None
            self.router.manager.detach(self)
        if hung_up:
            connection.keep_alive = False
            self._claim()
            return
        request = self.request
        if self._claim():  # timed out
            body = timeout_body(now_ms(), self.gaps)
            connection.send_response(request, _OK, _SUBSCRIBE, body)
            return
        if self.broken:
            connection.keep_alive = False
            return
        if self.pending:
            pending, self.pending = self.pending, b""
            send_all(connection.sock, pending)
        connection.keep_alive = request.keep_alive and not connection.server.closing
        connection.server.log_access(connection, request, _OK, None)


def _wants_stream(request: Request) -> bool:
    accept = request.header(b"accept")
    return accept is not None and accepts_event_stream(accept.decode("latin-1"))


class ParkedStream(Subscriber):
    """A Server-Sent Events stream on its connection, written to from the publisher.

    Each delivery is written without blocking (one encoding for every stream that gets
    the same events); what the socket does not take waits in :attr:`pending`, in order,
    for the connection's greenlet, which also writes the keep-alive comments, ends the
    stream at its timeout or when the manager drains, and notices a hang-up.
    """

    __slots__ = ("router", "connection", "chunked", "pending", "flushing", "ended", "lock",
                 "waiter", "hub")

    #: The most a slow reader may leave unread before its stream is ended.
    max_pending = 8 * 1024 * 1024

    def __init__(self, router: LongpollRouter, connection: Connection, request: Request) -> None:
        super().__init__()
        self.router = router
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
                    sent = getattr(sock, "_sock", sock).send(data)
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
        io = getattr(sock, "_read_event", None) or loop.io(sock.fileno(), 1)
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
                    if _peer_closed(getattr(sock, "_sock", sock)):
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
            self.router.manager.detach(self)
            connection.keep_alive = False
        if not broken:  # ended on time, on drain or on hang-up: say the body is over
            with contextlib.suppress(OSError):
                send_all(sock, self.pending + self.last)
