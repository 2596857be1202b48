"""``manage.py runlongpoll [addrport]``: the project on wsgi_longpoll's server, for
development.

``runserver`` serves each request in a thread, where a long poll cannot wait (the
long-poll views answer 500 there). This command serves the project (``WSGI_APPLICATION``,
as ``runserver`` does) on this package's HTTP/1.1 server, on gevent, where the views hold
long polls as they do under ``gunicorn -k wsgi_longpoll.server.gunicorn.LongpollWorker``
in production; with Django's autoreloader, and the static files of
``django.contrib.staticfiles`` when ``DEBUG`` is on, as ``runserver``::

    python manage.py runlongpoll                   # http://127.0.0.1:8000/
    python manage.py runlongpoll 8080
    python manage.py runlongpoll 0.0.0.0:8080 --noreload

SIGINT (CTRL+C) and SIGTERM answer every waiting long poll and stop; so does each reload.
For development only (see :mod:`wsgi_longpoll.contrib._devserver`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.servers.basehttp import get_internal_wsgi_application
from django.utils import autoreload

from .....server import parse_address
from .... import _devserver

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

DEFAULT_ADDRESS = "127.0.0.1:8000"


class Command(BaseCommand):
    help = (
        "Serve the project for development on wsgi_longpoll's server, where long polls "
        "wait (runserver cannot hold them), restarting when the code changes."
    )
    # Checked in the process that serves, as runserver does (the reloader's child).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("addrport", nargs="?",
                            help=f"port, or address:port (default: {DEFAULT_ADDRESS})")
        parser.add_argument("--noreload", "--no-reload", action="store_false",
                            dest="use_reloader",
                            help="Do not restart when the code changes.")
        parser.add_argument("--nostatic", action="store_false", dest="use_static_handler",
                            help="Do not serve static files (served with DEBUG on and "
                                 "django.contrib.staticfiles installed).")

    def handle(self, *args: Any, **options: Any) -> None:
        address = _address(options["addrport"])
        if not settings.DEBUG and not settings.ALLOWED_HOSTS:
            raise CommandError("You must set settings.ALLOWED_HOSTS if DEBUG is False.")

        def make_app() -> WSGIApplication:
            self.stdout.write("Performing system checks...\n\n")
            self.check(display_num_errors=True)
            self.check_migrations()
            application: WSGIApplication = get_internal_wsgi_application()
            if (options["use_static_handler"] and settings.DEBUG
                    and apps.is_installed("django.contrib.staticfiles")):
                from django.contrib.staticfiles.handlers import StaticFilesHandler

                application = StaticFilesHandler(application)
            return application

        try:
            _devserver.run(_devserver.DevelopmentServer(make_app, address),
                           reload=options["use_reloader"],
                           run_with_reloader=autoreload.run_with_reloader,
                           announce=self.stdout.write,
                           complain=lambda line: self.stderr.write(f"Error: {line}"))
        except OSError as error:
            raise CommandError(f"cannot listen on {address}: {error}") from error


def _address(addrport: str | None) -> str:
    """``host:port`` from ``runserver``'s forms: nothing, a port, or ``address:port``."""
    if not addrport:
        return DEFAULT_ADDRESS
    address = f"127.0.0.1:{addrport}" if addrport.isdigit() else addrport
    try:
        parse_address(address)
    except ValueError as error:
        raise CommandError(f"{addrport!r} is not a port or address:port ({error})") from None
    return address
