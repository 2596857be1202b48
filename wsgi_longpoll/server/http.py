"""HTTP/1.1 connections (RFC 9112) on a gevent ``StreamServer``, parsed with httptools.

httptools wraps llhttp, Node's parser. One greenlet per connection reads, feeds the
parser, and answers the complete requests in the order they came (pipelining); what a
request is answered with is the :class:`Router`'s business (:mod:`.longpoll` answers
the long-poll paths natively, :mod:`.wsgi` bridges every other request to a WSGI app).

The rules kept here: a request line of at most ``max_request_line`` bytes (else 414),
headers of at most ``max_header_bytes`` and ``max_header_count`` (else 400), a body no
larger than the router's limit for its path (else 413), a request line and headers
within ``header_timeout`` of the end of the previous response (else the connection is
closed), a body within ``body_timeout`` of its headers (else 408), and every framing error
llhttp finds (two ``Content-Length`` headers, ``Content-Length`` with
``Transfer-Encoding``, a NUL or other invalid byte in the target, a bad chunk) answered
with 400 and a closed connection, so that no byte after it is taken as a request.

And RFC 9112's rules on what a request must say: an HTTP/1.1 request without ``Host``,
any request with two ``Host`` lines or an invalid one, is answered with 400; a transfer
coding other than ``chunked`` (``Transfer-Encoding: gzip, chunked``) with 501, since the
body is not decoded; both close the connection. (llhttp itself answers a
``Transfer-Encoding`` whose last coding is not ``chunked``: 400.)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import socket
import time
from email.utils import formatdate
from typing import Any, Protocol

import httptools
from gevent import get_hub
from gevent.server import StreamServer

from .._gevent import pause_accepting, raw_socket, read_watcher, send_all
from ..endpoints import JSON_HEADERS
from ..protocol import PUBLISH_BODY_ERROR, error_body

__all__ = ["Connection", "HTTPServer", "Limits", "Request", "Router", "http_date"]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("wsgi_longpoll.access")

_monotonic = time.monotonic
_RECV_SIZE = 65536
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_date_cache: tuple[int, bytes] = (0, b"")

#: RFC 9110's ``Host = uri-host [ ":" port ]`` (an IP literal in brackets, or a name or
#: IPv4 address of unreserved, percent-encoded and sub-delimiter characters).
_HOST = re.compile(rb"(?:\[[0-9A-Za-z:._~!$&'()*+,;=-]*\]|[0-9A-Za-z._~!$&'()*+,;=%-]*)"
                   rb"(?::[0-9]*)?")


#: The value of a ``token`` query parameter (a subscribe token), left out of the access log.
_TOKEN_VALUE = re.compile(rb"([?&]token=)[^&#]*")


def http_date() -> bytes:
    """The current time as an HTTP ``Date`` value, formatted once a second."""
    global _date_cache
    second = int(time.time())
    cached = _date_cache
    if cached[0] != second:
        cached = _date_cache = (second, formatdate(second, usegmt=True).encode("ascii"))
    return cached[1]


class Request:
    """One HTTP request, its body read whole (the router's limit bounds it)."""

    __slots__ = (
        "method", "target", "path", "query", "version", "headers", "body_parts",
        "body_size", "body_limit", "json_errors", "keep_alive", "expect_continue",
        "continue_sent", "headers_done", "started",
    )

    def __init__(self) -> None:
        self.method = b""
        #: The request target as sent, e.g. ``b"/events?timeout=5"``.
        self.target = b""
        self.path = b""
        self.query = b""
        #: ``"1.0"`` or ``"1.1"``.
        self.version = "1.1"
        #: ``(name, value)`` in the order sent, names in lower case.
        self.headers: list[tuple[bytes, bytes]] = []
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.body_limit = 0
        #: Errors about this request are answered with the protocol's JSON (publish).
        self.json_errors = False
        self.keep_alive = True
        self.expect_continue = False
        self.continue_sent = False
        #: When the headers were complete (``time.monotonic``); 0 while they are not.
        self.headers_done = 0.0
        self.started = 0.0

    @property
    def body(self) -> bytes:
        """The whole body."""
        parts = self.body_parts
        if len(parts) == 1:
            return parts[0]
        body = b"".join(parts)
        self.body_parts = [body]
        return body

    def header(self, name: bytes) -> bytes | None:
        """The first value of header *name* (lower case), or ``None``."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Router(Protocol):
    """What answers the requests of a :class:`Connection`."""

    def body_limit(self, path: bytes) -> tuple[int, bool]:
        """The largest body accepted for *path*, and whether errors about a request to it
        are answered with the protocol's JSON error body."""

    def handle(self, connection: Connection, request: Request) -> None:
        """Answer *request* on *connection* (see :meth:`Connection.send_response`)."""


class Limits:
    """The connection limits of an :class:`HTTPServer`.

    :param header_timeout: seconds for a request line and headers (and a keep-alive idle);
        ``None``: no limit.
    :param body_timeout: seconds for a body once its headers are in; ``None``: no limit.
    """

    __slots__ = ("header_timeout", "body_timeout", "max_request_line", "max_header_bytes",
                 "max_header_count")

    def __init__(
        self,
        header_timeout: float | None,
        body_timeout: float | None,
        max_request_line: int = 8192,
        max_header_bytes: int = 65536,
        max_header_count: int = 100,
    ) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_request_line = max_request_line
        self.max_header_bytes = max_header_bytes
        self.max_header_count = max_header_count


class _Reject(Exception):
    """A request answered with an error status, after which the connection closes."""

    def __init__(self, status: str, message: str, json_errors: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.json_errors = json_errors


class Connection:
    """One client connection: parses its requests and hands each to the router in turn."""

    __slots__ = (
        "server", "sock", "address", "parser", "queue", "current", "url_parts",
        "head_size", "header_count", "unparsed", "host", "hosts", "valid_host", "codings",
        "failure", "upgraded", "busy", "keep_alive", "idle_since", "deadline", "expired",
        "__weakref__",
    )

    def __init__(self, server: HTTPServer, sock: socket.socket, address: Any) -> None:
        self.server = server
        self.sock = sock
        self.address = address
        self.parser = httptools.HttpRequestParser(self)
        #: Complete requests not answered yet, oldest first (a list: a deque's first
        #: block is 0.5 KB, per connection).
        self.queue: list[Request] = []
        self.current: Request | None = None
        self.url_parts: list[bytes] = []
        self.head_size = 0
        self.header_count = 0
        self.unparsed = 0
        #: The ``Host`` value of the request being read, and how many it has.
        self.host = b""
        self.hosts = 0
        #: The last ``Host`` value found valid (a client sends the same one each time).
        self.valid_host: bytes | None = None
        #: Its ``Transfer-Encoding`` values, or ``None``.
        self.codings: list[bytes] | None = None
        self.failure: _Reject | None = None
        self.upgraded = False
        #: A request is being read or answered (``stop`` leaves it time to finish).
        self.busy = False
        #: Whether the connection stays open after the response being written.
        self.keep_alive = True
        self.idle_since = _monotonic()
        #: When the read under way must have brought what it waits for (``monotonic``);
        #: 0: no read, or no limit. The server's sweeper cuts the read then.
        self.deadline = 0.0
        #: The sweeper cut the read: the client was too slow.
        self.expired = False

    # -- the parser's callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        request = self.current = Request()
        request.started = _monotonic()
        self.url_parts.clear()
        self.head_size = self.header_count = self.unparsed = 0
        self.hosts = 0
        self.codings = None

    def on_url(self, url: bytes) -> None:
        self.url_parts.append(url)
        self.head_size += len(url)
        self.unparsed = 0
        if self.head_size > self.server.limits.max_request_line:
            raise _Reject("414 Request-URI Too Long", "Request line too long.")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.current
        assert request is not None
        limits = self.server.limits
        self.head_size += len(name) + len(value) + 4
        self.header_count += 1
        self.unparsed = 0
        if self.head_size > limits.max_header_bytes or self.header_count > limits.max_header_count:
            raise _Reject("400 Bad Request", "Request headers too large.")
        name = name.lower()
        request.headers.append((name, value))
        if name == b"host":
            self.host = value
            self.hosts += 1
        elif name == b"transfer-encoding":
            if self.codings is None:
                self.codings = [value]
            else:
                self.codings.append(value)
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise _Reject("417 Expectation Failed", "Unsupported expectation.")
            request.expect_continue = True

    def on_headers_complete(self) -> None:
        request = self.current
        assert request is not None
        parser = self.parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Reject("400 Bad Request", "Unsupported HTTP version.")
        request.version = version
        hosts = self.hosts
        if hosts != 1:
            if hosts:
                raise _Reject("400 Bad Request", "More than one Host header.")
            if version == "1.1":
                raise _Reject("400 Bad Request", "Missing Host header.")
        elif self.host != self.valid_host:
            if _HOST.fullmatch(self.host) is None:
                raise _Reject("400 Bad Request", "Invalid Host header.")
            self.valid_host = self.host
        if self.codings is not None:
            self.check_codings(self.codings)
        request.method = parser.get_method()
        request.keep_alive = parser.should_keep_alive()
        target = request.target = b"".join(self.url_parts)
        if target[:1] == b"/":
            request.path, _, request.query = target.partition(b"?")
        elif target == b"*":
            request.path = target
        else:  # absolute form: http://host/path?query
            url = httptools.parse_url(target)
            request.path = url.path or b"/"
            request.query = url.query or b""
        limit, json_errors = self.server.router.body_limit(request.path)
        request.body_limit = limit
        request.json_errors = json_errors
        length = request.header(b"content-length")
        if length is not None and int(length) > limit:  # llhttp checked it is digits
            raise _Reject("413 Request Entity Too Large",
                          f"Request body too large: the limit is {limit} bytes.", json_errors)
        if request.version == "1.0":
            request.expect_continue = False  # 100 Continue is HTTP/1.1's
        request.headers_done = _monotonic()
        self.busy = True

    @staticmethod
    def check_codings(values: list[bytes]) -> None:
        """Refuse a body with a transfer coding besides ``chunked``: it is not decoded."""
        if len(values) == 1 and values[0].lower() == b"chunked":
            return
        codings = [coding.strip().lower() for value in values for coding in value.split(b",")]
        codings = [coding for coding in codings if coding]  # empty list elements are allowed
        if codings != [b"chunked"]:  # llhttp refused any list that does not end in it
            raise _Reject("501 Not Implemented",
                          "Unsupported transfer coding: only chunked is understood.")

    def on_body(self, body: bytes) -> None:
        request = self.current
        assert request is not None
        request.body_parts.append(body)
        request.body_size += len(body)
        if request.body_size > request.body_limit:
            raise _Reject("413 Request Entity Too Large",
                          f"Request body too large: the limit is {request.body_limit} bytes.",
                          request.json_errors)

    def on_message_complete(self) -> None:
        if self.current is not None:
            self.queue.append(self.current)
            self.current = None

    # -- the loop -----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse *data*; complete requests join the queue, an error is kept for later."""
        current = self.current
        if current is None or not current.headers_done:
            self.unparsed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgraded = True  # no protocol switch is offered: answer, then close
        except httptools.HttpParserError as error:
            cause = error.__context__
            if isinstance(cause, _Reject):
                self.failure = cause
                return
            current = self.current
            json_errors = bool(current is not None and current.headers_done
                               and current.json_errors)
            logger.debug("bad request from %s: %s", self.address, error)
            self.failure = _Reject("400 Bad Request", f"Bad request: {error}", json_errors)
            return
        current = self.current
        if (current is not None and not current.headers_done
                and self.unparsed > self.server.limits.max_header_bytes):
            self.failure = _Reject("400 Bad Request", "Request headers too large.")

    def serve(self) -> None:
        """Read and answer requests until the connection is to close."""
        sock = self.sock
        raw = raw_socket(sock)
        read_event = read_watcher(sock, get_hub().loop)
        wait = get_hub().wait
        server = self.server
        router = server.router
        limits = server.limits
        queue = self.queue
        answered = False
        while True:
            while queue:
                request = queue.pop(0)
                self.busy = answered = True
                router.handle(self, request)
                self.idle_since = _monotonic()
                if not self.keep_alive or server.closing:
                    return
            if self.failure is not None:
                self.send_failure(self.failure)
                return
            if self.upgraded:
                return
            current = self.current
            if current is not None and current.headers_done:
                if current.expect_continue and not current.continue_sent:
                    current.continue_sent = True
                    send_all(sock, b"HTTP/1.1 100 Continue\r\n\r\n")
                timeout = limits.body_timeout
                since = current.headers_done
            else:
                self.busy = False
                if server.closing:
                    return
                timeout = limits.header_timeout
                since = self.idle_since
            if timeout is not None:
                deadline = since + timeout
                if deadline <= _monotonic():
                    self.timed_out(current)
                    return
                self.deadline = deadline  # the server's sweeper enforces it
            try:
                if answered and current is None:
                    # A client sends its next request once it has read the answer: wait
                    # for it, rather than try a read that would fail (the socket's
                    # readiness is level-triggered: nothing already there is missed).
                    wait(read_event)
                while True:
                    try:
                        data = raw.recv(_RECV_SIZE)
                        break
                    except BlockingIOError:
                        wait(read_event)  # gevent's recv would try once more first
            finally:
                self.deadline = 0.0
            answered = False
            if self.expired:
                self.timed_out(self.current)
                return
            if not data:
                current = self.current
                if current is not None and current.headers_done:  # a body cut off
                    self.send_failure(_Reject("400 Bad Request", "Request body cut off.",
                                              current.json_errors))
                return
            self.feed(data)

    def timed_out(self, current: Request | None) -> None:
        if current is not None and current.headers_done:
            self.send_failure(_Reject("408 Request Timeout", "Request body not received in time.",
                                      current.json_errors))
        else:
            logger.debug("closing the connection of %s: no complete request in time",
                         self.address)

    def send_failure(self, reject: _Reject) -> None:
        """Answer with *reject*'s status, then close (where the next request starts is
        unknown)."""
        if reject.json_errors:
            message = PUBLISH_BODY_ERROR if reject.status.startswith("400") else reject.message
            body = error_body(message)
            headers = JSON_HEADERS.raw
        else:
            body = reject.message.encode("utf-8") + b"\n"
            headers = b"Content-Type: text/plain; charset=utf-8\r\n"
        self.keep_alive = False
        head = (b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\nDate: %s\r\nConnection: close\r\n\r\n"
                % (reject.status.encode("ascii"), headers, len(body), http_date()))
        with contextlib.suppress(OSError):
            send_all(self.sock, head + body)
        self.server.log_access(self, None, reject.status, len(body))

    # -- writing ------------------------------------------------------------------------

    def response_head(self, request: Request, status: bytes, headers: bytes,
                      length: int | None) -> bytes:
        """The status line and headers of a response to *request*.

        :param status: e.g. ``b"200 OK"``.
        :param headers: header lines, each ending in CRLF.
        :param length: the ``Content-Length``, or ``None`` to leave it out.
        """
        keep_alive = self.keep_alive = request.keep_alive and not self.server.closing
        if keep_alive:
            connection = b"Connection: keep-alive\r\n" if request.version == "1.0" else b""
        else:
            connection = b"Connection: close\r\n"
        if length is None:
            return b"HTTP/1.1 %s\r\n%sDate: %s\r\n%s\r\n" % (
                status, headers, http_date(), connection)
        return b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\nDate: %s\r\n%s\r\n" % (
            status, headers, length, http_date(), connection)

    def send_response(self, request: Request, status: bytes, headers: bytes,
                      body: bytes) -> None:
        """Send a whole response (no body to HEAD)."""
        head = self.response_head(request, status, headers, len(body))
        send_all(self.sock, head if request.method == b"HEAD" else head + body)
        server = self.server
        if server.access_log:
            server.log_access(self, request, status, len(body))


class HTTPServer(StreamServer):  # type: ignore[misc]
    """A gevent ``StreamServer`` whose connections speak HTTP/1.1 to a :class:`Router`."""

    def __init__(self, listener: Any, router: Router, limits: Limits,
                 *, access_log: bool = False, spawn: Any = "default") -> None:
        # A long accept queue: a burst of connections (thousands of subscribers coming
        # back at once) must not meet dropped SYNs and a second's retransmission.
        backlog = 4096 if isinstance(listener, tuple) else None
        super().__init__(listener, backlog=backlog, spawn=spawn)
        self.router = router
        self.limits = limits
        self.access_log = access_log
        self.closing = False
        self.connections: set[Connection] = set()
        self._sweeper: Any = None

    def handle(self, sock: socket.socket, address: Any) -> None:
        with contextlib.suppress(OSError):  # not TCP
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)  # the sweeper, not a timer per read, enforces the deadlines
        connection = Connection(self, sock, address)
        self.connections.add(connection)
        try:
            connection.serve()
        except (ConnectionError, TimeoutError):
            pass
        except OSError as error:
            logger.debug("connection of %s failed: %s", address, error)
        finally:
            self.connections.discard(connection)
            with contextlib.suppress(OSError):
                sock.close()

    #: Seconds between two log lines about failing accepts (and before accepting again).
    accept_error_interval = 1.0
    _accept_error_logged = 0.0

    def do_read(self) -> Any:
        try:
            return super().do_read()
        except OSError as error:
            if error.errno not in _RESOURCE_ERRNOS:
                raise
            # Out of file descriptors (or memory): not this server's fault, nor fatal. Say
            # so once per interval, without a traceback, and pause accepting meanwhile:
            # the listening socket stays readable, so retrying at once would spin.
            now = _monotonic()
            if now - self._accept_error_logged >= self.accept_error_interval:
                self._accept_error_logged = now
                logger.error("cannot accept connections: %s (raise the open-files limit, "
                             "ulimit -n, or lower max_waiting_subscribers)", error)
            pause_accepting(self, self.accept_error_interval / 10)
            return None

    def start(self) -> None:
        super().start()
        timeouts = [t for t in (self.limits.header_timeout, self.limits.body_timeout) if t]
        if timeouts and self._sweeper is None:
            interval = min(1.0, max(0.05, min(timeouts) / 4))
            self._sweeper = self.loop.timer(interval, interval)
            self._sweeper.start(self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.close()
            self._sweeper = None
        super().close()

    def _sweep(self) -> None:
        """Cut the reads whose deadline has passed (one timer for every connection, not one
        per read): shutting the socket for reading ends the read at once."""
        now = _monotonic()
        for connection in list(self.connections):
            deadline = connection.deadline
            if deadline and deadline <= now:
                connection.deadline = 0.0
                connection.expired = True
                sock = connection.sock
                with contextlib.suppress(OSError):  # the kernel's EOF wakes the reader;
                    raw_socket(sock).shutdown(socket.SHUT_RD)  # gevent's throws

    def do_close(self, sock: Any, *args: Any) -> None:
        with contextlib.suppress(OSError):
            sock.close()

    def close_idle_connections(self) -> None:
        """Close every keep-alive connection that is between requests."""
        for connection in list(self.connections):
            if not connection.busy:
                # shutdown, not close: it wakes the greenlet reading the socket.
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)

    def log_access(self, connection: Connection, request: Request | None,
                   status: bytes | str, length: int | None) -> None:
        """Write the access-log line of a response (when the access log is on)."""
        if not self.access_log:
            return
        if isinstance(status, bytes):
            status = status.decode("latin-1")
        address = connection.address
        client = address[0] if isinstance(address, tuple) else str(address)
        if request is None:
            line, elapsed = "-", 0.0
        else:
            target = request.target
            if b"token=" in target:  # a subscribe token is a credential: not for logs
                target = _TOKEN_VALUE.sub(rb"\1[redacted]", target)
            line = (f"{request.method.decode('latin-1')} {target.decode('latin-1')}"
                    f" HTTP/{request.version}")
            elapsed = _monotonic() - request.started
        access_logger.info('%s - - [%s] "%s" %s %s %.6f', client,
                           time.strftime("%d/%b/%Y %H:%M:%S"), line, status.split(" ", 1)[0],
                           "-" if length is None else length, elapsed)
