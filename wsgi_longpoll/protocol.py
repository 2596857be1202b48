"""The wire protocol: parse and validate requests, build response bodies.

Pure functions, no I/O. The exact strings, limits and validation order are golongpoll
v1.3.1's (see PROTOCOL.md), so that existing clients work unchanged.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from .event import Event, Gap

__all__ = [
    "IDEMPOTENCY_KEY_ERROR",
    "MAX_CATEGORY_BYTES",
    "MAX_TIMESTAMP",
    "OUTCOME_UNKNOWN_ERROR",
    "REPLICATION_INCOMPLETE_ERROR",
    "ProtocolError",
    "PublishBody",
    "SubscribeQuery",
    "error_body",
    "events_body",
    "idempotency_conflict_error",
    "now_ms",
    "parse_idempotency_key",
    "parse_publish_body",
    "parse_subscribe_query",
    "query_pairs",
    "storage_refused_error",
    "timeout_body",
    "validate_category",
]

#: The longest category, in bytes of UTF-8.
MAX_CATEGORY_BYTES = 1024

#: The largest event timestamp (ms) kept: JavaScript's largest safe integer, so that
#: every client (a browser's ``Number``, Go's ``int64``) can send it back as
#: ``since_time`` exactly.
MAX_TIMESTAMP = 2**53 - 1

#: ``strconv.Atoi`` / ``ParseInt`` accept an optional sign and ASCII digits, nothing else.
_GO_INTEGER = re.compile(r"[+-]?[0-9]+")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

#: The forms Go's ``uuid.Parse`` accepts: canonical, ``urn:uuid:``, braces, or 32 hex digits.
_UUID = re.compile(
    r"(?:urn:uuid:)?([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})"
    r"|\{([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})\}"
    r"|([0-9a-f]{8})([0-9a-f]{4})([0-9a-f]{4})([0-9a-f]{4})([0-9a-f]{12})",
    re.IGNORECASE,
)

SUBSCRIBE_METHOD_ERROR = "Invalid HTTP Method. Only GET allowed."
PUBLISH_METHOD_ERROR = "Invalid HTTP Method. Only POST allowed."
CATEGORY_ERROR = "Invalid subscription category, must be 1-1024 characters long."
SINCE_TIME_ERROR = "Invalid 'since_time' arg."
LAST_ID_WITHOUT_SINCE_TIME_ERROR = "Must provide 'since_time' arg when providing 'last_id'."
LAST_ID_ERROR = "Param 'last_id' was not a valid UUID."
PUBLISH_BODY_ERROR = "Invalid POST body json."
PUBLISH_CATEGORY_ERROR = "Invalid or missing 'category' arg, must be 1-1024 characters long."
PUBLISH_DATA_ERROR = "Invalid or missing 'data' arg, must be non-nil."
IDEMPOTENCY_KEY_ERROR = (
    "Invalid 'Idempotency-Key' header, must be 1-255 visible ASCII characters."
)
OUTCOME_UNKNOWN_ERROR = (
    "The event store did not confirm the event in time: it may have been published. "
    "Retry with the same Idempotency-Key header to publish it at most once."
)
REPLICATION_INCOMPLETE_ERROR = (
    "The event store kept the event but could not copy it to enough replicas in time: it "
    "may be delivered, and may be lost if the store fails over. Retry with the same "
    "Idempotency-Key header to publish it at most once."
)


class ProtocolError(ValueError):
    """A request that the protocol rejects; ``str(error)`` is the message for the client."""


class SubscribeQuery(NamedTuple):
    """A valid subscribe request (a named tuple: made once per request, cheaply).

    :param categories: the categories to wait on: ``category``, then each ``categories``.
    :param timeout: seconds to hold the request.
    :param since_time: epoch ms; events after it are wanted. ``None``: only new events.
    :param last_id: the last event the client has seen (canonical UUID), or ``None``.
    :param token: the ``token`` parameter (a subscribe token, see
        :mod:`wsgi_longpoll.tokens`), or ``None``.
    """

    categories: tuple[str, ...]
    timeout: int
    since_time: int | None
    last_id: str | None
    token: str | None = None


class PublishBody(NamedTuple):
    """A valid publish request body."""

    category: str
    data: Any


def now_ms() -> int:
    """The wall clock in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def too_many_categories_error(max_categories: int) -> str:
    return f"Too many categories: at most {max_categories} in one request."


