"""Tests of the Follower: resume, dedupe, back off, stop; scripted and over real sockets."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest
import requests
from conftest import publish_concurrently, wait_until
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from werkzeug.wrappers import Request, Response

from wsgi_longpoll import FilePersistorInfo, Server, ServerInfo
from wsgi_longpoll.client.api import PublishRequest, SubscriptionRequest, publish, subscription
from wsgi_longpoll.client.follower import (
    Backoff,
    Cursor,
    Follower,
    GapDetected,
    SubscriptionRejected,
)
from wsgi_longpoll.engines import MemoryEngine
from wsgi_longpoll.event import Event, Gap

URL = "http://127.0.0.1:9/events"  # never reached: the scripted tests use an adapter

# --- a scripted transport: canned answers, and a record of every query sent ---------------

Answer = bytes | int | Exception  # a 200 body, a bare status, or an exception to raise


def events_body(*events: tuple[int, str]) -> bytes:
    records = [{"timestamp": t, "category": "news", "data": f"{t}/{i}", "id": i} for t, i in events]
    return json.dumps({"events": records}).encode()


def timeout_body(timestamp: int) -> bytes:
    return json.dumps({"timeout": "no events before timeout", "timestamp": timestamp}).encode()


class ScriptedAdapter(BaseAdapter):
    """Answers each request with the next scripted answer; stops the follower when done."""

    def __init__(self, answers: list[Answer]) -> None:
        super().__init__()
        self.answers = list(answers)
        self.sent: list[requests.PreparedRequest] = []
        self.follower: Follower | None = None

    @property
    def queries(self) -> list[dict[str, str]]:
        return [
            {name: values[0] for name, values in parse_qs(urlsplit(r.url or "").query).items()}
            for r in self.sent
        ]

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(request)
        if not self.answers:
            assert self.follower is not None
            self.follower.stop()
            raise requests.ConnectionError("the script is over")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        response = requests.Response()
        response.status_code = 200 if isinstance(answer, bytes) else answer
        response._content = answer if isinstance(answer, bytes) else b"{}"
        response.headers = CaseInsensitiveDict({"Content-Type": "application/json"})
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        pass


class FakeClock:
    """Stands in for the follower's pauses: records them and moves time on, never sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []
        self.on_pause: Callable[[], None] | None = None

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds
        if self.on_pause is not None:
            self.on_pause()


def scripted(
    answers: list[Answer], clock: FakeClock | None = None, **options: Any
) -> tuple[Follower, ScriptedAdapter]:
    adapter = ScriptedAdapter(answers)
    follower = Follower(
        URL, "news", transport=adapter, sleep=(clock or FakeClock()).sleep, **options
    )
    adapter.follower = follower
    return follower, adapter


def ids(events: list[Event]) -> list[str]:
    return [event.id for event in events]


# --- Backoff and Cursor --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "ceiling"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (10_000, 30.0)],
    ids=["first", "second", "third", "sixth", "capped", "huge-exponent"],
)
def test_backoff_ceiling_grows_exponentially_up_to_the_maximum(
    failures: int, ceiling: float
) -> None:
    assert Backoff().ceiling(failures) == ceiling


def test_backoff_draws_the_pause_from_zero_to_the_ceiling() -> None:
    draws = iter([0.0, 0.5, 0.999])
    backoff = Backoff(initial_seconds=2, maximum_seconds=8, random=lambda: next(draws))
    assert [backoff.delay(3), backoff.delay(3), backoff.delay(3)] == [0.0, 4.0, 8 * 0.999]


@pytest.mark.parametrize(
    "options",
    [
        {"initial_seconds": 0},
        {"initial_seconds": 2, "maximum_seconds": 1},
        {"multiplier": 0.5},
        {"initial_seconds": float("nan")},
    ],
    ids=["zero-initial", "maximum-below-initial", "shrinking", "nan"],
)
def test_backoff_refuses_bad_settings(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**options)


def test_cursor_round_trips_through_json() -> None:
    cursor = Cursor(1795800310214, "0414d492-e103-4154-8986-3ecf755168eb")
    assert Cursor.from_dict(json.loads(json.dumps(cursor.to_dict()))) == cursor


@pytest.mark.parametrize(
    "value",
    [None, {}, {"since_time": "1"}, {"since_time": 1, "last_id": 2}, [1, "x"]],
    ids=["none", "empty", "str-time", "int-id", "list"],
)
def test_cursor_from_dict_refuses_what_is_not_a_cursor(value: Any) -> None:
    with pytest.raises(ValueError):
        Cursor.from_dict(value)


