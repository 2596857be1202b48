"""``settings.LONGPOLL``: the app's configuration, and the manager built from it.

Every key is optional. Every option of the package is a key, under its one name in upper
case (see the README's options table and :data:`DEFAULTS`), e.g.:

``MAX_LONGPOLL_TIMEOUT_SECONDS``, ``MAX_EVENT_BUFFER_SIZE``, ``MAX_WAITING_SUBSCRIBERS``, ...
    The manager's and its engine's options.
``REDIS_URL``, ``REDIS_KEY_PREFIX``
    Keep the events in Redis (extra ``[redis]``), shared by every worker process; default
    ``None``: in the process's memory.
``SUBSCRIPTION_PATH``, ``PUBLISH_PATH``
    The URLs of the views, under the prefix where ``wsgi_longpoll.contrib.django.urls``
    is included (a leading ``/`` is left out); ``None`` leaves one out. Read when the
    URLconf is loaded.
``MAX_BODY_SIZE``, ``MAX_CATEGORIES_PER_REQUEST``, ``SSE_KEEPALIVE_SECONDS``, ...
    The endpoints' options.
``SUBSCRIBE_SECRET``, ``SUBSCRIBE_SECRET_PREVIOUS``
    Require a signed subscribe token on every subscribe, and issue them with
    :func:`wsgi_longpoll.contrib.django.subscribe_token` (see :mod:`wsgi_longpoll.tokens`).
``CORS_ORIGINS``, ``CORS_ALLOW_HEADERS``, ...
    Let pages of other origins subscribe and publish
    (see :class:`~wsgi_longpoll.wsgi.cors.CORSOptions`).

and the app's own:

``MANAGER``
    The dotted path (or the object itself) of a :class:`~wsgi_longpoll.LongpollManager`
    to use instead of building one (the manager's and engine's options are then
    ignored); default ``None``.
``CAN_READ_CATEGORY``
    The dotted path (or the function itself) of ``can_read_category(user, category) ->
    bool``, asked for every category a subscribe names; default ``None``: anyone may
    read every category.
``CAN_PUBLISH``
    The dotted path (or the function itself) of ``can_publish(user, category) -> bool``,
    asked for every publish over HTTP; default ``None``: nobody may publish over HTTP
    (``publish()`` from Python always works).

``user`` is ``request.user`` (``AnonymousUser`` when nobody is logged in), or ``None``
without ``django.contrib.auth``'s middleware.

A value given as a string (from the environment, say) is converted to the option's type;
one that does not fit, an unknown key and a Redis URL that is not ``redis://``,
``rediss://``, ``unix://`` or ``redis+sentinel://`` are refused by name by the system check
``wsgi_longpoll.E001`` (``manage.py check``) and by the first request.

The settings are read once; Django's ``setting_changed`` signal (``override_settings`` in
tests) makes the next request read them again and build a new manager.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from ...endpoints import EndpointOptions
from ...manager import LongpollManager
from ...multiprocess import check_new_manager
from ...options import Option, convert, options_of
from .._common import CONFIG_OPTIONS, Configuration, read_configuration, unknown_keys_error

__all__ = ["DEFAULTS", "LongpollSettings", "get_manager", "load_settings", "url_paths"]

#: The keys of the app's own, and their defaults.
OWN_DEFAULTS: dict[str, Any] = {
    "MANAGER": None,
    "CAN_READ_CATEGORY": None,
    "CAN_PUBLISH": None,
}
#: Every key of ``settings.LONGPOLL`` and its default: each option's, and the app's own.
DEFAULTS: dict[str, Any] = {
    **{item.key: item.default for item in CONFIG_OPTIONS.values()},
    **OWN_DEFAULTS,
}

#: An authorization hook: (user, category) -> bool.
UserHook = Callable[[Any, str], bool]


@dataclass(frozen=True, slots=True)
class LongpollSettings:
    """``settings.LONGPOLL`` with the defaults filled in and the dotted paths imported."""

    #: The options, converted and checked.
    configuration: Configuration
    #: ``MANAGER``: the manager to use instead of building one.
    manager: LongpollManager | None
    can_read_category: UserHook | None
    can_publish: UserHook | None


def _label(item: Option) -> str:
    return f"LONGPOLL[{item.key!r}]"


def _import(key: str, path: object) -> Any:
    if not isinstance(path, str):  # None, or the object itself
        return path
    try:
        return import_string(path)
    except ImportError as error:
        raise ImproperlyConfigured(f"LONGPOLL[{key!r}]: cannot import {path!r}: {error}") from None


def load_settings() -> LongpollSettings:
    """Read and check ``settings.LONGPOLL``.

    :raises ImproperlyConfigured: naming the key, on an unknown key, a value that is not of
        its option's type or out of range (a number given as a string is converted), a
        Redis URL that is not one, a dotted path that cannot be imported, or a ``MANAGER``
        that is not a :class:`~wsgi_longpoll.LongpollManager`.
    """
    given = _given()
    try:
        configuration = read_configuration(given, _label)
    except ValueError as error:
        raise ImproperlyConfigured(str(error)) from None
    options = {**OWN_DEFAULTS, **{key: given[key] for key in OWN_DEFAULTS if key in given}}
    manager = _import("MANAGER", options["MANAGER"])
    if manager is not None and not isinstance(manager, LongpollManager):
        raise ImproperlyConfigured(
            f"LONGPOLL['MANAGER'] must name a LongpollManager, not {manager!r}"
        )
    hooks = []
    for key in ("CAN_READ_CATEGORY", "CAN_PUBLISH"):
        hook = _import(key, options[key])
        if hook is not None and not callable(hook):
            raise ImproperlyConfigured(
                f"LONGPOLL[{key!r}] must name a function (user, category) -> bool, "
                f"not {hook!r}"
            )
        hooks.append(hook)
    return LongpollSettings(configuration, manager, hooks[0], hooks[1])


def _given() -> dict[str, Any]:
    given = getattr(settings, "LONGPOLL", {})
    if not isinstance(given, dict):
        raise ImproperlyConfigured("settings.LONGPOLL must be a dict")
    unknown = [key for key in given if key not in DEFAULTS]
    if unknown:
        raise ImproperlyConfigured(unknown_keys_error(unknown, DEFAULTS, "settings.LONGPOLL"))
    return given


def url_paths() -> tuple[str | None, str | None]:
    """The URLs of the subscription and publish views (``SUBSCRIPTION_PATH`` and
    ``PUBLISH_PATH`` without a leading ``/``), ``None`` for one left out.

    Only these two keys are read, so that a mistake in another is reported by the system
    check, not by the loading of the URLconf.

    :raises ImproperlyConfigured: naming the key, if one is not a string or ``None``.
    """
    given = getattr(settings, "LONGPOLL", {})
    paths = []
    for item in options_of(EndpointOptions).values():
        if item.name not in ("subscription_path", "publish_path"):
            continue
        try:
            path = convert(item, given.get(item.key, item.default), _label(item))
        except ValueError as error:
            raise ImproperlyConfigured(str(error)) from None
        paths.append(None if path is None else path.lstrip("/"))
    return paths[0], paths[1]


_lock = threading.Lock()
_cache: dict[str, Any] = {}


def current() -> tuple[LongpollSettings, LongpollManager]:
    """The settings and the manager, built once (again after ``setting_changed``).

    :raises MemoryEngineInSeveralProcesses: if the process is one of several (a gunicorn
        worker among several, see :mod:`wsgi_longpoll.multiprocess`) and the manager
        keeps its events in memory.
    """
    with _lock:
        if "manager" not in _cache:
            loaded = load_settings()
            manager = loaded.manager or loaded.configuration.manager()
            check_new_manager(manager)  # one process of several: not on memory
            _cache.update(settings=loaded, manager=manager)
        return _cache["settings"], _cache["manager"]


def get_manager() -> LongpollManager:
    """The project's manager (see :func:`current`)."""
    return current()[1]


@receiver(setting_changed)
def _forget(*, setting: str, **kwargs: Any) -> None:
    if setting == "LONGPOLL":
        with _lock:
            loaded, manager = _cache.get("settings"), _cache.get("manager")
            _cache.clear()
        if manager is not None and loaded is not None and loaded.manager is None:
            manager.close()  # built here: answer its waiting polls, free its engine
