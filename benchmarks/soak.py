"""Soak test: thousands of parked subscribers, a steady publish rate, random hang-ups.

Starts ``wsgi-longpoll serve`` in a subprocess on 127.0.0.1 and, from this process (one
gevent hub, raw HTTP/1.1 sockets), keeps ``--subscribers`` long polls parked across
``--categories`` categories while publishing ``--rate`` events a second round-robin over
them, for ``--seconds``. A ``--churn`` share of the subscribers hang up at random moments
mid-poll and come back on a new connection, resuming from their cursor; the others stay.

It reports the server's resident memory over time (flat after warm-up is the goal) and
checks that every subscriber that stayed received every event of its category exactly
once, in order. Figures, never pass/fail; the exit status is 0 unless the run itself
broke (the server died, nothing could be published).

Warm-up: a category's buffer drops its oldest events at once but compacts its list only
once more than 64 (and more than its size) are dropped, so memory climbs until every
category has seen ``buffer size + 65`` events of live traffic, then stays flat. With the
defaults that is 76,000 events, about 6.5 minutes at 200/s: run ``--seconds 660`` to see
both halves (``rss_mib_after_warm_up`` is read at that point, when the run reaches it).

Not part of ``make test``. Linux only (``/proc``)::

    python benchmarks/soak.py                       # 5 minutes, 5,000 subscribers, 200/s
    python benchmarks/soak.py --seconds 660         # past the warm-up
    python benchmarks/soak.py --seconds 60          # a shorter run
    python benchmarks/soak.py --output soak.json    # also write the figures as JSON
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from loadgen import (  # noqa: E402
    Target,
    raise_open_files_limit,
    read_rss_kb,
    server_cpu_seconds,
    take_response,
)

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Subscriber:
    """One long-polling client and what it received."""

    category: str
    stays: bool
    since_time: int
    last_id: str | None = None
    received: list[int] = field(default_factory=list)  # the "seq" of each event, in order
    polls: int = 0
    hang_ups: int = 0
    errors: int = 0


@dataclass
class Run:
    """Everything the run measured."""

    published: dict[str, list[int]] = field(default_factory=dict)
    publish_failures: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    stopping: bool = False


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], Target]:
    command = [
        sys.executable, "-m", "wsgi_longpoll", "serve", "--address", "127.0.0.1:0",
        "--no-access-log", "--no-demo", "--log-level", "WARNING", "--stats-path", "/stats",
        "--timeout-seconds", str(args.poll_timeout),
        "--max-waiting-subscribers", str(max(50_000, args.subscribers * 2)),
        "--buffer-size", str(args.buffer_size),
    ]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        match = re.search(r"subscribe at http://[\d.]+:(\d+)/", line)
        if match:
            gevent.spawn(_drain, process.stderr)
            return process, Target("127.0.0.1", int(match.group(1)), pid=process.pid)
    raise SystemExit("the server exited before it was ready")


def _drain(stream: Any) -> None:
    for line in stream:
        sys.stderr.write(f"[server] {line}")


def exchange(sock: socket.socket, buffer: bytearray, request: bytes) -> tuple[int, bytes]:
    """Send one request on a keep-alive connection and read its response."""
    sock.sendall(request)
    while True:
        response = take_response(buffer)
        if response is not None:
            return response
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        buffer += data


def follow(target: Target, subscriber: Subscriber, args: argparse.Namespace, run: Run) -> None:
    """Poll until the run stops, resuming from the cursor after every answer or hang-up."""
    rng = random.Random()
    while not run.stopping:
        sock = None
        hang_up = None
        try:
            sock = target.connect()
            sock.settimeout(args.poll_timeout + 30)
            buffer = bytearray()
            while not run.stopping:
                if not subscriber.stays and rng.random() < args.hang_up_chance:
                    # Hang up at a random moment of this poll: mid-wait, usually.
                    hang_up = gevent.spawn_later(rng.uniform(0, 3), sock.close)
                request = target.subscribe_request(
                    subscriber.category, args.poll_timeout, subscriber.since_time,
                    subscriber.last_id,
                )
                status, body = exchange(sock, buffer, request)
                subscriber.polls += 1
                if hang_up is not None:
                    hang_up.kill()
                    hang_up = None
                if status != 200:
                    subscriber.errors += 1
                    gevent.sleep(1)
                    continue
                answer = json.loads(body)
                for event in answer.get("events", ()):
                    subscriber.received.append(event["data"]["seq"])
                    subscriber.since_time, subscriber.last_id = event["timestamp"], event["id"]
        except OSError:
            if hang_up is not None and hang_up.dead:
                subscriber.hang_ups += 1
            else:
                subscriber.errors += 1
                gevent.sleep(0.5)
        finally:
            if hang_up is not None:
                hang_up.kill()
            if sock is not None:
                sock.close()


def publish_steadily(
    target: Target, args: argparse.Namespace, run: Run, until: float, part: int = 0,
    parts: int = 1,
) -> None:
    """Publish ``args.rate / parts`` events a second round-robin over this part's categories.

    Each category belongs to one part, so that its events are published one at a time, in
    the order of their ``seq``.
    """
    sock = target.connect()
    buffer = bytearray()
    interval = parts / args.rate
    next_at = time.monotonic()
    categories = range(part, args.categories, parts)
    number = 0
    while time.monotonic() < until:
        category = f"c{categories[number % len(categories)]}"
        seqs = run.published.setdefault(category, [])
        seq = len(seqs)
        try:
            status, _ = exchange(sock, buffer, target.publish_request(category, {"seq": seq}))
        except OSError:
            status = 0
            sock.close()
            sock, buffer = target.connect(), bytearray()
        if status == 200:
            seqs.append(seq)
        else:
            run.publish_failures += 1
        number += 1
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
    sock.close()


def prefill(target: Target, args: argparse.Namespace, part: int, parts: int) -> None:
    """Publish ``args.prefill`` events to each of this part's categories, as fast as it can."""
    sock = target.connect()
    buffer = bytearray()
    for _ in range(args.prefill):
        for number in range(part, args.categories, parts):
            status, _ = exchange(sock, buffer, target.publish_request(f"c{number}", {"seq": -1}))
            if status != 200:
                raise SystemExit(f"prefill: HTTP {status}")
    sock.close()