@pytest.mark.parametrize(
    ("args", "options", "error"),
    [
        (("", "news"), {}, ValueError),
        ((URL, ""), {}, ValueError),
        ((URL, "news"), {"timeout_seconds": 0}, ValueError),
        ((URL, "news"), {"timeout_seconds": 1.5}, TypeError),
        ((URL, "news"), {"start": "yesterday"}, TypeError),
        ((URL, "news"), {"start": True}, TypeError),
        ((URL, "news"), {"transport": "a session"}, TypeError),
    ],
    ids=["no-url", "no-category", "zero-timeout", "float-timeout", "str-start", "bool-start",
         "bad-transport"],
)
def test_follower_refuses_bad_arguments(
    args: tuple[str, str], options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        follower = Follower(*args, **options)
        list(follower)  # a bad transport is found on the first poll


# --- what each poll asks for, against a scripted server ------------------------------------


def test_cursor_follows_the_last_event_and_survives_timeouts() -> None:
    follower, adapter = scripted([
        timeout_body(1000),                       # from now: nothing yet
        events_body((1001, "a"), (1001, "b")),
        timeout_body(5000),                       # keep the cursor, do not jump to 5000
        events_body((1002, "c")),
    ])
    received = list(follower)
    assert ids(received) == ["a", "b", "c"]
    assert adapter.queries == [
        {"category": "news", "timeout": "45"},
        {"category": "news", "timeout": "45", "since_time": "999"},
        {"category": "news", "timeout": "45", "since_time": "1001", "last_id": "b"},
        {"category": "news", "timeout": "45", "since_time": "1001", "last_id": "b"},
        {"category": "news", "timeout": "45", "since_time": "1002", "last_id": "c"},
    ]
    assert follower.cursor == Cursor(1002, "c")


@pytest.mark.parametrize(
    ("start", "first_query"),
    [
        (None, {}),
        (0, {"since_time": "-1"}),
        (1795800310214, {"since_time": "1795800310214"}),
        (Cursor(1795800310214, "x"), {"since_time": "1795800310214", "last_id": "x"}),
    ],
    ids=["now", "everything", "timestamp", "saved-cursor"],
)
def test_start_sets_the_first_query(
    start: Cursor | int | None, first_query: dict[str, str]
) -> None:
    follower, adapter = scripted([], start=start, timeout_seconds=30)
    assert list(follower) == []
    assert adapter.queries[0] == {"category": "news", "timeout": "30", **first_query}


def test_events_the_server_sends_again_are_not_handed_out_twice() -> None:
    # A server that lost last_id (evicted, restarted without persistence) answers with
    # every event of the cursor's millisecond again, and an old server may even send
    # older events.
    follower, _ = scripted([
        events_body((7, "a"), (7, "b")),
        events_body((6, "z"), (7, "a"), (7, "b"), (7, "c"), (8, "d")),
        events_body((8, "d"), (8, "e")),
    ], start=Cursor(7, "x"))
    assert ids(list(follower)) == ["a", "b", "c", "d", "e"]


def test_a_server_that_lost_last_id_is_asked_after_an_event_it_still_has() -> None:
    # x was handed out, then lost in a restart; the server answers with a and b, which
    # came before x in the same millisecond. Asking after x again would get them again.
    follower, adapter = scripted([
        events_body((7, "a"), (7, "b"), (7, "x")),
        events_body((7, "a"), (7, "b")),
        events_body((8, "c")),
    ])
    assert ids(list(follower)) == ["a", "b", "x", "c"]
    assert [query.get("last_id") for query in adapter.queries[1:4]] == ["x", "b", "c"]


def test_timeouts_repoll_at_once_and_errors_back_off_with_jitter_then_reset() -> None:
    clock = FakeClock()
    follower, adapter = scripted(
        [
            timeout_body(10), timeout_body(20),
            requests.ConnectionError("refused"), 503, b"not json", 502,
            events_body((30, "a")),
            timeout_body(40),
            requests.Timeout("no answer"),
            events_body((50, "b")),
        ],
        clock,
        backoff=Backoff(initial_seconds=1, maximum_seconds=5, random=lambda: 0.75),
    )
    assert ids(list(follower)) == ["a", "b"]
    # Four errors in a row: ceilings 1, 2, 4, then 5 (capped); then one after the reset.
    assert clock.pauses == [0.75, 1.5, 3.0, 3.75, 0.75, 0.75]
    assert len(adapter.sent) == 11


def test_pauses_stay_within_the_full_jitter_bounds() -> None:
    import random

    clock = FakeClock()
    backoff = Backoff(initial_seconds=0.25, maximum_seconds=4, random=random.Random(5).random)
    follower, _ = scripted([requests.ConnectionError("down")] * 40, clock, backoff=backoff)
    assert list(follower) == []
    assert len(clock.pauses) == 41  # the 41st error is the end of the script
    for failures, pause in enumerate(clock.pauses, start=1):
        assert 0 <= pause <= min(4, 0.25 * 2 ** (failures - 1))
    assert clock.now <= 0.25 + 0.5 + 1 + 2 + 4 * 37
    assert max(clock.pauses[6:]) > 2  # the jitter spreads the capped pauses over [0, 4]


@pytest.mark.parametrize(
    ("answer", "status", "message"),
    [
        (b'{"error": "Invalid subscription category, must be 1-1024 characters long."}',
         200, "must be 1-1024"),
        (401, 401, "HTTP 401"),
        (404, 404, "HTTP 404"),
    ],
    ids=["error-answer", "unauthorized", "not-found"],
)
def test_answers_that_retrying_cannot_fix_end_the_iteration(
    answer: Answer, status: int, message: str
) -> None:
    follower, adapter = scripted([answer, events_body((1, "never"))])
    with pytest.raises(SubscriptionRejected, match=message) as caught:
        list(follower)
    assert caught.value.status_code == status
    assert len(adapter.sent) == 1


def test_stop_from_the_loop_body_leaves_the_rest_of_the_answer_for_later() -> None:
    follower, _ = scripted([events_body((1, "a"), (1, "b"), (2, "c"))])
    received = []
    for event in follower:
        received.append(event.id)
        follower.stop()
    assert received == ["a"]
    assert follower.cursor == Cursor(1, "a")
    assert list(follower) == []  # a stopped follower stays stopped


def test_a_failing_callback_leaves_the_cursor_before_its_event() -> None:
    answer = events_body((1, "a"), (1, "b"), (2, "c"))
    follower, adapter = scripted([answer, answer])
    handled: list[str] = []

    def handle(event: Event) -> None:
        if event.id == "b" and "b (failed)" not in handled:
            handled.append("b (failed)")
            raise RuntimeError("boom")
        handled.append(event.id)

    with pytest.raises(RuntimeError, match="boom"):
        follower.run(handle)
    assert follower.cursor == Cursor(1, "a")
    follower.run(handle)  # runs again, from the cursor, until the script is over
    assert handled == ["a", "b (failed)", "b", "c"]
    assert adapter.queries[1]["last_id"] == "a"


def test_header_and_basic_auth_go_with_every_poll() -> None:
    follower, adapter = scripted(
        [timeout_body(1), timeout_body(2)],
        header={"X-Trace": ["a", "b"]},
        username="ann",
        password="pässword",
    )
    list(follower)
    for request in adapter.sent:
        assert request.headers["X-Trace"] == "a, b"
        assert request.headers["Authorization"] == "Basic YW5uOnDDpHNzd29yZA=="


def test_a_follower_is_iterated_by_one_loop_at_a_time() -> None:
    follower, _ = scripted([events_body((1, "a"))])
    events = iter(follower)
    next(events)
    with pytest.raises(RuntimeError, match="already being iterated"):
        next(iter(follower))


# --- over real sockets ---------------------------------------------------------------------


def collect(follower: Follower) -> tuple[list[Event], threading.Thread]:
    received: list[Event] = []
    thread = threading.Thread(target=follower.run, args=(received.append,), daemon=True)
    thread.start()
    return received, thread


def test_follows_a_live_server_from_now(server: Server, base_url: str) -> None:
    server.manager.publish("news", "before")
    follower = Follower(f"{base_url}/events", "news", timeout_seconds=5)
    received, thread = collect(follower)
    wait_until(lambda: server.manager.waiting_count("news") == 1)
    for n in range(3):
        server.manager.publish("news", n)
    wait_until(lambda: len(received) == 3)
    follower.stop()
    thread.join(5)
    assert [event.data for event in received] == [0, 1, 2]


def test_a_second_follower_goes_on_from_the_first_ones_cursor(
    server: Server, base_url: str
) -> None:
    for n in range(10):
        server.manager.publish("news", n)
    with Follower(f"{base_url}/events", "news", start=0, timeout_seconds=5) as first:
        seen = []
        for event in first:
            seen.append(event.data)
            if len(seen) == 4:
                break
        saved = json.dumps(first.cursor.to_dict() if first.cursor else None)
    second = Follower(
        f"{base_url}/events", "news", start=Cursor.from_dict(json.loads(saved)), timeout_seconds=5
    )
    received, thread = collect(second)
    wait_until(lambda: len(received) == 6)
    second.stop()
    thread.join(5)
    assert seen + [event.data for event in received] == list(range(10))


def test_a_user_session_is_used_and_left_open(server: Server, base_url: str) -> None:
    seen_by_server: list[str] = []
    session = requests.Session()
    session.headers["User-Agent"] = "follower-test"
    server.manager.publish("news", "x")

    def hook(request: Request) -> bool:
        seen_by_server.append(request.headers.get("User-Agent", ""))
        return True

    other = Server(access_log=False)
    other.start(ServerInfo(address="127.0.0.1:0", handler_to_run_before_subscription=hook))
    try:
        other.manager.publish("news", "x")
        follower = Follower(
            f"http://127.0.0.1:{other.port}/events", "news", start=0, transport=session
        )
        assert next(iter(follower)).data == "x"
        follower.stop()
        assert seen_by_server == ["follower-test"]
        assert session.get(f"http://127.0.0.1:{other.port}/nothing").status_code == 404
    finally:
        other.stop(5)
        session.close()


def test_stop_ends_a_60_second_poll_at_once() -> None:
    server = Server(access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=60))
    try:
        follower = Follower(f"http://127.0.0.1:{server.port}/events", "news", timeout_seconds=60)
        received, thread = collect(follower)
        wait_until(lambda: server.manager.waiting_count("news") == 1)
        started = time.monotonic()
        follower.stop()
        stop_returned = time.monotonic() - started
        thread.join(5)
        loop_ended = time.monotonic() - started
        assert not thread.is_alive()
        assert stop_returned < 1
        assert loop_ended < 1
        assert received == []
    finally:
        server.stop(5)


