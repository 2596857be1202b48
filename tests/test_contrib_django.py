"""The Django app inside a real Django project: auth with test users and the session
middleware, authorization hooks given ``request.user``, publish from a view (on commit),
resume, CSRF on the publish view, the system check, and a long poll over gevent.

Django's settings are process-wide: this module configures them once, for itself (its
own URLconf is this module), with Django's logging set-up turned off so that other tests'
logging is left alone.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import django
import pytest
import requests
from django.conf import settings
from test_examples import LONG_POLL_SECONDS, WAIT_SECONDS, gevent_server, wait_until

from wsgi_longpoll import LongpollManager, LongpollMiddleware
from wsgi_longpoll.contrib import _common

#: The project's long-poll settings; each test may override them.
LONGPOLL = {
    "MAX_LONGPOLL_TIMEOUT_SECONDS": LONG_POLL_SECONDS,
    "CAN_READ_CATEGORY": "test_contrib_django.can_read_category",
    "CAN_PUBLISH": "test_contrib_django.can_publish",
}


def can_read_category(user: Any, category: str) -> bool:
    """A private channel per user, and a public one for those logged in."""
    return bool(user.is_authenticated) and category in (f"user-{user.username}", "public")


def can_publish(user: Any, category: str) -> bool:
    """Staff publish anywhere; anyone, an API client without a session too, to ``open``."""
    return bool(user.is_staff) or category == "open"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if not settings.configured:
        database = tmp_path_factory.mktemp("django") / "db.sqlite3"
        settings.configure(
            DEBUG=False,
            SECRET_KEY="test-only",
            ALLOWED_HOSTS=["127.0.0.1", "testserver"],
            INSTALLED_APPS=[
                "django.contrib.auth",
                "django.contrib.contenttypes",
                "django.contrib.sessions",
                "wsgi_longpoll.contrib.django",
            ],
            MIDDLEWARE=[
                "django.contrib.sessions.middleware.SessionMiddleware",
                "django.middleware.common.CommonMiddleware",
                "django.middleware.csrf.CsrfViewMiddleware",
                "django.contrib.auth.middleware.AuthenticationMiddleware",
            ],
            ROOT_URLCONF="test_contrib_django",
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                                   "NAME": str(database)}},
            DEFAULT_AUTO_FIELD="django.db.models.AutoField",
            PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
            LOGGING_CONFIG=None,
            USE_TZ=True,
            LONGPOLL=LONGPOLL,
        )
        django.setup()
        from django.contrib.auth.models import User
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        User.objects.create_user("ann", password="pw")
        User.objects.create_user("bob", password="pw")
        User.objects.create_user("admin", password="pw", is_staff=True)
    yield


def _urlpatterns() -> list[Any]:
    from django.contrib.auth import authenticate, login
    from django.db import transaction
    from django.http import HttpRequest, HttpResponse, JsonResponse
    from django.urls import include, path
    from django.views.decorators.csrf import csrf_exempt

    from wsgi_longpoll.contrib.django import publish

    @csrf_exempt
    def login_view(request: HttpRequest, name: str) -> HttpResponse:
        login(request, authenticate(request, username=name, password="pw"))
        return HttpResponse("ok")

    def notify(request: HttpRequest, name: str) -> JsonResponse:
        """Publish to a user's channel once the transaction commits."""
        published: list[Any] = []
        with transaction.atomic():
            transaction.on_commit(
                lambda: published.append(publish(f"user-{name}", {"text": request.GET["text"]}))
            )
            assert not published  # not before the commit
        return JsonResponse({"id": published[0].id, "timestamp": published[0].timestamp})

    return [
        path("login/<str:name>", login_view),
        path("notify/<str:name>", notify),
        path("longpoll/", include("wsgi_longpoll.contrib.django.urls")),
    ]


def __getattr__(name: str) -> Any:  # the URLconf, built once Django is set up
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)


def client(user: str | None = None, **options: Any) -> Any:
    from django.test import Client

    test_client = Client(**options)
    if user is not None:
        from django.contrib.auth.models import User

        test_client.force_login(User.objects.get(username=user))
    return test_client


def subscribe(test_client: Any, query: str) -> Any:
    return test_client.get(f"/longpoll/events?timeout=1&{query}")


def test_the_test_client_is_not_taken_for_several_processes(project: None) -> None:
    """Django's test client says ``wsgi.multiprocess`` in every environ; the views run in
    this process all the same, and the in-memory manager must not refuse them."""
    test_client = client("ann")
    assert test_client.get("/longpoll/events").wsgi_request.META["wsgi.multiprocess"]
    answer = subscribe(test_client, "category=user-ann")
    assert answer.status_code == 200 and "timeout" in answer.json()


