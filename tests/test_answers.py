"""wsgi_longpoll.wsgi.answers: the JSON answers every part of the WSGI layer gives."""

from __future__ import annotations

import logging
from typing import Any

import gevent
import pytest
from webtest import TestApp
from werkzeug.wrappers import Request, Response

from wsgi_longpoll import LongpollManager, LongpollMiddleware, logs
from wsgi_longpoll.wsgi.answers import RateLimitedLog, error_response, not_found, run_hook


def hook_app(hook: Any) -> TestApp:
    def app(environ: Any, start_response: Any) -> Any:
        rejection = run_hook(hook, environ, start_response)
        if rejection is not None:
            return rejection
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"went on"]

    return TestApp(app)


@pytest.mark.parametrize(
    ("verdict", "status", "body"),
    [
        (True, 200, b"went on"),
        (False, 403, b'{"error": "Forbidden: rejected by the server\'s hook."}'),
        (error_response(401, "Who are you?", {"WWW-Authenticate": "Bearer"}), 401,
         b'{"error": "Who are you?"}'),
    ],
    ids=["true-goes-on", "false-is-403", "a-response-is-sent"],
)
def test_a_hook_verdict(verdict: bool | Response, status: int, body: bytes) -> None:
    def hook(request: Request) -> bool | Response:
        return verdict

    response = hook_app(hook).get("/", status=status)
    assert response.body == body
    if status != 200:
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_hook_that_returns_something_else_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="a hook must return True, False or a Response"):
        hook_app(lambda request: "yes").get("/")


def test_not_found_is_json() -> None:
    response = TestApp(not_found).get("/nowhere", status=404)
    assert response.json == {"error": "Not found."}


def test_a_repeated_message_is_logged_once_per_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    log = RateLimitedLog(logging.getLogger("test.flood"), interval=10)
    with caplog.at_level(logging.WARNING, logger="test.flood"):
        for n in range(1000):
            log.log(logging.WARNING, "refused %d", n)
        clock[0] += 10
        log.log(logging.WARNING, "refused %d", 1000)
    assert [record.getMessage() for record in caplog.records] == [
        "refused 0",
        "refused 1000 (and 999 more like it in the last 10 s)",
    ]


def test_refusals_at_capacity_do_not_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 13, item 9: one WARNING line per refusal was 100,000 lines in 20 s."""
    manager = LongpollManager(max_categories=1)
    app = TestApp(LongpollMiddleware(not_found, manager))
    app.post_json("/publish", {"category": "a", "data": 1})
    parked = gevent.spawn(manager.subscribe, "a", 10)  # "a" has a subscriber: kept
    gevent.sleep(0.01)
    with caplog.at_level(logging.WARNING, logger="wsgi_longpoll"):
        for n in range(200):
            app.post_json("/publish", {"category": f"new-{n}", "data": 1}, status=503)
    parked.kill()
    assert len([r for r in caplog.records if "answering 503" in r.getMessage()]) <= 1
