"""Several processes on an in-memory engine: refused, unless the user says it is meant.

An in-memory engine keeps its events in the process that published them. When several
processes serve one application (``gunicorn -w 4``, uWSGI's ``processes``, any server
that sets ``wsgi.multiprocess``), a publish lands in one of them and the subscribers
waiting in the others never see it; a client that resumes on another process finds other
events. The Redis engine (``LongpollManager(redis_url=...)``) gives every process one
stream of events.

So a manager on the in-memory engine does not serve in several processes:

- :class:`~wsgi_longpoll.server.gunicorn.LongpollWorker` with more than one worker
  refuses to boot (gunicorn stops: "Worker failed to boot") and says why in gunicorn's
  log. It checks the managers that exist once the application is loaded
  (:func:`~wsgi_longpoll.manager.live_managers`); the Django app, which builds its manager
  on first use, builds it at startup there (:func:`check_new_manager`).
- Under any other server (``gunicorn -k gevent -w 4``), the long-poll paths answer 500
  with a JSON error saying why, from the first request whose environ says
  ``wsgi.multiprocess``, and log it (to gunicorn's error log too under gunicorn).

When each process is meant to keep events of its own (every publisher publishes to every
process, or each client always reaches the process it publishes to), set the environment
variable ``WSGI_LONGPOLL_ALLOW_MEMORY_MULTIPROCESS=1`` (under gunicorn:
``-e WSGI_LONGPOLL_ALLOW_MEMORY_MULTIPROCESS=1``, or ``raw_env`` in its configuration
file): the refusal becomes a warning, logged once.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gevent.monkey import get_original

from .engines.memory import MemoryEngine
from .errors import MemoryEngineInSeveralProcesses

if TYPE_CHECKING:
    from .manager import LongpollManager

__all__ = [
    "ALLOW_VARIABLE",
    "allowed",
    "check_new_manager",
    "declare_several_processes",
    "refusal",
    "several_processes",
    "several_processes_reason",
]

logger = logging.getLogger(__name__)

#: The environment variable that allows several processes on an in-memory engine.
ALLOW_VARIABLE = "WSGI_LONGPOLL_ALLOW_MEMORY_MULTIPROCESS"
_TRUE = frozenset({"1", "true", "yes", "on"})

# A real OS lock even when gevent has patched the process: any thread may ask.
_lock = get_original("_thread", "allocate_lock")()
#: The managers already logged about: once each.
_reported: weakref.WeakSet[LongpollManager] = weakref.WeakSet()
#: How this process was declared one of several, and where to log about it.
_declared: tuple[str, logging.Logger | None] | None = None


def allowed() -> bool:
    """Whether :data:`ALLOW_VARIABLE` is ``1`` (or ``true``, ``yes``, ``on``)."""
    return os.environ.get(ALLOW_VARIABLE, "").strip().lower() in _TRUE


def declare_several_processes(server: str, log: logging.Logger | None = None) -> None:
    """Declare this process one of several serving the application, before it loads.

    A gunicorn worker with ``workers > 1`` calls it, so that a manager built on first use
    is refused too (:func:`check_new_manager`).

    :param server: what runs the processes, for the message: ``"gunicorn -w 4"``.
    :param log: a logger to write the refusal to besides this module's (the server's own
        error log, ``gunicorn.error``).
    """
    global _declared
    _declared = (server, log)


def several_processes() -> str | None:
    """What :func:`declare_several_processes` was told, or ``None``."""
    return None if _declared is None else _declared[0]


def several_processes_reason(server: str) -> str:
    """Why an in-memory engine does not serve where *server* (``"gunicorn -w 4"``,
    ``"--workers 2"``) runs several processes, and what to do instead."""
    one = "--workers 1" if server.startswith("--workers") else "gunicorn -w 1"
    return (
        f"{server} runs several processes, but the long-poll manager keeps its events "
        "in this process's memory: a subscriber would only see the events published to "
        "its own process, and a client resuming on another process would miss events. "
        "Use the Redis engine, shared by every process (LongpollManager(redis_url=...); "
        "--redis-url for wsgi-longpoll serve, LONGPOLL_REDIS_URL in Flask, "
        f"LONGPOLL['REDIS_URL'] in Django; see docs/scaling.md), or one process ({one})."
    )


def refusal(
    managers: Iterable[LongpollManager], server: str, log: logging.Logger | None = None
) -> str | None:
    """Why *managers* may not serve where *server* runs several processes.

    :param server: what runs the processes, for the message: ``"gunicorn -w 4"``.
    :param log: a logger to write to besides this module's.
    :returns: the message, if one of *managers* keeps its events in memory and
        :func:`allowed` is false; ``None`` otherwise. Each manager is logged about once:
        an error, or a warning when allowed.
    """
    in_memory = [manager for manager in managers if isinstance(manager.engine, MemoryEngine)]
    if not in_memory:
        return None
    reason = several_processes_reason(server)
    refused = (f"{reason} If every process is meant to keep events of its own, set "
               f"{ALLOW_VARIABLE}=1.")
    permitted = allowed()
    with _lock:
        new = [manager for manager in in_memory if manager not in _reported]
        _reported.update(new)
    if new:
        for target in (logger, log):
            if target is not None and permitted:
                target.warning("%s Going on: %s is set.", reason, ALLOW_VARIABLE)
            elif target is not None:
                target.error("%s", refused)
    return None if permitted else refused


def check_new_manager(manager: LongpollManager) -> None:
    """Refuse *manager*, built after the application loaded, in a process declared one
    of several (:func:`declare_several_processes`); a no-op anywhere else.

    :raises MemoryEngineInSeveralProcesses: if it keeps its events in memory and
        :func:`allowed` is false.
    """
    declared = _declared
    if declared is None:
        return
    message = refusal([manager], *declared)
    if message is not None:
        raise MemoryEngineInSeveralProcesses(message)
