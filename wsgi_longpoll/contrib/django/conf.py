"""``settings.LONGPOLL``: the app's configuration, and the manager built from it.

Every key is optional:

``MAX_LONGPOLL_TIMEOUT_SECONDS``
    The longest ``timeout`` a subscriber may ask for; default 110.
``MAX_EVENT_BUFFER_SIZE``
    How many events each category keeps; default 250.
``EVENT_TIME_TO_LIVE_SECONDS``
    How long an event is served; default ``None`` (for ever).
``DELETE_EVENT_AFTER_FIRST_RETRIEVAL``
    Remove an event once served; default ``False``.
``MAX_CATEGORIES``, ``MAX_WAITING_SUBSCRIBERS``
    The manager's capacity limits; defaults: :class:`~wsgi_longpoll.LongpollManager`'s.
``REDIS_URL``, ``REDIS_KEY_PREFIX``
    Keep the events in Redis (extra ``[redis]``), shared by every worker process; default
    ``None`` (in the process's memory) and ``"wsgi_longpoll:"``.
``MANAGER``
    The dotted path (or the object itself) of a :class:`~wsgi_longpoll.LongpollManager`
    to use instead of building one (the keys above are then ignored); default ``None``.
``MAX_BODY_SIZE``
    The largest publish body, in bytes; default 1 MiB.
``MAX_CATEGORIES_PER_REQUEST``
    How many categories one subscribe may name; default 16.
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

from ...manager import LongpollManager
from ...multiprocess import check_new_manager
from ...wsgi.middleware import LongpollMiddleware
from .._common import manager_from_options

__all__ = ["DEFAULTS", "LongpollSettings", "get_manager", "load_settings"]

#: Every key of ``settings.LONGPOLL`` and its default.
DEFAULTS: dict[str, Any] = {
    "MAX_LONGPOLL_TIMEOUT_SECONDS": 110,
    "MAX_EVENT_BUFFER_SIZE": 250,
    "EVENT_TIME_TO_LIVE_SECONDS": None,
    "DELETE_EVENT_AFTER_FIRST_RETRIEVAL": False,
    "MAX_CATEGORIES": LongpollManager.default_max_categories,
    "MAX_WAITING_SUBSCRIBERS": LongpollManager.default_max_waiting_subscribers,
    "REDIS_URL": None,
    "REDIS_KEY_PREFIX": "wsgi_longpoll:",
    "MANAGER": None,
    "MAX_BODY_SIZE": LongpollMiddleware.default_max_body_size,
    "MAX_CATEGORIES_PER_REQUEST": LongpollMiddleware.default_max_categories_per_request,
    "CAN_READ_CATEGORY": None,
    "CAN_PUBLISH": None,
}

#: An authorization hook: (user, category) -> bool.
UserHook = Callable[[Any, str], bool]


@dataclass(frozen=True, slots=True)
class LongpollSettings:
    """``settings.LONGPOLL`` with the defaults filled in and the dotted paths imported."""

    options: dict[str, Any]
    can_read_category: UserHook | None
    can_publish: UserHook | None


def _import(key: str, path: object) -> Any:
    if not isinstance(path, str):  # None, or the object itself
        return path
    try:
        return import_string(path)
    except ImportError as error:
        raise ImproperlyConfigured(f"LONGPOLL[{key!r}]: cannot import {path!r}: {error}") from None


def load_settings() -> LongpollSettings:
    """Read and check ``settings.LONGPOLL``.

    :raises ImproperlyConfigured: on an unknown key, a dotted path that cannot be imported,
        or a ``MANAGER`` that is not a :class:`~wsgi_longpoll.LongpollManager`.
    """
    given = getattr(settings, "LONGPOLL", {})
    if not isinstance(given, dict):
        raise ImproperlyConfigured("settings.LONGPOLL must be a dict")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ImproperlyConfigured(
            f"settings.LONGPOLL has unknown keys {unknown}; the keys are {sorted(DEFAULTS)}"
        )
    options = {**DEFAULTS, **given}
    manager = _import("MANAGER", options["MANAGER"])
    if manager is not None and not isinstance(manager, LongpollManager):
        raise ImproperlyConfigured(
            f"LONGPOLL['MANAGER'] must name a LongpollManager, not {manager!r}"
        )
    options["MANAGER"] = manager
    hooks = []
    for key in ("CAN_READ_CATEGORY", "CAN_PUBLISH"):
        hook = _import(key, options[key])
        if hook is not None and not callable(hook):
            raise ImproperlyConfigured(
                f"LONGPOLL[{key!r}] must name a function (user, category) -> bool, "
                f"not {hook!r}"
            )
        hooks.append(hook)
    return LongpollSettings(options, hooks[0], hooks[1])


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
            options = loaded.options
            manager = options["MANAGER"] or manager_from_options(options)
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
        if manager is not None and loaded is not None and loaded.options["MANAGER"] is None:
            manager.close()  # built here: answer its waiting polls, free its engine
