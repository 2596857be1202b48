"""Property tests over the subscribe query string and the publish body.

Whatever a client sends, it gets a well-formed JSON answer with one of the protocol's
status codes, and an event that is accepted is served back exactly as it was sent.

``make test`` runs a bounded, derandomized (fixed-seed) number of examples;
``make fuzz`` (``WSGI_LONGPOLL_FUZZ=long``) runs many more, with fresh randomness.
"""

from __future__ import annotations

import io
import json
import math
import os
import urllib.parse
import uuid
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wsgi_longpoll import LongpollManager, LongpollMiddleware
from wsgi_longpoll.protocol import (
    CATEGORY_ERROR,
    LAST_ID_ERROR,
    LAST_ID_WITHOUT_SINCE_TIME_ERROR,
    PUBLISH_BODY_ERROR,
    PUBLISH_CATEGORY_ERROR,
    PUBLISH_DATA_ERROR,
    SINCE_TIME_ERROR,
    _parse_go_int,
    category_is_valid,
    parse_publish_body,
    query_pairs,
    timeout_error,
    too_many_categories_error,
)

settings.register_profile(
    "bounded", max_examples=150, derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long", max_examples=20_000, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: ``bounded`` (the default: fixed seed, few examples) or ``long`` (``make fuzz``).
PROFILE = settings.get_profile(os.environ.get("WSGI_LONGPOLL_FUZZ", "bounded"))

MAX_TIMEOUT = 30
MAX_BODY = 64 * 1024
SUBSCRIBE_ERRORS = {
    timeout_error(MAX_TIMEOUT), CATEGORY_ERROR, SINCE_TIME_ERROR,
    LAST_ID_WITHOUT_SINCE_TIME_ERROR, LAST_ID_ERROR,
    too_many_categories_error(LongpollMiddleware.default_max_categories_per_request),
}
PUBLISH_ERRORS = {PUBLISH_BODY_ERROR, PUBLISH_CATEGORY_ERROR, PUBLISH_DATA_ERROR}


def not_found(environ: Any, start_response: Any) -> Iterable[bytes]:
    raise AssertionError("only the long-poll paths are fuzzed")


def make_app() -> tuple[LongpollMiddleware, LongpollManager]:
    manager = LongpollManager(MAX_TIMEOUT, max_event_buffer_size=5)
    for n in range(3):
        manager.publish("c", {"n": n})
    # Drained: a subscriber is answered at once, with what the buffer holds after its
    # cursor or a timeout answer, so that no example waits.
    manager.drain()
    return LongpollMiddleware(not_found, manager, max_body_size=MAX_BODY), manager


def call(
    app: LongpollMiddleware, method: str, path: str, query: bytes = b"", body: bytes = b"",
    **environ: Any,
) -> tuple[int, dict[str, str], bytes]:
    """Call *app* as a WSGI server would; the query string arrives latin-1 decoded."""
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = status, headers
        return lambda data: None

    full_environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query.decode("latin-1"),
        "CONTENT_LENGTH": str(len(body)) if body else "", "wsgi.input": io.BytesIO(body),
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
        **environ,
    }
    chunks = b"".join(app(full_environ, start_response))
    headers = dict(captured["headers"])
    if method == "HEAD":  # the length GET would have had, and no body
        assert chunks == b""
        return int(captured["status"].split()[0]), headers, chunks
    assert int(headers["Content-Length"]) == len(chunks)
    return int(captured["status"].split()[0]), headers, chunks


# -- the subscribe query string ----------------------------------------------------------

NAMES = st.sampled_from(
    ["timeout", "category", "categories", "since_time", "last_id", "TIMEOUT", "cat", ""]
)
HUGE = st.sampled_from(
    ["9" * 30, "-" + "9" * 30, str(2**63), str(2**63 - 1), str(-(2**63)), str(-(2**63) - 1),
     "1e3", "0x10", "+5", "-0", " 5", "5 ", "٥", "１", "10.0", "NaN", "inf"]
)
VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    HUGE,
    st.uuids().map(str),
    st.uuids().map(lambda value: "{" + str(value).upper() + "}"),
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x20), max_size=5),
    st.just("a" * 1024), st.just("a" * 1025), st.just("é" * 512), st.just("é" * 513),
)


