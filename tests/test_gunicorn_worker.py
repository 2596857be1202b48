"""The gunicorn worker class: gunicorn -k wsgi_longpoll.server.gunicorn.LongpollWorker."""

from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import wait_until

from wsgi_longpoll import LongpollManager, LongpollMiddleware
from wsgi_longpoll.server.gunicorn import find_middleware

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gunicorn") is None,
                                reason="gunicorn is not installed")

APP = '''
from wsgi_longpoll import LongpollManager, LongpollMiddleware

manager = LongpollManager()


def hello(environ, start_response):
    if environ["PATH_INFO"] == "/waiting":
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
