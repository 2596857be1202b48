"""A small WSGI bridge (PEP 3333) from :class:`~.http.Connection` to any WSGI application.

Every request the long-poll paths do not take comes here: the user's application, the
demo, static files, statistics, health, CORS preflights. The response streams as the
application yields it: with its own ``Content-Length``; else one known body gets one; else
HTTP/1.1 chunked encoding (so Server-Sent Events arrive unbuffered); else (HTTP/1.0) the
connection closes after the body. HEAD is answered without a body.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from .._gevent import send_all
from ..endpoints import HOLD_KEY, Hold
from .http import Connection, Request

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

    from ..manager import LongpollManager

    #: Parks a hold: ``park(connection, request, manager, hold, extra_header_lines)``.
    Park = Callable[[Connection, Request, LongpollManager, Hold, bytes], None]
    #: What an application held: its manager, the hold, the header lines to send with it.
    Held = tuple[LongpollManager, Hold, bytes]

__all__ = ["WSGIBridge", "make_environ"]

logger = logging.getLogger(__name__)

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType]
_NO_BODY_STATUSES = (b"1", b"204", b"304")
#: The headers of an application's answer to a hold that the parked answer sets itself.
_HOLD_OWN_HEADERS = frozenset({
    "content-type", "content-length", "cache-control", "pragma", "expires",
    "x-content-type-options", "x-accel-buffering", "transfer-encoding", "date", "connection",
})
_INTERNAL_ERROR = b"Internal Server Error\n"


def make_environ(connection: Connection, request: Request,
                 base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The WSGI environ of *request*; its ``wsgi.input`` can be read again (a
    :class:`io.BytesIO` of the whole body)."""
    server = connection.server
    host, port = server.server_host, server.server_port
    address = connection.address
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method.decode("latin-1"),
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(request.path).decode("latin-1"),
        "QUERY_STRING": request.query.decode("latin-1"),
        "SERVER_NAME": host or "localhost",
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": "HTTP/" + request.version,
        "REMOTE_ADDR": address[0] if isinstance(address, tuple) else "",
        "REMOTE_PORT": str(address[1]) if isinstance(address, tuple) else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi_longpoll.connection": connection.sock,
    }
    if base:
        environ.update(base)
    for name, value in request.headers:
        key = name.decode("latin-1").upper()
        if "_" in key:  # HTTP_X_Y could not be told from X-Y: left out, as nginx does
            continue
        key = key.replace("-", "_")
        text = value.decode("latin-1")
        if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
            environ[key] = text
            continue
        key = "HTTP_" + key
        if key in environ:
            environ[key] += "," + text
        else:
            environ[key] = text
    if "CONTENT_LENGTH" not in environ and request.body_size:
        environ["CONTENT_LENGTH"] = str(request.body_size)
    return environ


class _Response:
    """The state of one response: what ``start_response`` set, what has been sent."""

    __slots__ = ("status", "headers", "sent", "chunked", "length", "no_body", "written",
                 "held")

    def __init__(self) -> None:
        #: What the application asked the server to hold (see :data:`HOLD_KEY`), and
        #: whether its answer stood for that hold (a 200 with no body).
        self.held: tuple[LongpollManager, Hold] | None = None
        self.status: bytes | None = None
        self.headers: list[tuple[str, str]] = []
        self.sent = False
        self.chunked = False
        self.length: int | None = None
        self.no_body = False
        self.written = 0


