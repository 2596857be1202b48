"""MonitoringMiddleware: statistics (JSON, Prometheus), health, and their guards."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from typing import Any

import gevent
import pytest
import requests
from conftest import wait_until
from webtest import TestApp

from wsgi_longpoll import LongpollManager, LongpollMiddleware, Server, ServerInfo
from wsgi_longpoll.engines.buffer import event_cost
from wsgi_longpoll.wsgi.auth import bearer_token
from wsgi_longpoll.wsgi.monitoring import MonitoringMiddleware


def other_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"other"]


def monitored(manager: LongpollManager | None = None, **options: Any) -> TestApp:
    manager = manager or LongpollManager(max_categories=50, max_waiting_subscribers=70)
    options = {"stats_path": "/stats", "metrics_path": "/metrics",
               "health_path": "/healthz", **options}
    return TestApp(MonitoringMiddleware(LongpollMiddleware(other_app, manager), manager,
                                        **options))


def known_sequence(manager: LongpollManager) -> None:
    """3 events in 2 categories; 2 delivered from the buffer; 1 failed publish."""
    manager.publish("a", 1)
    manager.publish("a", 2)
    manager.publish("b", {"x": [1]})
    manager.subscribe("a", 1, since_time=0)  # two events, at once
    manager.close()
    with pytest.raises(Exception, match="closed"):
        manager.publish("a", 3)


def held_event_bytes(manager: LongpollManager) -> int:
    """What the events *manager* buffers cost (categories "a" and "b")."""
    return sum(event_cost(event) for category in "ab"
               for event in manager.buffered_events(category))


def test_stats_json_after_a_known_sequence() -> None:
    manager = LongpollManager(max_categories=50, max_waiting_subscribers=70,
                              max_memory_bytes=1 << 20)
    app = monitored(manager)
    known_sequence(manager)
    response = app.get("/stats")
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-cache, no-store, must-revalidate"
    stats = response.json
    uptime = stats.pop("uptime_seconds")
    assert isinstance(uptime, float) and uptime >= 0
    assert stats.pop("pid") == os.getpid()
    assert stats == {
        "categories": 2,
        "buffered_events": 3,
        "waiting_subscribers": 0,
        "events_published": 3,
        "events_delivered": 2,
        "publish_errors": 1,
        "buffered_event_bytes": held_event_bytes(manager),
        "idempotency_key_bytes": 0,
        "stream_backlog_bytes": 0,
        "parked_answer_bytes": 0,
        "max_categories": 50,
        "max_waiting_subscribers": 70,
        "max_memory_bytes": 1 << 20,
    }


def test_waiting_subscribers_are_counted_while_they_wait() -> None:
    manager = LongpollManager()
    app = monitored(manager)
    waiters = [gevent.spawn(manager.subscribe, "c", 10) for _ in range(3)]
    gevent.sleep(0)  # let them park
    assert app.get("/stats").json["waiting_subscribers"] == 3
    manager.publish("c", "wake")
    gevent.joinall(waiters, timeout=10)
    stats = app.get("/stats").json
    assert stats["waiting_subscribers"] == 0
    assert stats["events_delivered"] == 3


def test_prometheus_text_after_a_known_sequence() -> None:
    manager = LongpollManager(max_categories=50, max_waiting_subscribers=70,
                              max_memory_bytes=1 << 20)
    app = monitored(manager)
    known_sequence(manager)
    response = app.get("/metrics")
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = response.text
    samples = dict(
        line.split(" ") for line in text.splitlines() if line and not line.startswith("#")
    )
    uptime = float(samples.pop("wsgi_longpoll_uptime_seconds"))
    assert uptime >= 0
    assert samples == {
        "wsgi_longpoll_categories": "2",
        "wsgi_longpoll_buffered_events": "3",
        "wsgi_longpoll_waiting_subscribers": "0",
        "wsgi_longpoll_events_published_total": "3",
        "wsgi_longpoll_events_delivered_total": "2",
        "wsgi_longpoll_publish_errors_total": "1",
        "wsgi_longpoll_buffered_event_bytes": str(held_event_bytes(manager)),
        "wsgi_longpoll_idempotency_key_bytes": "0",
        "wsgi_longpoll_stream_backlog_bytes": "0",
        "wsgi_longpoll_parked_answer_bytes": "0",
        "wsgi_longpoll_max_categories": "50",
        "wsgi_longpoll_max_waiting_subscribers": "70",
        "wsgi_longpoll_max_memory_bytes": str(1 << 20),
    }
    # Every sample has its HELP and TYPE, and counters are typed as such.
    for name in [*samples, "wsgi_longpoll_uptime_seconds"]:
        assert re.search(rf"^# HELP {name} \S", text, re.M)
        kind = "counter" if name.endswith("_total") else "gauge"
        assert f"# TYPE {name} {kind}\n" in text
    assert text.endswith("\n")


def test_uptime_grows() -> None:
    middleware = MonitoringMiddleware(other_app, LongpollManager(), stats_path="/stats")
    first = middleware.uptime
    wait_until(lambda: middleware.uptime > first + 0.01)


@pytest.mark.parametrize(
    ("closed", "status", "body"),
    [(False, 200, {"status": "ok"}), (True, 503, {"status": "closed"})],
    ids=["open", "closed"],
)
def test_health(closed: bool, status: int, body: dict[str, str]) -> None:
    manager = LongpollManager()
    app = monitored(manager)
    if closed:
        manager.close()
    response = app.get("/healthz", expect_errors=True)
    assert response.status_int == status
    assert response.json == body
    head = app.head("/healthz", expect_errors=True)
    assert head.status_int == status
    assert head.body == b""
    if closed:
        assert response.headers["Retry-After"] == "1"


@pytest.mark.parametrize("path", ["/stats", "/metrics", "/healthz"])
def test_other_methods_get_405(path: str) -> None:
    response = monitored().post(path, expect_errors=True)
    assert response.status_int == 405
    assert response.headers["Allow"] == "GET, HEAD"
    assert response.json == {"error": "Invalid HTTP Method. Only GET and HEAD allowed."}


def test_paths_are_off_unless_given() -> None:
    manager = LongpollManager()
    app = TestApp(MonitoringMiddleware(other_app, manager))
    for path in ("/stats", "/metrics", "/healthz"):
        assert app.get(path).body == b"other"


def test_other_paths_go_to_the_app() -> None:
    assert monitored().get("/elsewhere").body == b"other"


def test_before_stats_guards_stats_and_metrics_but_not_health() -> None:
    app = monitored(before_stats=bearer_token("t"))
    assert app.get("/stats", expect_errors=True).status_int == 401
    assert app.get("/metrics", expect_errors=True).status_int == 401
    assert app.get("/healthz").status_int == 200
    assert app.get("/stats", headers={"Authorization": "Bearer t"}).status_int == 200


def test_before_stats_returning_false_is_403() -> None:
    response = monitored(before_stats=lambda request: False).get("/stats", expect_errors=True)
    assert response.status_int == 403
    assert response.json == {"error": "Forbidden: rejected by the server's hook."}


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"stats_path": "/x", "health_path": "/x"}, "must differ"),
        ({"metrics_path": "metrics"}, "must start with '/'"),
    ],
    ids=["same-path", "relative-path"],
)
def test_bad_configuration_is_refused(options: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        MonitoringMiddleware(other_app, LongpollManager(), **options)


def test_standalone_server_stats_and_health_over_http() -> None:
    server = Server(access_log=False, stats_path="/stats", metrics_path="/metrics",
                    health_path="/healthz")
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=10))
    base = f"http://127.0.0.1:{server.port}"
    try:
        for n in range(4):
            requests.post(f"{base}/publish", json={"category": f"c{n % 2}", "data": n},
                          timeout=10)
        parked = threading.Thread(
            target=requests.get, args=(f"{base}/events?timeout=10&category=late",),
            kwargs={"timeout": 20},
        )
        parked.start()
        wait_until(lambda: server.manager.waiting_count() == 1)
        stats = requests.get(f"{base}/stats", timeout=10).json()
        assert (stats["categories"], stats["buffered_events"], stats["waiting_subscribers"],
                stats["events_published"]) == (2, 4, 1, 4)
        metrics = requests.get(f"{base}/metrics", timeout=10).text
        assert "wsgi_longpoll_waiting_subscribers 1\n" in metrics
        assert requests.get(f"{base}/healthz", timeout=10).json() == {"status": "ok"}
        requests.post(f"{base}/publish", json={"category": "late", "data": 0}, timeout=10)
        parked.join(20)
        assert requests.get(f"{base}/stats", timeout=10).json()["events_delivered"] == 1
    finally:
        server.stop(5)
