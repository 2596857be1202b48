"""Issue 20, item 1: one memory budget (``max_memory_bytes``) bounds everything clients can
make the server hold, and ``/stats`` shows the bytes of each kind.

Black-box, over real sockets on 127.0.0.1 (the seed's ``Server``): idempotency keys keep
neither the events they stand for nor more than their share, unread answers and stream
backlogs are counted, and answers that nobody reads turn new subscribers away (503).
The budget's own arithmetic is tested last, on :class:`~wsgi_longpoll.budget.MemoryBudget`.
"""

from __future__ import annotations

import contextlib
import gc
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from conftest import wait_until

from wsgi_longpoll import Server, ServerInfo
from wsgi_longpoll.budget import (
    BUFFERED_EVENTS,
    IDEMPOTENCY_KEYS,
    KINDS,
    PARKED_ANSWERS,
    STREAM_BACKLOGS,
    MemoryBudget,
)
from wsgi_longpoll.event import Event

WAIT_SECONDS = 20
MiB = 1024 * 1024
#: What each kind reports in ``/stats``.
STATS_FIELDS = ("buffered_event_bytes", "idempotency_key_bytes", "stream_backlog_bytes",
                "parked_answer_bytes")


@contextlib.contextmanager
def serving(**options: Any) -> Iterator[str]:
    """A ``Server`` on a free port of 127.0.0.1 with ``/stats`` (and publish bodies up to
    8 MiB); its base URL."""
    server = Server(access_log=False, stats_path="/stats", max_body_size=8 * MiB, **options)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop(5)


def stats(base_url: str) -> dict[str, Any]:
    answer = requests.get(f"{base_url}/stats", timeout=WAIT_SECONDS)
    answer.raise_for_status()
    document: dict[str, Any] = answer.json()
    return document


def publish(session: requests.Session, base_url: str, category: str, data: Any,
            key: str | None = None) -> requests.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return session.post(f"{base_url}/publish", json={"category": category, "data": data},
                        headers=headers, timeout=WAIT_SECONDS)


def events_held(category: str) -> list[Event]:
    """Every :class:`Event` of *category* alive in this process (the server's included)."""
    gc.collect()
    # type(), not isinstance(): that would ask lazy objects other tests left behind
    # (Django's settings) for their class.
    return [item for item in gc.get_objects()
            if type(item) is Event and item.category == category]


def newest_event(session: requests.Session, base_url: str, category: str) -> dict[str, Any]:
    """The newest event *category* buffers (a long poll from the start)."""
    answer = session.get(f"{base_url}/events",
                         params={"category": category, "timeout": 1, "since_time": 0},
                         timeout=WAIT_SECONDS)
    answer.raise_for_status()
    event: dict[str, Any] = answer.json()["events"][-1]
    return event


