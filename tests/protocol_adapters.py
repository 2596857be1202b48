"""The adapters of the protocol suite: one small client per way the protocol is served.

``tests/test_protocol_suite.py`` runs each protocol test against every adapter, as the
engine tests run on every engine (``make_engine`` in ``conftest.py``):

- ``webtest``: :class:`~wsgi_longpoll.LongpollMiddleware` in WebTest's ``TestApp``, in
  this process (a poll that waits is answered by a publisher greenlet);
- ``server``: the standalone :class:`~wsgi_longpoll.Server` on 127.0.0.1;
- ``flask``: the Flask extension's application (``protocol_apps.flask_app``) and
- ``django``: the Django app (``protocol_apps.django_settings``), each served by
  ``gunicorn -k wsgi_longpoll.server.gunicorn.LongpollWorker -w 1`` in a subprocess.

Every adapter is configured alike (:mod:`protocol_apps` holds the options) and takes
requests as a path and query sent as they are written (no client re-encodes them:
``requests`` would decode ``%63ategories``), so that a test can pin what goes on the wire.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import gevent
import protocol_apps
from conftest import wait_until
from webob import Request as WebObRequest
from webtest import TestApp
from werkzeug.datastructures import Headers

from wsgi_longpoll import LongpollManager, LongpollMiddleware, Server, ServerInfo
from wsgi_longpoll.client.sse import SSEMessage, SSEParser
from wsgi_longpoll.wsgi.middleware import Hook

#: The longest any single wait of the suite may take, in seconds.
WAIT_SECONDS = 20.0
#: The directory gunicorn runs the applications from (``protocol_apps`` is in it).
TESTS_DIRECTORY = Path(__file__).parent


@dataclass(frozen=True)
class Answer:
    """A whole HTTP answer: status, headers (case-insensitive), body."""

    status: int
    headers: Headers
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Stream:
    """A Server-Sent Events answer, read as it comes.

    :param status: the answer's status.
    :param headers: its headers.
    :param chunks: the body's bytes as they arrive.
    :param close: releases the connection (or the application's iterator).
    """

    def __init__(self, status: int, headers: Headers, chunks: Iterator[bytes],
                 close: Callable[[], None]) -> None:
        self.status = status
        self.headers = headers
        self._chunks = chunks
        self._close = close
        self._lines = self._split(chunks)
        self.parser = SSEParser()
        self._messages = self.parser.feed_lines(self._lines)

    @staticmethod
    def _split(chunks: Iterator[bytes]) -> Iterator[str]:
        pending = b""
        for chunk in chunks:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.decode()

    def opening(self) -> list[str]:
        """The lines before the first blank line: the stream's opening fields."""
        lines = []
        for line in self._lines:
            if not line:
                return lines
            lines.append(line)
        raise AssertionError(f"the stream ended within its opening: {lines}")

    def take(self, count: int) -> list[SSEMessage]:
        """The next *count* messages (events, gaps), waiting for them."""
        taken: list[SSEMessage] = []
        if count == 0:
            return taken
        for message in self._messages:
            taken.append(message)
            if len(taken) == count:
                return taken
        raise AssertionError(f"the stream ended after {taken}")

    def body(self) -> bytes:
        """The rest of the body (an answer that is not a stream, or a stream that ends)."""
        return b"".join(self._chunks)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


class Publisher:
    """Publishes once a subscriber waits on a category; :meth:`join` waits for it to have
    published, and raises what went wrong."""

    def __init__(self, join: Callable[[], None]) -> None:
        self._join = join

    def join(self) -> None:
        self._join()


class Adapter:
    """A way of serving the protocol, and a client of it."""

    #: ``webtest``, ``server``, ``flask`` or ``django``.
    name: str

    def request(self, method: str, target: str, headers: Mapping[str, str] | None = None,
                body: bytes = b"") -> Answer:
        """Send *method* *target* (a path and query, sent as written); the whole answer."""
        raise NotImplementedError

    def stream(self, target: str, headers: Mapping[str, str] | None = None) -> Stream:
        """``GET`` *target* with ``Accept: text/event-stream``, read as it comes."""
        raise NotImplementedError

    def publish(self, category: str, data: Any) -> None:
        """Publish an event, through the adapter's manager or over HTTP."""
        raise NotImplementedError

    def waiting_count(self, category: str) -> int:
        """How many subscribers wait on *category*."""
        raise NotImplementedError

    def publish_when_waiting(self, category: str,
                             events: Sequence[tuple[str, Any]]) -> Publisher:
        """Once a subscriber waits on *category*, publish *events* (category, data),
        in order, while this thread is busy waiting for an answer."""
        raise NotImplementedError

    def get(self, target: str, headers: Mapping[str, str] | None = None) -> Answer:
        return self.request("GET", target, headers)

    def post(self, target: str, body: bytes, headers: Mapping[str, str] | None = None
             ) -> Answer:
        return self.request("POST", target, headers, body)

    def close(self) -> None:
        """Release what the adapter holds."""


def _deadline_passed(started: float, what: str) -> None:
    if time.monotonic() - started > WAIT_SECONDS:
        raise AssertionError(f"{what} within {WAIT_SECONDS} s")


# -- in this process: the middleware in WebTest ----------------------------------------


def _not_found(environ: object, start_response: Callable[..., object]) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


class WebTestAdapter(Adapter):
    """:class:`LongpollMiddleware` in WebTest's ``TestApp``.

    A stream is read with WebOb (``TestApp`` reads a body whole before it returns).
    """

    name = "webtest"

    def __init__(self, before_subscription: Hook | None = None,
                 redis_url: str | None = None) -> None:
        self.manager = LongpollManager(protocol_apps.MAX_TIMEOUT_SECONDS,
                                       protocol_apps.MAX_EVENT_BUFFER_SIZE,
                                       redis_url=redis_url)
        self.middleware = LongpollMiddleware(
            _not_found, self.manager, before_subscription=before_subscription,
            max_body_size=protocol_apps.MAX_BODY_SIZE,
            max_categories_per_request=protocol_apps.MAX_CATEGORIES_PER_REQUEST,
        )
        self.app = TestApp(self.middleware)

    def request(self, method: str, target: str, headers: Mapping[str, str] | None = None,
                body: bytes = b"") -> Answer:
        response = self.app.request(target, method=method, headers=dict(headers or {}),
                                    body=body, expect_errors=True)
        return Answer(response.status_int, Headers(response.headerlist), response.body)

    def stream(self, target: str, headers: Mapping[str, str] | None = None) -> Stream:
        request = WebObRequest.blank(
            target, headers={"Accept": "text/event-stream", **(headers or {})})
        status, headerlist, chunks = request.call_application(self.middleware)
        iterator = iter(chunks)

        def close() -> None:
            closing = getattr(chunks, "close", None)
            if closing is not None:
                closing()

        return Stream(int(status.split()[0]), Headers(headerlist), iterator, close)

    def publish(self, category: str, data: Any) -> None:
        self.manager.publish(category, data)

    def waiting_count(self, category: str) -> int:
        return self.manager.waiting_count(category)

    def publish_when_waiting(self, category: str,
                             events: Sequence[tuple[str, Any]]) -> Publisher:
        def publish() -> None:
            started = time.monotonic()
            while self.manager.waiting_count(category) == 0:
                _deadline_passed(started, f"no subscriber waited on {category!r}")
                gevent.sleep(0.005)
            for name, data in events:
                self.manager.publish(name, data)

        greenlet = gevent.spawn(publish)
        return Publisher(lambda: greenlet.get(timeout=WAIT_SECONDS))

    def close(self) -> None:
        self.manager.close()


# -- over HTTP: the standalone server and the frameworks under gunicorn ----------------


class HTTPAdapter(Adapter):
    """A client of a server on 127.0.0.1 (``http.client``: the target goes as written)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT_SECONDS)

    def request(self, method: str, target: str, headers: Mapping[str, str] | None = None,
                body: bytes = b"") -> Answer:
        if method == "HEAD":
            return self._head(target, headers or {})
        connection = self._connection()
        try:
            connection.request(method, target, body=body or None, headers=dict(headers or {}))
            response = connection.getresponse()
            return Answer(response.status, Headers(response.getheaders()), response.read())
        finally:
            connection.close()

    def _head(self, target: str, headers: Mapping[str, str]) -> Answer:
        """``HEAD``, with every byte the server sends until it closes the connection as
        the body (``http.client`` reads no body to a HEAD, so it would not show one)."""
        lines = [f"HEAD {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        with socket.create_connection(("127.0.0.1", self.port), timeout=WAIT_SECONDS) as sock:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        status_line, *fields = head.decode("latin-1").split("\r\n")
        pairs = [field.split(":", 1) for field in fields]
        return Answer(int(status_line.split()[1]),
                      Headers([(name, value.strip()) for name, value in pairs]), body)

    def stream(self, target: str, headers: Mapping[str, str] | None = None) -> Stream:
        connection = self._connection()
        try:
            connection.request("GET", target,
                               headers={"Accept": "text/event-stream", **(headers or {})})
            response = connection.getresponse()
        except BaseException:
            connection.close()
            raise
        chunks = iter(lambda: response.read1(65536), b"")
        return Stream(response.status, Headers(response.getheaders()), chunks,
                      connection.close)

    def publish_when_waiting(self, category: str,
                             events: Sequence[tuple[str, Any]]) -> Publisher:
        failures: list[BaseException] = []

        def publish() -> None:
            try:
                wait_until(lambda: self.waiting_count(category) > 0, WAIT_SECONDS)
                for name, data in events:
                    self.publish(name, data)
            except BaseException as error:  # noqa: BLE001 - raised again by join
                failures.append(error)

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()

        def join() -> None:
            thread.join(WAIT_SECONDS + 5)
            assert not thread.is_alive(), "the publisher did not finish"
            if failures:
                raise failures[0]

        return Publisher(join)


class ServerAdapter(HTTPAdapter):
    """The standalone :class:`Server` on a free port of 127.0.0.1."""

    name = "server"

    def __init__(self, before_subscription: Hook | None = None,
                 redis_url: str | None = None) -> None:
        self.server = Server(
            access_log=False,
            redis_url=redis_url,
            max_event_buffer_size=protocol_apps.MAX_EVENT_BUFFER_SIZE,
            max_body_size=protocol_apps.MAX_BODY_SIZE,
            max_categories_per_request=protocol_apps.MAX_CATEGORIES_PER_REQUEST,
        )
        self.server.start(ServerInfo(
            address="127.0.0.1:0", timeout_seconds=protocol_apps.MAX_TIMEOUT_SECONDS,
            handler_to_run_before_subscription=before_subscription,
        ))
        super().__init__(self.server.port)

    def publish(self, category: str, data: Any) -> None:
        self.server.manager.publish(category, data)

    def waiting_count(self, category: str) -> int:
        return self.server.manager.waiting_count(category)

    def close(self) -> None:
        self.server.stop(5)


def _gunicorn_options() -> list[str]:
    """Options of the installed gunicorn: no control socket (gunicorn 25.1 and later
    open one in the home directory, shared by every gunicorn of the user)."""
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


class GunicornAdapter(HTTPAdapter):
    """An application of :mod:`protocol_apps` served by
    ``gunicorn -k wsgi_longpoll.server.gunicorn.LongpollWorker -w 1``; its manager is in
    that process, so events are published over HTTP (``POST /publish``)."""

    def __init__(self, name: str, application: str, log: Path,
                 environment: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        with log.open("w") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn",
                 "-k", "wsgi_longpoll.server.gunicorn.LongpollWorker", "-w", "1",
                 "-b", "127.0.0.1:0", "--chdir", str(TESTS_DIRECTORY),
                 "--graceful-timeout", "5", *_gunicorn_options(), application],
                stdout=output, stderr=subprocess.STDOUT,
                env={**os.environ, **(environment or {})},
            )
        try:
            super().__init__(self._port())
            self._wait_for_the_worker()
        except BaseException:
            self.close()
            raise

    def _port(self) -> int:
        started = time.monotonic()
        while True:
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", self.log.read_text())
            if found:
                return int(found.group(1))
            self._check_running()
            _deadline_passed(started, f"gunicorn did not listen:\n{self.log.read_text()}")
            time.sleep(0.05)

    def _wait_for_the_worker(self) -> None:
        started = time.monotonic()
        while True:
            try:
                if self.get("/waiting?category=x").status == 200:
                    return
            except OSError:
                pass
            self._check_running()
            _deadline_passed(started, f"the worker did not answer:\n{self.log.read_text()}")
            time.sleep(0.05)

    def _check_running(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited with {self.process.returncode}:\n"
                                 f"{self.log.read_text()}")

    def publish(self, category: str, data: Any) -> None:
        answer = self.post("/publish", json.dumps({"category": category, "data": data}).encode())
        assert (answer.status, answer.body) == (200, b'{"success": true}'), answer

    def waiting_count(self, category: str) -> int:
        answer = self.get(f"/waiting?category={category}")
        assert answer.status == 200, answer
        return int(answer.body)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(WAIT_SECONDS)


def flask_adapter(log: Path, redis_url: str | None = None) -> GunicornAdapter:
    return GunicornAdapter("flask", "protocol_apps.flask_app:app", log,
                           {"PROTOCOL_SUITE_REDIS_URL": redis_url or ""})


def django_adapter(log: Path, redis_url: str | None = None) -> GunicornAdapter:
    return GunicornAdapter("django", "protocol_apps.django_wsgi:application", log,
                           {"DJANGO_SETTINGS_MODULE": "protocol_apps.django_settings",
                            "PROTOCOL_SUITE_REDIS_URL": redis_url or ""})
