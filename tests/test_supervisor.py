"""``wsgi-longpoll serve --workers N`` (:mod:`wsgi_longpoll.server.supervisor`): real
processes on 127.0.0.1, on a redis-server of the test's own."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RedisProcess

from wsgi_longpoll.server.supervisor import Supervisor

WAIT_SECONDS = 30.0


class Served:
    """``wsgi-longpoll serve`` in a subprocess, its standard error read as it comes."""

    def __init__(self, *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wsgi_longpoll", "serve", "--address", "127.0.0.1:0",
             "--no-demo", *options],
            stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._condition = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = 0

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._condition:
                self.lines.append(line)
                self._condition.notify_all()
        with self._condition:
            self.lines.append("")  # end of output
            self._condition.notify_all()

    def wait_for(self, pattern: str, start: int = 0) -> re.Match[str]:
        """The first line from *start* on that matches *pattern*; fails at the output's end."""
        deadline = time.monotonic() + WAIT_SECONDS
        with self._condition:
            index = start
            while True:
                while index < len(self.lines):
                    line = self.lines[index]
                    if line == "":
                        pytest.fail(f"no {pattern!r} in:\n{''.join(self.lines)}")
                    match = re.search(pattern, line)
                    if match:
                        return match
                    index += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no {pattern!r} within {WAIT_SECONDS} s")
                self._condition.wait(left)

    def ready(self) -> Served:
        self.port = int(self.wait_for(r"subscribe at http://[\d.]+:(\d+)/").group(1))
        return self

    def request(self, method: str, target: str, body: Any = None) -> tuple[int, Any]:
        """One request on a connection of its own (so the kernel picks a worker anew)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT_SECONDS)
        try:
            connection.request(method, target,
                               body=None if body is None else json.dumps(body))
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def stats_by_worker(self, until: Any) -> dict[int, dict[str, Any]]:
        """Each worker's latest ``/stats``, asked on new connections until *until* of it."""
        seen: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + WAIT_SECONDS
        while not until(seen):
            assert time.monotonic() < deadline, f"stats never got there: {seen}"
            status, stats = self.request("GET", "/stats")
            assert status == 200
            seen[stats["pid"]] = stats
        return seen

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        status = self.process.wait(WAIT_SECONDS)
        self._reader.join(WAIT_SECONDS)
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT_SECONDS)


@pytest.fixture
def two_workers(redis_server: RedisProcess) -> Iterator[Served]:
    served = Served("--workers", "2", "--redis-url", redis_server.url, "--stats-path",
                    "/stats", "--timeout-seconds", "60", "--no-access-log").ready()
    yield served
    served.kill()


