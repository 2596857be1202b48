"""What file persistence costs: publish throughput with it off, on, and on with fsync.

Three measurements, all short (the machine is shared), figures only, nothing passes or fails:

1. **in-process**: ``LongpollManager.publish`` in a loop (no HTTP), events/s and the
   ratio to persistence off. This is where the writer thread's share of the GIL shows.
2. **HTTP**: ``wrk -t1 -c50 -s post.lua`` against the standalone ``Server`` run in a
   subprocess (the method of BENCHMARKS.md), requests/s and the ratio to off. Skipped
   when ``wrk`` is not installed.
3. **slow disk**: every write made to take ``--slow-write-ms``; the time from a publish
   until a subscriber over HTTP has the event, against an ordinary disk. It shows that
   writes do not hold up the gevent hub.
4. **acknowledge after write**: ``LongpollManager.publish`` returning only once its event
   is written (``acknowledge_after_write``), with and without fsync, against the periodic
   modes: one publisher in a loop, then ``--publishers`` greenlets publishing at once
   (group commit: events per write shows how many share one write and one fsync).

The event file goes to ``--dir`` (default: a temporary directory next to this script, so
on the disk of the checkout, not on a tmpfs where fsync costs nothing). ::

    python benchmarks/bench_persist.py
    python benchmarks/bench_persist.py --events 20000 --seconds 2 --skip-http
    python benchmarks/bench_persist.py --only-ack --ack-events 3000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent

#: name -> FilePersister options; None is persistence off.
MODES: dict[str, dict[str, Any] | None] = {
    "off": None,
    "on": {"write_buffer_size": 4096, "write_flush_period_seconds": 1.0},
    "on+fsync": {"write_buffer_size": 4096, "write_flush_period_seconds": 1.0, "fsync": True},
    "on+fsync, 10 ms period": {
        "write_buffer_size": 4096, "write_flush_period_seconds": 0.01, "fsync": True,
    },
    "ack after write": {"acknowledge_after_write": True},
    "ack after write+fsync": {"acknowledge_after_write": True, "fsync": True},
}
#: Modes left out of section 1: one publisher in a loop waits for every write.
ACK_ONLY = {"ack after write", "ack after write+fsync"}
#: The modes of section 4 (the others run in sections 1 and 2 only).
ACK_MODES = ["off", "on", "on+fsync", "ack after write", "ack after write+fsync"]


@contextlib.contextmanager
def scratch_directory(parent: str | None) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="bench-persist-", dir=parent or HERE))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def fsync_latency_ms(directory: Path, rounds: int = 50) -> float:
    """The median time of one fsync after appending 4 KB, on this disk."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    timings = []
    try:
        for _ in range(rounds):
            os.write(fd, b"x" * 4096)
            started = time.perf_counter()
            os.fsync(fd)
            timings.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(timings) * 1000


# -- 1. in-process ---------------------------------------------------------------------


def publish_rate(
    directory: Path, options: dict[str, Any] | None, events: int
) -> tuple[float, float]:
    """Publish *events* events; return events/s (wall clock) and CPU µs per event.

    The CPU time is the whole process's, the writer thread's included, and it is the
    steadier figure on a shared machine.
    """
    from wsgi_longpoll import LongpollManager
    from wsgi_longpoll.engines.persist import FilePersister

    path = directory / "inprocess.log"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    persister = None if options is None else FilePersister(path, **options)
    manager = LongpollManager(persister=persister)
    data = {"message": "hello world", "n": 0}
    started = time.perf_counter()
    cpu_started = time.process_time()
    for n in range(events):
        manager.publish(f"category-{n % 10}", data)
    elapsed = time.perf_counter() - started
    manager.close()  # the publisher did not wait for the last writes, but the CPU counts
    cpu = time.process_time() - cpu_started
    return events / elapsed, cpu / events * 1e6


