"""Tests for wsgi_longpoll.client.api, against a recording HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from requests.structures import CaseInsensitiveDict
from werkzeug.datastructures import Headers
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from wsgi_longpoll import Server, ServerInfo
from wsgi_longpoll.client import api as client
from wsgi_longpoll.client.api import (
    SUBSCRIPTION_TIMEOUT_MARGIN_SECONDS,
    ClientError,
    InvalidResponse,
    PublishRequest,
    SubscriptionRequest,
    SubscriptionResponse,
    publish,
    subscription,
)
from wsgi_longpoll.event import Event, Gap

EVENTS_BODY = (
    b'{"events":['
    b'{"timestamp":1795800310214,"category":"news","data":"hello world",'
    b'"id":"0414d492-e103-4154-8986-3ecf755168eb"},'
    b'{"timestamp":1795800310215,"category":"news","data":{"message":"Hello","n":[1,2]},'
    b'"id":"9f1c7a52-4c1e-4a8e-9a53-2b6a1f0e7c11"}]}'
)
EVENTS = [
    Event(1795800310214, "news", "0414d492-e103-4154-8986-3ecf755168eb", "hello world"),
    Event(
        1795800310215,
        "news",
        "9f1c7a52-4c1e-4a8e-9a53-2b6a1f0e7c11",
        {"message": "Hello", "n": [1, 2]},
    ),
]
TIMEOUT_BODY = b'{"timeout":"no events before timeout","timestamp":1795800310167}'
TIMEOUT_ERROR = "Invalid or missing 'timeout' arg.  Must be 1-110."
ERROR_BODY = json.dumps({"error": TIMEOUT_ERROR}).encode()
SUCCESS_BODY = b'{"success": true}'

#: The longest any test waits for the server; every wait is bounded by it.
WAIT_SECONDS = 5


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: Headers
    body: bytes


@dataclass
class RecordingApp:
    """A WSGI app that records each request and answers with the canned reply set on it."""

    status: int = 200
    body: bytes = TIMEOUT_BODY
    headers: dict[str, str] = field(default_factory=dict)
    #: When true, each request waits for :attr:`release` before it is answered.
    hold: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[Recorded] = field(default_factory=list)
    base_url: str = ""
    port: int = 0

    def __call__(self, environ: Any, start_response: Any) -> Any:
        request = Request(environ)
        self.requests.append(
            Recorded(
                method=request.method,
                path=request.path,
                query=list(request.args.items(multi=True)),
                headers=Headers(request.headers.items()),
                body=request.get_data(),
            )
        )
        if self.hold:
            self.release.wait(WAIT_SECONDS)
        response = Response(self.body, self.status, self.headers, content_type="application/json")
        return response(environ, start_response)

    @property
    def only_request(self) -> Recorded:
        assert len(self.requests) == 1, self.requests
        return self.requests[0]


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every request on 127.0.0.1 whatever the environment says."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def server() -> Iterator[RecordingApp]:
    app = RecordingApp()
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    app.port = httpd.server_port
    app.base_url = f"http://127.0.0.1:{app.port}"
    try:
        yield app
    finally:
        app.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(WAIT_SECONDS)


class CountingAdapter(HTTPAdapter):
    """An HTTP adapter that counts its sends, records their timeouts and notes a close."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[Any] = []
        self.closed = False

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        self.timeouts.append(kwargs.get("timeout"))
        return super().send(request, *args, **kwargs)

    def close(self) -> None:
        self.closed = True
        super().close()


