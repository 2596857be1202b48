"""The prometheus_client collector: one process, and multiprocess mode across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from wsgi_longpoll import LongpollManager
from wsgi_longpoll.contrib.prometheus import METRICS, LongpollMetrics
from wsgi_longpoll.manager import ManagerStats


def test_every_statistic_has_a_metric() -> None:
    assert [metric[0] for metric in METRICS] == [field.name for field in fields(ManagerStats)]


def test_figures_read_at_each_scrape() -> None:
    manager = LongpollManager(max_event_buffer_size=2)
    registry = CollectorRegistry()
    LongpollMetrics(manager, registry)
    for number in range(3):
        manager.publish("a", number)
    manager.publish("b", "x")
    assert registry.get_sample_value("wsgi_longpoll_events_published_total") == 4
    assert registry.get_sample_value("wsgi_longpoll_buffered_events") == 3
    assert registry.get_sample_value("wsgi_longpoll_categories") == 2
    assert registry.get_sample_value("wsgi_longpoll_waiting_subscribers") == 0
    manager.subscribe(["a"], 1, since_time=1)
    assert registry.get_sample_value("wsgi_longpoll_events_delivered_total") == 2
    manager.close()
    with pytest.raises(Exception):  # noqa: B017 - whatever the closed manager raises
        manager.publish("a", 1)
    assert registry.get_sample_value("wsgi_longpoll_publish_errors_total") == 1
    text = generate_latest(registry).decode()
    assert "# TYPE wsgi_longpoll_events_published_total counter" in text
    assert "# HELP wsgi_longpoll_events_published_total Events this process published." in text


def test_namespace_and_duplicates() -> None:
    registry = CollectorRegistry()
    manager = LongpollManager()
    LongpollMetrics(manager, registry, namespace="chat")
    assert registry.get_sample_value("chat_buffered_events") == 0
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        LongpollMetrics(manager, registry, namespace="chat")


def test_update_outside_multiprocess_mode_returns_the_stats() -> None:
    manager = LongpollManager()
    metrics = LongpollMetrics(manager, CollectorRegistry())
    manager.publish("a", 1)
    assert metrics.update().events_published == 1
    with pytest.raises(ValueError, match="interval"):
        metrics.start(0)


WORKER = textwrap.dedent("""
    import sys
    from wsgi_longpoll import LongpollManager
    from wsgi_longpoll.contrib.prometheus import LongpollMetrics

    events, shared = int(sys.argv[1]), sys.argv[2] == "shared"
    manager = LongpollManager()
    metrics = LongpollMetrics(manager, shared_store=shared)
    assert metrics.multiprocess
    metrics.update()
    for number in range(events):
        manager.publish("news", number)
    metrics.update()
    metrics.update()  # counters grow by the increase only
""")

SCRAPE = textwrap.dedent("""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    for name in ("wsgi_longpoll_events_published_total", "wsgi_longpoll_buffered_events",
                 "wsgi_longpoll_waiting_subscribers"):
        print(name, registry.get_sample_value(name))
""")


def run(script: str, directory: Path, *args: str) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(("store", "buffered"), [("memory", 8.0), ("shared", 5.0)])
def test_multiprocess_mode_sums_per_process_figures(tmp_path: Path, store: str,
                                                    buffered: float) -> None:
    """Two workers: events_published is summed; buffered_events summed in memory, the
    largest with a shared store (every worker reports the same global figure)."""
    run(WORKER, tmp_path, "3", store)
    run(WORKER, tmp_path, "5", store)
    figures = dict(line.split() for line in run(SCRAPE, tmp_path).splitlines())
    assert float(figures["wsgi_longpoll_events_published_total"]) == 8.0
    assert float(figures["wsgi_longpoll_buffered_events"]) == buffered
    assert float(figures["wsgi_longpoll_waiting_subscribers"]) == 0.0
