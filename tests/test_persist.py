"""Tests for wsgi_longpoll.engines.persist: the event file, its writer thread and its compaction."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import wait_until

from wsgi_longpoll import FilePersistorInfo, LongpollManager, Server, ServerInfo
from wsgi_longpoll.engines import MemoryEngine, persist
from wsgi_longpoll.engines.persist import FilePersister, PersistenceFailed
from wsgi_longpoll.errors import StorageUnavailable
from wsgi_longpoll.event import Event
from wsgi_longpoll.protocol import now_ms

#: The longest any test waits for a server or a file; every wait is bounded by it.
WAIT_SECONDS = 10

UUIDS = [f"00000000-0000-4000-8000-{n:012d}" for n in range(10)]


def record(timestamp: int, category: str, data: Any, event_id: str) -> bytes:
    """One event as golongpoll writes it: a newline, then the JSON."""
    return b"\n" + Event(timestamp, category, event_id, data).to_json()


def records_in(path: Path) -> list[dict[str, Any]]:
    """The events a file holds, in file order (blank lines left out)."""
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]


@pytest.fixture
def event_file(tmp_path: Path) -> Path:
    return tmp_path / "events.log"


@pytest.fixture
def open_persisters() -> Iterator[list[FilePersister]]:
    """Persisters made by a test, closed after it whatever happens."""
    made: list[FilePersister] = []
    yield made
    for persister in made:
        persister.close()


@pytest.fixture
def make_persister(
    event_file: Path, open_persisters: list[FilePersister]
) -> Callable[..., FilePersister]:
    def make(**options: Any) -> FilePersister:
        options.setdefault("write_buffer_size", 4096)
        options.setdefault("write_flush_period_seconds", 0.05)
        persister = FilePersister(event_file, **options)
        open_persisters.append(persister)
        return persister

    return make


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers started by a test, stopped after it."""
    started: list[Server] = []
    yield started
    for server in started:
        server.stop(5)


def start_server(
    servers: list[Server], event_file: Path, address: str = "127.0.0.1:0", **options: Any
) -> Server:
    persistence = FilePersistorInfo(
        use=True,
        file_name=str(event_file),
        write_buffer_size=options.pop("write_buffer_size", 4096),
        write_flush_period_seconds=options.pop("write_flush_period_seconds", 0.2),
    )
    server = Server(access_log=False, **options)
    server.start(ServerInfo(address=address, timeout_seconds=30), persistence)
    servers.append(server)
    return server


def fetch_all(base_url: str, category: str) -> list[dict[str, Any]]:
    """Every event the server buffers for *category*, oldest first."""
    response = requests.get(
        f"{base_url}/events",
        params={"category": category, "timeout": 1, "since_time": 1},
        timeout=WAIT_SECONDS,
    )
    response.raise_for_status()
    return list(response.json().get("events", []))


def publish_http(session: requests.Session, base_url: str, category: str, data: Any) -> None:
    response = session.post(
        f"{base_url}/publish", json={"category": category, "data": data}, timeout=WAIT_SECONDS
    )
    assert response.status_code == 200, response.text


# -- options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "field"),
    [
        ({"file_name": ""}, ValueError, "file_name"),
        ({"file_name": None}, TypeError, "file_name"),
        ({"write_buffer_size": 0}, ValueError, "write_buffer_size"),
        ({"write_buffer_size": -1}, ValueError, "write_buffer_size"),
        ({"write_buffer_size": 1.5}, TypeError, "write_buffer_size"),
        ({"write_flush_period_seconds": 0}, ValueError, "write_flush_period_seconds"),
        ({"write_flush_period_seconds": -1}, ValueError, "write_flush_period_seconds"),
        ({"write_flush_period_seconds": float("nan")}, ValueError, "write_flush_period_seconds"),
        ({"write_flush_period_seconds": float("inf")}, ValueError, "write_flush_period_seconds"),
        ({"write_flush_period_seconds": "1"}, TypeError, "write_flush_period_seconds"),
        ({"compact_bytes": 0}, ValueError, "compact_bytes"),
    ],
    ids=lambda value: repr(value) if not isinstance(value, type) else value.__name__,
)
def test_invalid_option_fails_at_construction_naming_the_field(
    event_file: Path, options: dict[str, Any], error: type[Exception], field: str
) -> None:
    arguments: dict[str, Any] = {"file_name": str(event_file), **options}
    with pytest.raises(error, match=field):
        FilePersister(**arguments)
    assert not event_file.exists()


