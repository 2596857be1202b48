"""The hold hand-off: a WSGI application under this package's server hands the long polls
and streams it decides to hold to the server (``wsgi_longpoll.hold``), which parks the
socket and answers from the publisher, with the application's own headers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import requests
from conftest import wait_until

from wsgi_longpoll import LongpollManager, LongpollMiddleware, Server, ServerInfo
from wsgi_longpoll.endpoints import HOLD_KEY, Endpoints, Hold, RequestParts
from wsgi_longpoll.wsgi.answers import not_found


class Stamped:
    """WSGI middleware that adds ``X-App: yes`` to every answer and records when the
    application returned."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.returned: list[float] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        def stamped(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-App", "yes")], exc_info)

        body = list(self.app(environ, stamped))
        self.returned.append(time.monotonic())
        return body


@pytest.fixture
def manager() -> Iterator[LongpollManager]:
    manager = LongpollManager()
    yield manager
    manager.close()


def _serve(app: Any) -> Server:
    server = Server(app=app, access_log=False)
    # The long-poll paths of the server's own middleware are elsewhere: the app's are used.
    server.start(ServerInfo(address="127.0.0.1:0", subscription_uri="/native-events",
                            publish_uri="/native-publish"))
    return server


def _poll_in_thread(url: str, **kwargs: Any) -> tuple[threading.Thread, list[requests.Response]]:
    answers: list[requests.Response] = []
    thread = threading.Thread(target=lambda: answers.append(requests.get(url, timeout=30,
                                                                         **kwargs)))
    thread.start()
    return thread, answers


def test_a_wrapped_middlewares_long_poll_is_parked_with_the_applications_headers(
    manager: LongpollManager,
) -> None:
    app = Stamped(LongpollMiddleware(not_found, manager))
    server = _serve(app)
    try:
        url = f"http://127.0.0.1:{server.port}/events?category=c&timeout=20"
        thread, answers = _poll_in_thread(url)
        wait_until(lambda: manager.waiting_count("c") == 1)
        assert len(app.returned) == 1  # the application returned: the server holds the poll
        event = manager.publish("c", "hello")
        thread.join(30)
    finally:
        server.stop(5)
    answer = answers[0]
    assert answer.status_code == 200
    assert answer.content == b'{"events":[' + event.to_json() + b"]}"
    assert answer.headers["X-App"] == "yes"
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Cache-Control"] == "no-cache, no-store, must-revalidate"
    assert int(answer.headers["Content-Length"]) == len(answer.content)


def test_stop_answers_a_held_poll_of_the_applications_manager(manager: LongpollManager) -> None:
    server = _serve(Stamped(LongpollMiddleware(not_found, manager)))
    url = f"http://127.0.0.1:{server.port}/events?category=c&timeout=60"
    thread, answers = _poll_in_thread(url)
    try:
        wait_until(lambda: manager.waiting_count("c") == 1)
    finally:
        started = time.monotonic()
        server.stop(30)
    thread.join(30)
    assert time.monotonic() - started < 10  # not the poll's 60 s, nor the stop's 30
    assert answers[0].status_code == 200
    assert answers[0].json()["timeout"] == "no events before timeout"


def test_a_held_stream_keeps_the_applications_headers(manager: LongpollManager) -> None:
    server = _serve(Stamped(LongpollMiddleware(not_found, manager)))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            client.sendall(b"GET /events?category=c HTTP/1.1\r\nHost: x\r\n"
                           b"Accept: text/event-stream\r\n\r\n")
            wait_until(lambda: manager.waiting_count("c") == 1)
            event = manager.publish("c", "streamed")
            received = b""
            while event.id.encode() not in received or b"streamed" not in received:
                data = client.recv(65536)
                assert data, f"the stream ended early: {received!r}"
                received += data
    finally:
        server.stop(5)
    head = received.split(b"\r\n\r\n", 1)[0]
    assert b"X-App: yes" in head
    assert b"Content-Type: text/event-stream" in head
    assert b"Transfer-Encoding: chunked" in head


def _holding_app(manager: LongpollManager, status: str) -> Callable[..., Iterable[bytes]]:
    """An application that holds every request on category ``c`` and answers *status*."""
    endpoints: Endpoints[None] = Endpoints(manager)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        result = endpoints.subscribe(RequestParts("GET", "category=c&timeout=20"), None)
        assert isinstance(result, Hold)
        environ[HOLD_KEY](manager, result)
        start_response(status, [*result.headers.items, ("Set-Cookie", "s=1")])
        return [b""]

    return app


def test_the_hold_key_parks_a_request_of_any_application(manager: LongpollManager) -> None:
    server = _serve(_holding_app(manager, "200 OK"))
    try:
        thread, answers = _poll_in_thread(f"http://127.0.0.1:{server.port}/anywhere")
        wait_until(lambda: manager.waiting_count("c") == 1)
        manager.publish("c", 1)
        thread.join(30)
    finally:
        server.stop(5)
    assert answers[0].json()["events"][0]["data"] == 1
    assert answers[0].headers["Set-Cookie"] == "s=1"


def test_an_answer_other_than_200_drops_the_hold(manager: LongpollManager) -> None:
    server = _serve(_holding_app(manager, "401 Unauthorized"))
    try:
        answer = requests.get(f"http://127.0.0.1:{server.port}/anywhere", timeout=10)
        assert answer.status_code == 401
        assert manager.waiting_count() == 0
    finally:
        server.stop(5)


def test_without_the_server_the_middleware_waits_in_its_greenlet(
    manager: LongpollManager,
) -> None:
    """Under another WSGI server (no hold key) the middleware answers the hold itself."""
    from webtest import TestApp

    app = TestApp(LongpollMiddleware(not_found, manager))
    manager.publish("c", "buffered")
    answer = app.get("/events?category=c&timeout=1&since_time=1")
    assert answer.json["events"][0]["data"] == "buffered"


def test_one_fan_out_answers_each_held_poll_with_its_own_headers(
    manager: LongpollManager,
) -> None:
    """Polls whose applications answered with other headers (a session cookie each) share
    the encoded events, not each other's headers."""
    endpoints: Endpoints[None] = Endpoints(manager)
    count = iter(range(1000))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        result = endpoints.subscribe(RequestParts("GET", "category=c&timeout=20"), None)
        assert isinstance(result, Hold)
        environ[HOLD_KEY](manager, result)
        start_response("200 OK", [*result.headers.items, ("Set-Cookie", f"s={next(count)}")])
        return [b""]

    server = _serve(app)
    try:
        polls = [_poll_in_thread(f"http://127.0.0.1:{server.port}/anywhere") for _ in range(3)]
        wait_until(lambda: manager.waiting_count("c") == 3)
        event = manager.publish("c", "shared")
        for thread, _ in polls:
            thread.join(30)
    finally:
        server.stop(5)
    answers = [answers[0] for _, answers in polls]
    assert {answer.content for answer in answers} == {b'{"events":[' + event.to_json() + b"]}"}
    assert sorted(answer.headers["Set-Cookie"] for answer in answers) == ["s=0", "s=1", "s=2"]
