"""The app configuration: a system check that warns when the server cannot hold long polls."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.core import checks
from gevent.monkey import is_module_patched

from ...multiprocess import several_processes

__all__ = ["LongpollConfig", "check_server"]

#: What ``manage.py runserver`` without gevent's monkey-patching gets told.
RUNSERVER_WARNING = (
    "runserver serves each request in a thread of its own, where long polls cannot wait on "
    "gevent: the long-poll views answer 500 there. For development, run "
    "python manage.py runlongpoll (the same, with long polls); in production, gunicorn -k "
    "wsgi_longpoll.server.gunicorn.LongpollWorker myproject.wsgi."
)


def check_server(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """``wsgi_longpoll.W001`` when the command is ``runserver`` and gevent has not patched
    the process; ``wsgi_longpoll.E001`` when ``settings.LONGPOLL`` is invalid."""
    from .conf import load_settings

    messages: list[checks.CheckMessage] = []
    try:
        load_settings()
    except Exception as error:  # noqa: BLE001 - any configuration error is reported
        messages.append(checks.Error(str(error), id="wsgi_longpoll.E001",
                                     hint="See wsgi_longpoll.contrib.django.conf."))
    if sys.argv[1:2] == ["runserver"] and not is_module_patched("threading"):
        messages.append(checks.Warning(RUNSERVER_WARNING, id="wsgi_longpoll.W001"))
    return messages


class LongpollConfig(AppConfig):
    """``wsgi_longpoll.contrib.django`` in ``INSTALLED_APPS``."""

    name = "wsgi_longpoll.contrib.django"
    label = "wsgi_longpoll"
    verbose_name = "Long polling"

    def ready(self) -> None:
        checks.register(check_server)
        if several_processes() is not None:
            # One worker of several (gunicorn -w 4 with LongpollWorker): build the manager
            # now, so that one on the in-memory engine stops the worker at boot rather
            # than failing the first long poll (see wsgi_longpoll.multiprocess).
            from .conf import get_manager

            get_manager()
