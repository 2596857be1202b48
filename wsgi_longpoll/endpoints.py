"""The long-poll endpoints, once, sans I/O: subscribe, stream and publish.

:class:`Endpoints` knows the protocol and nothing of sockets or WSGI. An adapter hands it
a request's parts (:class:`RequestParts`) and the decisions that are the framework's
(hooks, authorization callbacks); it gets back either an :class:`Answer` to send as it is,
or a :class:`Hold`: the categories, cursor and timeout of a subscriber to park. The
adapters drive it the way h11's I/O code drives its protocol object:

- :class:`~wsgi_longpoll.wsgi.middleware.LongpollMiddleware` answers a hold in its
  greenlet, or, under this package's server, hands it to the server (see :data:`HOLD_KEY`);
- the native server (:mod:`wsgi_longpoll.server.longpoll`) parks the socket;
- the Flask and Django views go through the middleware, so their holds are parked by the
  server too, after the framework's own authorization ran.

The query is parsed once, here: a hook, an authorization callback and the engine all see
the same categories.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode

from .errors import (
    CapacityExceeded,
    IdempotencyConflict,
    LongpollError,
    ManagerClosed,
    OutcomeUnknown,
    ReplicationIncomplete,
    StorageRefused,
    StorageUnavailable,
)
from .logs import RateLimitedLog
from .manager import LongpollManager
from .options import at_least, check_options, more_than, option
from .protocol import (
    OUTCOME_UNKNOWN_ERROR,
    PUBLISH_METHOD_ERROR,
    PUBLISH_SUCCESS_BODY,
    REPLICATION_INCOMPLETE_ERROR,
    SUBSCRIBE_METHOD_ERROR,
    ProtocolError,
    error_body,
    idempotency_conflict_error,
    now_ms,
    parse_idempotency_key,
    parse_publish_body,
    parse_subscribe_query,
    query_pairs,
    storage_refused_error,
)
from .sse import accepts_event_stream, parse_last_event_id, stream_start
from .tokens import MIN_SECRET_BYTES, SubscribeTokenRejected, TokenVerifier

__all__ = [
    "HOLD_KEY",
    "Answer",
    "EndpointOptions",
    "Endpoints",
    "Headers",
    "Hold",
    "RateLimitedLog",
    "RequestParts",
    "refusal",
    "token_refusal",
]

logger = logging.getLogger(__name__)

#: The WSGI environ key under which this package's server offers to park a held
#: subscriber: a callable ``hold(manager, hold)``. An adapter that finds it hands the
#: :class:`Hold` over and answers ``200`` with the hold's headers and no body; the
#: server then discards that body, keeps the headers (those a framework added, such as a
#: session cookie or CORS, included) and answers the subscriber from the publisher.
HOLD_KEY = "wsgi_longpoll.hold"


class Headers:
    """Response header lines, as ``(name, value)`` pairs and as the bytes of a head."""

    __slots__ = ("items", "raw")

    def __init__(self, items: Sequence[tuple[str, str]]) -> None:
        self.items: tuple[tuple[str, str], ...] = tuple(items)
        #: The header lines as sent, each ending in CRLF.
        self.raw = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in self.items)

    def __add__(self, other: Sequence[tuple[str, str]]) -> Headers:
        return Headers((*self.items, *other))

    def __repr__(self) -> str:
        return f"Headers({list(self.items)!r})"


#: Every JSON answer's headers.
JSON_HEADERS = Headers([("Content-Type", "application/json"),
                        ("X-Content-Type-Options", "nosniff")])
#: A subscribe answer's: JSON, never cached.
SUBSCRIBE_HEADERS = JSON_HEADERS + [
    ("Cache-Control", "no-cache, no-store, must-revalidate"),
    ("Pragma", "no-cache"),
    ("Expires", "0"),
]
#: A Server-Sent Events stream's.
STREAM_HEADERS = Headers([
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),  # nginx: pass each write on at once
    ("X-Content-Type-Options", "nosniff"),
])
#: What ``Retry-After`` says with a 503: the server is at capacity or its store is down.
RETRY_AFTER_SECONDS = "1"
_SUBSCRIBE_405 = SUBSCRIBE_HEADERS + [("Allow", "GET")]
_PUBLISH_405 = JSON_HEADERS + [("Allow", "POST")]
_RETRY = [("Retry-After", RETRY_AFTER_SECONDS)]

#: The message of a 403 from a hook that returned ``False``.
HOOK_FORBIDDEN_ERROR = "Forbidden: rejected by the server's hook."
#: The message of a 403 from an authorize function that refused a category.
CATEGORY_FORBIDDEN_ERROR = "Forbidden: not authorized for this category."


def _secret_check(secret: str) -> str | None:
    size = len(secret.encode("utf-8", "surrogateescape"))
    if size < MIN_SECRET_BYTES:
        return f"must be at least {MIN_SECRET_BYTES} bytes, not {size}"
    return None


@dataclass(frozen=True, kw_only=True)
class EndpointOptions:
    """The options of the long-poll endpoints, with their defaults, each defined once
    (see :mod:`wsgi_longpoll.options`).

    :param subscription_path: the path answered as subscribe (GET); ``None`` turns it off.
    :param publish_path: the path answered as publish (POST); ``None`` turns it off,
        leaving publishing to code that calls :meth:`LongpollManager.publish`.
    :param max_body_size: the largest publish body accepted, in bytes (larger: 413).
    :param max_categories_per_request: how many categories one subscribe may name (the
        ``categories`` extension).
    :param sse_keepalive_seconds: how long a Server-Sent Events stream may stay silent
        before it gets a ``: keep-alive`` comment, so that proxies keep it open.
    :param sse_retry_ms: the ``retry:`` field that opens each stream: how long a browser
        waits before it reconnects once the stream ends.
    :param subscribe_secret: require a subscribe token signed with this secret (see
        :mod:`wsgi_longpoll.tokens`) on every subscribe; ``None``: no token needed.
    :param subscribe_secret_previous: a second secret whose tokens are still accepted,
        while the secret is rotated.
    :raises TypeError: naming the option, for a value of the wrong type.
    :raises ValueError: naming the option that is out of range.
    """

    subscription_path: str | None = option(
        "/events", metavar="PATH", help="the path of the subscribe endpoint (GET); None: none",
    )
    publish_path: str | None = option(
        "/publish", metavar="PATH",
        help="the path of the publish endpoint (POST); None: none (publish from Python)",
    )
    max_body_size: int = option(
        1024 * 1024, check=at_least(1),
        help="the largest publish body accepted, in bytes (larger: 413)",
    )
    max_categories_per_request: int = option(
        16, check=at_least(1),
        help="how many categories one subscribe may name (the 'categories' extension)",
    )
    sse_keepalive_seconds: float = option(
        15.0, check=more_than(0),
        help="how long a Server-Sent Events stream may stay silent before it gets a "
        "keep-alive comment, so that proxies keep it open",
    )
    sse_retry_ms: int = option(
        2000, check=at_least(0),
        help="the 'retry:' that opens each stream: how long a browser waits before it "
        "reconnects once the stream ends",
    )
    subscribe_secret: str | None = option(
        None, metavar="SECRET", check=_secret_check, secret=True,
        help="require on every subscribe a token signed with this secret (HMAC-SHA256, "
        "at least 16 bytes; see wsgi_longpoll.tokens) naming the categories it may read; "
        "None: no token needed",
    )
    subscribe_secret_previous: str | None = option(
        None, metavar="SECRET", check=_secret_check, secret=True,
        help="also accept tokens signed with this secret, while the subscribe secret is "
        "rotated",
    )

    def __post_init__(self) -> None:
        check_options(self)
        if self.subscription_path is not None and self.subscription_path == self.publish_path:
            raise ValueError("subscription_path and publish_path must differ")
        if self.subscribe_secret is None and self.subscribe_secret_previous is not None:
            raise ValueError("subscribe_secret_previous is given without subscribe_secret")

    def subscribe_secrets(self) -> tuple[str, ...]:
        """The secrets a subscribe token may be signed with, the current one first; none
        when tokens are not required."""
        return tuple(secret for secret in (self.subscribe_secret,
                                           self.subscribe_secret_previous)
                     if secret is not None)


class Answer:
    """A whole response: its status line (``"200 OK"``), headers and body."""

    __slots__ = ("status", "headers", "body", "status_bytes")

    def __init__(self, status: str, headers: Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        #: :attr:`status` as sent.
        self.status_bytes = status.encode("latin-1")

    @property
    def status_code(self) -> int:
        """The status as a number."""
        return int(self.status[:3])

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.body[:60]!r}>"


def error_answer(status: str, message: str, headers: Headers = JSON_HEADERS) -> Answer:
    """``{"error": message}`` with *status*."""
    return Answer(status, headers, error_body(message))


class Hold:
    """A subscription to park until events come, the timeout, or a drain.

    :param stream: a Server-Sent Events stream (else one long poll).
    :param categories: the categories waited on, without repeats.
    :param timeout: seconds to hold it.
    :param since_time: the cursor's time (epoch ms); ``None``: only new events (a long
        poll without ``since_time``). A stream's is always set.
    :param last_id: the cursor's event id, or ``None``.
    :param headers: the headers of the answer (a stream's or a long poll's).
    :param start: what opens a stream's body (``retry:`` and the cursor), else ``b""``.
    :param keepalive: seconds between a silent stream's keep-alive comments.
    """

    __slots__ = ("stream", "categories", "timeout", "since_time", "last_id", "headers",
                 "start", "keepalive")

    def __init__(self, stream: bool, categories: tuple[str, ...], timeout: int,
                 since_time: int | None, last_id: str | None, *, start: bytes = b"",
                 keepalive: float = EndpointOptions.sse_keepalive_seconds) -> None:
        self.stream = stream
        self.categories = categories
        self.timeout = timeout
        self.since_time = since_time
        self.last_id = last_id
        self.headers = STREAM_HEADERS if stream else SUBSCRIBE_HEADERS
        self.start = start
        self.keepalive = keepalive

    def __repr__(self) -> str:
        kind = "stream" if self.stream else "poll"
        return f"<Hold {kind} {list(self.categories)!r} timeout={self.timeout}>"


class RequestParts:
    """What the endpoints read of a request.

    :param method: ``"GET"``, ``"POST"``...
    :param query: the raw query string (``QUERY_STRING``: percent-encoded, latin-1).
    :param accept: the ``Accept`` header, or ``""``.
    :param last_event_id: the ``Last-Event-ID`` header, or ``""``.
    :param idempotency_key: the ``Idempotency-Key`` header, or ``None``.
    :param body: a publish's whole body (the adapter enforces ``max_body_size``).
    :param authorization: the ``Authorization`` header, or ``""``; read only where
        subscribe tokens are required (:attr:`Endpoints.tokens`), so an adapter may leave
        it out elsewhere.
    """

    __slots__ = ("method", "query", "accept", "last_event_id", "idempotency_key", "body",
                 "authorization")

    def __init__(self, method: str, query: str = "", accept: str = "",
                 last_event_id: str = "", idempotency_key: str | None = None,
                 body: bytes = b"", authorization: str = "") -> None:
        self.method = method
        self.query = query
        self.accept = accept
        self.last_event_id = last_event_id
        self.idempotency_key = idempotency_key
        self.body = body
        self.authorization = authorization


_refusals = RateLimitedLog(logging.getLogger("wsgi_longpoll.refusals"))


def refusal(error: LongpollError, headers: Headers = JSON_HEADERS) -> Answer:
    """The answer to a manager's refusal *error*: 503 (with ``Retry-After`` when the same
    request may succeed in a moment), or 504 when a publish's outcome is unknown; 503 when
    the event is stored but too few replicas confirmed it (``redis_min_replicas``), or
    the store answered with an error (its address and message in the answer).

    Logged, at most once per 10 s with a count, since refusals come in floods when the
    server is at capacity or its store is down.
    """
    if isinstance(error, CapacityExceeded):
        _refusals.log(logging.WARNING, "answering 503: %s", error)
        return error_answer("503 Service Unavailable",
                            f"The server is at capacity: {error}. Try again later.",
                            headers + _RETRY)
    if isinstance(error, ManagerClosed):
        return error_answer("503 Service Unavailable", "The server is shutting down.", headers)
    if isinstance(error, ReplicationIncomplete):
        _refusals.log(logging.ERROR, "answering 503: %s", error)
        return error_answer("503 Service Unavailable", REPLICATION_INCOMPLETE_ERROR,
                            headers + _RETRY)
    if isinstance(error, OutcomeUnknown):
        _refusals.log(logging.ERROR, "answering 504: %s", error)
        return error_answer("504 Gateway Timeout", OUTCOME_UNKNOWN_ERROR, headers)
    if isinstance(error, StorageRefused):
        _refusals.log(logging.ERROR, "answering 503: %s", error)
        return error_answer("503 Service Unavailable",
                            storage_refused_error(error.where, error.reply), headers + _RETRY)
    _refusals.log(logging.ERROR, "answering 503: %s", error)
    return error_answer("503 Service Unavailable",
                        "The event store is unavailable. Try again later.", headers + _RETRY)


_token_refusals = RateLimitedLog(logging.getLogger("wsgi_longpoll.refusals"))
_BEARER_CHALLENGE = SUBSCRIBE_HEADERS + [("WWW-Authenticate", 'Bearer realm="wsgi_longpoll"')]


def token_refusal(error: SubscribeTokenRejected) -> Answer:
    """The answer to a subscribe whose token was refused: 401 with a ``Bearer``
    challenge when there was none, else 403; the JSON error says why."""
    _token_refusals.log(logging.INFO, "answering %d: %s", error.status, error)
    if error.status == 401:
        return error_answer("401 Unauthorized", str(error), _BEARER_CHALLENGE)
    return error_answer("403 Forbidden", str(error), SUBSCRIBE_HEADERS)


C = TypeVar("C")

#: A check run before a subscribe on the request *context* and a query string naming
#: one category (or the request's own query): ``None`` goes on, an :class:`Answer` is sent.
SubscribeGate = Callable[[C, str], "Answer | None"]
#: A check run before a publish on the request *context*: ``None`` goes on.
PublishGate = Callable[[C], "Answer | None"]
#: An authorization decision on the request *context* and one category.
Authorize = Callable[[C, str], bool]


class Endpoints(Generic[C]):
    """The subscribe and publish endpoints of one manager, for any adapter.

    Each check is the adapter's, called with its own request *context* (a WSGI environ, a
    connection, nothing at all in a framework's request context), and only when set:

    :param manager: where events are published; the adapter parks holds on it.
    :param options: the paths and limits.
    :param before_subscription: run before a subscribe: once on the request's own query
        when it names one category as ``category``, else once for each category, on a
        query that names it alone as ``category`` (the other parameters kept), so that a
        check written for golongpoll's one category sees every category served.
    :param before_publish: run before a publish.
    :param authorize_subscribe: asked about each category a valid subscribe names; any
        ``False`` answers 403.
    :param authorize_publish: asked about the category of a valid publish body.
    """

    def __init__(
        self,
        manager: LongpollManager,
        options: EndpointOptions | None = None,
        *,
        before_subscription: SubscribeGate[C] | None = None,
        before_publish: PublishGate[C] | None = None,
        authorize_subscribe: Authorize[C] | None = None,
        authorize_publish: Authorize[C] | None = None,
    ) -> None:
        self.manager = manager
        self.options = options if options is not None else EndpointOptions()
        self.before_subscription = before_subscription
        self.before_publish = before_publish
        self.authorize_subscribe = authorize_subscribe
        self.authorize_publish = authorize_publish
        secrets = self.options.subscribe_secrets()
        #: Checks the subscribe tokens, when the options name a secret; else ``None``.
        self.tokens = TokenVerifier(secrets) if secrets else None

    # -- subscribe ----------------------------------------------------------------------

    def subscribe(self, request: RequestParts, context: C) -> Answer | Hold:
        """Check a subscribe request: the answer to send, or the subscriber to hold."""
        options = self.options
        accept = request.accept
        stream = accept != "" and accepts_event_stream(accept)
        max_timeout = self.manager.max_longpoll_timeout_seconds
        get = request.method == "GET"
        query = None
        query_error = None
        if get:
            try:
                query = parse_subscribe_query(
                    request.query, max_timeout, options.max_categories_per_request,
                    default_timeout=max_timeout if stream else None,
                )
            except ProtocolError as error:
                query_error = error
        gate = self.before_subscription
        if gate is not None:
            rejection = self._gate_subscribe(gate, request.query, query, context)
            if rejection is not None:
                return rejection
        if not get:
            return error_answer("405 Method Not Allowed", SUBSCRIBE_METHOD_ERROR, _SUBSCRIBE_405)
        if query is None:
            return error_answer("200 OK", str(query_error), SUBSCRIBE_HEADERS)
        tokens = self.tokens
        if tokens is not None:
            token = query.token
            if token is None:
                scheme, _, credentials = request.authorization.partition(" ")
                if scheme.lower() == "bearer":
                    token = credentials.strip()
            try:
                tokens.check(token, query.categories)
            except SubscribeTokenRejected as error:
                return token_refusal(error)
        authorize = self.authorize_subscribe
        if authorize is not None:
            for category in query.categories:
                if authorize(context, category) is not True:
                    logger.info("answering 403: category %r refused by the authorize "
                                "function", category[:100])
                    return error_answer("403 Forbidden", CATEGORY_FORBIDDEN_ERROR,
                                        SUBSCRIBE_HEADERS)
        if not stream:
            return Hold(False, query.categories, query.timeout, query.since_time, query.last_id)
        since_time, last_id = query.since_time, query.last_id
        if request.last_event_id:
            try:
                since_time, last_id = parse_last_event_id(request.last_event_id)
            except ProtocolError as error:
                return error_answer("400 Bad Request", str(error), SUBSCRIBE_HEADERS)
        if since_time is None:
            since_time = now_ms() - 1  # every event of this millisecond on
        return Hold(True, query.categories, query.timeout, since_time, last_id,
                    start=stream_start(options.sse_retry_ms, since_time, last_id),
                    keepalive=options.sse_keepalive_seconds)

    @staticmethod
    def _gate_subscribe(gate: SubscribeGate[C], raw_query: str, query: Any,
                        context: C) -> Answer | None:
        if query is None:
            return gate(context, raw_query)
        pairs = query_pairs(raw_query)
        names = [name for name, _ in pairs if name in ("category", "categories")]
        if names == ["category"]:
            return gate(context, raw_query)
        others = [(name, value) for name, value in pairs
                  if name not in ("category", "categories")]
        for category in query.categories:
            rewritten = urlencode([("category", category), *others], quote_via=_quote_surrogates)
            rejection = gate(context, rewritten)
            if rejection is not None:
                return rejection
        return None

    # -- publish ------------------------------------------------------------------------

    def publish(self, request: RequestParts, context: C) -> Answer:
        """Check and carry out a publish request (its body read whole); the answer."""
        gate = self.before_publish
        if gate is not None:
            rejection = gate(context)
            if rejection is not None:
                return rejection
        if request.method != "POST":
            return error_answer("405 Method Not Allowed", PUBLISH_METHOD_ERROR, _PUBLISH_405)
        try:
            document = parse_publish_body(request.body)
            key = parse_idempotency_key(request.idempotency_key)
            authorize = self.authorize_publish
            if authorize is not None and authorize(context, document.category) is not True:
                logger.info("answering 403: category %r refused by the authorize function",
                            document.category[:100])
                return error_answer("403 Forbidden", CATEGORY_FORBIDDEN_ERROR)
            self.manager.publish(document.category, document.data, idempotency_key=key)
        except ProtocolError as error:
            return error_answer("400 Bad Request", str(error))
        except IdempotencyConflict as error:
            return error_answer("422 Unprocessable Content", idempotency_conflict_error(error.key))
        except (ManagerClosed, CapacityExceeded, StorageUnavailable) as error:
            return refusal(error)
        return PUBLISH_SUCCESS


PUBLISH_SUCCESS = Answer("200 OK", JSON_HEADERS, PUBLISH_SUCCESS_BODY)

def _quote_surrogates(text: Any, safe: Any = "", encoding: Any = None, errors: Any = None) -> str:
    # What parse_qsl decoded with surrogateescape, quoted back to the same bytes.
    return quote(str(text).encode("utf-8", "surrogateescape"), safe=safe)
