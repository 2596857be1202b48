"""The protocol module: validation order, limits and exact bodies of PROTOCOL.md."""

from __future__ import annotations

import json

import pytest

from wsgi_longpoll.event import Event
from wsgi_longpoll.protocol import (
    ProtocolError,
    canonical_uuid,
    error_body,
    events_body,
    parse_publish_body,
    parse_subscribe_query,
    timeout_body,
)

UUID = "0414d492-e103-4154-8986-3ecf755168eb"
TIMEOUT_ERROR = "Invalid or missing 'timeout' arg.  Must be 1-110."
CATEGORY_ERROR = "Invalid subscription category, must be 1-1024 characters long."
SINCE_TIME_ERROR = "Invalid 'since_time' arg."
LAST_ID_NEEDS_SINCE_TIME = "Must provide 'since_time' arg when providing 'last_id'."
LAST_ID_ERROR = "Param 'last_id' was not a valid UUID."


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("category=a", TIMEOUT_ERROR),
        ("timeout=&category=a", TIMEOUT_ERROR),
        ("timeout=0&category=a", TIMEOUT_ERROR),
        ("timeout=111&category=a", TIMEOUT_ERROR),
        ("timeout=-1&category=a", TIMEOUT_ERROR),
        ("timeout=1.5&category=a", TIMEOUT_ERROR),
        ("timeout=%205&category=a", TIMEOUT_ERROR),
        ("timeout=1_0&category=a", TIMEOUT_ERROR),
        ("timeout=99999999999999999999999&category=a", TIMEOUT_ERROR),
        ("timeout=5", CATEGORY_ERROR),
        ("timeout=5&category=", CATEGORY_ERROR),
        ("timeout=5&category=" + "a" * 1025, CATEGORY_ERROR),
        ("timeout=5&category=" + "%C3%A9" * 513, CATEGORY_ERROR),
        ("timeout=5&category=a&since_time=", SINCE_TIME_ERROR),
        ("timeout=5&category=a&since_time=abc", SINCE_TIME_ERROR),
        ("timeout=5&category=a&since_time=1.0", SINCE_TIME_ERROR),
        ("timeout=5&category=a&since_time=9223372036854775808", SINCE_TIME_ERROR),
        ("timeout=5&category=a&last_id=" + UUID, LAST_ID_NEEDS_SINCE_TIME),
        ("timeout=5&category=a&since_time=1&last_id=nope", LAST_ID_ERROR),
        ("timeout=5&category=a&since_time=1&last_id=" + UUID[:-1], LAST_ID_ERROR),
        # the first rule broken answers, in golongpoll's order
        ("timeout=0&category=&since_time=x", TIMEOUT_ERROR),
        ("timeout=5&category=&since_time=x", CATEGORY_ERROR),
        ("timeout=5&category=a&since_time=x&last_id=nope", SINCE_TIME_ERROR),
        ("timeout=5&category=a&last_id=nope", LAST_ID_NEEDS_SINCE_TIME),
    ],
    ids=lambda value: value[:60] if isinstance(value, str) else None,
)
def test_invalid_subscribe_query_gets_the_first_broken_rule(query: str, message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_subscribe_query(query, 110)
    assert str(caught.value) == message


def test_timeout_error_names_the_servers_maximum() -> None:
    with pytest.raises(ProtocolError, match=r"Must be 1-30\.$"):
        parse_subscribe_query("timeout=31&category=a", 30)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("timeout=5&category=a", ("a", 5, None, None)),
        ("timeout=%2B5&category=a", ("a", 5, None, None)),
        ("timeout=110&category=a", ("a", 110, None, None)),
        ("timeout=1&category=" + "a" * 1024, ("a" * 1024, 1, None, None)),
        ("timeout=1&category=%C3%A9", ("\u00e9", 1, None, None)),
        ("timeout=5&category=a&since_time=-5", ("a", 5, -5, None)),
        ("timeout=5&category=a&since_time=%2B7", ("a", 5, 7, None)),
        ("timeout=5&category=a&since_time=0", ("a", 5, 0, None)),
        ("timeout=5&category=a&since_time=1&last_id=", ("a", 5, 1, None)),
        ("timeout=5&category=a&last_id=", ("a", 5, None, None)),
        ("timeout=5&category=a&since_time=1&last_id=" + UUID.upper(), ("a", 5, 1, UUID)),
        ("timeout=5&category=a&since_time=1&last_id=urn:uuid:" + UUID, ("a", 5, 1, UUID)),
        ("timeout=5&category=a&since_time=1&last_id={" + UUID + "}", ("a", 5, 1, UUID)),
        ("timeout=5&category=a&since_time=1&last_id=" + UUID.replace("-", ""), ("a", 5, 1, UUID)),
        ("timeout=5&timeout=500&category=a&category=b", ("a", 5, None, None)),
        ("category=a+b&timeout=5", ("a b", 5, None, None)),
    ],
    ids=lambda value: value[:60] if isinstance(value, str) else None,
)
def test_valid_subscribe_query(query: str, expected: tuple[object, ...]) -> None:
    parsed = parse_subscribe_query(query, 110)
    assert (parsed.categories, parsed.timeout, parsed.since_time, parsed.last_id) == (
        (expected[0],), *expected[1:]
    )