def test_subscribe_authorized_by_logged_in_user(project: None) -> None:
    assert subscribe(client(), "category=user-ann").status_code == 403
    ann = client("ann")
    answer = subscribe(ann, "category=user-ann")
    assert answer.status_code == 200
    assert answer.json()["timeout"] == "no events before timeout"
    refused = subscribe(ann, "category=user-bob")
    assert refused.status_code == 403
    assert refused.content == b'{"error": "Forbidden: not authorized for this category."}'


def test_every_category_of_categories_is_asked(project: None) -> None:
    ann = client("ann")
    assert subscribe(ann, "categories=user-ann&categories=public").status_code == 200
    assert subscribe(ann, "categories=user-ann&categories=user-bob").status_code == 403
    assert subscribe(ann, "category=public&categories=user-bob").status_code == 403


def test_publish_from_a_view_on_commit_and_resume(project: None) -> None:
    ann = client("ann")
    first = ann.get("/notify/ann?text=one").json()
    second = ann.get("/notify/ann?text=two").json()
    events = subscribe(ann, "category=user-ann&since_time=1").json()["events"]
    assert [event["data"]["text"] for event in events][-2:] == ["one", "two"]
    resumed = subscribe(
        ann, f"category=user-ann&since_time={first['timestamp']}&last_id={first['id']}"
    ).json()["events"]
    assert [event["id"] for event in resumed] == [second["id"]]


def test_publish_endpoint_asks_can_publish(project: None) -> None:
    body = {"category": "public", "data": {"x": 1}}
    api = client()  # an API client: no session cookie, so no CSRF token needed
    assert api.post("/longpoll/publish", body, content_type="application/json"
                    ).status_code == 403
    answer = api.post("/longpoll/publish", {"category": "open", "data": 1},
                      content_type="application/json")
    assert (answer.status_code, answer.content) == (200, b'{"success": true}')
    admin = client("admin")
    assert admin.post("/longpoll/publish", body, content_type="application/json"
                      ).status_code == 200
    events = subscribe(client("ann"), "category=public&since_time=1").json()["events"]
    assert events[-1]["data"] == {"x": 1}


def test_publish_with_session_cookie_checks_csrf(project: None) -> None:
    from django.middleware.csrf import get_token
    from django.test import RequestFactory

    admin = client("admin", enforce_csrf_checks=True)
    body = {"category": "public", "data": 1}
    refused = admin.post("/longpoll/publish", body, content_type="application/json")
    assert refused.status_code == 403
    assert refused.json()["error"].startswith("CSRF Failed: CSRF cookie not set")
    token = get_token(RequestFactory().get("/"))
    admin.cookies[settings.CSRF_COOKIE_NAME] = token
    accepted = admin.post("/longpoll/publish", body, content_type="application/json",
                          headers={"X-CSRFToken": token})
    assert accepted.status_code == 200


def test_publish_refused_to_everyone_by_default(project: None) -> None:
    from django.test import override_settings

    with override_settings(LONGPOLL={}):
        answer = client("admin").post("/longpoll/publish", {"category": "open", "data": 1},
                                      content_type="application/json")
        assert answer.status_code == 403
        assert subscribe(client(), "category=anything").status_code == 200  # reads: open


def test_override_settings_builds_a_new_manager(project: None) -> None:
    from django.test import override_settings

    from wsgi_longpoll.contrib.django import get_manager

    before = get_manager()
    with override_settings(LONGPOLL={**LONGPOLL, "MAX_LONGPOLL_TIMEOUT_SECONDS": 5}):
        assert get_manager().max_longpoll_timeout_seconds == 5
        assert client("ann").get("/longpoll/events?category=user-ann&timeout=6").json() == {
            "error": "Invalid or missing 'timeout' arg.  Must be 1-5."
        }
    assert get_manager() is not before  # rebuilt from the restored settings
    manager = LongpollManager()
    with override_settings(LONGPOLL={"MANAGER": manager}):
        assert get_manager() is manager


