"""WSGI middleware that answers the long-poll subscription and publish paths.

Every other request goes to the wrapped application untouched. The answers are
golongpoll's, byte for byte (see PROTOCOL.md).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from gevent.monkey import is_module_patched
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.middleware.shared_data import SharedDataMiddleware
from werkzeug.wrappers import Request, Response

from ..manager import (
    CapacityExceeded,
    LongpollManager,
    ManagerClosed,
    OutcomeUnknown,
    StorageUnavailable,
)
from ..protocol import (
    OUTCOME_UNKNOWN_ERROR,
    PUBLISH_BODY_ERROR,
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

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["Hook", "LongpollMiddleware"]

logger = logging.getLogger(__name__)

#: A before-hook: ``True`` goes on, ``False`` rejects with 403, a response is sent as is.
Hook = Callable[[Request], bool | Response]

_JSON_HEADERS = [
    ("Content-Type", "application/json"),
    ("X-Content-Type-Options", "nosniff"),
]
_SUBSCRIBE_HEADERS = [
    *_JSON_HEADERS,
    ("Cache-Control", "no-cache, no-store, must-revalidate"),
    ("Pragma", "no-cache"),
    ("Expires", "0"),
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
    :param before_subscription: a :data:`Hook` run before each subscribe request.
    :param before_publish: a :data:`Hook` run before each publish request; it may read
        the body, which the publish still sees.
    :param max_body_size: the largest publish body accepted, in bytes (larger: 413).
    :param max_categories_per_request: how many categories one subscribe request may
        name with the ``categories`` extension.
    :param client_script_path: serve the browser client, an ES module, at this path (e.g.
        ``"/longpoll.js"``) and its plain-script form as ``longpoll.global.js`` in the same
        directory, to GET and HEAD, with ``ETag`` and an hour's ``Cache-Control``; ``None``
        serves neither.
    """

    #: The default ``max_body_size``: 1 MiB.
    default_max_body_size = 1024 * 1024
    #: The default ``max_categories_per_request``.
    default_max_categories_per_request = 16

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
    ) -> None:
        if subscription_path is not None and subscription_path == publish_path:
            raise ValueError("subscription_path and publish_path must differ")
        if max_body_size < 1:
            raise ValueError("max_body_size must be at least 1")
        if max_categories_per_request < 1:
            raise ValueError("max_categories_per_request must be at least 1")
        self.app = app
        self.manager = manager
        self.subscription_path = subscription_path
        self.publish_path = publish_path
        self.before_subscription = before_subscription
        self.before_publish = before_publish
        self.max_body_size = max_body_size
        self.max_categories_per_request = max_categories_per_request
        self.client_script_path = client_script_path
        self._client_scripts: dict[str, str] = {}
        if client_script_path is not None:
            self._client_scripts = _client_script_files(client_script_path)
            if {subscription_path, publish_path} & set(self._client_scripts):
                raise ValueError("client_script_path must differ from the long-poll paths")
            self._client_script_app = SharedDataMiddleware(
                _not_found, {"/": ("wsgi_longpoll", "static")}, cache_timeout=3600
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
            return _respond(start_response, "500 Internal Server Error", headers,
                            error_body(_THREADED_SERVER_ERROR))
        return handler(environ, start_response)

    def _run_hook(
        self, hook: Hook | None, environ: WSGIEnvironment, start_response: StartResponse,
        headers: list[tuple[str, str]],
    ) -> Iterable[bytes] | None:
        """Run *hook*; return the rejection to send, or ``None`` to go on."""
        if hook is None:
            return None
        verdict = hook(Request(environ))
        if verdict is True:
            return None
        if isinstance(verdict, Response):
            return verdict(environ, start_response)
        if verdict is False:
            return _respond(start_response, "403 Forbidden", headers,
                            error_body("Forbidden: rejected by the server's hook."))
        raise TypeError(f"a hook must return True, False or a Response, not {verdict!r}")

    def _subscribe(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        rejection = self._run_hook(
            self.before_subscription, environ, start_response, _SUBSCRIBE_HEADERS
        )
        if rejection is not None:
            return rejection
        if environ.get("REQUEST_METHOD") != "GET":
            return _respond(start_response, "405 Method Not Allowed",
                            [*_SUBSCRIBE_HEADERS, ("Allow", "GET")],
                            error_body(SUBSCRIBE_METHOD_ERROR))
        try:
            query = parse_subscribe_query(
                environ.get("QUERY_STRING", ""),
                self.manager.max_longpoll_timeout_seconds,
                self.max_categories_per_request,
            )
        except ProtocolError as error:
            return _respond(start_response, "200 OK", _SUBSCRIBE_HEADERS, error_body(str(error)))
        connection = None
        for key in CONNECTION_ENVIRON_KEYS:
            connection = environ.get(key)
            if connection is not None:
                break
        try:
            delivery = self.manager.subscribe(
                query.categories, query.timeout, query.since_time, query.last_id,
                connection=connection,
            )
        except CapacityExceeded as error:
            return _busy(start_response, _SUBSCRIBE_HEADERS, error)
        except StorageUnavailable as error:
            return _unavailable(start_response, _SUBSCRIBE_HEADERS, error)
        if delivery.events:
            body = events_body(delivery.events, delivery.gaps)
        else:
            body = timeout_body(now_ms(), delivery.gaps)
        return _respond(start_response, "200 OK", _SUBSCRIBE_HEADERS, body)

    def _publish(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = b""
        if environ.get("REQUEST_METHOD") == "POST":
            try:
                body = _read_body(environ, self.max_body_size)
            except _BodyTooLarge:
                return _respond(start_response, "413 Request Entity Too Large", _JSON_HEADERS,
                                error_body(f"Request body too large: the limit is "
                                           f"{self.max_body_size} bytes."))
            except ValueError:
                return _respond(start_response, "400 Bad Request", _JSON_HEADERS,
                                error_body(PUBLISH_BODY_ERROR))
            except OSError:  # a truncated or badly chunked body: where the next request
                # would start is unknown, so ask the server to close the connection
                # (gevent's pywsgi honours this header; gunicorn ignores it).
                return _respond(start_response, "400 Bad Request",
                                [*_JSON_HEADERS, ("Connection", "close")],
                                error_body(PUBLISH_BODY_ERROR))
            # The hook may read the body; give it (and anyone after it) a fresh copy.
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        rejection = self._run_hook(self.before_publish, environ, start_response, _JSON_HEADERS)
        if rejection is not None:
            return rejection
        if environ.get("REQUEST_METHOD") != "POST":
            return _respond(start_response, "405 Method Not Allowed",
                            [*_JSON_HEADERS, ("Allow", "POST")],
                            error_body(PUBLISH_METHOD_ERROR))
        try:
            request = parse_publish_body(body)
            key = parse_idempotency_key(environ.get("HTTP_IDEMPOTENCY_KEY"))
            self.manager.publish(request.category, request.data, idempotency_key=key)
        except ProtocolError as error:
            return _respond(start_response, "400 Bad Request", _JSON_HEADERS,
                            error_body(str(error)))
        except ManagerClosed:
            return _respond(start_response, "503 Service Unavailable", _JSON_HEADERS,
                            error_body("The server is shutting down."))
        except CapacityExceeded as error:
            return _busy(start_response, _JSON_HEADERS, error)
        except OutcomeUnknown as error:
            logger.error("answering 504: %s", error)
            return _respond(start_response, "504 Gateway Timeout", _JSON_HEADERS,
                            error_body(OUTCOME_UNKNOWN_ERROR))
        except StorageUnavailable as error:
            return _unavailable(start_response, _JSON_HEADERS, error)
        return _respond(start_response, "200 OK", _JSON_HEADERS, PUBLISH_SUCCESS_BODY)


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


def _not_found(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    return NotFound()(environ, start_response)


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


def _busy(
    start_response: StartResponse, headers: list[tuple[str, str]], error: CapacityExceeded
) -> list[bytes]:
    logger.warning("answering 503: %s", error)
    return _respond(start_response, "503 Service Unavailable",
                    [*headers, ("Retry-After", RETRY_AFTER_SECONDS)],
                    error_body(f"The server is at capacity: {error}. Try again later."))


def _unavailable(
    start_response: StartResponse, headers: list[tuple[str, str]], error: StorageUnavailable
) -> list[bytes]:
    logger.error("answering 503: %s", error)
    return _respond(start_response, "503 Service Unavailable",
                    [*headers, ("Retry-After", RETRY_AFTER_SECONDS)],
                    error_body("The event store is unavailable. Try again later."))


#: What ``Retry-After`` says when the manager is at capacity.
RETRY_AFTER_SECONDS = "1"


def _respond(
    start_response: StartResponse, status: str, headers: list[tuple[str, str]], body: bytes
) -> list[bytes]:
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    return [body]
