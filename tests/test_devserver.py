"""The development servers: ``flask longpoll run`` and ``manage.py runlongpoll``, each run as
a subprocess on 127.0.0.1, with and without the framework's code reloader."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from test_examples import WAIT_SECONDS, free_port, wait_until

TESTS = Path(__file__).resolve().parent
FLASK_APP = TESTS / "longpoll_flask_app.py"
DJANGO_SITE = TESTS / "longpoll_django_site"


@dataclass
class Framework:
    """How to run one framework's command, and the paths of its test application."""

    name: str
    events: str
    publish: str

    def command(self, home: Path, port: int, *options: str) -> list[str]:
        if self.name == "flask":
            return [sys.executable, "-m", "flask", "--app", str(home / FLASK_APP.name),
                    "longpoll", "run", "--port", str(port), *options]
        return [sys.executable, "-m", "django", "runlongpoll", f"127.0.0.1:{port}", *options]

    def no_reload(self) -> str:
        return "--no-reload" if self.name == "flask" else "--noreload"

    def source(self, home: Path) -> Path:
        """The module whose ``GREETING`` ``/hello`` answers."""
        return home / (FLASK_APP.name if self.name == "flask" else "longpoll_django_site/urls.py")


FLASK = Framework("flask", "/events", "/publish")
DJANGO = Framework("django", "/longpoll/events", "/longpoll/publish")
FRAMEWORKS = [pytest.param(FLASK, id="flask"), pytest.param(DJANGO, id="django")]


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    base: str
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def stopped(self) -> str:
        """The output, once the command has exited (bounded)."""
        self.process.wait(WAIT_SECONDS)
        return self.output()

    def get(self, path: str) -> str | None:
        try:
            return requests.get(f"{self.base}{path}", timeout=WAIT_SECONDS).text
        except requests.ConnectionError:
            return None

    def accepts(self) -> bool:
        port = int(self.base.rsplit(":", 1)[1])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    def signal_all(self, signum: int) -> None:
        """Send *signum* to the command and its reloader child, as CTRL+C in a terminal."""
        os.killpg(self.process.pid, signum)


