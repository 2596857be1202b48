"""The authentication hooks, through LongpollMiddleware (WebTest) and the Server."""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Iterator

import pytest
import requests
from webtest import TestApp

from wsgi_longpoll import LongpollManager, LongpollMiddleware, Server, ServerInfo
from wsgi_longpoll.wsgi.auth import basic_auth, bearer_token, hmac_signature
from wsgi_longpoll.wsgi.middleware import Hook


def not_found(environ: object, start_response: object) -> list[bytes]:
    raise AssertionError("the wrapped app must not be reached")


def guarded(hook: Hook) -> tuple[TestApp, LongpollManager]:
    manager = LongpollManager()
    return TestApp(LongpollMiddleware(not_found, manager, before_publish=hook)), manager


BODY = json.dumps({"category": "c", "data": {"n": 1}}).encode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def signed(body: bytes, key: bytes, digest: str = "sha256") -> str:
    return f"{digest}=" + hmac.new(key, body, digest).hexdigest()


@pytest.mark.parametrize(
    ("authorization", "accepted"),
    [
        ("Bearer s3cret", True),
        ("bearer s3cret", True),
        ("Bearer  s3cret ", True),
        ("Bearer old-one", True),
        ("Bearer s3cre", False),
        ("Bearer s3cret2", False),
        ("Bearer ", False),
        ("Basic s3cret", False),
        ("s3cret", False),
        ("", False),
        (None, False),
    ],
    ids=["exact", "scheme-case", "spaces", "second-token", "prefix", "longer", "empty",
         "other-scheme", "no-scheme", "empty-header", "no-header"],
)
def test_bearer_token(authorization: str | None, accepted: bool) -> None:
    app, manager = guarded(bearer_token(["s3cret", "old-one"]))
    headers = {} if authorization is None else {"Authorization": authorization}
    response = app.post("/publish", BODY, headers=headers, expect_errors=True)
    if accepted:
        assert response.status_int == 200
        assert [event.data for event in manager.buffered_events("c")] == [{"n": 1}]
    else:
        assert response.status_int == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="wsgi_longpoll"'
        assert response.content_type == "application/json"
        assert response.json == {"error": "A valid bearer token is required."}
        assert manager.buffered_events("c") == []


def test_bearer_token_guards_the_method_check_too() -> None:
    app, _ = guarded(bearer_token("s3cret"))
    assert app.get("/publish", expect_errors=True).status_int == 401
    response = app.get("/publish", headers={"Authorization": "Bearer s3cret"},
                       expect_errors=True)
    assert response.status_int == 405


@pytest.mark.parametrize(
    "tokens", [[], "", [""], ["ok", ""]], ids=["none", "empty-string", "empty-in-list", "one-empty"]
)
def test_bearer_token_refuses_empty_tokens(tokens: str | list[str]) -> None:
    with pytest.raises(ValueError, match="token"):
        bearer_token(tokens)


def test_non_ascii_token_and_header_are_compared_not_crashed_on() -> None:
    app, _ = guarded(bearer_token("clé"))
    # WSGI headers are latin-1: the UTF-8 bytes of "clé" arrive as "clÃ©".
    wire = "Bearer clé".encode().decode("latin-1")
    ok = app.post("/publish", BODY, headers={"Authorization": wire})
    assert ok.status_int == 200
    bad = app.post("/publish", BODY, headers={"Authorization": "Bearer \xff\xfe"},
                   expect_errors=True)
    assert bad.status_int == 401


@pytest.mark.parametrize(
    ("authorization", "accepted"),
    [
        (basic("alice", "wonderland"), True),
        (basic("bob", "pa:ss"), True),
        (basic("alice", "wrong"), False),
        (basic("carol", "wonderland"), False),
        (basic("alice", ""), False),
        ("Basic " + base64.b64encode(b"alice").decode(), False),
        ("Basic !!notbase64!!", False),
        ("Basic " + base64.b64encode(b"\xff:\xfe").decode(), False),
        ("Bearer wonderland", False),
        (None, False),
    ],
    ids=["alice", "colon-in-password", "wrong-password", "unknown-user", "empty-password",
         "no-colon", "not-base64", "not-utf8", "other-scheme", "no-header"],
)
def test_basic_auth(authorization: str | None, accepted: bool) -> None:
    app, _ = guarded(basic_auth({"alice": "wonderland", "bob": "pa:ss"}, realm="pub"))
    headers = {} if authorization is None else {"Authorization": authorization}
    response = app.post("/publish", BODY, headers=headers, expect_errors=True)
    if accepted:
        assert response.status_int == 200
    else:
        assert response.status_int == 401
        assert response.headers["WWW-Authenticate"] == 'Basic realm="pub", charset="UTF-8"'
        assert response.json == {"error": "Valid credentials are required."}