def stalled_reader(port: int, request: bytes) -> socket.socket:
    """A connection that sends *request* and never reads (a small receive window)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(WAIT_SECONDS)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Read one answer (with a ``Content-Length``) from *sock*; its body."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(1 << 20)
        assert chunk, "the connection ended before the answer's head"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        chunk = sock.recv(1 << 20)
        assert chunk, "the connection ended before the answer's body"
        body += chunk
    return body


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


# -- idempotency keys ------------------------------------------------------------------


def test_distinct_idempotency_keys_keep_memory_within_the_budget() -> None:
    # Issue 20, item 1, scaled down: 1,000 publishes of 16 KiB (16 MiB in all), each with
    # its own Idempotency-Key, under a budget of 8 MiB (4 MiB for events, 1 MiB for keys).
    budget = 8 * MiB
    data = "x" * (16 * 1024)
    category = f"keyed-{uuid.uuid4()}"  # no other test's events count
    with serving(max_memory_bytes=budget) as base_url, requests.Session() as session:
        for n in range(1000):
            publish(session, base_url, category, data, key=f"key-{n}").raise_for_status()
        figures = stats(base_url)
        assert figures["max_memory_bytes"] == budget
        assert 0 < figures["buffered_event_bytes"] <= budget // 2
        assert 0 < figures["idempotency_key_bytes"] <= budget // 8
        assert sum(figures[field] for field in STATS_FIELDS) <= budget
        # The key table holds no event: only the buffered ones are alive.
        buffered = figures["buffered_events"]
        assert buffered < 1000
        assert len(events_held(category)) <= buffered
        # The first event is long evicted; its key still stands for it.
        newest = newest_event(session, base_url, category)
        assert publish(session, base_url, category, data, key="key-0").status_code == 200
        assert newest_event(session, base_url, category) == newest  # nothing published again
        other = publish(session, base_url, category, "other", key="key-0")
        assert other.status_code == 422
        assert "key-0" in other.json()["error"]


def test_idempotency_keys_beyond_their_share_are_forgotten_oldest_first() -> None:
    budget = 64 * 1024  # 8 KiB for keys: some fifteen of them
    with serving(max_memory_bytes=budget) as base_url, requests.Session() as session:
        for n in range(100):
            publish(session, base_url, "c", n, key=f"key-{n}").raise_for_status()
        figures = stats(base_url)
        assert 0 < figures["idempotency_key_bytes"] <= budget // 8
        newest = newest_event(session, base_url, "c")
        publish(session, base_url, "c", 99, key="key-99").raise_for_status()
        assert newest_event(session, base_url, "c") == newest  # the newest key is remembered
        publish(session, base_url, "c", 0, key="key-0").raise_for_status()
        again = newest_event(session, base_url, "c")  # the oldest was forgotten
        assert again["data"] == 0 and again["id"] != newest["id"]


# -- unread answers and stream backlogs --------------------------------------------------


def test_unread_answers_are_counted_and_turn_new_subscribers_away_at_their_share() -> None:
    budget = 16 * MiB  # 8 MiB for events, 2 MiB for unread answers
    with serving(max_memory_bytes=budget) as base_url, requests.Session() as session:
        for _ in range(6):
            publish(session, base_url, "big", "x" * MiB).raise_for_status()
        # An answer of 6 MiB to a reader that takes nothing.
        stalled = stalled_reader(
            port_of(base_url),
            b"GET /events?category=big&timeout=5&since_time=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            wait_until(lambda: stats(base_url)["parked_answer_bytes"] > 0)
            assert stats(base_url)["parked_answer_bytes"] >= budget // 8
            refused = session.get(f"{base_url}/events",
                                  params={"category": "other", "timeout": 1},
                                  timeout=WAIT_SECONDS)
            assert refused.status_code == 503
            assert "max_memory_bytes" in refused.json()["error"]
            # Once the reader takes its answer, subscribers are welcome again.
            read_answer(stalled)
        finally:
            stalled.close()
        wait_until(lambda: stats(base_url)["parked_answer_bytes"] == 0)
        answer = session.get(f"{base_url}/events", params={"category": "other", "timeout": 1},
                             timeout=WAIT_SECONDS)
        assert answer.status_code == 200


def test_one_answer_to_many_parked_polls_that_do_not_read_is_held_once() -> None:
    with serving(max_memory_bytes=256 * MiB) as base_url, requests.Session() as session:
        stalled = [
            stalled_reader(port_of(base_url),
                           b"GET /events?category=big&timeout=30 HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(10)
        ]
        try:
            wait_until(lambda: stats(base_url)["waiting_subscribers"] == 10)
            # More than the socket buffers take (a few MiB on loopback), to each of ten.
            publish(session, base_url, "big", "x" * (6 * MiB)).raise_for_status()
            wait_until(lambda: stats(base_url)["waiting_subscribers"] == 0)
            # One encoded answer, shared by the ten polls, not ten copies.
            assert 6 * MiB < stats(base_url)["parked_answer_bytes"] < 7 * MiB
        finally:
            for sock in stalled:
                sock.close()
        wait_until(lambda: stats(base_url)["parked_answer_bytes"] == 0)


def test_stats_show_what_an_event_stream_reader_has_not_taken() -> None:
    with serving(max_memory_bytes=64 * MiB) as base_url, requests.Session() as session:
        stalled = stalled_reader(
            port_of(base_url),
            b"GET /events?category=big&timeout=30 HTTP/1.1\r\nHost: x\r\n"
            b"Accept: text/event-stream\r\n\r\n")
        try:
            wait_until(lambda: stats(base_url)["waiting_subscribers"] == 1)
            # 6 MiB: more than the socket buffers (a few MiB on loopback), less than the
            # 8 MiB at which a stream is cut.
            for _ in range(6):
                publish(session, base_url, "big", "x" * MiB).raise_for_status()
            wait_until(lambda: stats(base_url)["stream_backlog_bytes"] > MiB)
        finally:
            stalled.close()
        wait_until(lambda: stats(base_url)["stream_backlog_bytes"] == 0)


# -- the budget's arithmetic -------------------------------------------------------------


def test_the_shares_add_up_to_the_budget() -> None:
    budget = MemoryBudget(1000)
    limits = [budget.limit(kind) for kind in KINDS]
    assert limits == [500, 125, 250, 125]
    assert MemoryBudget(None).limit(BUFFERED_EVENTS) is None


def test_a_budget_counts_shared_answers_once_and_forgets_a_source_that_is_gone() -> None:
    budget = MemoryBudget(800)  # 100 for parked answers

    class Holder:
        def held(self) -> int:
            return 30

    holder = Holder()
    budget.add_source(STREAM_BACKLOGS, holder.held)
    budget.add_source(IDEMPOTENCY_KEYS, lambda: 7)
    answer, other = b"a" * 60, b"o" * 40
    budget.hold(PARKED_ANSWERS, answer)
    budget.hold(PARKED_ANSWERS, answer)  # shared by two polls: counted once
    assert not budget.exhausted(PARKED_ANSWERS)
    budget.hold(PARKED_ANSWERS, other)
    assert budget.exhausted(PARKED_ANSWERS)
    budget.release(PARKED_ANSWERS, other)
    budget.release(PARKED_ANSWERS, answer)
    assert budget.held(PARKED_ANSWERS) == 60  # one poll still holds it
    use = budget.use()
    assert (use.stream_backlogs, use.idempotency_keys, use.parked_answers) == (30, 7, 60)
    assert use.total == 97
    del holder
    gc.collect()
    assert budget.held(STREAM_BACKLOGS) == 0


@pytest.mark.parametrize("value", [0, -1])
def test_a_budget_under_one_byte_is_refused_by_name(value: int) -> None:
    with pytest.raises(ValueError, match="max_memory_bytes must be at least 1"):
        MemoryBudget(value)