class CannedAdapter(BaseAdapter):
    """A transport that answers every request with the events body, without any network."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.closed = False

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        assert request.url is not None
        self.urls.append(request.url)
        response = requests.Response()
        response.status_code = 200
        response.headers = CaseInsensitiveDict({"Content-Type": "application/json"})
        response._content = EVENTS_BODY
        response.url = request.url
        response.request = request
        return response

    def close(self) -> None:
        self.closed = True


# Both calls, in the same shape, for the behaviour they share.
Send = Callable[..., Any]


def send_subscription(
    url: str, header: Any = None, username: str = "", password: str = "", transport: Any = None
) -> SubscriptionResponse:
    request = SubscriptionRequest(category="news", timeout_seconds=30)
    return subscription(url + "/events", header, request, username, password, transport)


def send_publish(
    url: str, header: Any = None, username: str = "", password: str = "", transport: Any = None
) -> requests.Response:
    request = PublishRequest(category="news", data="hello")
    return publish(url + "/publish", 10, header, request, username, password, transport)


both_calls = pytest.mark.parametrize(
    "send", [send_subscription, send_publish], ids=["subscription", "publish"]
)


@pytest.mark.parametrize(
    ("request_", "expected_query"),
    [
        pytest.param(
            SubscriptionRequest("news", 30),
            [("category", "news"), ("timeout", "30")],
            id="no-cursor",
        ),
        pytest.param(
            SubscriptionRequest("news", 30, since_time=1795800310214),
            [("category", "news"), ("since_time", "1795800310214"), ("timeout", "30")],
            id="since-time",
        ),
        pytest.param(
            SubscriptionRequest(
                "news", 30, since_time=1795800310214, last_id="0414d492-e103-4154-8986-3ecf755168eb"
            ),
            [
                ("category", "news"),
                ("last_id", "0414d492-e103-4154-8986-3ecf755168eb"),
                ("since_time", "1795800310214"),
                ("timeout", "30"),
            ],
            id="since-time-and-last-id",
        ),
        pytest.param(
            SubscriptionRequest("news", 30, since_time=-5),
            [("category", "news"), ("since_time", "-5"), ("timeout", "30")],
            id="negative-since-time-is-sent",
        ),
        pytest.param(
            SubscriptionRequest("news", 30, last_id="abc"),
            [("category", "news"), ("last_id", "abc"), ("timeout", "30")],
            id="last-id-alone-is-left-for-the-server-to-judge",
        ),
        pytest.param(
            SubscriptionRequest("a b/é&c=d", 1),
            [("category", "a b/é&c=d"), ("timeout", "1")],
            id="category-is-escaped",
        ),
    ],
)
def test_subscription_sends_the_query_of_the_request(
    server: RecordingApp, request_: SubscriptionRequest, expected_query: list[tuple[str, str]]
) -> None:
    subscription(server.base_url + "/events", None, request_, "", "", None)

    recorded = server.only_request
    assert (recorded.method, recorded.path) == ("GET", "/events")
    assert sorted(recorded.query) == expected_query


@both_calls
@pytest.mark.parametrize(
    ("username", "password", "expected"),
    [
        pytest.param("user", "secret", "Basic dXNlcjpzZWNyZXQ=", id="both"),
        pytest.param("user", "", None, id="no-password"),
        pytest.param("", "secret", None, id="no-username"),
        pytest.param("", "", None, id="neither"),
        pytest.param("zoë", "pässword", "Basic em/Dqzpww6Rzc3dvcmQ=", id="utf-8-as-go"),
    ],
)
def test_basic_auth_is_sent_only_with_both_username_and_password(
    server: RecordingApp, send: Send, username: str, password: str, expected: str | None
) -> None:
    send(server.base_url, None, username, password)

    assert server.only_request.headers.get("Authorization") == expected


@both_calls
def test_header_values_may_be_strings_or_lists(server: RecordingApp, send: Send) -> None:
    header = {"X-One": "one", "X-Many": ["a", "b", "c"], "X-Tuple": ("x",), "X-None": []}

    send(server.base_url, header)

    headers = server.only_request.headers
    assert headers.get("X-One") == "one"
    assert headers.get("X-Many") == "a, b, c"
    assert headers.get("X-Tuple") == "x"
    assert "X-None" not in headers


def test_publish_sends_json_content_type_unless_the_header_gives_one(
    server: RecordingApp,
) -> None:
    send_publish(server.base_url)
    send_publish(server.base_url, {"content-type": "text/plain"})

    first, second = server.requests
    assert first.headers.get("Content-Type") == "application/json"
    assert second.headers.getlist("Content-Type") == ["text/plain"]


def test_a_given_session_is_reused_and_left_open(server: RecordingApp) -> None:
    adapter = CountingAdapter()
    server.headers = {"Set-Cookie": "visit=1; Path=/"}
    with requests.Session() as session:
        session.mount("http://", adapter)

        send_subscription(server.base_url, transport=session)
        send_publish(server.base_url, transport=session)

        assert len(adapter.timeouts) == 2
        assert not adapter.closed
        # The cookie set by the first answer comes back only if the same session sent both.
        first, second = server.requests
        assert "Cookie" not in first.headers
        assert second.headers.get("Cookie") == "visit=1"


@both_calls
def test_a_given_adapter_is_mounted_for_the_call_and_left_open(
    server: RecordingApp, send: Send
) -> None:
    adapter = CountingAdapter()

    send(server.base_url, transport=adapter)
    send(server.base_url, transport=adapter)

    assert len(adapter.timeouts) == 2
    assert len(server.requests) == 2
    assert not adapter.closed


def test_a_given_adapter_is_mounted_for_https_too() -> None:
    adapter = CannedAdapter()
    request = SubscriptionRequest("news", 30)

    # Port 1 on the loopback refuses: reaching the network would fail the test.
    response = subscription("https://127.0.0.1:1/events", None, request, "", "", adapter)

    assert response.events == EVENTS
    assert [url.split("?")[0] for url in adapter.urls] == ["https://127.0.0.1:1/events"]
    assert not adapter.closed


def test_a_transport_of_another_type_is_refused(server: RecordingApp) -> None:
    with pytest.raises(TypeError, match="transport"):
        send_publish(server.base_url, transport=object())
    assert server.requests == []


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        pytest.param(10, 10.0, id="int-seconds"),
        pytest.param(2.5, 2.5, id="float-seconds"),
        pytest.param(timedelta(seconds=3), 3.0, id="timedelta"),
        pytest.param(timedelta(milliseconds=1500), 1.5, id="timedelta-fraction"),
        pytest.param(0, None, id="zero-means-no-timeout"),
        pytest.param(timedelta(0), None, id="zero-timedelta-means-no-timeout"),
    ],
)
def test_publish_timeout_reaches_the_transport(
    server: RecordingApp, timeout: float | timedelta, expected: float | None
) -> None:
    adapter = CountingAdapter()

    response = publish(
        server.base_url + "/publish", timeout, None, PublishRequest("news", 1), "", "", adapter
    )

    assert response.status_code == 200
    assert adapter.timeouts == [expected]


@pytest.mark.parametrize(
    "timeout",
    [pytest.param(-1, id="seconds"), pytest.param(timedelta(seconds=-1), id="timedelta")],
)
def test_publish_refuses_a_negative_timeout(server: RecordingApp, timeout: Any) -> None:
    request = PublishRequest("news", 1)
    with pytest.raises(ValueError, match="timeout"):
        publish(server.base_url + "/publish", timeout, None, request, "", "", None)
    assert server.requests == []


@pytest.mark.parametrize("timeout_seconds", [1, 60, 110, 0])
def test_subscription_read_timeout_outlasts_the_long_poll(
    server: RecordingApp, timeout_seconds: int
) -> None:
    adapter = CountingAdapter()
    request = SubscriptionRequest("news", timeout_seconds)

    subscription(server.base_url + "/events", None, request, "", "", adapter)

    [(connect_timeout, read_timeout)] = adapter.timeouts
    assert read_timeout == timeout_seconds + SUBSCRIPTION_TIMEOUT_MARGIN_SECONDS
    assert read_timeout > timeout_seconds
    assert connect_timeout == SUBSCRIPTION_TIMEOUT_MARGIN_SECONDS


@both_calls
def test_an_empty_host_means_the_local_machine(server: RecordingApp, send: Send) -> None:
    send(f"http://:{server.port}")

    assert server.only_request.headers.get("Host") == f"127.0.0.1:{server.port}"


def test_events_are_decoded_into_event_objects(server: RecordingApp) -> None:
    server.body = EVENTS_BODY

    response = send_subscription(server.base_url)

    assert response.status_code == 200
    assert response.events == EVENTS
    assert all(isinstance(event, Event) for event in response.events)
    assert response.error is None
    assert response.header["content-type"] == "application/json"


def test_a_long_poll_timeout_is_an_answer_without_events(server: RecordingApp) -> None:
    server.body = TIMEOUT_BODY

    response = send_subscription(server.base_url)

    assert (response.status_code, response.events, response.error) == (200, [], None)


def test_an_error_answer_is_surfaced(server: RecordingApp) -> None:
    server.body = ERROR_BODY

    response = send_subscription(server.base_url)

    assert (response.status_code, response.events, response.error) == (200, [], TIMEOUT_ERROR)


#: The refusal of each answer below: its JSON error, or its plain text; not HTML.
refusals = {403: "forbidden", 405: "Invalid HTTP Method. Only GET allowed."}


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        pytest.param(401, b"", {"WWW-Authenticate": 'Basic realm="events"'}, id="401-from-hook"),
        pytest.param(403, b'{"error": "forbidden"}', {}, id="403-is-not-decoded"),
        pytest.param(405, b'{"error": "Invalid HTTP Method. Only GET allowed."}', {}, id="405"),
        pytest.param(404, b"<html>not found</html>", {}, id="404-not-json"),
        pytest.param(500, b"oops", {}, id="500"),
        pytest.param(204, b"", {}, id="204"),
    ],
)
def test_other_statuses_are_returned_not_raised(
    server: RecordingApp, status: int, body: bytes, headers: dict[str, str]
) -> None:
    server.status, server.body, server.headers = status, body, headers

    response = send_subscription(server.base_url)

    assert (response.status_code, response.events, response.error) == (status, [], None)
    assert response.refusal == refusals.get(status)
    for name, value in headers.items():
        assert response.header[name] == value


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe\xfd", id="not-text"),
        pytest.param(b"[]", id="not-an-object"),
        pytest.param(SUCCESS_BODY, id="publish-answer"),
        pytest.param(b'{"events": "x"}', id="events-not-a-list"),
        pytest.param(b'{"events": [{"timestamp": "x"}]}', id="bad-event"),
        pytest.param(b'{"events": [null]}', id="null-event"),
        pytest.param(b'{"error": 5}', id="error-not-a-string"),
    ],
)
def test_an_undecodable_200_answer_raises_invalid_response(
    server: RecordingApp, body: bytes
) -> None:
    server.body = body

    with pytest.raises(InvalidResponse, match="subscribe answer from http://127.0.0.1") as caught:
        send_subscription(server.base_url)

    assert isinstance(caught.value, ClientError)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, requests.RequestException)
    assert caught.value.response is not None
    assert caught.value.response.status_code == 200


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """A URL on 127.0.0.1 whose port is bound but not listening, so connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@both_calls
def test_a_refused_connection_raises(refusing_url: str, send: Send) -> None:
    with pytest.raises(requests.ConnectionError):
        send(refusing_url)


