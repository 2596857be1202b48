"""The open-files limit, and how many subscribers may wait under it.

Each waiting subscriber holds a socket, so by default a manager lets wait what the
open-files limit (``ulimit -n``) allows, less the descriptors open already and a
headroom for every other request. The standalone server, the gunicorn worker, the Flask
extension and the Django app all get their default from :func:`default_max_waiting`.
"""

from __future__ import annotations

import logging
import os

__all__ = [
    "MAX_DEFAULT_WAITING",
    "OPEN_FILES_HEADROOM",
    "default_max_waiting",
    "open_files_limit",
    "warn_if_above_open_files_limit",
]

logger = logging.getLogger("wsgi_longpoll")

#: The most :func:`default_max_waiting` gives, however high the open-files limit.
MAX_DEFAULT_WAITING = 50_000

#: File descriptors kept free of waiting subscribers, besides those open when the manager
#: is built: the connections of every other request (``/healthz``, ``/stats``, publishes,
#: refused subscribers), files and Redis connections opened later.
OPEN_FILES_HEADROOM = 256


def open_files_limit() -> int | None:
    """The soft limit on open file descriptors, or ``None`` if there is none."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _open_files_count() -> int:
    """How many file descriptors the process has open (0 where that cannot be read)."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return max(len(os.listdir(directory)) - 1, 0)  # less the listing's own
        except OSError:
            continue
    return 0


def default_max_waiting() -> int:
    """The default ``max_waiting_subscribers``: what the open-files limit allows, less the
    descriptors open already and :data:`OPEN_FILES_HEADROOM` (a tenth of the limit when
    that is small), and no more than :data:`MAX_DEFAULT_WAITING`.

    So with every subscriber slot taken, the headroom is left for other requests: a
    refused subscriber's connection (closed after its 503), ``/healthz``, ``/stats``.
    """
    limit = open_files_limit()
    if limit is None:
        return MAX_DEFAULT_WAITING
    headroom = min(OPEN_FILES_HEADROOM, max(limit // 10, 1))
    return max(1, min(MAX_DEFAULT_WAITING, limit - _open_files_count() - headroom))


def warn_if_above_open_files_limit(max_waiting_subscribers: int) -> bool:
    """Log a warning if *max_waiting_subscribers* cannot all hold a socket; whether it did."""
    limit = open_files_limit()
    if limit is None or max_waiting_subscribers < limit:
        return False
    logger.warning(
        "max_waiting_subscribers is %d but the open-files limit (ulimit -n) is %d: "
        "connections beyond it will be refused; raise the limit or lower the option",
        max_waiting_subscribers, limit)
    return True
