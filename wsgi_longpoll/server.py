"""The standalone long-polling server: the seed's ``Server`` on gevent's ``WSGIServer``.

It composes a :class:`~wsgi_longpoll.manager.LongpollManager` and a
:class:`~wsgi_longpoll.middleware.LongpollMiddleware` and serves them on one address.
gevent's server parses HTTP itself and holds thousands of idle long polls cheaply; put a
reverse proxy (nginx) in front of it for TLS, and for the Internet at large.

When the process is not monkey-patched by gevent, the server runs its gevent hub in a
thread of its own, so that the caller's thread stays free (a script or a test can call
it with :mod:`requests` right after :meth:`Server.start`).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent
from gevent.hub import Waiter
from gevent.monkey import is_module_patched
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer, format_date_time
from werkzeug.exceptions import NotFound

from .manager import LongpollManager
from .wsgi.cors import CORSMiddleware
from .wsgi.middleware import Hook, LongpollMiddleware
from .wsgi.monitoring import MonitoringMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["FilePersistorInfo", "Server", "ServerInfo", "parse_address"]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("wsgi_longpoll.access")


@dataclass
class ServerInfo:
    """Where and how the server listens (the seed's ``ServerInfo``).

    :param address: ``":8080"`` (every interface), ``"127.0.0.1:8080"`` or
        ``"[::1]:8080"``; port 0 picks a free port (see :attr:`Server.port`).
    :param timeout_seconds: the longest ``timeout`` a subscriber may ask for; 0 means 110.
    :param subscription_uri: the path of the subscribe endpoint (GET).
    :param handler_to_run_before_subscription: a hook run before each subscribe request.
    :param publish_uri: the path of the publish endpoint (POST).
    :param handler_to_run_before_publish: a hook run before each publish request.
    """

    address: str = ":8080"
    timeout_seconds: int = 110
    subscription_uri: str = "/events"
    handler_to_run_before_subscription: Hook | None = None
    publish_uri: str = "/publish"
    handler_to_run_before_publish: Hook | None = None


@dataclass
class FilePersistorInfo:
    """File persistence settings (the seed's ``FilePersistorInfo``).

    :param use: whether to persist events at all.
    :param file_name: the file events are appended to and read back from on start.
    :param write_buffer_size: bytes buffered before a write.
    :param write_flush_period_seconds: the longest an accepted event may sit unwritten.
    :param fsync: also ``fsync`` the file at each flush, so that a power loss loses no
        more than a crash does (see docs/persistence.md for its cost).
    :param acknowledge_after_write: a publish returns (and is answered) only once its
        event is written, synced too with *fsync*; concurrent publishes share one write.
    """

    use: bool = False
    file_name: str = ""
    write_buffer_size: int = 4096
    write_flush_period_seconds: float = 1
    fsync: bool = False
    acknowledge_after_write: bool = False


def parse_address(address: str) -> tuple[str, int]:
    """Split a Go-style listen address into ``(host, port)``; ``""`` is every interface.

    :raises ValueError: if *address* is not ``host:port`` with a port in 0-65535.
    """
    host, colon, port_text = address.rpartition(":")
    if not colon or not port_text.isdigit():
        raise ValueError(f"invalid address {address!r}: expected host:port, e.g. ':8080'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"invalid address {address!r}: put an IPv6 host in brackets")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"invalid address {address!r}: port must be 0-65535")
    return host, port


def _seconds(duration: float | datetime.timedelta) -> float:
    if isinstance(duration, datetime.timedelta):
        return duration.total_seconds()
    return float(duration)


def _not_found(environ: Any, start_response: Any) -> Any:
    return NotFound()(environ, start_response)


class _Handler(WSGIHandler):  # type: ignore[misc]
    """pywsgi's handler, plus what the server needs to stop quickly and detect hang-ups."""

    busy = False
    provided_date: Any  # pywsgi's: the Date header the application gave, if any
    #: The deadline for the request line and headers of the request being read, if any.
    header_deadline: gevent.Timeout | None = None

    def handle_one_request(self) -> Any:
        # A client must send its request line and headers within header_timeout, counted
        # from the end of the previous response (or the connection), so that one that
        # dribbles them (slowloris) or idles on a keep-alive connection frees its greenlet.
        # The deadline is lifted before the application runs: a long poll is not cut.
        timeout = self.server.header_timeout
        if timeout is None:
            return super().handle_one_request()
        deadline = self.header_deadline = gevent.Timeout(timeout)
        deadline.start()
        try:
            return super().handle_one_request()
        except gevent.Timeout as error:
            if error is not deadline:
                raise
            logger.debug("closing the connection of %s: no complete request within %.1f s",
                         self.client_address, timeout)
            return None
        finally:
            deadline.close()
            self.header_deadline = None

    def handle(self) -> None:
        connections = self.server.connections
        connections.add(self)
        rfile = self.rfile
        try:
            with contextlib.suppress(OSError):  # not TCP
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle()
        finally:
            connections.discard(self)
            # pywsgi drops its file without closing it; closed later by the garbage
            # collector, it would touch the hub that stop() has destroyed by then.
            with contextlib.suppress(OSError):
                rfile.close()

    def handle_one_response(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
        self.busy = True
        try:
            super().handle_one_response()
        finally:
            self.busy = False
            if self.server.closing:
                self.close_connection = True

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        environ["wsgi_longpoll.connection"] = self.socket
        return environ

    def log_request(self) -> None:
        # pywsgi formats the access-log line even when the log is off: skip that work.
        if self.server.access_log:
            super().log_request()

    def finalize_headers(self) -> None:
        if self.provided_date is None:  # pywsgi would format the date for each response
            self.response_headers.append((b"Date", _http_date()))
            self.provided_date = True
        super().finalize_headers()


_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """The current time as an HTTP ``Date`` value, formatted once a second."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, format_date_time(second))
    return _date_cache[1]


class _WSGIServer(WSGIServer):  # type: ignore[misc]
    handler_class = _Handler
    #: Seconds a client has to send a request line and headers; ``None``: no limit.
    header_timeout: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = kwargs.get("log", "default") is not None
        self.connections: set[_Handler] = set()
        self.closing = False

    def close_idle_connections(self) -> None:
        """Close every keep-alive connection that is between requests."""
        for handler in list(self.connections):
            sock = getattr(handler, "socket", None)
            if not handler.busy and sock is not None:
                # shutdown, not close: it wakes a read blocked in the handler's rfile.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class Server:
    """The standalone long-polling server of the seed document.

    :param max_event_buffer_size: events kept per category.
    :param event_time_to_live_seconds: events older than this are never served;
        ``None`` keeps them for ever.
    :param delete_event_after_first_retrieval: remove events once served.
    :param max_body_size: the largest publish body accepted, in bytes.
    :param max_categories_per_request: how many categories one subscribe may name (the
        ``categories`` extension).
    :param access_log: log each request to the ``wsgi_longpoll.access`` logger.
    :param max_categories: categories that may hold events at once (more: 503).
    :param max_waiting_subscribers: subscribers that may wait at once (more: 503).
    :param header_timeout: seconds a client has to send its request line and headers,
        counted from the connection or the end of the previous response (so also the
        longest a keep-alive connection may idle); ``None``: no limit.
    :param cors_origins: origins whose pages may use the endpoints across origins
        (see :class:`~wsgi_longpoll.cors.CORSMiddleware`); empty: none.
    :param cors_allow_credentials: let those pages send cookies and HTTP authentication.
    :param stats_path: serve the statistics as JSON at this path
        (see :class:`~wsgi_longpoll.monitoring.MonitoringMiddleware`); ``None``: off.
    :param metrics_path: serve the statistics in the Prometheus text format here.
    :param health_path: serve a health check for load balancers here.
    :param before_stats: a hook run before the statistics and metrics are answered.
    :param redis_url: keep the events in Redis at this URL, shared with every other
        server pointed at it (see ``docs/scaling.md``); ``None``: in this process.
    :param redis_key_prefix: put before every Redis key, so that several applications
        share one Redis.
    :param app: the WSGI application that answers every other path (default: 404).
    """

    def __init__(
        self,
        *,
        max_event_buffer_size: int = 250,
        event_time_to_live_seconds: float | None = None,
        delete_event_after_first_retrieval: bool = False,
        max_body_size: int = LongpollMiddleware.default_max_body_size,
        max_categories_per_request: int = LongpollMiddleware.default_max_categories_per_request,
        access_log: bool = True,
        max_categories: int = LongpollManager.default_max_categories,
        max_waiting_subscribers: int = LongpollManager.default_max_waiting_subscribers,
        header_timeout: float | None = 30,
        cors_origins: Iterable[str] = (),
        cors_allow_credentials: bool = False,
        stats_path: str | None = None,
        metrics_path: str | None = None,
        health_path: str | None = None,
        before_stats: Hook | None = None,
        redis_url: str | None = None,
        redis_key_prefix: str = "wsgi_longpoll:",
        app: WSGIApplication | None = None,
    ) -> None:
        self._manager_options: dict[str, Any] = {
            "max_event_buffer_size": max_event_buffer_size,
            "event_time_to_live_seconds": event_time_to_live_seconds,
            "delete_event_after_first_retrieval": delete_event_after_first_retrieval,
            "max_categories": max_categories,
            "max_waiting_subscribers": max_waiting_subscribers,
            "redis_url": redis_url,
            "redis_key_prefix": redis_key_prefix,
        }
        if header_timeout is not None and not header_timeout > 0:
            raise ValueError("header_timeout must be more than 0, or None")
        self._header_timeout = header_timeout
        self._cors_origins = list(cors_origins)
        self._cors_allow_credentials = cors_allow_credentials
        self._monitoring: dict[str, Any] = {
            "stats_path": stats_path, "metrics_path": metrics_path,
            "health_path": health_path, "before_stats": before_stats,
        }
        self._middleware_options: dict[str, Any] = {
            "max_body_size": max_body_size,
            "max_categories_per_request": max_categories_per_request,
        }
        self._access_log = access_log
        self._app: WSGIApplication = app or _not_found
        self._lock = threading.Lock()
        self._wsgi_server: _WSGIServer | None = None
        self._manager: LongpollManager | None = None
        self._thread: threading.Thread | None = None
        self._stop_signal: Any = None  # the hub thread's async watcher
        self._shutdown_timeout = 0.0
        self._stopped = threading.Event()
        self._stopped.set()

    @property
    def manager(self) -> LongpollManager:
        """The manager of the running (or last) server; publish to it from Python."""
        if self._manager is None:
            raise RuntimeError("the server has not been started")
        return self._manager

    @property
    def port(self) -> int:
        """The port the server is bound to (useful with port 0)."""
        if self._wsgi_server is None:
            raise RuntimeError("the server has not been started")
        return int(self._wsgi_server.server_port)

    @property
    def running(self) -> bool:
        """Whether the server is started and not yet stopped."""
        return not self._stopped.is_set()

    def start(
        self,
        server_info: ServerInfo,
        file_persistor_info: FilePersistorInfo | None = None,
        listen_and_serve_failure_func: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Bind, start serving, and return; the caller's thread is free afterwards.

        :param server_info: where to listen, the paths, the longest timeout, the hooks.
        :param file_persistor_info: file persistence; off when ``None`` or ``use=False``.
        :param listen_and_serve_failure_func: called with the exception if serving
            fails after ``start`` has returned.
        :raises RuntimeError: if the server is already running (it is left untouched).
        :raises ValueError: for invalid options.
        :raises OSError: if the address cannot be bound or the file cannot be opened.
        """
        with self._lock:
            if self.running:
                raise RuntimeError("the server is already running; stop it first")
            host, port = parse_address(server_info.address)
            if server_info.timeout_seconds < 0:
                raise ValueError("timeout_seconds must be 0 (the default, 110) or more")
            persister = _make_persister(file_persistor_info)
            try:
                manager = LongpollManager(
                    server_info.timeout_seconds, persister=persister, **self._manager_options
                )
                middleware = LongpollMiddleware(
                    self._app,
                    manager,
                    server_info.subscription_uri,
                    server_info.publish_uri,
                    before_subscription=server_info.handler_to_run_before_subscription,
                    before_publish=server_info.handler_to_run_before_publish,
                    **self._middleware_options,
                )

                application = self._wrap(middleware, manager, server_info)

                def make_server() -> _WSGIServer:
                    # Built in the thread whose hub serves it: gevent objects belong to a hub.
                    wsgi_server = _WSGIServer(
                        (host, port),
                        application,
                        spawn=Pool(),  # a pool lets stop() wait for, then end, the handlers
                        log=access_logger if self._access_log else None,
                        error_log=logger,
                    )
                    wsgi_server.header_timeout = self._header_timeout
                    return wsgi_server

                if is_module_patched("threading"):
                    wsgi_server = make_server()
                    wsgi_server.start()
                else:
                    wsgi_server = self._start_thread(make_server, listen_and_serve_failure_func)
            except BaseException:
                if persister is not None:
                    persister.close()
                raise
            self._manager = manager
            self._wsgi_server = wsgi_server
            self._stopped.clear()
            logger.info("serving long polls on %s (port %d)", server_info.address, self.port)

    def _wrap(
        self, middleware: LongpollMiddleware, manager: LongpollManager, info: ServerInfo
    ) -> WSGIApplication:
        """Put the monitoring and CORS middleware, when configured, around *middleware*."""
        application: WSGIApplication = middleware
        endpoints = ("stats_path", "metrics_path", "health_path")
        if any(self._monitoring[name] is not None for name in endpoints):
            application = MonitoringMiddleware(application, manager, **self._monitoring)
        if self._cors_origins:
            paths = [path for path in (info.subscription_uri, info.publish_uri) if path]
            application = CORSMiddleware(
                application, self._cors_origins,
                allow_credentials=self._cors_allow_credentials, paths=paths,
            )
        return application

    def _start_thread(
        self,
        make_server: Callable[[], _WSGIServer],
        failure_func: Callable[[BaseException], None] | None,
    ) -> _WSGIServer:
        started = threading.Event()
        startup_error: list[BaseException] = []
        servers: list[_WSGIServer] = []

        def run() -> None:
            hub = gevent.get_hub()
            waiter = Waiter()
            stop_signal = hub.loop.async_()
            stop_signal.start(waiter.switch, None)
            try:
                wsgi_server = make_server()
                wsgi_server.start()
            except BaseException as error:
                startup_error.append(error)
                started.set()
                stop_signal.close()
                hub.destroy(destroy_loop=True)
                return
            self._stop_signal = stop_signal
            servers.append(wsgi_server)
            started.set()
            try:
                waiter.get()
                self._shutdown(wsgi_server)
            except BaseException as error:  # serving died: tell the caller's callback
                logger.exception("the server's hub thread failed")
                if failure_func is not None:
                    failure_func(error)
            finally:
                stop_signal.close()
                self._stopped.set()
                hub.destroy(destroy_loop=True)

        thread = threading.Thread(target=run, name="wsgi_longpoll-server", daemon=True)
        thread.start()
        started.wait()
        if startup_error:
            thread.join()
            raise startup_error[0]
        self._thread = thread
        return servers[0]

    def _shutdown(self, wsgi_server: _WSGIServer) -> None:
        """Stop accepting, answer waiting subscribers, drain; runs in the server's hub."""
        wsgi_server.closing = True
        wsgi_server.close()
        manager = self.manager
        manager.drain()
        gevent.sleep(0)  # let the released subscribers write their answers
        wsgi_server.close_idle_connections()
        wsgi_server.pool.join(timeout=self._shutdown_timeout)
        wsgi_server.pool.kill(block=True, timeout=1)
        manager.close()

    def stop(self, shutdown_timeout: float | datetime.timedelta = 10) -> None:
        """Stop the server; idempotent, and a no-op on a server never started.

        Every waiting subscriber is answered at once (a timeout answer), idle keep-alive
        connections are closed at once, requests still in progress get up to
        *shutdown_timeout* to finish, and the persister is flushed. ``start`` may be
        called again afterwards.

        :param shutdown_timeout: seconds, or a :class:`datetime.timedelta`.
        """
        timeout = _seconds(shutdown_timeout)
        with self._lock:
            if not self.running or self._wsgi_server is None:
                return
            self._shutdown_timeout = timeout
            thread = self._thread
            if thread is None:  # in the caller's own gevent hub
                self._shutdown(self._wsgi_server)
                self._stopped.set()
                return
            self._stop_signal.send()
            if thread is not threading.current_thread():
                thread.join(timeout + 10)
                if thread.is_alive():
                    logger.error("the server thread did not stop within %.1f s", timeout + 10)
            self._thread = None

    def serve_forever(self) -> None:
        """Block until :meth:`stop` is called (from a signal handler or another thread)."""
        if is_module_patched("threading"):
            while self.running:
                gevent.sleep(0.1)
            return
        while not self._stopped.wait(0.5):  # a short wait keeps Ctrl-C responsive
            pass


def _make_persister(info: FilePersistorInfo | None) -> Any:
    if info is None or not info.use:
        return None
    from .engines.persist import FilePersister

    return FilePersister(
        info.file_name, info.write_buffer_size, info.write_flush_period_seconds, fsync=info.fsync,
        acknowledge_after_write=info.acknowledge_after_write,
    )