def failures_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum("failed" in record.getMessage() for record in caplog.records)


def test_stop_cuts_a_pause_after_an_error_short(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="wsgi_longpoll.client.follower")
    with socket.socket() as probe:  # a port with nothing listening: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    follower = Follower(
        f"http://127.0.0.1:{port}/events", "news",
        backoff=Backoff(initial_seconds=60, maximum_seconds=60, random=lambda: 0.999),
    )
    received, thread = collect(follower)
    wait_until(lambda: failures_logged(caplog) >= 1)
    started = time.monotonic()
    follower.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 1


def test_500_events_across_two_server_restarts_arrive_once_each_in_order(tmp_path: Path) -> None:
    persistence = FilePersistorInfo(
        use=True,
        file_name=str(tmp_path / "events.jsonl"),
        write_buffer_size=4096,
        write_flush_period_seconds=0.05,
    )
    server = Server(max_event_buffer_size=1000, access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=10), persistence)
    address = f"127.0.0.1:{server.port}"
    follower = Follower(
        f"http://{address}/events", "news", timeout_seconds=10,
        backoff=Backoff(initial_seconds=0.05, maximum_seconds=0.2),
    )
    received, thread = collect(follower)
    restarts = 0
    try:
        wait_until(lambda: server.manager.waiting_count("news") == 1)
        with requests.Session() as session:
            for n in range(500):
                if n in (150, 350):
                    server.stop(5)
                    server.start(ServerInfo(address=address, timeout_seconds=10), persistence)
                    restarts += 1
                answer = publish(f"http://{address}/publish", 5, None,
                                 PublishRequest("news", n), "", "", session)
                assert answer.status_code == 200, answer.text
        wait_until(lambda: len(received) >= 500, timeout=30)
    finally:
        follower.stop()
        thread.join(5)
        server.stop(5)
    assert restarts == 2
    assert [event.data for event in received] == list(range(500))
    assert len({event.id for event in received}) == 500


