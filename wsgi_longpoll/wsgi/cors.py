"""CORS: let pages on other origins use the long-poll endpoints from a browser.

Nothing is shared across origins unless an origin is on the allow-list. Preflight
requests (``OPTIONS`` with ``Access-Control-Request-Method``) are answered here; other
requests go to the wrapped application, and the answers of allowed origins get the
``Access-Control-*`` headers a browser needs. Its options (:class:`CORSOptions`) are
those of every entry point: ``Server(cors_origins=...)``, ``--cors-origins``,
``LONGPOLL_CORS_ORIGINS`` in Flask, ``LONGPOLL["CORS_ORIGINS"]`` in Django.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..options import at_least, check_options, option
from .answers import JSON_HEADERS, json_error

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["CORSMiddleware", "CORSOptions"]

logger = logging.getLogger(__name__)

_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+")
#: An HTTP header name (RFC 9110's token).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _origin_problem(origin: str) -> str | None:
    if origin == "*" or _ORIGIN.fullmatch(origin.strip().lower()):
        return None
    return (f"has an invalid origin {origin!r}: expected scheme://host[:port] with no path, "
            "e.g. 'https://app.example.com', or '*'")


def _header_problem(name: str) -> str | None:
    if _TOKEN.fullmatch(name.strip()):
        return None
    return f"has an invalid header name {name!r}"


def _header_list(names: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(name.strip() for name in names if name.strip()))


@dataclass(frozen=True, kw_only=True)
class CORSOptions:
    """Which pages of other origins may use the endpoints, and how (each option defined
    once, see :mod:`wsgi_longpoll.options`); off while *origins* is empty.

    :param origins: origins (``scheme://host[:port]``) whose pages may read the
        answers, or ``("*",)`` for any origin (not together with credentials).
    :param allow_credentials: let the browser send cookies and HTTP authentication
        (``fetch(..., {credentials: "include"})``).
    :param allow_headers: the request headers those pages may send. ``"*"``, the
        default, admits whatever a preflight asks for: ``Content-Type``,
        ``Authorization``, our clients' ``Idempotency-Key`` and ``Last-Event-ID``, and the
        headers a page adds (our client's ``headers``, golongpoll's
        ``extraRequestHeaders``); unlike a literal ``*`` in the answer, this works with
        credentials and covers ``Authorization``. A list admits those names alone.
    :param max_age: seconds a browser may cache a preflight answer.
    :raises TypeError: naming the option, for a value of the wrong type.
    :raises ValueError: for an invalid origin or header name, ``"*"`` with credentials,
        or a negative *max_age*.
    """

    origins: tuple[str, ...] = option(
        (), name="cors_origins", check=_origin_problem, metavar="ORIGIN",
        aliases=["--cors-origin"],
        help="origins (e.g. https://app.example.com, or '*') whose pages may subscribe and "
        "publish across origins; none by default",
    )
    allow_credentials: bool = option(
        False, name="cors_allow_credentials",
        help="let those pages send cookies and HTTP authentication (not with the origin '*')",
    )
    allow_headers: tuple[str, ...] = option(
        ("*",), name="cors_allow_headers", check=_header_problem, metavar="HEADER",
        help="the request headers those pages may send; '*': any a preflight asks for "
        "(Authorization, Idempotency-Key, Last-Event-ID and a page's own headers included)",
    )
    max_age: int = option(
        600, name="cors_max_age", check=at_least(0),
        help="seconds a browser may cache the answer to a preflight",
    )

    def __post_init__(self) -> None:
        check_options(self)
        if "*" in self.origins and self.allow_credentials:
            raise ValueError("cors_allow_credentials needs a list of origins, not '*'")


class CORSMiddleware:
    """Adds CORS headers for an allow-list of origins and answers their preflights.

    A request whose ``Origin`` is not on the list gets no CORS headers, so the browser
    keeps the answer from the page; a preflight from such an origin gets 403. Wrap the
    :class:`~wsgi_longpoll.middleware.LongpollMiddleware` (or the whole application):

    .. code-block:: python

        app.wsgi_app = CORSMiddleware(
            LongpollMiddleware(app.wsgi_app, manager), ["https://app.example.com"]
        )

    :param app: the WSGI application to wrap.
    :param allowed_origins: origins (``scheme://host[:port]``) allowed to read the answers,
        or ``["*"]`` for any origin (not together with credentials).
    :param allow_credentials: let the browser send cookies and HTTP authentication
        (``fetch(..., {credentials: "include"})``); off by default.
    :param allow_methods: the methods a cross-origin page may use.
    :param allow_headers: the request headers a cross-origin page may send; ``"*"``:
        any a preflight asks for (see :class:`CORSOptions`).
    :param expose_headers: the response headers a cross-origin page may read.
    :param max_age: seconds a browser may cache a preflight answer.
    :param paths: the ``PATH_INFO`` values CORS applies to; ``None``: every path.
    :raises ValueError: for an invalid origin, ``"*"`` with credentials, or a negative
        *max_age*.
    """

    #: The default ``allow_methods``.
    default_allow_methods = ("GET", "POST")
    #: The default ``expose_headers``: ``Retry-After`` comes with a 503 at capacity.
    default_expose_headers = ("Retry-After",)

    def __init__(
        self,
        app: WSGIApplication,
        allowed_origins: Iterable[str],
        *,
        allow_credentials: bool = CORSOptions.allow_credentials,
        allow_methods: Iterable[str] = default_allow_methods,
        allow_headers: Iterable[str] = CORSOptions.allow_headers,
        expose_headers: Iterable[str] = default_expose_headers,
        max_age: int = CORSOptions.max_age,
        paths: Iterable[str] | None = None,
    ) -> None:
        if isinstance(allowed_origins, str):
            raise TypeError("allowed_origins must be a list of origins, not one string")
        #: The options, checked.
        self.options = CORSOptions(
            origins=tuple(allowed_origins), allow_credentials=allow_credentials,
            allow_headers=tuple(allow_headers), max_age=max_age,
        )
        origins = {origin if origin == "*" else origin.strip().lower()
                   for origin in self.options.origins}
        self.any_origin = "*" in origins
        self.app = app
        self.allowed_origins = frozenset(origins - {"*"})
        self.allow_credentials = allow_credentials
        self.allow_methods = _header_list(method.upper() for method in allow_methods)
        #: Whether any header a preflight asks for is allowed (``"*"``).
        self.any_header = "*" in self.options.allow_headers
        self.allow_headers = _header_list(self.options.allow_headers)
        self.expose_headers = _header_list(expose_headers)
        self.max_age = max_age
        self.paths = None if paths is None else frozenset(paths)

    @classmethod
    def from_options(
        cls, app: WSGIApplication, options: CORSOptions, *, paths: Iterable[str] | None = None
    ) -> CORSMiddleware:
        """The middleware that *options* describe, around *app*."""
        return cls(app, options.origins, allow_credentials=options.allow_credentials,
                   allow_headers=options.allow_headers, max_age=options.max_age, paths=paths)

    def origin_allowed(self, origin: str) -> bool:
        """Whether a page on *origin* may read the answers."""
        return self.any_origin or origin.lower() in self.allowed_origins

    def _allow_origin_headers(self, origin: str) -> list[tuple[str, str]]:
        if self.any_origin:
            headers = [("Access-Control-Allow-Origin", "*")]
        else:
            headers = [("Access-Control-Allow-Origin", origin)]
        if self.allow_credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        origin = environ.get("HTTP_ORIGIN")
        if self.paths is not None and environ.get("PATH_INFO", "") not in self.paths:
            return self.app(environ, start_response)
        vary = [] if self.any_origin else [("Vary", "Origin")]
        if (
            environ.get("REQUEST_METHOD") == "OPTIONS"
            and origin is not None
            and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ
        ):
            requested = environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "")
            return self._preflight(origin, requested, start_response, vary)
        if origin is None or not self.origin_allowed(origin):
            if not vary:
                return self.app(environ, start_response)
            return self.app(environ, _adding_headers(start_response, vary))
        headers = [*vary, *self._allow_origin_headers(origin)]
        if self.expose_headers:
            headers.append(("Access-Control-Expose-Headers", self.expose_headers))
        return self.app(environ, _adding_headers(start_response, headers))

    def _preflight(
        self, origin: str, requested_headers: str, start_response: StartResponse,
        vary: list[tuple[str, str]],
    ) -> list[bytes]:
        if not self.origin_allowed(origin):
            logger.info("refused a CORS preflight from origin %r", origin)
            return json_error(start_response, "403 Forbidden",
                              "Cross-origin requests from this origin are not allowed.",
                              [*vary, *JSON_HEADERS])
        allow_headers = self.allow_headers
        if self.any_header:  # what this preflight asks for: the answer varies with it
            allow_headers = _header_list(
                name for name in requested_headers.split(",") if _TOKEN.fullmatch(name.strip())
            )
            names = [value for _, value in vary] + ["Access-Control-Request-Headers"]
            vary = [("Vary", ", ".join(names))]
        headers = [
            *vary,
            *self._allow_origin_headers(origin),
            ("Access-Control-Allow-Methods", self.allow_methods),
            ("Access-Control-Max-Age", str(self.max_age)),
            ("Content-Length", "0"),
        ]
        if allow_headers:
            headers.append(("Access-Control-Allow-Headers", allow_headers))
        start_response("204 No Content", headers)
        return []


def _adding_headers(start_response: StartResponse, extra: list[tuple[str, str]]) -> StartResponse:
    """*start_response*, adding the *extra* headers the application did not set itself."""

    def start_response_with_headers(
        status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None, /
    ) -> Callable[[bytes], object]:
        headers = list(headers)
        present = {name.lower(): index for index, (name, _) in enumerate(headers)}
        for name, value in extra:
            index = present.get(name.lower())
            if index is None:
                headers.append((name, value))
            elif name.lower() == "vary":
                existing = headers[index][1]
                if value.lower() not in (part.strip().lower() for part in existing.split(",")):
                    headers[index] = (headers[index][0], f"{existing}, {value}")
        return start_response(status, headers, exc_info)

    return start_response_with_headers
