"""Issue 13, hostile input: hooks not bypassable, per-category authorization, HEAD, NUL paths,
huge integers, several processes with the in-memory engine."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from webtest import TestApp
from werkzeug.wrappers import Request

from wsgi_longpoll import LongpollManager, LongpollMiddleware, Server, ServerInfo
from wsgi_longpoll.wsgi.demo import DemoApp

#: The longest any test waits on a socket.
WAIT_SECONDS = 10


def inner_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"inner"]


def public_only(request: Request) -> bool:
    """A subscribe hook written from the seed's documentation."""
    return request.args.get("category") == "public"


def make_app(manager: LongpollManager | None = None, **options: Any) -> TestApp:
    options.setdefault("max_categories_per_request", 4)
    return TestApp(LongpollMiddleware(inner_app, manager or LongpollManager(30), **options))


# -- 7. hooks cannot be bypassed ---------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "category=public&categories=private",
        "categories=private&category=public",
        "category=public&categories=public&categories=private",
        "categories=private",
        "categories=public&categories=private",
    ],
)
def test_the_categories_extension_does_not_bypass_a_subscribe_hook(query: str) -> None:
    manager = LongpollManager(30)
    manager.publish("private", "secret")
    app = make_app(manager, before_subscription=public_only)
    answer = app.get(f"/events?timeout=1&since_time=1&{query}", status=403)
    assert "secret" not in answer.text
    assert answer.json == {"error": "Forbidden: rejected by the server's hook."}


def test_a_hook_sees_each_category_alone_with_the_other_parameters() -> None:
    seen: list[tuple[str | None, list[str], str | None]] = []

    def record(request: Request) -> bool:
        seen.append((request.args.get("category"), request.args.getlist("categories"),
                     request.args.get("timeout")))
        return True

    manager = LongpollManager(30)
    manager.publish("b", "for b")
    app = make_app(manager, before_subscription=record)
    answer = app.get("/events?timeout=1&since_time=1&category=a&categories=b&categories=c%20d")
    assert answer.json["events"][0]["data"] == "for b"
    assert seen == [("a", [], "1"), ("b", [], "1"), ("c d", [], "1")]


def test_golongpoll_requests_reach_the_hook_unchanged() -> None:
    seen: list[str] = []

    def record(request: Request) -> bool:
        seen.append(request.environ["QUERY_STRING"])
        return True

    manager = LongpollManager(30)
    manager.publish("public", 1)
    make_app(manager, before_subscription=record).get(
        "/events?timeout=1&category=public&since_time=1"
    )
    assert seen == ["timeout=1&category=public&since_time=1"]


def test_authorize_subscribe_is_called_for_every_category() -> None:
    asked: list[str] = []

    def authorize(request: Request, category: str) -> bool:
        asked.append(category)
        return category != "private" or request.headers.get("X-User") == "admin"

    manager = LongpollManager(30)
    manager.publish("private", "secret")
    app = make_app(manager, authorize_subscribe=authorize)
    answer = app.get("/events?timeout=1&since_time=1&category=public&categories=private",
                     status=403)
    assert answer.json == {"error": "Forbidden: not authorized for this category."}
    assert asked == ["public", "private"]
    answer = app.get("/events?timeout=1&since_time=1&category=public&categories=private",
                     headers={"X-User": "admin"})
    assert answer.json["events"][0]["data"] == "secret"


def test_authorize_publish_is_called_with_the_category() -> None:
    manager = LongpollManager(30)
    app = make_app(manager, authorize_publish=lambda request, category: category == "open")
    app.post_json("/publish", {"category": "open", "data": 1})
    answer = app.post_json("/publish", {"category": "closed", "data": 2}, status=403)
    assert answer.json == {"error": "Forbidden: not authorized for this category."}
    assert manager.buffered_events("closed") == []
    assert [e.data for e in manager.buffered_events("open")] == [1]


# -- 11. HEAD, NUL in static paths, huge integers ----------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [("/events?timeout=1&category=a", 405), ("/publish", 405)],
)
def test_head_on_the_long_poll_paths_has_no_body(path: str, status: int) -> None:
    answer = make_app().head(path, status=status)
    assert answer.body == b""
    assert answer.headers["Content-Type"] == "application/json"
    assert int(answer.headers["Content-Length"]) > 0  # what GET would have had


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server(app=DemoApp(), access_log=False)
    running.start(ServerInfo(address="127.0.0.1:0"))
    yield running
    running.stop(5)


