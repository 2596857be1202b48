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
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from gevent.monkey import is_module_patched
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.middleware.shared_data import SharedDataMiddleware
from werkzeug.wrappers import Request

from .. import multiprocess
from ..endpoints import (
    HOLD_KEY,
    JSON_HEADERS,
    SUBSCRIBE_HEADERS,
    Answer,
    EndpointOptions,
    Endpoints,
    Hold,
    RequestParts,
    refusal,
)
from ..event import Event, Gap
from ..manager import CapacityExceeded, Delivery, LongpollManager, StorageUnavailable
from ..protocol import PUBLISH_BODY_ERROR, events_body, now_ms, timeout_body
from ..sse import KEEP_ALIVE, batch_body
from .answers import Hook, for_method, hook_verdict, json_error, not_found, respond, send

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["Authorize", "Hook", "LongpollMiddleware", "RequestContext"]

logger = logging.getLogger(__name__)


#: A per-category check: ``(request, category) -> bool``; ``False`` rejects with 403.
Authorize = Callable[[Request, str], bool]

#: Where a server puts the client's socket, so that a hang-up ends the wait at once.
CONNECTION_ENVIRON_KEYS = ("wsgi_longpoll.connection", "gunicorn.socket")

_THREADED_SERVER_ERROR = (
    "wsgi_longpoll needs a gevent server (gevent's WSGIServer, gunicorn -k gevent, or a "
    "process monkey-patched by gevent); this one runs requests in threads."
)


class RequestContext:
    """The WSGI side of one request, for the hooks and authorize functions: its environ
    and a werkzeug :class:`~werkzeug.wrappers.Request`, each made when first asked for
    (the native server makes an environ only for a request that a hook looks at).

    :param environ: the environ, or a function that makes it.
    """

    __slots__ = ("_environ", "_make", "_request")

    def __init__(self, environ: WSGIEnvironment | Callable[[], WSGIEnvironment]) -> None:
        self._make = environ if callable(environ) else None
        self._environ: WSGIEnvironment | None = None if callable(environ) else environ
        self._request: Request | None = None

    @property
    def environ(self) -> WSGIEnvironment:
        """The request's WSGI environ."""
        if self._environ is None:
            assert self._make is not None
            self._environ = self._make()
        return self._environ

    @property
    def request(self) -> Request:
        """The request as werkzeug sees it (one for every check of the request)."""
        if self._request is None:
            self._request = Request(self.environ)
        return self._request


def _subscribe_gate(hook: Hook) -> Callable[[RequestContext, str], Answer | None]:
    def gate(context: RequestContext, query: str) -> Answer | None:
        environ = context.environ
        if query != environ.get("QUERY_STRING", ""):
            environ = {**environ, "QUERY_STRING": query}
        return hook_verdict(hook, environ, SUBSCRIBE_HEADERS)
    return gate


def _publish_gate(hook: Hook) -> Callable[[RequestContext], Answer | None]:
    def gate(context: RequestContext) -> Answer | None:
        return hook_verdict(hook, context.environ, JSON_HEADERS)
    return gate


def _authorize(check: Authorize) -> Callable[[RequestContext, str], bool]:
    def authorize(context: RequestContext, category: str) -> bool:
        return check(context.request, category)
    return authorize