def append_cost_us(directory: Path, options: dict[str, Any], events: int) -> float:
    """CPU µs per ``FilePersister.append``, the writer thread's work included."""
    import uuid

    from wsgi_longpoll.engines.persist import FilePersister
    from wsgi_longpoll.event import Event

    batch = [Event(1_000_000 + n, f"category-{n % 10}", str(uuid.uuid4()),
                   {"message": "hello world", "n": 0}) for n in range(events)]
    for event in batch:
        event.to_json()  # publish encodes each event before it reaches the persister
    path = directory / "append.log"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    persister = FilePersister(path, **options)
    persister.flush()
    started = time.process_time()
    for event in batch:
        persister.append(event)
    persister.close()
    return (time.process_time() - started) / events * 1e6


def run_inprocess(
    directory: Path, events: int, rounds: int
) -> dict[str, dict[str, float]]:
    periodic = {name: options for name, options in MODES.items() if name not in ACK_ONLY}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in periodic}
    for _ in range(rounds):  # modes interleaved, so that a burst of load hits them all
        for name, options in periodic.items():
            runs[name].append(publish_rate(directory, options, events))
    return {
        name: {
            "events_per_s": statistics.median(rate for rate, _ in results),
            "cpu_us_per_event": statistics.median(cpu for _, cpu in results),
        }
        for name, results in runs.items()
    }


# -- 2. over HTTP ----------------------------------------------------------------------


def serve(port: int, file_name: str, mode: str) -> None:
    """Run the standalone server with persistence *mode* until killed (a subprocess)."""
    from wsgi_longpoll import FilePersistorInfo, Server, ServerInfo

    options = MODES[mode]
    info = FilePersistorInfo(
        use=options is not None,
        file_name=file_name,
        write_buffer_size=(options or {}).get("write_buffer_size", 4096),
        write_flush_period_seconds=(options or {}).get("write_flush_period_seconds", 1.0),
        fsync=bool((options or {}).get("fsync")),
        acknowledge_after_write=bool((options or {}).get("acknowledge_after_write")),
    )
    server = Server(access_log=False)
    server.start(ServerInfo(address=f"127.0.0.1:{port}"), info)
    server.serve_forever()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server process exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the server did not answer on port {port} within {timeout} s")


def wrk_rate(port: int, seconds: float) -> float:
    completed = subprocess.run(
        ["wrk", "-t1", "-c50", f"-d{seconds}s", "-s", str(HERE / "post.lua"),
         f"http://127.0.0.1:{port}/publish"],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    )
    match = re.search(r"Requests/sec:\s+([\d.]+)", completed.stdout)
    if match is None or "Non-2xx" in completed.stdout:
        raise RuntimeError(f"unexpected wrk output:\n{completed.stdout}")
    return float(match.group(1))


def run_http(directory: Path, seconds: float) -> dict[str, float]:
    rates = {}
    for mode in MODES:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, __file__, "--serve", mode, "--port", str(port),
             "--dir", str(directory)],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port, process)
            rates[mode] = wrk_rate(port, seconds)
        finally:
            process.terminate()
            process.wait(30)
    return rates


# -- 3. a slow disk --------------------------------------------------------------------


def delivery_latencies(base_url: str, seconds: float, interval: float) -> list[float]:
    """Publish every *interval* s for *seconds*; the ms until a long poll had each event."""
    sent: dict[int, float] = {}
    latencies: list[float] = []
    done = threading.Event()

    def subscribe() -> None:
        since, last_id = int(time.time() * 1000) - 1, ""
        with requests.Session() as session:
            while not done.is_set() or len(latencies) < len(sent):
                params: dict[str, Any] = {"category": "slow", "timeout": 1, "since_time": since}
                if last_id:
                    params["last_id"] = last_id
                body = session.get(f"{base_url}/events", params=params, timeout=10).json()
                arrived = time.perf_counter()
                for event in body.get("events", []):
                    latencies.append((arrived - sent[event["data"]]) * 1000)
                    since, last_id = event["timestamp"], event["id"]
                if done.is_set() and not body.get("events"):
                    break

    subscriber = threading.Thread(target=subscribe)
    subscriber.start()
    time.sleep(0.2)  # let the first long poll park
    with requests.Session() as session:
        deadline = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < deadline:
            sent[n] = time.perf_counter()
            session.post(f"{base_url}/publish", json={"category": "slow", "data": n}, timeout=10)
            n += 1
            time.sleep(interval)
    done.set()
    subscriber.join(30)
    return latencies