def publish_only(args: argparse.Namespace) -> int:
    """The publisher process: publish for ``--seconds``, then print what was accepted."""
    host, _, port = args.publish_only.rpartition(":")
    target = Target(host, int(port))
    if args.prefill:
        parts = min(args.publishers, args.categories)
        gevent.joinall([gevent.spawn(prefill, target, args, part, parts)
                        for part in range(parts)], raise_error=True)
        return 0
    run = Run()
    until = time.monotonic() + args.seconds
    parts = min(args.publishers, args.categories)
    gevent.joinall([gevent.spawn(publish_steadily, target, args, run, until, part, parts)
                    for part in range(parts)], raise_error=True)
    json.dump({"published": run.published, "failures": run.publish_failures}, sys.stdout)
    return 0


def start_publisher(target: Target, args: argparse.Namespace) -> subprocess.Popen[str]:
    """Publish from a process of its own, so that the subscribers' load does not slow it."""
    command = [
        sys.executable, __file__, "--publish-only", f"{target.host}:{target.port}",
        "--seconds", str(args.seconds), "--rate", str(args.rate),
        "--categories", str(args.categories), "--publishers", str(args.publishers),
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def run_prefill(target: Target, args: argparse.Namespace) -> None:
    """Fill every category's buffer before the subscribers park (full buffers from the start).

    The memory warm-up still takes one compaction cycle of live traffic afterwards (measured:
    a second prefilled cycle does not shorten it).
    """
    command = [
        sys.executable, __file__, "--publish-only", f"{target.host}:{target.port}",
        "--prefill", str(args.prefill), "--categories", str(args.categories),
        "--publishers", str(args.publishers),
    ]
    subprocess.run(command, check=True, timeout=3600)


def stats(target: Target) -> dict[str, Any]:
    with target.connect() as sock:
        request = f"GET /stats HTTP/1.1\r\nHost: {target.host}\r\n\r\n".encode()
        return json.loads(exchange(sock, bytearray(), request)[1])  # type: ignore[no-any-return]


def sample(target: Target, run: Run, started: float, subscribers: list[Subscriber]) -> None:
    numbers = stats(target)
    assert target.pid is not None
    run.samples.append({
        "seconds": round(time.monotonic() - started, 1),
        "rss_mib": round(read_rss_kb(target.pid) / 1024, 1),
        "server_cpu_seconds": round(server_cpu_seconds(target.pid), 1),
        "waiting": numbers["waiting_subscribers"],
        "published": numbers["events_published"],
        "delivered": numbers["events_delivered"],
        "buffered": numbers["buffered_events"],
        "hang_ups": sum(subscriber.hang_ups for subscriber in subscribers),
    })
    row = run.samples[-1]
    print(f"{row['seconds']:>7.1f} s  rss {row['rss_mib']:>7.1f} MiB  "
          f"waiting {row['waiting']:>5}  published {row['published']:>7}  "
          f"delivered {row['delivered']:>9}  hang-ups {row['hang_ups']:>6}", flush=True)


def check(run: Run, subscribers: list[Subscriber]) -> dict[str, Any]:
    """Compare what each subscriber received with what was published to its category."""
    def lost(subscriber: Subscriber) -> int:
        return len(set(run.published.get(subscriber.category, ())) - set(subscriber.received))

    def out_of_order_or_twice(subscriber: Subscriber) -> bool:
        return subscriber.received != sorted(set(subscriber.received))

    stayed = [subscriber for subscriber in subscribers if subscriber.stays]
    churned = [subscriber for subscriber in subscribers if not subscriber.stays]
    return {
        "stayed": len(stayed),
        "stayed_events_expected": sum(len(run.published.get(s.category, ())) for s in stayed),
        "stayed_events_received": sum(len(s.received) for s in stayed),
        "stayed_events_lost": sum(lost(s) for s in stayed),
        "stayed_out_of_order_or_duplicated": sum(out_of_order_or_twice(s) for s in stayed),
        "churned": len(churned),
        "churned_hang_ups": sum(s.hang_ups for s in churned),
        "churned_events_lost": sum(lost(s) for s in churned),
        "churned_out_of_order_or_duplicated": sum(out_of_order_or_twice(s) for s in churned),
        "client_errors": sum(s.errors for s in subscribers),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300, help="how long to publish")
    parser.add_argument("--subscribers", type=int, default=5000)
    parser.add_argument("--categories", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200, help="publishes a second")
    parser.add_argument("--churn", type=float, default=0.2,
                        help="share of the subscribers that hang up at random")
    parser.add_argument("--hang-up-chance", type=float, default=0.3,
                        help="chance that a churning subscriber hangs up during a poll")
    parser.add_argument("--poll-timeout", type=int, default=30)
    parser.add_argument("--buffer-size", type=int, default=10,
                        help="events kept per category: small, so that the buffers are "
                        "full (and memory should be flat) after the first minute")
    parser.add_argument("--publishers", type=int, default=4,
                        help="publishing connections, each with its share of the categories")
    parser.add_argument("--prefill", type=int, default=None,
                        help="events published to each category before the subscribers "
                        "park (default: buffer size + 66, one compaction cycle)")
    parser.add_argument("--publish-only", metavar="HOST:PORT", help=argparse.SUPPRESS)
    parser.add_argument("--sample-every", type=float, default=10, help="seconds")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.publish_only:
        return publish_only(args)

    if args.prefill is None:
        args.prefill = args.buffer_size + 66
    raise_open_files_limit()
    process, target = start_server(args)
    run = Run()
    rng = random.Random(7)
    try:
        prefill_started = time.monotonic()
        print(f"prefill: {args.prefill} events in each of {args.categories} categories",
              flush=True)
        run_prefill(target, args)
        assert target.pid is not None
        print(f"prefill took {time.monotonic() - prefill_started:.0f} s; server rss "
              f"{read_rss_kb(target.pid) / 1024:.1f} MiB", flush=True)
        # Subscribers want what comes after the prefill (epoch ms; the server's clock is ours).
        start_ms = time.time_ns() // 1_000_000
        subscribers = [
            Subscriber(f"c{n % args.categories}", stays=rng.random() >= args.churn,
                       since_time=start_ms)
            for n in range(args.subscribers)
        ]
        print(f"server pid {process.pid} on port {target.port}; parking "
              f"{args.subscribers} subscribers on {args.categories} categories", flush=True)
        followers = [gevent.spawn(follow, target, subscriber, args, run)
                     for subscriber in subscribers]
        deadline = time.monotonic() + 120
        while stats(target)["waiting_subscribers"] < args.subscribers * 0.99:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("the subscribers could not all park")
            gevent.sleep(0.5)
        started = time.monotonic()
        sample(target, run, started, subscribers)
        publisher = start_publisher(target, args)
        output = gevent.spawn(publisher.communicate)  # read as it writes: no full pipe
        while not output.ready():
            output.join(timeout=args.sample_every)
            if process.poll() is not None:
                raise SystemExit("the server died")
            sample(target, run, started, subscribers)
        if publisher.returncode != 0:
            raise SystemExit("the publisher failed")
        report = json.loads(output.get()[0])
        run.published, run.publish_failures = report["published"], report["failures"]
        # Let the stayers catch up with the last events (bounded), then stop everyone.
        catch_up = time.monotonic() + args.poll_timeout + 10
        while time.monotonic() < catch_up and any(
            len(s.received) < len(run.published.get(s.category, ()))
            for s in subscribers if s.stays
        ):
            gevent.sleep(0.5)
        sample(target, run, started, subscribers)
        run.stopping = True
        server_stats = stats(target)
    finally:
        process.terminate()
        process.wait(60)
    gevent.killall(followers, timeout=10)

    result = check(run, subscribers)
    warm_up_events = args.prefill * args.categories + (args.buffer_size + 66) * args.categories
    warm = [row["rss_mib"] for row in run.samples if row["published"] >= warm_up_events]
    summary = {
        "options": vars(args) | {"output": str(args.output) if args.output else None},
        "events_published": sum(len(seqs) for seqs in run.published.values()),
        "publish_failures": run.publish_failures,
        "achieved_rate": round(
            sum(len(seqs) for seqs in run.published.values()) / args.seconds, 1),
        "rss_mib_start": run.samples[0]["rss_mib"],
        "rss_mib_after_warm_up": warm[0] if warm else None,
        "rss_mib_end": run.samples[-1]["rss_mib"],
        "rss_mib_max": max(row["rss_mib"] for row in run.samples),
        "server_cpu_seconds": run.samples[-1]["server_cpu_seconds"],
        "subscriber_client_cpu_seconds": round(sum(os.times()[:2]), 1),
        "server_stats_at_end": server_stats,
        "server_exit_status": process.returncode,
        **result,
        "samples": run.samples,
    }
    print(json.dumps({key: value for key, value in summary.items() if key != "samples"},
                     indent=2))
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
