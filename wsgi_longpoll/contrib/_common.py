"""What the framework integrations share: their options, and running the middleware
inside a view.

The views of :mod:`~wsgi_longpoll.contrib.flask` and :mod:`~wsgi_longpoll.contrib.django`
hand the request to a :class:`~wsgi_longpoll.LongpollMiddleware`, so that their answers
(bodies, statuses, headers, validation order, Server-Sent Events streams) are the
middleware's byte for byte; its ``authorize_subscribe`` and ``authorize_publish`` ask the
framework's authorization callbacks about each category. Under this package's server,
a poll the middleware holds is parked by the server once the view has returned.

Their options are :data:`CONFIG_OPTIONS`, under the same names as everywhere else
(``LONGPOLL_<NAME>`` in Flask, ``settings.LONGPOLL["<NAME>"]`` in Django), read with
:func:`read_configuration`.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import gevent
from gevent.monkey import is_module_patched

from ..endpoints import EndpointOptions
from ..engines.options import MemoryOptions, RedisOptions
from ..manager import LongpollManager, ManagerOptions
from ..options import Option, build, convert, options_of
from ..protocol import error_body
from ..wsgi.answers import JSON_HEADERS
from ..wsgi.cors import CORSMiddleware, CORSOptions
from ..wsgi.middleware import Authorize, LongpollMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

__all__ = [
    "CONFIG_OPTIONS",
    "GEVENT_NEEDED",
    "MANAGER_OPTIONS",
    "Answer",
    "Configuration",
    "read_configuration",
    "run_middleware",
    "unknown_keys_error",
    "threaded_server_refusal",
    "verdict",
    "warn_if_not_in_gevent",
]

#: Every option an integration takes from its configuration, by name: the manager's,
#: its engine's, the endpoints' and CORS's.
CONFIG_OPTIONS = options_of(ManagerOptions, MemoryOptions, RedisOptions, EndpointOptions,
                            CORSOptions)
#: The options of the manager an integration builds: :class:`LongpollManager`'s keyword
#: arguments.
MANAGER_OPTIONS = options_of(ManagerOptions, MemoryOptions, RedisOptions)


@dataclass(frozen=True)
class Configuration:
    """An integration's options, converted and checked (see :func:`read_configuration`)."""

    #: Every option of :data:`CONFIG_OPTIONS`, by name.
    values: dict[str, Any]
    #: The endpoints' options.
    endpoints: EndpointOptions
    #: CORS's options (off while ``cors.origins`` is empty).
    cors: CORSOptions

    def manager(self) -> LongpollManager:
        """A new manager, with the manager's and engine's options."""
        return LongpollManager(**{name: self.values[name] for name in MANAGER_OPTIONS})

    def application(
        self,
        manager: LongpollManager,
        authorize_subscribe: Authorize,
        authorize_publish: Authorize,
        *,
        paths: tuple[str, str] | None = None,
        client_script_path: str | None = None,
    ) -> tuple[LongpollMiddleware, WSGIApplication]:
        """The middleware a view hands its requests to, and that middleware as the view
        calls it: inside :class:`~wsgi_longpoll.wsgi.cors.CORSMiddleware` when origins are
        allowed.

        :param paths: the subscription and publish paths the middleware answers, where
            the views' own differ from the options' (Django's views use fixed ones).
        :param client_script_path: see :class:`~wsgi_longpoll.LongpollMiddleware`.
        """
        endpoints = asdict(self.endpoints)
        if paths is not None:
            endpoints.update(subscription_path=paths[0], publish_path=paths[1])
        middleware = LongpollMiddleware(
            _not_ours, manager, **endpoints, client_script_path=client_script_path,
            authorize_subscribe=authorize_subscribe, authorize_publish=authorize_publish,
        )
        if not self.cors.origins:
            return middleware, middleware
        return middleware, CORSMiddleware.from_options(middleware, self.cors)


def _not_ours(environ: object, start_response: object) -> list[bytes]:
    raise RuntimeError("the long-poll views only hand over the long-poll paths")


def read_configuration(given: Mapping[str, Any], label: Callable[[Option], str]) -> Configuration:
    """The options *given* by their keys (:attr:`Option.key`, ``MAX_BODY_SIZE``), converted
    (:func:`~wsgi_longpoll.options.convert`: a number given as a string becomes a number)
    and checked, with the defaults of those not given.

    :param label: what an option is called in the configuration (``LONGPOLL_MAX_BODY_SIZE``),
        for the errors.
    :raises ValueError: naming the option, for a value that is not of its type or out of
        range, or options that do not go together.
    """
    values: dict[str, Any] = {
        name: convert(item, given[item.key], label(item)) if item.key in given else item.default
        for name, item in CONFIG_OPTIONS.items()
    }
    build(ManagerOptions, values)
    build(RedisOptions if values["redis_url"] is not None else MemoryOptions, values)
    return Configuration(values, build(EndpointOptions, values), build(CORSOptions, values))


def unknown_keys_error(unknown: Iterable[str], known: Iterable[str], where: str) -> str:
    """The message that refuses the configuration keys *unknown* of *where*, with the
    known keys that come closest."""
    known = sorted(known)
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
    return f"{where} has unknown keys: {', '.join(hints)}; the keys are {', '.join(known)}"

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


def run_middleware(middleware: WSGIApplication, environ: WSGIEnvironment) -> Answer:
    """Call *middleware* (a :class:`~wsgi_longpoll.LongpollMiddleware`, maybe inside
    another) with *environ*; its status and headers are known on return.

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