@both_calls
@pytest.mark.parametrize(
    "url",
    [
        pytest.param("127.0.0.1:8080", id="no-scheme"),
        pytest.param("/relative", id="relative"),
        pytest.param("ftp://127.0.0.1", id="other-scheme"),
        pytest.param("http://", id="no-host"),
        pytest.param("http://[::1", id="broken-ipv6"),
    ],
)
def test_a_bad_url_raises(send: Send, url: str) -> None:
    with pytest.raises(requests.RequestException) as caught:
        send(url)
    assert isinstance(caught.value, ValueError)


def test_publish_raises_when_the_answer_is_late(server: RecordingApp) -> None:
    server.hold = True
    request = PublishRequest("news", 1)

    with pytest.raises(requests.Timeout):
        publish(server.base_url + "/publish", 0.2, None, request, "", "", None)


def test_subscription_raises_when_the_answer_is_late(
    server: RecordingApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.hold = True
    monkeypatch.setattr(client, "SUBSCRIPTION_TIMEOUT_MARGIN_SECONDS", 0.2)

    with pytest.raises(requests.Timeout):
        subscription(
            server.base_url + "/events", None, SubscriptionRequest("news", 0), "", "", None
        )


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(200, SUCCESS_BODY, id="200"),
        pytest.param(400, b'{"error": "Invalid POST body json."}', id="400"),
        pytest.param(401, b"", id="401"),
        pytest.param(413, b'{"error": "too large"}', id="413"),
        pytest.param(500, b"oops", id="500"),
    ],
)
def test_publish_returns_the_response_whatever_its_status(
    server: RecordingApp, status: int, body: bytes
) -> None:
    server.status, server.body = status, body

    response = send_publish(server.base_url)

    assert isinstance(response, requests.Response)
    assert (response.status_code, response.content) == (status, body)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param('{"message": "Hello"}', id="json-text-as-in-the-seed"),
        pytest.param({"message": "Hello", "n": [1, 2]}, id="object"),
        pytest.param([1, "two"], id="array"),
        pytest.param(0, id="zero"),
        pytest.param(False, id="false"),
        pytest.param("", id="empty-string"),
        pytest.param("héllo ✓", id="non-ascii"),
    ],
)
def test_publish_posts_category_and_data_as_json(server: RecordingApp, data: Any) -> None:
    publish(server.base_url + "/publish", 10, None, PublishRequest("news", data), "", "", None)

    recorded = server.only_request
    assert (recorded.method, recorded.path) == ("POST", "/publish")
    assert recorded.headers.get("Content-Type") == "application/json"
    assert json.loads(recorded.body) == {"category": "news", "data": data}