def test_follower_comes_back_after_the_server_was_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The server is down long enough for the follower to fail and back off; the events
    # published after it comes back are fetched with the cursor, none before them again.
    caplog.set_level(logging.WARNING, logger="wsgi_longpoll.client.follower")
    persistence = FilePersistorInfo(use=True, file_name=str(tmp_path / "events.jsonl"))
    server = Server(access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=10), persistence)
    address = f"127.0.0.1:{server.port}"
    follower = Follower(
        f"http://{address}/events", "news", timeout_seconds=10,
        backoff=Backoff(initial_seconds=0.05, maximum_seconds=0.1),
    )
    received, thread = collect(follower)
    try:
        wait_until(lambda: server.manager.waiting_count("news") == 1)
        server.manager.publish("news", "first")
        wait_until(lambda: len(received) == 1)
        server.stop(5)
        wait_until(lambda: failures_logged(caplog) >= 2)
        server.start(ServerInfo(address=address, timeout_seconds=10), persistence)
        server.manager.publish("news", "second")
        server.manager.publish("news", "third")
        wait_until(lambda: len(received) == 3)
    finally:
        follower.stop()
        thread.join(5)
        server.stop(5)
    assert [event.data for event in received] == ["first", "second", "third"]


def test_transient_statuses_are_retried_against_a_real_server(
    server: Server, base_url: str
) -> None:
    statuses = iter([503, 429])

    def flaky(request: Request) -> bool | Response:
        status = next(statuses, None)
        return True if status is None else Response("busy", status=status)

    flaky_server = Server(access_log=False)
    flaky_server.start(
        ServerInfo(address="127.0.0.1:0", handler_to_run_before_subscription=flaky)
    )
    clock = FakeClock()
    try:
        flaky_server.manager.publish("news", "hello")
        follower = Follower(
            f"http://127.0.0.1:{flaky_server.port}/events", "news", start=0,
            sleep=clock.sleep, backoff=Backoff(random=lambda: 0.5),
        )
        assert next(iter(follower)).data == "hello"
        follower.stop()
    finally:
        flaky_server.stop(5)
    assert clock.pauses == [0.25, 0.5]


# --- several categories, and gaps: scripted ------------------------------------------------


def gap_answer(body: bytes, *gaps: tuple[str, int, str]) -> bytes:
    """*body* (an events or timeout answer) with a ``gaps`` field."""
    answer = json.loads(body)
    answer["gaps"] = [{"category": c, "since_time": t, "last_id": i} for c, t, i in gaps]
    return json.dumps(answer).encode()


def full_queries(adapter: ScriptedAdapter) -> list[list[tuple[str, str]]]:
    return [parse_qsl(urlsplit(request.url or "").query) for request in adapter.sent]


class GapRecorder:
    """An on_gap callback: notes each report and how many events were handed out before."""

    def __init__(self) -> None:
        self.received: list[Event] = []
        self.reports: list[tuple[int, GapDetected]] = []

    def __call__(self, detected: GapDetected) -> None:
        self.reports.append((len(self.received), detected))

    @property
    def gaps(self) -> list[Gap]:
        return [gap for _, detected in self.reports for gap in detected.gaps]


def test_several_categories_go_in_one_query_with_one_cursor() -> None:
    adapter = ScriptedAdapter([timeout_body(1000), events_body((1001, "a"))])
    follower = Follower(URL, ["news", "sport", "news", "weather"], transport=adapter,
                        sleep=FakeClock().sleep)
    adapter.follower = follower
    assert follower.categories == ("news", "sport", "weather")
    assert follower.category == "news"
    assert ids(list(follower)) == ["a"]
    more = [("categories", "sport"), ("categories", "weather")]
    assert full_queries(adapter) == [
        [("category", "news"), *more, ("timeout", "45")],
        [("category", "news"), *more, ("timeout", "45"), ("since_time", "999")],
        [("category", "news"), *more, ("timeout", "45"), ("since_time", "1001"),
         ("last_id", "a")],
    ]


def test_one_category_asks_exactly_as_before() -> None:
    for category in ("news", ["news"], ("news", "news")):
        adapter = ScriptedAdapter([])
        follower = Follower(URL, category, transport=adapter, sleep=FakeClock().sleep)
        adapter.follower = follower
        list(follower)
        assert full_queries(adapter) == [[("category", "news"), ("timeout", "45")]]