def run_slow_disk(directory: Path, slow_write_ms: float, seconds: float) -> dict[str, Any]:
    from wsgi_longpoll import FilePersistorInfo, Server, ServerInfo
    from wsgi_longpoll.engines import persist

    real_write_out = persist._write_out
    writes = [0]

    def slow_write_out(fd: int, pending: bytearray) -> None:
        if pending:
            writes[0] += 1
            time.sleep(slow_write_ms / 1000)
        real_write_out(fd, pending)

    results: dict[str, Any] = {}
    for label, slow in (("ordinary disk", False), (f"{slow_write_ms:g} ms per write", True)):
        writes[0] = 0
        persist._write_out = slow_write_out if slow else real_write_out  # type: ignore[assignment]
        server = Server(access_log=False)
        server.start(
            ServerInfo(address="127.0.0.1:0"),
            FilePersistorInfo(use=True, file_name=str(directory / f"slow-{slow}.log"),
                              write_buffer_size=1, write_flush_period_seconds=0.05),
        )
        try:
            latencies = delivery_latencies(f"http://127.0.0.1:{server.port}", seconds, 0.01)
        finally:
            server.stop(5)
            persist._write_out = real_write_out  # type: ignore[assignment]
        latencies.sort()
        results[label] = {
            "events": len(latencies),
            "writes": writes[0] if slow else None,
            "p50_ms": latencies[len(latencies) // 2],
            "p99_ms": latencies[int(len(latencies) * 0.99)],
            "max_ms": latencies[-1],
        }
    return results


# -- 4. acknowledge after write -------------------------------------------------------


def ack_rate(
    directory: Path, options: dict[str, Any] | None, events: int, publishers: int
) -> dict[str, float]:
    """Publish *events* events from *publishers* greenlets at once; events/s, events/write."""
    import gevent

    from wsgi_longpoll import LongpollManager
    from wsgi_longpoll.engines import persist
    from wsgi_longpoll.engines.persist import FilePersister

    path = directory / "ack.log"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    real_write_out = persist._write_out
    writes = [0]

    def counted(fd: int, pending: bytearray) -> None:
        if pending:
            writes[0] += 1
        real_write_out(fd, pending)

    persister = None if options is None else FilePersister(path, **options)
    manager = LongpollManager(persister=persister)
    if persister is not None:
        persister.flush()
    persist._write_out = counted  # type: ignore[assignment]
    data = {"message": "hello world", "n": 0}

    def publish(first: int) -> None:
        for n in range(first, events, publishers):
            manager.publish(f"category-{n % 10}", data)

    try:
        started = time.perf_counter()
        gevent.joinall([gevent.spawn(publish, k) for k in range(publishers)], raise_error=True)
        elapsed = time.perf_counter() - started
        during = writes[0]
        manager.close()
    finally:
        persist._write_out = real_write_out  # type: ignore[assignment]
    return {
        "events_per_s": events / elapsed,
        "events_per_write": events / during if during else float("nan"),
    }


def run_ack(
    directory: Path, events: int, publishers: int, rounds: int
) -> dict[str, dict[str, dict[str, float]]]:
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        str(count): {mode: [] for mode in ACK_MODES} for count in (1, publishers)
    }
    for _ in range(rounds):
        for count in (1, publishers):
            for mode in ACK_MODES:
                results[str(count)][mode].append(ack_rate(directory, MODES[mode], events, count))
    return {
        count: {
            mode: {
                key: statistics.median(run[key] for run in runs)
                for key in ("events_per_s", "events_per_write")
            }
            for mode, runs in by_mode.items()
        }
        for count, by_mode in results.items()
    }