@pytest.mark.parametrize(
    ("request_", "field_name"),
    [
        pytest.param(PublishRequest("", "x"), "category", id="empty-category"),
        pytest.param(PublishRequest(None, "x"), "category", id="no-category"),  # type: ignore[arg-type]
        pytest.param(PublishRequest(5, "x"), "category", id="category-not-a-string"),  # type: ignore[arg-type]
        pytest.param(PublishRequest("news", None), "data", id="null-data"),
    ],
)
def test_publish_validates_the_request_before_sending(
    server: RecordingApp, request_: PublishRequest, field_name: str
) -> None:
    with pytest.raises(ValueError, match=f"publish_request.{field_name}"):
        publish(server.base_url + "/publish", 10, None, request_, "", "", None)
    assert server.requests == []


# --- the extensions: several categories in one request, and gaps --------------------------

GAP = {
    "category": "news",
    "since_time": 1795800310100,
    "last_id": "5d3f9e2a-1b7c-4d8e-9f0a-2b3c4d5e6f70",
}


@pytest.mark.parametrize(
    ("request_", "expected_query"),
    [
        pytest.param(
            SubscriptionRequest("news", 30, categories=["sport", "weather"]),
            [("category", "news"), ("categories", "sport"), ("categories", "weather"),
             ("timeout", "30")],
            id="category-and-categories",
        ),
        pytest.param(
            SubscriptionRequest("", 30, categories=("sport", "weather")),
            [("categories", "sport"), ("categories", "weather"), ("timeout", "30")],
            id="empty-category-is-left-out",
        ),
        pytest.param(
            SubscriptionRequest("news", 30, 1795800310214, "x", categories=["a b&c=d"]),
            [("category", "news"), ("categories", "a b&c=d"), ("timeout", "30"),
             ("since_time", "1795800310214"), ("last_id", "x")],
            id="with-a-cursor-and-escaped",
        ),
        pytest.param(
            SubscriptionRequest("", 30),
            [("category", ""), ("timeout", "30")],
            id="no-categories-sends-category-even-empty",
        ),
    ],
)
def test_subscription_sends_each_category_as_one_categories_parameter(
    server: RecordingApp, request_: SubscriptionRequest, expected_query: list[tuple[str, str]]
) -> None:
    subscription(server.base_url + "/events", None, request_, "", "", None)

    assert server.only_request.query == expected_query


