"""Peak resident memory of ``wsgi-longpoll serve`` under a memory budget, against the budget.

Starts a fresh server on a free port of 127.0.0.1 with ``--max-memory-bytes`` and then,
all at once, does what clients can do to make it hold memory (issue 20):

- **streams**: Server-Sent Events readers that never read (a 4 KiB receive window),
  on the category ``stream``;
- **parked polls**: long polls that wait on the category ``poll`` and never read their
  answer;
- **publishes**: events of ``--event-kib`` each, to ``stream``, ``poll`` and two other
  categories in turn, each with its own ``Idempotency-Key`` (unless ``--no-keys``), and
  each retried ``--retries`` times with the same key;
- **subscribes**: now and then a long poll from the start of a category (an answer of
  every event it buffers) that never reads its answer.

It samples the server's ``VmRSS`` (``/proc/PID/status``) and its ``/stats`` as it goes,
and prints the peak RSS (the kernel's ``VmHWM``) beside the budget, with the most each
kind of the budget held::

    .venv/bin/python benchmarks/memory_budget.py                  # make bench-memory
    .venv/bin/python benchmarks/memory_budget.py --budget-mib 64 --streams 0
    .venv/bin/python benchmarks/memory_budget.py --checkout /work/main \\
        --budget-flag=--max-buffered-bytes                         # a checkout without it

``--checkout`` runs another checkout's server (``PYTHONPATH``), and ``--budget-flag``
names its option (``--max-buffered-bytes`` before ``max_memory_bytes`` existed: the
events' bytes only). Figures, never pass/fail; compare in one sitting.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
CATEGORIES = ("stream", "poll", "events-a", "events-b")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one (the server inherits it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return int(soft)


def status_kb(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` figure in KiB (``VmRSS``, ``VmHWM``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


class Server:
    """``python -m wsgi_longpoll serve`` with a budget, on a free port of 127.0.0.1."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.port = free_port()
        env = dict(os.environ)
        cwd = ROOT
        if args.checkout is not None:
            cwd = Path(args.checkout).resolve()
            env["PYTHONPATH"] = str(cwd)
        command = [
            sys.executable, "-m", "wsgi_longpoll", "serve",
            "--address", f"127.0.0.1:{self.port}", "--no-access-log",
            "--log-level", "WARNING", "--stats-path", "/stats",
            "--max-body-size", str(args.event_kib * 1024 + 64 * 1024),
            args.budget_flag, str(args.budget_mib * MiB),
        ]
        #: The server's log (warnings: streams cut, subscribers refused).
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, cwd=cwd, env=env,
                                        stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start: {self.log_text()}") from None
                time.sleep(0.05)

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stats(self) -> dict[str, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", "/stats")
            document: dict[str, Any] = json.loads(connection.getresponse().read())
            return document
        finally:
            connection.close()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)


def stalled(port: int, request: bytes) -> socket.socket:
    """A connection that sends *request* and never reads (a 4 KiB receive window)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


class Sampler(threading.Thread):
    """Samples the server's RSS and the most each ``/stats`` figure reached."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peaks: dict[str, int] = {}
        self.peak_rss_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        next_stats = 0.0
        while not self.done.wait(0.02):
            try:
                self.peak_rss_kb = max(self.peak_rss_kb, status_kb(self.server.pid, "VmRSS"))
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + 0.25
                    for name, value in self.server.stats().items():
                        if isinstance(value, int) and name.endswith("_bytes"):
                            self.peaks[name] = max(self.peaks.get(name, 0), value)
            except (OSError, ValueError):
                pass  # the server is going away


