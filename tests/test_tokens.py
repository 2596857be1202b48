"""Signed subscribe tokens (:mod:`wsgi_longpoll.tokens`): issued by an application,
checked by every adapter of the endpoints (the middleware, the native server, the Flask
extension, the Django app) with no call into the application."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from conftest import wait_until
from webtest import TestApp

from wsgi_longpoll import LongpollManager, LongpollMiddleware, Server, ServerInfo
from wsgi_longpoll.endpoints import EndpointOptions
from wsgi_longpoll.tokens import (
    EXPIRED,
    FORGED,
    MALFORMED,
    MISSING,
    WRONG_ALGORITHM,
    SubscribeTokenRejected,
    TokenVerifier,
    category_forbidden,
    subscribe_token,
)

SECRET = "test-subscribe-secret-0123456789"
PREVIOUS = "old-subscribe-secret-9876543210"
OTHER = "someone-elses-secret-0000000000"
WAIT_SECONDS = 20


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hand_made(claims: dict[str, Any], secret: str = SECRET,
              header: dict[str, Any] | None = None) -> str:
    """A token made as any JWT library makes one (its own JSON spacing and key order)."""
    head = b64(json.dumps(header or {"typ": "JWT", "alg": "HS256"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def reason(token: str | None, categories: list[str], now: float | None = None,
           secrets: tuple[str, ...] = (SECRET,)) -> str | None:
    try:
        TokenVerifier(secrets).check(token, categories, now)
    except SubscribeTokenRejected as error:
        return str(error)
    return None


# -- the tokens -------------------------------------------------------------------------


def test_a_token_lets_its_holder_read_its_categories_until_it_expires() -> None:
    token = subscribe_token(SECRET, ["news", "user-1"], 60, now=1000.0)
    verifier = TokenVerifier([SECRET])
    assert verifier.categories(token, now=1059.0) == {"news", "user-1"}
    verifier.check(token, ["user-1", "news"], now=1060.0)
    with pytest.raises(SubscribeTokenRejected, match="expired"):
        verifier.check(token, ["news"], now=1061.0)


def test_a_remembered_token_still_expires() -> None:
    verifier = TokenVerifier([SECRET])
    token = subscribe_token(SECRET, "news", 10, now=1000.0)
    verifier.check(token, ["news"], now=1001.0)  # checked, and remembered
    assert reason(token, ["news"], now=1011.0) == EXPIRED
    with pytest.raises(SubscribeTokenRejected, match="expired"):
        verifier.check(token, ["news"], now=1011.0)


def test_a_token_is_a_json_web_token_with_the_documented_claims() -> None:
    token = subscribe_token(SECRET, ["a", "b", "a"], datetime.timedelta(minutes=2),
                            subject="ann", now=1000.0)
    head, body, _ = token.split(".")
    pad = "=" * (-len(body) % 4)
    assert json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))) == {
        "alg": "HS256", "typ": "JWT"}
    assert json.loads(base64.urlsafe_b64decode(body + pad)) == {
        "categories": ["a", "b"], "exp": 1120, "sub": "ann"}


def test_a_token_made_by_another_jwt_implementation_is_accepted() -> None:
    token = hand_made({"sub": "x", "exp": time.time() + 60, "categories": ["news"]})
    assert reason(token, ["news"]) is None


@pytest.mark.parametrize("token, expected", [
    pytest.param(None, MISSING, id="none"),
    pytest.param("", MISSING, id="empty"),
    pytest.param("not-a-token", MALFORMED, id="no-dots"),
    pytest.param("a.b.c.d", MALFORMED, id="four-parts"),
    pytest.param("!!!.e30.AAAA", MALFORMED, id="not-base64"),
    pytest.param("e30=.e30.AAAA", MALFORMED, id="padded"),
    pytest.param("é.e30.AAAA", MALFORMED, id="not-ascii"),
    pytest.param(hand_made({"categories": ["news"], "exp": 2e9}, header={"alg": "none"}),
                 WRONG_ALGORITHM, id="alg-none"),
    pytest.param(hand_made({"categories": ["news"], "exp": 2e9}, header={"alg": "HS512"}),
                 WRONG_ALGORITHM, id="alg-hs512"),
    pytest.param(hand_made({"categories": ["news"], "exp": 2e9}, secret=OTHER), FORGED,
                 id="another-secret"),
    pytest.param(hand_made({"categories": ["news"], "exp": 2e9})[:-2] + "AA", FORGED,
                 id="bad-signature"),
])
def test_bad_tokens_are_refused_saying_why(token: str | None, expected: str) -> None:
    assert reason(token, ["news"]) == expected


def test_changed_claims_break_the_signature() -> None:
    head, _, signature = subscribe_token(SECRET, "user-1", 60).split(".")
    widened = b64(json.dumps({"categories": ["user-1", "user-2"], "exp": 2e9}).encode())
    assert reason(f"{head}.{widened}.{signature}", ["user-2"]) == FORGED


@pytest.mark.parametrize("claims", [
    {"exp": 2e9},
    {"categories": ["news"]},
    {"categories": "news", "exp": 2e9},
    {"categories": ["news", 3], "exp": 2e9},
    {"categories": ["news"], "exp": "2000000000"},
    {"categories": ["news"], "exp": True},
], ids=repr)
def test_signed_tokens_without_the_claims_are_refused(claims: dict[str, Any]) -> None:
    found = reason(hand_made(claims), ["news"])
    assert found is not None and "claims" in found


def test_a_category_the_token_does_not_name_is_refused_by_name() -> None:
    token = subscribe_token(SECRET, ["news"], 60)
    assert reason(token, ["news", "user-2"]) == category_forbidden("user-2")
    assert "'user-2'" in category_forbidden("user-2")


def test_tokens_of_the_previous_secret_are_taken_while_it_rotates() -> None:
    old = subscribe_token(PREVIOUS, ["news"], 60)
    assert reason(old, ["news"], secrets=(SECRET, PREVIOUS)) is None
    assert reason(old, ["news"], secrets=(SECRET,)) == FORGED


@pytest.mark.parametrize("call", [
    lambda: subscribe_token("short", "news", 60),
    lambda: subscribe_token(SECRET, [], 60),
    lambda: subscribe_token(SECRET, ["news", ""], 60),
    lambda: subscribe_token(SECRET, "news", 0),
    lambda: TokenVerifier([]),
    lambda: TokenVerifier(["short"]),
], ids=["short-secret", "no-category", "empty-category", "no-ttl", "no-secret",
        "short-verifier-secret"])
def test_what_cannot_make_a_good_token_is_refused(call: Any) -> None:
    with pytest.raises(ValueError):
        call()


def test_the_options_keep_secrets_out_of_their_repr_and_refuse_short_ones() -> None:
    options = EndpointOptions(subscribe_secret=SECRET)
    assert SECRET not in repr(options)
    with pytest.raises(ValueError, match="subscribe_secret must be at least 16 bytes"):
        EndpointOptions(subscribe_secret="short")
    with pytest.raises(ValueError, match="without subscribe_secret"):
        EndpointOptions(subscribe_secret_previous=PREVIOUS)


# -- every adapter checks them ----------------------------------------------------------


class Client:
    """One adapter's subscribe endpoint: ``get(query, headers) -> (status, headers, body)``."""

    def __init__(self, kind: str, manager: LongpollManager) -> None:
        self.kind = kind
        self.manager = manager
        self.server: Server | None = None
        if kind == "middleware":
            self.app = TestApp(LongpollMiddleware(
                _not_found, manager, subscribe_secret=SECRET,
                subscribe_secret_previous=PREVIOUS))
        else:
            self.server = Server(subscribe_secret=SECRET, subscribe_secret_previous=PREVIOUS,
                                 access_log=True)
            self.server.start(ServerInfo(address="127.0.0.1:0"))
            self.manager = self.server.manager

    def get(self, query: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
        if self.server is None:
            answer = self.app.get(f"/events?{query}", headers=headers or {}, status="*")
            return answer.status_int, dict(answer.headers), answer.body
        response = requests.get(f"http://127.0.0.1:{self.server.port}/events?{query}",
                                headers=headers, timeout=WAIT_SECONDS)
        return response.status_code, dict(response.headers), response.content

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def _not_found(environ: object, start_response: Any) -> list[bytes]:
    start_response("404 Not Found", [])
    return []


@pytest.fixture(params=["middleware", "server"])
def client(request: pytest.FixtureRequest) -> Iterator[Client]:
    client = Client(request.param, LongpollManager())
    yield client
    client.close()


def error_of(body: bytes) -> str:
    document = json.loads(body)
    assert list(document) == ["error"]
    return str(document["error"])


def test_a_subscribe_without_a_token_is_401_with_a_bearer_challenge(client: Client) -> None:
    status, headers, body = client.get("category=news&timeout=1")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="wsgi_longpoll"'
    assert headers["Content-Type"] == "application/json"
    assert error_of(body) == MISSING


@pytest.mark.parametrize("how", ["query", "bearer"])
def test_a_valid_token_subscribes_from_the_query_or_a_bearer_header(client: Client,
                                                                    how: str) -> None:
    token = subscribe_token(SECRET, ["news", "sport"], 60)
    query, headers = "categories=news&categories=sport&timeout=1", {}
    if how == "query":
        query += f"&token={token}"
    else:
        headers = {"Authorization": f"Bearer {token}"}
    client.manager.publish("sport", {"n": 1})
    status, _, body = client.get(query + "&since_time=0", headers)
    assert status == 200
    assert [event["data"] for event in json.loads(body)["events"]] == [{"n": 1}]


@pytest.mark.parametrize("make_token, categories, expected", [
    pytest.param(lambda: subscribe_token(SECRET, "news", 60, now=time.time() - 120), "news",
                 EXPIRED, id="expired"),
    pytest.param(lambda: subscribe_token(OTHER, "news", 60), "news", FORGED, id="forged"),
    pytest.param(lambda: subscribe_token(SECRET, "news", 60), "news&categories=user-2",
                 category_forbidden("user-2"), id="wrong-category"),
    pytest.param(lambda: "garbage", "news", MALFORMED, id="malformed"),
])
def test_bad_tokens_are_403_with_a_json_error_saying_why(
        client: Client, make_token: Any, categories: str, expected: str) -> None:
    token = make_token()  # now: a token made at collection may have expired by the run
    status, headers, body = client.get(f"category={categories}&timeout=1&token={token}")
    assert (status, error_of(body)) == (403, expected)
    assert headers["Cache-Control"] == "no-cache, no-store, must-revalidate"


def test_the_previous_secret_s_tokens_still_subscribe(client: Client) -> None:
    token = subscribe_token(PREVIOUS, "news", 60)
    status, _, body = client.get(f"category=news&timeout=1&token={token}")
    assert status == 200 and b"timeout" in body


def test_protocol_errors_come_before_the_token(client: Client) -> None:
    status, _, body = client.get("category=news&timeout=0")
    assert status == 200 and "timeout" in error_of(body)


def test_a_stream_needs_a_token_too() -> None:
    client = Client("server", LongpollManager())  # a WebTest stream would not end
    stream = {"Accept": "text/event-stream"}
    token = subscribe_token(SECRET, "news", 60)
    try:
        assert client.get("category=news&timeout=1", stream)[0] == 401
        status, headers, _ = client.get(f"category=news&timeout=1&token={token}", stream)
    finally:
        client.close()
    assert status == 200 and headers["Content-Type"] == "text/event-stream"


def test_a_waiting_subscriber_with_a_token_gets_the_event() -> None:
    server = Server(subscribe_secret=SECRET, access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0"))
    try:
        token = subscribe_token(SECRET, "news", 60)
        answers: list[requests.Response] = []
        poll = threading.Thread(target=lambda: answers.append(requests.get(
            f"http://127.0.0.1:{server.port}/events", params={
                "category": "news", "timeout": 15, "token": token}, timeout=WAIT_SECONDS)))
        poll.start()
        deadline = time.monotonic() + WAIT_SECONDS
        while server.manager.stats().waiting_subscribers < 1:
            assert time.monotonic() < deadline, "the poll never waited"
            time.sleep(0.01)
        server.manager.publish("news", "hello")
        poll.join(WAIT_SECONDS)
        assert [event["data"] for event in answers[0].json()["events"]] == ["hello"]
    finally:
        server.stop()


def test_the_access_log_leaves_the_token_out(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(subscribe_secret=SECRET, access_log=True)
    server.start(ServerInfo(address="127.0.0.1:0"))
    try:
        token = subscribe_token(SECRET, "news", 60)
        with caplog.at_level(logging.INFO, logger="wsgi_longpoll.access"):
            requests.get(f"http://127.0.0.1:{server.port}/events",
                         params={"category": "news", "timeout": 1, "token": token},
                         timeout=WAIT_SECONDS)
            # The line is logged once the answer is sent: maybe after the client read it.
            wait_until(lambda: any(record.name == "wsgi_longpoll.access"
                                   for record in caplog.records))
    finally:
        server.stop()
    lines = [record.getMessage() for record in caplog.records
             if record.name == "wsgi_longpoll.access"]
    assert lines and all(token not in line for line in lines)
    assert any("token=[redacted]" in line for line in lines)


# -- the framework integrations issue them ----------------------------------------------


def test_the_flask_extension_issues_tokens_its_view_checks() -> None:
    from flask import Flask

    from wsgi_longpoll.contrib.flask import LongPoll

    longpoll = LongPoll()
    app = Flask(__name__)
    app.config.update(LONGPOLL_SUBSCRIBE_SECRET=SECRET)
    longpoll.init_app(app)
    with app.app_context():
        token = longpoll.subscribe_token(["user-1"], 60)
    assert TokenVerifier([SECRET]).categories(token) == {"user-1"}
    client = TestApp(app)
    assert client.get("/events?category=user-1&timeout=1", status="*").status_int == 401
    answer = client.get(f"/events?category=user-1&timeout=1&token={token}", status="*")
    assert answer.status_int == 200 and "timeout" in answer.json
    refused = client.get(f"/events?category=user-2&timeout=1&token={token}", status="*")
    assert (refused.status_int, refused.json["error"]) == (403, category_forbidden("user-2"))


def test_the_flask_extension_needs_a_secret_to_issue_tokens() -> None:
    from flask import Flask

    from wsgi_longpoll.contrib.flask import LongPoll

    app = Flask(__name__)
    longpoll = LongPoll(app)
    with pytest.raises(RuntimeError, match="LONGPOLL_SUBSCRIBE_SECRET"):
        longpoll.subscribe_token("news", 60)


# -- the command line -------------------------------------------------------------------


def test_serve_checks_tokens_with_secrets_from_the_environment() -> None:
    import os
    import subprocess
    import sys

    environment = {**os.environ, "WSGI_LONGPOLL_SUBSCRIBE_SECRET": SECRET,
                   "WSGI_LONGPOLL_SUBSCRIBE_SECRET_PREVIOUS": PREVIOUS}
    process = subprocess.Popen(
        [sys.executable, "-m", "wsgi_longpoll", "serve", "--address", "127.0.0.1:0",
         "--no-access-log"], stderr=subprocess.PIPE, text=True, env=environment)
    try:
        assert process.stderr is not None
        base = None
        for line in process.stderr:
            match = re.search(r"subscribe at (http://[\d.]+:\d+)/", line)
            if match:
                base = match.group(1)
                break
        assert base is not None, "the server exited before it was ready"
        events = f"{base}/events?category=news&timeout=1"
        assert requests.get(events, timeout=WAIT_SECONDS).status_code == 401
        for secret in (SECRET, PREVIOUS):
            token = subscribe_token(secret, "news", 60)
            assert requests.get(events, headers={"Authorization": f"Bearer {token}"},
                                timeout=WAIT_SECONDS).status_code == 200
        forged = subscribe_token(OTHER, "news", 60)
        assert requests.get(f"{events}&token={forged}", timeout=WAIT_SECONDS).status_code == 403
    finally:
        process.terminate()
        assert process.wait(WAIT_SECONDS) == 0


@pytest.mark.parametrize("arguments, environment, warned", [
    ([], {}, True),
    (["--publish-token", "publisher-secret"], {}, False),
    ([], {"WSGI_LONGPOLL_PUBLISH_TOKEN": "publisher-secret"}, False),
    (["--publish-uri", ""], {}, False),
], ids=["open", "token", "token-from-environment", "no-publish-path"])
def test_a_tier_with_an_open_publish_path_says_so_at_startup(
    arguments: list[str], environment: dict[str, str], warned: bool
) -> None:
    import os
    import subprocess
    import sys

    variables = {key: value for key, value in os.environ.items()
                 if key != "WSGI_LONGPOLL_PUBLISH_TOKEN"}
    process = subprocess.Popen(
        [sys.executable, "-m", "wsgi_longpoll", "serve", "--address", "127.0.0.1:0",
         "--no-access-log", "--no-demo", "--subscribe-secret", SECRET, *arguments],
        stderr=subprocess.PIPE, text=True, env={**variables, **environment})
    lines = []
    try:
        assert process.stderr is not None
        for line in process.stderr:  # the warning comes before the address line
            lines.append(line)
            if "subscribe at http://" in line:
                break
    finally:
        process.terminate()
        assert process.wait(WAIT_SECONDS) == 0
    assert any("subscribe at http://" in line for line in lines), lines
    warning = [line for line in lines if "anyone who reaches this server can publish" in line]
    assert bool(warning) is warned, lines
    if warned:
        assert "--publish-token" in warning[0] and "at /publish" in warning[0]


@pytest.mark.parametrize("arguments, environment", [
    (["--subscribe-secret", "short"], {}),
    ([], {"WSGI_LONGPOLL_SUBSCRIBE_SECRET": "short"}),
], ids=["flag", "environment"])
def test_serve_refuses_a_short_secret_by_name(arguments: list[str],
                                              environment: dict[str, str]) -> None:
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "wsgi_longpoll", "serve", "--address", "127.0.0.1:0",
         *arguments], capture_output=True, text=True, timeout=WAIT_SECONDS,
        env={**os.environ, **environment})
    assert result.returncode == 2
    assert "at least 16 bytes" in result.stderr
    assert "'short'" not in result.stderr  # a secret, even a bad one, is not echoed