@pytest.mark.parametrize(
    ("category", "error", "message"),
    [
        ([], ValueError, "at least one category"),
        (["news", ""], ValueError, "non-empty"),
        (["news", 5], TypeError, "must be a str"),
        (b"news", TypeError, "str or a sequence"),
        (5, TypeError, "str or a sequence"),
    ],
    ids=["none", "an-empty-one", "not-a-str", "bytes", "int"],
)
def test_bad_categories_are_refused(category: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Follower(URL, category)


def test_a_gap_is_raised_after_the_events_of_its_answer_and_iteration_goes_on() -> None:
    follower, adapter = scripted([
        events_body((10, "a")),
        gap_answer(events_body((20, "d"), (21, "e")), ("news", 15, "c")),
        events_body((22, "f")),
    ])
    received: list[Event] = []
    with pytest.raises(GapDetected, match="'news'") as caught:
        for event in follower:
            received.append(event)
    assert ids(received) == ["a", "d", "e"]
    assert caught.value.gaps == [Gap("news", 15, "c")]
    assert caught.value.cursor == Cursor(10, "a")
    assert follower.cursor == Cursor(21, "e")

    assert ids(list(follower)) == ["f"]  # iterating again goes on after the gap
    assert adapter.queries[2] == {"category": "news", "timeout": "45", "since_time": "21",
                                  "last_id": "e"}


@pytest.mark.parametrize(
    ("answer", "next_cursor"),
    [
        (gap_answer(timeout_body(99), ("news", 15, "c")), {"since_time": "15", "last_id": "c"}),
        (gap_answer(timeout_body(99), ("news", 15, "c"), ("sport", 17, "s")),
         {"since_time": "17", "last_id": "s"}),
        # All of "sport" expired while "news" had an older event: after the gap.
        (gap_answer(events_body((12, "b")), ("sport", 15, "c")),
         {"since_time": "15", "last_id": "c"}),
        # The same millisecond: which came first is unknown; stay after the event.
        (gap_answer(events_body((15, "b")), ("sport", 15, "c")),
         {"since_time": "15", "last_id": "b"}),
    ],
    ids=["timeout", "timeout-two-categories", "gap-after-the-events", "gap-at-the-last-event"],
)
def test_the_next_poll_asks_after_the_gap_when_nothing_newer_came(
    answer: bytes, next_cursor: dict[str, str]
) -> None:
    recorder = GapRecorder()
    follower, adapter = scripted([events_body((10, "a")), answer], on_gap=recorder)
    list(follower)
    assert adapter.queries[2] == {"category": "news", "timeout": "45", **next_cursor}
    assert len(recorder.reports) == 1


def test_a_gap_the_server_names_again_is_reported_once() -> None:
    # In one millisecond the follower cannot move past the gap, and the server says so
    # on each poll until a newer event is dropped.
    recorder = GapRecorder()
    follower, _ = scripted([
        events_body((10, "a")),
        gap_answer(events_body((15, "d")), ("news", 15, "c")),
        gap_answer(timeout_body(99), ("news", 15, "c")),
        gap_answer(events_body((16, "e")), ("news", 15, "c")),
        gap_answer(events_body((30, "g")), ("news", 20, "f")),
    ], on_gap=recorder)
    for event in follower:
        recorder.received.append(event)
    assert ids(recorder.received) == ["a", "d", "e", "g"]
    assert [(handed_out, detected.gaps) for handed_out, detected in recorder.reports] == [
        (2, [Gap("news", 15, "c")]),
        (4, [Gap("news", 20, "f")]),
    ]
    assert [detected.cursor for _, detected in recorder.reports] == [
        Cursor(10, "a"), Cursor(16, "e")
    ]


@pytest.mark.parametrize(
    "first_answer",
    [
        gap_answer(timeout_body(99), ("news", 5, "x")),
        gap_answer(events_body((10, "a")), ("news", 7, "y")),
    ],
    ids=["timeout", "events"],
)
def test_a_follower_started_from_0_reports_no_gap_in_its_first_answer(
    first_answer: bytes,
) -> None:
    # start=0 asks for everything the server still has: what it dropped was never wanted.
    recorder = GapRecorder()
    follower, adapter = scripted([
        first_answer,
        events_body((11, "b")),
        gap_answer(events_body((20, "d")), ("news", 15, "c")),
    ], start=0, on_gap=recorder)
    for event in follower:
        recorder.received.append(event)
    assert recorder.gaps == [Gap("news", 15, "c")]
    assert adapter.queries[0]["since_time"] == "-1"
    assert adapter.queries[1]["since_time"] in ("5", "10")  # after the gap, or the event


def test_stopping_before_the_last_event_leaves_the_gap_for_a_later_follower() -> None:
    recorder = GapRecorder()
    answer = gap_answer(events_body((20, "d"), (21, "e")), ("news", 15, "c"))
    follower, _ = scripted([events_body((10, "a")), answer], on_gap=recorder)
    for event in follower:
        if event.id == "d":
            follower.stop()
    assert recorder.reports == []
    assert follower.cursor == Cursor(20, "d")  # a later follower is told by the server


def test_stopping_at_the_last_event_still_reports_the_gap() -> None:
    recorder = GapRecorder()
    answer = gap_answer(events_body((20, "d"), (21, "e")), ("news", 15, "c"))
    follower, _ = scripted([events_body((10, "a")), answer], on_gap=recorder)
    for event in follower:
        if event.id == "e":
            follower.stop()
    assert recorder.gaps == [Gap("news", 15, "c")]


def test_an_exception_from_on_gap_ends_the_iteration_past_the_gap() -> None:
    def on_gap(detected: GapDetected) -> None:
        raise RuntimeError("resync failed")

    follower, _ = scripted([
        gap_answer(events_body((20, "d")), ("news", 15, "c")),
        events_body((21, "e")),
    ], start=Cursor(10, "a"), on_gap=on_gap)
    received: list[Event] = []
    with pytest.raises(RuntimeError, match="resync failed"):
        follower.run(received.append)
    assert ids(received) == ["d"]
    follower.run(received.append)
    assert ids(received) == ["d", "e"]


# --- several categories, and gaps: over a real server --------------------------------------


class CountingSession(requests.Session):
    """A session that keeps the query of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[list[tuple[str, str]]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.queries.append(parse_qsl(urlsplit(request.url or "").query))
        return super().send(request, **kwargs)


def test_three_categories_published_concurrently_arrive_in_publish_order_once() -> None:
    per_category = 100
    server = Server(max_event_buffer_size=1000, access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=10))
    url = f"http://127.0.0.1:{server.port}"
    session = CountingSession()
    follower = Follower(f"{url}/events", ["x", "y", "z"], timeout_seconds=10, transport=session)
    received, thread = collect(follower)
    try:
        wait_until(lambda: server.manager.waiting_count("z") == 1)

        publish_concurrently(url, "xyz", per_category)
        wait_until(lambda: len(received) >= 3 * per_category, timeout=30)
        # The server's own answer from the start: every event, in its publish order.
        everything = subscription(
            f"{url}/events", None, SubscriptionRequest("x", 1, -1, categories=["y", "z"]),
            "", "", None,
        ).events
    finally:
        follower.stop()
        thread.join(5)
        server.stop(5)
    assert len(everything) == 3 * per_category
    assert received == everything
    assert len({event.id for event in received}) == len(received)
    for category in "xyz":
        assert [e.data for e in received if e.category == category] == list(range(per_category))
    assert follower.cursor == Cursor.after(received[-1])
    assert len(session.queries) >= 2
    for query in session.queries:
        assert query[:3] == [("category", "x"), ("categories", "y"), ("categories", "z")]


class HeldFollower:
    """A follower over *url* from 0 whose loop body holds on the first event until released.

    While it is held it cannot poll, so what is published meanwhile may be dropped by the
    server before the follower asks for it: it falls behind, on purpose.
    """

    def __init__(self, url: str, category: str = "c") -> None:
        self.recorder = GapRecorder()
        self.release = threading.Event()
        self.follower = Follower(f"{url}/events", category, start=0, timeout_seconds=5,
                                 on_gap=self.recorder)
        self.thread = threading.Thread(target=self.follower.run, args=(self.handle,),
                                       daemon=True)

    def handle(self, event: Event) -> None:
        self.recorder.received.append(event)
        if len(self.recorder.received) == 1:
            assert self.release.wait(10), "never released"

    def __enter__(self) -> HeldFollower:
        self.thread.start()
        wait_until(lambda: len(self.recorder.received) == 1)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self.follower.stop()
        self.thread.join(5)


@pytest.mark.parametrize(
    ("published_while_held", "dropped_unseen"),
    [(2, 0), (3, 0), (4, 1), (6, 3)],
    ids=["nothing-dropped", "only-the-seen-one-dropped", "one-unseen-dropped",
         "three-unseen-dropped"],
)
def test_a_gap_is_reported_exactly_when_unseen_events_were_dropped_for_buffer_size(
    published_while_held: int, dropped_unseen: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the grace that keeps the events after what the follower was handed.
    monkeypatch.setattr(MemoryEngine, "repoll_grace_seconds", 0)
    server = Server(max_event_buffer_size=3, access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=10))
    try:
        first = server.manager.publish("c", 0)
        with HeldFollower(f"http://127.0.0.1:{server.port}") as held:
            later = [server.manager.publish("c", n) for n in range(1, published_while_held + 1)]
            held.release.set()
            wait_until(lambda: len(held.recorder.received) == 1 + min(3, len(later)))
            # Then it keeps up: ten more, each after the previous one arrived, while every
            # one of them pushes an event it has seen out of the buffer.
            for n in range(10):
                server.manager.publish("c", 100 + n)
                wait_until(lambda n=n: held.recorder.received[-1].data == 100 + n)
    finally:
        server.stop(5)
    kept = later[dropped_unseen:]
    assert [event.data for event in held.recorder.received] == (
        [first.data] + [event.data for event in kept] + list(range(100, 110))
    )
    if dropped_unseen:
        newest_dropped = later[dropped_unseen - 1]
        assert held.recorder.gaps == [Gap("c", newest_dropped.timestamp, newest_dropped.id)]
        [(handed_out, detected)] = held.recorder.reports
        assert handed_out == 1 + len(kept)  # after the events of the answer
        assert detected.cursor == Cursor.after(first)
    else:
        assert held.recorder.reports == []



@pytest.mark.parametrize(
    ("published_before_expiry", "gap"),
    [(0, False), (2, True)],
    ids=["only-seen-events-expired", "unseen-events-expired"],
)
def test_a_gap_is_reported_exactly_when_unseen_events_expired(
    engine_clock: list[int], published_before_expiry: int, gap: bool
) -> None:
    server = Server(event_time_to_live_seconds=10, access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=10))
    try:
        server.manager.publish("c", "first")
        with HeldFollower(f"http://127.0.0.1:{server.port}") as held:
            expired = []
            for n in range(published_before_expiry):
                engine_clock[0] += 1
                expired.append(server.manager.publish("c", n))
            engine_clock[0] += 15_000  # every event so far is older than 10 s
            fresh = server.manager.publish("c", "fresh")
            held.release.set()
            wait_until(lambda: held.recorder.received[-1] == fresh)
            engine_clock[0] += 1
            server.manager.publish("c", "later")
            wait_until(lambda: held.recorder.received[-1].data == "later")
    finally:
        server.stop(5)
    assert [event.data for event in held.recorder.received] == ["first", "fresh", "later"]
    if gap:
        assert held.recorder.gaps == [Gap("c", expired[-1].timestamp, expired[-1].id)]
        assert held.recorder.reports[0][0] == 2  # once "fresh" was handed out
    else:
        assert held.recorder.reports == []


# --- stream=True: Server-Sent Events instead of long polls, against a real server ---------


class StreamServer:
    """The standalone server with a hook that records each subscription's headers."""

    def __init__(self, **options: Any) -> None:
        self.requests: list[dict[str, str]] = []
        self.refuse = False

        def record(request: Request) -> bool:
            self.requests.append({k.lower(): v for k, v in request.headers.items()})
            return not self.refuse

        self.server = Server(access_log=False, **options)
        self.info = ServerInfo(address="127.0.0.1:0", timeout_seconds=10,
                               handler_to_run_before_subscription=record)
        self.server.start(self.info)
        self.address = f"127.0.0.1:{self.server.port}"
        self.url = f"http://{self.address}/events"

    def streams(self) -> list[dict[str, str]]:
        return [h for h in self.requests if h.get("accept") == "text/event-stream"]


@pytest.fixture
def stream_server() -> Iterator[StreamServer]:
    server = StreamServer()
    yield server
    server.server.stop(5)


def test_a_streaming_follower_gets_live_events_in_order(stream_server: StreamServer) -> None:
    manager = stream_server.server.manager
    manager.publish("news", "before")
    follower = Follower(stream_server.url, "news", timeout_seconds=5, stream=True)
    received, thread = collect(follower)
    try:
        wait_until(lambda: manager.waiting_count("news") == 1)
        published = [manager.publish("news", n) for n in range(50)]
        wait_until(lambda: len(received) == 50)
    finally:
        follower.stop()
        thread.join(5)
    assert received == published
    assert follower.cursor == Cursor.after(published[-1])
    assert len(stream_server.streams()) == len(stream_server.requests)


def test_an_empty_stream_is_followed_by_one_from_where_it_started(
    stream_server: StreamServer,
) -> None:
    manager = stream_server.server.manager
    follower = Follower(stream_server.url, "news", timeout_seconds=1, stream=True)
    received, thread = collect(follower)
    try:
        wait_until(lambda: len(stream_server.streams()) >= 2)
        event = manager.publish("news", "after two streams")
        wait_until(lambda: len(received) == 1)
    finally:
        follower.stop()
        thread.join(5)
    first, second = stream_server.streams()[:2]
    assert "last-event-id" not in first
    since_time, separator, last_id = second["last-event-id"].partition(":")
    assert separator == ":" and last_id == "" and int(since_time) > 0
    assert received == [event]


def test_a_streaming_follower_resumes_across_server_restarts(tmp_path: Path) -> None:
    persistence = FilePersistorInfo(
        use=True, file_name=str(tmp_path / "events.jsonl"), write_flush_period_seconds=0.05,
    )
    server = Server(max_event_buffer_size=1000, access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=10), persistence)
    address = f"127.0.0.1:{server.port}"
    follower = Follower(
        f"http://{address}/events", "news", timeout_seconds=10, stream=True,
        backoff=Backoff(initial_seconds=0.05, maximum_seconds=0.2),
    )
    received, thread = collect(follower)
    try:
        wait_until(lambda: server.manager.waiting_count("news") == 1)
        with requests.Session() as session:
            for n in range(300):
                if n in (100, 200):
                    server.stop(5)
                    server.start(ServerInfo(address=address, timeout_seconds=10), persistence)
                answer = publish(f"http://{address}/publish", 5, None,
                                 PublishRequest("news", n), "", "", session)
                assert answer.status_code == 200, answer.text
        wait_until(lambda: len(received) >= 300, timeout=30)
    finally:
        follower.stop()
        thread.join(5)
        server.stop(5)
    assert [event.data for event in received] == list(range(300))


