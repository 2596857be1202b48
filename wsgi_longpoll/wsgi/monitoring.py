"""Monitoring endpoints: the manager's statistics (JSON, Prometheus) and a health check.

Each endpoint is off until given a path. The statistics say how many categories,
buffered events and waiting subscribers there are, how many events were published and
delivered, how many publishes failed, the bytes held by each kind of the memory budget
(:mod:`wsgi_longpoll.budget`), and the uptime; the health check answers a load
balancer with 200 while the manager takes events and 503 once it is closed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..manager import LongpollManager, ManagerClosed, ManagerStats, StorageUnavailable
from .answers import (
    JSON_HEADERS,
    RETRY_AFTER_SECONDS,
    Hook,
    for_method,
    json_error,
    respond,
    retry_later,
    run_hook,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["MonitoringMiddleware", "prometheus_text"]

logger = logging.getLogger(__name__)

_NO_CACHE = ("Cache-Control", "no-cache, no-store, must-revalidate")
_JSON_HEADERS = [*JSON_HEADERS, _NO_CACHE]
#: The Prometheus text exposition format, version 0.0.4.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Prometheus name, type and help of each statistic, in :class:`ManagerStats` order.
_METRICS = (
    ("categories", "wsgi_longpoll_categories", "gauge",
     "Categories that hold events."),
    ("buffered_events", "wsgi_longpoll_buffered_events", "gauge",
     "Events held in every category's buffer."),
    ("waiting_subscribers", "wsgi_longpoll_waiting_subscribers", "gauge",
     "Subscribers waiting for events now."),
    ("events_published", "wsgi_longpoll_events_published_total", "counter",
     "Events accepted since the manager was made."),
    ("events_delivered", "wsgi_longpoll_events_delivered_total", "counter",
     "Events handed to subscribers (one event to ten subscribers counts ten)."),
    ("publish_errors", "wsgi_longpoll_publish_errors_total", "counter",
     "Publishes that failed after validation (closed manager, capacity, storage)."),
    ("buffered_event_bytes", "wsgi_longpoll_buffered_event_bytes", "gauge",
     "Bytes of the events buffered in this process's memory."),
    ("idempotency_key_bytes", "wsgi_longpoll_idempotency_key_bytes", "gauge",
     "Bytes of the idempotency keys remembered in this process's memory."),
    ("stream_backlog_bytes", "wsgi_longpoll_stream_backlog_bytes", "gauge",
     "Bytes event streams were sent that their readers have not taken yet."),
    ("parked_answer_bytes", "wsgi_longpoll_parked_answer_bytes", "gauge",
     "Bytes of long-poll answers their readers have not taken yet."),
)


def _stats_document(
    manager: LongpollManager, stats: ManagerStats, uptime: float
) -> dict[str, object]:
    return {
        "categories": stats.categories,
        "buffered_events": stats.buffered_events,
        "waiting_subscribers": stats.waiting_subscribers,
        "events_published": stats.events_published,
        "events_delivered": stats.events_delivered,
        "publish_errors": stats.publish_errors,
        "buffered_event_bytes": stats.buffered_event_bytes,
        "idempotency_key_bytes": stats.idempotency_key_bytes,
        "stream_backlog_bytes": stats.stream_backlog_bytes,
        "parked_answer_bytes": stats.parked_answer_bytes,
        "uptime_seconds": round(uptime, 3),
        "max_categories": manager.max_categories,
        "max_waiting_subscribers": manager.max_waiting_subscribers,
        "max_memory_bytes": manager.max_memory_bytes,
        "pid": os.getpid(),
    }


def prometheus_text(manager: LongpollManager, stats: ManagerStats, uptime: float) -> str:
    """*stats* in the Prometheus text exposition format (version 0.0.4).

    :param manager: whose limits are reported beside the statistics.
    :param stats: a snapshot from :meth:`LongpollManager.stats`.
    :param uptime: seconds since the service started.
    """
    lines = []
    for field, name, kind, help_text in _METRICS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}",
                  f"{name} {getattr(stats, field)}"]
    lines += [
        "# HELP wsgi_longpoll_uptime_seconds Seconds since the service started.",
        "# TYPE wsgi_longpoll_uptime_seconds gauge",
        f"wsgi_longpoll_uptime_seconds {uptime:.3f}",
        "# HELP wsgi_longpoll_max_categories Categories that may hold events at once.",
        "# TYPE wsgi_longpoll_max_categories gauge",
        f"wsgi_longpoll_max_categories {manager.max_categories}",
        "# HELP wsgi_longpoll_max_waiting_subscribers Subscribers that may wait at once.",
        "# TYPE wsgi_longpoll_max_waiting_subscribers gauge",
        f"wsgi_longpoll_max_waiting_subscribers {manager.max_waiting_subscribers}",
    ]
    if manager.max_memory_bytes is not None:
        lines += [
            "# HELP wsgi_longpoll_max_memory_bytes The memory budget, in bytes.",
            "# TYPE wsgi_longpoll_max_memory_bytes gauge",
            f"wsgi_longpoll_max_memory_bytes {manager.max_memory_bytes}",
        ]
    return "\n".join(lines) + "\n"


class MonitoringMiddleware:
    """Answers a statistics, a metrics and a health path for a :class:`LongpollManager`.

    Every other request goes to *app*. Each path is off (``None``) unless given; only
    ``GET`` and ``HEAD`` are answered on them (others get 405).

    - *stats_path*: the statistics as a JSON object (``categories``, ``buffered_events``,
      ``waiting_subscribers``, ``events_published``, ``events_delivered``,
      ``publish_errors``, the bytes held by each kind of the memory budget
      (``buffered_event_bytes``, ``idempotency_key_bytes``, ``stream_backlog_bytes``,
      ``parked_answer_bytes``), ``uptime_seconds``, ``max_categories``,
      ``max_waiting_subscribers``, ``max_memory_bytes``, and ``pid``: the process that
      answered, one of several under ``gunicorn -w N`` or ``wsgi-longpoll serve --workers N``).
    - *metrics_path*: the same in the Prometheus text format, names prefixed
      ``wsgi_longpoll_`` (counters end in ``_total``).
    - *health_path*: ``200 {"status": "ok"}`` while the manager takes events,
      ``503 {"status": "closed"}`` (with ``Retry-After``) once it is closed, and
      ``503 {"status": "unavailable", "error": "..."}`` while its engine cannot store
      events (Redis unreachable, persister writes failing). The statistics answer
      ``503`` with a JSON error while the engine cannot be read.

    ``categories`` and ``buffered_events`` are the engine's (with Redis, every process's);
    the other figures are this process's (with several workers, each answers its own).

    The statistics tell an outsider how busy the service is: keep their paths behind the
    proxy, or guard them with *before_stats* (e.g. :func:`wsgi_longpoll.auth.bearer_token`).

    :param app: the WSGI application to wrap.
    :param manager: the manager to report on.
    :param stats_path: the path of the JSON statistics.
    :param metrics_path: the path of the Prometheus metrics.
    :param health_path: the path of the health check.
    :param before_stats: a :data:`~wsgi_longpoll.middleware.Hook` run before the
        statistics and the metrics are answered (not the health check).
    """

    def __init__(
        self,
        app: WSGIApplication,
        manager: LongpollManager,
        *,
        stats_path: str | None = None,
        metrics_path: str | None = None,
        health_path: str | None = None,
        before_stats: Hook | None = None,
    ) -> None:
        paths = [path for path in (stats_path, metrics_path, health_path) if path is not None]
        if len(set(paths)) != len(paths):
            raise ValueError("stats_path, metrics_path and health_path must differ")
        if not all(path.startswith("/") for path in paths):
            raise ValueError("a monitoring path must start with '/'")
        self.app = app
        self.manager = manager
        self.stats_path = stats_path
        self.metrics_path = metrics_path
        self.health_path = health_path
        self.before_stats = before_stats
        self._started = time.monotonic()

    @property
    def uptime(self) -> float:
        """Seconds since this middleware was made (for the standalone server: started)."""
        return time.monotonic() - self._started

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in (self.stats_path, self.metrics_path, self.health_path):
            return self.app(environ, start_response)
        return for_method(environ, self._answer(path, environ, start_response))

    def _answer(
        self, path: str, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "") not in ("GET", "HEAD"):
            return json_error(start_response, "405 Method Not Allowed",
                              "Invalid HTTP Method. Only GET and HEAD allowed.",
                              [*_JSON_HEADERS, ("Allow", "GET, HEAD")])
        if path == self.health_path:
            return self._health(start_response)
        rejection = run_hook(self.before_stats, environ, start_response, _JSON_HEADERS)
        if rejection is not None:
            return rejection
        try:
            stats = self.manager.stats()
        except StorageUnavailable as error:
            return retry_later(start_response, f"The statistics are unavailable: {error}",
                               _JSON_HEADERS)
        uptime = self.uptime
        if path == self.stats_path:
            body = json.dumps(_stats_document(self.manager, stats, uptime)).encode()
            return respond(start_response, "200 OK", _JSON_HEADERS, body)
        text = prometheus_text(self.manager, stats, uptime)
        return respond(start_response, "200 OK",
                       [("Content-Type", PROMETHEUS_CONTENT_TYPE), *JSON_HEADERS[1:], _NO_CACHE],
                       text.encode())

    def _health(self, start_response: StartResponse) -> list[bytes]:
        try:
            self.manager.check()
        except ManagerClosed:
            body = b'{"status": "closed"}'
        except StorageUnavailable as error:
            body = json.dumps({"status": "unavailable", "error": str(error)}).encode()
        else:
            return respond(start_response, "200 OK", _JSON_HEADERS, b'{"status": "ok"}')
        return respond(start_response, "503 Service Unavailable",
                       [*_JSON_HEADERS, ("Retry-After", RETRY_AFTER_SECONDS)], body)
