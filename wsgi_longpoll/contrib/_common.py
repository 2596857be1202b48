"""What the framework integrations share: running the middleware inside a view.

The views of :mod:`~wsgi_longpoll.contrib.flask` and :mod:`~wsgi_longpoll.contrib.django`
hand the request to a :class:`~wsgi_longpoll.LongpollMiddleware`, so that their answers
(bodies, statuses, headers, validation order) are the middleware's byte for byte, and add
authorization hooks that see each category a request names.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import gevent
from werkzeug.wrappers import Request

from ..manager import LongpollManager
from ..protocol import ProtocolError, parse_publish_body, parse_subscribe_query
from ..wsgi.middleware import Hook, LongpollMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "GEVENT_NEEDED",
    "Answer",
    "publish_hook",
    "run_middleware",
    "subscribe_hook",
    "verdict",
    "warn_if_not_in_gevent",
]

#: What the integrations log, once, at the first long poll served outside gevent.
GEVENT_NEEDED = (
    "wsgi_longpoll: this long poll is served outside a gevent greenlet, so it holds a whole "
    "worker (thread or process) while it waits, and the server cannot serve anything else "
    "meanwhile. Serve the application with a gevent server: gunicorn -k gevent, gevent's "
    "pywsgi.WSGIServer, or a process monkey-patched by gevent (see docs/frameworks.md)."
)


class Answer:
    """A finished WSGI answer: status line, headers and body."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def status_code(self) -> int:
        """The status as a number."""
        return int(self.status.split(" ", 1)[0])


def run_middleware(middleware: LongpollMiddleware, environ: WSGIEnvironment) -> Answer:
    """Call *middleware* with *environ* and collect its whole answer."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        started[:] = [(status, list(headers))]
        return _no_write

    chunks: Iterable[bytes] = middleware(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if not started:
        raise RuntimeError("the long-poll middleware answered without calling start_response")
    status, headers = started[0]
    return Answer(status, headers, body)


def _no_write(data: bytes) -> object:
    raise RuntimeError("the long-poll middleware does not use write()")


def verdict(callback: Callable[..., object], *args: object) -> bool:
    """``callback(*args)``, which must be a bool.

    :raises TypeError: naming *callback*, if it returns anything else (a forgotten
        ``return`` must not read as a refusal or, worse, a grant).
    """
    verdict = callback(*args)
    if not isinstance(verdict, bool):
        raise TypeError(
            f"the authorization callback {callback!r} must return True or False, "
            f"not {verdict!r}"
        )
    return verdict


def subscribe_hook(
    manager: LongpollManager, max_categories: int, authorize: Callable[[str], bool]
) -> Hook:
    """A ``before_subscription`` hook that asks *authorize* about every category named.

    A request the protocol rejects anyway (wrong method, bad query) is let through, so that
    it gets the protocol's answer; a valid one is refused (403) if *authorize* refuses any
    of its categories, the repeatable ``categories`` included.

    :param manager: the manager the middleware serves (for its longest timeout).
    :param max_categories: the middleware's ``max_categories_per_request``.
    """

    def hook(request: Request) -> bool:
        if request.method != "GET":
            return True
        try:
            query = parse_subscribe_query(
                request.environ.get("QUERY_STRING", ""),
                manager.max_longpoll_timeout_seconds,
                max_categories,
            )
        except ProtocolError:
            return True
        return all(verdict(authorize, category) for category in query.categories)

    return hook


def publish_hook(authorize: Callable[[str], bool]) -> Hook:
    """A ``before_publish`` hook that asks *authorize* about the category published to.

    A request the protocol rejects anyway (wrong method, bad body) is let through, so that
    it gets the protocol's answer.
    """

    def hook(request: Request) -> bool:
        if request.method != "POST":
            return True
        data = request.get_data(cache=False)
        # Put the body back for the framework's own request object (flask.request).
        request.environ["wsgi.input"] = io.BytesIO(data)
        try:
            body = parse_publish_body(data)
        except ProtocolError:
            return True
        return verdict(authorize, body.category)

    return hook


_warned = False


def warn_if_not_in_gevent(logger: logging.Logger) -> bool:
    """Log :data:`GEVENT_NEEDED` once per process if this code runs outside gevent.

    A gevent server (pywsgi, gunicorn's gevent worker) runs each request in a
    :class:`gevent.Greenlet`; a threaded or synchronous server does not.

    :returns: whether it warned now.
    """
    global _warned
    if _warned or isinstance(gevent.getcurrent(), gevent.Greenlet):
        return False
    _warned = True
    logger.warning(GEVENT_NEEDED)
    return True

