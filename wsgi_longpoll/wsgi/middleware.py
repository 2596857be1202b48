"""WSGI middleware that answers the long-poll subscription and publish paths.

Every other request goes to the wrapped application untouched. The answers are
golongpoll's, byte for byte (see PROTOCOL.md). A subscription that asks for
``text/event-stream`` gets a stream of Server-Sent Events on the same cursor instead
(see :mod:`wsgi_longpoll.sse`).
"""

from __future__ import annotations

import io
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode

from gevent.monkey import is_module_patched
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.middleware.shared_data import SharedDataMiddleware
from werkzeug.wrappers import Request

from .. import multiprocess
from ..event import Event, Gap
from ..manager import (
    CapacityExceeded,
    Delivery,
    LongpollManager,
    ManagerClosed,
    StorageUnavailable,
)
from ..protocol import (
    PUBLISH_BODY_ERROR,
    PUBLISH_METHOD_ERROR,
    PUBLISH_SUCCESS_BODY,
    SUBSCRIBE_METHOD_ERROR,
    ProtocolError,
    SubscribeQuery,
    events_body,
    now_ms,
    parse_idempotency_key,
    parse_publish_body,
    parse_subscribe_query,
    timeout_body,
)
from ..sse import (
    KEEP_ALIVE,
    accepts_event_stream,
    batch_body,
    parse_last_event_id,
    stream_start,
)
from .answers import (
    CATEGORY_FORBIDDEN_ERROR,
    JSON_HEADERS,
    Hook,
    for_method,
    json_error,
    not_found,
    refuse,
    respond,
    run_hook,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["Authorize", "Hook", "LongpollMiddleware"]

logger = logging.getLogger(__name__)


#: A per-category check: ``(request, category) -> bool``; ``False`` rejects with 403.
Authorize = Callable[[Request, str], bool]

_JSON_HEADERS = list(JSON_HEADERS)
_SUBSCRIBE_HEADERS = [
    *JSON_HEADERS,
    ("Cache-Control", "no-cache, no-store, must-revalidate"),
    ("Pragma", "no-cache"),
    ("Expires", "0"),
]
_STREAM_HEADERS = [
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),  # nginx: pass each write on at once
    ("X-Content-Type-Options", "nosniff"),
]
#: Where a server puts the client's socket, so that a hang-up ends the wait at once.
CONNECTION_ENVIRON_KEYS = ("wsgi_longpoll.connection", "gunicorn.socket")

_THREADED_SERVER_ERROR = (
    "wsgi_longpoll needs a gevent server (gevent's WSGIServer, gunicorn -k gevent, or a "
    "process monkey-patched by gevent); this one runs requests in threads."
)


