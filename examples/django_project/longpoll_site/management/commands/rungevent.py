"""``manage.py rungevent [address]``: serve the project on gevent's WSGIServer."""

import signal
from typing import Any

import gevent
import gevent.event
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.servers.basehttp import get_internal_wsgi_application
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from wsgi_longpoll.server import parse_address

from ...longpoll import manager


class Command(BaseCommand):
    help = (
        "Serve the project, long polls included, on gevent's WSGIServer until SIGINT or "
        "SIGTERM, which answer every waiting long poll and exit."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("address", nargs="?", default="127.0.0.1:8000",
                            help="host:port to listen on (default: 127.0.0.1:8000)")
        parser.add_argument("--shutdown-timeout", type=float, default=5.0,
                            help="seconds that requests in progress get to finish on stop")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            listener = parse_address(options["address"])
        except ValueError as error:
            raise CommandError(str(error)) from error
        # settings.WSGI_APPLICATION: Django's application wrapped by LongpollMiddleware.
        application = get_internal_wsgi_application()
        # A pool, unlike gevent's default spawn, lets stop() wait for requests in progress.
        server = WSGIServer(listener, application, spawn=Pool())
        stop_requested = gevent.event.Event()

        def request_stop(signum: int) -> None:
            self.stderr.write(f"{signal.Signals(signum).name} received: stopping")
            stop_requested.set()

        handlers = [gevent.signal_handler(signum, request_stop, signum)
                    for signum in (signal.SIGINT, signal.SIGTERM)]
        try:
            try:
                server.start()
            except OSError as error:
                raise CommandError(f"cannot listen on {options['address']}: {error}") from error
            host, port = server.address[:2]
            self.stdout.write(f"Serving on http://{host}:{port}/ (Ctrl-C stops)")
            stop_requested.wait()
            manager.close()  # answers every waiting long poll now, refuses new events
            server.stop(timeout=options["shutdown_timeout"])
        finally:
            for handler in handlers:
                handler.cancel()
