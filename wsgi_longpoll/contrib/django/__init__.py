"""A Django app: long polling answered by Django views.

Add it to ``INSTALLED_APPS``, include its URLs, and configure it with ``settings.LONGPOLL``
(see :mod:`wsgi_longpoll.contrib.django.conf` for every key):

.. code-block:: python

    # settings.py
    INSTALLED_APPS = [..., "wsgi_longpoll.contrib.django"]
    LONGPOLL = {
        "MAX_LONGPOLL_TIMEOUT_SECONDS": 120,
        "CAN_READ_CATEGORY": "myapp.longpoll.can_read_category",
    }

    # urls.py
    urlpatterns = [..., path("longpoll/", include("wsgi_longpoll.contrib.django.urls"))]

    # anywhere, e.g. after a save:
    from django.db import transaction
    from wsgi_longpoll.contrib.django import publish
    transaction.on_commit(lambda: publish(f"user-{user.pk}", {"text": "saved"}))

The views run inside Django, after its middleware: ``request.user`` is set, and the
authorization hooks get it. Long polls wait on gevent: serve the project with
``gunicorn -k wsgi_longpoll.server.gunicorn.LongpollWorker`` or ``gunicorn -k gevent``.
``runserver`` cannot hold long polls (a system check says so); for development, the app's
management command serves the project on this package's server, with Django's
autoreloader (see :mod:`~wsgi_longpoll.contrib.django.management.commands.runlongpoll`)::

    python manage.py runlongpoll [addrport] [--noreload]
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

from ...event import Event
from ...manager import LongpollManager
from ...tokens import subscribe_token as _subscribe_token

__all__ = ["get_manager", "publish", "subscribe_token"]


def get_manager() -> LongpollManager:
    """The project's manager, built from ``settings.LONGPOLL`` on first use (once per
    process), or the one ``LONGPOLL["MANAGER"]`` names."""
    from .conf import get_manager as _get_manager

    return _get_manager()


def publish(category: str, data: Any) -> Event:
    """Publish *data* to *category* from anywhere in the project; wakes the waiting polls.

    Call it after the transaction that made the change has committed, so that a woken
    client that reads the database sees the change::

        transaction.on_commit(lambda: publish("orders", {"id": order.pk}))

    :raises ValueError: if *category* is not 1 to 1024 bytes of UTF-8.
    """
    return get_manager().publish(category, data)


def subscribe_token(categories: str | Iterable[str], ttl: float | datetime.timedelta,
                    *, subject: str | None = None) -> str:
    """A token that lets its holder subscribe to *categories* for *ttl* (seconds or a
    :class:`~datetime.timedelta`), signed with ``LONGPOLL["SUBSCRIBE_SECRET"]``.

    Hand it to the page (the browser client's ``token`` option) or to a
    :class:`~wsgi_longpoll.client.Follower`; a long-poll tier run with the same secret
    (``wsgi-longpoll serve --subscribe-secret``), and this app's own subscribe view, let
    it read those categories and no other until it expires (see
    :mod:`wsgi_longpoll.tokens`)::

        token = subscribe_token([f"user-{request.user.pk}", "news"], ttl=3600)

    :param subject: who it is for (the ``sub`` claim), for your own logs.
    :raises django.core.exceptions.ImproperlyConfigured: if ``SUBSCRIBE_SECRET`` is not
        set (or ``settings.LONGPOLL`` is invalid).
    """
    from django.core.exceptions import ImproperlyConfigured

    from .conf import current

    secret = current()[0].configuration.endpoints.subscribe_secret
    if secret is None:
        raise ImproperlyConfigured(
            "set LONGPOLL['SUBSCRIBE_SECRET'] to issue subscribe tokens")
    return _subscribe_token(secret, categories, ttl, subject=subject)
