"""Memory per waiting subscriber: N long polls, then N Server-Sent Events streams.

Each kind gets a fresh ``python -m wsgi_longpoll serve`` on a free port of 127.0.0.1, so
that neither run's heap holds what the other left (as ``run.py --sse`` cannot: it parks
streams after the long polls of the same size, in one process)::

    .venv/bin/python benchmarks/stream_memory.py 2000

prints ``VmRSS`` idle, with N waiting, and (difference) / N, for each kind.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import loadgen
from loadgen import Target

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def measure(count: int, stream: bool) -> tuple[int, int]:
    """(RSS idle, RSS with *count* waiting) in KiB of a fresh server."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "wsgi_longpoll", "serve", "--address", f"127.0.0.1:{port}",
         "--no-access-log", "--log-level", "WARNING"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not start in 30 s") from None
                time.sleep(0.05)
        target = Target("127.0.0.1", port, pid=server.pid)
        idle = loadgen.read_rss_kb(server.pid)
        request = target.subscribe_request("memory", 60, close=not stream, stream=stream)
        sockets = loadgen._park(target, request, count, lambda message: None)
        try:
            loadgen._wait_parked(target, count, lambda message: None)
            waiting = loadgen.read_rss_kb(server.pid)
        finally:
            for sock in sockets:
                sock.close()
        return idle, waiting
    finally:
        server.terminate()
        server.wait(15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, nargs="?", default=2000)
    args = parser.parse_args()
    loadgen.raise_open_files_limit()
    for name, stream in (("long polls", False), ("SSE streams", True)):
        idle, waiting = measure(args.count, stream)
        print(f"{name}: {idle / 1024:.1f} MB idle, {waiting / 1024:.1f} MB with "
              f"{args.count:,} waiting, {(waiting - idle) / args.count:.1f} KB each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