def test_no_categories_leaves_the_query_as_golongpolls(server: RecordingApp) -> None:
    subscription(server.base_url + "/events", None, SubscriptionRequest("news", 30), "", "", None)
    subscription(
        server.base_url + "/events", None, SubscriptionRequest("news", 30, categories=[]), "", "",
        None,
    )

    first, second = server.requests
    assert first.query == second.query == [("category", "news"), ("timeout", "30")]


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        pytest.param("sport", "not a single str", id="a-bare-string"),
        pytest.param(b"sport", "not a single bytes", id="bytes"),
        pytest.param(["sport", 5], "must hold str", id="not-a-string-inside"),
    ],
)
def test_bad_categories_raise_before_sending(
    server: RecordingApp, categories: Any, message: str
) -> None:
    request = SubscriptionRequest("news", 30, categories=categories)

    with pytest.raises(TypeError, match=message):
        subscription(server.base_url + "/events", None, request, "", "", None)
    assert server.requests == []


@pytest.mark.parametrize(
    ("body", "events", "timestamp"),
    [
        pytest.param(
            EVENTS_BODY[:-1] + b',"gaps":[' + json.dumps(GAP).encode() + b"]}",
            EVENTS, None, id="with-events",
        ),
        pytest.param(
            TIMEOUT_BODY[:-1] + b',"gaps":[' + json.dumps(GAP).encode() + b"]}",
            [], 1795800310167, id="with-a-timeout",
        ),
    ],
)
def test_gaps_are_decoded_from_events_and_timeout_answers(
    server: RecordingApp, body: bytes, events: list[Event], timestamp: int | None
) -> None:
    server.body = body

    response = send_subscription(server.base_url)

    assert response.gaps == [Gap("news", 1795800310100, "5d3f9e2a-1b7c-4d8e-9f0a-2b3c4d5e6f70")]
    assert (response.events, response.timestamp, response.error) == (events, timestamp, None)


