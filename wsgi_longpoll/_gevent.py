"""The private parts of gevent this package relies on, in one place.

gevent's cooperative socket wraps a non-blocking standard socket (``_sock``) and keeps an
idle read watcher (``_read_event``); writing to the first and parking on the second saves
a greenlet switch and an allocation per request on the server's hot paths. A gevent
release that renames them would break these functions, and ``tests/test_gevent_internals.py``
(which pins each) first.
"""

from __future__ import annotations

import socket
from typing import Any

from gevent._hub_local import get_hub_if_exists

__all__ = ["get_hub_if_exists", "pause_accepting", "peek", "peer_closed", "raw_socket",
           "read_watcher", "send_all", "wait_readable"]


def raw_socket(sock: Any) -> Any:
    """The non-blocking standard socket under gevent's *sock* (or *sock* itself)."""
    return getattr(sock, "_sock", sock)


def read_watcher(sock: Any, loop: Any) -> Any:
    """The read watcher of gevent's *sock*, idle while no greenlet reads it; a new one on
    *loop* for any other socket."""
    watcher = getattr(sock, "_read_event", None)
    return watcher if watcher is not None else loop.io(sock.fileno(), 1)


def wait_readable(sock: Any) -> None:
    """Wait until gevent's *sock* is readable, on its own read watcher, for at most its
    timeout: what its ``recv`` does after a read that would block, without trying that read
    first (worth it when nothing can be there yet, such as just after sending a request).

    :raises TimeoutError: (``socket.timeout``) after the socket's timeout.
    """
    sock._wait(sock._read_event)


def send_all(sock: Any, data: bytes) -> None:
    """Send all of *data* on gevent's (plain, not TLS) *sock*: straight to the non-blocking
    socket, and only what it did not take through gevent (which waits for the socket to
    drain), saving gevent's own first steps (a ``getsockopt`` call among them)."""
    try:
        sent = raw_socket(sock).send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def pause_accepting(server: Any, seconds: float) -> None:
    """Stop *server* (a gevent ``BaseServer``) accepting for *seconds*, as its own
    ``do_read`` error path does (its ``_timer``, which ``stop`` and ``close`` cancel)."""
    server.stop_accepting()
    server._timer = server.loop.timer(seconds)
    server._timer.start(server._start_accepting_if_started)


def peek(sock: Any) -> bytes | None:
    """The next byte the peer of *sock* sent, left unread: ``b""`` when the peer shut its
    side (a hang-up and a half-close look the same), ``None`` when nothing is there.

    :raises OSError: if the connection failed (a reset).
    """
    try:
        return bytes(raw_socket(sock).recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return None


def peer_closed(sock: Any) -> bool:
    """Whether the peer of the readable *sock* hung up (or the socket failed), rather
    than sent more data; reads nothing."""
    try:
        return bool(raw_socket(sock).recv(1, socket.MSG_PEEK) == b"")
    except BlockingIOError:
        return False
    except OSError:
        return True
