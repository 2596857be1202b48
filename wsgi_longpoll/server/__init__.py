"""The standalone long-polling server: the seed's ``Server``, on an HTTP/1.1 server of ours.

It composes a :class:`~wsgi_longpoll.manager.LongpollManager` and a
:class:`~wsgi_longpoll.wsgi.middleware.LongpollMiddleware` and serves them on one address,
with a gevent ``StreamServer`` whose connections are parsed with httptools (llhttp)
(:mod:`.http`). The long-poll paths are answered natively (:mod:`.longpoll`): a parked
poll is answered straight to its socket by whoever publishes. Every other request goes
to a WSGI application through a small bridge (:mod:`.wsgi`). Put a reverse proxy (nginx)
in front of it for TLS, and for the Internet at large.

When the process is not monkey-patched by gevent, the server runs its gevent hub in a
thread of its own, so that the caller's thread stays free (a script or a test can call
it with :mod:`requests` right after :meth:`Server.start`).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent
from gevent.hub import Waiter
from gevent.monkey import is_module_patched
from gevent.pool import Pool

from ..endpoints import EndpointOptions
from ..engines.options import MemoryOptions, RedisOptions
from ..errors import EventsLost
from ..limits import default_max_waiting, open_files_limit
from ..manager import LongpollManager, ManagerOptions
from ..options import at_least, check_options, more_than, option, option_from, subset
from ..wsgi.answers import not_found
from ..wsgi.cors import CORSMiddleware, CORSOptions
from ..wsgi.middleware import Hook, LongpollMiddleware
from ..wsgi.monitoring import MonitoringMiddleware
from .http import HTTPServer, Limits
from .lifecycle import stop_serving
from .longpoll import LongpollRouter
from .wsgi import WSGIBridge

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from ..engines.persist import FilePersister

__all__ = [
    "FD_PREFIX",
    "FilePersistorInfo",
    "Server",
    "ServerInfo",
    "ServerOptions",
    "default_max_waiting",
    "inherited_socket",
    "open_files_limit",
    "parse_address",
]

logger = logging.getLogger(__name__)


@dataclass
class ServerInfo:
    """Where and how the server listens (the seed's ``ServerInfo``).

    :param address: ``":8080"`` (every interface), ``"127.0.0.1:8080"`` or
        ``"[::1]:8080"``; port 0 picks a free port (see :attr:`Server.port`).
        ``"fd://3"`` serves a listening socket the process inherited as file descriptor
        3 (gunicorn's form; each worker of ``wsgi-longpoll serve --workers`` gets one).
    :param timeout_seconds: the longest ``timeout`` a subscriber may ask for; 0 means 110.
    :param subscription_uri: the path of the subscribe endpoint (GET); ``None`` turns it
        off (the application's own views answer long polls: the Flask extension's and
        the Django app's development servers).
    :param handler_to_run_before_subscription: a hook run before each subscribe request.
    :param publish_uri: the path of the publish endpoint (POST); ``None`` turns it off.
    :param handler_to_run_before_publish: a hook run before each publish request.

    *timeout_seconds*, *subscription_uri* and *publish_uri* are the seed's names of the
    options ``max_longpoll_timeout_seconds``, ``subscription_path`` and ``publish_path``
    (:class:`~wsgi_longpoll.manager.ManagerOptions`,
    :class:`~wsgi_longpoll.endpoints.EndpointOptions`), with their defaults.
    """

    address: str = ":8080"
    timeout_seconds: int = option_from(
        ManagerOptions, "max_longpoll_timeout_seconds", name="timeout_seconds",
        aliases=["--max-longpoll-timeout-seconds"],
    )
    subscription_uri: str | None = option_from(
        EndpointOptions, "subscription_path", name="subscription_uri",
        aliases=["--subscription-path"],
    )
    handler_to_run_before_subscription: Hook | None = None
    publish_uri: str | None = option_from(
        EndpointOptions, "publish_path", name="publish_uri", aliases=["--publish-path"],
    )
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


#: What an address that names an inherited socket starts with (``fd://3``).
FD_PREFIX = "fd://"


def inherited_socket(address: str) -> socket.socket:
    """The listening socket *address* (``fd://N``) names, on a descriptor of its own.

    :raises ValueError: if *address* is not ``fd://`` and a number, or the descriptor is
        not a listening TCP socket.
    """
    number = address[len(FD_PREFIX):]
    if not number.isdigit():
        raise ValueError(f"invalid address {address!r}: expected fd:// and a number")
    try:
        sock = socket.socket(fileno=os.dup(int(number)))
    except OSError as error:
        raise ValueError(f"invalid address {address!r}: {error.strerror}") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.close()
        raise ValueError(f"invalid address {address!r}: not a listening TCP socket")
    sock.setblocking(False)  # shared with other processes: an accept that lost the race
    return sock              # must not block


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


@dataclass(frozen=True, kw_only=True)
class ServerOptions:
    """Every option of :class:`Server` but where it listens (that is :class:`ServerInfo`).

    ``Server(**fields)`` and ``Server(ServerOptions(...))`` are the same; the command line
    (``wsgi-longpoll serve``) is made from its fields. Most are the options of the parts
    the server is made of, copied with their defaults, checks and help: the engine's
    (:class:`~wsgi_longpoll.engines.MemoryOptions`,
    :class:`~wsgi_longpoll.engines.RedisOptions`), the manager's
    (:class:`~wsgi_longpoll.manager.ManagerOptions`), the endpoints'
    (:class:`~wsgi_longpoll.endpoints.EndpointOptions`) and CORS's
    (:class:`~wsgi_longpoll.wsgi.cors.CORSOptions`, each with a ``cors_`` prefix).

    :param max_event_buffer_size: events kept per category.
    :param event_time_to_live_seconds: events older than this are never served;
        ``None`` keeps them for ever.
    :param delete_event_after_first_retrieval: remove events once served.
    :param max_categories: categories that may hold events at once (a new one pushes out
        the one idle longest that nobody waits on; only when all have subscribers: 503).
    :param max_memory_bytes: the most bytes clients can make the server hold: buffered
        events, idempotency keys, stream backlogs and unread answers, each within its
        share (see :mod:`wsgi_longpoll.budget` and ``docs/deploying.md``); ``None``: no
        bound but the others.
    :param redis_url: keep the events in Redis at this URL, shared with every other
        server pointed at it (see ``docs/scaling.md``); ``None``: in this process.
    :param redis_key_prefix: put before every Redis key, so that several applications
        share one Redis.
    :param redis_min_replicas: answer a publish only once this many replicas of the Redis
        primary have the event (fewer in time: 503).
    :param redis_replica_timeout: how long a publish waits for them, in seconds.
    :param max_waiting_subscribers: subscribers that may wait at once (more: 503);
        ``None``, the server's default: derived from the open-files limit (see
        :func:`default_max_waiting`).
    :param max_body_size: the largest publish body accepted, in bytes.
    :param max_categories_per_request: how many categories one subscribe may name (the
        ``categories`` extension).
    :param sse_keepalive_seconds: how often an idle Server-Sent Events stream gets a
        keep-alive comment.
    :param sse_retry_ms: the ``retry:`` a stream tells browsers to wait before reconnecting.
    :param subscribe_secret: require on every subscribe a token signed with this secret
        (a long-poll tier apart from the application: see :mod:`wsgi_longpoll.tokens`).
    :param subscribe_secret_previous: also accept tokens signed with this one (rotation).
    :param cors_origins: origins whose pages may use the endpoints across origins
        (see :class:`~wsgi_longpoll.wsgi.cors.CORSMiddleware`); empty: none.
    :param cors_allow_credentials: let those pages send cookies and HTTP authentication.
    :param cors_allow_headers: the request headers those pages may send; ``"*"``: any a
        preflight asks for.
    :param cors_max_age: seconds a browser may cache the answer to a preflight.
    :param access_log: log each request to the ``wsgi_longpoll.access`` logger.
    :param header_timeout: seconds a client has to send its request line and headers,
        counted from the connection or the end of the previous response (so also the
        longest a keep-alive connection may idle); ``None``: no limit.
    :param body_timeout: seconds a client has to send a request body once its headers
        are in (else 408); ``None``: no limit.
    :param max_request_body_size: the largest body of a request to *app*, in bytes
        (read whole before the application runs; larger: 413).
    :param stats_path: serve the statistics as JSON at this path
        (see :class:`~wsgi_longpoll.wsgi.monitoring.MonitoringMiddleware`); ``None``: off.
    :param metrics_path: serve the statistics in the Prometheus text format here.
    :param health_path: serve a health check for load balancers here.
    :param before_stats: a hook run before the statistics and metrics are answered.
    :param app: the WSGI application that answers every other path (default: 404).
    :raises TypeError: naming the option, for a value of the wrong type.
    :raises ValueError: naming the option, for an invalid value.
    """

    # The engine's.
    max_event_buffer_size: int = option_from(MemoryOptions, "max_event_buffer_size")
    event_time_to_live_seconds: float | None = option_from(
        MemoryOptions, "event_time_to_live_seconds")
    delete_event_after_first_retrieval: bool = option_from(
        MemoryOptions, "delete_event_after_first_retrieval")
    max_categories: int = option_from(MemoryOptions, "max_categories")
    redis_url: str | None = option_from(RedisOptions, "url")
    redis_key_prefix: str = option_from(RedisOptions, "key_prefix")
    redis_min_replicas: int = option_from(RedisOptions, "min_replicas")
    redis_replica_timeout: float = option_from(RedisOptions, "replica_timeout")
    # The manager's (and its budget's).
    max_memory_bytes: int | None = option_from(ManagerOptions, "max_memory_bytes")
    # The endpoints'.
    max_body_size: int = option_from(EndpointOptions, "max_body_size")
    max_categories_per_request: int = option_from(EndpointOptions, "max_categories_per_request")
    sse_keepalive_seconds: float = option_from(EndpointOptions, "sse_keepalive_seconds")
    sse_retry_ms: int = option_from(EndpointOptions, "sse_retry_ms")
    subscribe_secret: str | None = option_from(EndpointOptions, "subscribe_secret")
    subscribe_secret_previous: str | None = option_from(
        EndpointOptions, "subscribe_secret_previous")
    # CORS's.
    cors_origins: tuple[str, ...] = option_from(CORSOptions, "origins")
    cors_allow_credentials: bool = option_from(CORSOptions, "allow_credentials")
    cors_allow_headers: tuple[str, ...] = option_from(CORSOptions, "allow_headers")
    cors_max_age: int = option_from(CORSOptions, "max_age")
    # The server's own.
    max_waiting_subscribers: int | None = option_from(ManagerOptions, "max_waiting_subscribers")
    access_log: bool = option(True, help="log each request")
    header_timeout: float | None = option(
        30.0, check=more_than(0), zero_means_none=True,
        help="seconds a client has to send its request line and headers, also the longest "
        "a keep-alive connection may idle (0 or None: no limit)",
    )
    body_timeout: float | None = option(
        30.0, check=more_than(0), zero_means_none=True,
        help="seconds a client has to send a request body once its headers are in "
        "(longer: 408; 0 or None: no limit)",
    )
    max_request_body_size: int = option(
        16 * 1024 * 1024, check=at_least(0),
        help="the largest body of a request to any other path, in bytes (larger: 413)",
    )
    stats_path: str | None = option(
        None, metavar="PATH", help="serve statistics as JSON at this path, e.g. /stats; "
        "None: off",
    )
    metrics_path: str | None = option(
        None, metavar="PATH", help="serve statistics in the Prometheus text format at this "
        "path, e.g. /metrics; None: off",
    )
    health_path: str | None = option(
        None, metavar="PATH", help="serve a health check for load balancers at this path, "
        "e.g. /healthz; None: off",
    )
    # Python objects, not options.
    before_stats: Hook | None = None
    app: WSGIApplication | None = None

    def __post_init__(self) -> None:
        check_options(self)
        self.cors_options()  # the checks across options

    def cors_options(self) -> CORSOptions:
        """The CORS options, as a :class:`~wsgi_longpoll.wsgi.cors.CORSOptions`."""
        return subset(self, CORSOptions)


class Server:
    """The standalone long-polling server of the seed document.

    :param options: a :class:`ServerOptions`; keyword arguments (its field names)
        override its fields, e.g. ``Server(access_log=False)``.
    :raises TypeError: for an unknown option.
    :raises ValueError: for an invalid one.
    """

    def __init__(self, options: ServerOptions | None = None, /, **overrides: Any) -> None:
        base = options if options is not None else ServerOptions()
        #: The server's options.
        self.options: ServerOptions = dataclasses.replace(base, **overrides)
        self._lock = threading.Lock()
        self._wsgi_server: HTTPServer | None = None
        self._manager: LongpollManager | None = None
        #: The running server's persister, until :meth:`stop` has reported its losses.
        self._persister: FilePersister | None = None
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
            address = server_info.address
            inherited = address.startswith(FD_PREFIX)
            if inherited:
                inherited_socket(address).close()  # refuse a wrong one here, at once
            else:
                host, port = parse_address(address)
            if server_info.timeout_seconds < 0:
                raise ValueError("timeout_seconds must be 0 (the default, 110) or more")
            options = self.options
            persister = _make_persister(file_persistor_info)
            try:
                manager = LongpollManager(
                    server_info.timeout_seconds,
                    options.max_event_buffer_size,
                    options.event_time_to_live_seconds,
                    options.delete_event_after_first_retrieval,
                    persister=persister,
                    max_categories=options.max_categories,
                    max_waiting_subscribers=options.max_waiting_subscribers,
                    max_memory_bytes=options.max_memory_bytes,
                    redis_url=options.redis_url,
                    redis_key_prefix=options.redis_key_prefix,
                    redis_min_replicas=options.redis_min_replicas,
                    redis_replica_timeout=options.redis_replica_timeout,
                )
                middleware = LongpollMiddleware(
                    options.app or not_found,
                    manager,
                    server_info.subscription_uri,
                    server_info.publish_uri,
                    before_subscription=server_info.handler_to_run_before_subscription,
                    before_publish=server_info.handler_to_run_before_publish,
                    max_body_size=options.max_body_size,
                    max_categories_per_request=options.max_categories_per_request,
                    sse_keepalive_seconds=options.sse_keepalive_seconds,
                    sse_retry_ms=options.sse_retry_ms,
                    subscribe_secret=options.subscribe_secret,
                    subscribe_secret_previous=options.subscribe_secret_previous,
                )
                router = self._make_router(middleware, manager, server_info)
                limits = Limits(header_timeout=options.header_timeout,
                                body_timeout=options.body_timeout)

                def make_server() -> HTTPServer:
                    # Built in the thread whose hub serves it: gevent objects belong to a hub.
                    listener = inherited_socket(address) if inherited else (host, port)
                    return HTTPServer(
                        listener, router, limits, access_log=options.access_log,
                        spawn=Pool(),  # a pool lets stop() wait for, then end, the handlers
                    )

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
            self._persister = persister
            self._wsgi_server = wsgi_server
            self._stopped.clear()
            paths = [path for path in (server_info.subscription_uri, server_info.publish_uri)
                     if path is not None]
            logger.info("serving %s on %s (port %d)",
                        f"long polls at {', '.join(paths)}" if paths else "the application",
                        server_info.address, self.port)

    def _make_router(
        self, middleware: LongpollMiddleware, manager: LongpollManager, info: ServerInfo
    ) -> LongpollRouter:
        """The long-poll paths natively; the monitoring and CORS middleware, when
        configured, and the application behind the WSGI bridge.

        With CORS on, the long-poll paths go through the bridge too (CORS adds its headers
        to their answers there).
        """
        options = self.options
        application: WSGIApplication = middleware
        if any(path is not None for path in
               (options.stats_path, options.metrics_path, options.health_path)):
            application = MonitoringMiddleware(
                application, manager, stats_path=options.stats_path,
                metrics_path=options.metrics_path, health_path=options.health_path,
                before_stats=options.before_stats,
            )
        native = True
        if options.cors_origins:
            paths = [path for path in (info.subscription_uri, info.publish_uri) if path]
            application = CORSMiddleware.from_options(
                application, options.cors_options(), paths=paths)
            native = False
        return LongpollRouter(middleware, WSGIBridge(application),
                              options.max_request_body_size, native=native)

    def _start_thread(
        self,
        make_server: Callable[[], HTTPServer],
        failure_func: Callable[[BaseException], None] | None,
    ) -> HTTPServer:
        started = threading.Event()
        startup_error: list[BaseException] = []
        servers: list[HTTPServer] = []

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
                self._close_manager()  # whatever happened: the engine and persister too
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

    def _shutdown(self, wsgi_server: HTTPServer) -> None:
        """Stop accepting, answer waiting subscribers, drain; runs in the server's hub."""
        assert isinstance(wsgi_server.router, LongpollRouter)
        stop_serving([wsgi_server], wsgi_server.router, self._shutdown_timeout)
        self.manager.close()

    def _close_manager(self) -> None:
        if not self.manager.closed:
            try:
                self.manager.close()
            except Exception:
                logger.exception("closing the manager failed")

    def stop(self, shutdown_timeout: float | datetime.timedelta = 10) -> None:
        """Stop the server; idempotent, and a no-op on a server never started.

        Every waiting subscriber is answered at once (a timeout answer), idle keep-alive
        connections are closed at once, requests still in progress get up to
        *shutdown_timeout* to finish, and the persister is flushed. ``start`` may be
        called again afterwards.

        :param shutdown_timeout: seconds, or a :class:`datetime.timedelta`.
        :raises EventsLost: once everything is stopped and closed, if the persister
            could not write every event it was given (a full disk, a file-size limit, an
            I/O error): the exception names how many are lost, and how many of them were
            acknowledged (see ``docs/persistence.md``). Raised once; a later ``stop`` is
            a no-op.
        """
        timeout = _seconds(shutdown_timeout)
        with self._lock:
            if not self.running or self._wsgi_server is None:
                if self._wsgi_server is not None:  # serving died: still release the engine
                    self._close_manager()
            else:
                self._shutdown_timeout = timeout
                thread = self._thread
                if thread is None:  # in the caller's own gevent hub
                    self._shutdown(self._wsgi_server)
                    self._stopped.set()
                else:
                    self._stop_signal.send()
                    if thread is not threading.current_thread():
                        thread.join(timeout + 10)
                        if thread.is_alive():
                            logger.error("the server thread did not stop within %.1f s",
                                         timeout + 10)
                    self._thread = None
            persister = self._persister
            if persister is not None and persister.closed:
                self._persister = None
            else:
                persister = None
        if persister is not None and persister.discarded_events:
            raise EventsLost(
                persister.discarded_events, persister.discarded_acknowledged_events,
                persister.discarded_bytes, persister.file_name,
            )

    def serve_forever(self) -> None:
        """Block until :meth:`stop` is called (from a signal handler or another thread)."""
        if is_module_patched("threading"):
            while self.running:
                gevent.sleep(0.1)
            return
        while not self._stopped.wait(0.5):  # a short wait keeps Ctrl-C responsive
            pass


def _make_persister(info: FilePersistorInfo | None) -> FilePersister | None:
    if info is None or not info.use:
        return None
    from ..engines.persist import FilePersister

    return FilePersister(
        info.file_name, info.write_buffer_size, info.write_flush_period_seconds, fsync=info.fsync,
        acknowledge_after_write=info.acknowledge_after_write,
    )