class LongpollMiddleware:
    """Answers long-poll subscriptions and publishes for a :class:`LongpollManager`.

    Requests to *subscription_path* and *publish_path* are answered here, by
    :attr:`endpoints`; all others go to *app*. Under this package's server a poll or
    stream that waits is handed to the server to park
    (:data:`~wsgi_longpoll.endpoints.HOLD_KEY`); under any other server it waits here, on
    gevent, so serve it with a gevent server.

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
    :param subscribe_secret: require on every subscribe a token signed with this secret
        (see :mod:`wsgi_longpoll.tokens`): a missing one is answered 401, an expired,
        forged or malformed one, or one that does not name every category asked for,
        403. ``None``: no token needed.
    :param subscribe_secret_previous: also accept tokens signed with this secret, while
        the secret is rotated.

    The options but the hooks and *client_script_path* are
    :class:`~wsgi_longpoll.endpoints.EndpointOptions`', with its defaults and checks.
    """

    #: The default ``max_body_size``: 1 MiB.
    default_max_body_size = EndpointOptions.max_body_size
    #: The default ``max_categories_per_request``.
    default_max_categories_per_request = EndpointOptions.max_categories_per_request
    #: The default ``sse_keepalive_seconds``.
    default_sse_keepalive_seconds = EndpointOptions.sse_keepalive_seconds
    #: The default ``sse_retry_ms``.
    default_sse_retry_ms = EndpointOptions.sse_retry_ms

    def __init__(
        self,
        app: WSGIApplication,
        manager: LongpollManager,
        subscription_path: str | None = EndpointOptions.subscription_path,
        publish_path: str | None = EndpointOptions.publish_path,
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
        subscribe_secret: str | None = EndpointOptions.subscribe_secret,
        subscribe_secret_previous: str | None = EndpointOptions.subscribe_secret_previous,
    ) -> None:
        #: The paths and limits, checked.
        self.options = EndpointOptions(
            subscription_path=subscription_path, publish_path=publish_path,
            max_body_size=max_body_size, max_categories_per_request=max_categories_per_request,
            sse_keepalive_seconds=sse_keepalive_seconds, sse_retry_ms=sse_retry_ms,
            subscribe_secret=subscribe_secret, subscribe_secret_previous=subscribe_secret_previous,
        )
        self.app = app
        self.manager = manager
        self.subscription_path = subscription_path
        self.publish_path = publish_path
        self.before_subscription = before_subscription
        self.before_publish = before_publish
        self.authorize_subscribe = authorize_subscribe
        self.authorize_publish = authorize_publish
        self.max_body_size = max_body_size
        self.max_categories_per_request = max_categories_per_request
        self.client_script_path = client_script_path
        self.sse_keepalive_seconds = sse_keepalive_seconds
        self.sse_retry_ms = sse_retry_ms
        self._multiprocess_checked = False
        #: The protocol, with this middleware's hooks as its checks; the native server
        #: answers with it too.
        self.endpoints: Endpoints[RequestContext] = Endpoints(
            manager, self.options,
            before_subscription=None if before_subscription is None
            else _subscribe_gate(before_subscription),
            before_publish=None if before_publish is None else _publish_gate(before_publish),
            authorize_subscribe=None if authorize_subscribe is None
            else _authorize(authorize_subscribe),
            authorize_publish=None if authorize_publish is None
            else _authorize(authorize_publish),
        )
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
            headers = SUBSCRIBE_HEADERS.items
            handler = self._subscribe
        elif path == self.publish_path:
            headers = JSON_HEADERS.items
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

    def _subscribe(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        request = RequestParts(
            environ.get("REQUEST_METHOD", "GET"), environ.get("QUERY_STRING", ""),
            accept=environ.get("HTTP_ACCEPT", ""),
            last_event_id=environ.get("HTTP_LAST_EVENT_ID", ""),
            authorization=environ.get("HTTP_AUTHORIZATION", ""),
        )
        result = self.endpoints.subscribe(request, RequestContext(environ))
        if isinstance(result, Answer):
            return send(start_response, result)
        server_hold = environ.get(HOLD_KEY)
        if server_hold is not None:  # the server parks it (see endpoints.HOLD_KEY)
            server_hold(self.manager, result)
            return respond(start_response, "200 OK", result.headers.items, b"")
        connection = None
        for key in CONNECTION_ENVIRON_KEYS:
            connection = environ.get(key)
            if connection is not None:
                break
        if result.stream:
            return self._stream(start_response, result, connection)
        try:
            delivery = self.manager.subscribe(
                result.categories, result.timeout, result.since_time, result.last_id,
                connection=connection,
            )
        except (CapacityExceeded, StorageUnavailable) as error:
            return send(start_response, refusal(error, SUBSCRIBE_HEADERS))
        if delivery.events:
            body = events_body(delivery.events, delivery.gaps)
        else:
            body = timeout_body(now_ms(), delivery.gaps)
        return respond(start_response, "200 OK", SUBSCRIBE_HEADERS.items, body)

    def _stream(
        self, start_response: StartResponse, hold: Hold, connection: socket.socket | None,
    ) -> Iterable[bytes]:
        """Answer a subscription with a stream of Server-Sent Events.

        The events after the hold's cursor are read (and a capacity or storage error
        answered as for a long poll) before the stream starts; the rest are sent as they
        come.
        """
        assert hold.since_time is not None
        deadline = time.monotonic() + hold.timeout
        try:
            first = self.manager.subscribe(
                hold.categories, 0, hold.since_time, hold.last_id, connection=connection
            )
        except (CapacityExceeded, StorageUnavailable) as error:
            return send(start_response, refusal(error, SUBSCRIBE_HEADERS))
        start_response("200 OK", list(hold.headers.items))
        return self._stream_body(hold, first, deadline, connection)

    def _stream_body(
        self, hold: Hold, first: Delivery, deadline: float, connection: socket.socket | None,
    ) -> Iterator[bytes]:
        """The stream: one write per batch of events, a comment per idle keep-alive
        interval; it ends at *deadline*, when the manager drains, or on a hang-up."""
        manager = self.manager
        categories = hold.categories
        assert hold.since_time is not None
        cursor = _advance((hold.since_time, hold.last_id), first.events, first.gaps)
        yield hold.start + batch_body(first.events, first.gaps)
        while not manager.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            wait = min(remaining, hold.keepalive)
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
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "POST":
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
                return json_error(start_response, "400 Bad Request", PUBLISH_BODY_ERROR,
                                  [*JSON_HEADERS.items, ("Connection", "close")])
            # The hook may read the body; give it (and anyone after it) a fresh copy.
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        request = RequestParts(method, idempotency_key=environ.get("HTTP_IDEMPOTENCY_KEY"),
                               body=body)
        return send(start_response, self.endpoints.publish(request, RequestContext(environ)))


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


