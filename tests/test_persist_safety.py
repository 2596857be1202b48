"""Issue 13, data safety: a failing disk, two writers, bad records, acknowledge after write."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gevent
import pytest
import requests
from conftest import wait_until
from webtest import TestApp

from wsgi_longpoll import LongpollManager
from wsgi_longpoll.engines import persist
from wsgi_longpoll.engines.memory import MemoryEngine
from wsgi_longpoll.engines.persist import (
    FilePersister,
    NotWritten,
    PersistenceFailed,
    PersistFileLocked,
)
from wsgi_longpoll.errors import OutcomeUnknown, StorageUnavailable
from wsgi_longpoll.event import Event
from wsgi_longpoll.protocol import MAX_TIMESTAMP, now_ms
from wsgi_longpoll.wsgi.answers import not_found
from wsgi_longpoll.wsgi.middleware import LongpollMiddleware

#: The longest any test waits for a server or a file; every wait is bounded by it.
WAIT_SECONDS = 20

UUIDS = [f"00000000-0000-4000-8000-{n:012d}" for n in range(10)]


@pytest.fixture
def event_file(tmp_path: Path) -> Path:
    return tmp_path / "events.log"


@pytest.fixture
def make_persister(event_file: Path) -> Iterator[Callable[..., FilePersister]]:
    made: list[FilePersister] = []

    def make(**options: Any) -> FilePersister:
        options.setdefault("write_flush_period_seconds", 0.05)
        persister = FilePersister(event_file, **options)
        made.append(persister)
        return persister

    yield make
    for persister in made:
        persister.close()


def stored_data(path: Path) -> list[Any]:
    """The data of each whole record in *path*, in file order (a torn last one left out)."""
    found = []
    for line in path.read_bytes().split(b"\n"):
        if line.strip():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line)["data"])
    return found


# -- 1. a failing disk -------------------------------------------------------------------


def test_a_failed_write_refuses_publishes_until_a_retry_works(
    event_file: Path, make_persister: Callable[..., FilePersister],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    persister = make_persister()
    manager = LongpollManager(persister=persister)
    manager.publish("news", "before")
    persister.flush()
    assert persister.healthy and persister.write_error is None

    real_write_out = persist._write_out

    def disk_full(fd: int, pending: bytearray) -> None:
        if pending:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(persist, "_write_out", disk_full)
    manager.publish("news", "accepted before the failure was known")
    with pytest.raises(OSError):
        persister.flush()
    assert not persister.healthy
    assert persister.write_error is not None and persister.write_error.errno == errno.ENOSPC
    assert persister.write_failures >= 1
    with pytest.raises(PersistenceFailed, match="No space left") as refused:
        manager.publish("news", "refused")
    assert isinstance(refused.value, StorageUnavailable)
    assert [e.data for e in manager.buffered_events("news")] == [
        "before", "accepted before the failure was known",
    ]
    assert manager.stats().publish_errors == 1

    # Retried every flush period: once a write works again, events are accepted again.
    monkeypatch.setattr(persist, "_write_out", real_write_out)
    wait_until(lambda: persister.healthy, WAIT_SECONDS)
    manager.publish("news", "after")
    manager.close()
    assert stored_data(event_file) == [
        "before", "accepted before the failure was known", "after",
    ]
    assert persister.discarded_events == 0


def test_the_middleware_answers_503_while_the_disk_fails(
    make_persister: Callable[..., FilePersister], monkeypatch: pytest.MonkeyPatch,
) -> None:
    persister = make_persister()
    manager = LongpollManager(persister=persister)
    persister.flush()
    app = TestApp(LongpollMiddleware(lambda environ, start_response: [], manager))

    def io_error(fd: int, pending: bytearray) -> None:
        if pending:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(persist, "_write_out", io_error)
    app.post_json("/publish", {"category": "news", "data": 1})
    with pytest.raises(OSError):
        persister.flush()
    answer = app.post_json("/publish", {"category": "news", "data": 2}, status=503)
    assert answer.headers["Retry-After"] == "1"
    assert "error" in answer.json


def test_close_counts_the_events_it_could_not_write(
    make_persister: Callable[..., FilePersister], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    persister = make_persister(write_flush_period_seconds=60)
    manager = LongpollManager(persister=persister)

    def partly(fd: int, pending: bytearray) -> None:
        if pending:
            del pending[:10]  # a torn first record, then the disk is full
            raise OSError(errno.EFBIG, "File too large")

    persister.flush()  # the compaction on start is done

    monkeypatch.setattr(persist, "_write_out", partly)
    for n in range(5):
        manager.publish("news", n)
    with caplog.at_level(logging.ERROR, logger="wsgi_longpoll.engines.persist"):
        manager.close()
    assert persister.discarded_events == 5
    assert persister.discarded_bytes > 0
    assert "closed with 5 events" in caplog.text


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a core dump
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve(
    event_file: Path, port: int, *options: str, preexec_fn: Callable[[], None] | None = None,
    stderr: Any = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable, "-m", "wsgi_longpoll", "serve",
            "--address", f"127.0.0.1:{port}", "--persist-file", str(event_file),
            "--buffer-size", "100000", "--no-access-log", "--no-demo", "--log-level", "INFO",
            *options,
        ],
        stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=preexec_fn,
    )

    def answers() -> bool:
        assert process.poll() is None, "the server process exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    wait_until(answers, WAIT_SECONDS)
    return process


@pytest.mark.parametrize("ack_after_write", [False, True], ids=["periodic", "ack-after-write"])
def test_serve_with_a_file_size_limit_refuses_and_exits_non_zero(
    event_file: Path, ack_after_write: bool
) -> None:
    port = free_port()
    mode = ["--persist-ack-after-write"] if ack_after_write else []
    process = serve(  # the log goes to a pipe: a file would hit the size limit too
        event_file, port, "--write-flush-period-seconds", "0.05", "--health-path", "/healthz",
        *mode,
        preexec_fn=_limit_file_size(100 * 1024), stderr=subprocess.PIPE,
    )
    log: list[bytes] = []
    assert process.stderr is not None
    reader = threading.Thread(target=lambda: log.extend(process.stderr))  # type: ignore[arg-type]
    reader.start()
    answers: dict[int, int] = {}
    ok: list[int] = []
    try:
        with requests.Session() as session:
            for n in range(3000):
                response = session.post(
                    f"http://127.0.0.1:{port}/publish",
                    json={"category": "news", "data": {"n": n, "pad": "x" * 40}}, timeout=10,
                )
                answers[response.status_code] = answers.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    ok.append(n)
            health = session.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        process.send_signal(signal.SIGTERM)
        code = process.wait(WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(WAIT_SECONDS)
    text = b"".join(log).decode()
    on_disk = [record["n"] for record in stored_data(event_file) if isinstance(record, dict)]
    print(f"answers {answers}, exit code {code}, {len(on_disk)} events on disk")
    assert answers.get(503, 0) > 0
    # 504: with acknowledge after write, the publish whose own write failed (published,
    # not written); every later one is refused before anything is stored (503)
    assert set(answers) <= ({200, 503, 504} if ack_after_write else {200, 503})
    assert answers.get(504, 0) <= 1
    assert health.status_code == 503  # the disk is still full
    assert event_file.stat().st_size <= 100 * 1024
    lost = len(ok) - len(on_disk)
    assert on_disk == ok[: len(on_disk)]  # what is on disk is what was acknowledged
    # Some events were in the writer's hands when the disk filled up: said, and exit 1.
    assert code == 1
    assert "could not be written" in text
    if ack_after_write:
        assert lost == 0  # their publishers were answered 503 (or 504)
        assert "; 0 acknowledged events)" in text
    else:  # accepted before the first failure was known
        assert f"; {lost} acknowledged events)" in text


# -- 2. one writer per file --------------------------------------------------------------


def test_a_second_persister_on_the_same_file_is_refused(
    event_file: Path, make_persister: Callable[..., FilePersister]
) -> None:
    first = make_persister()
    LongpollManager(persister=first).publish("news", 1)  # the manager compacts on start
    with pytest.raises(PersistFileLocked, match=str(event_file)) as refused:
        FilePersister(event_file)
    assert isinstance(refused.value, OSError)
    assert str(os.getpid()) in str(refused.value)
    first.close()
    make_persister().close()  # free again once closed


def test_a_second_serve_on_the_same_file_refuses_to_start(
    event_file: Path, tmp_path: Path
) -> None:
    port = free_port()
    first = serve(event_file, port)
    try:
        second = subprocess.run(
            [
                sys.executable, "-m", "wsgi_longpoll", "serve",
                "--address", f"127.0.0.1:{free_port()}", "--persist-file", str(event_file),
            ],
            capture_output=True, timeout=WAIT_SECONDS,
        )
        assert second.returncode == 1
        message = second.stderr.decode()
        assert "cannot start" in message and str(event_file) in message
        assert f"process {first.pid}" in message
        requests.post(f"http://127.0.0.1:{port}/publish",
                      json={"category": "news", "data": "kept"}, timeout=10).raise_for_status()
        first.send_signal(signal.SIGTERM)
        assert first.wait(WAIT_SECONDS) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert stored_data(event_file) == ["kept"]


# -- 3. records validated on load --------------------------------------------------------


def test_records_out_of_the_resumable_range_are_skipped(
    event_file: Path, make_persister: Callable[..., FilePersister],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def line(timestamp: int, event_id: str, data: Any) -> bytes:
        return b"\n" + json.dumps(
            {"timestamp": timestamp, "category": "news", "id": event_id, "data": data}
        ).encode()

    event_file.write_bytes(b"".join([
        line(1000, UUIDS[0], "good"),
        line(99999999999999999999, UUIDS[1], "beyond int64"),
        line(MAX_TIMESTAMP + 1, UUIDS[2], "beyond 2**53 - 1"),
        line(-5, UUIDS[3], "negative"),
        line(2000, "not-a-uuid", "bad id"),
        line(3000, "ABCDEF00-0000-4000-8000-000000000004", "upper-case id"),
        line(MAX_TIMESTAMP, UUIDS[5], "the largest"),
    ]))
    with caplog.at_level(logging.WARNING, logger="wsgi_longpoll.engines.persist"):
        loaded = make_persister().load()
    assert [event.data for event in loaded] == ["good", "the largest"]
    for number in (3, 4, 5, 6, 7):
        assert f"line {number}: skipped" in caplog.text
    assert "outside 0 to 9007199254740991" in caplog.text


def test_the_clock_stays_in_range_after_a_bad_record(
    event_file: Path, make_persister: Callable[..., FilePersister]
) -> None:
    event_file.write_bytes(b"\n" + json.dumps(
        {"timestamp": 99999999999999999999, "category": "news", "id": UUIDS[0], "data": 1}
    ).encode())
    manager = LongpollManager(persister=make_persister())
    event = manager.publish("news", "after")
    assert 0 < event.timestamp <= now_ms() <= MAX_TIMESTAMP
    manager.close()


def test_the_memory_engine_skips_out_of_range_events_from_any_persister() -> None:
    class Given:
        def load(self) -> list[Event]:
            return [Event(10**20, "news", UUIDS[0], 1), Event(-1, "news", UUIDS[1], 2),
                    Event(1000, "news", UUIDS[2], 3)]

        def append(self, event: Event) -> None:
            pass

        wants_compaction = False

        def compact(self, events: list[Event]) -> None:
            pass

        def check(self) -> None:
            pass

        def wait_written(self, event: Event) -> None:
            pass

        def close(self) -> None:
            pass

    engine = MemoryEngine(10, None, 10, Given())
    assert [event.data for event in engine.events("news")] == [3]
    assert engine.append("news", "next").timestamp <= MAX_TIMESTAMP


# -- 4. acknowledge after write ----------------------------------------------------------


def test_publish_returns_only_once_its_event_is_written_in_a_thread(
    event_file: Path, make_persister: Callable[..., FilePersister],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    persister = make_persister(acknowledge_after_write=True, write_flush_period_seconds=60)
    manager = LongpollManager(persister=persister)
    allowed = threading.Event()
    real_write_out = persist._write_out

    def gated(fd: int, pending: bytearray) -> None:
        if pending:
            assert allowed.wait(WAIT_SECONDS)
        real_write_out(fd, pending)

    monkeypatch.setattr(persist, "_write_out", gated)
    returned = threading.Event()

    def publish() -> None:
        manager.publish("news", "durable")
        returned.set()

    publisher = threading.Thread(target=publish)
    publisher.start()
    assert not returned.wait(0.3)  # not before the write (no timing asserted: only order)
    assert stored_data(event_file) == []
    allowed.set()
    assert returned.wait(WAIT_SECONDS)
    assert stored_data(event_file) == ["durable"]
    publisher.join(WAIT_SECONDS)
    manager.close()


def test_waiting_publishers_do_not_block_the_hub_and_share_writes(
    event_file: Path, make_persister: Callable[..., FilePersister],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    persister = make_persister(acknowledge_after_write=True, fsync=True,
                               write_flush_period_seconds=60)
    manager = LongpollManager(persister=persister)
    allowed = threading.Event()
    writes: list[int] = []
    real_write_out = persist._write_out

    def gated(fd: int, pending: bytearray) -> None:
        if pending:
            writes.append(pending.count(b"\n"))
            assert allowed.wait(WAIT_SECONDS)
        real_write_out(fd, pending)

    monkeypatch.setattr(persist, "_write_out", gated)
    ticks = [0]

    def ticker() -> None:
        while True:
            ticks[0] += 1
            gevent.sleep(0.001)

    tick = gevent.spawn(ticker)
    publishers = [gevent.spawn(manager.publish, "news", n) for n in range(50)]
    gevent.sleep(0.05)
    wait_until(lambda: writes, WAIT_SECONDS)  # the first write holds the writer
    before = ticks[0]
    gevent.sleep(0.05)
    assert ticks[0] > before  # the hub runs while 50 publishers wait
    assert not any(publisher.ready() for publisher in publishers)
    allowed.set()
    gevent.joinall(publishers, timeout=WAIT_SECONDS, raise_error=True)
    tick.kill()
    assert all(publisher.successful() for publisher in publishers)
    assert sum(writes) == 50 and len(writes) < 50  # group commit: writes were shared
    assert stored_data(event_file) == list(range(50))
    manager.close()


def test_a_failed_write_fails_the_waiting_publish(
    make_persister: Callable[..., FilePersister], monkeypatch: pytest.MonkeyPatch,
) -> None:
    persister = make_persister(acknowledge_after_write=True)
    manager = LongpollManager(persister=persister)
    persister.flush()

    def disk_full(fd: int, pending: bytearray) -> None:
        if pending:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(persist, "_write_out", disk_full)
    with pytest.raises(NotWritten, match="could not be written") as failed:
        manager.publish("news", 1)  # published (buffered) but not written: outcome unknown
    assert isinstance(failed.value, OutcomeUnknown)
    assert [event.data for event in manager.buffered_events("news")] == [1]
    app = TestApp(LongpollMiddleware(not_found, manager))
    refused = app.post_json("/publish", {"category": "news", "data": 2}, status=503)
    assert "unavailable" in refused.json["error"]  # refused before anything was stored
    assert [event.data for event in manager.buffered_events("news")] == [1]
    monkeypatch.undo()
    wait_until(lambda: persister.healthy, WAIT_SECONDS)
    manager.publish("news", 3)
    manager.close()


def test_sigkill_loses_no_acknowledged_event(event_file: Path) -> None:
    port = free_port()
    process = serve(
        event_file, port, "--persist-ack-after-write", "--write-flush-period-seconds", "60",
        "--write-buffer-size", str(1 << 20), "--log-level", "WARNING",
    )
    acknowledged: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def publish_from(first: int) -> None:
        with requests.Session() as session:
            for n in range(first, first + 100_000, 1):
                if stop.is_set():
                    return
                try:
                    response = session.post(
                        f"http://127.0.0.1:{port}/publish",
                        json={"category": "news", "data": n}, timeout=10,
                    )
                except requests.ConnectionError:
                    return
                if response.status_code == 200:
                    with lock:
                        acknowledged.append(n)

    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(publish_from, k * 1_000_000) for k in range(4)]
            wait_until(lambda: len(acknowledged) >= 300, WAIT_SECONDS * 3)
            process.send_signal(signal.SIGKILL)  # publishes are in flight
            process.wait(WAIT_SECONDS)
            stop.set()
            for future in futures:
                future.result(WAIT_SECONDS)
    finally:
        stop.set()
        if process.poll() is None:
            process.kill()
            process.wait()
    persister = FilePersister(event_file)  # the lock died with the process
    try:
        back = {event.data for event in persister.load()}
    finally:
        persister.close()
    missing = sorted(set(acknowledged) - back)
    print(f"{len(acknowledged)} acknowledged, {len(back)} in the file, {len(missing)} missing")
    assert not missing
