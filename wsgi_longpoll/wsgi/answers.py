"""The answers of the WSGI layer, written once: JSON errors and their headers, hook
verdicts, 404, and 503 with ``Retry-After``.

Every part of the layer (the middleware, monitoring, auth, CORS, the demo) and the server
answers through these, so that an error looks the same wherever it comes from:
``{"error": "<message>"}`` with ``Content-Type: application/json`` and
``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from werkzeug.wrappers import Request, Response

from ..errors import CapacityExceeded, LongpollError, ManagerClosed, OutcomeUnknown
from ..protocol import OUTCOME_UNKNOWN_ERROR, error_body

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "HOOK_FORBIDDEN_ERROR",
    "JSON_HEADERS",
    "RETRY_AFTER_SECONDS",
    "Hook",
    "RateLimitedLog",
    "CATEGORY_FORBIDDEN_ERROR",
    "Refusal",
    "error_response",
    "refusal",
    "refuse",
    "for_method",
    "json_error",
    "not_found",
    "respond",
    "retry_later",
    "run_hook",
]

#: A hook run before a request is answered: ``True`` goes on, ``False`` answers 403, a
#: :class:`~werkzeug.wrappers.Response` is sent as it is.
Hook = Callable[[Request], bool | Response]

#: The headers of every JSON answer.
JSON_HEADERS: Sequence[tuple[str, str]] = (
    ("Content-Type", "application/json"),
    ("X-Content-Type-Options", "nosniff"),
)

#: What ``Retry-After`` says with a 503: the server is at capacity or its store is down.
RETRY_AFTER_SECONDS = "1"

#: The message of a 403 from a hook that returned ``False``.
HOOK_FORBIDDEN_ERROR = "Forbidden: rejected by the server's hook."
#: The message of a 403 from an authorize function that refused a category.
CATEGORY_FORBIDDEN_ERROR = "Forbidden: not authorized for this category."


class Refusal(NamedTuple):
    """How a subscribe or publish the manager refused is answered."""

    status: str
    message: str
    #: Whether to say ``Retry-After`` (the same request may succeed in a moment).
    retry_after: bool


def refusal(error: LongpollError) -> Refusal:
    """The answer to a manager's refusal; logged, at most once per 10 s with a count,
    since refusals come in floods when the server is at capacity or its store is down."""
    if isinstance(error, CapacityExceeded):
        _refusals.log(logging.WARNING, "answering 503: %s", error)
        return Refusal("503 Service Unavailable",
                       f"The server is at capacity: {error}. Try again later.", True)
    if isinstance(error, ManagerClosed):
        return Refusal("503 Service Unavailable", "The server is shutting down.", False)
    if isinstance(error, OutcomeUnknown):
        _refusals.log(logging.ERROR, "answering 504: %s", error)
        return Refusal("504 Gateway Timeout", OUTCOME_UNKNOWN_ERROR, False)
    _refusals.log(logging.ERROR, "answering 503: %s", error)
    return Refusal("503 Service Unavailable",
                   "The event store is unavailable. Try again later.", True)


def refuse(
    start_response: StartResponse, error: LongpollError,
    headers: Iterable[tuple[str, str]] = JSON_HEADERS,
) -> list[bytes]:
    """Answer the manager's refusal *error* (see :func:`refusal`)."""
    answer = refusal(error)
    if answer.retry_after:
        headers = [*headers, ("Retry-After", RETRY_AFTER_SECONDS)]
    return json_error(start_response, answer.status, answer.message, headers)


def respond(
    start_response: StartResponse, status: str, headers: Iterable[tuple[str, str]],
    body: bytes,
) -> list[bytes]:
    """Start the answer with *headers* and its ``Content-Length``; *body* is the answer."""
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    return [body]


def json_error(
    start_response: StartResponse, status: str, message: str,
    headers: Iterable[tuple[str, str]] = JSON_HEADERS,
) -> list[bytes]:
    """Answer ``{"error": message}`` with *status*."""
    return respond(start_response, status, headers, error_body(message))


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """``{"error": message}`` as a werkzeug :class:`~werkzeug.wrappers.Response`
    (what a hook returns to answer itself)."""
    return Response(error_body(message), status, headers={**dict(JSON_HEADERS), **(headers or {})})


def retry_later(
    start_response: StartResponse, message: str,
    headers: Iterable[tuple[str, str]] = JSON_HEADERS,
) -> list[bytes]:
    """Answer 503 with ``Retry-After`` and ``{"error": message}``."""
    return json_error(start_response, "503 Service Unavailable", message,
                      [*headers, ("Retry-After", RETRY_AFTER_SECONDS)])


def for_method(environ: WSGIEnvironment, answer: Iterable[bytes]) -> Iterable[bytes]:
    """*answer*, or, for ``HEAD``, no body at all (its status and headers are sent)."""
    if environ.get("REQUEST_METHOD") != "HEAD":
        return answer
    close = getattr(answer, "close", None)
    if close is not None:
        close()
    return []


def not_found(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    """Answer 404 ``{"error": "Not found."}``."""
    return json_error(start_response, "404 Not Found", "Not found.")


def run_hook(
    hook: Hook | None, environ: WSGIEnvironment, start_response: StartResponse,
    headers: Iterable[tuple[str, str]] = JSON_HEADERS,
) -> Iterable[bytes] | None:
    """Run *hook* on the request; return the rejection to send, or ``None`` to go on.

    :raises TypeError: if the hook returns anything but ``True``, ``False`` or a Response.
    """
    if hook is None:
        return None
    verdict = hook(Request(environ))
    if verdict is True:
        return None
    if isinstance(verdict, Response):
        return verdict(environ, start_response)
    if verdict is False:
        return json_error(start_response, "403 Forbidden", HOOK_FORBIDDEN_ERROR, headers)
    raise TypeError(f"a hook must return True, False or a Response, not {verdict!r}")


class RateLimitedLog:
    """Logs a repeated message once per *interval*, saying how many were left out.

    An attacker who makes the server refuse thousands of requests a second must not also
    fill its logs with a line for each.

    :param logger: where to log.
    :param interval: the least time between two lines, in seconds.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._next = 0.0
        self._left_out = 0

    def log(self, level: int, message: str, *args: object) -> None:
        """Log *message* (``%`` formatted with *args*) unless one was logged lately."""
        now = time.monotonic()
        if now < self._next:
            self._left_out += 1
            return
        self._next = now + self.interval
        if self._left_out:
            message += " (and %d more like it in the last %.0f s)"
            args = (*args, self._left_out, self.interval)
            self._left_out = 0
        self.logger.log(level, message, *args)


_refusals = RateLimitedLog(logging.getLogger("wsgi_longpoll.refusals"))
