"""The gunicorn worker class: gunicorn -k wsgi_longpoll.server.gunicorn.LongpollWorker."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from conftest import wait_until
from fanout_client import read_answers

from wsgi_longpoll import LongpollManager, LongpollMiddleware
from wsgi_longpoll.server.gunicorn import find_middleware

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gunicorn") is None,
                                reason="gunicorn is not installed")

APP = '''
from wsgi_longpoll import LongpollManager, LongpollMiddleware

manager = LongpollManager()


def hello(environ, start_response):
    if environ["PATH_INFO"] == "/waiting":  # how many polls wait: the tests wait for them
        body = str(manager.waiting_count()).encode()
    else:
        body = b"hello " + environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


application = LongpollMiddleware(hello, manager)
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


TESTS = Path(__file__).resolve().parent
WORKER = "wsgi_longpoll.server.gunicorn.LongpollWorker"
#: The longest a test waits for gunicorn to start, stop or answer.
WAIT_SECONDS = 30
#: The applications, by name: (module:variable, the path of their subscription).
APPS = {
    "middleware": ("longpoll_app:application", "/events"),
    "flask": ("longpoll_flask_app:app", "/events"),
    "django": ("longpoll_django_site.wsgi:application", "/longpoll/events"),
}


@dataclass
class Gunicorn:
    """A gunicorn started by :func:`gunicorn`."""

    process: subprocess.Popen[bytes]
    base: str
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def up(self) -> bool:
        """Whether it answers (``/waiting``, which every test application has)."""
        try:
            return requests.get(f"{self.base}/waiting", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def waiting(self) -> int:
        return int(requests.get(f"{self.base}/waiting", timeout=WAIT_SECONDS).text)


@contextmanager
def gunicorn(tmp_path: Path, app: str, *options: str,
             env: dict[str, str] | None = None, open_files: int | None = None
             ) -> Iterator[Gunicorn]:
    """Run ``gunicorn -k LongpollWorker -w 1`` (*options* may override both) on *app*, an
    application of tests/ or of *tmp_path*, under an open-files limit of *open_files* if
    given; killed at the end if still running."""
    (tmp_path / "longpoll_app.py").write_text(APP)
    port = free_port()
    log = tmp_path / "gunicorn.log"
    environ = {key: value for key, value in os.environ.items()
               if key != "WSGI_LONGPOLL_ALLOW_MEMORY_MULTIPROCESS"}
    environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), environ.get("PYTHONPATH", "")])
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", WORKER, "-w", "1",
             "-b", f"127.0.0.1:{port}", "--chdir", str(tmp_path), "--log-level", "info",
             *options, app],
            stdout=output, stderr=subprocess.STDOUT, env={**environ, **(env or {})},
            preexec_fn=None if open_files is None else lambda: resource.setrlimit(
                resource.RLIMIT_NOFILE,
                (open_files, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
    try:
        yield Gunicorn(process, f"http://127.0.0.1:{port}", log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT_SECONDS)


def test_long_poll_and_publish_through_gunicorn(tmp_path: Path) -> None:
    (tmp_path / "longpoll_app.py").write_text(APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gunicorn.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k",
             "wsgi_longpoll.server.gunicorn.LongpollWorker", "-w", "1", "-b",
             f"127.0.0.1:{port}", "--chdir", str(tmp_path), "--graceful-timeout", "20",
             "--log-level", "info", "longpoll_app:application"],
            stdout=output, stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            try:
                return requests.get(f"{base}/hi", timeout=2).text == "hello /hi"
            except requests.ConnectionError:
                return False

        wait_until(up, timeout=30)
        assert "long-poll paths answered natively: /events, /publish" in log.read_text()
        answers: list[dict[str, object]] = []
        poll = threading.Thread(target=lambda: answers.append(requests.get(
            f"{base}/events", params={"category": "g", "timeout": 30}, timeout=40).json()))
        poll.start()
        wait_until(lambda: requests.get(f"{base}/waiting", timeout=5).text == "1")
        published = requests.post(f"{base}/publish", json={"category": "g", "data": "hi"},
                                  timeout=10)
        assert published.json() == {"success": True}
        poll.join(30)
        assert answers[0]["events"][0]["data"] == "hi"  # type: ignore[index]
        # SIGTERM answers a parked poll at once and exits.
        parked: list[dict[str, object]] = []
        poll = threading.Thread(target=lambda: parked.append(requests.get(
            f"{base}/events", params={"category": "g", "timeout": 30}, timeout=40).json()))
        poll.start()
        wait_until(lambda: requests.get(f"{base}/waiting", timeout=5).text == "1")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        poll.join(30)
        assert parked[0]["timeout"] == "no events before timeout"
        assert time.monotonic() - started < 15, "the parked poll held up the shutdown"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_find_middleware() -> None:
    manager = LongpollManager()

    def app(environ: object, start_response: object) -> list[bytes]:
        return []

    middleware = LongpollMiddleware(app, manager)
    assert find_middleware(middleware) == (middleware, True)

    class FlaskLike:
        wsgi_app = middleware

    assert find_middleware(FlaskLike()) == (middleware, True)

    class Wrapper:
        def __init__(self, app: object) -> None:
            self.app = app

    assert find_middleware(Wrapper(middleware)) == (middleware, False)
    assert find_middleware(app) == (None, False)
    named = Wrapper(middleware)
    named.wsgi_longpoll_middleware = middleware  # type: ignore[attr-defined]
    assert find_middleware(named) == (middleware, True)


def test_importing_the_worker_then_patching_gives_no_monkey_patch_warning() -> None:
    """gunicorn imports the worker class before the worker patches the process."""
    script = (
        "import warnings; warnings.simplefilter('error');"
        "import wsgi_longpoll.server.gunicorn;"
        "from gevent import monkey; monkey.patch_all();"
        "from wsgi_longpoll import publish, subscription"  # the client still loads, later
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()


# -- several workers on the in-memory engine --------------------------------------------


@pytest.mark.parametrize(("app", "options"), [
    pytest.param("middleware", (), id="middleware"),
    pytest.param("middleware", ("--preload",), id="middleware-preload"),
    pytest.param("flask", (), id="flask"),
    pytest.param("django", (), id="django"),  # its manager is built on first use
])
def test_several_workers_on_the_in_memory_engine_refuse_to_boot(
    tmp_path: Path, app: str, options: tuple[str, ...]
) -> None:
    with gunicorn(tmp_path, APPS[app][0], "-w", "2", *options) as server:
        # 3, gunicorn's "Worker failed to boot."; or 1 when both workers fail at once and
        # gunicorn's arbiter, halting for the first, reaps the second (its own traceback).
        assert server.process.wait(WAIT_SECONDS) in (1, 3)
        output = server.output()
    assert "Worker failed to boot." in output
    assert "[ERROR] gunicorn -w 2 runs several processes, but the long-poll manager keeps" \
        in output
    for advice in ("redis_url=", "(gunicorn -w 1)", "WSGI_LONGPOLL_ALLOW_MEMORY_MULTIPROCESS=1"):
        assert advice in output, advice
    assert "MemoryEngineInSeveralProcesses" not in output  # said, not raised at gunicorn
    assert "Exception in worker process" not in output


@pytest.mark.parametrize("app", ["middleware", "flask", "django"])
def test_the_default_subscriber_cap_fits_the_open_files_limit_without_a_warning(
    tmp_path: Path, app: str
) -> None:
    """Under ``ulimit -n 2048`` with gunicorn's 1,000 ``worker_connections``: the manager's
    default cap comes from the limit, and the worker says what the limit allows, calmly."""
    target, path = APPS[app]
    with gunicorn(tmp_path, target, open_files=2048) as server:
        wait_until(server.up, WAIT_SECONDS)
        said = re.search(r"\[INFO\] up to 2048 connections at once, the open-files limit "
                         r"\(ulimit -n\): (\d+) of them for waiting subscribers "
                         r"\([^)]*max_waiting_subscribers[^)]*\) and the rest for requests "
                         r"\(worker_connections is 1000\)\n", server.output())
        assert said, server.output()
        assert 2048 - 256 - 64 < int(said[1]) <= 2048 - 205, said[1]  # open files, headroom
        assert "[WARNING]" not in server.output()
        assert requests.get(f"{server.base}{path}", params={"category": "news", "timeout": 1},
                            timeout=WAIT_SECONDS).status_code == 200


def test_the_variable_lets_several_workers_boot_with_a_warning(tmp_path: Path) -> None:
    with gunicorn(tmp_path, APPS["flask"][0], "-w", "2", "-e",
                  "WSGI_LONGPOLL_ALLOW_MEMORY_MULTIPROCESS=1") as server:
        # Both workers running (a SIGTERM during a worker's boot may be lost in gunicorn).
        wait_until(lambda: server.output().count("connections at once") == 2, WAIT_SECONDS)
        wait_until(server.up, WAIT_SECONDS)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(WAIT_SECONDS) == 0
        output = server.output()
    warnings = [line for line in output.splitlines() if "runs several processes" in line]
    assert len(warnings) == 2  # one per worker
    assert all("[WARNING]" in line and "ALLOW_MEMORY_MULTIPROCESS is set" in line
               for line in warnings)


def test_gunicorns_gevent_worker_answers_500_saying_why_and_logs_it(tmp_path: Path) -> None:
    """Not our worker: the extension's middleware sees ``wsgi.multiprocess`` at the first
    long poll and refuses it, in the answer and in gunicorn's log."""
    with gunicorn(tmp_path, APPS["flask"][0], "-k", "gevent", "-w", "2",
                  "--graceful-timeout", "5") as server:
        wait_until(server.up, WAIT_SECONDS)
        answer = requests.get(f"{server.base}/events", params={"category": "a", "timeout": 1},
                              timeout=WAIT_SECONDS)
        assert answer.status_code == 500
        assert "(wsgi.multiprocess) runs several processes" in answer.json()["error"]
        wait_until(lambda: "[ERROR] gunicorn/" in server.output(), WAIT_SECONDS)
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(WAIT_SECONDS)
    assert "runs several processes" in server.output()


