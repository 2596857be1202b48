"""The client side, over :mod:`requests`: subscribe to categories and publish events.

:func:`subscription` and :func:`publish` are the seed's Go ``Subscription`` and ``Publish``
with the same parameters in the same order, so a Go caller maps them one to one. They speak
the wire protocol of PROTOCOL.md and work against any golongpoll-compatible server, not only
this package's; nothing here imports the server side.

Where Go and :mod:`requests` differ, this module chose as follows:

- Go's ``*http.Transport`` becomes *transport*: ``None`` (a fresh session for the call), a
  :class:`requests.Session` (used as is, so its connection pool, proxies and defaults carry
  across calls; it is never closed here), or a :class:`requests.adapters.BaseAdapter`
  (mounted for ``http://`` and ``https://`` on a private session made for the call).
- Go's ``map[string][]string`` header becomes a mapping whose values are a string or a
  sequence of strings. :mod:`requests` keeps one value per header name, so a sequence is sent
  as one header whose values are joined with ``", "`` (equivalent under RFC 9110 for every
  list-valued header); an empty sequence sends nothing.
- A :mod:`requests` timeout limits the connect and each read from the socket, not the whole
  exchange as Go's ``http.Client.Timeout`` does.

Two protocol extensions of this package's server (``docs/protocol.md``, "Extensions") are
supported and change nothing on the wire unless used: :attr:`SubscriptionRequest.categories`
waits on several categories with one request, and :attr:`SubscriptionResponse.gaps` says
which categories dropped events the request's cursor had not seen. golongpoll servers ignore
the first (they answer for ``category`` alone) and never send the second.

Errors: a server's answer, whatever its status, is returned, never raised. Only what has no
answer raises, with the :mod:`requests` exception that says why
(:class:`~requests.exceptions.InvalidURL`, :class:`~requests.ConnectionError`,
:class:`~requests.Timeout`, ...), plus :class:`InvalidResponse` for a subscribe answer of
status 200 that is not the protocol's. So everything raised for a request that was sent is a
:class:`requests.RequestException`; bad arguments raise :class:`ValueError` or
:class:`TypeError` before anything is sent.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import BaseAdapter
from requests.auth import HTTPBasicAuth

from ..event import Event, Gap, encode_json

__all__ = [
    "SUBSCRIPTION_TIMEOUT_MARGIN_SECONDS",
    "ClientError",
    "Header",
    "InvalidResponse",
    "PublishRequest",
    "SubscriptionRequest",
    "SubscriptionResponse",
    "Transport",
    "publish",
    "subscription",
]

logger = logging.getLogger(__name__)

#: Seconds that :func:`subscription` waits beyond the long-poll timeout it asks for, so
#: that it never gives up before the server answers. It is also the connect timeout.
SUBSCRIPTION_TIMEOUT_MARGIN_SECONDS = 10.0

#: The host that an empty host (``http://:8080/events``, as Go allows) stands for.
_LOCAL_HOST = "127.0.0.1"

#: Request headers: a name to one value or to several.
Header = Mapping[str, str | Sequence[str]]
#: Go's custom transport: a :class:`requests.Session` (reused), an adapter (mounted for
#: the call), or ``None`` for a new session each call.
Transport = requests.Session | BaseAdapter | None


class ClientError(requests.RequestException):
    """Base class of the errors this module raises itself.

    It derives from :class:`requests.RequestException`, so ``except
    requests.RequestException`` catches every failure of a request that was sent.
    """


class InvalidResponse(ClientError, ValueError):
    """A subscribe answer of status 200 whose body is not one the protocol defines.

    The body must be JSON: ``{"events": [...]}``, ``{"timeout": ...}`` or
    ``{"error": "..."}``. The answer is in :attr:`response`.
    """


@dataclass(slots=True)
class SubscriptionRequest:
    """What :func:`subscription` asks the server for.

    :param category: the category to wait on.
    :param timeout_seconds: how long the server may hold the request (the ``timeout``
        parameter); the server rejects values outside ``1`` to its maximum.
    :param since_time: epoch milliseconds; ask for the events published after it.
        ``0`` leaves it out of the query: only events published from now on.
    :param last_id: the id of the last event seen at ``since_time``, so that events with
        that same timestamp are not missed. ``""`` leaves it out of the query.
    :param categories: more categories to wait on in the same request (an extension of
        this package's server), each sent as one ``categories`` parameter; the answer
        mixes them in publish order and one cursor resumes all of them. Empty (the
        default): the query is golongpoll's. With categories, an empty *category* is left
        out of the query. A server allows 16 categories per request by default.
    """

    category: str
    timeout_seconds: int
    since_time: int = 0
    last_id: str = ""
    categories: Sequence[str] = ()


@dataclass(slots=True)
class PublishRequest:
    """What :func:`publish` sends.

    :param category: the category to publish to; a non-empty string.
    :param data: any JSON-serializable value except ``None``.
    """

    category: str
    data: Any


@dataclass(slots=True)
class SubscriptionResponse:
    """The server's answer to :func:`subscription`.

    :param header: the response headers (a case-insensitive mapping).
    :param status_code: the HTTP status; ``200`` both for events and for a long-poll timeout.
    :param events: the events, oldest first; empty on a timeout, an error or any status
        but 200.
    :param error: the message of a ``{"error": ...}`` answer of status 200 (an invalid
        request), else ``None``. Other statuses are not decoded: look at *status_code*
        (and *refusal*).
    :param timestamp: the server's clock (epoch milliseconds) in a long-poll timeout
        answer, else ``None``.
    :param gaps: one :class:`~wsgi_longpoll.event.Gap` for each category that dropped
        events (for its buffer size or time to live) that the request's cursor had not
        seen, from an events or a timeout answer; empty when the answer has none, as
        always from golongpoll. The answer's events already start from the oldest event
        still buffered: go on from the last event, or, if none came, from the gap's
        cursor.
    :param refusal: the server's message in an answer of another status than 200 (a
        refusal: 400, 401, 403, 404, 503): the ``error`` of its JSON body, or its short
        ``text/plain`` body; else ``None``. (Not in golongpoll's client.)
    """

    header: Mapping[str, str]
    status_code: int
    events: list[Event] = field(default_factory=list)
    error: str | None = None
    timestamp: int | None = None
    gaps: list[Gap] = field(default_factory=list)
    refusal: str | None = None


def subscription(
    raw_url: str,
    header: Header | None,
    request: SubscriptionRequest,
    username: str,
    password: str,
    transport: Transport,
) -> SubscriptionResponse:
    """Wait for events in a category (or several) with one long-poll request.

    Sends ``GET raw_url?category=...&timeout=...`` (with ``since_time`` when it is not 0,
    ``last_id`` when it is not empty, and one ``categories`` for each of
    ``request.categories``) and waits until the server answers with events or its
    timeout passes. The read timeout is ``request.timeout_seconds`` plus
    :data:`SUBSCRIPTION_TIMEOUT_MARGIN_SECONDS`, so the server's answer always comes first.

    To follow a category, call again with ``since_time`` and ``last_id`` set from the last
    event received.

    :param raw_url: the subscription endpoint, e.g. ``"http://localhost:8080/events"``;
        an empty host (``"http://:8080/events"``) means this machine.
    :param header: extra request headers, or ``None``; see the module notes for lists.
    :param request: the categories, timeout and cursor.
    :param username: basic-auth user name; basic auth is sent only when both it and
        *password* are non-empty.
    :param password: basic-auth password.
    :param transport: ``None``, a :class:`requests.Session` to reuse, or a
        :class:`requests.adapters.BaseAdapter` to send through.
    :return: the answer, whatever its status.
    :raises TypeError: before sending, if ``request.categories`` is a string or holds
        something else than strings.
    :raises InvalidResponse: if a 200 answer's body is not one the protocol defines.
    :raises requests.RequestException: if there is no answer: a bad URL
        (:class:`~requests.exceptions.InvalidURL` and kin, also :class:`ValueError`), a
        refused or broken connection (:class:`requests.ConnectionError`), or no answer
        within the timeouts (:class:`requests.Timeout`).
    """
    extra = _extra_categories(request.categories)
    params: list[tuple[str, str | int]] = []
    if request.category or not extra:
        params.append(("category", request.category))
    params.extend(("categories", category) for category in extra)
    params.append(("timeout", request.timeout_seconds))
    if request.since_time != 0:
        params.append(("since_time", request.since_time))
    if request.last_id:
        params.append(("last_id", request.last_id))
    margin = SUBSCRIPTION_TIMEOUT_MARGIN_SECONDS
    read_timeout = max(request.timeout_seconds, 0) + margin

    response = _send(
        "GET",
        raw_url,
        fields=_header_fields(header),
        username=username,
        password=password,
        transport=transport,
        timeout=(margin, read_timeout),
        params=params,
    )
    if response.status_code != 200:
        return SubscriptionResponse(response.headers, response.status_code,
                                    refusal=_error_message(response))
    events, error, timestamp, gaps = _decode_subscription_body(response)
    return SubscriptionResponse(
        response.headers, response.status_code, events, error, timestamp, gaps
    )


def publish(
    raw_url: str,
    timeout: float | datetime.timedelta,
    header: Header | None,
    publish_request: PublishRequest,
    username: str,
    password: str,
    transport: Transport,
) -> requests.Response:
    """Publish one event.

    Sends ``POST raw_url`` with the JSON body ``{"category": ..., "data": ...}`` and
    ``Content-Type: application/json`` (unless *header* gives a ``Content-Type``). The
    server gives the event its id and timestamp and answers ``{"success": true}``.

    :param raw_url: the publish endpoint, e.g. ``"http://localhost:8080/publish"``;
        an empty host (``"http://:8080/publish"``) means this machine.
    :param timeout: seconds, or a :class:`datetime.timedelta`, allowed for the connect and
        for each read; ``0`` means no timeout.
    :param header: extra request headers, or ``None``; see the module notes for lists.
    :param publish_request: the category and the data.
    :param username: basic-auth user name; basic auth is sent only when both it and
        *password* are non-empty.
    :param password: basic-auth password.
    :param transport: ``None``, a :class:`requests.Session` to reuse, or a
        :class:`requests.adapters.BaseAdapter` to send through.
    :return: the response, whatever its status; check ``status_code`` (200 on success).
    :raises ValueError: before sending, if the category is not a non-empty string, the
        data is ``None``, or *timeout* is negative.
    :raises TypeError: before sending, if the data cannot be encoded as JSON.
    :raises requests.RequestException: if there is no answer: a bad URL, a refused or
        broken connection, or no answer within *timeout*.
    """
    category = publish_request.category
    if not isinstance(category, str) or not category:
        raise ValueError(f"publish_request.category must be a non-empty str, not {category!r}")
    if publish_request.data is None:
        raise ValueError("publish_request.data must not be None")
    body = encode_json({"category": category, "data": publish_request.data})

    fields = _header_fields(header)
    if not any(name.lower() == "content-type" for name in fields):
        fields["Content-Type"] = "application/json"

    return _send(
        "POST",
        raw_url,
        fields=fields,
        username=username,
        password=password,
        transport=transport,
        timeout=_timeout_seconds(timeout),
        body=body,
    )


def _send(
    method: str,
    raw_url: str,
    *,
    fields: dict[str, str],
    username: str,
    password: str,
    transport: Transport,
    timeout: float | tuple[float, float] | None,
    params: list[tuple[str, str | int]] | None = None,
    body: bytes | None = None,
) -> requests.Response:
    url = _with_local_host(raw_url)
    # Encoded as UTF-8, as Go does; requests would encode str credentials as Latin-1.
    auth = (
        HTTPBasicAuth(username.encode("utf-8"), password.encode("utf-8"))
        if username and password
        else None
    )
    logger.debug("%s %s", method, url)
    with _session_for(transport) as session:
        response = session.request(
            method,
            url,
            params=params,
            data=body,
            headers=fields,
            auth=auth,
            timeout=timeout,
        )
    logger.debug("%s %s -> %d", method, url, response.status_code)
    return response


@contextmanager
def _session_for(transport: Transport) -> Iterator[requests.Session]:
    if transport is None:
        with requests.Session() as session:
            yield session
    elif isinstance(transport, requests.Session):
        yield transport
    elif isinstance(transport, BaseAdapter):
        session = requests.Session()
        # Mounting replaces the session's default adapters, so it holds only the caller's
        # adapter. The session is not closed: that would close the caller's adapter too.
        session.mount("http://", transport)
        session.mount("https://", transport)
        yield session
    else:
        raise TypeError(
            "transport must be None, a requests.Session or a requests.adapters.BaseAdapter, "
            f"not {type(transport).__name__}"
        )


def _header_fields(header: Header | None) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in (header or {}).items():
        if isinstance(value, str):
            fields[name] = value
        elif value:
            fields[name] = ", ".join(value)
    return fields


def _with_local_host(raw_url: str) -> str:
    """*raw_url* with an empty host (``http://:8080/...``) replaced by the loopback address."""
    try:
        parts = urlsplit(raw_url)
    except ValueError:
        return raw_url  # requests reports it as an invalid URL.
    userinfo, at, host_and_port = parts.netloc.rpartition("@")
    if parts.scheme not in ("http", "https") or not host_and_port.startswith(":"):
        return raw_url
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{_LOCAL_HOST}{host_and_port}"))


def _timeout_seconds(timeout: float | datetime.timedelta) -> float | None:
    seconds = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else timeout
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"timeout must be seconds or a timedelta, not {type(timeout).__name__}")
    if seconds < 0:
        raise ValueError(f"timeout must not be negative, not {timeout!r}")
    return None if seconds == 0 else float(seconds)


def _extra_categories(categories: Sequence[str]) -> list[str]:
    """*categories* as a list, checked: a lone string would be sent one letter at a time."""
    if isinstance(categories, str | bytes):
        raise TypeError(
            f"categories must be a sequence of str, not a single {type(categories).__name__}"
            f" ({categories!r}); write [{categories!r}]"
        )
    extra = list(categories)
    for category in extra:
        if not isinstance(category, str):
            raise TypeError(f"categories must hold str, not {category!r}")
    return extra


def _error_message(response: requests.Response) -> str | None:
    """The server's message in an answer that is not events: the ``error`` of a JSON
    body, or (of another status than 200) a short ``text/plain`` body; else ``None``."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if response.status_code != 200 and content_type == "text/plain":
        text = response.text.strip()
        return text[:_MAX_ERROR_TEXT] if text else None
    return None


#: The most characters of a plain-text refusal kept as its message.
_MAX_ERROR_TEXT = 200


def _decode_subscription_body(
    response: requests.Response,
) -> tuple[list[Event], str | None, int | None, list[Gap]]:
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise _invalid(response, "is not JSON") from exc
    if not isinstance(body, dict):
        raise _invalid(response, "is not a JSON object")
    if "error" in body:
        if not isinstance(body["error"], str):
            raise _invalid(response, "has an 'error' that is not a string")
        return [], body["error"], None, []
    if "events" in body:
        records = body["events"]
        if not isinstance(records, list):
            raise _invalid(response, "has 'events' that is not a list")
        try:
            events = [Event.from_dict(record) for record in records]
        except ValueError as exc:
            raise _invalid(response, f"has an invalid event ({exc})") from exc
        return events, None, None, _decode_gaps(response, body)
    if "timeout" in body:
        timestamp = body.get("timestamp")
        if isinstance(timestamp, bool) or not isinstance(timestamp, int):
            timestamp = None  # golongpoll always sends it; tolerate a server that does not
        return [], None, timestamp, _decode_gaps(response, body)
    raise _invalid(response, "has none of 'events', 'timeout' or 'error'")


def _decode_gaps(response: requests.Response, body: dict[str, Any]) -> list[Gap]:
    records = body.get("gaps")
    if records is None:
        return []
    if not isinstance(records, list):
        raise _invalid(response, "has 'gaps' that is not a list")
    try:
        return [Gap.from_dict(record) for record in records]
    except ValueError as exc:
        raise _invalid(response, f"has an invalid gap ({exc})") from exc


def _invalid(response: requests.Response, problem: str) -> InvalidResponse:
    excerpt = response.content[:200].decode("utf-8", "replace")
    return InvalidResponse(
        f"subscribe answer from {response.url} {problem}: {excerpt!r}", response=response
    )
