"""The chat demo: a page at ``/`` built on the browser client, and the package's static files.

``wsgi-longpoll serve`` serves it on every path that is not a long-poll endpoint; it works
behind :class:`~wsgi_longpoll.middleware.LongpollMiddleware` or a standalone
:class:`~wsgi_longpoll.server.Server` as any WSGI application does:

.. code-block:: python

    server = Server(app=DemoApp())
    server.start(ServerInfo(address="127.0.0.1:8080"))   # then open http://127.0.0.1:8080/

Paths:

- ``/``: the chat page (``static/demo/index.html``), told where the subscription and publish
  endpoints are and which category to chat in;
- ``/static/...``: the files of ``wsgi_longpoll/static``: the browser client
  (``longpoll.js``, ``longpoll.global.js``) and the page's ``demo/demo.js`` and
  ``demo/demo.css``;
- ``/favicon.ico``: an empty answer (204) when no *app* is given (the page itself names
  an empty ``data:`` icon, so browsers do not ask);
- anything else: 404, or the *app* given.

The page is sent with security headers (:data:`PAGE_SECURITY_HEADERS`): a Content
Security Policy that allows only the page's own scripts, styles and connections, no
framing, and no referrer.
"""

from __future__ import annotations

import html
import importlib.resources
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from werkzeug.exceptions import MethodNotAllowed
from werkzeug.middleware.shared_data import SharedDataMiddleware
from werkzeug.wrappers import Response

from ..endpoints import EndpointOptions
from .answers import not_found

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["PAGE_SECURITY_HEADERS", "STATIC_PREFIX", "DemoApp"]

#: Where :class:`DemoApp` serves the package's static files.
STATIC_PREFIX = "/static"

#: How long browsers may keep a static file before they ask again, in seconds.
STATIC_CACHE_SECONDS = 3600

#: Sent with the chat page: it loads only its own files and talks only to its own origin.
PAGE_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

_PAGE_ATTRIBUTE = re.compile(r'data-(subscribe-url|publish-url|category|timeout-seconds)="[^"]*"')


class DemoApp:
    """The chat page at ``/`` and the package's static files under ``/static/``.

    :param subscription_path: the subscription endpoint the page polls.
    :param publish_path: the publish endpoint the page posts to.
    :param category: the category the chat uses.
    :param timeout_seconds: the long-poll timeout the page asks for; at most the server's
        maximum.
    :param app: the application for every other path (default: 404).
    """

    def __init__(
        self,
        subscription_path: str = cast(str, EndpointOptions.subscription_path),
        publish_path: str = cast(str, EndpointOptions.publish_path),
        category: str = "chat",
        timeout_seconds: int = 45,
        app: WSGIApplication | None = None,
    ) -> None:
        if not category:
            raise ValueError("category must not be empty")
        if timeout_seconds < 1:
            raise ValueError(f"timeout_seconds must be at least 1, not {timeout_seconds!r}")
        values = {
            "subscribe-url": subscription_path,
            "publish-url": publish_path,
            "category": category,
            "timeout-seconds": str(timeout_seconds),
        }
        template = (
            importlib.resources.files("wsgi_longpoll")
            .joinpath("static/demo/index.html")
            .read_text(encoding="utf-8")
        )
        self.page = _PAGE_ATTRIBUTE.sub(
            lambda match: f'data-{match[1]}="{html.escape(values[match[1]])}"', template
        ).encode("utf-8")
        self._serves_favicon = app is None
        self.app: WSGIApplication = SharedDataMiddleware(
            app or not_found,
            {STATIC_PREFIX: ("wsgi_longpoll", "static")},
            cache_timeout=STATIC_CACHE_SECONDS,
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        is_ours = path in ("/", "/index.html") or path.startswith(STATIC_PREFIX + "/")
        if is_ours and not path.isprintable():  # a NUL (%00) or a control character
            return not_found(environ, start_response)
        if is_ours and method not in ("GET", "HEAD"):
            return MethodNotAllowed(valid_methods=["GET", "HEAD"])(environ, start_response)
        if path in ("/", "/index.html"):
            response = Response(self.page, content_type="text/html; charset=utf-8")
            response.headers["Cache-Control"] = "no-cache"
            response.headers.extend(PAGE_SECURITY_HEADERS)
            return response(environ, start_response)
        if path == "/favicon.ico" and self._serves_favicon and method in ("GET", "HEAD"):
            response = Response(status=204)
            del response.headers["Content-Type"]  # no content, no type
            response.headers["Cache-Control"] = f"max-age={STATIC_CACHE_SECONDS}, public"
            return response(environ, start_response)
        return self.app(environ, start_response)
