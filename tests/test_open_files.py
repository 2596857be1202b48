"""max_waiting_subscribers and the open-files limit; accepts that fail for want of files."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import requests

from wsgi_longpoll import LongpollManager, Server, ServerInfo
from wsgi_longpoll import server as server_module
from wsgi_longpoll.server import default_max_waiting


@pytest.mark.parametrize(("limit", "expected"), [
    (None, LongpollManager.default_max_waiting_subscribers),
    (1024, 1024 - 102),
    (20_000, 20_000 - 256),
    (1_000_000, LongpollManager.default_max_waiting_subscribers),
    (5, 5 - 1),
])
def test_default_max_waiting_leaves_headroom(
    monkeypatch: pytest.MonkeyPatch, limit: int | None, expected: int
) -> None:
    monkeypatch.setattr(server_module, "open_files_limit", lambda: limit)
    assert default_max_waiting() == expected


def test_the_server_uses_the_derived_default() -> None:
    server = Server(access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0"))
    try:
        assert server.manager.max_waiting_subscribers == default_max_waiting()
    finally:
        server.stop()


def test_a_warning_at_start_when_set_above_the_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(server_module, "open_files_limit", lambda: 1000)
    server = Server(access_log=False, max_waiting_subscribers=5000)
    with caplog.at_level(logging.WARNING, logger="wsgi_longpoll.server"):
        server.start(ServerInfo(address="127.0.0.1:0"))
    server.stop()
    assert any("open-files limit" in record.getMessage() and "5000" in record.getMessage()
               for record in caplog.records)
    caplog.clear()
    quiet = Server(access_log=False, max_waiting_subscribers=500)
    with caplog.at_level(logging.WARNING, logger="wsgi_longpoll.server"):
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
