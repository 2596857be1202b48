"""A gunicorn worker running this package's HTTP/1.1 server, on gevent.

``gunicorn -k wsgi_longpoll.server.gunicorn.LongpollWorker app:application`` serves the
application gunicorn loads with :class:`~.http.HTTPServer`. Every long poll and stream is
parked on its socket and answered from the publisher (:mod:`.longpoll`), whoever decided
to hold it:

- a :class:`~wsgi_longpoll.wsgi.middleware.LongpollMiddleware` in front of the
  application (the application itself, a Flask application whose ``wsgi_app`` is one, or
  the one named by the application's ``wsgi_longpoll_middleware`` attribute): its paths
  are answered natively, without a WSGI environ;
- any other application, through the WSGI bridge: a view of the Flask extension or the
  Django app (or a middleware wrapped in others, such as CORS) hands its hold to the
  server (:data:`~wsgi_longpoll.endpoints.HOLD_KEY`) after the framework's own
  authorization ran, and its headers go with the parked answer.

On SIGTERM the worker stops accepting, answers every parked long poll and ends every
stream at once (each manager a subscriber was parked on drains), closes idle keep-alive
connections and gives requests in progress up to gunicorn's ``graceful_timeout``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import gevent
from gevent.pool import Pool
from gunicorn.http.wsgi import base_environ  # type: ignore[import-untyped,unused-ignore]
from gunicorn.workers.ggevent import GeventWorker  # type: ignore[import-untyped,unused-ignore]

from ..wsgi.middleware import LongpollMiddleware
from . import ServerOptions
from .http import HTTPServer, Limits
from .lifecycle import stop_serving
from .longpoll import LongpollRouter
from .wsgi import WSGIBridge

if TYPE_CHECKING:
    pass

__all__ = ["LongpollWorker", "find_middleware"]

logger = logging.getLogger(__name__)


def find_middleware(app: Any) -> tuple[LongpollMiddleware | None, bool]:
    """The :class:`LongpollMiddleware` of *app*, and whether its paths can be answered
    natively (it answers them before anything else in *app* runs)."""
    named = getattr(app, "wsgi_longpoll_middleware", None)
    if isinstance(named, LongpollMiddleware):
        return named, True
    if isinstance(app, LongpollMiddleware):
        return app, True
    inner = getattr(app, "wsgi_app", None)  # Flask: app.wsgi_app = LongpollMiddleware(...)
    if isinstance(inner, LongpollMiddleware):
        return inner, True
    seen: set[int] = set()
    layer = inner if inner is not None else getattr(app, "app", None)
    for _ in range(16):
        if layer is None or id(layer) in seen:
            break
        seen.add(id(layer))
        if isinstance(layer, LongpollMiddleware):
            return layer, False
        layer = getattr(layer, "app", None) or getattr(layer, "wsgi_app", None)
    return None, False


class LongpollWorker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker with :mod:`wsgi_longpoll.server`'s HTTP/1.1 server.

    gunicorn's settings used: ``worker_connections`` (connections per worker),
    ``graceful_timeout``, ``limit_request_line``, ``limit_request_fields`` and
    ``limit_request_field_size``. The access log is this package's
    (``wsgi_longpoll.access``), written when gunicorn's ``accesslog`` is set.
    """

    #: The largest body of a request to the application (read whole before it runs).
    max_request_body_size = ServerOptions.max_request_body_size
    #: Seconds a client has for its request line and headers (and a keep-alive idle).
    header_timeout = ServerOptions.header_timeout
    #: Seconds a client has for a request body once its headers are in.
    body_timeout = ServerOptions.body_timeout

    def _router(self) -> LongpollRouter:
        cfg = self.cfg
        environ: dict[str, Any] = base_environ(cfg)
        environ.update({"wsgi.multiprocess": cfg.workers > 1,
                        "SERVER_SOFTWARE": environ.get("SERVER_SOFTWARE", "gunicorn")})
        environ.pop("wsgi.input_terminated", None)
        bridge = WSGIBridge(self.wsgi, environ)
        middleware, native = find_middleware(self.wsgi)
        if middleware is None:
            self.log.info("no LongpollMiddleware in front of the application: its requests go "
                          "through the WSGI bridge, and the long polls its views hold (the "
                          "Flask extension's, the Django app's) are parked by the server")
            return LongpollRouter(None, bridge, self.max_request_body_size)
        # The middleware warns, once, of several processes on an in-memory engine; the
        # native path has no environ to show it, so ask now.
        middleware._check_multiprocess({"wsgi.multiprocess": cfg.workers > 1})
        if native:
            self.log.info("long-poll paths answered natively: %s, %s",
                          middleware.subscription_path, middleware.publish_path)
        else:
            self.log.info("the LongpollMiddleware is wrapped in other middleware: its paths "
                          "go through the WSGI bridge, and its long polls are parked")
        return LongpollRouter(middleware, bridge, self.max_request_body_size, native=native)

    def _limits(self) -> Limits:
        cfg = self.cfg
        fields = cfg.limit_request_fields or 32768
        field_size = cfg.limit_request_field_size or 65536
        return Limits(
            header_timeout=max(float(cfg.keepalive), self.header_timeout or 0) or None,
            body_timeout=self.body_timeout,
            max_request_line=cfg.limit_request_line or 65536,
            max_header_count=fields,
            max_header_bytes=min(fields * field_size, 1024 * 1024),
        )

    def run(self) -> None:
        router = self._router()
        limits = self._limits()
        servers: list[HTTPServer] = []
        for listener in self.sockets:
            listener.setblocking(1)
            server = HTTPServer(listener, router, limits, access_log=bool(self.cfg.accesslog),
                                spawn=Pool(self.worker_connections))
            if self.cfg.workers > 1:
                server.max_accept = 1
            server.start()
            servers.append(server)
        while self.alive:
            self.notify()
            gevent.sleep(1.0)
        self._shutdown(servers, router)

    def _shutdown(self, servers: list[HTTPServer], router: LongpollRouter) -> None:
        """Stop accepting, answer parked polls, close idle connections, drain."""
        stop_serving(servers, router, self.cfg.graceful_timeout, tick=self.notify)
