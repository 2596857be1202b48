"""CORSMiddleware: preflights, actual requests, the allow-list, credentials."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
import requests
from webtest import TestApp

from wsgi_longpoll import LongpollManager, LongpollMiddleware, Server, ServerInfo
from wsgi_longpoll.wsgi.cors import CORSMiddleware

ALLOWED = "https://app.example.com"
OTHER = "https://evil.example.net"


def other_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Vary", "Accept-Encoding")])
    return [b"other"]


def make_app(origins: list[str] | None = None, **options: Any) -> tuple[TestApp, LongpollManager]:
    manager = LongpollManager()
    longpoll = LongpollMiddleware(other_app, manager)
    cors = CORSMiddleware(longpoll, [ALLOWED] if origins is None else origins, **options)
    return TestApp(cors), manager


def preflight(app: TestApp, origin: str, method: str = "POST", path: str = "/publish") -> Any:
    return app.options(path, headers={
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "content-type, authorization",
    }, expect_errors=True)


@pytest.mark.parametrize("path", ["/publish", "/events"])
def test_preflight_from_an_allowed_origin(path: str) -> None:
    app, _ = make_app()
    response = preflight(app, ALLOWED, path=path)
    assert response.status_int == 204
    assert response.body == b""
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert response.headers["Access-Control-Allow-Methods"] == "GET, POST"
    # By default, whatever headers the page asks for.
    assert response.headers["Access-Control-Allow-Headers"] == "content-type, authorization"
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert response.headers["Vary"] == "Origin, Access-Control-Request-Headers"
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_preflight_from_another_origin_is_refused_with_json() -> None:
    app, _ = make_app()
    response = preflight(app, OTHER)
    assert response.status_int == 403
    assert response.json == {"error": "Cross-origin requests from this origin are not allowed."}
    assert "Access-Control-Allow-Origin" not in response.headers


def test_origins_compare_without_case_and_are_echoed_as_sent() -> None:
    app, _ = make_app(["HTTPS://App.Example.com"])
    response = preflight(app, "https://app.example.COM")
    assert response.status_int == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.COM"


def test_actual_publish_and_subscribe_from_an_allowed_origin() -> None:
    app, manager = make_app()
    published = app.post_json("/publish", {"category": "c", "data": 1},
                              headers={"Origin": ALLOWED})
    assert published.json == {"success": True}
    assert published.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert published.headers["Access-Control-Expose-Headers"] == "Retry-After"
    assert published.headers["Vary"] == "Origin"
    subscribed = app.get("/events?timeout=1&category=c&since_time=1",
                         headers={"Origin": ALLOWED})
    assert subscribed.json["events"][0]["data"] == 1
    assert subscribed.headers["Access-Control-Allow-Origin"] == ALLOWED


def test_actual_request_from_another_origin_gets_no_cors_headers() -> None:
    app, manager = make_app()
    response = app.post_json("/publish", {"category": "c", "data": 1}, headers={"Origin": OTHER})
    # The server still answers (CORS protects the reader, not the server) ...
    assert response.status_int == 200
    # ... but the browser will not let the page read it.
    assert "Access-Control-Allow-Origin" not in response.headers
    assert response.headers["Vary"] == "Origin"


def test_same_origin_request_without_origin_is_untouched() -> None:
    app, _ = make_app()
    response = app.get("/events?timeout=0&category=c")
    assert "Access-Control-Allow-Origin" not in response.headers
    assert response.json == {"error": "Invalid or missing 'timeout' arg.  Must be 1-110."}


def test_plain_options_without_preflight_header_goes_to_the_app() -> None:
    app, _ = make_app()
    response = app.options("/publish", headers={"Origin": ALLOWED}, expect_errors=True)
    assert response.status_int == 405
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED


def test_credentials_only_when_configured() -> None:
    app, _ = make_app(allow_credentials=True)
    response = preflight(app, ALLOWED)
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    actual = app.get("/events?timeout=1&category=c&since_time=1", headers={"Origin": ALLOWED})
    assert actual.headers["Access-Control-Allow-Credentials"] == "true"
    refused = app.get("/events?timeout=1&category=c&since_time=1", headers={"Origin": OTHER})
    assert "Access-Control-Allow-Credentials" not in refused.headers


def test_any_origin() -> None:
    app, _ = make_app(["*"])
    response = preflight(app, OTHER)
    assert response.status_int == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Vary"] == "Access-Control-Request-Headers"
    actual = app.get("/events?timeout=1&category=c&since_time=1", headers={"Origin": OTHER})
    assert actual.headers["Access-Control-Allow-Origin"] == "*"


def test_vary_is_merged_with_the_apps_own() -> None:
    app, _ = make_app()
    response = app.get("/elsewhere", headers={"Origin": ALLOWED})
    assert response.body == b"other"
    assert response.headers["Vary"] == "Accept-Encoding, Origin"


def test_paths_limit_where_cors_applies() -> None:
    app, _ = make_app(paths=["/events", "/publish"])
    response = app.get("/elsewhere", headers={"Origin": ALLOWED})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert response.headers["Vary"] == "Accept-Encoding"
    assert preflight(app, ALLOWED).status_int == 204


def test_custom_methods_headers_and_max_age() -> None:
    app, _ = make_app(allow_methods=["get"], allow_headers=["X-Signature"],
                      expose_headers=[], max_age=0)
    response = preflight(app, ALLOWED, method="GET")
    assert response.headers["Access-Control-Allow-Methods"] == "GET"
    assert response.headers["Access-Control-Allow-Headers"] == "X-Signature"
    assert response.headers["Access-Control-Max-Age"] == "0"
    actual = app.get("/events?timeout=1&category=c&since_time=1", headers={"Origin": ALLOWED})
    assert "Access-Control-Expose-Headers" not in actual.headers


@pytest.mark.parametrize(
    ("origins", "options", "error"),
    [
        (["https://a.example/"], {}, "invalid origin"),
        (["https://a.example/path"], {}, "invalid origin"),
        (["a.example"], {}, "invalid origin"),
        ([""], {}, "invalid origin"),
        (["null"], {}, "invalid origin"),
        (["*"], {"allow_credentials": True}, "allow_credentials needs a list"),
        ([ALLOWED], {"max_age": -1}, "max_age"),
    ],
    ids=["trailing-slash", "path", "no-scheme", "empty", "null", "star-with-credentials",
         "negative-max-age"],
)
def test_bad_configuration_is_refused(
    origins: list[str], options: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        CORSMiddleware(other_app, origins, **options)


def test_one_string_instead_of_a_list_is_refused() -> None:
    with pytest.raises(TypeError, match="not one string"):
        CORSMiddleware(other_app, ALLOWED)


def test_standalone_server_cors_options() -> None:
    server = Server(access_log=False, cors_origins=[ALLOWED])
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=5))
    base = f"http://127.0.0.1:{server.port}"
    try:
        response = requests.options(f"{base}/publish", timeout=10, headers={
            "Origin": ALLOWED, "Access-Control-Request-Method": "POST"})
        assert response.status_code == 204
        assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
        published = requests.post(f"{base}/publish", json={"category": "c", "data": 1},
                                  headers={"Origin": ALLOWED}, timeout=10)
        assert published.headers["Access-Control-Allow-Origin"] == ALLOWED
    finally:
        server.stop(5)


@pytest.mark.parametrize(
    ("requested", "allowed"),
    [
        ("content-type, idempotency-key", "content-type, idempotency-key"),
        ("last-event-id", "last-event-id"),
        ("Authorization", "Authorization"),
        ("x-auth-token,x-trace-id", "x-auth-token, x-trace-id"),
        ("x-good, bad name, x-also-good", "x-good, x-also-good"),
    ],
    ids=["publish-with-idempotency-key", "stream-resume", "authorization",
         "a-page-s-own-headers", "a-name-that-is-no-header-is-left-out"],
)
def test_by_default_a_preflight_is_allowed_the_headers_it_asks_for(
    requested: str, allowed: str
) -> None:
    app, _ = make_app()
    response = app.options("/publish", headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": requested})
    assert response.status_int == 204
    assert response.headers["Access-Control-Allow-Headers"] == allowed


def test_a_list_of_headers_allows_those_alone() -> None:
    app, _ = make_app(allow_headers=["Content-Type", "X-Token"])
    response = app.options("/publish", headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-token, x-other"})
    assert response.headers["Access-Control-Allow-Headers"] == "Content-Type, X-Token"
    assert response.headers["Vary"] == "Origin"


def test_an_invalid_header_name_is_refused() -> None:
    with pytest.raises(ValueError, match="cors_allow_headers has an invalid header name"):
        CORSMiddleware(other_app, [ALLOWED], allow_headers=["X Token"])


def test_standalone_server_cross_origin_publish_with_idempotency_key() -> None:
    """What a page on another origin does to publish safely: a preflight for
    Idempotency-Key, then the publish, retried with the same key."""
    server = Server(access_log=False, cors_origins=[ALLOWED])
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=5))
    base = f"http://127.0.0.1:{server.port}"
    try:
        preflight = requests.options(f"{base}/publish", timeout=10, headers={
            "Origin": ALLOWED, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, idempotency-key"})
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Headers"] \
            == "content-type, idempotency-key"
        for _ in range(2):
            published = requests.post(
                f"{base}/publish", json={"category": "c", "data": 1}, timeout=10,
                headers={"Origin": ALLOWED, "Idempotency-Key": "order-1"})
            assert published.status_code == 200
            assert published.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert len(server.manager.buffered_events("c")) == 1
    finally:
        server.stop(5)


def test_standalone_server_cors_allow_headers_option() -> None:
    server = Server(access_log=False, cors_origins=[ALLOWED], cors_allow_headers=["X-Token"],
                    cors_max_age=60)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=5))
    try:
        preflight = requests.options(
            f"http://127.0.0.1:{server.port}/events", timeout=10, headers={
                "Origin": ALLOWED, "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "x-token, last-event-id"})
        assert preflight.headers["Access-Control-Allow-Headers"] == "X-Token"
        assert preflight.headers["Access-Control-Max-Age"] == "60"
    finally:
        server.stop(5)