@pytest.mark.parametrize(
    ("info", "error", "field"),
    [
        ({"file_name": ""}, ValueError, "file_name"),
        ({"write_buffer_size": 0}, ValueError, "write_buffer_size"),
        ({"write_flush_period_seconds": 0}, ValueError, "write_flush_period_seconds"),
        ({"file_name": "missing-directory/events.log"}, FileNotFoundError, "missing-directory"),
        ({"file_name": "."}, IsADirectoryError, "Is a directory"),
    ],
    ids=["empty-file-name", "buffer-size", "flush-period", "missing-directory", "directory"],
)
def test_server_start_with_bad_persistence_raises_and_leaves_nothing_running(
    tmp_path: Path, servers: list[Server], info: dict[str, Any], error: type[Exception], field: str
) -> None:
    options: dict[str, Any] = {
        "use": True, "file_name": str(tmp_path / "events.log"), **info,
    }
    if options["file_name"] and not os.path.isabs(options["file_name"]):
        options["file_name"] = str(tmp_path / options["file_name"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    server = Server(access_log=False)
    servers.append(server)
    with pytest.raises(error, match=field):
        server.start(ServerInfo(address=address), FilePersistorInfo(**options))
    assert not server.running
    # Nothing holds the address: the same server starts on it with good options.
    server.start(ServerInfo(address=address), FilePersistorInfo(use=True,
                 file_name=str(tmp_path / "good.log")))
    assert server.running


# -- loading ---------------------------------------------------------------------------


def test_golongpoll_file_with_corrupt_lines_loads_every_good_event(
    event_file: Path, make_persister: Callable[..., FilePersister], caplog: pytest.LogCaptureFixture
) -> None:
    event_file.write_bytes(
        record(1000, "news", "first", UUIDS[0])  # line 2 (the file starts with "\n")
        + b"\nnot json at all"  # line 3
        + record(1001, "news", {"n": [1, 2]}, UUIDS[1])  # line 4
        + b"\n"  # line 5: blank
        + b'\n{"timestamp":1002,"category":"news","data":null,"id":"x"}'  # line 6: null data
        + b'\n{"timestamp":"soon","category":"news","data":1,"id":"y"}'  # line 7: bad timestamp
        + b"\n\xff\xfe"  # line 8: not UTF-8
        + record(1003, "sport", "third", UUIDS[2])  # line 9
        + b'\n{"timestamp":1004,"category":"news","da'  # line 10: torn tail
    )
    with caplog.at_level(logging.WARNING, logger="wsgi_longpoll.engines.persist"):
        events = make_persister().load()
    assert [(e.timestamp, e.category, e.id, e.data) for e in events] == [
        (1000, "news", UUIDS[0], "first"),
        (1001, "news", UUIDS[1], {"n": [1, 2]}),
        (1003, "sport", UUIDS[2], "third"),
    ]
    warned = {r.getMessage().split(",")[1].split(":")[0].strip() for r in caplog.records}
    assert warned == {"line 3", "line 6", "line 7", "line 8", "line 10"}


def test_file_with_newline_after_each_record_loads(
    event_file: Path, make_persister: Callable[..., FilePersister]
) -> None:
    event_file.write_bytes(
        record(1000, "news", 1, UUIDS[0])[1:] + b"\n"
        + record(1001, "news", 2, UUIDS[1])[1:] + b"\n"
    )
    assert [e.data for e in make_persister().load()] == [1, 2]


def test_ten_megabyte_event_loads_with_the_events_after_it(
    event_file: Path, make_persister: Callable[..., FilePersister]
) -> None:
    big = "x" * (10 * 1024 * 1024)
    event_file.write_bytes(
        record(1000, "big", big, UUIDS[0]) + record(1001, "big", "after", UUIDS[1])
    )
    manager = LongpollManager(persister=make_persister())
    assert [e.data for e in manager.buffered_events("big")] == [big, "after"]


def test_out_of_order_records_are_served_by_timestamp_ties_in_file_order(
    event_file: Path, make_persister: Callable[..., FilePersister]
) -> None:
    event_file.write_bytes(
        record(3000, "news", "c", UUIDS[0])
        + record(1000, "news", "a", UUIDS[1])
        + record(2000, "news", "b1", UUIDS[2])
        + record(2000, "news", "b2", UUIDS[3])
        + record(1500, "other", "o", UUIDS[4])
    )
    manager = LongpollManager(persister=make_persister())
    assert [e.data for e in manager.buffered_events("news")] == ["a", "b1", "b2", "c"]
    assert [e.id for e in manager.buffered_events("news")] == [
        UUIDS[1], UUIDS[2], UUIDS[3], UUIDS[0]
    ]


def test_loaded_events_obey_buffer_size_and_time_to_live(
    event_file: Path, make_persister: Callable[..., FilePersister]
) -> None:
    now = now_ms()
    event_file.write_bytes(
        b"".join(record(now - 60_000, "old", n, UUIDS[n]) for n in range(3))
        + b"".join(record(now - 1000 + n, "recent", n, UUIDS[n]) for n in range(5))
    )
    manager = LongpollManager(
        max_event_buffer_size=3, event_time_to_live_seconds=30, persister=make_persister()
    )
    assert manager.buffered_events("old") == []
    assert [e.data for e in manager.buffered_events("recent")] == [2, 3, 4]


def test_events_published_after_reload_sort_after_loaded_ones_from_the_near_future(
    event_file: Path, make_persister: Callable[..., FilePersister]
) -> None:
    # The wall clock went back 30 s since this was written: within the bound, kept.
    future = now_ms() + 30_000
    event_file.write_bytes(record(future, "news", "before", UUIDS[0]))
    manager = LongpollManager(persister=make_persister())
    event = manager.publish("news", "after")
    assert event.timestamp >= future
    assert [e.data for e in manager.buffered_events("news")] == ["before", "after"]


def test_events_further_ahead_than_the_bound_are_skipped_and_do_not_hold_the_clock(
    event_file: Path, make_persister: Callable[..., FilePersister],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The wall clock went back an hour since this was written: beyond the bound (60 s).
    future = now_ms() + 3_600_000
    event_file.write_bytes(record(future, "news", "from the future", UUIDS[0]))
    with caplog.at_level(logging.WARNING, logger="wsgi_longpoll.engines.memory"):
        manager = LongpollManager(persister=make_persister())
    assert "more than 60 s ahead of the clock" in caplog.text
    event = manager.publish("news", "after")
    assert event.timestamp <= now_ms()
    assert [e.data for e in manager.buffered_events("news")] == ["after"]


# -- writing ---------------------------------------------------------------------------


def test_close_writes_everything_appended(
    event_file: Path, make_persister: Callable[..., FilePersister]
) -> None:
    persister = make_persister(write_buffer_size=1 << 20, write_flush_period_seconds=3600)
    manager = LongpollManager(persister=persister)
    published = [manager.publish("news", n).id for n in range(100)]
    manager.close()
    assert persister.closed
    assert [r["id"] for r in records_in(event_file)] == published


def test_full_write_buffer_is_written_before_the_flush_period(
    event_file: Path, make_persister: Callable[..., FilePersister]
) -> None:
    persister = make_persister(write_buffer_size=500, write_flush_period_seconds=3600)
    manager = LongpollManager(persister=persister)
    published = [manager.publish("news", n).id for n in range(20)]  # about 2 KB
    wait_until(lambda: len(records_in(event_file)) >= 15, WAIT_SECONDS)
    assert [r["id"] for r in records_in(event_file)] == published[: len(records_in(event_file))]


def test_flush_period_is_observed_in_the_file_while_running(
    event_file: Path, servers: list[Server]
) -> None:
    period = 0.5
    server = start_server(
        servers, event_file, write_buffer_size=1 << 20, write_flush_period_seconds=period
    )
    base_url = f"http://127.0.0.1:{server.port}"
    with requests.Session() as session:
        started = time.monotonic()
        publish_http(session, base_url, "news", "hello")
        acknowledged = time.monotonic()
        seen_early = records_in(event_file)
        if time.monotonic() - started < period / 2:
            assert seen_early == [], "the event skipped the write buffer"
        # The period is what is under test: wait it out, plus an allowance for scheduling.
        time.sleep(max(0.0, acknowledged + period + 0.25 - time.monotonic()))
        assert [r["data"] for r in records_in(event_file)] == ["hello"]


def test_slow_disk_does_not_stall_subscribers(
    event_file: Path, servers: list[Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    in_write = threading.Event()
    release = threading.Event()
    real_write_out = persist._write_out

    def stuck_write_out(fd: int, pending: bytearray) -> None:
        in_write.set()
        release.wait(WAIT_SECONDS)
        real_write_out(fd, pending)

    server = start_server(servers, event_file, write_buffer_size=1,
                          write_flush_period_seconds=0.05)
    base_url = f"http://127.0.0.1:{server.port}"
    monkeypatch.setattr(persist, "_write_out", stuck_write_out)
    try:
        with requests.Session() as session:
            publish_http(session, base_url, "news", "first")
            assert in_write.wait(WAIT_SECONDS)  # the writer thread is stuck on the disk
            publish_http(session, base_url, "news", "second")
            assert [e["data"] for e in fetch_all(base_url, "news")] == ["first", "second"]
            assert not release.is_set() and records_in(event_file) == []
    finally:
        release.set()
    server.stop(5)
    assert [r["data"] for r in records_in(event_file)] == ["first", "second"]


def test_failed_write_is_kept_and_retried(
    event_file: Path,
    make_persister: Callable[..., FilePersister],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real_write_out = persist._write_out
    failures = [OSError(28, "No space left on device")]

    def failing_once(fd: int, pending: bytearray) -> None:
        if pending and failures:
            real_write_out(fd, pending[:10])  # a partial write, then the error
            del pending[:10]
            raise failures.pop()
        real_write_out(fd, pending)

    persister = make_persister(write_buffer_size=1, write_flush_period_seconds=0.02)
    manager = LongpollManager(persister=persister)
    persister.flush()
    monkeypatch.setattr(persist, "_write_out", failing_once)
    with caplog.at_level(logging.ERROR, logger="wsgi_longpoll.engines.persist"):
        published = []
        for n in range(3):
            # Once the failure is known, publishes are refused until a retry works.
            with contextlib.suppress(PersistenceFailed):
                published.append(manager.publish("news", n).id)
        assert published
        # The failed write is the buffer's or the flush's own; then it raises.
        with contextlib.suppress(OSError):
            persister.flush()
        persister.flush()
    assert "No space left on device" in caplog.text
    assert [r["id"] for r in records_in(event_file)] == published


def test_flush_raises_when_the_disk_fails(
    make_persister: Callable[..., FilePersister], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fd: int, pending: bytearray) -> None:
        if pending:
            raise OSError(5, "Input/output error")

    persister = make_persister(write_buffer_size=1 << 20, write_flush_period_seconds=3600)
    manager = LongpollManager(engine=MemoryEngine(persister=persister))
    persister.flush()
    monkeypatch.setattr(persist, "_write_out", failing)
    persister.append(Event(1000, "news", UUIDS[0], "lost?"))
    with pytest.raises(OSError, match="Input/output error"):
        persister.flush()
    with pytest.raises(StorageUnavailable, match="Input/output error"):
        manager.check()  # what the health check asks
    monkeypatch.undo()
    persister.flush()
    manager.check()
    assert [e.data for e in persister.load()] == ["lost?"]


def test_writer_is_a_real_thread_in_a_monkey_patched_process(event_file: Path) -> None:
    # The hub never gets to run here: only a real OS thread can write the file.
    script = f"""
from gevent import monkey; monkey.patch_all()
import os, time
from wsgi_longpoll.event import Event
from wsgi_longpoll.engines.persist import FilePersister, PersistenceFailed
persister = FilePersister({str(event_file)!r}, 1, 0.01)
persister.append(Event(1000, "news", "{UUIDS[0]}", "hello"))
deadline = time.monotonic() + {WAIT_SECONDS}
while os.stat({str(event_file)!r}).st_size == 0 and time.monotonic() < deadline:
    pass
print(os.stat({str(event_file)!r}).st_size)
"""
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert int(completed.stdout) > 0


def test_exit_without_close_writes_everything(event_file: Path) -> None:
    script = f"""
from wsgi_longpoll.event import Event
from wsgi_longpoll.engines.persist import FilePersister, PersistenceFailed
persister = FilePersister({str(event_file)!r}, 1 << 20, 3600)
for n in range(50):
    persister.append(Event(1000 + n, "news", "{UUIDS[0][:-3]}%03d" % n, n))
"""
    subprocess.run([sys.executable, "-c", script], timeout=30, check=True)
    assert [r["data"] for r in records_in(event_file)] == list(range(50))


# -- restarts over HTTP ----------------------------------------------------------------


def test_events_from_four_publishers_come_back_in_order_after_restart(
    event_file: Path, servers: list[Server]
) -> None:
    server = start_server(servers, event_file, max_event_buffer_size=1000)
    address = f"127.0.0.1:{server.port}"
    base_url = f"http://{address}"

    def publisher(number: int) -> None:
        with requests.Session() as session:
            for n in range(100):
                publish_http(session, base_url, "orders", {"publisher": number, "n": n})

    threads = [threading.Thread(target=publisher, args=(p,)) for p in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_SECONDS * 3)
    before = fetch_all(base_url, "orders")
    assert len(before) == 400
    for number in range(4):
        assert [e["data"]["n"] for e in before if e["data"]["publisher"] == number] == list(
            range(100)
        )
    server.stop(5)

    restarted = start_server(servers, event_file, address=address, max_event_buffer_size=1000)
    assert restarted.port == server.port
    assert fetch_all(base_url, "orders") == before


def test_file_is_compacted_on_restart_and_newest_events_served(
    event_file: Path, servers: list[Server]
) -> None:
    server = start_server(servers, event_file)
    address = f"127.0.0.1:{server.port}"
    published = [server.manager.publish("busy", n).id for n in range(3000)]
    server.stop(5)
    assert len(records_in(event_file)) == 3000

    start_server(servers, event_file, address=address)
    served = fetch_all(f"http://{address}", "busy")
    assert [e["id"] for e in served] == published[-250:]
    wait_until(lambda: len(records_in(event_file)) < 3000, WAIT_SECONDS)
    assert [r["id"] for r in records_in(event_file)] == published[-250:]


def test_file_is_compacted_while_running_when_it_has_grown_enough(
    event_file: Path, make_persister: Callable[..., FilePersister]
) -> None:
    persister = make_persister(compact_bytes=20_000)
    manager = LongpollManager(max_event_buffer_size=50, persister=persister)
    published = [manager.publish(f"category-{n % 2}", n) for n in range(2000)]  # ~200 KB
    persister.flush()
    stored = records_in(event_file)
    # At most what the buffers keep plus one threshold's growth, and the newest all there.
    assert 100 <= len(stored) < 100 + 20_000 // 90
    for category in ("category-0", "category-1"):
        ids = [r["id"] for r in stored if r["category"] == category]
        assert ids == [e.id for e in published if e.category == category][-len(ids):]
    manager.close()
    reloaded = LongpollManager(max_event_buffer_size=50, persister=make_persister())
    assert reloaded.buffered_events("category-1") == published[-99::2]


def test_interrupted_compaction_leaves_a_loadable_file(
    event_file: Path,
    make_persister: Callable[..., FilePersister],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    event_file.write_bytes(b"".join(record(1000 + n, "news", n, UUIDS[n]) for n in range(10)))
    # A crash during an earlier compaction left a half-written new file behind.
    (event_file.parent / "events.log.compacting").write_bytes(b'\n{"timestamp":1,"cat')

    def failing_replace(source: Any, destination: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    persister = make_persister()
    with caplog.at_level(logging.ERROR, logger="wsgi_longpoll.engines.persist"):
        manager = LongpollManager(max_event_buffer_size=3, persister=persister)  # compacts
        manager.publish("news", "after")
        persister.flush()
    assert "compaction failed" in caplog.text
    assert sorted(event_file.parent.iterdir()) == [event_file]  # the half-written one went
    manager.close()
    monkeypatch.undo()

    reloaded = make_persister().load()
    assert [e.data for e in reloaded] == [*range(10), "after"]


# -- crash safety ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_serve_process(event_file: Path, port: int, period: float) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable, "-m", "wsgi_longpoll", "serve",
            "--address", f"127.0.0.1:{port}",
            "--persist-file", str(event_file),
            "--write-buffer-size", str(1 << 20),  # only the flush period writes
            "--write-flush-period-seconds", str(period),
            "--buffer-size", "100000",
            "--no-access-log", "--log-level", "WARNING",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answers() -> bool:
        assert process.poll() is None, "the server process exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    wait_until(answers, WAIT_SECONDS * 2)
    return process


def test_sigkill_loses_at_most_the_last_flush_period(event_file: Path) -> None:
    period = 0.5
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    process = start_serve_process(event_file, port, period)
    acknowledged: list[tuple[float, int]] = []
    killed_at: list[float] = []

    def kill_later() -> None:
        time.sleep(2.5)  # publishing runs meanwhile: the kill lands mid-stream
        killed_at.append(time.monotonic())
        process.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_later)
    try:
        killer.start()
        with requests.Session() as session:
            for n in range(1_000_000):
                try:
                    publish_http(session, base_url, "stream", n)
                except requests.ConnectionError:
                    break
                acknowledged.append((time.monotonic(), n))
        killer.join()
        process.wait(WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # A power loss can also tear the last record; the next start must shrug it off.
    with event_file.open("ab") as stream:
        stream.write(b'\n{"timestamp":1,"category":"stream","da')

    process = start_serve_process(event_file, port, period)
    try:
        served = [e["data"] for e in fetch_all(base_url, "stream")]
        # One period, plus one more for a writer thread that a loaded machine runs late.
        must_be_back = [n for at, n in acknowledged if at < killed_at[0] - 2 * period]
        assert len(must_be_back) > 10
        assert served[: len(must_be_back)] == must_be_back
        assert served == list(range(len(served)))  # nothing out of order, nothing twice
        with requests.Session() as session:
            publish_http(session, base_url, "stream", "after restart")
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT_SECONDS) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert records_in(event_file)[-1]["data"] == "after restart"


def test_file_persistor_info_fsync_reaches_the_persister(tmp_path: Path) -> None:
    from wsgi_longpoll.server import _make_persister

    info = FilePersistorInfo(use=True, file_name=str(tmp_path / "events"), fsync=True)
    persister = _make_persister(info)
    try:
        assert persister.fsync is True
    finally:
        persister.close()
    assert _make_persister(FilePersistorInfo()) is None
