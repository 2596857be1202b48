"""The Flask extension inside a real Flask application: session login, authorization in
the request context, publish from a view, resume, and the middleware's answers byte for byte.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import requests
from flask import Flask, g, request, session
from test_examples import LONG_POLL_SECONDS, WAIT_SECONDS, gevent_server, wait_until
from webtest import TestApp

from wsgi_longpoll import LongpollManager, LongpollMiddleware
from wsgi_longpoll.contrib import _common
from wsgi_longpoll.contrib.flask import LongPoll


def create_app(longpoll: LongPoll, **config: Any) -> Flask:
    """A small application: log in by session, a private channel per user, a notify view."""
    app = Flask(__name__)
    app.config.update(SECRET_KEY="test-only", **config)
    longpoll.init_app(app)

    @app.before_request
    def load_user() -> None:
        g.user = session.get("user")

    @app.post("/login/<name>")
    def login(name: str) -> str:
        session["user"] = name
        return "ok"

    @app.post("/notify/<name>")
    def notify(name: str) -> dict[str, Any]:
        event = longpoll.publish(f"user-{name}", {"text": request.get_json()["text"]})
        return {"id": event.id, "timestamp": event.timestamp}

    @longpoll.authorize_subscribe
    def may_read(category: str) -> bool:
        return g.user is not None and category in (f"user-{g.user}", "public")

    @longpoll.authorize_publish
    def may_publish(category: str) -> bool:
        # The body is still readable in the request context.
        return session.get("user") == "admin" and request.get_json()["category"] == category

    return app


@pytest.fixture
def longpoll() -> LongPoll:
    return LongPoll()


@pytest.fixture
def client(longpoll: LongPoll) -> TestApp:
    return TestApp(create_app(longpoll, LONGPOLL_MAX_LONGPOLL_TIMEOUT_SECONDS=120))


def subscribe(client: TestApp, status: int = 200, **params: Any) -> Any:
    return client.get("/events", {"timeout": 1, **params}, status=status)


def test_config_and_extension_registry(longpoll: LongPoll) -> None:
    app = create_app(longpoll, LONGPOLL_MAX_LONGPOLL_TIMEOUT_SECONDS=7,
                     LONGPOLL_MAX_EVENT_BUFFER_SIZE=3, LONGPOLL_SUBSCRIPTION_PATH="/lp/sub",
                     LONGPOLL_PUBLISH_PATH=None)
    assert app.extensions["longpoll"] is longpoll
    assert longpoll.manager.max_longpoll_timeout_seconds == 7
    assert longpoll.manager.max_event_buffer_size == 3
    with app.test_request_context():
        from flask import url_for
        assert url_for("longpoll.subscribe") == "/lp/sub"
    client = TestApp(app)
    client.post("/login/ann")
    client.get("/lp/sub", {"category": "user-ann", "timeout": 1})
    client.post_json("/publish", {"category": "public", "data": 1}, status=404)
    answer = client.get("/lp/sub", {"category": "user-ann", "timeout": 8}).json
    assert answer == {"error": "Invalid or missing 'timeout' arg.  Must be 1-7."}


def test_factory_gives_each_app_its_own_manager() -> None:
    longpoll = LongPoll()
    first, second = create_app(longpoll), create_app(longpoll)
    with first.app_context():
        first_manager = longpoll.manager
    with second.app_context():
        assert longpoll.manager is not first_manager
    with pytest.raises(RuntimeError, match="application context"):
        _ = longpoll.manager


def test_given_manager_is_used() -> None:
    manager = LongpollManager(max_longpoll_timeout_seconds=33)
    longpoll = LongPoll(manager=manager)
    app = create_app(longpoll)
    assert longpoll.manager is manager
    TestApp(app).post("/login/ann")
    assert LongPoll(Flask("other"), manager).manager is manager


def test_subscribe_authorized_by_session_user(client: TestApp) -> None:
    subscribe(client, 403, category="user-ann")  # not logged in
    client.post("/login/ann")
    assert subscribe(client, category="user-ann").json["timeout"] == "no events before timeout"
    refused = subscribe(client, 403, category="user-bob")
    assert refused.body == b'{"error": "Forbidden: not authorized for this category."}'


def test_every_category_of_categories_is_authorized(client: TestApp) -> None:
    client.post("/login/ann")
    subscribe(client, categories=["user-ann", "public"])
    client.get("/events?timeout=1&categories=user-ann&categories=user-bob", status=403)
    client.get("/events?timeout=1&category=public&categories=user-bob", status=403)
    client.get("/events?timeout=1&category=user-bob&categories=public", status=403)


def test_publish_from_a_view_and_resume(client: TestApp) -> None:
    client.post("/login/ann")
    first = client.post_json("/notify/ann", {"text": "one"}).json
    second = client.post_json("/notify/ann", {"text": "two"}).json
    events = subscribe(client, category="user-ann", since_time=1).json["events"]
    assert [event["data"]["text"] for event in events] == ["one", "two"]
    assert events[0]["id"] == first["id"]
    resumed = subscribe(client, category="user-ann", since_time=first["timestamp"],
                        last_id=first["id"]).json["events"]
    assert [event["id"] for event in resumed] == [second["id"]]


def test_publish_authorized_with_body_in_request_context(client: TestApp) -> None:
    body = {"category": "public", "data": {"x": 1}}
    client.post("/login/ann")
    client.post_json("/publish", body, status=403)
    client.post("/login/admin")
    assert client.post_json("/publish", body).body == b'{"success": true}'
    client.post("/login/ann")
    assert subscribe(client, category="public", since_time=1).json["events"][0]["data"] == {
        "x": 1
    }


def test_authorizer_must_return_a_bool() -> None:
    app = Flask(__name__)
    app.testing = True  # exceptions propagate
    longpoll = LongPoll(app)
    longpoll.authorize_subscribe(lambda category: None)  # type: ignore[arg-type,return-value]
    client = TestApp(app)
    with pytest.raises(TypeError, match="<lambda>.* must return True or False, not None"):
        client.get("/events?category=a&timeout=1")


REQUESTS = [
    ("GET", "/events?category=a&timeout=0", b""),
    ("GET", "/events?timeout=5", b""),
    ("GET", "/events?category=a&timeout=5&since_time=x", b""),
    ("GET", "/events?category=a&timeout=5&since_time=1&last_id=nope", b""),
    ("POST", "/events?category=a&timeout=5", b""),
    ("DELETE", "/events", b""),
    ("OPTIONS", "/events", b""),
    ("GET", "/publish", b""),
    ("POST", "/publish", b"not json"),
    ("POST", "/publish", b'{"category": "", "data": 1}'),
    ("POST", "/publish", b'{"category": "a"}'),
    ("POST", "/publish", b"x" * 2000),
    ("POST", "/publish", b'{"category": "a", "data": [1, 2]}'),
]


@pytest.mark.parametrize(("method", "url", "body"), REQUESTS)
def test_answers_are_the_middleware_s(method: str, url: str, body: bytes) -> None:
    """Status, body and the protocol's headers equal the plain middleware's."""
    app = Flask(__name__)
    app.config.update(LONGPOLL_MAX_BODY_SIZE=1000)
    LongPoll(app, LongpollManager(max_longpoll_timeout_seconds=9))
    plain = LongpollMiddleware(lambda environ, start_response: [],
                               LongpollManager(max_longpoll_timeout_seconds=9),
                               max_body_size=1000)
    answers = []
    for wsgi_app in (app, plain):
        answer = TestApp(wsgi_app).request(url, method=method, body=body, expect_errors=True)
        headers = {name: value for name, value in answer.headerlist if name != "Content-Length"}
        answers.append((answer.status, answer.body, headers))
    assert answers[0] == answers[1]


def test_threaded_server_without_gevent_gets_a_500_that_points_at_the_command(
    client: TestApp,
) -> None:
    threaded = {"wsgi.multithread": True}
    for answer in (
        client.get("/events?category=public&timeout=1", extra_environ=threaded, status=500),
        client.post_json("/publish", {"category": "public", "data": 1}, extra_environ=threaded,
                         status=500),
    ):
        assert "runs each request in a thread" in answer.json["error"]
        assert "run flask longpoll run instead" in answer.json["error"]


def test_warns_once_outside_gevent(client: TestApp, caplog: pytest.LogCaptureFixture,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_common, "_warned", False)
    client.post("/login/ann")
    with caplog.at_level(logging.WARNING, logger="wsgi_longpoll.contrib.flask"):
        subscribe(client, category="user-ann")
        subscribe(client, category="user-ann")
    warnings = [record for record in caplog.records if "gevent" in record.getMessage()]
    assert len(warnings) == 1
    assert "gunicorn -k gevent" in warnings[0].getMessage()


def test_client_script_served() -> None:
    app = Flask(__name__)
    app.config["LONGPOLL_CLIENT_SCRIPT_PATH"] = "/js/longpoll.js"
    LongPoll(app)
    client = TestApp(app)
    assert b"LongpollClient" in client.get("/js/longpoll.js").body
    assert b"WsgiLongpoll" in client.get("/js/longpoll.global.js").body


def test_long_poll_over_gevent_server_woken_by_a_view(longpoll: LongPoll,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(longpoll, LONGPOLL_MAX_LONGPOLL_TIMEOUT_SECONDS=LONG_POLL_SECONDS)
    with gevent_server(app) as url, requests.Session() as ann:
        ann.post(f"{url}/login/ann", timeout=WAIT_SECONDS).raise_for_status()
        result: dict[str, Any] = {}

        def wait() -> None:
            result["answer"] = ann.get(
                f"{url}/events", params={"category": "user-ann", "timeout": LONG_POLL_SECONDS},
                timeout=WAIT_SECONDS + LONG_POLL_SECONDS,
            )

        waiter = threading.Thread(target=wait)
        with caplog.at_level(logging.WARNING, logger="wsgi_longpoll.contrib.flask"):
            waiter.start()
            wait_until(lambda: longpoll.manager.waiting_count("user-ann") == 1,
                       "the long poll to wait")
        assert not [r for r in caplog.records if "gevent greenlet" in r.getMessage()]
        requests.post(f"{url}/notify/ann", json={"text": "hi"},
                      timeout=WAIT_SECONDS).raise_for_status()
        waiter.join(WAIT_SECONDS)
        assert not waiter.is_alive()
        answer = result["answer"]
        assert answer.status_code == 200
        assert [event["data"] for event in answer.json()["events"]] == [{"text": "hi"}]
        assert answer.headers["Cache-Control"] == "no-cache, no-store, must-revalidate"
        # Another user's session is refused over the real server too.
        with requests.Session() as bob:
            bob.post(f"{url}/login/bob", timeout=WAIT_SECONDS)
            refused = bob.get(f"{url}/events", params={"category": "user-ann", "timeout": 1},
                              timeout=WAIT_SECONDS)
            assert refused.status_code == 403


def test_flask_login_current_user_in_the_callbacks() -> None:
    """Flask-Login's ``current_user`` is the logged-in user in both callbacks."""
    from flask_login import LoginManager, UserMixin, current_user, login_user

    class User(UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    app = Flask(__name__)
    app.config["SECRET_KEY"] = "test-only"
    login_manager = LoginManager(app)
    login_manager.user_loader(User)
    longpoll = LongPoll(app)

    @longpoll.authorize_subscribe
    def own_channel(category: str) -> bool:
        return bool(current_user.is_authenticated) and category == f"user-{current_user.id}"

    @longpoll.authorize_publish
    def only_to_self(category: str) -> bool:
        return bool(current_user.is_authenticated) and category == f"user-{current_user.id}"

    @app.post("/login/<user_id>")
    def login(user_id: str) -> str:
        login_user(User(user_id))
        return "ok"

    client = TestApp(app)
    client.get("/events?category=user-7&timeout=1", status=403)
    client.post("/login/7")
    client.post_json("/publish", {"category": "user-7", "data": "to myself"})
    client.post_json("/publish", {"category": "user-8", "data": "no"}, status=403)
    events = client.get("/events?category=user-7&timeout=1&since_time=1").json["events"]
    assert [event["data"] for event in events] == ["to myself"]
    client.get("/events?category=user-8&timeout=1", status=403)


def test_event_stream_is_streamed_and_authorized(client: TestApp) -> None:
    """A Server-Sent Events subscribe is the middleware's stream, passed on as it comes."""
    client.post("/login/ann")
    client.post_json("/notify/ann", {"text": "one"})
    headers = {"Accept": "text/event-stream"}
    client.get("/events?category=user-bob&timeout=1", headers=headers, status=403)
    flask_client = client.app.test_client()
    with flask_client.session_transaction() as session_:
        session_["user"] = "ann"
    answer = flask_client.get("/events?category=user-ann&timeout=1&since_time=1",
                              headers=headers, buffered=False)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    assert answer.is_streamed
    first = next(iter(answer.response))
    assert b'"text":"one"' in first
    answer.close()


def test_unknown_keys_are_refused_with_the_closest_known_one(longpoll: LongPoll) -> None:
    with pytest.raises(ValueError, match=r"unknown keys: LONGPOLL_MAX_TIMEOUT_SECONDS "
                       r"\(did you mean LONGPOLL_MAX_LONGPOLL_TIMEOUT_SECONDS\?\)"):
        create_app(longpoll, LONGPOLL_MAX_TIMEOUT_SECONDS=30)


def test_numbers_given_as_strings_are_converted(longpoll: LongPoll) -> None:
    """As read from the environment: ``os.environ["LONGPOLL_..."]`` is a string."""
    app = create_app(longpoll, LONGPOLL_MAX_LONGPOLL_TIMEOUT_SECONDS="7",
                     LONGPOLL_MAX_EVENT_BUFFER_SIZE="3", LONGPOLL_EVENT_TIME_TO_LIVE_SECONDS="0",
                     LONGPOLL_MAX_MEMORY_BYTES="1000000")
    manager = longpoll.manager
    assert (manager.max_longpoll_timeout_seconds, manager.max_event_buffer_size,
            manager.event_time_to_live_seconds, manager.max_memory_bytes) == (7, 3, None, 1000000)
    client = TestApp(app)
    client.post("/login/ann")
    refused = client.get("/events", {"category": "user-ann", "timeout": 8})
    assert refused.json == {"error": "Invalid or missing 'timeout' arg.  Must be 1-7."}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"LONGPOLL_MAX_LONGPOLL_TIMEOUT_SECONDS": "soon"},
         "LONGPOLL_MAX_LONGPOLL_TIMEOUT_SECONDS must be an integer, not 'soon'"),
        ({"LONGPOLL_MAX_BODY_SIZE": 0}, "LONGPOLL_MAX_BODY_SIZE must be at least 1, not 0"),
        ({"LONGPOLL_REDIS_URL": "http://127.0.0.1:6379/0"},
         "LONGPOLL_REDIS_URL must be a redis://, rediss://, unix:// or redis\\+sentinel:// "
         "URL"),
        ({"LONGPOLL_CORS_ORIGINS": "*", "LONGPOLL_CORS_ALLOW_CREDENTIALS": "true"},
         "cors_allow_credentials needs a list of origins"),
    ],
    ids=["string-not-a-number", "out-of-range", "http-redis-url", "star-with-credentials"],
)
def test_bad_values_are_refused_at_init_app_by_key(
    longpoll: LongPoll, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        create_app(longpoll, **config)


def test_stream_options_reach_the_stream(longpoll: LongPoll) -> None:
    app = create_app(longpoll, LONGPOLL_SSE_RETRY_MS="500")
    flask_client = app.test_client()
    with flask_client.session_transaction() as session_:
        session_["user"] = "ann"
    answer = flask_client.get("/events?category=user-ann&timeout=1",
                              headers={"Accept": "text/event-stream"}, buffered=False)
    assert answer.status_code == 200
    assert next(iter(answer.response)).startswith(b"retry: 500\n")
    answer.close()


def test_cors_options_let_another_origin_subscribe_and_publish(longpoll: LongPoll) -> None:
    origin = "https://app.example.com"
    app = create_app(longpoll, LONGPOLL_CORS_ORIGINS=origin)
    client = TestApp(app)
    preflight = client.options("/publish", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, idempotency-key"})
    assert preflight.status_int == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    assert preflight.headers["Access-Control-Allow-Headers"] == "content-type, idempotency-key"
    client.post("/login/ann")
    answer = client.get("/events", {"category": "user-ann", "timeout": 1},
                        headers={"Origin": origin})
    assert answer.headers["Access-Control-Allow-Origin"] == origin
    other = client.options("/events", headers={
        "Origin": "https://evil.example.net", "Access-Control-Request-Method": "GET"},
        status=403)
    assert "Access-Control-Allow-Origin" not in other.headers