def park_polls(served: Served, count: int, category: str) -> tuple[list[Any], list[Any]]:
    """*count* long polls without a cursor, each on a connection of its own, waiting on
    both workers; their answers, filled in as they come, and their threads."""
    answers: list[Any] = []

    def poll() -> None:
        answers.append(served.request("GET", f"/events?category={category}&timeout=50"))

    threads = [threading.Thread(target=poll, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    served.stats_by_worker(lambda seen: len(seen) == 2 and sum(
        stats["waiting_subscribers"] for stats in seen.values()) == count)
    return answers, threads


def test_two_workers_serve_and_a_publish_to_either_reaches_subscribers_on_both(
        two_workers: Served) -> None:
    answers, threads = park_polls(two_workers, 24, "shared")
    published: list[int] = []
    # Publish on new connections until each worker has taken a publish.
    while True:
        number = len(published)
        assert number < 60, "one worker took every publish"
        assert two_workers.request("POST", "/publish",
                                   {"category": "shared", "data": number}) == (200,
                                                                                {"success": True})
        published.append(number)
        seen = two_workers.stats_by_worker(lambda seen: len(seen) == 2)
        if all(stats["events_published"] for stats in seen.values()):
            break
    for thread in threads:
        thread.join(WAIT_SECONDS)
    assert len(answers) == 24
    for status, body in answers:  # each woken by the first publish, whichever worker it is on
        assert status == 200 and body["events"][0]["data"] == 0
        # ... and its next polls, from its cursor, get every later one.
        events = body["events"]
        while len(events) < len(published):
            last = events[-1]
            status, more = two_workers.request(
                "GET", f"/events?category=shared&timeout=1&since_time={last['timestamp']}"
                f"&last_id={last['id']}")
            events += more.get("events", [])
        assert [event["data"] for event in events] == published
    assert two_workers.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_drains_every_worker_and_exits_0(two_workers: Served,
                                                  sig: signal.Signals) -> None:
    answers, threads = park_polls(two_workers, 10, "drained")
    assert two_workers.stop(sig) == 0
    for thread in threads:
        thread.join(WAIT_SECONDS)
    assert len(answers) == 10  # every waiting poll answered, none cut
    assert all(status == 200 and body["timeout"] == "no events before timeout"
               for status, body in answers)
    assert len(re.findall(r"worker \d \(pid \d+\) stopped \(exit status 0\)",
                          "".join(two_workers.lines))) == 2


def test_a_worker_that_dies_is_reported_and_replaced(two_workers: Served) -> None:
    seen = two_workers.stats_by_worker(lambda seen: len(seen) == 2)
    victim = min(seen)
    os.kill(victim, signal.SIGKILL)
    two_workers.wait_for(rf"worker \d \(pid {victim}\) died \(killed by SIGKILL\): "
                         "starting another")
    # The new worker serves beside the old one.
    fresh = two_workers.stats_by_worker(lambda seen: len(seen) == 2)
    assert victim not in fresh
    assert two_workers.stop() == 0


def test_the_in_memory_engine_is_refused_with_the_reason() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wsgi_longpoll", "serve", "--address", "127.0.0.1:0",
         "--workers", "2"],
        capture_output=True, text=True, timeout=WAIT_SECONDS,
    )
    assert result.returncode == 1
    assert "--workers 2 runs several processes" in result.stderr
    assert "keeps its events in this process's memory" in result.stderr
    assert "--redis-url" in result.stderr


def test_workers_that_cannot_start_stop_the_supervisor_with_status_1(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    served = Served("--workers", "2", "--redis-url", redis_server.url,
                    "--persist-file", str(tmp_path / "events"))
    try:
        assert served.process.wait(WAIT_SECONDS) == 1
        served.wait_for(r"worker \d \(pid \d+\) failed to boot \(exit status 1\): stopping")
    finally:
        served.kill()


# -- the supervisor itself, with workers of the test's own ------------------------------


def _stop_soon() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # once every worker is ready: stop them


def _serve_then_return(status: int) -> Any:
    def target(ready: Any) -> int:
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *args: stopped.set())
        ready()
        stopped.wait(WAIT_SECONDS)
        return status
    return target


@pytest.mark.parametrize("status", [0, 3])
def test_the_supervisor_exits_with_the_workers_status(status: int) -> None:
    supervisor = Supervisor(2, _serve_then_return(status), shutdown_timeout=5,
                            on_ready=_stop_soon)
    assert supervisor.run() == status


def test_a_worker_killed_while_stopping_counts_128_plus_its_signal() -> None:
    def target(ready: Any) -> int:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # dies of it
        ready()
        time.sleep(WAIT_SECONDS)
        return 0

    supervisor = Supervisor(2, target, shutdown_timeout=5, on_ready=_stop_soon)
    assert supervisor.run() == 128 + signal.SIGTERM


def test_a_worker_that_never_says_it_is_ready_is_a_failure_to_boot(
        caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor(1, _serve_then_return(0), shutdown_timeout=5)
    supervisor.boot_timeout = 0.5

    def never_ready(ready: Any) -> int:
        time.sleep(WAIT_SECONDS)
        return 0

    supervisor.target = never_ready
    assert supervisor.run() == 1  # the worker, stopped before it served, exits 0
    assert "is not serving after" in caplog.text