@pytest.mark.parametrize("body", [EVENTS_BODY, TIMEOUT_BODY, ERROR_BODY],
                         ids=["events", "timeout", "error"])
def test_an_answer_without_gaps_has_none(server: RecordingApp, body: bytes) -> None:
    server.body = body

    assert send_subscription(server.base_url).gaps == []


@pytest.mark.parametrize(
    "gaps",
    [
        pytest.param(b'"news"', id="not-a-list"),
        pytest.param(b"[null]", id="null-gap"),
        pytest.param(b'[{"category": "news", "since_time": "1", "last_id": "x"}]', id="str-time"),
        pytest.param(b'[{"category": "", "since_time": 1, "last_id": "x"}]', id="no-category"),
        pytest.param(b'[{"category": "news", "since_time": 1}]', id="no-last-id"),
    ],
)
def test_an_invalid_gap_raises_invalid_response(server: RecordingApp, gaps: bytes) -> None:
    server.body = EVENTS_BODY[:-1] + b',"gaps":' + gaps + b"}"

    with pytest.raises(InvalidResponse, match="gap"):
        send_subscription(server.base_url)


def test_several_categories_and_gaps_against_the_real_server() -> None:
    live = Server(max_event_buffer_size=2, access_log=False)
    live.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=5))
    try:
        url = f"http://127.0.0.1:{live.port}/events"
        published = [live.manager.publish(category, n) for n, category in enumerate("abcab")]
        # Two events a category: nothing is dropped yet. A cursor just after event 0
        # gets the rest, in publish order across the three categories.
        first = published[0]
        request = SubscriptionRequest("a", 5, first.timestamp, first.id, categories=["b", "c"])
        answer = subscription(url, None, request, "", "", None)
        assert (answer.events, answer.gaps) == (published[1:], [])

        newer = [live.manager.publish("a", n) for n in (5, 6)]  # drops 0 (seen) and 3
        answer = subscription(url, None, request, "", "", None)
        assert answer.events == published[1:3] + [published[4]] + newer
        assert answer.gaps == [Gap("a", published[3].timestamp, published[3].id)]
    finally:
        live.stop(5)
