"""Issue 20: every loss a client or an operator can meet is reported, never silent.

Black-box, over real sockets on 127.0.0.1 (the seed's ``Server``) or in a subprocess:
categories pushed out by ``max_categories`` keep their gap, a persist file is locked as a
file (symbolic and hard links included) and stays a symbolic link, a stored event from
the future does not hold the clock, ``Server.stop`` names the events it could not write,
and an ``Idempotency-Key`` reused for another event is refused with 422.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import wait_until

from wsgi_longpoll import FilePersistorInfo, Server, ServerInfo
from wsgi_longpoll.engines.persist import PersistFileLocked
from wsgi_longpoll.event import Event
from wsgi_longpoll.protocol import MAX_TIMESTAMP, now_ms

WAIT_SECONDS = 10


@contextlib.contextmanager
def serving(persist_file: Path | None = None, **options: Any) -> Iterator[str]:
    """A ``Server`` on a free port of 127.0.0.1 (with *options*); its base URL."""
    server = Server(access_log=False, **options)
    persistence = None
    if persist_file is not None:
        persistence = FilePersistorInfo(
            use=True, file_name=str(persist_file), write_flush_period_seconds=0.02
        )
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30), persistence)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop(5)


def publish(base_url: str, category: str, data: Any, key: str | None = None,
            body: bytes | None = None) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    if body is None:
        body = json.dumps({"category": category, "data": data}).encode()
    return requests.post(f"{base_url}/publish", data=body, headers=headers, timeout=WAIT_SECONDS)


def poll(base_url: str, categories: list[str], since_time: int, last_id: str | None = None,
         timeout: int = 1) -> dict[str, Any]:
    """One long poll with a cursor; its JSON answer."""
    params: list[tuple[str, Any]] = [("timeout", timeout), ("category", categories[0])]
    params += [("categories", category) for category in categories[1:]]
    params.append(("since_time", since_time))
    if last_id is not None:
        params.append(("last_id", last_id))
    response = requests.get(f"{base_url}/events", params=params, timeout=WAIT_SECONDS)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def gap_of(event: dict[str, Any]) -> dict[str, Any]:
    """The gap that names *event* as the newest one dropped."""
    return {"category": event["category"], "since_time": event["timestamp"],
            "last_id": event["id"]}


# -- 3. a category pushed out by max_categories keeps its gap -----------------------------


def test_a_category_pushed_out_by_max_categories_resumes_with_a_gap() -> None:
    with serving(max_categories=2) as base_url:
        for n in range(3):
            publish(base_url, "a", n).raise_for_status()
        a = poll(base_url, ["a"], 0)["events"]
        assert [event["data"] for event in a] == [0, 1, 2]
        for n in range(10):  # "a" is pushed out, then nine more after it
            publish(base_url, f"new-{n}", n).raise_for_status()
        # A client that saw a0 resumes: told that a1 and a2 are gone, from a2 on.
        answer = poll(base_url, ["a"], a[0]["timestamp"], a[0]["id"])
        assert "events" not in answer  # a timeout answer, with the gap
        assert answer["gaps"] == [gap_of(a[2])]
        # One that saw a2 lost nothing.
        assert "gaps" not in poll(base_url, ["a"], a[2]["timestamp"], a[2]["id"])


def test_a_gap_names_each_pushed_out_category_of_a_multi_category_subscribe() -> None:
    with serving(max_categories=2) as base_url:
        for category in ("a", "b", "a", "b"):
            publish(base_url, category, category).raise_for_status()
        seen = poll(base_url, ["a", "b"], 0)["events"]
        assert [event["category"] for event in seen] == ["a", "b", "a", "b"]
        for n in range(10):  # pushes out "a" and "b"
            publish(base_url, f"new-{n}", n).raise_for_status()
        publish(base_url, "b", "back").raise_for_status()  # comes back, floor kept
        # A client of a, b and a quiet category that had seen only the first event.
        answer = poll(base_url, ["quiet", "a", "b"], seen[0]["timestamp"], seen[0]["id"])
        assert [event["data"] for event in answer["events"]] == ["back"]
        assert sorted(answer["gaps"], key=lambda gap: gap["category"]) == [
            gap_of(seen[2]), gap_of(seen[3])
        ]


# -- 4. the persist lock is on the file, and a symlinked file stays a symlink ------------


def test_a_second_server_on_a_symlink_or_hard_link_to_the_persist_file_refuses_to_start(
    tmp_path: Path,
) -> None:
    event_file = tmp_path / "events.log"
    with serving(event_file) as base_url:
        publish(base_url, "news", "kept").raise_for_status()
        wait_until(lambda: b"kept" in event_file.read_bytes(), WAIT_SECONDS)  # compacted
        symbolic = tmp_path / "symbolic.log"
        symbolic.symlink_to(event_file)
        hard = tmp_path / "hard.log"
        os.link(event_file, hard)
        for other in (symbolic, hard):
            second = Server(access_log=False)
            with pytest.raises(PersistFileLocked, match="in use by process"):
                second.start(ServerInfo(address="127.0.0.1:0"),
                             FilePersistorInfo(use=True, file_name=str(other)))
            assert not second.running
        publish(base_url, "news", "still kept").raise_for_status()
    lines = event_file.read_bytes().split(b"\n")
    assert [json.loads(line)["data"] for line in lines if line] == ["kept", "still kept"]


def test_a_persist_file_that_is_a_symlink_to_another_directory_stays_one(
    tmp_path: Path,
) -> None:
    (tmp_path / "disk").mkdir()
    target = tmp_path / "disk" / "events.log"
    link = tmp_path / "events.log"
    link.symlink_to(target)
    with serving(link) as base_url:  # compacts on start, and again on restart below
        publish(base_url, "news", 1).raise_for_status()
    with serving(link) as base_url:
        publish(base_url, "news", 2).raise_for_status()
        assert [event["data"] for event in poll(base_url, ["news"], 0)["events"]] == [1, 2]
    assert link.is_symlink() and link.resolve() == target
    assert sorted(path.name for path in target.parent.iterdir()) == ["events.log"]
    lines = target.read_bytes().split(b"\n")
    assert [json.loads(line)["data"] for line in lines if line] == [1, 2]


# -- 5. a stored event from the future does not hold the clock ----------------------------


def test_a_stored_event_from_the_far_future_is_skipped_and_new_events_resume_by_time(
    tmp_path: Path,
) -> None:
    event_file = tmp_path / "events.log"
    future = Event(MAX_TIMESTAMP, "news", str(uuid.uuid4()), "from the future")
    event_file.write_bytes(b"\n" + future.to_json())
    with serving(event_file) as base_url:
        publish(base_url, "news", "first").raise_for_status()
        first = poll(base_url, ["news"], 0)["events"]
        assert [event["data"] for event in first] == ["first"]
        assert first[0]["timestamp"] <= now_ms()
        publish(base_url, "news", "second").raise_for_status()
        # A client that resumes by time alone gets every new event.
        later = poll(base_url, ["news"], first[0]["timestamp"])["events"]
        assert [event["data"] for event in later] == ["second"]


# -- 6. Server.stop names the events it could not write -----------------------------------

_STOP_WITH_A_FULL_DISK = textwrap.dedent("""
    import json, resource, signal, sys
    import requests
    from wsgi_longpoll import FilePersistorInfo, Server, ServerInfo

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a core dump
    resource.setrlimit(resource.RLIMIT_FSIZE, (20 * 1024, 20 * 1024))
    server = Server(access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0"), FilePersistorInfo(
        use=True, file_name=sys.argv[1], write_flush_period_seconds=0.05))
    acknowledged = 0
    with requests.Session() as session:
        for n in range(2000):
            answer = session.post(f"http://127.0.0.1:{server.port}/publish",
                                  json={"category": "news", "data": {"n": n, "pad": "x" * 40}},
                                  timeout=10)
            acknowledged += answer.status_code == 200
    report = {"acknowledged": acknowledged, "raised": None}
    try:
        server.stop(5)
    except Exception as lost:
        report.update(raised=type(lost).__name__, lost=getattr(lost, "events", None),
                      lost_acknowledged=getattr(lost, "acknowledged_events", None),
                      message=str(lost), running=server.running)
        server.stop(5)  # reported once; stopping again is a no-op
    print(json.dumps(report))
