"""The examples, each run the way its docstring says: scripts as subprocesses on 127.0.0.1.

The Flask application is also tested in this process, with WebTest and over a gevent
server in a thread of its own. The Django project only runs in subprocesses: Django's
settings, app registry and logging set-up are process-wide and would leak into other tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import gevent
import pytest
import requests
from gevent.hub import Waiter
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from webtest import TestApp

from wsgi_longpoll import LongpollManager

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MANAGE_PY = EXAMPLES / "django_project" / "manage.py"

#: The longest any test waits for a process or a server; every wait is bounded by it.
WAIT_SECONDS = 30
#: Subscribe timeouts: long enough that an answer before it means an event (or a stop) woke it.
LONG_POLL_SECONDS = 100

SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Script:
    """An example running as a subprocess, its output going to files."""

    process: subprocess.Popen[bytes]
    port: int
    stdout: Path
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return (f"stdout:\n{self.stdout.read_text(errors='replace')}\n"
                f"stderr:\n{self.stderr.read_text(errors='replace')}")

    def stop(self, signum: int) -> int:
        """Send *signum* and return the exit status."""
        self.process.send_signal(signum)
        try:
            return self.process.wait(WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"did not exit after {signum!r}\n{self.output()}") from None


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` to completion."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=WAIT_SECONDS, cwd=EXAMPLES.parent)


#: Stands for the listening address in :func:`running_script`'s arguments.
ADDRESS = "{address}"


@contextmanager
def running_script(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                   preexec_fn: Callable[[], object] | None = None) -> Iterator[Script]:
    """Start ``python *args`` on a free port; yield once the port accepts connections.

    :data:`ADDRESS` in *args* is replaced by ``127.0.0.1:PORT``, which is appended when
    *args* has no :data:`ADDRESS`.
    """
    port = free_port()
    address = f"127.0.0.1:{port}"
    command = [arg.replace(ADDRESS, address) for arg in args]
    if ADDRESS not in args:
        command.append(address)
    name = Path(args[0]).stem
    stdout, stderr = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, *command], stdout=out, stderr=err, cwd=EXAMPLES.parent,
            env=None if env is None else {**os.environ, **env}, preexec_fn=preexec_fn,
        )
    script = Script(process, port, stdout, stderr)
    try:
        def accepting() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"exited with {process.returncode}\n{script.output()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_until(accepting, f"{name} to listen on port {port}")
        yield script
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT_SECONDS)


class Poll(threading.Thread):
    """A long poll made with requests in a thread of its own."""

    def __init__(self, url: str, **params: Any) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.params = {"timeout": LONG_POLL_SECONDS, **params}
        self.response: requests.Response | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.response = requests.get(self.url, params=self.params,
                                         timeout=LONG_POLL_SECONDS + WAIT_SECONDS)
        except BaseException as error:  # handed to the test by answer()
            self.error = error

    def answer(self) -> Any:
        self.join(WAIT_SECONDS)
        assert not self.is_alive(), "the long poll was not answered"
        if self.error is not None:
            raise self.error
        assert self.response is not None
        assert self.response.status_code == 200
        return self.response.json()


# -- examples/standalone.py and examples/client.py -----------------------------------------


@pytest.mark.parametrize("signum", SIGNALS)
def test_standalone_serves_the_seed_endpoints_and_exits_0_on_signal(
    tmp_path: Path, signum: int
) -> None:
    with running_script(tmp_path, "examples/standalone.py") as server:
        published = requests.post(f"{server.url}/publish",
                                  json={"category": "news", "data": {"n": 1}}, timeout=10)
        assert published.content == b'{"success": true}'
        answer = requests.get(f"{server.url}/events",
                              params={"category": "news", "timeout": 5, "since_time": 1},
                              timeout=10).json()
        assert [event["data"] for event in answer["events"]] == [{"n": 1}]
        # ServerInfo(timeout_seconds=120) is the longest timeout a subscriber may ask for.
        too_long = requests.get(f"{server.url}/events",
                                params={"category": "news", "timeout": 121}, timeout=10)
        assert too_long.json() == {"error": "Invalid or missing 'timeout' arg.  Must be 1-120."}
        assert server.stop(signum) == 0, server.output()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_standalone_exits_on_sigint_even_when_started_with_it_ignored(tmp_path: Path) -> None:
    """As a shell's background job is (``SigIgn`` 0x6): the example's own handler stops it."""
    with running_script(tmp_path, "examples/standalone.py", preexec_fn=_ignore_sigint) as server:
        assert server.stop(signal.SIGINT) == 0, server.output()



@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["examples/standalone.py"], "cannot start: invalid address",
                     id="standalone"),
        pytest.param(["examples/flask_app.py"], "cannot serve: invalid address", id="flask"),
        pytest.param([str(MANAGE_PY), "rungevent"], "CommandError: invalid address",
                     id="django"),
    ],
)
def test_scripts_reject_a_bad_address_with_a_clear_error(args: list[str], message: str) -> None:
    result = run_script(*args, "localhost")
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr

def test_client_example_publishes_then_reads_the_event_back(tmp_path: Path) -> None:
    with running_script(tmp_path, "examples/standalone.py") as server:
        result = run_script("examples/client.py", server.url)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == 'publish: 200 {"success": true}'
        assert lines[1] == "subscription: 200, 1 event(s)"
        timestamp, category, event_id, data = lines[2].split(maxsplit=3)
        assert (category, data) == ("notifications", "{'message': 'Hello'}")
        held = requests.get(f"{server.url}/events",
                            params={"category": "notifications", "timeout": 5, "since_time": 1},
                            timeout=10).json()["events"]
        assert [(event["timestamp"], event["id"]) for event in held] == [
            (int(timestamp), event_id)
        ]
        assert server.stop(signal.SIGINT) == 0, server.output()


def test_client_example_fails_when_the_server_answers_with_an_error(tmp_path: Path) -> None:
    # The standalone server answers 404 at the root, so "/publish" under a wrong prefix fails.
    with running_script(tmp_path, "examples/standalone.py") as server:
        result = run_script("examples/client.py", f"{server.url}/wrong-prefix")
        assert result.returncode == 1, result.stderr
        assert result.stdout.startswith("publish: 404 "), result.stdout
        assert server.stop(signal.SIGTERM) == 0, server.output()


# -- examples/flask_app.py -----------------------------------------------------------------


def load_flask_example() -> ModuleType:
    """Import examples/flask_app.py under a private name, leaving ``sys.path`` alone."""
    spec = importlib.util.spec_from_file_location("flask_app_example", EXAMPLES / "flask_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flask_example = load_flask_example()


@pytest.fixture
def manager() -> Iterator[LongpollManager]:
    manager = LongpollManager(max_longpoll_timeout_seconds=120)
    yield manager
    manager.close()


@pytest.fixture
def flask_app(manager: LongpollManager) -> Any:
    return flask_example.create_app(manager)


@pytest.fixture
def testapp(flask_app: Any) -> TestApp:
    return TestApp(flask_app)


def test_flask_docstring_curl_sends_json(testapp: TestApp) -> None:
    """``curl -d`` alone sends a form's Content-Type, which the view refuses: the
    docstring's command names JSON."""
    assert "curl -X POST -H 'Content-Type: application/json'" in (flask_example.__doc__ or "")
    body = '{"message": "Hello"}'
    testapp.post("/notify", body, content_type="application/x-www-form-urlencoded", status=400)
    testapp.post("/notify", body, content_type="application/json", status=201)