@pytest.mark.parametrize(
    ("users", "message"),
    [({}, "at least one user"), ({"a": ""}, "password must not be empty")],
    ids=["no-users", "empty-password"],
)
def test_basic_auth_refuses_bad_configuration(users: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        basic_auth(users)


def test_realm_with_a_quote_is_refused() -> None:
    with pytest.raises(ValueError, match="realm"):
        bearer_token("t", realm='a"b')


@pytest.mark.parametrize(
    ("signature", "accepted"),
    [
        (signed(BODY, b"key"), True),
        (signed(BODY, b"old-key"), True),
        (signed(BODY, b"key").upper().replace("SHA256=", "sha256="), True),
        (signed(BODY, b"other"), False),
        (signed(BODY + b" ", b"key"), False),
        (signed(BODY, b"key", "sha1").replace("sha1", "sha256"), False),
        (signed(BODY, b"key").removeprefix("sha256="), False),
        ("sha256=", False),
        ("sha256=\xe9", False),
        (None, False),
    ],
    ids=["signed", "second-key", "upper-case-hex", "wrong-key", "other-body", "other-digest",
         "no-prefix", "empty", "non-ascii", "missing"],
)
def test_hmac_signature(signature: str | None, accepted: bool) -> None:
    app, manager = guarded(hmac_signature([b"key", "old-key"]))
    headers = {} if signature is None else {"X-Signature": signature}
    response = app.post("/publish", BODY, headers=headers, expect_errors=True)
    if accepted:
        assert response.status_int == 200
        # The hook read the body, and the publish still saw all of it.
        assert [event.data for event in manager.buffered_events("c")] == [{"n": 1}]
    else:
        assert response.status_int == 401
        assert response.json == {"error": "A valid X-Signature signature of the body is required."}
        assert response.headers["WWW-Authenticate"] == 'HMAC header="X-Signature", digest="sha256"'


def test_hmac_signature_with_another_header_and_digest() -> None:
    app, _ = guarded(hmac_signature("k", header="X-Hub-Signature", digest="SHA512"))
    assert app.post("/publish", BODY,
                    headers={"X-Hub-Signature": signed(BODY, b"k", "sha512")}).status_int == 200


def test_hmac_signature_refuses_an_unknown_digest() -> None:
    with pytest.raises(ValueError, match="unknown digest 'nope'"):
        hmac_signature("k", digest="nope")


def test_hook_guards_subscriptions_as_well() -> None:
    manager = LongpollManager()
    app = TestApp(LongpollMiddleware(not_found, manager, before_subscription=bearer_token("t")))
    assert app.get("/events?timeout=1&category=c", expect_errors=True).status_int == 401


@pytest.fixture
def token_server() -> Iterator[str]:
    server = Server(access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=5,
                            handler_to_run_before_publish=bearer_token("s3cret")))
    yield f"http://127.0.0.1:{server.port}"
    server.stop(5)


def test_bearer_token_on_the_standalone_server(token_server: str) -> None:
    body = {"category": "c", "data": 1}
    refused = requests.post(f"{token_server}/publish", json=body, timeout=10)
    assert refused.status_code == 401
    assert refused.json() == {"error": "A valid bearer token is required."}
    accepted = requests.post(f"{token_server}/publish", json=body, timeout=10,
                             headers={"Authorization": "Bearer s3cret"})
    assert accepted.status_code == 200
    events = requests.get(f"{token_server}/events?timeout=1&category=c&since_time=1",
                          timeout=10).json()["events"]
    assert [event["data"] for event in events] == [1]


def test_signature_over_a_chunked_body_on_the_standalone_server() -> None:
    server = Server(access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=5,
                            handler_to_run_before_publish=hmac_signature("k")))
    try:
        response = requests.post(
            f"http://127.0.0.1:{server.port}/publish", data=iter([BODY[:5], BODY[5:]]),
            headers={"X-Signature": signed(BODY, b"k")}, timeout=10,
        )
        assert response.status_code == 200
        assert server.manager.buffered_events("c")[0].data == {"n": 1}
    finally:
        server.stop(5)
