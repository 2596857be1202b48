"""The manager's figures in an application's ``prometheus_client`` registry.

Needs the ``[prometheus]`` extra (``prometheus_client``). One process:

.. code-block:: python

    from prometheus_client import REGISTRY
    from wsgi_longpoll.contrib.prometheus import LongpollMetrics

    LongpollMetrics(manager, REGISTRY)      # read at every scrape

Under gunicorn with several workers, ``prometheus_client``'s multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set before gunicorn starts) sums the workers' files; each
worker writes its figures there every *interval* seconds:

.. code-block:: python

    # gunicorn.conf.py
    from prometheus_client import multiprocess

    def post_worker_init(worker):
        from myapp import manager
        from wsgi_longpoll.engines import MemoryEngine
        in_memory = isinstance(manager.engine, MemoryEngine)   # each worker's own events
        LongpollMetrics(manager, shared_store=not in_memory).start(interval=5)

    def child_exit(server, worker):
        multiprocess.mark_process_dead(worker.pid)

and the ``/metrics`` view exposes ``MultiProcessCollector(CollectorRegistry())``.

Which figures are whose (see :class:`~wsgi_longpoll.manager.ManagerStats`):

- **per process**, whatever the engine: ``wsgi_longpoll_waiting_subscribers`` (the long
  polls this process holds), the bytes it holds for each kind of its memory budget
  (``wsgi_longpoll_buffered_event_bytes``, ``wsgi_longpoll_idempotency_key_bytes``: ``0``
  with Redis, which holds them; ``wsgi_longpoll_stream_backlog_bytes``,
  ``wsgi_longpoll_parked_answer_bytes``), ``wsgi_longpoll_events_published_total`` (the events *this
  process* published: with Redis, a worker does not count its peers' publishes),
  ``wsgi_longpoll_events_delivered_total`` and ``wsgi_longpoll_publish_errors_total``. In
  multiprocess mode they are summed over the workers (gauges over the live ones);
- **global with Redis** (``shared_store=True``), per process otherwise:
  ``wsgi_longpoll_categories`` and ``wsgi_longpoll_buffered_events``. With Redis every
  worker reports the same figure, the whole stream's, so multiprocess mode takes the
  largest (``livemax``) instead of adding them up; in memory each worker holds its own
  events, and they are summed (``livesum``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from typing import Literal

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "wsgi_longpoll.contrib.prometheus needs prometheus_client: "
        "pip install 'wsgi_longpoll[prometheus]'"
    ) from error

from ..manager import LongpollManager, ManagerStats

__all__ = ["LongpollMetrics"]

logger = logging.getLogger(__name__)

#: The statistic, the metric's name (without ``_total``), kind, and help, in
#: :class:`ManagerStats` order.
METRICS = (
    ("categories", "categories", "gauge",
     "Categories that hold events (all processes' with Redis, this process's otherwise)."),
    ("buffered_events", "buffered_events", "gauge",
     "Events held in the buffers (all processes' with Redis, this process's otherwise)."),
    ("waiting_subscribers", "waiting_subscribers", "gauge",
     "Long polls waiting for events in this process."),
    ("events_published", "events_published", "counter",
     "Events this process published."),
    ("events_delivered", "events_delivered", "counter",
     "Events this process handed to subscribers (one event to ten counts ten)."),
    ("publish_errors", "publish_errors", "counter",
     "Publishes in this process that failed after validation."),
    ("buffered_event_bytes", "buffered_event_bytes", "gauge",
     "Bytes of the events buffered in this process's memory (0 with Redis)."),
    ("idempotency_key_bytes", "idempotency_key_bytes", "gauge",
     "Bytes of the idempotency keys remembered in this process's memory (0 with Redis)."),
    ("stream_backlog_bytes", "stream_backlog_bytes", "gauge",
     "Bytes this process's event streams hold that their readers have not taken yet."),
    ("parked_answer_bytes", "parked_answer_bytes", "gauge",
     "Bytes of this process's long-poll answers their readers have not taken yet."),
)

#: The figures global to every process when the events are in Redis.
SHARED_FIGURES = frozenset({"categories", "buffered_events"})


def multiprocess_mode() -> bool:
    """Whether ``prometheus_client`` runs in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class _ScrapeCollector(Collector):
    """Reads :meth:`LongpollManager.stats` at every scrape (one process)."""

    def __init__(self, manager: LongpollManager, namespace: str) -> None:
        self.manager = manager
        self.namespace = namespace

    def _families(self, stats: ManagerStats | None) -> Iterable[Metric]:
        for field, name, kind, help_text in METRICS:
            full_name = f"{self.namespace}_{name}"
            family: Metric
            if kind == "counter":
                family = CounterMetricFamily(full_name, help_text)
            else:
                family = GaugeMetricFamily(full_name, help_text)
            if stats is not None:
                family.add_metric([], getattr(stats, field))
            yield family

    def describe(self) -> Iterable[Metric]:
        """The metrics' names, so that the registry refuses a duplicate at once."""
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        return self._families(self.manager.stats())


