"""The answers of the WSGI layer, written once: JSON errors and their headers, hook
verdicts, 404, and 503 with ``Retry-After``.

Every part of the layer (the middleware, monitoring, auth, CORS, the demo) and the server
answers through these, so that an error looks the same wherever it comes from:
``{"error": "<message>"}`` with ``Content-Type: application/json`` and
``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request, Response

from ..endpoints import (
    CATEGORY_FORBIDDEN_ERROR,
    HOOK_FORBIDDEN_ERROR,
    RETRY_AFTER_SECONDS,
    Answer,
    Headers,
    RateLimitedLog,
    error_answer,
    refusal,
)
from ..endpoints import (
    JSON_HEADERS as _JSON,
)
from ..errors import LongpollError
from ..protocol import error_body

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "HOOK_FORBIDDEN_ERROR",
    "JSON_HEADERS",
    "RETRY_AFTER_SECONDS",
    "Hook",
    "RateLimitedLog",
    "CATEGORY_FORBIDDEN_ERROR",
    "error_response",
    "refuse",
    "send",
    "answer_from_response",
    "for_method",
    "hook_verdict",
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
JSON_HEADERS: Sequence[tuple[str, str]] = _JSON.items


def refuse(
    start_response: StartResponse, error: LongpollError,
    headers: Iterable[tuple[str, str]] = JSON_HEADERS,
) -> list[bytes]:
    """Answer the manager's refusal *error* (see :func:`~wsgi_longpoll.endpoints.refusal`)."""
    return send(start_response, refusal(error, Headers(list(headers))))


def send(start_response: StartResponse, answer: Answer) -> list[bytes]:
    """Send an :class:`~wsgi_longpoll.endpoints.Answer` of the endpoints."""
    return respond(start_response, answer.status, answer.headers.items, answer.body)


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


def answer_from_response(response: Response, environ: WSGIEnvironment) -> Answer:
    """A werkzeug *response* (what a hook returns to answer itself) as an
    :class:`~wsgi_longpoll.endpoints.Answer`."""
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], object]:
        started[:] = [status, headers]
        return _no_write

    chunks = response(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    status, headers = started
    return Answer(status, Headers([(name, value) for name, value in headers
                                   if name.lower() != "content-length"]), body)


def _no_write(data: bytes) -> object:
    raise RuntimeError("a hook's response must not use write()")


def hook_verdict(hook: Hook, environ: WSGIEnvironment, headers: Headers) -> Answer | None:
    """Run *hook* on the request: ``None`` to go on, else the answer to send (a 403 with
    *headers*, or the hook's own response).

    :raises TypeError: if the hook returns anything but ``True``, ``False`` or a Response.
    """
    verdict = hook(Request(environ))
    if verdict is True:
        return None
    if isinstance(verdict, Response):
        return answer_from_response(verdict, environ)
    if verdict is False:
        return error_answer("403 Forbidden", HOOK_FORBIDDEN_ERROR, headers)
    raise TypeError(f"a hook must return True, False or a Response, not {verdict!r}")


def run_hook(
    hook: Hook | None, environ: WSGIEnvironment, start_response: StartResponse,
    headers: Iterable[tuple[str, str]] = JSON_HEADERS,
) -> Iterable[bytes] | None:
    """Run *hook* on the request; return the rejection to send, or ``None`` to go on.

    :raises TypeError: if the hook returns anything but ``True``, ``False`` or a Response.
    """
    if hook is None:
        return None
    answer = hook_verdict(hook, environ, Headers(list(headers)))
    return None if answer is None else send(start_response, answer)
