"""gunicorn settings for an application with long polling (the Flask or Django example)::

    gunicorn -c examples/gunicorn.conf.py examples.flask_app:app
    gunicorn -c examples/gunicorn.conf.py --chdir examples/django_project \\
        longpoll_site.wsgi:application

Command-line options override these (``-b 0.0.0.0:8000`` behind a proxy, say).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsgi_longpoll import LongpollManager

# Nothing else is imported at the top: gunicorn reads this file before its gevent
# worker monkey-patches, and modules imported earlier (ssl, by way of requests) would
# be left unpatched.

bind = "127.0.0.1:8000"

# A waiting long poll is an idle greenlet: gevent workers hold thousands of them.
worker_class = "gevent"

# One worker process: the in-memory manager's events and waiting subscribers live in
# it, so a publish that reached a second worker would never wake the first one's
# subscribers, and a client resuming with since_time on it would find other events.
workers = 1

# The most requests, waiting long polls included, that the worker serves at once.
worker_connections = 2000

# On SIGTERM gunicorn stops accepting, then gives requests in progress this long. The
# hook below answers waiting long polls at once, so only ordinary requests need it.
graceful_timeout = 10


def post_worker_init(worker: Any) -> None:
    """Answer every waiting long poll as soon as the worker is told to stop."""
    import gevent

    manager = _find_manager(worker.wsgi)
    if manager is None:
        worker.log.warning("no LongpollMiddleware around %r: long polls are not released "
                           "on shutdown", worker.wsgi)
        return

    def close_when_stopping() -> None:
        while worker.alive:  # gunicorn's own loop checks it once a second, too
            gevent.sleep(0.5)
        manager.close()

    gevent.spawn(close_when_stopping)


def _find_manager(app: Any) -> LongpollManager | None:
    """The manager of the middleware that is *app* (Django) or wraps it (Flask)."""
    from wsgi_longpoll import LongpollMiddleware

    for candidate in (app, getattr(app, "wsgi_app", None)):
        if isinstance(candidate, LongpollMiddleware):
            return candidate.manager
    return None