def test_a_streaming_follower_reports_a_gap_once_then_goes_on() -> None:
    server = StreamServer(max_event_buffer_size=3)
    manager = server.server.manager
    gaps: list[GapDetected] = []
    try:
        first = manager.publish("news", 0)
        events = [manager.publish("news", n) for n in range(1, 7)]
        follower = Follower(server.url, "news", start=Cursor.after(first), timeout_seconds=1,
                            stream=True, on_gap=gaps.append)
        received, thread = collect(follower)
        try:
            wait_until(lambda: len(received) == 3)
            wait_until(lambda: len(server.streams()) >= 2)  # a reconnect: no second report
            later = manager.publish("news", "later")
            wait_until(lambda: len(received) == 4)
        finally:
            follower.stop()
            thread.join(5)
    finally:
        server.server.stop(5)
    assert received == [*events[-3:], later]
    assert len(gaps) == 1
    assert gaps[0].gaps == [Gap("news", events[2].timestamp, events[2].id)]
    assert gaps[0].cursor == Cursor.after(first)


def test_a_streaming_follower_raises_a_gap_without_on_gap() -> None:
    server = StreamServer(max_event_buffer_size=2)
    manager = server.server.manager
    try:
        first = manager.publish("news", 0)
        events = [manager.publish("news", n) for n in range(1, 5)]
        with Follower(server.url, "news", start=Cursor.after(first), timeout_seconds=5,
                      stream=True) as follower:
            iterator = follower.events()
            with pytest.raises(GapDetected):
                next(iterator)
            iterator = follower.events()
            assert [next(iterator), next(iterator)] == events[-2:]
            iterator.close()
    finally:
        server.server.stop(5)


