"""Raw-socket load generation for the long-polling benchmarks.

Everything here speaks plain HTTP/1.1 over plain sockets driven by one ``epoll`` loop,
so that the load generator stays light next to the server under test and works against
any server that speaks the protocol (PROTOCOL.md), not only ours. It measures:

- :func:`keepalive_rate`: requests/s over N keep-alive connections (the fallback when
  ``wrk`` is not installed; the runner prefers ``wrk``).
- :func:`fanout`: the time from sending one publish until the last of N parked
  subscribers has read its answer, and the server's resident memory while they are parked;
  with ``stream=True``, N open Server-Sent Events streams instead of long polls, until the
  last has read the event.
- :func:`delivery_latency`: how long events take to reach N subscribers that re-poll with
  ``since_time``/``last_id`` after each answer, under a steady publish rate.

Linux only (``epoll``, ``/proc``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import resource
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlencode, urlsplit

__all__ = [
    "FanoutResult",
    "LatencyResult",
    "RateResult",
    "Target",
    "delivery_latency",
    "fanout",
    "keepalive_rate",
    "publish_once",
    "raise_open_files_limit",
    "read_rss_kb",
    "server_cpu_seconds",
]

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def raise_open_files_limit() -> int:
    """Raise this process's soft open-files limit to the hard one; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def read_rss_kb(pid: int) -> int:
    """The resident set size (``VmRSS``) of process *pid*, in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def server_cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process *pid* has used, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the server under test ------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A server speaking the long-polling protocol.

    :param host: an IPv4 address or name.
    :param port: the TCP port.
    :param subscribe_path: the subscription path (GET).
    :param publish_path: the publish path (POST).
    :param pid: the server's process id, when it runs on this machine (for its memory).
    :param headers: header lines sent with every request (a session ``Cookie``, say).
    :param publish_headers: header lines sent with publishes only (a CSRF token, say).
    """

    host: str
    port: int
    subscribe_path: str = "/events"
    publish_path: str = "/publish"
    pid: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    publish_headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_url(
        cls, url: str, subscribe_path: str = "/events", publish_path: str = "/publish",
        pid: int | None = None,
    ) -> Target:
        """A target from ``http://host:port``; a path in *url* is a prefix of both paths."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected a URL like http://127.0.0.1:8080, not {url!r}")
        prefix = parts.path.rstrip("/")
        return cls(parts.hostname, parts.port or 80, prefix + subscribe_path,
                   prefix + publish_path, pid)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def subscribe_request(
        self, category: str, timeout: int, since_time: int | None = None,
        last_id: str | None = None, *, close: bool = False, stream: bool = False,
    ) -> bytes:
        """The bytes of one subscribe request; *stream*: ask for Server-Sent Events."""
        params: dict[str, Any] = {"category": category, "timeout": timeout}
        if since_time is not None:
            params["since_time"] = since_time
        if last_id is not None:
            params["last_id"] = last_id
        connection = "Connection: close\r\n" if close else ""
        if stream:
            connection += "Accept: text/event-stream\r\n"
        return (
            f"GET {self.subscribe_path}?{urlencode(params)} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n{connection}{self._header_lines()}\r\n"
        ).encode()

    def publish_request(self, category: str, data: Any, *, close: bool = False) -> bytes:
        """The bytes of one publish request."""
        body = json.dumps({"category": category, "data": data}).encode()
        connection = "Connection: close\r\n" if close else ""
        return (
            f"POST {self.publish_path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{connection}{self._header_lines(self.publish_headers)}\r\n"
        ).encode() + body

    def _header_lines(self, extra: tuple[tuple[str, str], ...] = ()) -> str:
        return "".join(f"{name}: {value}\r\n" for name, value in (*self.headers, *extra))

    def connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


# -- HTTP/1.1 responses ----------------------------------------------------------------

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)


def take_response(buffer: bytearray, at_eof: bool = False) -> tuple[int, bytes] | None:
    """Remove one complete response from the front of *buffer*: ``(status, body)``.

    ``None`` if *buffer* does not hold a whole response yet. A response with neither
    ``Content-Length`` nor chunked encoding ends at EOF (*at_eof*).
    """
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buffer[:head_end + 2])
    status = int(head[9:12])
    start = head_end + 4
    match = _CONTENT_LENGTH.search(head)
    if match is not None:
        end = start + int(match.group(1))
        if len(buffer) < end:
            return None
        body = bytes(buffer[start:end])
        del buffer[:end]
        return status, body
    if _CHUNKED.search(head):
        chunks = []
        position = start
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return None
            size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
            chunk_start = line_end + 2
            if len(buffer) < chunk_start + size + 2:
                return None
            if size == 0:  # no trailers expected
                del buffer[:chunk_start + 2]
                return status, b"".join(chunks)
            chunks.append(bytes(buffer[chunk_start:chunk_start + size]))
            position = chunk_start + size + 2
    if at_eof:
        body = bytes(buffer[start:])
        del buffer[:]
        return status, body
    return None


def publish_once(target: Target, category: str, data: Any) -> None:
    """Publish one event with a fresh connection and check that it was accepted."""
    with target.connect() as sock:
        sock.sendall(target.publish_request(category, data, close=True))
        buffer = bytearray()
        while (response := take_response(buffer)) is None:
            chunk = sock.recv(65536)
            if not chunk:
                response = take_response(buffer, at_eof=True)
                break
            buffer += chunk
    if response is None or response[0] != 200:
        raise RuntimeError(f"publish to {target.url} failed: {response!r}")


# -- requests per second ---------------------------------------------------------------


@dataclass
class RateResult:
    """What :func:`keepalive_rate` (or ``wrk``) measured."""

    requests: int
    seconds: float
    errors: int = 0
    tool: str = "python"

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def keepalive_rate(
    target: Target, request: bytes, connections: int = 50, duration: float = 5.0,
    progress: Progress = _quiet,
) -> RateResult:
    """Send *request* over *connections* keep-alive connections for *duration* seconds.

    Each connection sends its next request when the previous answer is complete (as
    ``wrk`` does). Answers other than 200 count as errors. One Python process drives
    every connection, so above roughly 10,000 requests/s this measures the client.
    """
    poller = select.epoll()
    sockets: dict[int, socket.socket] = {}
    buffers: dict[int, bytearray] = {}
    for _ in range(connections):
        sock = target.connect()
        sock.setblocking(False)
        sockets[sock.fileno()] = sock
        buffers[sock.fileno()] = bytearray()
        poller.register(sock.fileno(), select.EPOLLIN)
    completed = errors = 0
    started = time.perf_counter()
    deadline = started + duration
    next_report = started + 1
    for sock in sockets.values():
        sock.send(request)
    try:
        while True:
            now = time.perf_counter()
            if now >= deadline:
                break
            if now >= next_report:
                progress(f"{completed / (now - started):,.0f} requests/s so far")
                next_report += 1
            for fd, _ in poller.poll(0.1):
                sock = sockets[fd]
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("the server closed a keep-alive connection")
                buffer = buffers[fd]
                buffer += chunk
                while (response := take_response(buffer)) is not None:
                    completed += 1
                    if response[0] != 200:
                        errors += 1
                    sock.send(request)
        elapsed = time.perf_counter() - started
    finally:
        poller.close()
        for sock in sockets.values():
            sock.close()
    return RateResult(completed, elapsed, errors, "python")


# -- parking many subscribers ----------------------------------------------------------


def _accept_queue_length(port: int) -> int | None:
    """How many connections wait in the accept queue of the listener on *port*.

    Read from ``/proc/net/tcp``, where listening sockets come first; ``None`` if none
    is found (the caller then paces itself blindly).
    """
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if fields[3] != "0A":  # past the listeners
                        break
                    if fields[1].endswith(wanted):
                        return int(fields[4].split(":")[1], 16)
        except OSError:
            continue
    return None


def _park(
    target: Target, request: bytes, count: int, progress: Progress,
) -> list[socket.socket]:
    """Open *count* connections and send *request* on each; pace on the accept queue.

    A full accept queue drops the SYN and costs the client a one-second retransmit,
    so each batch waits until the server has accepted most of the previous ones.
    """
    batch = 100
    sockets: list[socket.socket] = []
    next_report = time.monotonic() + 1
    try:
        while len(sockets) < count:
            deadline = time.monotonic() + 10
            while True:
                queued = _accept_queue_length(target.port)
                if queued is None:
                    time.sleep(0.005)
                    break
                if queued < 32 or time.monotonic() > deadline:
                    break
                time.sleep(0.001)
            for _ in range(min(batch, count - len(sockets))):
                sock = socket.create_connection(target.address, timeout=30)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(request)
                sock.setblocking(False)
                sockets.append(sock)
            if time.monotonic() >= next_report:
                progress(f"{len(sockets):,}/{count:,} subscribers connected")
                next_report += 1
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _wait_parked(target: Target, count: int, progress: Progress) -> None:
    """Give the server time to read every request: BENCHMARKS.md's 1 s + N/5000 s.

    When the server's process is known, also wait (up to 20 s) until it is idle, so
    that a slow server is not measured while it still parks subscribers.
    """
    progress(f"waiting for {count:,} subscribers to park")
    deadline = time.monotonic() + 20
    while _accept_queue_length(target.port) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1 + count / 5000)
    if target.pid is None:
        return
    before = server_cpu_seconds(target.pid)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        after = server_cpu_seconds(target.pid)
        if after - before < 0.02:
            return
        before = after
    progress("the server is still busy after 20 s; measuring anyway")


# -- fan-out ---------------------------------------------------------------------------


@dataclass
class FanoutResult:
    """One fan-out measurement."""

    subscribers: int
    milliseconds: float
    rss_parked_kb: int | None
    rss_idle_kb: int | None
    answered: int
    bad_answers: int
    publish_status: int | None
    #: The server's CPU time (user + system) from the publish to the last answer, per
    #: answer: steadier than the wall clock on a shared machine.
    server_cpu_us_per_answer: float | None = None


def fanout(target: Target, count: int, progress: Progress = _quiet,
           timeout: float = 60.0, *, stream: bool = False,
           category: str | None = None) -> FanoutResult:
    """Park *count* subscribers on a fresh category (or *category*), publish once, time
    the answers.

    The clock runs from sending the publish until the last subscriber has read its whole
    answer; an answer counts as good only if it is a 200 holding the published event.
    With *stream*, the subscribers are open Server-Sent Events streams (``Accept:
    text/event-stream``): the clock stops when the last has read the event, and the
    streams stay open until then.
    """
    tag = os.urandom(4).hex()
    category = category or f"fanout-{count}-{tag}"
    marker = f"event-{tag}"
    rss_idle = read_rss_kb(target.pid) if target.pid else None
    request = target.subscribe_request(category, 60, close=not stream, stream=stream)
    sockets = _park(target, request, count, progress)
    poller = select.epoll(count + 1)
    try:
        _wait_parked(target, count, progress)
        rss_parked = read_rss_kb(target.pid) if target.pid else None
        by_fd = {sock.fileno(): sock for sock in sockets}
        buffers = {fd: bytearray() for fd in by_fd}
        for fd in by_fd:
            poller.register(fd, select.EPOLLIN)
        publisher = target.connect()
        publisher.setblocking(False)
        poller.register(publisher.fileno(), select.EPOLLIN)
        publish_buffer = bytearray()
        publish_status: int | None = None
        answered = bad = 0
        marker_bytes = marker.encode()
        progress(f"publishing to {count:,} parked subscribers")
        cpu_before = server_cpu_seconds(target.pid) if target.pid else None
        started = time.perf_counter()
        publisher.sendall(target.publish_request(category, marker))
        finished = started
        deadline = started + timeout
        while answered < count and time.perf_counter() < deadline:
            for fd, _ in poller.poll(1.0):
                if fd == publisher.fileno():
                    chunk = publisher.recv(65536)
                    publish_buffer += chunk
                    response = take_response(publish_buffer, at_eof=not chunk)
                    if response is not None or not chunk:
                        publish_status = response[0] if response else None
                        poller.unregister(fd)
                    continue
                sock = by_fd[fd]
                buffer = buffers[fd]
                try:
                    chunk = sock.recv(65536)
                except ConnectionError:
                    chunk = b""
                buffer += chunk
                if stream:
                    if chunk and marker_bytes not in buffer:
                        continue
                    finished = time.perf_counter()
                    answered += 1
                    if not (buffer.startswith(b"HTTP/1.1 200") and marker_bytes in buffer
                            and b"text/event-stream" in buffer):
                        bad += 1
                    poller.unregister(fd)
                    continue
                response = take_response(buffer, at_eof=not chunk)
                if response is None and chunk:
                    continue
                finished = time.perf_counter()
                answered += 1
                if response is None or response[0] != 200 or marker_bytes not in response[1]:
                    bad += 1
                poller.unregister(fd)
                sock.close()
        cpu_per_answer = None
        if cpu_before is not None and target.pid and answered:
            cpu_per_answer = (server_cpu_seconds(target.pid) - cpu_before) / answered * 1e6
        publisher.close()
    finally:
        poller.close()
        for sock in sockets:
            sock.close()
    bad += count - answered
    return FanoutResult(count, (finished - started) * 1000, rss_parked, rss_idle,
                        answered, bad, publish_status, cpu_per_answer)


# -- delivery latency ------------------------------------------------------------------

_EVENT = re.compile(
    rb'\{"timestamp":([0-9]+),"category":"[^"]*","data":([0-9]+),"id":"([^"]+)"\}'
)


def _publish_steadily(target: Target, category: str, rate: float, duration: float,
                      go: Any, results: Connection) -> None:
    """Publish ``0, 1, 2, ...`` at *rate* per second for *duration* s; send back the
    monotonic clock at each send (the clock is system-wide on Linux) and the failures.

    Open loop: each publish leaves on schedule whether or not the previous one has been
    answered, pipelined on one keep-alive connection, so that a server busy answering
    subscribers still sees the offered rate and events keep their publish order.
    """
    sent: list[float] = []
    answered = failures = 0
    buffer = bytearray()

    def read_answers(wait: float) -> None:
        nonlocal answered, failures
        if not poller.poll(wait * 1000):
            return
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the server closed the publisher's connection")
        buffer.extend(chunk)
        while (response := take_response(buffer)) is not None:
            answered += 1
            failures += response[0] != 200

    with target.connect() as sock:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not go.wait(600):
            return
        started = time.monotonic()
        for sequence in range(int(rate * duration)):
            while (pause := started + sequence / rate - time.monotonic()) > 0:
                read_answers(pause)
            request = target.publish_request(category, sequence)
            sent.append(time.monotonic())
            sock.sendall(request)
        deadline = time.monotonic() + 60
        while answered < len(sent) and time.monotonic() < deadline:
            read_answers(deadline - time.monotonic())
    results.send((sent, failures + len(sent) - answered))
    results.close()


@dataclass
class LatencyResult:
    """Delivery latency of events to subscribers that re-poll after each answer."""

    subscribers: int
    published: int
    publish_seconds: float
    publish_failures: int
    deliveries: int
    expected_deliveries: int
    missed: int
    duplicated: int
    answers: int
    percentiles_ms: dict[str, float] = field(default_factory=dict)

    @property
    def publish_rate(self) -> float:
        return (self.published - 1) / self.publish_seconds if self.publish_seconds else 0.0


class _Poller:
    """One subscriber of the latency test: its connection and its cursor."""

    __slots__ = ("sock", "buffer", "since_time", "last_id", "next_sequence")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.since_time: int | None = None
        self.last_id: str | None = None
        self.next_sequence = 0


def delivery_latency(
    target: Target, count: int = 10_000, rate: float = 100.0, duration: float = 10.0,
    progress: Progress = _quiet, drain_timeout: float = 60.0,
) -> LatencyResult:
    """Delivery latency of a steady publish *rate* to *count* re-polling subscribers.

    Each subscriber holds one keep-alive connection; after each answer it asks again
    with ``since_time``/``last_id`` of the last event it got, as golongpoll's clients
    do. Each event's latency is the time from sending its publish until a subscriber
    has read an answer holding it; every (subscriber, event) pair is one sample. The
    publisher runs in a process of its own so that the subscribers' work cannot delay it.
    """
    import numpy  # a dependency of matplotlib; see requirements.txt

    category = f"latency-{os.urandom(4).hex()}"
    total = int(rate * duration)
    # Forked before the subscribers connect, so that it holds none of their sockets.
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    go = context.Event()
    publisher = context.Process(target=_publish_steadily,
                                args=(target, category, rate, duration, go, sender), daemon=True)
    publisher.start()
    sender.close()
    sockets: list[socket.socket] = []
    poller = select.epoll(count)
    records: list[tuple[float, int, int]] = []  # (read at, first sequence, last sequence)
    missed = duplicated = answers = 0
    try:
        sockets = _park(target, target.subscribe_request(category, 60), count, progress)
        pollers = {sock.fileno(): _Poller(sock) for sock in sockets}
        _wait_parked(target, count, progress)
        for fd in pollers:
            poller.register(fd, select.EPOLLIN)
        go.set()
        started = time.monotonic()
        publishing_ends = started + duration
        done = 0
        next_report = started + 1
        deadline = publishing_ends + drain_timeout
        while done < count and time.monotonic() < deadline:
            now = time.monotonic()
            if publisher.exitcode:
                raise RuntimeError(f"the publisher failed (exit status {publisher.exitcode})")
            if now >= next_report:
                phase = "publishing" if now < publishing_ends else "draining"
                progress(f"{phase}: {len(records):,} answers, {done:,}/{count:,} "
                         f"subscribers have every event")
                next_report += 1
            for fd, _ in poller.poll(0.2):
                state = pollers[fd]
                chunk = state.sock.recv(65536)
                if not chunk:
                    raise RuntimeError("the server closed a subscriber's connection")
                state.buffer += chunk
                while (response := take_response(state.buffer)) is not None:
                    answers += 1
                    status, body = response
                    if status != 200:
                        raise RuntimeError(f"subscribe answered {status}: {body[:200]!r}")
                    first = _EVENT.search(body)
                    if first is not None:
                        *_, last = _EVENT.finditer(body, max(0, len(body) - 400))
                        first_sequence, last_sequence = int(first[2]), int(last[2])
                        in_answer = body.count(b'"timestamp"')
                        if first_sequence > state.next_sequence:
                            missed += first_sequence - state.next_sequence
                        elif first_sequence < state.next_sequence:
                            duplicated += state.next_sequence - first_sequence
                        if in_answer != last_sequence - first_sequence + 1:
                            missed += last_sequence - first_sequence + 1 - in_answer
                        records.append((time.monotonic(), first_sequence, last_sequence))
                        state.next_sequence = last_sequence + 1
                        state.since_time = int(last[1])
                        state.last_id = last[3].decode()
                        if state.next_sequence == total:
                            done += 1
                            continue
                    elif b'"timeout"' not in body:
                        raise RuntimeError(f"unexpected subscribe answer: {body[:200]!r}")
                    state.sock.send(target.subscribe_request(
                        category, 60, state.since_time, state.last_id))
        if receiver.poll(drain_timeout):
            sent, failures = receiver.recv()
        else:
            raise RuntimeError("the publisher did not report back")
        publisher.join(10)
    finally:
        poller.close()
        for sock in sockets:
            sock.close()
        if publisher.is_alive():
            publisher.kill()
    sent_at = numpy.asarray(sent, dtype=numpy.float64)
    samples = [numpy.float64(read_at) - sent_at[first:last + 1]
               for read_at, first, last in records if last < len(sent_at)]
    latencies = numpy.concatenate(samples) * 1000 if samples else numpy.zeros(0)
    percentiles: dict[str, float] = {}
    if len(latencies):
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
            percentiles[name] = float(numpy.percentile(latencies, q))
    return LatencyResult(
        subscribers=count,
        published=len(sent),
        publish_seconds=(sent[-1] - sent[0]) if len(sent) > 1 else 0.0,
        publish_failures=failures,
        deliveries=int(len(latencies)),
        expected_deliveries=count * len(sent),
        missed=missed,
        duplicated=duplicated,
        answers=answers,
        percentiles_ms=percentiles,
    )
