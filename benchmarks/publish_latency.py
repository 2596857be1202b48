"""How long a publisher waits for its answer when N long polls are parked on the category.

Each round parks N long polls on a fresh category, publishes one event, and reads the
publisher's answer first: the time from sending the publish to reading its ``200`` is the
figure, and the subscriber answers already readable at that moment say whether the
fan-out came before the answer (all N) or after it (few). Then every subscriber's answer
is read, to time the whole fan-out::

    .venv/bin/python benchmarks/publish_latency.py --subscribers 10000 --rounds 5
    .venv/bin/python benchmarks/publish_latency.py --url http://127.0.0.1:8080 --pid PID
    # another checkout of the package, for a before/after comparison in one sitting:
    .venv/bin/python benchmarks/publish_latency.py --pythonpath /tmp/old-checkout

Without ``--url``, a fresh ``python -m wsgi_longpoll serve`` is started on a free port
of 127.0.0.1 (its open-files limit raised to fit). Prints one ``name value`` line per
figure (medians over the rounds, and each round's).
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
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


def start_server(pythonpath: str | None) -> tuple[subprocess.Popen[bytes], Target]:
    """A fresh ``wsgi-longpoll serve`` (of the checkout *pythonpath*, else this one)."""
    port = _free_port()
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    server = subprocess.Popen(
        [sys.executable, "-m", "wsgi_longpoll", "serve", "--address", f"127.0.0.1:{port}",
         "--no-access-log", "--log-level", "WARNING"],
        cwd=pythonpath or ROOT, env=env, stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("the server did not start in 30 s") from None
            time.sleep(0.05)
    return server, Target("127.0.0.1", port, pid=server.pid)


def one_round(target: Target, count: int) -> tuple[float, int, float, int]:
    """Park *count* polls, publish once: ``(ms to the publisher's 200, subscriber
    answers readable by then, ms to the last subscriber answer, good answers)``."""
    category = f"publish-latency-{os.urandom(4).hex()}"
    request = target.subscribe_request(category, 60, close=True)
    sockets = loadgen._park(target, request, count, lambda message: None)
    poller = select.epoll(count + 1)
    try:
        loadgen._wait_parked(target, count, lambda message: None)
        for sock in sockets:
            poller.register(sock.fileno(), select.EPOLLIN)
        publisher = target.connect()
        buffer = bytearray()
        started = time.perf_counter()
        publisher.sendall(target.publish_request(category, "x", close=True))
        while (response := loadgen.take_response(buffer)) is None:
            chunk = publisher.recv(65536)
            if not chunk:
                raise RuntimeError("the publisher's connection closed without an answer")
            buffer += chunk
        acknowledged = time.perf_counter()
        publisher.close()
        if response[0] != 200:
            raise RuntimeError(f"the publish failed: {response!r}")
        ready_at_ack = len(poller.poll(0, count))
        by_fd = {sock.fileno(): sock for sock in sockets}
        buffers = {fd: bytearray() for fd in by_fd}
        answered = good = 0
        finished = acknowledged
        deadline = started + 60
        while answered < count and time.perf_counter() < deadline:
            for fd, _ in poller.poll(1.0):
                try:
                    chunk = by_fd[fd].recv(65536)
                except ConnectionError:
                    chunk = b""
                buffers[fd] += chunk
                answer = loadgen.take_response(buffers[fd], at_eof=not chunk)
                if answer is None and chunk:
                    continue
                finished = time.perf_counter()
                answered += 1
                good += answer is not None and answer[0] == 200 and b'"x"' in answer[1]
                poller.unregister(fd)
    finally:
        poller.close()
        for sock in sockets:
            sock.close()
    return ((acknowledged - started) * 1000, ready_at_ack, (finished - started) * 1000, good)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--url", help="a running server (else one is started)")
    parser.add_argument("--pid", type=int, help="the running server's process id")
    parser.add_argument("--pythonpath", help="the checkout whose server to start")
    args = parser.parse_args()
    loadgen.raise_open_files_limit()
    server = None
    if args.url:
        target = Target.from_url(args.url, pid=args.pid)
    else:
        server, target = start_server(args.pythonpath)
    try:
        rounds = [one_round(target, args.subscribers) for _ in range(args.rounds)]
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    n = args.subscribers
    for index, (ack, ready, last, good) in enumerate(rounds):
        print(f"round_{index}_publish_answer_ms {ack:.2f}")
        print(f"round_{index}_answers_before_publish_answer {ready}")
        print(f"round_{index}_fanout_{n}_ms {last:.1f}")
        print(f"round_{index}_good_answers {good}")
    print(f"publish_answer_{n}_parked_ms_median {statistics.median(r[0] for r in rounds):.2f}")
    print(f"fanout_{n}_ms_median {statistics.median(r[2] for r in rounds):.1f}")


if __name__ == "__main__":
    main()
