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

With more than one worker (``-w 2``), a worker whose application holds a manager on the
in-memory engine refuses to boot, saying why in gunicorn's log, and gunicorn stops (see
:mod:`wsgi_longpoll.multiprocess`; ``WSGI_LONGPOLL_ALLOW_MEMORY_MULTIPROCESS=1`` allows it).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
from gevent.pool import Pool
from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped,unused-ignore]
from gunicorn.http.wsgi import base_environ  # type: ignore[import-untyped,unused-ignore]
from gunicorn.workers.ggevent import GeventWorker  # type: ignore[import-untyped,unused-ignore]

from .. import multiprocess
from ..errors import MemoryEngineInSeveralProcesses
from ..limits import default_max_waiting, open_files_limit
from ..manager import live_managers
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

    gunicorn's settings used: ``worker_connections`` (connections per worker for requests;
    the waiting polls get as many places again as the managers'
    ``max_waiting_subscribers``, so that they never take the places of publishes),
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

    def load_wsgi(self) -> None:
        """Load the application; with several workers, refuse every manager on an
        in-memory engine (see :mod:`wsgi_longpoll.multiprocess`): say why in gunicorn's
        log and stop gunicorn ("Worker failed to boot")."""
        workers = self.cfg.workers
        if workers <= 1:
            super().load_wsgi()
            return
        server, log = f"gunicorn -w {workers}", logging.getLogger("gunicorn.error")
        multiprocess.declare_several_processes(server, log)
        try:
            super().load_wsgi()
        except MemoryEngineInSeveralProcesses:  # a manager built while loading; logged
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        if multiprocess.refusal(live_managers(), server, log) is not None:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

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

    def _connection_limit(self) -> int:
        """The most connections served at once: ``worker_connections`` for requests and
        keep-alive connections, plus every subscriber the application's managers let wait
        (their ``max_waiting_subscribers``; more are answered 503), so that waiting polls
        never take the places of publishes and other requests; at most the open-files
        limit, past which no connection can be accepted anyway. Said once, at boot."""
        managers = live_managers()
        if managers:
            waiting = sum(manager.max_waiting_subscribers for manager in managers)
            whose = "max_waiting_subscribers"
        else:  # a manager built on first use (Django's): the default it will have
            waiting = default_max_waiting()
            whose = "the default max_waiting_subscribers: no manager is built yet"
        requests = int(self.worker_connections)
        limit = requests + waiting
        open_files = open_files_limit()
        if open_files is None or limit <= open_files:
            self.log.info("up to %d connections at once: %d for requests "
                          "(worker_connections) and %d for waiting subscribers (%s)",
                          limit, requests, waiting, whose)
            return limit
        log = self.log.warning if waiting >= open_files else self.log.info
        log("up to %d connections at once, the open-files limit (ulimit -n): %d of them for "
            "waiting subscribers (%s) and the rest for requests (worker_connections is %d)%s",
            open_files, waiting, whose, requests,
            "; raise the limit or lower max_waiting_subscribers, or requests will wait "
            "while subscribers do" if waiting >= open_files else "")
        return open_files

    def run(self) -> None:
        connections = self._connection_limit()
        router = self._router()
        limits = self._limits()
        servers: list[HTTPServer] = []
        for listener in self.sockets:
            listener.setblocking(1)
            server = HTTPServer(listener, router, limits, access_log=bool(self.cfg.accesslog),
                                spawn=Pool(connections))
            if self.cfg.workers > 1:
                server.max_accept = 1
            server.start()
            servers.append(server)
        self._stopping = gevent.event.Event()
        while self.alive:
            self.notify()
            self._stopping.wait(1.0)
        self._shutdown(servers, router)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: stop at once (not at the next heartbeat, up to a second later)."""
        super().handle_exit(sig, frame)
        stopping = getattr(self, "_stopping", None)
        if stopping is not None:
            stopping.set()

    def _shutdown(self, servers: list[HTTPServer], router: LongpollRouter) -> None:
        """Stop accepting, answer parked polls, close idle connections, drain."""
        stop_serving(servers, router, self.cfg.graceful_timeout, tick=self.notify)