def test_a_streaming_follower_from_0_reports_no_gap() -> None:
    server = StreamServer(max_event_buffer_size=2)
    manager = server.server.manager
    try:
        events = [manager.publish("news", n) for n in range(5)]
        with Follower(server.url, "news", start=0, timeout_seconds=5, stream=True) as follower:
            iterator = follower.events()
            assert [next(iterator), next(iterator)] == events[-2:]
            iterator.close()
    finally:
        server.server.stop(5)


def test_a_refused_stream_ends_the_iteration(stream_server: StreamServer) -> None:
    stream_server.refuse = True
    follower = Follower(stream_server.url, "news", timeout_seconds=5, stream=True)
    with pytest.raises(SubscriptionRejected) as raised:
        next(iter(follower))
    assert raised.value.status_code == 403


def test_a_stream_answered_by_a_long_poll_server_is_retried_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A server that knows nothing of streams answers a long poll: not this protocol.
    caplog.set_level(logging.WARNING, logger="wsgi_longpoll.client.follower")
    pauses: list[float] = []
    adapter = ScriptedAdapter([timeout_body(5), timeout_body(6)])
    follower = Follower(URL, "news", transport=adapter, stream=True, sleep=pauses.append)
    adapter.follower = follower
    assert list(follower) == []
    assert len(pauses) == 2
    assert "text/event-stream" in caplog.text
    assert all(r.headers["Accept"] == "text/event-stream" for r in adapter.sent)