class LongpollMetrics:
    """Registers *manager*'s figures (see the module's notes on which are per process).

    Outside multiprocess mode the figures are read from the manager at every scrape.
    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) they are gauges and counters
    that ``prometheus_client`` writes to that directory: call :meth:`update` (or
    :meth:`start`) in every worker, after it forks.

    :param manager: whose :meth:`~LongpollManager.stats` to report.
    :param registry: where to register (default: ``prometheus_client.REGISTRY``).
    :param shared_store: the manager keeps its events in Redis (``redis_url``), so that
        ``categories`` and ``buffered_events`` are the same in every process; it only
        matters in multiprocess mode, where they are then not added up.
    :param namespace: the metrics' name prefix.
    :raises ValueError: if a metric of the same name is already registered there.
    """

    def __init__(
        self,
        manager: LongpollManager,
        registry: CollectorRegistry = REGISTRY,
        *,
        shared_store: bool = False,
        namespace: str = "wsgi_longpoll",
    ) -> None:
        self.manager = manager
        self.registry = registry
        self.multiprocess = multiprocess_mode()
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}
        self._gauges: dict[str, Gauge] = {}
        self._counters: dict[str, Counter] = {}
        self._stop = threading.Event()
        if not self.multiprocess:
            registry.register(_ScrapeCollector(manager, namespace))
            return
        for field, name, kind, help_text in METRICS:
            if kind == "counter":
                self._counters[field] = Counter(name, help_text, namespace=namespace,
                                                registry=registry)
            else:
                mode: Literal["livemax", "livesum"] = (
                    "livemax" if shared_store and field in SHARED_FIGURES else "livesum"
                )
                self._gauges[field] = Gauge(name, help_text, namespace=namespace,
                                            registry=registry, multiprocess_mode=mode)

    def update(self) -> ManagerStats:
        """Write the manager's figures now (multiprocess mode; a no-op read otherwise).

        :returns: the figures written.
        :raises StorageUnavailable: with Redis, if it cannot be reached.
        """
        stats = self.manager.stats()
        with self._lock:
            for field, gauge in self._gauges.items():
                gauge.set(getattr(stats, field))
            for field, counter in self._counters.items():
                value = getattr(stats, field)
                increase = value - self._last.get(field, 0)
                if increase > 0:
                    counter.inc(increase)
                self._last[field] = value
        return stats

    def start(self, interval: float = 5.0) -> threading.Thread:
        """Call :meth:`update` now and then every *interval* seconds, in a daemon thread
        (a greenlet when gevent has patched ``threading``), until :meth:`stop`.

        :raises ValueError: if *interval* is not above 0.
        """
        if not interval > 0:
            raise ValueError(f"interval must be above 0, not {interval!r}")
        self._stop.clear()

        def run() -> None:
            while True:
                try:
                    self.update()
                except Exception:  # a Redis outage must not end the updates
                    logger.exception("could not update the long-poll metrics")
                if self._stop.wait(interval):
                    return

        thread = threading.Thread(target=run, name="wsgi-longpoll-metrics", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """End the updates :meth:`start` began."""
        self._stop.set()