class LongpollMiddleware:
    """Answers long-poll subscriptions and publishes for a :class:`LongpollManager`.

    Requests to *subscription_path* and *publish_path* are answered here; all others
    go to *app*. Long polls wait on gevent, so serve it with a gevent server.

    :param app: the WSGI application to wrap (Flask's ``app.wsgi_app``, Django's
        ``get_wsgi_application()``).
    :param manager: the manager that holds the events.
    :param subscription_path: the ``PATH_INFO`` answered as subscribe (GET); ``None``
        turns it off.
    :param publish_path: the ``PATH_INFO`` answered as publish (POST); ``None`` turns it
        off, leaving publishing to code that calls :meth:`LongpollManager.publish`.
    :param before_subscription: a :data:`Hook` run before each subscribe request. When
        the request names several categories (the ``categories`` extension), the hook is
        run once for each, every time on a request whose query string names that one
        category alone as ``category`` (the other parameters kept), so that a hook that
        checks ``request.args.get("category")`` checks every category served; all must
        pass.
    :param before_publish: a :data:`Hook` run before each publish request; it may read
        the body, which the publish still sees.
    :param authorize_subscribe: an :data:`Authorize` called with the request and each
        category a subscribe names, after *before_subscription*; any ``False``: 403.
    :param authorize_publish: an :data:`Authorize` called with the request and the
        category of a valid publish body, after *before_publish*; ``False``: 403.
    :param max_body_size: the largest publish body accepted, in bytes (larger: 413).
    :param max_categories_per_request: how many categories one subscribe request may
        name with the ``categories`` extension.
    :param client_script_path: serve the browser client, an ES module, at this path (e.g.
        ``"/longpoll.js"``) and its plain-script form as ``longpoll.global.js`` in the same
        directory, to GET and HEAD, with ``ETag`` and an hour's ``Cache-Control``; ``None``
        serves neither.
    :param sse_keepalive_seconds: how long a Server-Sent Events stream may stay silent
        before it gets a ``: keep-alive`` comment, so that proxies keep it open.
    :param sse_retry_ms: the ``retry:`` field that opens each stream: how long a browser
        waits before it reconnects once the stream ends.
    """

    #: The default ``max_body_size``: 1 MiB.
    default_max_body_size = 1024 * 1024
    #: The default ``max_categories_per_request``.
    default_max_categories_per_request = 16
    #: The default ``sse_keepalive_seconds``.
    default_sse_keepalive_seconds = 15.0
    #: The default ``sse_retry_ms``.
    default_sse_retry_ms = 2000

    def __init__(
        self,
        app: WSGIApplication,
        manager: LongpollManager,
        subscription_path: str | None = "/events",
        publish_path: str | None = "/publish",
        *,
        before_subscription: Hook | None = None,
        before_publish: Hook | None = None,
        max_body_size: int = default_max_body_size,
        max_categories_per_request: int = default_max_categories_per_request,
        client_script_path: str | None = None,
        authorize_subscribe: Authorize | None = None,
        authorize_publish: Authorize | None = None,
        sse_keepalive_seconds: float = default_sse_keepalive_seconds,
        sse_retry_ms: int = default_sse_retry_ms,
    ) -> None:
        if subscription_path is not None and subscription_path == publish_path:
            raise ValueError("subscription_path and publish_path must differ")
        if max_body_size < 1:
            raise ValueError("max_body_size must be at least 1")
        if max_categories_per_request < 1:
            raise ValueError("max_categories_per_request must be at least 1")
        if not sse_keepalive_seconds > 0:
            raise ValueError("sse_keepalive_seconds must be more than 0")
        if sse_retry_ms < 0:
            raise ValueError("sse_retry_ms must be 0 or more")
        self.app = app
        self.manager = manager
        self.subscription_path = subscription_path
        self.publish_path = publish_path
        self.before_subscription = before_subscription
        self.before_publish = before_publish
        self.authorize_subscribe = authorize_subscribe
        self.authorize_publish = authorize_publish
        self._multiprocess_checked = False
        self.max_body_size = max_body_size
        self.max_categories_per_request = max_categories_per_request
        self.client_script_path = client_script_path
        self.sse_keepalive_seconds = sse_keepalive_seconds
        self.sse_retry_ms = sse_retry_ms
        self._client_scripts: dict[str, str] = {}
        if client_script_path is not None:
            self._client_scripts = _client_script_files(client_script_path)
            if {subscription_path, publish_path} & set(self._client_scripts):
                raise ValueError("client_script_path must differ from the long-poll paths")
            self._client_script_app = SharedDataMiddleware(
                not_found, {"/": ("wsgi_longpoll", "static")}, cache_timeout=3600
            )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == self.subscription_path:
            headers = _SUBSCRIBE_HEADERS
            handler = self._subscribe
        elif path == self.publish_path:
            headers = _JSON_HEADERS
            handler = self._publish
        elif path in self._client_scripts:
            if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
                return MethodNotAllowed(["GET", "HEAD"])(environ, start_response)
            file_environ = {**environ, "PATH_INFO": "/" + self._client_scripts[path]}
            return self._client_script_app(file_environ, start_response)
        else:
            return self.app(environ, start_response)
        if environ.get("wsgi.multithread") and not is_module_patched("threading"):
            logger.error(
                "refusing %s: the server is multi-threaded and gevent is not patched in. %s",
                path,
                _THREADED_SERVER_ERROR,
            )
            return json_error(start_response, "500 Internal Server Error",
                              _THREADED_SERVER_ERROR, headers)
        refused = self._check_multiprocess(environ)
        if refused is not None:
            return json_error(start_response, "500 Internal Server Error", refused, headers)
        return for_method(environ, handler(environ, start_response))

    def _check_multiprocess(self, environ: WSGIEnvironment) -> str | None:
        """Why the long-poll paths are refused: several processes (``wsgi.multiprocess``)
        on an in-memory engine (see :mod:`wsgi_longpoll.multiprocess`), or ``None``.

        Decided, and logged (to gunicorn's error log too under gunicorn), on the first
        request; every later one gets the same answer.
        """
        if not self._multiprocess_checked:
            self._multiprocess_checked = True
            self._multiprocess_refusal: str | None = None
            if environ.get("wsgi.multiprocess"):
                software = str(environ.get("SERVER_SOFTWARE") or "the server")
                log = logging.getLogger("gunicorn.error") if "gunicorn" in software else None
                self._multiprocess_refusal = multiprocess.refusal(
                    [self.manager], f"{software} (wsgi.multiprocess)", log)
        return self._multiprocess_refusal

    def _run_hook_per_category(
        self, environ: WSGIEnvironment, start_response: StartResponse,
        categories: Sequence[str],
    ) -> Iterable[bytes] | None:
        """Run the subscribe hook once per category, each time on a request naming it alone.

        A hook written for golongpoll's one ``category`` then sees every category the
        ``categories`` extension adds; the first rejection is sent. A query that names
        one category once, as ``category``, is given to the hook as it came.
        """
        if self.before_subscription is None:
            return None
        pairs = parse_qsl(
            environ.get("QUERY_STRING", ""), keep_blank_values=True, errors="surrogateescape"
        )
        names = [name for name, _ in pairs if name in ("category", "categories")]
        if names == ["category"]:
            return run_hook(self.before_subscription, environ, start_response, _SUBSCRIBE_HEADERS)
        others = [(name, value) for name, value in pairs if name not in ("category", "categories")]
        for category in categories:
            query = urlencode(
                [("category", category), *others], quote_via=_quote_surrogates
            )
            rejection = run_hook(
                self.before_subscription, {**environ, "QUERY_STRING": query},
                start_response, _SUBSCRIBE_HEADERS,
            )
            if rejection is not None:
                return rejection
        return None

    def _subscribe(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        stream = accepts_event_stream(environ.get("HTTP_ACCEPT", ""))
        max_timeout = self.manager.max_longpoll_timeout_seconds
        query = None
        if environ.get("REQUEST_METHOD") == "GET":
            try:
                query = parse_subscribe_query(
                    environ.get("QUERY_STRING", ""),
                    max_timeout,
                    self.max_categories_per_request,
                    default_timeout=max_timeout if stream else None,
                )
            except ProtocolError as error:
                query_error = error
        if query is None:
            rejection = run_hook(
                self.before_subscription, environ, start_response, _SUBSCRIBE_HEADERS
            )
        else:
            rejection = self._run_hook_per_category(environ, start_response, query.categories)
        if rejection is not None:
            return rejection
        if environ.get("REQUEST_METHOD") != "GET":
            return json_error(start_response, "405 Method Not Allowed",
                              SUBSCRIBE_METHOD_ERROR, [*_SUBSCRIBE_HEADERS, ("Allow", "GET")])
        if query is None:
            return json_error(start_response, "200 OK", str(query_error), _SUBSCRIBE_HEADERS)
        if self.authorize_subscribe is not None:
            request = Request(environ)
            for category in query.categories:
                if self.authorize_subscribe(request, category) is not True:
                    return _forbidden(start_response, _SUBSCRIBE_HEADERS, category)
        connection = None
        for key in CONNECTION_ENVIRON_KEYS:
            connection = environ.get(key)
            if connection is not None:
                break
        if stream:
            return self._stream(environ, start_response, query, connection)
        try:
            delivery = self.manager.subscribe(
                query.categories, query.timeout, query.since_time, query.last_id,
                connection=connection,
            )
        except (CapacityExceeded, StorageUnavailable) as error:
            return refuse(start_response, error, _SUBSCRIBE_HEADERS)
        if delivery.events:
            body = events_body(delivery.events, delivery.gaps)
        else:
            body = timeout_body(now_ms(), delivery.gaps)
        return respond(start_response, "200 OK", _SUBSCRIBE_HEADERS, body)

    def _stream(
        self, environ: WSGIEnvironment, start_response: StartResponse, query: SubscribeQuery,
        connection: socket.socket | None,
    ) -> Iterable[bytes]:
        """Answer a subscription with a stream of Server-Sent Events.

        The starting cursor is the ``Last-Event-ID`` header, else the query's
        ``since_time`` / ``last_id``, else this millisecond. The events after it are read
        (and a capacity or storage error answered as for a long poll) before the stream
        starts; the rest are sent as they come.
        """
        since_time, last_id = query.since_time, query.last_id
        header = environ.get("HTTP_LAST_EVENT_ID", "")
        if header:
            try:
                since_time, last_id = parse_last_event_id(header)
            except ProtocolError as error:
                return json_error(start_response, "400 Bad Request", str(error), _SUBSCRIBE_HEADERS)
        if since_time is None:
            since_time = now_ms() - 1  # every event of this millisecond on
        deadline = time.monotonic() + query.timeout
        try:
            first = self.manager.subscribe(
                query.categories, 0, since_time, last_id, connection=connection
            )
        except (CapacityExceeded, StorageUnavailable) as error:
            return refuse(start_response, error, _SUBSCRIBE_HEADERS)
        start_response("200 OK", list(_STREAM_HEADERS))
        return self._stream_body(
            query.categories, first, (since_time, last_id), deadline, connection
        )

    def _stream_body(
        self, categories: Sequence[str], first: Delivery, cursor: tuple[int, str | None],
        deadline: float, connection: socket.socket | None,
    ) -> Iterator[bytes]:
        """The stream: one write per batch of events, a comment per idle keep-alive
        interval; it ends at *deadline*, when the manager drains, or on a hang-up."""
        manager = self.manager
        keepalive = self.sse_keepalive_seconds
        start = stream_start(self.sse_retry_ms, *cursor)
        cursor = _advance(cursor, first.events, first.gaps)
        yield start + batch_body(first.events, first.gaps)
        while not manager.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            wait = min(remaining, keepalive)
            started = time.monotonic()
            try:
                delivery = manager.subscribe(
                    categories, wait, cursor[0], cursor[1], connection=connection
                )
            except (CapacityExceeded, StorageUnavailable) as error:
                logger.warning("ending an event stream: %s", error)
                return
            if delivery.events or delivery.gaps:
                cursor = _advance(cursor, delivery.events, delivery.gaps)
                yield batch_body(delivery.events, delivery.gaps)
            elif time.monotonic() - started < wait / 2:
                # Answered empty long before the wait was over: the manager drains (and
                # answers every later subscribe at once) or the client hung up.
                return
            elif time.monotonic() < deadline:
                yield KEEP_ALIVE

    def _publish(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = b""
        if environ.get("REQUEST_METHOD") == "POST":
            try:
                body = _read_body(environ, self.max_body_size)
            except _BodyTooLarge:
                return json_error(
                    start_response, "413 Request Entity Too Large",
                    f"Request body too large: the limit is {self.max_body_size} bytes.",
                )
            except ValueError:
                return json_error(start_response, "400 Bad Request", PUBLISH_BODY_ERROR)
            except OSError:  # a truncated or badly chunked body: where the next request
                # would start is unknown, so ask the server to close the connection
                # (gevent's pywsgi honours this header; gunicorn ignores it).
                return json_error(start_response, "400 Bad Request",
                                  PUBLISH_BODY_ERROR, [*_JSON_HEADERS, ("Connection", "close")])
            # The hook may read the body; give it (and anyone after it) a fresh copy.
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        rejection = run_hook(self.before_publish, environ, start_response)
        if rejection is not None:
            return rejection
        if environ.get("REQUEST_METHOD") != "POST":
            return json_error(start_response, "405 Method Not Allowed",
                              PUBLISH_METHOD_ERROR, [*_JSON_HEADERS, ("Allow", "POST")])
        try:
            request = parse_publish_body(body)
            key = parse_idempotency_key(environ.get("HTTP_IDEMPOTENCY_KEY"))
            if self.authorize_publish is not None and self.authorize_publish(
                Request(environ), request.category
            ) is not True:
                return _forbidden(start_response, _JSON_HEADERS, request.category)
            self.manager.publish(request.category, request.data, idempotency_key=key)
        except ProtocolError as error:
            return json_error(start_response, "400 Bad Request", str(error))
        except (ManagerClosed, CapacityExceeded, StorageUnavailable) as error:
            return refuse(start_response, error)
        return respond(start_response, "200 OK", _JSON_HEADERS, PUBLISH_SUCCESS_BODY)


def _advance(
    cursor: tuple[int, str | None], events: list[Event], gaps: list[Gap]
) -> tuple[int, str | None]:
    """A stream's cursor after sending *events* and *gaps*."""
    if events:
        return events[-1].timestamp, events[-1].id
    if gaps:  # nothing is buffered after the cursor: resume after the newest dropped event
        gap = max(gaps, key=lambda gap: gap.since_time)
        return gap.since_time, gap.last_id
    return cursor


def _client_script_files(module_path: str) -> dict[str, str]:
    """URL path -> file in ``wsgi_longpoll/static`` of the browser client's two forms."""
    directory, _, name = module_path.rpartition("/")
    plain_path = f"{directory}/longpoll.global.js"
    if not module_path.startswith("/") or not name.endswith(".js") or module_path == plain_path:
        raise ValueError(
            f"client_script_path must be a path ending in .js other than "
            f"longpoll.global.js, e.g. '/longpoll.js', not {module_path!r}"
        )
    return {module_path: "longpoll.js", plain_path: "longpoll.global.js"}


def _quote_surrogates(text: Any, safe: Any = "", encoding: Any = None, errors: Any = None) -> str:
    # What parse_qsl decoded with surrogateescape, quoted back to the same bytes.
    return quote(str(text).encode("utf-8", "surrogateescape"), safe=safe)


def _forbidden(
    start_response: StartResponse, headers: list[tuple[str, str]], category: str
) -> list[bytes]:
    logger.info("answering 403: category %r refused by the authorize function", category[:100])
    return json_error(start_response, "403 Forbidden",
                      CATEGORY_FORBIDDEN_ERROR, headers)


class _BodyTooLarge(Exception):
    pass


def _read_body(environ: WSGIEnvironment, limit: int) -> bytes:
    """Read the request body, at most *limit* bytes.

    :raises _BodyTooLarge: if the body is larger than *limit*.
    :raises ValueError: if ``CONTENT_LENGTH`` is not a number.
    :raises OSError: if the client sends less than it announced, or bad chunked encoding.
    """
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH") or ""
    if length:
        size = int(length)
        if size < 0:
            raise ValueError("negative Content-Length")
        if size > limit:
            raise _BodyTooLarge
        return bytes(stream.read(size))
    if environ.get("wsgi.input_terminated"):  # chunked: the server tells us where it ends
        body = bytes(stream.read(limit + 1))
        if len(body) > limit:
            raise _BodyTooLarge
        return body
    return b""