@contextmanager
def running(framework: Framework, tmp_path: Path, *options: str,
            port: int | None = None) -> Iterator[Running]:
    """Run *framework*'s command on a copy of its test application in *tmp_path*."""
    shutil.copy(FLASK_APP, tmp_path / FLASK_APP.name)
    shutil.copytree(DJANGO_SITE, tmp_path / DJANGO_SITE.name,
                    ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    port = port or free_port()
    env = {**os.environ, "PYTHONPATH": str(tmp_path),
           "DJANGO_SETTINGS_MODULE": "longpoll_django_site.settings",
           "PYTHONDONTWRITEBYTECODE": "1"}
    log = tmp_path / "output.log"
    with log.open("wb") as output:  # a file: a full pipe would stall the access log
        process = subprocess.Popen(framework.command(tmp_path, port, *options), cwd=tmp_path,
                                   env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield Running(process, f"http://127.0.0.1:{port}", log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(WAIT_SECONDS)


def long_poll(server: Running, framework: Framework, answers: list[dict[str, object]]
              ) -> threading.Thread:
    """A long poll on ``news`` in a thread; its answer goes to *answers*."""

    def poll() -> None:
        answers.append(requests.get(f"{server.base}{framework.events}",
                                    params={"category": "news", "timeout": 60},
                                    timeout=WAIT_SECONDS * 2).json())

    thread = threading.Thread(target=poll)
    thread.start()
    wait_until(lambda: server.get("/waiting") == "1", "the long poll to wait")
    return thread


def round_trip(server: Running, framework: Framework, data: str) -> None:
    """A long poll waits, a publish wakes it with *data*."""
    answers: list[dict[str, object]] = []
    poll = long_poll(server, framework, answers)
    published = requests.post(f"{server.base}{framework.publish}",
                              json={"category": "news", "data": data}, timeout=WAIT_SECONDS)
    assert published.json() == {"success": True}
    poll.join(WAIT_SECONDS)
    events = answers[0]["events"]
    assert isinstance(events, list) and [event["data"] for event in events] == [data]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_command_serves_long_polls_and_answers_them_on_stop(
    tmp_path: Path, framework: Framework, signum: int
) -> None:
    with running(framework, tmp_path, framework.no_reload()) as server:
        wait_until(lambda: server.get("/hello") == "hello", "the server to answer")
        round_trip(server, framework, "first")
        answers: list[dict[str, object]] = []
        poll = long_poll(server, framework, answers)
        server.process.send_signal(signum)
        output = server.stopped()
        poll.join(WAIT_SECONDS)
    assert server.process.returncode == 0, output
    assert answers == [answers[0]] and answers[0]["timeout"] == "no events before timeout"
    assert "(wsgi_longpoll's server); CTRL+C to quit" in output
    assert '"GET /hello HTTP/1.1" 200' in output  # the access log


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_command_reloads_changed_code(tmp_path: Path, framework: Framework) -> None:
    reload = ("--reload",) if framework is FLASK else ()  # Django's reloads by default
    with running(framework, tmp_path, *reload) as server:
        wait_until(lambda: server.get("/hello") == "hello", "the server to answer")
        if framework is DJANGO:  # its reloader looks at the code while the server starts
            wait_until(lambda: "longpoll_django_site/urls.py first seen" in server.output(),
                       "Django's reloader to see the code")
        round_trip(server, framework, "before")
        source = framework.source(tmp_path)
        source.write_text(source.read_text().replace('GREETING = "hello"',
                                                     'GREETING = "hello again"'))
        stat = source.stat()
        os.utime(source, (stat.st_atime, stat.st_mtime + 2))  # newer, whatever the clock
        wait_until(lambda: server.get("/hello") == "hello again", "the reloaded code")
        round_trip(server, framework, "after")
        server.signal_all(signal.SIGINT)
        output = server.stopped()
        wait_until(lambda: not server.accepts(), "the reloader's child to stop")
    assert server.process.returncode == 0, output
    assert "reloading on code changes" in output


@pytest.mark.parametrize("reload", [False, True], ids=["no-reload", "reload"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_an_address_in_use_is_an_error(tmp_path: Path, framework: Framework,
                                       reload: bool) -> None:
    options = ("--reload",) if framework is FLASK else ()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with running(framework, tmp_path, *(options if reload else (framework.no_reload(),)),
                     port=port) as server:
            output = server.stopped()
    assert server.process.returncode == 1, output
    assert f"cannot listen on 127.0.0.1:{port}" in output
    assert "Traceback" not in output


def test_flask_command_defaults_to_flasks_address_and_reload() -> None:
    from longpoll_flask_app import app

    result = app.test_cli_runner().invoke(args=["longpoll", "run", "--help"])
    assert result.exit_code == 0
    assert "[default: 127.0.0.1]" in result.output and "[default: 5000;" in result.output
    assert "--reload / --no-reload" in result.output


@pytest.mark.parametrize(("given", "address"), [
    (None, "127.0.0.1:8000"),
    ("8080", "127.0.0.1:8080"),
    ("0.0.0.0:9000", "0.0.0.0:9000"),
    ("[::1]:8000", "[::1]:8000"),
])
def test_django_command_takes_runservers_addresses(given: str | None, address: str) -> None:
    from wsgi_longpoll.contrib.django.management.commands.runlongpoll import _address

    assert _address(given) == address


def test_django_command_refuses_a_bad_address() -> None:
    from django.core.management.base import CommandError

    from wsgi_longpoll.contrib.django.management.commands.runlongpoll import _address

    with pytest.raises(CommandError, match="'localhost' is not a port or address:port"):
        _address("localhost")
