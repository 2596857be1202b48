"""The ceiling of a gevent server written in Python: no WSGI, no HTTP parsing to speak of.

Each connection's greenlet reads bytes, counts requests by their blank line, and answers
with canned bytes: a subscribe with ``since_time`` gets one canned event at once, one
without it waits for the next publish, a publish wakes every waiter of every category.
It is not a server to use (no validation, no categories, no buffer); it tells how fast
*any* gevent-and-Python HTTP server can go on this machine, which is the bound for what
tuning ours can reach::

    python benchmarks/ceiling_server.py 127.0.0.1:8082 &
    python benchmarks/run.py --url http://127.0.0.1:8082 --pid $! --name ceiling \
        --latency-subscribers 0
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time

from gevent.event import Event
from gevent.server import StreamServer

_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
         b"X-Content-Type-Options: nosniff\r\nContent-Length: %d\r\n%s\r\n")
_PUBLISHED = b'{"success": true}'
_arrival = Event()
_last_event = [b'{"events":[]}']


def _answer(body: bytes, close: bool) -> bytes:
    return _HEAD % (len(body), b"Connection: close\r\n" if close else b"") + body


def _event_body(data: bytes) -> bytes:
    return (b'{"events":[{"timestamp":%d,"category":"c","data":%s,'
            b'"id":"00000000-0000-4000-8000-000000000000"}]}' % (int(time.time() * 1000), data))


def handle(sock: socket.socket, address: object) -> None:
    with contextlib.suppress(ConnectionError):  # wrk resets its connections when it stops
        _serve(sock)


def _serve(sock: socket.socket) -> None:
    global _arrival
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return
        buffer += chunk
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head = buffer[:end]
            length = 0
            if head.startswith(b"POST"):
                start = head.lower().find(b"content-length:")
                length = int(head[start + 15:].split(b"\r\n", 1)[0])
            if len(buffer) < end + 4 + length:
                break
            body, buffer = buffer[end + 4:end + 4 + length], buffer[end + 4 + length:]
            close = b"connection: close" in head.lower()
            if head.startswith(b"POST"):
                data = body[body.find(b'"data":') + 7:body.rfind(b"}")].strip()
                _last_event[0] = _event_body(data)
                arrival, _arrival = _arrival, Event()
                arrival.set()
                sock.sendall(_answer(_PUBLISHED, close))
            elif b"since_time=" in head:
                sock.sendall(_answer(_last_event[0], close))
            else:
                _arrival.wait(60)
                sock.sendall(_answer(_last_event[0], close))
            if close:
                sock.close()
                return


def main() -> None:
    host, _, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8082").rpartition(":")
    StreamServer((host, int(port)), handle).serve_forever()


if __name__ == "__main__":
    main()
