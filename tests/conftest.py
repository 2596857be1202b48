"""Fixtures shared by the test modules: a running standalone server on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

import pytest
import requests

from wsgi_longpoll import Server, ServerInfo
from wsgi_longpoll.engines import memory as engine_module


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll *condition* until it is true; fail the test after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.005)


def publish_concurrently(base_url: str, categories: Iterable[str], per_category: int) -> None:
    """Publish 0 .. per_category - 1 to each category over HTTP, one thread per category."""

    def publish_all(category: str) -> None:
        with requests.Session() as session:
            for n in range(per_category):
                answer = session.post(f"{base_url}/publish",
                                      json={"category": category, "data": n}, timeout=10)
                assert answer.status_code == 200, answer.text

    publishers = [threading.Thread(target=publish_all, args=(c,)) for c in categories]
    for publisher in publishers:
        publisher.start()
    for publisher in publishers:
        publisher.join(60)


@pytest.fixture
def engine_clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The in-memory engine's clock in ms (timestamps, time to live); move ``engine_clock[0]``."""
    now = [int(time.time() * 1000)]
    monkeypatch.setattr(engine_module, "now_ms", lambda: now[0])
    return now


@pytest.fixture
def server() -> Iterator[Server]:
    """A standalone server on a free port of 127.0.0.1, stopped after the test."""
    server = Server(access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    yield server
    server.stop(5)


@pytest.fixture
def base_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"
