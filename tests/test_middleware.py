"""LongpollMiddleware over WebTest: routing, limits, hooks, what only the middleware does.

The protocol's answers, on every adapter, are in test_protocol_suite.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from webtest import TestApp
from werkzeug.wrappers import Request, Response

from wsgi_longpoll import LongpollManager, LongpollMiddleware
from wsgi_longpoll.protocol import IDEMPOTENCY_KEY_ERROR

SUBSCRIBE_HEADERS = {
    "Content-Type": "application/json",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
    "Expires": "0",
}


def inner_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"inner " + environ["PATH_INFO"].encode()]


def make_app(manager: LongpollManager | None = None, **options: Any) -> TestApp:
    manager = manager or LongpollManager(30)
    return TestApp(LongpollMiddleware(inner_app, manager, **options))


def assert_headers(response: Any, expected: dict[str, str]) -> None:
    for name, value in expected.items():
        assert response.headers[name] == value, name


@pytest.fixture
def app() -> TestApp:
    return make_app()


def test_other_paths_reach_the_wrapped_app(app: TestApp) -> None:
    assert app.get("/").text == "inner /"
    assert app.post("/events/more").text == "inner /events/more"
    assert app.get("/publishx").text == "inner /publishx"


def test_default_body_limit_is_one_mebibyte(app: TestApp) -> None:
    padding = "x" * (1024 * 1024)
    app.post("/publish", json.dumps({"category": "c", "data": padding}), status=413)


def test_chunked_body_over_the_limit_is_413() -> None:
    app = make_app(max_body_size=10)
    environ_extra = {"wsgi.input_terminated": True}
    body = b'{"category": "c", "data": "0123456789"}'
    response = app.post("/publish", body, extra_environ=environ_extra,
                        headers={"Content-Length": ""}, status=413)
    assert response.json["error"].startswith("Request body too large")


def test_paths_are_configurable_and_can_be_turned_off() -> None:
    app = make_app(subscription_path="/sub", publish_path=None)
    assert app.post("/publish", b"{}").text == "inner /publish"
    app.get("/sub?timeout=1&category=c")  # answered by the middleware: JSON
    with pytest.raises(ValueError, match="differ"):
        LongpollMiddleware(inner_app, LongpollManager(), "/x", "/x")


# -- hooks ------------------------------------------------------------------------------


@pytest.mark.parametrize("hook_option", ["before_subscription", "before_publish"])
def test_a_hook_returning_false_rejects_with_403(hook_option: str) -> None:
    manager = LongpollManager()
    app = make_app(manager, **{hook_option: lambda request: False})
    if hook_option == "before_subscription":
        response = app.get("/events?timeout=1&category=c", status=403)
        assert_headers(response, SUBSCRIBE_HEADERS)
    else:
        response = app.post("/publish", b'{"category": "c", "data": 1}', status=403)
        assert manager.buffered_events("c") == []
    assert response.json["error"].startswith("Forbidden")


def test_a_hook_response_is_sent_as_is() -> None:
    def require_auth(request: Request) -> bool | Response:
        if request.authorization is None:
            return Response("who are you?", 401, {"WWW-Authenticate": 'Basic realm="x"'})
        return True

    app = make_app(before_subscription=require_auth)
    response = app.get("/events?timeout=1&category=c", status=401)
    assert response.headers["WWW-Authenticate"] == 'Basic realm="x"'
    assert response.text == "who are you?"
    app.authorization = ("Basic", ("user", "pass"))
    assert "timeout" in app.get("/events?timeout=1&category=c").json


def test_the_publish_handler_sees_a_body_the_hook_read() -> None:
    seen: list[bytes] = []

    def check_signature(request: Request) -> bool:
        seen.append(request.get_data())
        return b"signed" in seen[-1]

    manager = LongpollManager()
    app = make_app(manager, before_publish=check_signature)
    app.post("/publish", b'{"category": "c", "data": "signed"}')
    app.post("/publish", b'{"category": "c", "data": "forged"}', status=403)
    assert seen == [b'{"category": "c", "data": "signed"}', b'{"category": "c", "data": "forged"}']
    assert [event.data for event in manager.buffered_events("c")] == ["signed"]


def test_a_hook_reading_the_raw_stream_leaves_the_body_for_publish() -> None:
    def read_stream(request: Request) -> bool:
        request.stream.read()
        return True

    manager = LongpollManager()
    make_app(manager, before_publish=read_stream).post("/publish", b'{"category": "c", "data": 1}')
    assert [event.data for event in manager.buffered_events("c")] == [1]


def test_a_hook_returning_something_else_is_a_programming_error() -> None:
    app = make_app(before_publish=lambda request: "yes")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="True, False or a Response"):
        app.post("/publish", b'{"category": "c", "data": 1}')


# -- servers the middleware cannot work under ------------------------------------------


def test_a_threaded_server_without_gevent_gets_a_clear_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app()
    response = app.get(
        "/events?timeout=1&category=c", extra_environ={"wsgi.multithread": True}, status=500
    )
    assert "gevent" in response.json["error"]
    assert "multi-threaded" in caplog.text
    assert app.get("/other", extra_environ={"wsgi.multithread": True}).text == "inner /other"


def test_publish_after_the_manager_closed_is_503() -> None:
    manager = LongpollManager()
    manager.close()
    response = make_app(manager).post("/publish", b'{"category": "c", "data": 1}', status=503)
    assert "shutting down" in response.json["error"]


def test_an_idempotency_key_makes_a_retried_publish_safe() -> None:
    manager = LongpollManager()
    app = make_app(manager)
    for _ in range(3):
        response = app.post("/publish", b'{"category": "c", "data": 1}',
                            headers={"Idempotency-Key": "k-1"})
        assert response.body == b'{"success": true}'
    assert len(manager.buffered_events("c")) == 1
    app.post("/publish", b'{"category": "c", "data": 1}', headers={"Idempotency-Key": "k-2"})
    assert len(manager.buffered_events("c")) == 2


@pytest.mark.parametrize("key", ["", "x" * 256, "with space", "caf\u00e9"])
def test_an_invalid_idempotency_key_is_refused(key: str) -> None:
    manager = LongpollManager()
    response = make_app(manager).post(
        "/publish", b'{"category": "c", "data": 1}', headers={"Idempotency-Key": key},
        status=400,
    )
    assert response.json == {"error": IDEMPOTENCY_KEY_ERROR}
    assert manager.buffered_events("c") == []


def test_capacity_limits_answer_503_with_retry_after() -> None:
    manager = LongpollManager(max_categories=1, max_waiting_subscribers=1)
    app = make_app(manager)
    app.post("/publish", b'{"category": "a", "data": 1}')
    import gevent

    parked = gevent.spawn(manager.subscribe, "a", 10)
    gevent.sleep(0.01)
    response = app.post("/publish", b'{"category": "b", "data": 1}', status=503)
    assert response.headers["Retry-After"] == "1"
    assert "max_categories" in response.json["error"]  # "a" has a subscriber: kept
    assert manager.buffered_events("b") == []
    response = app.get("/events?timeout=5&category=a", status=503)
    assert response.headers["Retry-After"] == "1"
    assert_headers(response, SUBSCRIBE_HEADERS)
    assert "max_waiting_subscribers" in response.json["error"]
    parked.kill()