REQUESTS = [
    ("get", "/events?category=a&timeout=0", b""),
    ("get", "/events?timeout=5", b""),
    ("get", "/events?category=a&timeout=5&since_time=x", b""),
    ("get", "/events?category=a&timeout=5&since_time=1&last_id=nope", b""),
    ("post", "/events?category=a&timeout=5", b""),
    ("delete", "/events", b""),
    ("get", "/publish", b""),
    ("post", "/publish", b"not json"),
    ("post", "/publish", b'{"category": "", "data": 1}'),
    ("post", "/publish", b'{"category": "a"}'),
    ("post", "/publish", b"x" * 2000),
]


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS)
def test_answers_are_the_middleware_s(project: None, method: str, path: str,
                                      body: bytes) -> None:
    from django.test import override_settings
    from webtest import TestApp

    plain = LongpollMiddleware(lambda environ, start_response: [],
                               LongpollManager(max_longpoll_timeout_seconds=9),
                               max_body_size=1000)
    expected = TestApp(plain).request(path, method=method.upper(), body=body,
                                      expect_errors=True)
    options = {"MAX_LONGPOLL_TIMEOUT_SECONDS": 9, "MAX_BODY_SIZE": 1000,
               "CAN_PUBLISH": "test_contrib_django.can_publish"}
    with override_settings(LONGPOLL=options):
        answer = getattr(client(), method)(f"/longpoll{path}", data=body,
                                           content_type="application/json")
    assert (answer.status_code, answer.content) == (expected.status_int, expected.body)
    assert answer.reason_phrase == expected.status.split(" ", 1)[1]
    for name, value in expected.headerlist:
        if name != "Content-Length":
            assert answer[name] == value


def test_system_check_warns_under_runserver(project: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.checks import run_checks
    from django.test import override_settings

    assert not [m for m in run_checks() if m.id.startswith("wsgi_longpoll")]
    monkeypatch.setattr(sys, "argv", ["manage.py", "runserver"])
    warning, = [m for m in run_checks() if m.id == "wsgi_longpoll.W001"]
    assert "python manage.py runlongpoll" in warning.msg
    monkeypatch.setattr(sys, "argv", ["manage.py", "check"])
    with override_settings(LONGPOLL={"MAX_TIMEOUT": 3}):
        error, = [m for m in run_checks() if m.id == "wsgi_longpoll.E001"]
        assert "unknown keys: MAX_TIMEOUT" in error.msg


def test_threaded_runserver_gets_a_500_that_points_at_runlongpoll(project: None) -> None:
    ann = client("ann")
    for answer in (
        ann.get("/longpoll/events?category=user-ann&timeout=1", **{"wsgi.multithread": True}),
        ann.post("/longpoll/publish", {"category": "open", "data": 1},
                 content_type="application/json", **{"wsgi.multithread": True}),
    ):
        assert answer.status_code == 500
        error = answer.json()["error"]
        assert "runs each request in a thread" in error
        assert "run python manage.py runlongpoll instead" in error


def test_long_poll_over_gevent_server(project: None, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    from django.core.handlers.wsgi import WSGIHandler

    from wsgi_longpoll.contrib.django import get_manager

    monkeypatch.setattr(_common, "_warned", False)
    with gevent_server(WSGIHandler()) as url, requests.Session() as ann:
        ann.post(f"{url}/login/ann", timeout=WAIT_SECONDS).raise_for_status()
        result: dict[str, Any] = {}

        def wait() -> None:
            result["answer"] = ann.get(
                f"{url}/longpoll/events",
                params={"category": "user-ann", "timeout": LONG_POLL_SECONDS},
                timeout=WAIT_SECONDS + LONG_POLL_SECONDS,
            )

        waiter = threading.Thread(target=wait)
        waiter.start()
        wait_until(lambda: get_manager().waiting_count("user-ann") == 1, "the long poll")
        requests.get(f"{url}/notify/ann", params={"text": "hi"},
                     timeout=WAIT_SECONDS).raise_for_status()
        waiter.join(WAIT_SECONDS)
        assert not waiter.is_alive()
        answer = result["answer"]
        assert answer.status_code == 200
        assert [event["data"] for event in answer.json()["events"]] == [{"text": "hi"}]
        bob = requests.Session()
        bob.post(f"{url}/login/bob", timeout=WAIT_SECONDS)
        refused = bob.get(f"{url}/longpoll/events", params={"category": "user-ann",
                                                            "timeout": 1},
                          timeout=WAIT_SECONDS)
        assert refused.status_code == 403
        bob.close()
    assert not _common._warned  # served in gevent greenlets: no warning



def test_event_stream_is_streamed_and_authorized(project: None) -> None:
    ann = client("ann")
    ann.get("/notify/ann?text=streamed")
    accept = {"HTTP_ACCEPT": "text/event-stream"}
    assert ann.get("/longpoll/events?category=user-bob&timeout=1", **accept).status_code == 403
    answer = ann.get("/longpoll/events?category=user-ann&timeout=1&since_time=1", **accept)
    assert answer.status_code == 200 and answer.streaming
    assert answer["Content-Type"].startswith("text/event-stream")
    first = next(iter(answer.streaming_content))
    assert b'"text":"streamed"' in first
    answer.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"MAX_LONGPOLL_TIMEOUT_SECONDS": "soon"},
         "LONGPOLL['MAX_LONGPOLL_TIMEOUT_SECONDS'] must be an integer, not 'soon'"),
        ({"REDIS_URL": "http://127.0.0.1:6379/0"},
         "LONGPOLL['REDIS_URL'] must be a redis://, rediss://, unix:// or redis+sentinel:// "
         "URL"),
        ({"MAX_BODY_SIZE": 0}, "LONGPOLL['MAX_BODY_SIZE'] must be at least 1, not 0"),
        ({"CORS_ORIGINS": ["app.example.com"]},
         "LONGPOLL['CORS_ORIGINS'] has an invalid origin 'app.example.com'"),
        ({"MAX_EVENT_BUFER_SIZE": 3}, "MAX_EVENT_BUFER_SIZE (did you mean MAX_EVENT_BUFFER_SIZE?)"),
    ],
    ids=["string-not-a-number", "http-redis-url", "out-of-range", "not-an-origin", "misspelt"],
)
def test_system_check_refuses_bad_values_by_key(
    project: None, options: dict[str, Any], message: str
) -> None:
    from django.core.checks import run_checks
    from django.test import override_settings

    with override_settings(LONGPOLL={**LONGPOLL, **options}):
        error, = [m for m in run_checks() if m.id == "wsgi_longpoll.E001"]
        assert message in error.msg