class WSGIBridge:
    """Answers requests on a connection with a WSGI application.

    With :attr:`park` set, each environ offers the application to hold a subscriber
    (:data:`~wsgi_longpoll.endpoints.HOLD_KEY`): an answer of ``200`` with no body then
    stands for the hold, and its headers go with the parked answer.

    :param app: the application.
    :param base_environ: keys added to every environ (e.g. gunicorn's).
    """

    def __init__(self, app: WSGIApplication, base_environ: dict[str, Any] | None = None) -> None:
        self.app = app
        self.base_environ = base_environ
        #: What parks a hold (the router's); ``None``: the application waits itself.
        self.park: Park | None = None

    def handle(self, connection: Connection, request: Request) -> None:
        """Run the application for *request* and stream its answer, or park the
        subscriber it held (once everything of the application's call is freed: a parked
        poll keeps none of it)."""
        held = self.run(connection, request,
                        make_environ(connection, request, self.base_environ), self.app)
        if held is not None and self.park is not None:
            self.park(connection, request, *held)

    def run(self, connection: Connection, request: Request, environ: WSGIEnvironment,
            app: Callable[..., Iterable[bytes]]) -> Held | None:
        """Run *app* (a WSGI application, or a werkzeug response) with *environ*.

        :returns: what the application held, to park: its manager, the hold and the
            header lines of its answer that go with it; ``None`` when it was answered.
        """
        response = _Response()
        sock = connection.sock
        head_request = request.method == b"HEAD"
        held: list[tuple[LongpollManager, Hold]] = []
        if self.park is not None:
            environ[HOLD_KEY] = lambda manager, hold: held.append((manager, hold))

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: _ExcInfo | None = None) -> Callable[[bytes], None]:
            if exc_info is not None:
                try:
                    if response.sent:
                        raise exc_info[1].with_traceback(exc_info[2])
                finally:
                    exc_info = None  # no reference cycle
            elif response.status is not None:
                raise AssertionError("start_response called twice without exc_info")
            response.status = status.encode("latin-1")
            response.headers = headers
            return write

        def send_head(first: bytes, final: bool) -> None:
            status = response.status
            if status is None:
                raise AssertionError("the application did not call start_response")
            if held and not first and status.startswith(b"200"):
                response.held = held[-1]  # the parked answer is sent instead
                response.sent = response.no_body = True
                return
            lines = []
            length = None
            close = False
            for name, value in response.headers:
                lower = name.lower()
                if lower == "content-length":
                    length = int(value)
                    continue
                if lower == "connection":
                    close = close or value.lower() == "close"
                    continue
                if lower == "transfer-encoding" or lower == "date":
                    continue
                lines.append(f"{name}: {value}\r\n")
            no_body = status.startswith(_NO_BODY_STATUSES)
            if no_body:
                length = None
            elif length is None and final:
                length = len(first)
            elif length is None:
                if request.version == "1.1":
                    response.chunked = True
                    lines.append("Transfer-Encoding: chunked\r\n")
                else:
                    close = True
            if close:
                request.keep_alive = False
            response.no_body = no_body or head_request
            response.length = length
            head = connection.response_head(
                request, status, "".join(lines).encode("latin-1"), length)
            response.sent = True
            if not first or response.no_body:
                send_all(sock, head)
            else:
                send_all(sock, head + frame(first))
                response.written += len(first)

        def frame(data: bytes) -> bytes:
            if response.chunked:
                return b"%x\r\n%s\r\n" % (len(data), data)
            return data

        def write(data: bytes) -> None:
            if not response.sent:
                send_head(data, False)
                return
            if data and not response.no_body:
                send_all(sock, frame(data))
                response.written += len(data)

        try:
            result = app(environ, start_response)
        except Exception:
            logger.exception("the application failed on %s %s", environ["REQUEST_METHOD"],
                             environ["PATH_INFO"])
            self.internal_error(connection, request, response)
            return None
        try:
            if isinstance(result, (list, tuple)) and len(result) == 1 and not response.sent:
                send_head(bytes(result[0]), True)
            else:
                for data in result:
                    if data:
                        write(data)
                if not response.sent:
                    send_head(b"", True)
                elif response.chunked and not response.no_body:
                    send_all(sock, b"0\r\n\r\n")
        except OSError:
            connection.keep_alive = False
            raise
        except Exception:
            logger.exception("the application failed on %s %s", environ["REQUEST_METHOD"],
                             environ["PATH_INFO"])
            self.internal_error(connection, request, response)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if response.held is not None:
            manager, hold = response.held
            extra = "".join(f"{name}: {value}\r\n" for name, value in response.headers
                            if name.lower() not in _HOLD_OWN_HEADERS)
            return manager, hold, extra.encode("latin-1")
        if response.length is not None and response.written != response.length \
                and not response.no_body:
            connection.keep_alive = False  # the client cannot tell where the next one starts
        connection.server.log_access(connection, request, response.status or b"500",
                                     response.written)
        return None

    @staticmethod
    def internal_error(connection: Connection, request: Request, response: _Response) -> None:
        """Answer 500 if nothing was sent yet; close the connection either way."""
        request.keep_alive = False
        connection.keep_alive = False
        if not response.sent:
            connection.send_response(
                request, b"500 Internal Server Error",
                b"Content-Type: text/plain; charset=utf-8\r\n", _INTERNAL_ERROR)
