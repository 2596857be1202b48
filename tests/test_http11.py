"""HTTP/1.1 as RFC 9112 has it, over raw sockets against the standalone server.

Framing errors close the connection (no request smuggling), HEAD never gets a body,
pipelined requests are answered in order, ``Expect: 100-continue``, HTTP/1.0, the limits
and timeouts. Plus the WSGI bridge: streaming, and ``wsgiref.validate``.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

import pytest
import requests
from conftest import wait_until
from test_malformed_http import read_until_closed, status_of

from wsgi_longpoll import Server, ServerInfo

PUBLISH = b'{"category":"c","data":1}'


def publish_request(extra: bytes = b"", body: bytes = PUBLISH) -> bytes:
    return (b"POST /publish HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n" % len(body)
            + extra + b"\r\n" + body)


def _app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body = b"app:" + environ["PATH_INFO"].encode("latin-1") + b":" + environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server(access_log=False, header_timeout=2, body_timeout=1,
                    max_request_body_size=1000, app=_app)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=5))
    yield server
    server.stop(5)


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=15)


def exchange(server: Server, data: bytes) -> bytes:
    with connect(server) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def read_response(sock: socket.socket, buffered: bytearray) -> tuple[bytes, bytes]:
    """Read one response with a ``Content-Length`` (or none), or a chunked one whose
    data has no ``0\\r\\n\\r\\n``: ``(head, body)``, the body dechunked."""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {bytes(buffered)!r}"
        buffered += chunk
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
        elif name.lower() == b"transfer-encoding":
            while b"0\r\n\r\n" not in rest:
                chunk = sock.recv(65536)
                assert chunk
                rest += chunk
            end = rest.index(b"0\r\n\r\n") + 5
            buffered[:] = rest[end:]
            return head, dechunk(rest[:end])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    buffered[:] = rest[length:]
    return head, rest[:length]


def assert_not_published(server: Server) -> None:
    assert server.manager.buffered_events("c") == []


# -- framing: 400 and close ------------------------------------------------------------

@pytest.mark.parametrize("lengths", [(b"5", b"25"), (b"25", b"25")], ids=["different", "equal"])
def test_two_content_lengths_are_400_and_close(
    server: Server, lengths: tuple[bytes, bytes]
) -> None:
    smuggled = publish_request()
    answer = exchange(server, b"POST /publish HTTP/1.1\r\nHost: t\r\nContent-Length: %s\r\n"
                      b"Content-Length: %s\r\n\r\n" % lengths + PUBLISH + smuggled)
    assert answer.count(b"HTTP/1.1 ") == 1
    assert status_of(answer) == 400
    assert b"\r\nConnection: close\r\n" in answer
    assert_not_published(server)


def test_content_length_with_transfer_encoding_is_400_and_close(server: Server) -> None:
    smuggled = publish_request()
    answer = exchange(server, b"POST /publish HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled)
    assert answer.count(b"HTTP/1.1 ") == 1
    assert status_of(answer) == 400
    assert_not_published(server)


@pytest.mark.parametrize("target", [b"/events?category=a\x00b&timeout=1", b"/ev\x7fents",
                                    b"/events?category=\xff&timeout=1", b"/a\tb"],
                         ids=["nul", "del", "non-ascii", "tab"])
def test_invalid_byte_in_the_target_is_400(server: Server, target: bytes) -> None:
    answer = exchange(server, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status_of(answer) == 400
    assert answer.count(b"HTTP/1.1 ") == 1


# -- what a request must say: Host, transfer codings -----------------------------------

@pytest.mark.parametrize("head", [
    b"GET /anything HTTP/1.1\r\n",
    b"GET /anything HTTP/1.1\r\nHost: a\r\nHost: b\r\n",
    b"GET /anything HTTP/1.1\r\nHost: a\r\nhost: a\r\n",
    b"GET /anything HTTP/1.0\r\nHost: a\r\nHost: b\r\n",
    b"GET /anything HTTP/1.1\r\nHost: a b\r\n",
    b"GET /anything HTTP/1.1\r\nHost: a/b\r\n",
    b"GET /anything HTTP/1.1\r\nHost: a:80x\r\n",
], ids=["http11-without-host", "two-hosts", "two-equal-hosts", "http10-two-hosts",
        "host-with-a-space", "host-with-a-slash", "host-with-a-bad-port"])
def test_a_missing_repeated_or_invalid_host_is_400_and_close(server: Server, head: bytes) -> None:
    smuggled = publish_request()
    answer = exchange(server, head + b"\r\n" + smuggled)
    assert answer.count(b"HTTP/1.1 ") == 1
    assert status_of(answer) == 400
    assert b"Host header" in answer.partition(b"\r\n\r\n")[2]
    assert b"\r\nConnection: close\r\n" in answer
    assert_not_published(server)


@pytest.mark.parametrize("host",
                         [b"t", b"", b"127.0.0.1:8080", b"[::1]:8080", b"a-b.example_c.org:"],
                         ids=["name", "empty", "address-and-port", "ipv6", "empty-port"])
def test_one_valid_host_is_answered(server: Server, host: bytes) -> None:
    answer = exchange(server, b"GET /anything HTTP/1.1\r\nHost: " + host
                      + b"\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 200
    assert answer.endswith(b"app:/anything:")


def test_http_10_needs_no_host(server: Server) -> None:
    assert status_of(exchange(server, b"GET /anything HTTP/1.0\r\n\r\n")) == 200


@pytest.mark.parametrize("codings", [
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: identity, chunked\r\n",
], ids=["gzip-chunked", "two-lines", "identity-chunked"])
def test_a_transfer_coding_besides_chunked_is_501_and_close(
    server: Server, codings: bytes
) -> None:
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(PUBLISH), PUBLISH)
    answer = exchange(server, b"POST /publish HTTP/1.1\r\nHost: t\r\n" + codings + b"\r\n"
                      + body + publish_request())
    assert answer.count(b"HTTP/1.1 ") == 1
    assert status_of(answer) == 501
    assert b"\r\nConnection: close\r\n" in answer
    assert_not_published(server)


def test_chunked_with_empty_list_elements_is_read(server: Server) -> None:
    answer = exchange(server, b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: , chunked\r\n"
                      b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert answer.endswith(b"app:/c:abc")


# -- HEAD ------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "status"), [
    (b"/events?category=c&timeout=1", 405), (b"/publish", 405), (b"/anything", 200),
])
def test_head_gets_no_body_and_the_connection_stays_in_step(
    server: Server, path: bytes, status: int
) -> None:
    with connect(server) as sock:
        sock.sendall(b"HEAD " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n"
                     + publish_request(b"Connection: close\r\n"))
        answer = read_until_closed(sock)
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert status_of(first) == status
    # The next bytes are the publish's answer, not a body of the HEAD.
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest.endswith(b'{"success": true}')


# -- pipelining ------------------------------------------------------------------------

def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    requests_sent = (
        publish_request()
        + b"GET /events?category=c&timeout=1&since_time=1 HTTP/1.1\r\nHost: t\r\n\r\n"
        + b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n"
        + b"POST /second HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
        + b"GET /events?category=nothing&timeout=1 HTTP/1.1\r\nHost: t\r\n\r\n"
        + b"GET /third HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    with connect(server) as sock:
        sock.sendall(requests_sent)
        buffered = bytearray()
        bodies = [read_response(sock, buffered)[1] for _ in range(6)]
        assert read_until_closed(sock) == b""
    assert bodies[0] == b'{"success": true}'
    assert [event["data"] for event in json.loads(bodies[1])["events"]] == [1]
    assert bodies[2:4] == [b"app:/first:", b"app:/second:abc"]
    assert json.loads(bodies[4])["timeout"] == "no events before timeout"
    assert bodies[5] == b"app:/third:"


# -- Expect: 100-continue --------------------------------------------------------------

def test_expect_100_continue_gets_100_then_the_answer(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /publish HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(PUBLISH))
        interim = sock.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(PUBLISH)
        answer = read_until_closed(sock)
    assert status_of(answer) == 200
    assert answer.endswith(b'{"success": true}')


def test_expect_100_continue_over_the_limit_gets_413_and_no_100(server: Server) -> None:
    answer = exchange(server, b"POST /anything HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                      b"Content-Length: 5000\r\n\r\n")
    assert status_of(answer) == 413
    assert b"100 Continue" not in answer


# -- HTTP/1.0 and Connection: close ----------------------------------------------------

def test_http_10_closes_after_the_answer(server: Server) -> None:
    answer = exchange(server, b"GET /anything HTTP/1.0\r\n\r\n")
    assert status_of(answer) == 200
    assert b"\r\nConnection: close\r\n" in answer
    assert answer.endswith(b"app:/anything:")


def test_http_10_keep_alive_is_kept(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        buffered = bytearray()
        head, body = read_response(sock, buffered)
        assert b"\r\nConnection: keep-alive" in head
        assert body == b"app:/one:"
        sock.sendall(b"GET /two HTTP/1.0\r\n\r\n")
        assert read_until_closed(sock).endswith(b"app:/two:")


def test_connection_close_closes_after_the_answer(server: Server) -> None:
    answer = exchange(server, b"GET /events?category=c&timeout=1&since_time=1 HTTP/1.1\r\n"
                      b"Host: t\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 200
    assert b"\r\nConnection: close\r\n" in answer


# -- limits and timeouts ---------------------------------------------------------------

def test_request_line_over_the_limit_is_414(server: Server) -> None:
    answer = exchange(server, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status_of(answer) == 414


def test_header_block_over_the_limit_is_400(server: Server) -> None:
    headers = b"".join(b"X-%d: %s\r\n" % (n, b"v" * 1000) for n in range(70))
    answer = exchange(server, b"GET / HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
    assert status_of(answer) == 400


def test_app_body_over_the_limit_is_413(server: Server) -> None:
    answer = exchange(server, b"POST /anything HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n"
                      + b"x" * 1001)
    assert status_of(answer) == 413


def test_chunked_app_body_over_the_limit_is_413(server: Server) -> None:
    answer = exchange(server, b"POST /anything HTTP/1.1\r\nHost: t\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n"
                      + b"3e8\r\n" + b"x" * 1000 + b"\r\n1\r\nx\r\n0\r\n\r\n")
    assert status_of(answer) == 413


def test_chunked_app_body_is_read_whole(server: Server) -> None:
    answer = exchange(server, b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                      b"Connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert answer.endswith(b"app:/c:abcde")


def test_a_body_that_trickles_in_is_408(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /publish HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
                     % len(PUBLISH) + PUBLISH[:3])
        # body_timeout is 1 s; the socket's own 15 s timeout bounds the read.
        answer = read_until_closed(sock)
    assert status_of(answer) == 408
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
        "error": "Request body not received in time."}
    assert_not_published(server)


# -- refusals -------------------------------------------------------------------------

@pytest.mark.parametrize("accept", [b"", b"Accept: text/event-stream\r\n"],
                         ids=["long-poll", "stream"])
def test_a_refused_subscriber_is_answered_503_and_its_connection_closed(accept: bytes) -> None:
    # No header timeout: only the server's own close ends the refused connection.
    server = Server(access_log=False, max_waiting_subscribers=1, header_timeout=None)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    try:
        with connect(server) as waiting, connect(server) as refused:
            waiting.sendall(b"GET /events?category=c&timeout=30 HTTP/1.1\r\nHost: t\r\n\r\n")
            wait_until(lambda: server.manager.waiting_count() == 1)
            refused.sendall(b"GET /events?category=c&timeout=30 HTTP/1.1\r\nHost: t\r\n"
                            + accept + b"\r\n")
            answer = read_until_closed(refused)  # bounded by the socket's 15 s timeout
        assert status_of(answer) == 503
        assert b"\r\nConnection: close\r\n" in answer
        assert b"\r\nRetry-After: " in answer
    finally:
        server.stop(5)


# -- a client that shuts its side (half-close) -----------------------------------------

def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read up to the end of a response's head: ``(head, what came after it)``, the head
    with the CRLF of its last line."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the head: {received!r}"
        received += chunk
    end = received.index(b"\r\n\r\n") + 4
    return received[:end - 2], received[end:]


def dechunk(body: bytes) -> bytes:
    """The data of a whole chunked body, checked to end with the last chunk."""
    data = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert body == b"\r\n"
            return data
        data += body[:size]
        assert body[size:size + 2] == b"\r\n"
        body = body[size + 2:]


def test_a_half_closed_long_poll_gets_the_events_published_later(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /events?category=half&timeout=5 HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)  # the request is all it sends
        # The server writes the head at once, to tell a half-close from a hang-up.
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nTransfer-Encoding: chunked\r\n" in head
        assert server.manager.waiting_count("half") == 1
        event = server.manager.publish("half", {"n": 1})
        body = rest + read_until_closed(sock)
    answer = json.loads(dechunk(body))
    assert [(e["id"], e["data"]) for e in answer["events"]] == [(event.id, {"n": 1})]
    assert server.manager.waiting_count("half") == 0


def test_a_half_closed_http_10_long_poll_gets_its_timeout_answer(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /events?category=half10&timeout=1 HTTP/1.0\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        answer = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length" not in head and b"Transfer-Encoding" not in head  # to the close
    assert json.loads(body)["timeout"] == "no events before timeout"


def test_a_long_poll_whose_client_closed_is_dropped_and_its_slot_freed() -> None:
    server = Server(access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=100))
    try:
        sock = connect(server)
        sock.sendall(b"GET /events?category=gone&timeout=100 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: server.manager.waiting_count("gone") == 1)
        sock.close()  # the server sees the same end of file as for a half-close
        # The head it then writes meets a reset: the poll is dropped, long before its
        # timeout, and the connection closed.
        wait_until(lambda: server.manager.waiting_count("gone") == 0, timeout=20)
        wait_until(lambda: not server._wsgi_server.connections)  # type: ignore[union-attr]
        assert_still_answering(server)
    finally:
        server.stop(5)


@pytest.mark.parametrize("requests_sent", [
    b"GET /events?category=pipe&timeout=5 HTTP/1.1\r\nHost: t\r\n\r\n"
    b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /events?category=pipe&timeout=5 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    b"GET /after HTTP/1.0\r\n\r\n",
], ids=["http11", "http10"])
def test_requests_pipelined_before_a_half_close_are_all_answered(
    server: Server, requests_sent: bytes
) -> None:
    with connect(server) as sock:
        sock.sendall(requests_sent)
        sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: server.manager.waiting_count("pipe") == 1)
        event = server.manager.publish("pipe", 1)
        buffered = bytearray()
        first = read_response(sock, buffered)[1]
        second = read_response(sock, buffered)[1]
        assert read_until_closed(sock) == b""
    assert json.loads(first)["events"][0]["id"] == event.id
    assert second == b"app:/after:"


def assert_still_answering(server: Server) -> None:
    answer = requests.get(f"http://127.0.0.1:{server.port}/events?category=alive&timeout=1",
                          timeout=10)
    assert answer.json()["timeout"] == "no events before timeout"


# -- the WSGI bridge -------------------------------------------------------------------

def test_a_streamed_answer_arrives_as_it_is_yielded() -> None:
    release = threading.Event()

    def stream(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        yield b"data: one\n\n"
        release.wait(10)  # a real OS wait: the test thread must set it
        yield b"data: two\n\n"

    server = Server(access_log=False, app=stream)
    server.start(ServerInfo(address="127.0.0.1:0"))
    try:
        with connect(server) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            received = b""
            while b"data: one" not in received:
                chunk = sock.recv(65536)
                assert chunk
                received += chunk
            assert b"data: two" not in received
            assert b"\r\nTransfer-Encoding: chunked\r\n" in received
            release.set()
            received += read_until_closed(sock)
        assert received.endswith(b"b\r\ndata: two\n\n\r\n0\r\n\r\n")
    finally:
        release.set()
        server.stop(5)


def test_the_bridge_passes_wsgiref_validate() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"got ", body])

    server = Server(access_log=False, app=validator(app))
    server.start(ServerInfo(address="127.0.0.1:0"))
    try:
        base = f"http://127.0.0.1:{server.port}"
        with requests.Session() as session:
            assert session.get(f"{base}/x?y=1", timeout=10).text == "got "
            assert session.post(f"{base}/x", data=b"abc", timeout=10).text == "got abc"
            head = session.head(f"{base}/x", timeout=10)
            assert head.status_code == 200
            assert head.content == b""
            assert session.get(f"{base}/x", timeout=10).text == "got "  # still in step
    finally:
        server.stop(5)


def test_an_application_error_is_500_and_the_server_stays_up() -> None:
    def broken(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        raise RuntimeError("broken")

    server = Server(access_log=False, app=broken)
    server.start(ServerInfo(address="127.0.0.1:0"))
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert requests.get(f"{base}/x", timeout=10).status_code == 500
        published = requests.post(f"{base}/publish", json={"category": "c", "data": 1},
                                  timeout=10)
        assert published.json() == {"success": True}
    finally:
        server.stop(5)
