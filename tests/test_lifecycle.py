"""The command line's lifecycle and operational options, in a real subprocess.

SIGTERM and SIGINT drain (parked subscribers answered, the persistence file flushed,
exit 0); the publish token, the limits, the monitoring paths and CORS reach the server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import wait_until


class Served:
    """A ``wsgi-longpoll serve`` subprocess on a free port of 127.0.0.1."""

    def __init__(self, *options: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wsgi_longpoll", "serve", "--address", "127.0.0.1:0",
             "--no-access-log", "--no-demo", *options],
            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
        )
        assert self.process.stderr is not None
        self.base_url = ""
        for line in self.process.stderr:  # the banner comes once the port is bound
            match = re.search(r"subscribe at (http://[\d.]+:\d+)/", line)
            if match:
                self.base_url = match.group(1)
                break
        if not self.base_url:
            self.process.kill()
            pytest.fail("the server exited before it was ready")
        # Keep reading standard error so that the server never blocks on a full pipe.
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._reader.join(10)


@pytest.fixture
def served_factory() -> Iterator[type[Served]]:
    started: list[Served] = []

    class Tracked(Served):
        def __init__(self, *options: str, env: dict[str, str] | None = None) -> None:
            super().__init__(*options, env=env)
            started.append(self)

    yield Tracked
    for served in started:
        served.stop()


def publish(base_url: str, category: str, data: object, **kwargs: object) -> requests.Response:
    return requests.post(f"{base_url}/publish", json={"category": category, "data": data},
                         timeout=10, **kwargs)  # type: ignore[arg-type]


def waiting(base_url: str) -> int:
    return int(requests.get(f"{base_url}/stats", timeout=10).json()["waiting_subscribers"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_answers_parked_subscribers_flushes_the_file_and_exits_0(
    served_factory: type[Served], tmp_path: Path, sig: signal.Signals
) -> None:
    events_file = tmp_path / "events.log"
    # A buffer and a flush period so large that nothing is written before the shutdown.
    served = served_factory(
        "--stats-path", "/stats", "--persist-file", str(events_file),
        "--write-buffer-size", "100000000", "--write-flush-period-seconds", "3600",
        "--shutdown-timeout", "3", "--timeout-seconds", "110",
    )
    base = served.base_url
    sent = [{"n": n, "text": "é\u0000" * n} for n in range(20)]
    for data in sent:
        assert publish(base, "kept", data).status_code == 200

    answers: list[requests.Response] = []

    def park() -> None:
        answers.append(requests.get(f"{base}/events?timeout=110&category=parked", timeout=60))

    parked = [threading.Thread(target=park) for _ in range(5)]
    for thread in parked:
        thread.start()
    wait_until(lambda: waiting(base) == 5)

    served.process.send_signal(sig)
    # Every subscriber is answered long before its 110 s timeout ...
    for thread in parked:
        thread.join(30)
    assert not any(thread.is_alive() for thread in parked)
    assert [answer.status_code for answer in answers] == [200] * 5
    assert all(set(answer.json()) == {"timeout", "timestamp"} for answer in answers)
    # ... the process exits 0 within the shutdown timeout (plus start-up slack) ...
    assert served.process.wait(20) == 0
    # ... and every accepted event is in the file, unaltered.
    records = [json.loads(line) for line in events_file.read_text("utf-8").splitlines() if line]
    assert [record["data"] for record in records] == sent


def test_publish_token_from_the_environment(served_factory: type[Served]) -> None:
    served = served_factory(env={"WSGI_LONGPOLL_PUBLISH_TOKEN": "from-env"})
    assert "from-env" not in " ".join(served.process.args)  # type: ignore[arg-type]
    assert publish(served.base_url, "c", 1).status_code == 401
    ok = publish(served.base_url, "c", 1, headers={"Authorization": "Bearer from-env"})
    assert ok.status_code == 200


def test_publish_token_option(served_factory: type[Served]) -> None:
    served = served_factory("--publish-token", "opt")
    refused = publish(served.base_url, "c", 1, headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="wsgi_longpoll"'
    assert publish(served.base_url, "c", 1,
                   headers={"Authorization": "Bearer opt"}).status_code == 200
    # Subscribing stays open.
    events = requests.get(f"{served.base_url}/events?timeout=1&category=c&since_time=1",
                          timeout=10).json()["events"]
    assert [event["data"] for event in events] == [1]


def test_limits_and_monitoring_options(served_factory: type[Served]) -> None:
    served = served_factory(
        "--max-categories", "1", "--max-waiting-subscribers", "1",
        "--stats-path", "/s", "--metrics-path", "/m", "--health-path", "/h",
    )
    base = served.base_url
    assert publish(base, "a", 1).status_code == 200
    parked = threading.Thread(
        target=requests.get, args=(f"{base}/events?timeout=20&category=a",),
        kwargs={"timeout": 60},
    )
    parked.start()
    wait_until(lambda: requests.get(f"{base}/s", timeout=10).json()["waiting_subscribers"] == 1)
    full = publish(base, "c", 1)  # "a", the one category, has a subscriber: not pushed out
    assert full.status_code == 503
    assert full.headers["Retry-After"] == "1"
    assert "max_categories" in full.json()["error"]
    busy = requests.get(f"{base}/events?timeout=20&category=b", timeout=10)
    assert busy.status_code == 503
    assert busy.headers["Retry-After"] == "1"
    assert "max_waiting_subscribers" in busy.json()["error"]
    publish(base, "a", 2)
    parked.join(30)

    stats = requests.get(f"{base}/s", timeout=10).json()
    assert (stats["max_categories"], stats["max_waiting_subscribers"]) == (1, 1)
    assert (stats["events_published"], stats["publish_errors"]) == (2, 1)
    assert "wsgi_longpoll_events_published_total 2\n" in requests.get(f"{base}/m", timeout=10).text
    assert requests.get(f"{base}/h", timeout=10).json() == {"status": "ok"}


def test_cors_origin_option(served_factory: type[Served]) -> None:
    served = served_factory("--cors-origin", "https://a.example", "--cors-origin",
                            "https://b.example", "--cors-allow-credentials")
    for origin in ("https://a.example", "https://b.example"):
        response = requests.options(f"{served.base_url}/events", timeout=10, headers={
            "Origin": origin, "Access-Control-Request-Method": "GET"})
        assert response.status_code == 204
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
    refused = requests.options(f"{served.base_url}/events", timeout=10, headers={
        "Origin": "https://c.example", "Access-Control-Request-Method": "GET"})
    assert refused.status_code == 403


def test_invalid_cors_origin_is_a_usage_error_with_a_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wsgi_longpoll", "serve", "--address", "127.0.0.1:0",
         "--cors-origin", "https://a.example/path"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "invalid origin 'https://a.example/path'" in result.stderr