def publish_all(server: Server, args: argparse.Namespace, counts: dict[str, int]) -> None:
    """Every publish and its retries, with the stalled subscribes in between."""
    filler = "x" * (args.event_kib * 1024)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    readers: list[socket.socket] = []
    every = max(1, args.publishes // args.stalled_subscribes) if args.stalled_subscribes else 0
    try:
        for n in range(args.publishes):
            category = CATEGORIES[n % len(CATEGORIES)]
            body = json.dumps({"category": category, "data": f"{n} {filler}"}).encode()
            headers = {"Content-Type": "application/json"}
            if not args.no_keys:
                headers["Idempotency-Key"] = f"key-{n}"
            for _ in range(1 + (0 if args.no_keys else args.retries)):
                connection.request("POST", "/publish", body, headers)
                response = connection.getresponse()
                response.read()
                counts[f"publish {response.status}"] = counts.get(f"publish {response.status}",
                                                                  0) + 1
            if every and n % every == every - 1:
                readers.append(stalled(
                    server.port,
                    b"GET /events?category=events-a&timeout=5&since_time=0 HTTP/1.1\r\n"
                    b"Host: bench\r\n\r\n"))
    finally:
        connection.close()
        time.sleep(1)  # let the last deliveries and answers be written (or held)
        for reader in readers:
            reader.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-mib", type=int, default=64, help="the budget (64 MiB)")
    parser.add_argument("--publishes", type=int, default=1000)
    parser.add_argument("--event-kib", type=int, default=1024, help="each event's size")
    parser.add_argument("--retries", type=int, default=1,
                        help="retries of each publish with its key")
    parser.add_argument("--no-keys", action="store_true", help="publish without keys")
    parser.add_argument("--streams", type=int, default=300,
                        help="Server-Sent Events readers that never read")
    parser.add_argument("--polls", type=int, default=1000,
                        help="parked long polls that never read their answer")
    parser.add_argument("--stalled-subscribes", type=int, default=100,
                        help="long polls from the start that never read their answer")
    parser.add_argument("--checkout", help="run the server of this checkout instead")
    parser.add_argument("--budget-flag", default="--max-memory-bytes",
                        help="the server's budget option (--max-buffered-bytes before it)")
    args = parser.parse_args()
    raise_open_files_limit()
    server = Server(args)
    sockets: list[socket.socket] = []
    counts: dict[str, int] = {}
    try:
        idle_kb = status_kb(server.pid, "VmRSS")
        for _ in range(args.streams):
            sockets.append(stalled(server.port,
                                   b"GET /events?category=stream&timeout=110 HTTP/1.1\r\n"
                                   b"Host: bench\r\nAccept: text/event-stream\r\n\r\n"))
        for _ in range(args.polls):
            sockets.append(stalled(server.port,
                                   b"GET /events?category=poll&timeout=110 HTTP/1.1\r\n"
                                   b"Host: bench\r\n\r\n"))
        deadline = time.monotonic() + 60
        while (server.stats()["waiting_subscribers"] < args.streams + args.polls
               and time.monotonic() < deadline):
            time.sleep(0.1)
        sampler = Sampler(server)
        sampler.start()
        started = time.monotonic()
        publish_all(server, args, counts)
        elapsed = time.monotonic() - started
        sampler.done.set()
        sampler.join(10)
        peak_kb = max(status_kb(server.pid, "VmHWM"), sampler.peak_rss_kb)
        final = server.stats()
        log = server.log_text()
    finally:
        for sock in sockets:
            sock.close()
        server.stop()
    budget = args.budget_mib * MiB
    print(f"budget {args.budget_flag} {args.budget_mib} MiB; {args.publishes:,} publishes of "
          f"{args.event_kib:,} KiB ({'no keys' if args.no_keys else f'keys, {args.retries} retries each'}), "
          f"{args.streams:,} stalled streams, {args.polls:,} stalled parked polls, "
          f"{args.stalled_subscribes:,} stalled subscribes from the start; {elapsed:.1f} s")
    print(f"RSS idle {idle_kb / 1024:.1f} MiB, peak {peak_kb / 1024:.1f} MiB "
          f"(peak - idle {(peak_kb - idle_kb) / 1024:.1f} MiB = "
          f"{(peak_kb - idle_kb) * 1024 / budget:.2f} x the budget)")
    for name in ("buffered_event_bytes", "idempotency_key_bytes", "stream_backlog_bytes",
                 "parked_answer_bytes"):
        if name in sampler.peaks:
            print(f"  {name}: peak {sampler.peaks[name] / MiB:.1f} MiB, "
                  f"end {final.get(name, 0) / MiB:.1f} MiB")
    print("  answers: " + ", ".join(f"{key}: {value:,}" for key, value in sorted(counts.items())))
    print(f"  at the end: {final.get('buffered_events')} events buffered, "
          f"{final.get('waiting_subscribers')} subscribers waiting")
    cut = log.count("ending an event stream")
    refused = log.count("capacity") + log.count("max_memory_bytes")
    print(f"  server log: {cut} streams cut, {len(log.splitlines())} lines"
          + (f", {refused} mentions of capacity" if refused else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