@pytest.mark.parametrize(
    "text", ["{" + UUID, UUID + "}", "urn:uuid:{" + UUID + "}", UUID[:8] + UUID[9:], ""]
)
def test_canonical_uuid_rejects_forms_go_rejects(text: str) -> None:
    assert canonical_uuid(text) is None


BODY_ERROR = "Invalid POST body json."
PUBLISH_CATEGORY_ERROR = "Invalid or missing 'category' arg, must be 1-1024 characters long."
DATA_ERROR = "Invalid or missing 'data' arg, must be non-nil."


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", BODY_ERROR),
        (b"not json", BODY_ERROR),
        (b"[1, 2]", BODY_ERROR),
        (b'"text"', BODY_ERROR),
        (b'{"category": 5, "data": 1}', BODY_ERROR),
        (b'{"category": null, "data": 1}', BODY_ERROR),
        (b'{"category": "a", "data": NaN}', BODY_ERROR),
        (b'{"category": "a", "data": Infinity}', BODY_ERROR),
        (b'\xff\xfe{"category": "a", "data": 1}', BODY_ERROR),
        (b'{"category": "a", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", BODY_ERROR),
        (b'{"category": "a", "data": 1' + b"0" * 5000 + b"}", BODY_ERROR),
        (b'{"data": 1}', PUBLISH_CATEGORY_ERROR),
        (b'{"category": "", "data": 1}', PUBLISH_CATEGORY_ERROR),
        (b'{"category": "' + b"a" * 1025 + b'", "data": 1}', PUBLISH_CATEGORY_ERROR),
        (b'{"category": "a"}', DATA_ERROR),
        (b'{"category": "a", "data": null}', DATA_ERROR),
        (b'{"data": null}', PUBLISH_CATEGORY_ERROR),
    ],
    ids=lambda value: value[:40].decode("latin-1") if isinstance(value, bytes) else None,
)
def test_invalid_publish_body(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_publish_body(body)
    assert str(caught.value) == message


@pytest.mark.parametrize("data", [0, False, "", {}, [], {"a": [1, 2.5, None]}, "\u00e9\U0001f600"])
def test_falsy_and_structured_data_are_valid(data: object) -> None:
    body = json.dumps({"category": "c", "data": data}).encode()
    assert parse_publish_body(body).data == data


def test_bodies_have_golongpolls_exact_bytes() -> None:
    assert error_body("x") == b'{"error": "x"}'
    assert timeout_body(1795800310167) == (
        b'{"timeout":"no events before timeout","timestamp":1795800310167}'
    )
    event = Event(1795800310214, "foo", UUID, "hello world")
    assert events_body([event]) == (
        b'{"events":[{"timestamp":1795800310214,"category":"foo","data":"hello world",'
        b'"id":"' + UUID.encode() + b'"}]}'
    )


def test_event_json_round_trips_any_accepted_value() -> None:
    data = {"lone": "\ud800", "text": "\u00e9", "n": 10**30, "nested": [{"x": []}]}
    event = Event(1, "c\u00e9", UUID, data)
    decoded = json.loads(event.to_json())
    assert decoded == {"timestamp": 1, "category": "c\u00e9", "data": data, "id": UUID}
    assert list(decoded) == ["timestamp", "category", "data", "id"]


def test_new_event_ids_are_canonical_random_uuids() -> None:
    import uuid

    from wsgi_longpoll.event import new_event_id

    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # canonical, lower case
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_a_forked_child_never_hands_out_its_parents_next_event_ids() -> None:
    import os

    from wsgi_longpoll.event import new_event_id

    new_event_id()  # the random bytes of the next ids are read already
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids to the parent, then out at once
        try:
            os.write(write_end, ",".join(new_event_id() for _ in range(10)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            child = set(pipe.read().decode().split(","))
    finally:
        os.waitpid(pid, 0)
    parent = {new_event_id() for _ in range(10)}
    assert len(child) == 10
    assert not child & parent