def test_stop_ends_a_long_stream_at_once(stream_server: StreamServer) -> None:
    follower = Follower(stream_server.url, "news", timeout_seconds=10, stream=True)
    received, thread = collect(follower)
    manager = stream_server.server.manager
    wait_until(lambda: manager.waiting_count("news") == 1)
    follower.stop()
    thread.join(5)
    assert not thread.is_alive()
    wait_until(lambda: manager.waiting_count("news") == 0)  # the connection was closed


# -- subscribe tokens -------------------------------------------------------------------

TOKEN_SECRET = "follower-subscribe-secret-01234"


@pytest.fixture
def tokened_server() -> Iterator[Server]:
    server = Server(subscribe_secret=TOKEN_SECRET, access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0"))
    yield server
    server.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["long-polls", "stream"])
def test_a_token_function_is_asked_again_when_the_token_expires(
        tokened_server: Server, stream: bool) -> None:
    from wsgi_longpoll.tokens import subscribe_token

    issued: list[str] = []

    def token() -> str:  # the first has expired already: refused, then a fresh one
        ttl_from = time.time() - 120 if not issued else time.time()
        issued.append(subscribe_token(TOKEN_SECRET, "news", 60, now=ttl_from))
        return issued[-1]

    tokened_server.manager.publish("news", "first")
    follower = Follower(f"http://127.0.0.1:{tokened_server.port}/events", "news", start=0,
                        timeout_seconds=2, token=token, stream=stream)
    with follower:
        assert next(iter(follower)).data == "first"
    assert len(issued) == 2


@pytest.mark.parametrize("stream", [False, True], ids=["long-polls", "stream"])
def test_a_token_refused_again_at_once_ends_the_iteration(
        tokened_server: Server, stream: bool) -> None:
    from wsgi_longpoll.tokens import subscribe_token

    calls: list[int] = []

    def wrong_category() -> str:
        calls.append(1)
        return subscribe_token(TOKEN_SECRET, "other", 60)

    follower = Follower(f"http://127.0.0.1:{tokened_server.port}/events", "news",
                        timeout_seconds=2, token=wrong_category, stream=stream)
    with follower, pytest.raises(SubscriptionRejected) as rejected:
        next(iter(follower))
    assert rejected.value.status_code == 403 and len(calls) == 2


def test_a_token_string_goes_as_a_bearer_header(tokened_server: Server) -> None:
    from wsgi_longpoll.tokens import subscribe_token

    tokened_server.manager.publish("news", "hello")
    follower = Follower(f"http://127.0.0.1:{tokened_server.port}/events", "news", start=0,
                        timeout_seconds=2, token=subscribe_token(TOKEN_SECRET, "news", 60))
    with follower:
        assert next(iter(follower)).data == "hello"
    with pytest.raises(ValueError, match="Authorization"):
        Follower("http://127.0.0.1:1/events", "news", token="t", username="u", password="p")


@pytest.mark.parametrize("stream", [False, True], ids=["long-polls", "stream"])
@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_a_rejection_names_its_status_and_the_servers_message(
        tokened_server: Server, status: int, stream: bool) -> None:
    from wsgi_longpoll.tokens import subscribe_token

    url = f"http://127.0.0.1:{tokened_server.port}/events"
    options: dict[str, Any] = {"timeout_seconds": 5, "stream": stream}
    if status == 400:
        options["header"] = {"X-Padding": "x" * 100_000}  # headers too large
    if status in (400, 403):
        options["token"] = subscribe_token(TOKEN_SECRET, "other", 60)
    if status == 404:
        url = url.replace("/events", "/nothing")
    headers = {"Accept": "text/event-stream"} if stream else {}
    raw = requests.get(url, params={"category": "news", "timeout": 5,
                                    "token": options.get("token")},
                       headers={**headers, **options.get("header", {})}, timeout=30)
    assert raw.status_code == status
    message = raw.json()["error"] if status != 400 else raw.text.strip()
    with Follower(url, "news", **options) as follower, pytest.raises(
            SubscriptionRejected) as rejected:
        next(iter(follower))
    assert (rejected.value.status_code, rejected.value.error) == (status, message)
    assert f"HTTP {status}" in str(rejected.value) and message in str(rejected.value)


def test_a_503_is_retried_saying_the_servers_message(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="wsgi_longpoll.client.follower")
    server = Server(access_log=False, max_waiting_subscribers=1)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    url = f"http://127.0.0.1:{server.port}/events"
    waiting = threading.Thread(target=requests.get, args=(url,), kwargs={
        "params": {"category": "news", "timeout": 10}, "timeout": 30})
    try:
        waiting.start()
        wait_until(lambda: server.manager is not None and server.manager.waiting_count() == 1)
        raw = requests.get(url, params={"category": "news", "timeout": 5}, timeout=30)
        assert raw.status_code == 503
        follower = Follower(url, "news", timeout_seconds=5,
                            sleep=lambda delay: follower.stop())
        with follower:
            assert list(follower) == []
    finally:
        server.stop(5)
        waiting.join(30)
    [line] = [record.getMessage() for record in caplog.records
              if record.name == "wsgi_longpoll.client.follower"]
    assert f"HTTP 503: {raw.json()['error']}" in line
