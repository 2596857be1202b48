"""Server-Sent Events on the subscription path, over real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
import requests
from conftest import wait_until
from gevent.pywsgi import WSGIServer
from werkzeug.wrappers import Request

from wsgi_longpoll import Server, ServerInfo
from wsgi_longpoll.client.sse import SSEMessage, SSEParser, parse_stream_id
from wsgi_longpoll.event import Event, Gap
from wsgi_longpoll.manager import LongpollManager
from wsgi_longpoll.protocol import ProtocolError, now_ms, parse_subscribe_query
from wsgi_longpoll.sse import (
    KEEP_ALIVE,
    accepts_event_stream,
    batch_body,
    event_id,
    parse_last_event_id,
    retry_field,
    stream_start,
)
from wsgi_longpoll.wsgi.middleware import Hook, LongpollMiddleware

STREAM = {"Accept": "text/event-stream"}
UUID = "3f2a5c1e-7b4d-4e8f-9a6b-1c2d3e4f5a6b"


# --- the wire format, pure --------------------------------------------------------------


def test_an_event_and_a_gap_on_the_wire() -> None:
    event = Event(1700000000123, "news", UUID, {"n": 1})
    gap = Gap("news", 1700000000100, "0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b")
    assert batch_body([event], [gap]) == (
        b'event: gap\ndata: {"category":"news","since_time":1700000000100,'
        b'"last_id":"0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"}\n\n'
        b"id: 1700000000123:" + UUID.encode() + b"\n"
        b'data: {"timestamp":1700000000123,"category":"news","data":{"n":1},"id":"'
        + UUID.encode() + b'"}\n\n'
    )
    assert event_id(event) == f"1700000000123:{UUID}"
    assert retry_field(2000) == b"retry: 2000\n\n"
    assert stream_start(2000, 17, None) == b"retry: 2000\nid: 17:\n\n"
    assert stream_start(500, 17, UUID) == b"retry: 500\nid: 17:" + UUID.encode() + b"\n\n"
    assert KEEP_ALIVE == b": keep-alive\n\n"


def test_data_with_a_newline_stays_on_one_data_line() -> None:
    body = batch_body([Event(1, "c", UUID, "two\nlines\r\n")])
    assert body.count(b"\n") == 3  # id, data, blank line: JSON escapes the newlines


@pytest.mark.parametrize(
    ("value", "cursor"),
    [
        (f"1700000000123:{UUID}", (1700000000123, UUID)),
        (f" 5:{UUID.upper()} ", (5, UUID)),
        (f"0:{UUID.replace('-', '')}", (0, UUID)),
        ("1700000000122:", (1700000000122, None)),
    ],
)
def test_last_event_id_is_a_cursor(value: str, cursor: tuple[int, str]) -> None:
    assert parse_last_event_id(value) == cursor


@pytest.mark.parametrize(
    "value",
    ["", "123", ":", f":{UUID}", UUID, f"x:{UUID}", "123:not-a-uuid", f"1.5:{UUID}", f"1;{UUID}"],
)
def test_an_unparseable_last_event_id_is_refused(value: str) -> None:
    with pytest.raises(ProtocolError, match="Last-Event-ID"):
        parse_last_event_id(value)


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        ("text/event-stream", True),
        ("text/html, Text/Event-Stream;q=0.9", True),
        ("application/json", False),
        ("*/*", False),
        ("text/*", False),
        ("", False),
    ],
)
def test_accept_header(accept: str, wanted: bool) -> None:
    assert accepts_event_stream(accept) is wanted


def test_a_stream_needs_no_timeout_but_a_long_poll_does() -> None:
    assert parse_subscribe_query("category=a", 110, default_timeout=110).timeout == 110
    assert parse_subscribe_query("category=a&timeout=5", 110, default_timeout=110).timeout == 5
    with pytest.raises(ProtocolError, match="timeout"):
        parse_subscribe_query("category=a&timeout=0", 110, default_timeout=110)
    with pytest.raises(ProtocolError, match="timeout"):
        parse_subscribe_query("category=a", 110)


def test_the_parser_follows_the_event_source_rules() -> None:
    parser = SSEParser()
    lines = [
        "retry: 1500", "", ": a comment", "id: 7", "data: {\"a\":", "data:1}", "",
        "event: gap", "data: x", "", "data", "", "id", "", "unknown: field", "",
    ]
    messages = list(parser.feed_lines(iter(lines)))
    assert messages == [
        SSEMessage("message", '{"a":\n1}', "7"),
        SSEMessage("gap", "x", None),
        SSEMessage("message", "", None),
    ]
    assert parser.retry == 1500
    assert parser.last_event_id == ""


@pytest.mark.parametrize(
    ("value", "cursor"),
    [(f"17:{UUID}", (17, UUID)), ("17:", (17, "")), ("17", None), ("x:1", None), ("", None)],
)
def test_the_client_reads_a_stream_id_as_a_cursor(
    value: str, cursor: tuple[int, str] | None
) -> None:
    assert parse_stream_id(value) == cursor


# --- helpers over sockets ---------------------------------------------------------------


class Stream:
    """A stream read over a raw socket: the answer's head, then its messages."""

    def __init__(self, port: int, query: str, headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        lines = [f"GET /events?{query} HTTP/1.1", "Host: 127.0.0.1", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.file = self.sock.makefile("rb")
        self.status = self.file.readline().decode().strip()
        self.headers: dict[str, str] = {}
        while (line := self.file.readline().decode().strip()) != "":
            name, _, value = line.partition(":")
            self.headers[name.lower()] = value.strip()
        self.parser = SSEParser()
        self.comments: list[str] = []
        self._messages = self.parser.feed_lines(self._lines())

    def _lines(self) -> Iterator[str]:
        # The body is chunked: a size line, the chunk, CRLF; SSE lines inside.
        pending = b""
        while True:
            size = int(self.file.readline().strip() or b"0", 16)
            if size == 0:
                return
            pending += self.file.read(size)
            self.file.readline()
            *complete, pending = pending.split(b"\n")
            for line in complete:
                text = line.decode()
                if text.startswith(":"):
                    self.comments.append(text)
                yield text

    def messages(self) -> Iterator[SSEMessage]:
        """The stream's messages; one iterator, so that a chunk's rest is not lost."""
        return self._messages

    def take(self, count: int) -> list[SSEMessage]:
        taken: list[SSEMessage] = []
        messages = self.messages()
        while len(taken) < count:
            taken.append(next(messages))
        return taken

    def rest(self) -> list[SSEMessage]:
        """Every message until the server ends the stream."""
        return list(self.messages())

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def events_of(messages: list[SSEMessage]) -> list[Event]:
    return [Event.from_dict(json.loads(m.data)) for m in messages if m.event == "message"]


@pytest.fixture
def small_server() -> Iterator[Server]:
    server = Server(access_log=False, max_event_buffer_size=3)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    yield server
    server.stop(5)


class MiddlewareServer:
    """gevent's WSGIServer with a LongpollMiddleware of our own options, in a thread."""

    def __init__(self, manager: LongpollManager, **options: Any) -> None:
        self.manager = manager
        self.middleware = LongpollMiddleware(_not_found, manager, **options)
        started = threading.Event()
        self._server: WSGIServer | None = None

        def run() -> None:
            self._server = WSGIServer(("127.0.0.1", 0), self.middleware, log=None)
            self._server.start()
            self._hub = gevent.get_hub()
            started.set()
            self._server.serve_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert started.wait(10)
        assert self._server is not None
        self.port: int = self._server.server_port

    def stop(self) -> None:
        assert self._server is not None
        self.manager.drain()
        self._hub.loop.run_callback_threadsafe(self._server.stop, 5)
        self._thread.join(10)


def _not_found(environ: Any, start_response: Any) -> list[bytes]:
    start_response("404 Not Found", [("Content-Length", "0")])
    return []


# --- streams over real sockets ----------------------------------------------------------


def test_a_reconnect_with_last_event_id_loses_and_repeats_nothing(server: Server) -> None:
    manager = server.manager
    total = 300
    first = Stream(server.port, "category=c&timeout=20")
    wait_until(lambda: manager.waiting_count("c") == 1)

    def publish_all() -> None:
        for n in range(total):
            manager.publish("c", n)
            if n % 10 == 0:
                time.sleep(0.001)

    publisher = threading.Thread(target=publish_all)
    publisher.start()
    try:
        before = first.take(40)  # then hang up while the publisher goes on
        first.close()
        resume = before[-1].id
        assert resume is not None
        second = Stream(server.port, "category=c&timeout=20", {"Last-Event-ID": resume})
        try:
            seen = [e.data for e in events_of(before)]
            messages = second.messages()
            while len(seen) < total:
                seen.append(Event.from_dict(json.loads(next(messages).data)).data)
            assert seen == list(range(total))
        finally:
            second.close()
    finally:
        publisher.join(30)


def test_a_new_stream_starts_from_now_and_says_where(server: Server) -> None:
    old = server.manager.publish("n", "old")
    # "Now" is a millisecond: one published in the stream's first one would be sent.
    wait_until(lambda: now_ms() > old.timestamp)
    stream = Stream(server.port, "category=n&timeout=1")
    try:
        wait_until(lambda: server.manager.waiting_count("n") == 1)
        assert stream.rest() == []
        start = stream.parser.last_event_id
        assert start is not None
        since_time, last_id = parse_last_event_id(start)
        assert last_id is None
        assert since_time >= old.timestamp - 1
    finally:
        stream.close()
    # Published while no stream was open: the reconnect from the opening id gets it.
    new = server.manager.publish("n", "new")
    stream = Stream(server.port, "category=n&timeout=10", {"Last-Event-ID": start})
    try:
        assert events_of(stream.take(1)) == [new]
    finally:
        stream.close()


def test_a_slow_stream_reader_gets_a_gap_then_the_newest_events(small_server: Server) -> None:
    manager = small_server.manager
    first = manager.publish("slow", 0)
    events = [manager.publish("slow", n) for n in range(1, 8)]
    stream = Stream(small_server.port, "category=slow&timeout=10",
                    {"Last-Event-ID": event_id(first)})
    try:
        got = stream.take(4)
        assert [m.event for m in got] == ["gap", "message", "message", "message"]
        assert events_of(got) == events[-3:]
    finally:
        stream.close()


def test_timeout_ends_the_stream(server: Server) -> None:
    stream = Stream(server.port, "category=t&timeout=1")
    try:
        assert stream.rest() == []  # the stream ends (the chunked body's last chunk)
    finally:
        stream.close()
    assert server.manager.waiting_count() == 0


def test_a_hang_up_leaves_no_waiting_subscriber(server: Server) -> None:
    streams = [Stream(server.port, "category=h&timeout=30") for _ in range(5)]
    wait_until(lambda: server.manager.waiting_count() == 5)
    for stream in streams:
        stream.close()
    wait_until(lambda: server.manager.waiting_count() == 0)


def test_stop_ends_every_stream_and_leaves_no_subscriber() -> None:
    server = Server(access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    manager = server.manager
    streams = [Stream(server.port, "category=d&timeout=30") for _ in range(5)]
    try:
        wait_until(lambda: manager.waiting_count() == 5)
        event = manager.publish("d", "last")
        stopping = threading.Thread(target=server.stop, args=(10,))
        stopping.start()
        for stream in streams:
            assert events_of(stream.rest()) == [event]  # then the end of the body
        stopping.join(20)
        assert not stopping.is_alive()
        assert manager.waiting_count() == 0
    finally:
        for stream in streams:
            stream.close()
        server.stop(5)


def test_a_stream_counts_as_a_waiting_subscriber() -> None:
    server = Server(access_log=False, max_waiting_subscribers=1)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    stream = Stream(server.port, "category=x&timeout=30")
    try:
        wait_until(lambda: server.manager.waiting_count() == 1)
        answer = requests.get(f"http://127.0.0.1:{server.port}/events?category=x",
                              headers=STREAM, timeout=10)
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == "1"
        assert "at capacity" in answer.json()["error"]
    finally:
        stream.close()
        server.stop(5)


def test_keep_alive_comments_and_the_retry_option() -> None:
    manager = LongpollManager(10)
    server = MiddlewareServer(manager, sse_keepalive_seconds=0.2, sse_retry_ms=500)
    stream = Stream(server.port, "category=k&timeout=2")
    try:
        messages = stream.rest()  # about two seconds of keep-alive comments
        assert messages == []
        assert stream.parser.retry == 500
        assert len(stream.comments) >= 2
        assert set(stream.comments) == {": keep-alive"}
        assert manager.waiting_count() == 0
    finally:
        stream.close()
        server.stop()


def test_hooks_run_before_a_stream() -> None:
    seen: list[str] = []

    def hook(request: Request) -> bool:
        seen.append(request.headers.get("Accept", ""))
        return request.args.get("category") != "secret"

    manager = LongpollManager(10)
    server = MiddlewareServer(manager, before_subscription=hook)
    try:
        base = f"http://127.0.0.1:{server.port}/events"
        refused = requests.get(f"{base}?category=secret", headers=STREAM, timeout=10)
        assert refused.status_code == 403
        assert refused.headers["Content-Type"] == "application/json"
        stream = Stream(server.port, "category=open&timeout=1")
        stream.rest()
        stream.close()
        assert seen == ["text/event-stream", "text/event-stream"]
    finally:
        server.stop()


def test_the_middleware_refuses_bad_stream_options() -> None:
    manager = LongpollManager()
    hook: Hook | None = None
    with pytest.raises(ValueError, match="sse_keepalive_seconds"):
        LongpollMiddleware(_not_found, manager, before_subscription=hook,
                           sse_keepalive_seconds=0)
    with pytest.raises(ValueError, match="sse_retry_ms"):
        LongpollMiddleware(_not_found, manager, sse_retry_ms=-1)


def test_a_thousand_streams_all_get_one_publish(server: Server) -> None:
    count = 1000
    port = server.port
    request = (b"GET /events?category=fan&timeout=30 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Accept: text/event-stream\r\n\r\n")
    sockets = []
    selector = selectors.DefaultSelector()
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            sock.sendall(request)
            sockets.append(sock)
        wait_until(lambda: server.manager.waiting_count("fan") == count, timeout=40)
        event = server.manager.publish("fan", "to all")
        wanted = f"id: {event_id(event)}".encode()
        received = {sock: b"" for sock in sockets}
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        done: set[socket.socket] = set()
        deadline = time.monotonic() + 40
        while len(done) < count and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data = sock.recv(65536)
                assert data, "a stream ended before the event came"
                received[sock] += data
                if wanted in received[sock]:
                    done.add(sock)
                    selector.unregister(sock)
        assert len(done) == count
    finally:
        selector.close()
        for sock in sockets:
            sock.close()
    wait_until(lambda: server.manager.waiting_count() == 0, timeout=40)


def test_a_gap_without_events_is_sent_once(engine_clock: list[int]) -> None:
    # Every event after the cursor expired: a gap, no events; the stream goes on after
    # the gap and does not send it again at each wait.
    manager = LongpollManager(10, event_time_to_live_seconds=60)
    server = MiddlewareServer(manager, sse_keepalive_seconds=0.2)
    try:
        events = [manager.publish("ttl", n) for n in range(3)]
        engine_clock[0] += 60_001
        stream = Stream(server.port, "category=ttl&timeout=2",
                        {"Last-Event-ID": event_id(events[0])})
        try:
            messages = stream.rest()
        finally:
            stream.close()
        gap = Gap("ttl", events[2].timestamp, events[2].id)
        assert messages == [SSEMessage("gap", gap.to_json().decode(), None)]
        assert len(stream.comments) >= 2  # it waited on after the gap
    finally:
        server.stop()


# -- the standalone server writes streams itself -----------------------------------------


def test_the_standalone_server_writes_streams_without_the_middleware(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_here(*args: Any) -> Any:
        raise AssertionError("the stream went through the WSGI bridge")

    monkeypatch.setattr(LongpollMiddleware, "_stream", not_here)
    stream = Stream(server.port, "category=native&timeout=10")
    try:
        assert stream.status == "HTTP/1.1 200 OK"
        assert stream.headers["content-type"] == "text/event-stream"
        assert stream.headers["transfer-encoding"] == "chunked"
        wait_until(lambda: server.manager.waiting_count("native") == 1)
        published: list[Event] = []
        # from another OS thread, and from this one: the stream takes both
        thread = threading.Thread(
            target=lambda: published.extend(server.manager.publish("native", n) for n in range(3)))
        thread.start()
        thread.join(10)
        published.append(server.manager.publish("native", 3))
        assert events_of(stream.take(4)) == published
    finally:
        stream.close()
    wait_until(lambda: server.manager.waiting_count() == 0)


def test_a_native_stream_over_http_1_0_ends_with_the_connection(server: Server) -> None:
    published = server.manager.publish("old", "kept")
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"GET /events?category=old&timeout=1&since_time=1 HTTP/1.0\r\n"
                     b"Accept: text/event-stream\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert f"id: {event_id(published)}\n".encode() in body


def test_a_stalled_stream_reader_does_not_stall_the_others(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsgi_longpoll.server.longpoll import ParkedStream

    monkeypatch.setattr(ParkedStream, "max_pending", 1024 * 1024)
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /events?category=big&timeout=30 HTTP/1.1\r\nHost: x\r\n"
                    b"Accept: text/event-stream\r\n\r\n")  # and never reads
    reader = Stream(server.port, "category=big&timeout=30")
    try:
        wait_until(lambda: server.manager.waiting_count("big") == 2)
        big = "x" * (512 * 1024)
        published: list[Event] = []

        def publish() -> None:  # 8 MiB in all: more than the socket buffers and max_pending
            for _ in range(16):
                published.append(server.manager.publish("big", big))
                time.sleep(0.02)

        publisher = threading.Thread(target=publish)
        publisher.start()
        got = events_of(reader.take(16))  # read as they come
        publisher.join(30)
        assert [event.id for event in got] == [event.id for event in published]
        # the stalled stream fell more than max_pending behind and was ended
        wait_until(lambda: server.manager.waiting_count("big") == 1)
    finally:
        reader.close()
        stalled.close()
