"""Fan-out: parked long polls answered straight to their sockets by the publisher.

Many parked on one category all get the one encoded answer; a reader whose socket buffer
is full does not hold up the others (its rest is written by its own greenlet); clients
hanging up while a publish is being written cost the others nothing.
"""

from __future__ import annotations

import json
import resource
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until
from test_malformed_http import assert_still_serving, read_until_closed

from wsgi_longpoll import Server, ServerInfo

CLIENT = Path(__file__).with_name("fanout_client.py")


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server(access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=60))
    yield server
    server.stop(5)


def park(server: Server, category: str, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET /events?category={category}&timeout=60 HTTP/1.1\r\nHost: t\r\n"
                 "Connection: close\r\n\r\n".encode())
    return sock


def fan_out_size() -> int:
    """10,000, or as many as the open-files limit lets the server hold (client in its own
    process)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return min(10_000, soft - 300)


@pytest.mark.timeout(240)
def test_ten_thousand_parked_on_one_category_are_all_answered(server: Server) -> None:
    count = fan_out_size()
    client = subprocess.Popen([sys.executable, str(CLIENT), str(server.port), str(count), "big"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "parked"
        wait_until(lambda: server.manager.waiting_count("big") == count, timeout=120)
        event = server.manager.publish("big", {"n": 1})
        result = json.loads(client.stdout.readline())
        assert client.wait(60) == 0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)
    assert result["answered"] == result["ok"] == count
    assert result["distinct"] == 1  # one answer for all, with the event
    assert json.loads(result["bodies"][0])["events"][0]["id"] == event.id
    assert server.manager.waiting_count() == 0


def test_a_reader_with_a_full_buffer_does_not_stall_the_others(server: Server) -> None:
    slow = park(server, "wide", rcvbuf=4096)
    others = [park(server, "wide") for _ in range(5)]
    wait_until(lambda: server.manager.waiting_count("wide") == 6)
    data = "x" * 6_000_000  # more than a socket buffer holds (tcp_wmem is 4 MiB at most)
    event = server.manager.publish("wide", data)
    try:
        for sock in others:  # answered in full while the slow one reads nothing
            answer = read_until_closed(sock)
            body = json.loads(answer.partition(b"\r\n\r\n")[2])
            assert body["events"][0]["id"] == event.id
        slow_answer = read_until_closed(slow)  # the rest, written by its greenlet
        assert json.loads(slow_answer.partition(b"\r\n\r\n")[2])["events"][0]["data"] == data
    finally:
        for sock in [slow, *others]:
            sock.close()
    assert_still_serving(server)


def test_hang_ups_while_a_publish_is_being_written(server: Server) -> None:
    socks = [park(server, "h") for _ in range(300)]
    wait_until(lambda: server.manager.waiting_count("h") == 300)
    leaving, staying = socks[::2], socks[1::2]
    for sock in leaving:  # hang up with a reset, the rudest way
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    publisher = threading.Thread(target=server.manager.publish, args=("h", "x" * 100_000))
    publisher.start()
    for sock in leaving:
        sock.close()
    publisher.join(30)
    try:
        for sock in staying:
            answer = read_until_closed(sock)
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["events"][0]["category"] == "h"
    finally:
        for sock in staying:
            sock.close()
    wait_until(lambda: server.manager.waiting_count() == 0)
    assert_still_serving(server)
    wait_until(lambda: len(server._wsgi_server.connections) == 0)  # type: ignore[union-attr]


def test_a_parked_poll_times_out_with_the_protocols_answer(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(b"GET /events?category=q&timeout=1 HTTP/1.1\r\nHost: t\r\n"
                     b"Connection: close\r\n\r\n")
        answer = read_until_closed(sock)
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["timeout"] == "no events before timeout"
    assert server.manager.waiting_count() == 0


def test_keep_alive_after_a_delivered_answer(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(b"GET /events?category=k&timeout=30 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: server.manager.waiting_count("k") == 1)
        first = server.manager.publish("k", 1)
        received = b""
        while first.id.encode() not in received:
            chunk = sock.recv(65536)
            assert chunk
            received += chunk
        # The fan-out forgets a delivered subscriber after writing its answer: the count
        # may still hold it for a moment (this re-poll has no cursor to catch up with).
        wait_until(lambda: server.manager.waiting_count("k") == 0)
        sock.sendall(b"GET /events?category=k&timeout=30 HTTP/1.1\r\nHost: t\r\n"
                     b"Connection: close\r\n\r\n")
        wait_until(lambda: server.manager.waiting_count("k") == 1)
        second = server.manager.publish("k", 2)
        assert second.id.encode() in read_until_closed(sock)
