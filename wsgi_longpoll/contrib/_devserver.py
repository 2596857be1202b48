"""What the development servers of the integrations share: the application on
:class:`~wsgi_longpoll.Server`, with the framework's code reloader.

``flask longpoll run`` (:mod:`~wsgi_longpoll.contrib.flask`) and ``manage.py runlongpoll``
(:mod:`~wsgi_longpoll.contrib.django`) serve the whole application on this package's
server, where a long poll waits on gevent as it will under
``gunicorn -k wsgi_longpoll.server.gunicorn.LongpollWorker``, instead of failing as under
``flask run`` and ``runserver``. The server's own long-poll paths are off: the
framework's views answer them, with the extension's manager and authorization.

With the reloader, the command runs twice, as ``flask run`` and ``runserver`` do: a parent
that only restarts its child when the code changes (the framework's
``run_with_reloader``), and the child, which serves from the reloader's thread once the
reloader has looked at the code, and stops the server (answering every waiting poll) when
it exits, on a reload too.

The process is not monkey-patched: the server's hub runs in a thread of its own, and a
view that blocks (a database query) holds up the other requests while it runs, as on a
single-threaded development server. Use it for development only.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..manager import live_managers
from ..server import Server, ServerInfo

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["DevelopmentServer", "run"]


class DevelopmentServer:
    """The application that *make_app* builds, served on a :class:`~wsgi_longpoll.Server`
    at *address* (``host:port``).

    :param make_app: builds the application when the server starts.
    :param shutdown_timeout: seconds that requests in progress get to finish on stop
        (waiting long polls are answered at once).
    """

    def __init__(self, make_app: Callable[[], WSGIApplication], address: str,
                 shutdown_timeout: float = 1.0) -> None:
        self.make_app = make_app
        self.address = address
        self.shutdown_timeout = shutdown_timeout
        self.server: Server | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Build the application, bind and serve (in the server's own thread).

        :raises OSError: if the address cannot be bound.
        :raises ValueError: if it is not ``host:port``.
        """
        _show_access_log()
        server = Server(app=self.make_app())
        server.start(ServerInfo(address=self.address, subscription_uri=None,
                                publish_uri=None))
        self.server = server

    @property
    def url(self) -> str:
        """The server's URL, once started."""
        assert self.server is not None
        host = self.address.rpartition(":")[0] or "127.0.0.1"
        return f"http://{host}:{self.server.port}/"

    def wait(self) -> None:
        """Block until SIGINT or SIGTERM (or :meth:`stop`)."""
        previous: Any = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda signum, frame: self._stop.set())
        try:
            while not self._stop.wait(0.5):  # a short wait keeps Ctrl-C responsive
                pass
        except KeyboardInterrupt:
            pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def stop(self) -> None:
        """Answer every waiting long poll of every manager, then stop the server.
        Idempotent; a no-op if it never started."""
        self._stop.set()
        server = self.server
        if server is None or not server.running:
            return
        for manager in live_managers():
            manager.drain()
        server.stop(self.shutdown_timeout)


def run(
    server: DevelopmentServer,
    *,
    reload: bool,
    run_with_reloader: Callable[[Callable[[], None]], None],
    announce: Callable[[str], None],
    complain: Callable[[str], None],
) -> None:
    """Serve until SIGINT or SIGTERM; with *reload*, restart when the code changes.

    :param run_with_reloader: the framework's: ``run_with_reloader(main_func)`` restarts
        this command in a child process (the parent's part), or watches the code and runs
        *main_func* in a thread (the child's).
    :param announce: writes a line for the user.
    :param complain: writes an error for the user.
    :raises OSError: without *reload*, if the address cannot be bound (with it, the child
        says so and exits with status 1, as ``runserver`` does).
    :raises ValueError: without *reload*, if the address is not ``host:port``.
    """
    if not reload:
        server.start()
        announce(f"Serving on {server.url} (wsgi_longpoll's server); CTRL+C to quit")
        try:
            server.wait()
        finally:
            server.stop()
        return

    def serve() -> None:  # in the child, in the reloader's thread
        try:
            server.start()
        except (OSError, ValueError) as error:
            complain(f"cannot listen on {server.address}: {error}")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)  # a thread cannot end the command otherwise
        announce(f"Serving on {server.url} (wsgi_longpoll's server, reloading on code "
                 "changes); CTRL+C to quit")

    try:
        run_with_reloader(serve)
    finally:
        server.stop()  # the child's, on CTRL+C, SIGTERM and each reload


def _show_access_log() -> None:
    """Send this package's log (the access log) to stderr, unless logging is set up."""
    package = logging.getLogger("wsgi_longpoll")
    if logging.getLogger().handlers or any(
        not isinstance(handler, logging.NullHandler) for handler in package.handlers
    ):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    package.addHandler(handler)
    package.setLevel(logging.INFO)