def print_ack(figures: dict[str, dict[str, dict[str, float]]], events: int, rounds: int) -> None:
    print(f"\nin-process publish, acknowledge after write, {events} events, median of {rounds}:")
    for count, by_mode in figures.items():
        off = by_mode["off"]["events_per_s"]
        print(f"  {count} publisher{'s' if count != '1' else ''}:")
        for mode, values in by_mode.items():
            per_write = values["events_per_write"]
            shared = "" if per_write != per_write else f"   {per_write:7.1f} events/write"
            print(f"    {mode:24} {values['events_per_s']:>10,.0f} events/s "
                  f"{values['events_per_s'] / off:6.3f} x off{shared}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per in-process run")
    parser.add_argument("--rounds", type=int, default=3, help="in-process runs per mode")
    parser.add_argument("--seconds", type=float, default=3, help="length of each HTTP run")
    parser.add_argument("--slow-write-ms", type=float, default=200)
    parser.add_argument("--dir", help="where the event files go (default: next to this script)")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--ack-events", type=int, default=5000,
                        help="events per acknowledge-after-write run")
    parser.add_argument("--publishers", type=int, default=50,
                        help="concurrent publishers in the acknowledge-after-write runs")
    parser.add_argument("--only-ack", action="store_true",
                        help="run the acknowledge-after-write measurements only")
    parser.add_argument("--serve", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port, str(Path(args.dir) / "http.log"), args.serve)
        return

    with scratch_directory(args.dir) as directory:
        print(f"fsync of a 4 KB append on this disk: {fsync_latency_ms(directory):.2f} ms (median)")
        report: dict[str, Any] = {}
        ack = run_ack(directory, args.ack_events, args.publishers, args.rounds)
        report["ack_after_write"] = ack
        print_ack(ack, args.ack_events, args.rounds)
        if args.only_ack:
            print("\n" + json.dumps(report))
            return

        inprocess = run_inprocess(directory, args.events, args.rounds)
        report["inprocess"] = inprocess
        off = inprocess["off"]
        print(f"\nin-process publish, {args.events} events, median of {args.rounds}:")
        append_costs = {
            mode: statistics.median(
                append_cost_us(directory, options, args.events) for _ in range(args.rounds)
            )
            for mode, options in MODES.items() if options is not None and mode not in ACK_ONLY
        }
        report["append_cpu_us"] = append_costs
        for mode, figures in inprocess.items():
            rate, cpu = figures["events_per_s"], figures["cpu_us_per_event"]
            print(f"  {mode:24} {rate:>10,.0f} events/s {rate / off['events_per_s']:5.2f} x off"
                  f"   {cpu:5.1f} CPU µs/event {off['cpu_us_per_event'] / cpu:5.2f} x off")
        print("  of which FilePersister.append and the writer thread: " + ", ".join(
            f"{mode} {cost:.1f}" for mode, cost in append_costs.items()) + " CPU µs/event")

        if args.skip_http or shutil.which("wrk") is None:
            print("\nHTTP: skipped" + ("" if args.skip_http else " (wrk is not installed)"))
        else:
            http = run_http(directory, args.seconds)
            report["http_requests_per_s"] = http
            print(f"\nHTTP publish, wrk -t1 -c50 -d{args.seconds:g}s, standalone Server:")
            for mode, rate in http.items():
                print(f"  {mode:24} {rate:>10,.0f} requests/s {rate / http['off']:.2f} x off")

        slow = run_slow_disk(directory, args.slow_write_ms, min(args.seconds, 3))
        report["slow_disk"] = slow
        print("\npublish -> long-poll delivery over HTTP, one event every 10 ms, every event "
              "written at once (write_buffer_size=1):")
        for label, figures in slow.items():
            writes = "" if figures["writes"] is None else f", {figures['writes']} slow writes"
            print(f"  {label:24} p50 {figures['p50_ms']:6.1f} ms  p99 {figures['p99_ms']:6.1f} ms"
                  f"  max {figures['max_ms']:6.1f} ms  ({figures['events']} events{writes})")
        print("\n" + json.dumps(report))


if __name__ == "__main__":
    main()
