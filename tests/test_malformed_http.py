"""Malformed HTTP over raw sockets: the standalone server answers or hangs up, and stays up.

After every case a well-behaved client still publishes and subscribes. Slow clients
(slowloris) are cut by ``header_timeout`` and do not keep others from being served.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from conftest import wait_until

from wsgi_longpoll import Server, ServerInfo

HEADER_TIMEOUT = 1.0
PUBLISH = b'{"category":"c","data":1}'


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server(access_log=False, header_timeout=HEADER_TIMEOUT)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=5))
    yield server
    server.stop(5)


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=15)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the timeout)."""
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        received += data
    return received


def exchange(server: Server, data: bytes) -> bytes:
    """Send *data*, half-close, and return the whole answer."""
    with connect(server) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def json_body(answer: bytes) -> object:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def assert_still_serving(server: Server, category: str = "alive") -> None:
    base = f"http://127.0.0.1:{server.port}"
    published = requests.post(f"{base}/publish", json={"category": category, "data": "ok"},
                              timeout=10)
    assert published.json() == {"success": True}
    answer = requests.get(f"{base}/events?timeout=1&category={category}&since_time=1",
                          timeout=10).json()
    assert answer["events"][-1]["data"] == "ok"


def chunked_publish(chunks: bytes) -> bytes:
    return (b"POST /publish HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)


CASES = [
    # (id, bytes sent, expected status, whether the body must be the protocol's JSON)
    ("request-line-too-long",
     b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, False),
    ("header-line-too-long",
     b"GET /events HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 400, False),
    ("too-many-headers",
     b"GET /events HTTP/1.1\r\nHost: t\r\n"
     + b"".join(b"X-%d: y\r\n" % n for n in range(150)) + b"\r\n",
     400, False),
    ("binary-garbage", bytes(range(256)) * 4, 400, False),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, False),
    ("unknown-http-version", b"GET /events HTTP/9.9\r\n\r\n", 400, False),
    ("negative-content-length",
     b"POST /publish HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n" + PUBLISH, 400, False),
    ("content-length-not-a-number",
     b"POST /publish HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n" + PUBLISH, 400, False),
    ("body-shorter-than-content-length",
     b"POST /publish HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\n\r\n" + PUBLISH, 400, True),
    ("chunk-size-not-hex", chunked_publish(b"zz\r\n" + PUBLISH + b"\r\n0\r\n\r\n"), 400, True),
    ("chunk-size-enormous",
     chunked_publish(b"ffffffffffffffffffffffff\r\n" + PUBLISH), 400, True),
    ("chunk-longer-than-its-size",
     chunked_publish(b"%x\r\n" % len(PUBLISH) + PUBLISH + b"XX\r\n0\r\n\r\n"), 400, True),
    ("chunked-body-cut-off", chunked_publish(b"100\r\n" + PUBLISH), 400, True),
    ("chunked-without-last-chunk",
     chunked_publish(b"%x\r\n" % len(PUBLISH) + PUBLISH + b"\r\n"), 400, True),
    ("publish-body-over-the-limit",
     b"POST /publish HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n" + b"x" * 1000,
     413, True),
]


@pytest.mark.parametrize(("sent", "status", "protocol_json"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_malformed_request_gets_an_error_and_the_server_stays_up(
    server: Server, sent: bytes, status: int, protocol_json: bool
) -> None:
    answer = exchange(server, sent)
    assert status_of(answer) == status
    if protocol_json:
        assert b"\r\nContent-Type: application/json\r\n" in answer
        assert set(json_body(answer)) == {"error"}  # type: ignore[arg-type]
    assert_still_serving(server)


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /events?timeout=1&category=c HTTP/1.1\r\nHost: t\r\n", b"POST /publish HT",
     b"\r\n\r\n\r\n"],
    ids=["nothing", "headers-cut-off", "request-line-cut-off", "blank-lines"],
)
def test_truncated_request_then_hang_up(server: Server, sent: bytes) -> None:
    with connect(server) as sock:
        sock.sendall(sent)
    assert_still_serving(server)


def test_bad_chunk_closes_the_connection_so_nothing_after_it_is_taken_as_a_request(
    server: Server,
) -> None:
    smuggled = (b"POST /publish HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(PUBLISH)
                + PUBLISH)
    with connect(server) as sock:
        sock.sendall(chunked_publish(b"zz\r\n" + smuggled))
        answer = read_until_closed(sock)
    assert answer.count(b"HTTP/1.1 ") == 1
    assert status_of(answer) == 400
    assert server.manager.buffered_events("c") == []


def test_pipelined_requests_are_each_answered(server: Server) -> None:
    one = (b"POST /publish HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(PUBLISH)
           + PUBLISH)
    last = (b"GET /events?timeout=1&category=c&since_time=1 HTTP/1.1\r\nHost: t\r\n"
            b"Connection: close\r\n\r\n")
    with connect(server) as sock:
        sock.sendall(one + one + last)
        answer = read_until_closed(sock)
    assert answer.count(b'{"success": true}') == 2
    assert len(json.loads(answer.rpartition(b"\r\n\r\n")[2])["events"]) == 2


def test_slowloris_is_cut_after_the_header_timeout(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /events?timeout=1&category=c HTTP/1.1\r\nHost: t\r\n")
        closed = threading.Event()

        def dribble() -> None:  # one header byte every 0.2 s: never a complete request
            try:
                while not closed.is_set():
                    sock.sendall(b"X")
                    time.sleep(0.2)
            except OSError:
                pass

        dribbler = threading.Thread(target=dribble)
        dribbler.start()
        try:
            # The socket's own 15 s timeout bounds this: the server hangs up long before.
            assert read_until_closed(sock) == b""
        finally:
            closed.set()
            dribbler.join(10)


def test_idle_keep_alive_connection_is_closed_after_the_header_timeout(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /events?timeout=1&category=c&since_time=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = read_until_closed(sock)  # answered, then idle until the server hangs up
    assert status_of(answer) == 200


def test_a_long_poll_outlives_the_header_timeout(server: Server) -> None:
    # The deadline covers only the request line and headers: a wait of 3 s (three header
    # timeouts) ends with the protocol's timeout answer, not a hang-up.
    answer = requests.get(f"http://127.0.0.1:{server.port}/events?timeout=3&category=quiet",
                          timeout=15)
    assert answer.status_code == 200
    assert answer.json()["timeout"] == "no events before timeout"


def test_many_slow_clients_do_not_keep_others_from_being_served(server: Server) -> None:
    slow = []
    try:
        for _ in range(100):
            sock = connect(server)
            sock.sendall(b"POST /publish HTTP/1.1\r\nHost: t\r\n")  # and nothing more
            slow.append(sock)
        wait_until(lambda: len(server._wsgi_server.connections) >= 100)  # type: ignore[union-attr]
        assert_still_serving(server, "while-slow")
        # And every slow one is hung up on.
        for sock in slow:
            assert read_until_closed(sock) == b""
    finally:
        for sock in slow:
            sock.close()
    assert_still_serving(server)


def test_header_timeout_none_waits_for_headers(server: Server) -> None:
    patient = Server(access_log=False, header_timeout=None)
    patient.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=5))
    try:
        with socket.create_connection(("127.0.0.1", patient.port), timeout=15) as sock:
            sock.sendall(b"GET /events?timeout=1&category=c&since_time=1 HTTP/1.1\r\nHost: t\r\n")
            sock.settimeout(HEADER_TIMEOUT * 2)
            with pytest.raises(TimeoutError):
                sock.recv(1)  # still waiting for the rest of the headers
            sock.settimeout(15)
            sock.sendall(b"Connection: close\r\n\r\n")
            assert status_of(read_until_closed(sock)) == 200
    finally:
        patient.stop(5)


@pytest.mark.parametrize("value", [0, -1], ids=["zero", "negative"])
def test_header_timeout_must_be_positive(value: float) -> None:
    with pytest.raises(ValueError, match="header_timeout"):
        Server(header_timeout=value)