def test_numbers_given_as_strings_are_converted(project: None) -> None:
    from django.core.checks import run_checks
    from django.test import override_settings

    from wsgi_longpoll.contrib.django import get_manager

    strings = {"MAX_LONGPOLL_TIMEOUT_SECONDS": "9", "SSE_RETRY_MS": "500",
               "EVENT_TIME_TO_LIVE_SECONDS": "60"}
    with override_settings(LONGPOLL={**LONGPOLL, **strings}):
        assert not [m for m in run_checks() if m.id == "wsgi_longpoll.E001"]
        assert get_manager().max_longpoll_timeout_seconds == 9
        assert get_manager().event_time_to_live_seconds == 60
        answer = client("ann").get("/longpoll/events?category=user-ann&timeout=1",
                                   HTTP_ACCEPT="text/event-stream")
        assert next(iter(answer.streaming_content)).startswith(b"retry: 500\n")
        answer.close()


def test_cors_options_let_another_origin_subscribe_and_publish(project: None) -> None:
    from django.test import override_settings

    origin = "https://app.example.com"
    with override_settings(LONGPOLL={**LONGPOLL, "CORS_ORIGINS": [origin]}):
        preflight = client().options(
            "/longpoll/publish", HTTP_ORIGIN=origin, HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
            HTTP_ACCESS_CONTROL_REQUEST_HEADERS="content-type, idempotency-key")
        assert preflight.status_code == 204
        assert preflight["Access-Control-Allow-Origin"] == origin
        assert preflight["Access-Control-Allow-Headers"] == "content-type, idempotency-key"
        assert "Content-Type" not in preflight
        answer = client("ann").get("/longpoll/events?category=user-ann&timeout=1",
                                   HTTP_ORIGIN=origin)
        assert answer.status_code == 200
        assert answer["Access-Control-Allow-Origin"] == origin


def test_url_paths_come_from_the_settings(project: None) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from wsgi_longpoll.contrib.django.conf import url_paths

    assert url_paths() == ("events", "publish")
    with override_settings(LONGPOLL={"SUBSCRIPTION_PATH": "/lp/sub", "PUBLISH_PATH": None}):
        assert url_paths() == ("lp/sub", None)
    with override_settings(LONGPOLL={"PUBLISH_PATH": 5}), \
            pytest.raises(ImproperlyConfigured, match=r"LONGPOLL\['PUBLISH_PATH'\] must be"):
        url_paths()


def test_subscribe_token_is_signed_with_the_setting_and_checked_by_the_view(
        project: None) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from wsgi_longpoll.contrib.django import subscribe_token
    from wsgi_longpoll.tokens import MISSING, TokenVerifier, category_forbidden

    with pytest.raises(ImproperlyConfigured, match="SUBSCRIBE_SECRET"):
        subscribe_token("user-ann", 60)
    secret = "django-subscribe-secret-0123456789"
    with override_settings(LONGPOLL={**LONGPOLL, "SUBSCRIBE_SECRET": secret}):
        token = subscribe_token(["user-ann"], 60)
        assert TokenVerifier([secret]).categories(token) == {"user-ann"}
        ann = client("ann")
        missing = subscribe(ann, "category=user-ann")
        assert (missing.status_code, missing.json()["error"]) == (401, MISSING)
        assert subscribe(ann, f"category=user-ann&token={token}").status_code == 200
        bob = client("bob")  # the token names ann's channel: bob's view refuses him still
        assert subscribe(bob, f"category=user-ann&token={token}").status_code == 403
        refused = subscribe(ann, f"category=public&token={token}")
        assert (refused.status_code, refused.json()["error"]) == (
            403, category_forbidden("public"))