""")


def test_server_stop_raises_naming_the_acknowledged_events_it_could_not_write(
    tmp_path: Path,
) -> None:
    event_file = tmp_path / "events.log"
    done = subprocess.run(
        [sys.executable, "-c", _STOP_WITH_A_FULL_DISK, str(event_file)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    lines = event_file.read_bytes().split(b"\n")
    on_disk = 0
    for line in lines:
        with contextlib.suppress(ValueError):
            on_disk += isinstance(json.loads(line), dict)
    lost = report["acknowledged"] - on_disk
    print(report, f"{on_disk} on disk")
    assert lost > 0
    assert report["raised"] == "EventsLost"
    assert report["lost_acknowledged"] == report["lost"] == lost
    assert f"; {lost} acknowledged events) could not be written to" in report["message"]
    assert report["running"] is False


# -- 7. an Idempotency-Key reused for another event: 422 ---------------------------------


@pytest.fixture(params=["memory", "redis"])
def engine_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ``Server`` options of each engine."""
    if request.param == "memory":
        return {}
    pytest.importorskip("redis")
    redis_server = request.getfixturevalue("redis_server")
    return {"redis_url": redis_server.url, "redis_key_prefix": f"t-{uuid.uuid4().hex[:8]}:"}


def test_an_idempotency_key_reused_with_other_data_is_refused_with_422(
    engine_options: dict[str, Any],
) -> None:
    with serving(**engine_options) as base_url:
        body = b'{"category": "orders", "data": {"id": 7, "total": 10}}'
        assert publish(base_url, "", None, key="order-7", body=body).status_code == 200
        # The same event again, with other whitespace and key order: a retry, answered 200.
        same = b'{ "data" : { "total":10, "id":7 },\n "category":"orders" }'
        retried = publish(base_url, "", None, key="order-7", body=same)
        assert retried.status_code == 200 and retried.json() == {"success": True}
        # Other data under the same key: refused, naming the key, nothing published.
        other = publish(base_url, "orders", {"id": 8, "total": 99}, key="order-7")
        assert other.status_code == 422
        assert other.headers["Content-Type"] == "application/json"
        assert "'order-7'" in other.json()["error"]
        # Keys are per category: the same key in another category is another key.
        assert publish(base_url, "refunds", {"id": 8}, key="order-7").status_code == 200
        events = poll(base_url, ["orders", "refunds"], 0)["events"]
        assert [(event["category"], event["data"]) for event in events] == [
            ("orders", {"id": 7, "total": 10}), ("refunds", {"id": 8})
        ]