def exchange(port: int, request: bytes) -> bytes:
    """Send *request* (maybe several, pipelined) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_head_through_the_server_sends_no_body_on_a_kept_alive_connection(
    server: Server,
) -> None:
    answer = exchange(
        server.port,
        b"HEAD /publish HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405")
    assert rest.startswith(b"HTTP/1.1 405")  # the next answer follows the headers at once


def test_a_nul_in_a_static_path_is_404_without_a_traceback(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        answer = exchange(
            server.port,
            b"GET /static/longpoll.js%00.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    assert answer.startswith(b"HTTP/1.1 404")
    assert "Traceback" not in caplog.text


def test_integers_beyond_a_double_are_refused() -> None:
    manager = LongpollManager(30)
    app = make_app(manager)
    for digits in ("9" * 309, "9" * 4000, "-" + "9" * 4000):
        answer = app.post(
            "/publish", f'{{"category": "a", "data": {digits}}}',
            content_type="application/json", status=400,
        )
        assert answer.json == {"error": "Invalid POST body json."}
    largest = 2**1023  # within a double's range: kept exact
    app.post("/publish", f'{{"category": "a", "data": {largest}}}',
             content_type="application/json")
    assert [e.data for e in manager.buffered_events("a")] == [largest]


# -- 12. several processes and the in-memory engine --------------------------------------


@pytest.mark.parametrize("path", ["/events?timeout=1&category=a", "/publish"])
def test_several_processes_with_the_in_memory_engine_are_refused_with_500(
    caplog: pytest.LogCaptureFixture, path: str
) -> None:
    app = make_app()
    with caplog.at_level(logging.WARNING, logger="wsgi_longpoll"):
        environ = {"wsgi.multiprocess": True}
        answers = [app.get(path, extra_environ=environ, status=500) if "events" in path
                   else app.post_json(path, {"category": "a", "data": 1},
                                      extra_environ=environ, status=500)
                   for _ in range(3)]
    for answer in answers:  # every one, not only the first
        assert answer.status_int == 500
        error = answer.json["error"]
        assert "(wsgi.multiprocess) runs several processes" in error
        assert "redis_url" in error and "WSGI_LONGPOLL_ALLOW_MEMORY_MULTIPROCESS=1" in error
    refusals = [r for r in caplog.records if "several processes" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
    assert app.get("/other", extra_environ={"wsgi.multiprocess": True}).text == "inner"


def test_under_gunicorn_the_refusal_reaches_gunicorns_error_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app()
    with caplog.at_level(logging.ERROR, logger="gunicorn.error"):
        app.get("/events?timeout=1&category=a", status=500, extra_environ={
            "wsgi.multiprocess": True, "SERVER_SOFTWARE": "gunicorn/23.0.0"})
    logged = [r for r in caplog.records if r.name == "gunicorn.error"]
    assert len(logged) == 1
    assert logged[0].getMessage().startswith("gunicorn/23.0.0 (wsgi.multiprocess) runs several")


def test_several_processes_allowed_by_the_variable_serve_and_warn_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WSGI_LONGPOLL_ALLOW_MEMORY_MULTIPROCESS", "1")
    app = make_app()
    with caplog.at_level(logging.WARNING, logger="wsgi_longpoll"):
        for _ in range(3):
            answer = app.get("/events?timeout=1&category=a&since_time=1",
                             extra_environ={"wsgi.multiprocess": True})
            assert answer.json["timeout"] == "no events before timeout"
    warnings = [r for r in caplog.records if "several processes" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "docs/scaling.md" in warnings[0].getMessage()


def test_one_process_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()
    with caplog.at_level(logging.WARNING, logger="wsgi_longpoll"):
        app.get("/events?timeout=1&category=a&since_time=1",
                extra_environ={"wsgi.multiprocess": False})
    assert not [r for r in caplog.records if "several processes" in r.getMessage()]


def test_a_shared_engine_serves_several_processes(caplog: pytest.LogCaptureFixture) -> None:
    manager = LongpollManager(30)
    manager.engine = object()  # type: ignore[assignment]  # not a MemoryEngine: shared
    middleware = LongpollMiddleware(inner_app, manager)
    with caplog.at_level(logging.WARNING, logger="wsgi_longpoll"):
        assert middleware._check_multiprocess({"wsgi.multiprocess": True}) is None
    assert not caplog.records