# -- waiting polls never starve the rest -------------------------------------------------


class Polls:
    """*count* long polls on raw sockets (``Connection: close``: an answer ends with EOF)."""

    def __init__(self, base: str, path: str, count: int, category: str = "news") -> None:
        port = int(base.rsplit(":", 1)[1])
        request = (f"GET {path}?category={category}&timeout=60 HTTP/1.1\r\nHost: t\r\n"
                   "Connection: close\r\n\r\n").encode()
        self.sockets: list[socket.socket] = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS)
            sock.sendall(request)
            self.sockets.append(sock)

    def answers(self, within: float) -> list[bytes]:
        """Every answer that came within *within* seconds (fewer: some did not)."""
        return read_answers(self.sockets, within)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def body(answer: bytes) -> dict[str, object]:
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = rest.partition(b"\r\n")
        rest = rest[:int(size, 16)]
    document = json.loads(rest)
    assert isinstance(document, dict)
    return document


@pytest.mark.parametrize("app", ["middleware", "flask"])
def test_waiting_polls_beyond_worker_connections_leave_room_to_publish(
    tmp_path: Path, app: str
) -> None:
    """60 waiting polls, ``worker_connections = 50``: the publish is still answered, and
    every poll gets its event."""
    target, path = APPS[app]
    with gunicorn(tmp_path, target, "--worker-connections", "50") as server:
        wait_until(server.up, WAIT_SECONDS)
        said = re.search(r"up to (\d+) connections at once: 50 for requests "
                         r"\(worker_connections\) and (\d+) for waiting subscribers "
                         r"\(max_waiting_subscribers\)", server.output())
        assert said and int(said[1]) == 50 + int(said[2]), server.output()
        polls = Polls(server.base, path, 60)
        try:
            wait_until(lambda: server.waiting() == 60, WAIT_SECONDS)
            published = requests.post(f"{server.base}/publish",
                                      json={"category": "news", "data": "hi"},
                                      timeout=WAIT_SECONDS)
            assert published.json() == {"success": True}
            answers = polls.answers(within=WAIT_SECONDS)
        finally:
            polls.close()
    assert len(answers) == 60
    for answer in answers:
        events = body(answer)["events"]
        assert isinstance(events, list) and [event["data"] for event in events] == ["hi"]