@contextmanager
def gevent_server(app: Any) -> Iterator[str]:
    """Serve *app* on gevent's WSGIServer in a thread with its own hub; yield its URL."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    def run() -> None:
        hub = gevent.get_hub()
        waiter = Waiter()
        stop_signal = hub.loop.async_()
        stop_signal.start(waiter.switch, None)
        try:
            server = WSGIServer(("127.0.0.1", 0), app, spawn=Pool(), log=None)
            server.start()
        except BaseException as error:
            state["error"] = error
            ready.set()
            raise
        state.update(port=server.server_port, stop_signal=stop_signal)
        ready.set()
        try:
            waiter.get()
            server.stop(timeout=1)
        finally:
            stop_signal.close()
            hub.destroy(destroy_loop=True)

    thread = threading.Thread(target=run, name="gevent-server", daemon=True)
    thread.start()
    assert ready.wait(WAIT_SECONDS), "the gevent server did not start"
    if "error" in state:
        raise state["error"]
    try:
        yield f"http://127.0.0.1:{state['port']}"
    finally:
        state["stop_signal"].send()
        thread.join(WAIT_SECONDS)
        assert not thread.is_alive(), "the gevent server did not stop"


def test_flask_routes_are_flasks(testapp: TestApp) -> None:
    page = testapp.get("/")
    assert page.content_type == "text/html"
    assert "fetch(\"/events?\"" in page.text
    missing = testapp.get("/missing", status=404)
    assert missing.content_type == "text/html"  # Flask's own 404, not the middleware's JSON


def test_flask_publish_then_subscribe_with_since_time_answers_at_once(
    testapp: TestApp, manager: LongpollManager
) -> None:
    published = testapp.post_json("/publish", {"category": "news", "data": [1, "two"]})
    assert published.body == b'{"success": true}'
    answer = testapp.get("/events", {"category": "news", "timeout": 60, "since_time": 1})
    assert answer.headers["Cache-Control"] == "no-cache, no-store, must-revalidate"
    (event,) = answer.json["events"]
    assert event["data"] == [1, "two"]
    assert event["id"] == manager.buffered_events("news")[0].id


def test_flask_notify_route_publishes_from_python(
    testapp: TestApp, manager: LongpollManager
) -> None:
    created = testapp.post_json("/notify", {"message": "Hello"}, status=201)
    (event,) = manager.buffered_events("notifications")
    assert created.json == {"id": event.id, "timestamp": event.timestamp}
    assert event.data == {"message": "Hello"}
    answer = testapp.get("/events", {"category": "notifications", "timeout": 60,
                                     "since_time": event.timestamp - 1})
    assert answer.json["events"] == [json.loads(event.to_json())]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b'["Hello"]', id="not-an-object"),
        pytest.param(b'{"text": "Hello"}', id="no-message"),
        pytest.param(b'{"message": "  "}', id="blank-message"),
        pytest.param(b'{"message": 3}', id="message-not-text"),
    ],
)
def test_flask_notify_route_rejects_a_bad_body(
    testapp: TestApp, manager: LongpollManager, body: bytes
) -> None:
    answer = testapp.post("/notify", body, content_type="application/json", status=400)
    assert answer.json == {"error": "expected a JSON object with a non-empty 'message'"}
    assert manager.buffered_events("notifications") == []


def test_flask_long_polls_use_the_managers_limit(testapp: TestApp) -> None:
    answer = testapp.get("/events", {"category": "news", "timeout": 121})
    assert answer.json == {"error": "Invalid or missing 'timeout' arg.  Must be 1-120."}


def test_flask_under_a_threaded_server_refuses_long_polls(testapp: TestApp) -> None:
    # What `flask run` would do: the middleware explains instead of misbehaving.
    answer = testapp.get("/events", {"category": "news", "timeout": 5},
                         extra_environ={"wsgi.multithread": True}, status=500)
    assert "gevent" in answer.json["error"]
    assert testapp.get("/", extra_environ={"wsgi.multithread": True}).status_code == 200


def test_flask_long_poll_is_woken_by_a_route_that_publishes(
    flask_app: Any, manager: LongpollManager
) -> None:
    with gevent_server(flask_app) as url:
        poll = Poll(f"{url}/events", category="notifications")
        poll.start()
        wait_until(lambda: manager.waiting_count("notifications") == 1,
                   "the long poll to be waiting")
        created = requests.post(f"{url}/notify", json={"message": "Hello"}, timeout=10)
        assert created.status_code == 201
        (event,) = poll.answer()["events"]
        assert event["id"] == created.json()["id"]
        assert event["data"] == {"message": "Hello"}


@pytest.mark.parametrize("signum", SIGNALS)
def test_flask_script_serves_on_gevent_and_exits_0_on_signal(
    tmp_path: Path, signum: int
) -> None:
    with running_script(tmp_path, "examples/flask_app.py") as server:
        assert requests.get(server.url, timeout=10).status_code == 200
        created = requests.post(f"{server.url}/notify", json={"message": "Hi"}, timeout=10)
        assert created.status_code == 201
        answer = requests.get(f"{server.url}/events",
                              params={"category": "notifications", "timeout": 5,
                                      "since_time": 1},
                              timeout=10).json()
        assert [event["id"] for event in answer["events"]] == [created.json()["id"]]
        assert server.stop(signum) == 0, server.output()


# -- examples/django_project ---------------------------------------------------------------


def test_django_project_passes_djangos_checks() -> None:
    result = run_script(str(MANAGE_PY), "check")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


@pytest.fixture(scope="module")
def django_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Script]:
    with running_script(tmp_path_factory.mktemp("django"), str(MANAGE_PY),
                        "rungevent") as server:
        yield server


def test_django_views_are_djangos(django_server: Script) -> None:
    index = requests.get(f"{django_server.url}/", timeout=10)
    assert index.json()["notify"] == "/notify/"
    missing = requests.get(f"{django_server.url}/missing", timeout=10)
    assert missing.status_code == 404
    assert missing.headers["Content-Type"].startswith("text/html")  # Django's own 404


def test_django_publish_then_subscribe_with_since_time_answers_at_once(
    django_server: Script,
) -> None:
    # No CSRF token: the middleware answers /publish before Django's CSRF check.
    published = requests.post(f"{django_server.url}/publish",
                              data=b'{"category": "django-news", "data": {"n": 1}}', timeout=10)
    assert published.content == b'{"success": true}'
    answer = requests.get(f"{django_server.url}/events",
                          params={"category": "django-news", "timeout": 60, "since_time": 1},
                          timeout=10).json()
    assert [event["data"] for event in answer["events"]] == [{"n": 1}]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b'{"message": ""}', id="blank-message"),
    ],
)
def test_django_notify_view_rejects_a_bad_body(django_server: Script, body: bytes) -> None:
    answer = requests.post(f"{django_server.url}/notify/", data=body, timeout=10)
    assert answer.status_code == 400
    assert answer.json() == {"error": "expected a JSON object with a non-empty 'message'"}


def waiting(server: Script) -> int:
    return int(requests.get(f"{server.url}/status/", timeout=10).json()["waiting"])


def test_django_long_poll_is_woken_by_a_view_that_publishes(django_server: Script) -> None:
    poll = Poll(f"{django_server.url}/events", category="notifications")
    poll.start()
    wait_until(lambda: waiting(django_server) == 1, "the long poll to be waiting")
    created = requests.post(f"{django_server.url}/notify/", json={"message": "Hello"},
                            timeout=10)
    assert created.status_code == 201
    (event,) = poll.answer()["events"]
    assert event["id"] == created.json()["id"]
    assert event["data"] == {"message": "Hello"}


@pytest.mark.parametrize("signum", SIGNALS)
def test_django_rungevent_answers_waiting_polls_and_exits_0_on_signal(
    tmp_path: Path, signum: int
) -> None:
    with running_script(tmp_path, str(MANAGE_PY), "rungevent") as server:
        poll = Poll(f"{server.url}/events", category="notifications")
        poll.start()
        wait_until(lambda: waiting(server) == 1, "the long poll to be waiting")
        assert server.stop(signum) == 0, server.output()
        assert poll.answer()["timeout"] == "no events before timeout"



def test_django_runserver_refuses_long_polls_but_serves_views(tmp_path: Path) -> None:
    # runserver runs requests in threads: the middleware says so instead of misbehaving.
    with running_script(tmp_path, str(MANAGE_PY), "runserver", "--noreload") as server:
        refused = requests.get(f"{server.url}/events",
                               params={"category": "notifications", "timeout": 5}, timeout=10)
        assert refused.status_code == 500
        assert "gevent" in refused.json()["error"]
        assert requests.get(f"{server.url}/status/", timeout=10).json()["waiting"] == 0

# -- gunicorn (examples/gunicorn.conf.py) --------------------------------------------------

needs_gunicorn = pytest.mark.skipif(
    importlib.util.find_spec("gunicorn") is None, reason="gunicorn is not installed"
)


@needs_gunicorn
def test_gunicorn_serves_the_flask_example_with_one_gevent_worker(tmp_path: Path) -> None:
    with running_script(tmp_path, "-m", "gunicorn", "-k", "gevent", "-w", "1",
                        "-b", ADDRESS, "examples.flask_app:app",
                        env={"HOME": str(tmp_path)}) as server:
        # gunicorn's gevent worker monkey-patches, so the wait runs in a greenlet.
        timed_out = requests.get(f"{server.url}/events",
                                 params={"category": "notifications", "timeout": 1},
                                 timeout=10).json()
        assert timed_out["timeout"] == "no events before timeout"
        created = requests.post(f"{server.url}/notify", json={"message": "Hi"}, timeout=10)
        assert created.status_code == 201
        answer = requests.get(f"{server.url}/events",
                              params={"category": "notifications", "timeout": 5,
                                      "since_time": 1}, timeout=10).json()
        assert [event["id"] for event in answer["events"]] == [created.json()["id"]]
        assert server.stop(signal.SIGTERM) == 0, server.output()

@needs_gunicorn
def test_gunicorn_config_answers_waiting_polls_on_sigterm(tmp_path: Path) -> None:
    with running_script(tmp_path, "-m", "gunicorn", "-c", str(EXAMPLES / "gunicorn.conf.py"),
                        "-b", ADDRESS, "--chdir", str(MANAGE_PY.parent),
                        "longpoll_site.wsgi:application",
                        env={"HOME": str(tmp_path)}) as server:
        poll = Poll(f"{server.url}/events", category="notifications")
        poll.start()
        wait_until(lambda: waiting(server) == 1, "the long poll to be waiting")
        assert server.stop(signal.SIGTERM) == 0, server.output()
        assert poll.answer()["timeout"] == "no events before timeout"
        assert "Worker graceful timeout" not in server.output()
