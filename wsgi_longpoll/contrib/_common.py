"""What the framework integrations share: running the middleware inside a view.

The views of :mod:`~wsgi_longpoll.contrib.flask` and :mod:`~wsgi_longpoll.contrib.django`
hand the request to a :class:`~wsgi_longpoll.LongpollMiddleware`, so that their answers
(bodies, statuses, headers, validation order, Server-Sent Events streams) are the
middleware's byte for byte; its ``authorize_subscribe`` and ``authorize_publish`` ask the
framework's authorization callbacks about each category.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import gevent
from gevent.monkey import is_module_patched

from ..manager import LongpollManager
from ..protocol import error_body
from ..wsgi.answers import JSON_HEADERS
from ..wsgi.middleware import LongpollMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "GEVENT_NEEDED",
    "MANAGER_OPTIONS",
    "Answer",
    "manager_from_options",
    "run_middleware",
    "threaded_server_refusal",
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
    """A WSGI answer: status line, headers, and the body's chunks.

    :attr:`streaming` answers (a Server-Sent Events stream, a static file) are iterators
    the framework must pass on as they come and close; the others are one list.
    """

    __slots__ = ("status", "headers", "chunks")

    def __init__(
        self, status: str, headers: list[tuple[str, str]], chunks: Iterable[bytes]
    ) -> None:
        self.status = status
        self.headers = headers
        self.chunks = chunks

    @property
    def status_code(self) -> int:
        """The status as a number."""
        return int(self.status.split(" ", 1)[0])

    @property
    def reason(self) -> str:
        """The status line's reason phrase."""
        return self.status.split(" ", 1)[1]

    @property
    def streaming(self) -> bool:
        """Whether the body is an iterator to stream rather than a list of bytes."""
        return not isinstance(self.chunks, list)

    @property
    def body(self) -> bytes:
        """The whole body of an answer that is not :attr:`streaming`."""
        assert isinstance(self.chunks, list)
        return b"".join(self.chunks)


def run_middleware(middleware: LongpollMiddleware, environ: WSGIEnvironment) -> Answer:
    """Call *middleware* with *environ*; its status and headers are known on return.

    A stream's first chunk is read here, so that a middleware that calls
    ``start_response`` only when its iterator starts is handled too.
    """
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        started[:] = [(status, list(headers))]
        return _no_write

    chunks: Iterable[bytes] = middleware(environ, start_response)
    if not isinstance(chunks, list) and not started:
        chunks = _primed(chunks)
    if not started:
        raise RuntimeError("the long-poll middleware answered without calling start_response")
    status, headers = started[0]
    return Answer(status, headers, chunks)


def _primed(chunks: Iterable[bytes]) -> list[bytes] | Iterator[bytes]:
    iterator = iter(chunks)
    try:
        first = next(iterator)
    except StopIteration:
        _close(chunks)
        return []
    return _chain(first, iterator, chunks)


def _chain(first: bytes, rest: Iterator[bytes], original: Iterable[bytes]) -> Iterator[bytes]:
    try:
        yield first
        yield from rest
    finally:
        _close(original)


def _close(chunks: Iterable[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


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


def threaded_server_refusal(
    environ: WSGIEnvironment, command: str, logger: logging.Logger
) -> Answer | None:
    """The 500 answer to a long poll or publish served by a threaded server without gevent
    (``flask run``, ``manage.py runserver``), naming *command*, the framework's
    development server that holds long polls; ``None`` under any other server.

    The refusal is logged to *logger*.
    """
    if not environ.get("wsgi.multithread") or is_module_patched("threading"):
        return None
    message = (
        "This server runs each request in a thread, where a long poll cannot wait (it "
        f"would hold a whole thread). For development, run {command} instead (this "
        "package's server, with code reload); in production, gunicorn -k "
        "wsgi_longpoll.server.gunicorn.LongpollWorker (see docs/frameworks.md)."
    )
    logger.error("refusing %s: %s", environ.get("PATH_INFO"), message)
    return Answer("500 Internal Server Error", list(JSON_HEADERS), [error_body(message)])


#: The manager's options each integration takes from its configuration, by their
#: configuration names (``LONGPOLL_<name>`` in Flask, ``settings.LONGPOLL[<name>]``).
MANAGER_OPTIONS = (
    "MAX_LONGPOLL_TIMEOUT_SECONDS",
    "MAX_EVENT_BUFFER_SIZE",
    "EVENT_TIME_TO_LIVE_SECONDS",
    "DELETE_EVENT_AFTER_FIRST_RETRIEVAL",
    "MAX_CATEGORIES",
    "MAX_WAITING_SUBSCRIBERS",
    "REDIS_URL",
    "REDIS_KEY_PREFIX",
)


def manager_from_options(options: Any, prefix: str = "") -> LongpollManager:
    """A :class:`LongpollManager` built from the :data:`MANAGER_OPTIONS` of the mapping
    *options*, each looked up as *prefix* + its name."""
    return LongpollManager(**{name.lower(): options[prefix + name] for name in MANAGER_OPTIONS})