# -- SIGTERM answers every waiting poll --------------------------------------------------

#: Seconds the waiting polls have to be answered after SIGTERM: well under gunicorn's
#: graceful timeout (30 s), which a worker that leaves them waiting would use up.
ANSWERED_WITHIN = 5.0


def _sigterm_answers_every_waiting_poll(tmp_path: Path, app: str) -> None:
    target, path = APPS[app]
    with gunicorn(tmp_path, target, "--graceful-timeout", "30") as server:
        wait_until(server.up, WAIT_SECONDS)
        polls = Polls(server.base, path, 200)
        try:
            wait_until(lambda: server.waiting() == 200, WAIT_SECONDS)
            server.process.send_signal(signal.SIGTERM)
            answers = polls.answers(within=ANSWERED_WITHIN)
        finally:
            polls.close()
        assert server.process.wait(WAIT_SECONDS) == 0
    assert len(answers) == 200, f"{200 - len(answers)} polls not answered"
    for answer in answers:
        assert body(answer)["timeout"] == "no events before timeout"


def test_sigterm_answers_every_waiting_poll_of_the_middleware(tmp_path: Path) -> None:
    _sigterm_answers_every_waiting_poll(tmp_path, "middleware")


def test_sigterm_answers_every_waiting_poll_of_the_flask_extension(tmp_path: Path) -> None:
    _sigterm_answers_every_waiting_poll(tmp_path, "flask")