def idempotency_conflict_error(key: str) -> str:
    """The message of a ``422``: *key* was used in the category for another event."""
    return (
        f"Idempotency-Key {key!r} was already used in this category for another event "
        "(other data): use a new key for a new event."
    )


def storage_refused_error(where: str, reply: str) -> str:
    """The message of a ``503``: the event store at *where* answered with the error
    *reply* (Redis out of memory, a read-only replica, busy with a script)."""
    reply = reply.strip()
    if not reply.endswith("."):
        reply += "."
    return f"The event store is unavailable: Redis at {where} answered: {reply} Try again later."


def timeout_error(max_timeout: int) -> str:
    return f"Invalid or missing 'timeout' arg.  Must be 1-{max_timeout}."


def _parse_go_int(text: str) -> int | None:
    if text.isascii() and text.isdigit() and len(text) <= 18:  # the common case, in int64
        return int(text)
    if not _GO_INTEGER.fullmatch(text):
        return None
    if len(text.lstrip("+-").lstrip("0")) > 19:  # out of int64; int() refuses > 4300 digits
        return None
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def category_is_valid(category: str) -> bool:
    """Whether *category* is 1 to 1024 bytes of UTF-8."""
    if category.isascii():
        return 0 < len(category) <= MAX_CATEGORY_BYTES
    try:  # a query string's undecodable bytes count one byte each, as they came
        size = len(category.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a lone surrogate from a JSON "\ud800" escape
        size = len(category.encode("utf-8", "surrogatepass"))
    return 0 < size <= MAX_CATEGORY_BYTES


def validate_category(category: object) -> str:
    """Return *category* if it is a valid category.

    :raises ValueError: naming the rule it breaks.
    """
    if not isinstance(category, str):
        raise TypeError(f"category must be a str, not {type(category).__name__}")
    if not category_is_valid(category):
        raise ValueError(f"category must be 1 to {MAX_CATEGORY_BYTES} bytes of UTF-8")
    return category


def canonical_uuid(text: str) -> str | None:
    """*text* in canonical lower-case UUID form, or ``None`` if it is not a UUID."""
    match = _UUID.fullmatch(text)
    if match is None:
        return None
    return "-".join(part for part in match.groups() if part is not None).lower()


def query_pairs(query_string: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs of a raw query string, in order: what
    ``parse_qsl(query_string, keep_blank_values=True, errors="surrogateescape")`` gives,
    without its work when nothing in the query is escaped."""
    if "%" in query_string or "+" in query_string:
        return parse_qsl(query_string, keep_blank_values=True, errors="surrogateescape")
    pairs = []
    for field in query_string.split("&"):
        if field:
            name, _, value = field.partition("=")
            pairs.append((name, value))
    return pairs


def parse_subscribe_query(
    query_string: str, max_timeout: int, max_categories: int = 1,
    default_timeout: int | None = None,
) -> SubscribeQuery:
    """Validate a subscribe request's query string, in golongpoll's order.

    golongpoll's ``category`` takes the first value given. The extension
    ``categories`` may be repeated, each value one more category to wait on.

    :param query_string: the raw ``QUERY_STRING``.
    :param max_timeout: the longest ``timeout`` allowed.
    :param max_categories: how many categories one request may name.
    :param default_timeout: the ``timeout`` of a query without one (a stream's);
        ``None``: a query must give it, as a long poll must.
    :raises ProtocolError: with the message of the first rule broken.
    """
    params: dict[str, str] = {}
    extra_categories: list[str] = []
    for name, value in query_pairs(query_string):
        params.setdefault(name, value)
        if name == "categories":
            extra_categories.append(value)

    if default_timeout is not None and "timeout" not in params:
        timeout: int | None = default_timeout
    else:
        timeout = _parse_go_int(params.get("timeout", ""))
    if timeout is None or not 1 <= timeout <= max_timeout:
        raise ProtocolError(timeout_error(max_timeout))

    if "category" in params or not extra_categories:
        extra_categories.insert(0, params.get("category", ""))
    if not all(category_is_valid(category) for category in extra_categories):
        raise ProtocolError(CATEGORY_ERROR)
    categories = tuple(dict.fromkeys(extra_categories))  # without repeats, in order
    if len(categories) > max_categories:
        raise ProtocolError(too_many_categories_error(max_categories))

    since_time: int | None = None
    if "since_time" in params:
        since_time = _parse_go_int(params["since_time"])
        if since_time is None:
            raise ProtocolError(SINCE_TIME_ERROR)

    last_id: str | None = None
    raw_last_id = params.get("last_id", "")
    if raw_last_id:
        if since_time is None:
            raise ProtocolError(LAST_ID_WITHOUT_SINCE_TIME_ERROR)
        last_id = canonical_uuid(raw_last_id)
        if last_id is None:
            raise ProtocolError(LAST_ID_ERROR)

    return SubscribeQuery(categories, timeout, since_time, last_id, params.get("token"))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e400 would become inf, which JSON cannot hold: every subscriber would get an
    # answer it cannot parse. golongpoll refuses it too (float64 overflow).
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


#: The most digits an integer in a publish body may have: a double's range ends before
#: 10**309. Checked before the conversion, whose cost grows with the square of the length.
_MAX_INT_DIGITS = 309


def _double_range_int(text: str) -> int:
    # Integers are kept exact, but only within a double's range, as golongpoll (which
    # decodes numbers as float64) accepts them: a longer one is refused, not stored.
    if len(text) - text.startswith("-") > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits is out of range")
    value = int(text)
    try:
        float(value)
    except OverflowError:
        raise ValueError(f"{text} is out of range") from None
    return value


#: The deepest nesting of arrays and objects in a publish body. Deeper values could be
#: decoded but not always encoded again (Python's recursion limit): refused, whatever
#: the stack depth at hand.
MAX_NESTING_DEPTH = 512


def _nesting_exceeds(document: Any, limit: int) -> bool:
    stack = [(document, 1)]  # not recursive: that is the point
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Iterable[Any] = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


#: One decoder for every publish body (``json.loads`` with hooks builds one per call).
_PUBLISH_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_double_range_int
)


def parse_idempotency_key(value: str | None) -> str | None:
    """The ``Idempotency-Key`` header of a publish (an **extension**), or ``None``.

    :raises ProtocolError: unless it is 1 to 255 visible ASCII characters.
    """
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not all("!" <= char <= "~" for char in value):
        raise ProtocolError(IDEMPOTENCY_KEY_ERROR)
    return value


def parse_publish_body(body: bytes) -> PublishBody:
    """Validate a publish request body.

    :raises ProtocolError: with the message of the first rule broken.
    """
    try:
        document = _PUBLISH_DECODER.decode(body.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ProtocolError(PUBLISH_BODY_ERROR) from None
    if body.count(b"[") + body.count(b"{") > MAX_NESTING_DEPTH and _nesting_exceeds(
        document, MAX_NESTING_DEPTH
    ):
        raise ProtocolError(PUBLISH_BODY_ERROR)
    if not isinstance(document, dict):
        raise ProtocolError(PUBLISH_BODY_ERROR)
    category = document.get("category", "")
    if not isinstance(category, str):
        raise ProtocolError(PUBLISH_BODY_ERROR)
    if not category_is_valid(category):
        raise ProtocolError(PUBLISH_CATEGORY_ERROR)
    data = document.get("data")
    if data is None:
        raise ProtocolError(PUBLISH_DATA_ERROR)
    return PublishBody(category, data)


def error_body(message: str) -> bytes:
    """``{"error": "<message>"}``, with golongpoll's space after the colon."""
    return b'{"error": %s}' % json.dumps(message).encode("ascii")


def _gaps_member(gaps: Sequence[Gap]) -> bytes:
    if not gaps:
        return b""
    return b',"gaps":[' + b",".join(gap.to_json() for gap in gaps) + b"]"


def events_body(events: Iterable[Event], gaps: Sequence[Gap] = ()) -> bytes:
    """``{"events":[...]}``, oldest first, each event encoded once; then any gaps."""
    return (
        b'{"events":[' + b",".join(event.to_json() for event in events) + b"]"
        + _gaps_member(gaps) + b"}"
    )


def timeout_body(timestamp: int, gaps: Sequence[Gap] = ()) -> bytes:
    """The answer to a long poll that ended with no events; then any gaps."""
    return (
        b'{"timeout":"no events before timeout","timestamp":%d' % timestamp
        + _gaps_member(gaps) + b"}"
    )


PUBLISH_SUCCESS_BODY = b'{"success": true}'
