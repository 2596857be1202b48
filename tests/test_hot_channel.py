"""A hot channel: every subscriber wants every event (issue 21, the delivery side).

The publisher is answered before the fan-out; each subscriber gets its events in publish
order; streams and polls at one position share one encoding; stream backlogs hold shared
frames under one cap that ends the streams furthest behind first; a subscriber that comes
back in time meets no eviction.
"""

from __future__ import annotations

import json
import resource
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from conftest import wait_until

from wsgi_longpoll import Server, ServerInfo
from wsgi_longpoll.engines import MemoryEngine
from wsgi_longpoll.server import longpoll
from wsgi_longpoll.server.http import Connection
from wsgi_longpoll.server.longpoll import LongpollRouter, ParkedPoll, ParkedStream


def _start(**options: Any) -> Server:
    server = Server(access_log=False, **options)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    return server


@pytest.fixture
def hot_server() -> Iterator[Server]:
    server = _start(max_event_buffer_size=1000)
    yield server
    server.stop(5)


def _connect(port: int, request: bytes, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:  # before connecting: it sets the window the server sees
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def _poll_request(query: str, *, version: str = "1.1", close: bool = False) -> bytes:
    head = f"GET /events?{query} HTTP/{version}\r\nHost: 127.0.0.1\r\n"
    if close:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode()


def _stream_request(query: str) -> bytes:
    return (f"GET /events?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n").encode()


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One whole response with a Content-Length: ``(head, body)``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed within a body"
        body += chunk
    return head, body[:length]


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before {marker!r}"
        data += chunk
    return data


def _chunks(body: bytes) -> list[bytes]:
    """The chunks of a chunked body read so far (whole ones)."""
    chunks = []
    while b"\r\n" in body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0 or len(rest) < size + 2:
            break
        chunks.append(rest[:size])
        body = rest[size + 2:]
    return chunks


def _capture(monkeypatch: pytest.MonkeyPatch, cls: type, name: str,
             record: Callable[..., None]) -> None:
    """Wrap method *name* of *cls*: *record* sees its arguments, then it runs."""
    original = getattr(cls, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        record(self, *args, **kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, wrapper)


def _open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files (ulimit -n)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# -- ack first ------------------------------------------------------------------------


def test_a_publish_is_answered_before_its_fan_out_to_2000_parked_polls(
    hot_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    _open_files(4500)
    order: list[str] = []
    _capture(monkeypatch, ParkedPoll, "deliver", lambda poll, events: order.append("deliver"))
    original_publish = LongpollRouter.publish

    def publish(self: LongpollRouter, connection: Connection, request: Any) -> None:
        original_publish(self, connection, request)  # its 200 is written when it returns
        order.append("answered")

    monkeypatch.setattr(LongpollRouter, "publish", publish)
    port = hot_server.port
    polls = [_connect(port, _poll_request("category=hot&timeout=25")) for _ in range(2000)]
    try:
        wait_until(lambda: hot_server.manager.waiting_count("hot") == 2000, 60)
        answer = requests.post(f"http://127.0.0.1:{port}/publish",
                               json={"category": "hot", "data": "now"}, timeout=30)
        assert answer.status_code == 200
        for sock in polls:
            head, body = _read_response(sock)
            assert head.startswith(b"HTTP/1.1 200") and b'"now"' in body
    finally:
        for sock in polls:
            sock.close()
    assert order[0] == "answered"
    assert order.count("deliver") == 2000


def test_every_subscriber_gets_the_events_in_publish_order_under_concurrent_publishers(
    hot_server: Server,
) -> None:
    port = hot_server.port
    base_url = f"http://127.0.0.1:{port}"
    publishers, per_publisher = 4, 40
    total = publishers * per_publisher
    received: dict[str, list[str]] = {}

    def repoll(name: str) -> None:
        got = received[name] = []
        since_time, last_id = 1, None
        with requests.Session() as session:
            while len(got) < total:
                params: dict[str, Any] = {"category": "order", "timeout": 20,
                                          "since_time": since_time}
                if last_id is not None:
                    params["last_id"] = last_id
                answer = session.get(f"{base_url}/events", params=params, timeout=30).json()
                assert "gaps" not in answer
                for event in answer.get("events", ()):
                    got.append(event["id"])
                    since_time, last_id = event["timestamp"], event["id"]

    def stream(name: str, sock: socket.socket) -> None:
        got = received[name] = []
        data = b""
        while len(got) < total:
            chunk = sock.recv(65536)
            assert chunk, "the stream ended early"
            data += chunk
            *complete, data = data.split(b"\n\n")
            for message in complete:
                for line in message.split(b"\n"):
                    if line.startswith(b"data: ") and b'"id"' in line:
                        got.append(json.loads(line[6:])["id"])

    streams = [_connect(port, _stream_request("category=order&timeout=25")) for _ in range(4)]
    readers = [threading.Thread(target=repoll, args=(f"poll-{n}",)) for n in range(8)]
    readers += [threading.Thread(target=stream, args=(f"stream-{n}", sock))
                for n, sock in enumerate(streams)]
    for reader in readers:
        reader.start()
    try:
        wait_until(lambda: hot_server.manager.waiting_count("order") >= 8, 20)

        def publish_all(publisher: int) -> None:
            with requests.Session() as session:
                for n in range(per_publisher):
                    answer = session.post(
                        f"{base_url}/publish", timeout=10,
                        json={"category": "order", "data": f"{publisher}-{n}"})
                    assert answer.status_code == 200

        threads = [threading.Thread(target=publish_all, args=(p,)) for p in range(publishers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for reader in readers:
            reader.join(60)
    finally:
        for sock in streams:
            sock.close()
    published = [event.id for event in hot_server.manager.buffered_events("order")]
    assert len(published) == total
    assert len(received) == 12
    for name, got in received.items():
        assert got == published, name


# -- shared encodings -----------------------------------------------------------------


def test_streams_at_one_position_get_one_write_of_one_encoding(
    hot_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[ParkedStream] = []
    _capture(monkeypatch, ParkedStream, "__init__", lambda stream, *args: made.append(stream))
    encodings = []
    original_batch_body = longpoll.batch_body

    def batch_body(events: Any, gaps: Any = ()) -> bytes:
        encodings.append(len(events))
        return original_batch_body(events, gaps)

    monkeypatch.setattr(longpoll, "batch_body", batch_body)
    port = hot_server.port
    streams = [_connect(port, _stream_request("category=burst&timeout=25")) for _ in range(5)]
    try:
        wait_until(lambda: hot_server.manager.waiting_count("burst") == 5)
        heads = [_read_until(sock, b"\r\n\r\n") for sock in streams]
        manager = hot_server.manager
        done = threading.Event()

        def publish_ten() -> None:  # on the server's hub: one turn of its loop
            for n in range(10):
                manager.publish("burst", n)
            done.set()

        made[0].hub.loop.run_callback_threadsafe(publish_ten)
        assert done.wait(10)
        bodies = []
        for sock, head in zip(streams, heads, strict=True):
            body = head.partition(b"\r\n\r\n")[2]
            while len(_chunks(body)) < 2:  # the stream's start, then the events
                body += sock.recv(65536)
            bodies.append(_chunks(body)[1])
    finally:
        for sock in streams:
            sock.close()
    assert encodings == [10]  # one encoding of the ten events, for all five streams
    assert bodies[0].count(b"\ndata: ") == 10
    assert all(body == bodies[0] for body in bodies)


def test_polls_that_asked_to_close_share_the_encoded_answer(
    hot_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    heads: list[bytes] = []
    _capture(monkeypatch, Connection, "response_head",
             lambda connection, request, status, headers, length: heads.append(status))
    port = hot_server.port
    requests_ = [_poll_request("category=closing&timeout=25", close=True)] * 4
    requests_ += [_poll_request("category=closing&timeout=25", version="1.0")] * 3
    polls = [_connect(port, request) for request in requests_]
    try:
        wait_until(lambda: hot_server.manager.waiting_count("closing") == 7)
        heads.clear()
        hot_server.manager.publish("closing", "shared")
        answers = [_read_response(sock) for sock in polls]
        for sock in polls:  # the server closes each connection after its answer
            assert sock.recv(1) == b""
    finally:
        for sock in polls:
            sock.close()
    # one head for the HTTP/1.1 polls that close, one for the HTTP/1.0 ones
    assert len(heads) == 2
    assert all(b"Connection: close" in head for head, _ in answers)
    assert len({body for _, body in answers}) == 1 and b'"shared"' in answers[0][1]


def test_re_polls_at_one_position_share_one_encoded_answer(
    hot_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    encodings: list[int] = []
    original_events_body = longpoll.events_body

    def events_body(events: Any, gaps: Any = ()) -> bytes:
        encodings.append(len(events))
        return original_events_body(events, gaps)

    monkeypatch.setattr(longpoll, "events_body", events_body)
    manager = hot_server.manager
    first = manager.publish("again", 0)
    published = [manager.publish("again", n) for n in range(1, 4)]
    query = f"category=again&timeout=5&since_time={first.timestamp}&last_id={first.id}"
    bodies = []
    for _ in range(6):
        with _connect(hot_server.port, _poll_request(query)) as sock:
            bodies.append(_read_response(sock)[1])
    assert encodings == [3]
    assert all(body == bodies[0] for body in bodies)
    assert [event["id"] for event in json.loads(bodies[0])["events"]] == [
        event.id for event in published]


# -- stream backlogs ------------------------------------------------------------------


def _publish_delivered(server: Server, category: str, data: Any) -> Any:
    """Publish, and wait until the fan-out handed it to every subscriber."""
    manager = server.manager
    waiting = manager.waiting_count(category)
    delivered = manager.stats().events_delivered
    event = manager.publish(category, data)
    wait_until(lambda: manager.stats().events_delivered >= delivered + waiting)
    return event


def test_stream_backlogs_hold_shared_frames_once(
    hot_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ParkedStream, "max_pending", 64 * 1024 * 1024)
    made: list[ParkedStream] = []
    _capture(monkeypatch, ParkedStream, "__init__", lambda stream, *args: made.append(stream))
    manager = hot_server.manager
    backlog = manager.stream_backlog
    stalled = [_connect(hot_server.port, _stream_request("category=stall&timeout=25"), 4096)
               for _ in range(20)]  # and never read
    try:
        wait_until(lambda: manager.waiting_count("stall") == 20)
        big = "x" * (256 * 1024)
        for _ in range(64):  # 16 MiB: beyond what the sockets take
            _publish_delivered(hot_server, "stall", big)
        assert all(stream.behind > 1024 * 1024 for stream in made)
        behind = sum(stream.behind for stream in made)
        # each frame is held once, however many of the 20 backlogs hold it
        assert max(stream.behind for stream in made) <= backlog.bytes < behind / 10
    finally:
        for sock in stalled:
            sock.close()
    wait_until(lambda: backlog.bytes == 0 and backlog.streams_behind == 0)


def test_the_stream_backlog_cap_ends_the_streams_furthest_behind_first(
    hot_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ParkedStream, "max_pending", 64 * 1024 * 1024)
    made: list[ParkedStream] = []
    _capture(monkeypatch, ParkedStream, "__init__", lambda stream, *args: made.append(stream))
    manager = hot_server.manager
    backlog = manager.stream_backlog
    big = "x" * (256 * 1024)
    port = hot_server.port
    # The first to come (and the first handed each frame) will read some; the second none.
    reader = _connect(port, _stream_request("category=cap&timeout=25"), 4096)
    stalled = _connect(port, _stream_request("category=cap&timeout=25"), 4096)
    try:
        wait_until(lambda: manager.waiting_count("cap") == 2)
        ahead, behind = made
        for _ in range(48):  # 12 MiB: both fall behind
            _publish_delivered(hot_server, "cap", big)
        assert ahead.behind > 0 and behind.behind > 0
        read = 0
        while read < 4 * 1024 * 1024:  # the server writes more of its backlog meanwhile
            read += len(reader.recv(1 << 20))
        wait_until(lambda: ahead.behind + 1024 * 1024 < behind.behind)
        assert manager.waiting_count("cap") == 2
        monkeypatch.setattr(backlog, "max_bytes", backlog.bytes + 128 * 1024)
        last = _publish_delivered(hot_server, "cap", big)  # one frame more than the cap
        assert behind.ended and not ahead.ended
        assert manager.waiting_count("cap") == 1
        assert backlog.bytes <= backlog.max_bytes
        # the one cut: its connection ends without the last event
        received = b""
        while chunk := stalled.recv(1 << 20):
            received += chunk
        assert last.id.encode() not in received
        # the one ahead lives on: it gets the last event, then what comes next
        following = manager.publish("cap", "next")
        _read_until(reader, f"id: {following.timestamp}:{following.id}".encode())
    finally:
        reader.close()
        stalled.close()


# -- the buffer on a hot channel ------------------------------------------------------


def test_a_subscriber_that_re_polls_in_time_meets_no_eviction() -> None:
    server = _start(max_event_buffer_size=5)
    try:
        base_url = f"http://127.0.0.1:{server.port}"
        with requests.Session() as session:
            parked = threading.Thread(target=lambda: answers.append(session.get(
                f"{base_url}/events", params={"category": "busy", "timeout": 20},
                timeout=30).json()))
            answers: list[dict[str, Any]] = []
            parked.start()
            wait_until(lambda: server.manager.waiting_count("busy") == 1)
            server.manager.publish("busy", 0)
            parked.join(30)
            event = answers[0]["events"][0]
            # 20 more events while the subscriber is away: 4 times the buffer
            published = [server.manager.publish("busy", n).id for n in range(1, 21)]
            answer = session.get(f"{base_url}/events", timeout=30, params={
                "category": "busy", "timeout": 5, "since_time": event["timestamp"],
                "last_id": event["id"]}).json()
        assert "gaps" not in answer
        assert [event["id"] for event in answer["events"]] == published
    finally:
        server.stop(5)


def test_the_events_kept_for_a_re_poll_go_after_the_grace(engine_clock: list[int]) -> None:
    engine = MemoryEngine(max_event_buffer_size=3)
    engine.bind(lambda batch: None)
    engine.watch(["busy"], (0, 0))
    engine.append("busy", 0)  # handed to a watcher: what follows is kept for the grace
    for n in range(1, 11):
        engine.append("busy", n)
    assert [event.data for event in engine.events("busy")] == list(range(1, 11))
    engine_clock[0] += int(MemoryEngine.repoll_grace_seconds * 1000) + 1
    engine.unwatch(["busy"])
    engine.append("busy", 11)
    assert [event.data for event in engine.events("busy")] == [9, 10, 11]


def test_the_subscribers_of_a_destroyed_hub_are_forgotten_at_the_next_publish() -> None:
    import gevent

    from wsgi_longpoll.manager import LongpollManager, Subscriber

    manager = LongpollManager()

    class Parked(Subscriber):
        def deliver(self, events: Any) -> bool:
            raise AssertionError("delivered on a hub that is gone")

        def release(self) -> None:
            pass

    def wait_on_a_hub_that_goes() -> None:
        hub = gevent.get_hub()
        subscriber = Parked()
        subscriber.hub = hub
        assert manager.attach(subscriber, "gone") is None
        hub.destroy(destroy_loop=True)

    thread = threading.Thread(target=wait_on_a_hub_that_goes)
    thread.start()
    thread.join(10)
    assert manager.waiting_count("gone") == 1
    manager.publish("gone", 1)  # does not fail, and forgets it
    assert manager.waiting_count("gone") == 0