def encode_pairs(pairs: list[tuple[str, str]]) -> bytes:
    return urllib.parse.urlencode(pairs).encode("ascii")


RAW_QUERY = st.binary(max_size=300)
PAIRS_QUERY = st.lists(st.tuples(NAMES, VALUES), max_size=8).map(encode_pairs)
# Percent-escapes of arbitrary bytes: invalid UTF-8, NUL, lone continuation bytes.
ESCAPED_QUERY = st.lists(
    st.tuples(NAMES, st.binary(max_size=12)), max_size=6
).map(lambda pairs: "&".join(
    f"{name}={urllib.parse.quote_from_bytes(value)}" for name, value in pairs
).encode("ascii"))


def check_subscribe_answer(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-cache, no-store, must-revalidate"
    document = json.loads(body)
    if "error" in document:
        assert set(document) == {"error"}
        assert document["error"] in SUBSCRIBE_ERRORS
    elif "events" in document:
        assert set(document) <= {"events", "gaps"}
        assert document["events"]
        for event in document["events"]:
            assert list(event) == ["timestamp", "category", "data", "id"]
            assert event["category"] == "c"
            assert uuid.UUID(event["id"])
    else:
        assert set(document) - {"gaps"} == {"timeout", "timestamp"}
        assert document["timeout"] == "no events before timeout"
        assert isinstance(document["timestamp"], int)


@PROFILE
@given(query=st.one_of(RAW_QUERY, PAIRS_QUERY, ESCAPED_QUERY))
@example(query=b"timeout=5&category=c&since_time=0")
@example(query=b"timeout=5&timeout=999&category=c&category=d&since_time=0&since_time=x")
@example(query=b"timeout=5&category=%00&since_time=%ff%fe")
@example(query=b"timeout=5&category=c&since_time=" + b"9" * 5000)
@example(query=b"timeout=5&category=c&since_time=0&last_id=" + b"%C3%A9" * 100)
@example(query=b"timeout=5&" + b"categories=x&" * 100)
def test_any_query_string_gets_a_protocol_answer(query: bytes) -> None:
    app, _ = make_app()
    check_subscribe_answer(*call(app, "GET", "/events", query))


@PROFILE
@given(query=st.one_of(RAW_QUERY, PAIRS_QUERY, ESCAPED_QUERY).map(
    lambda raw: raw.decode("latin-1")))
@example(query="a&&b=&=c&d=e=f&&")
@example(query="a=b+c&%41=1")
def test_query_pairs_are_parse_qsls(query: str) -> None:
    assert query_pairs(query) == urllib.parse.parse_qsl(
        query, keep_blank_values=True, errors="surrogateescape")


def _go_atoi_int64(text: str) -> int | None:
    """Go's ``strconv.ParseInt(text, 10, 64)``, spelled out."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or any(char not in "0123456789" for char in digits):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


@PROFILE
@given(text=st.one_of(
    st.text(max_size=25),
    st.text(alphabet="0123456789+-", max_size=25),
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
))
@example(text="9223372036854775807")
@example(text="9223372036854775808")
@example(text="000000000000000000000000001")
@example(text="\u0663")  # ARABIC-INDIC DIGIT THREE: a digit, not an ASCII one
def test_go_integers_parse_as_go_parses_them(text: str) -> None:
    assert _parse_go_int(text) == _go_atoi_int64(text)


@PROFILE
@given(category=st.text(max_size=1100) | st.text(alphabet="ab", min_size=1020, max_size=1030))
def test_a_category_is_valid_when_1_to_1024_bytes_of_utf8(category: str) -> None:
    size = len(category.encode("utf-8", "surrogatepass"))
    assert category_is_valid(category) == (0 < size <= 1024)


@PROFILE
@given(method=st.sampled_from(["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "G\x00T"]),
       query=PAIRS_QUERY)
def test_other_methods_on_the_subscription_path_get_405_json(method: str, query: bytes) -> None:
    app, _ = make_app()
    status, headers, body = call(app, method, "/events", query)
    assert status == 405
    assert headers["Allow"] == "GET"
    if method != "HEAD":
        assert json.loads(body) == {"error": "Invalid HTTP Method. Only GET allowed."}


# -- the publish body --------------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.booleans(), st.none(),
    st.integers(min_value=-(2**100), max_value=2**100),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["\x00", "\ud800", "\udfff", "\u2028", "é", "😀", "\\", '"']),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=25,
)
CATEGORIES = st.one_of(st.sampled_from(["c", "é" * 512, "a" * 1024, "\x00", "\ud800"]),
                       st.text(min_size=1, max_size=20))


@st.composite
def publish_documents(draw: st.DrawFn) -> bytes:
    """JSON text of a publish body: sometimes valid, sometimes subtly not."""
    members: list[tuple[str, Any]] = []
    if draw(st.booleans()):
        members.append(("category", draw(st.one_of(CATEGORIES, JSON_VALUES))))
    if draw(st.booleans()) or not members:
        members.append(("data", draw(JSON_VALUES)))
    members += draw(st.lists(st.tuples(st.sampled_from(["category", "data", "x"]), JSON_VALUES),
                             max_size=2))  # duplicated keys: the last one counts
    members = draw(st.permutations(members))
    text = "{" + ",".join(
        f"{json.dumps(name)}:{json.dumps(value, ensure_ascii=draw(st.booleans()))}"
        for name, value in members
    ) + "}"
    return text.encode("utf-8", "surrogatepass")


def deeply_nested(depth: int) -> bytes:
    return b'{"category":"c","data":' + b"[" * depth + b"]" * depth + b"}"


BODIES = st.one_of(
    publish_documents(),
    st.binary(max_size=200),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.integers(min_value=1, max_value=50_000).map(deeply_nested),
    st.sampled_from([
        b'{"category":"c","data":1e400}', b'{"category":"c","data":-1e400}',
        b'{"category":"c","data":NaN}', b'{"category":"c","data":Infinity}',
        b'{"category":"c","data":' + b"9" * 5000 + b"}",
        b'{"category":"c","data":1}\x00', b'\xef\xbb\xbf{"category":"c","data":1}',
        b'{"category":"c","data":"\xff"}', b'{"category":"c\x00","data":0}',
        b"\x00" * 100, b"{" * 10_000, b'{"category":"c","data":1,"data":null}',
    ]),
)


def check_publish_answer(
    app: LongpollMiddleware, manager: LongpollManager, body: bytes, status: int,
    headers: dict[str, str], answer: bytes,
) -> None:
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert status in (200, 400, 413)
    if status == 200:
        assert answer == b'{"success": true}'
        sent = json.loads(body.decode("utf-8"))  # the last duplicate wins, as in Go
        served = manager.buffered_events(sent["category"])[-1]
        assert served.category == sent["category"]
        assert served.data == sent["data"]
        assert not contains_non_finite(served.data)
        # What a subscriber reads back is what was sent.
        query = urllib.parse.urlencode(
            {"timeout": 1, "category": sent["category"], "since_time": served.timestamp - 1},
            encoding="utf-8", errors="surrogatepass",
        ).encode("ascii")
        code, _, events_answer = call(app, "GET", "/events", query)
        if sent["category"].encode("utf-8", "surrogatepass").decode("utf-8", "replace") == (
            sent["category"]
        ):  # a category that can be named in a URL
            events = json.loads(events_answer)["events"]
            assert events[-1]["data"] == sent["data"]
            assert events[-1]["id"] == served.id
        return
    document = json.loads(answer)
    assert set(document) == {"error"}
    if status == 400:
        assert document["error"] in PUBLISH_ERRORS
        with pytest.raises(ValueError):
            parse_publish_body(body)
    else:
        assert len(body) > MAX_BODY


def contains_non_finite(value: Any) -> bool:
    stack = [value]  # not recursive: an accepted value may be nested ~1000 deep
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return False


@PROFILE
@given(body=BODIES)
@example(body=b'{"category":"c","data":{"a":1,"a":2}}')
@example(body=b'{"data":0,"category":"c"}')
@example(body=b'{"category":"c","data":false}')
@example(body=b'{"category":"c","data":""}')
@example(body=b'{"category":"c","data":123456789012345678901234567890}')
@example(body=b'{"category":"c","data":"\\u0000\\ud800"}')
@example(body=b'{"category":"c","data":1e400}')
@example(body=b'{"category":"\\ud800"}')
@example(body=b'{"category":"\\ud800\\udc80","data":1}')
@example(body=deeply_nested(100_000))
@example(body=deeply_nested(510))
@example(body=deeply_nested(511))
@example(body=deeply_nested(1985))
@example(body=b'{"category":"c","data":"' + b"x" * MAX_BODY + b'"}')
def test_any_publish_body_gets_a_protocol_answer_and_accepted_events_are_unaltered(
    body: bytes,
) -> None:
    app, manager = make_app()
    status, headers, answer = call(app, "POST", "/publish", body=body)
    check_publish_answer(app, manager, body, status, headers, answer)


@PROFILE
@given(body=BODIES, declared=st.sampled_from(["-1", "abc", "1e3", "99999999999999999999", ""]))
def test_a_lying_content_length_gets_json(body: bytes, declared: str) -> None:
    app, _ = make_app()
    status, headers, answer = call(app, "POST", "/publish", body=body, CONTENT_LENGTH=declared)
    assert status in (200, 400, 413)
    assert headers["Content-Type"] == "application/json"
    assert "success" in json.loads(answer) or "error" in json.loads(answer)


@PROFILE
@given(body=BODIES)
def test_a_chunked_body_is_read_whole(body: bytes) -> None:
    """A body without Content-Length (chunked, ``wsgi.input_terminated``) reads the same."""
    app, manager = make_app()
    status, headers, answer = call(app, "POST", "/publish", body=b"", CONTENT_LENGTH="",
                                   **{"wsgi.input": io.BytesIO(body),
                                      "wsgi.input_terminated": True})
    check_publish_answer(app, manager, body, status, headers, answer)


@pytest.mark.parametrize(("depth", "status"), [(511, 200), (512, 400), (1985, 400)],
                         ids=["deepest-accepted", "one-deeper", "decodable-not-encodable"])
def test_nesting_depth_is_bounded_whatever_the_stack(depth: int, status: int) -> None:
    app, manager = make_app()
    # The object holding "data" is level 1: data nested `depth` deep reaches depth + 1.
    assert call(app, "POST", "/publish", body=deeply_nested(depth))[0] == status


def test_infinite_numbers_are_refused_as_golongpoll_does() -> None:
    app, manager = make_app()
    for body in (b'{"category":"x","data":1e400}', b'{"category":"x","data":[-1e999]}'):
        status, _, answer = call(app, "POST", "/publish", body=body)
        assert (status, json.loads(answer)) == (400, {"error": PUBLISH_BODY_ERROR})
    assert manager.buffered_events("x") == []


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, [1, {"a": math.inf}]],
                         ids=["inf", "-inf", "nan", "nested"])
def test_publishing_a_non_finite_number_from_python_raises(value: Any) -> None:
    manager = LongpollManager()
    with pytest.raises(ValueError, match="JSON"):
        manager.publish("c", value)
    assert manager.buffered_events("c") == []
