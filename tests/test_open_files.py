"""max_waiting_subscribers and the open-files limit; accepts that fail for want of files."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import requests
from conftest import wait_until

from wsgi_longpoll import LongpollManager, Server, ServerInfo, limits
from wsgi_longpoll.limits import default_max_waiting


@pytest.mark.parametrize(("limit", "expected"), [
    (None, LongpollManager.default_max_waiting_subscribers),
    (1024, 1024 - 10 - 102),
    (20_000, 20_000 - 10 - 256),
    (1_000_000, LongpollManager.default_max_waiting_subscribers),
    (15, 15 - 10 - 1),
    (5, 1),
])
def test_default_max_waiting_leaves_headroom_besides_the_open_files(
    monkeypatch: pytest.MonkeyPatch, limit: int | None, expected: int
) -> None:
    monkeypatch.setattr(limits, "open_files_limit", lambda: limit)
    monkeypatch.setattr(limits, "_open_files_count", lambda: 10)
    assert default_max_waiting() == expected


def test_the_server_uses_the_derived_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "_open_files_count", lambda: 10)  # as it starts
    server = Server(access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0"))
    try:
        assert server.manager.max_waiting_subscribers == default_max_waiting()
    finally:
        server.stop()


def test_a_warning_at_start_when_set_above_the_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(limits, "open_files_limit", lambda: 1000)
    server = Server(access_log=False, max_waiting_subscribers=5000)
    with caplog.at_level(logging.WARNING, logger="wsgi_longpoll"):
        server.start(ServerInfo(address="127.0.0.1:0"))
    server.stop()
    assert any("open-files limit" in record.getMessage() and "5000" in record.getMessage()
               for record in caplog.records)
    caplog.clear()
    quiet = Server(access_log=False, max_waiting_subscribers=500)
    with caplog.at_level(logging.WARNING, logger="wsgi_longpoll"):
        quiet.start(ServerInfo(address="127.0.0.1:0"))
    quiet.stop()
    assert not any("open-files limit" in record.getMessage() for record in caplog.records)


SERVE_WITH_FEW_FILES = textwrap.dedent("""
    import logging, os, resource, sys, time
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from wsgi_longpoll import Server, ServerInfo
    server = Server(access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0"))
    open_now = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 4, resource.getrlimit(
        resource.RLIMIT_NOFILE)[1]))
    print(server.port, flush=True)
    sys.stdin.readline()
    server.stop(1)
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_accepts_without_files_are_logged_once_per_interval_without_tracebacks() -> None:
    process = subprocess.Popen([sys.executable, "-c", SERVE_WITH_FEW_FILES],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdin is not None
    try:
        port = int(process.stdout.readline())
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(30)]
        time.sleep(2.5)  # the server fails to accept for a while
        for sock in idle:
            sock.close()
        deadline = time.monotonic() + 20
        while True:  # accepting again once files are free
            try:
                answer = requests.post(f"http://127.0.0.1:{port}/publish",
                                       json={"category": "c", "data": 1}, timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert answer.json() == {"success": True}
        process.stdin.write("\n")
        process.stdin.flush()
        _, errors = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    failures = [line for line in errors.splitlines() if "cannot accept connections" in line]
    assert 1 <= len(failures) <= 5, errors  # about once a second for 2.5 s
    assert "Too many open files" in failures[0]
    assert "Traceback" not in errors


#: ``python -m wsgi_longpoll`` with its arguments, under an open-files limit of 128.
WITH_128_FILES = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit("
    "resource.RLIMIT_NOFILE)[1])); "
    "os.execv(sys.executable, [sys.executable, '-m', 'wsgi_longpoll', *sys.argv[1:]])"
)


def read_answer(sock: socket.socket) -> bytes:
    """One response with a ``Content-Length``, read whole."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(head.lower().partition(b"content-length:")[2].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return received


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_health_and_stats_answer_at_the_subscriber_cap_under_the_open_files_limit() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", WITH_128_FILES, "serve", "--address", "127.0.0.1:0",
         "--no-access-log", "--no-demo", "--timeout-seconds", "60",
         "--stats-path", "/stats", "--health-path", "/healthz"],
        stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    base_url = None
    for line in process.stderr:  # the banner names the port once it is bound
        match = re.search(r"subscribe at (http://[\d.]+:\d+)/", line)
        if match:
            base_url = match.group(1)
            break
    errors: list[str] = []
    drain = threading.Thread(target=lambda: errors.extend(process.stderr))  # type: ignore[arg-type]
    drain.start()
    port = int(base_url.rpartition(":")[2]) if base_url else 0
    parked: list[socket.socket] = []
    refused: list[socket.socket] = []
    try:
        assert base_url is not None, "the server exited before it was ready"
        cap = requests.get(f"{base_url}/stats", timeout=10).json()["max_waiting_subscribers"]
        assert cap < 128
        for _ in range(cap):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /events?category=full&timeout=60 HTTP/1.1\r\nHost: t\r\n\r\n")
            parked.append(sock)
        wait_until(lambda: requests.get(f"{base_url}/stats", timeout=10)
                   .json()["waiting_subscribers"] == cap)
        # More subscribers than the descriptors left: each is refused, and its
        # connection closed, though the client keeps its end open.
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            refused.append(sock)
            sock.sendall(b"GET /events?category=full&timeout=60 HTTP/1.1\r\nHost: t\r\n\r\n")
            answer = read_answer(sock)
            assert answer.startswith(b"HTTP/1.1 503 ")
            assert b"\r\nConnection: close\r\n" in answer
            assert sock.recv(1) == b""  # closed by the server
        health = requests.get(f"{base_url}/healthz", timeout=10)
        assert health.status_code == 200
        stats = requests.get(f"{base_url}/stats", timeout=10).json()
        assert stats["waiting_subscribers"] == cap
    finally:
        for sock in parked + refused:
            sock.close()
        process.terminate()
        try:
            process.wait(20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        drain.join(10)
    assert "Traceback" not in "".join(errors)
