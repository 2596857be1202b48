"""Redis connections for the hub: a small RESP2 client on gevent sockets, and its pool.

A Redis command made from a greenlet of a hub must not block the hub's thread. redis-py
on standard sockets would (so the engine used to hand every command to the hub's thread
pool, and most of the server's CPU went to passing the GIL among those threads); redis-py
on gevent's sockets spends more time in its own layers than the round trip costs. This
client knows the few commands the engine sends (scripts, ``CLIENT UNBLOCK``, ``PING``):
one packed write and one parsed reply per call, on a gevent socket, so that the calling
greenlet yields to the hub while Redis works.

:class:`CooperativePool` bounds the connections of one hub and makes a caller wait for a
free one rather than fail (redis-py's own pool raises "Too many connections" beyond its
bound: a herd of 1,000 re-polls became 503s).

The replies are parsed by ``hiredis`` when it is installed (the ``hiredis`` extra), else
by :func:`parse_reply`.
"""

from __future__ import annotations

import importlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.lock import Semaphore

from .._gevent import raw_socket

hiredis: Any
try:  # the hiredis extra, when installed
    hiredis = importlib.import_module("hiredis")
except ImportError:
    hiredis = None

__all__ = [
    "Address",
    "CommandFailed",
    "ConnectFailed",
    "CooperativePool",
    "RedisConnection",
    "ReplyError",
    "pack_command",
    "parse_reply",
]


class ReplyError(Exception):
    """Redis answered a command with an error (``-ERR ...``, ``-NOSCRIPT ...``)."""


class ConnectFailed(OSError):
    """No connection to Redis could be made: no command was sent."""


class CommandFailed(OSError):
    """The connection failed or timed out after a command was sent: it may have run.

    :attr:`closed` tells a connection that Redis had closed (a restart: the command
    most likely never reached the Redis that answers now) from a timeout.
    """

    closed = False


@dataclass(frozen=True)
class Address:
    """Where and how to connect: what a redis-py URL says, for this client."""

    host: str = "127.0.0.1"
    port: int = 6379
    #: A Unix socket's path (``unix://`` URLs); *host* and *port* are then unused.
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    #: A TLS context for ``rediss://`` URLs (``gevent.ssl``'s), ``None`` for plain TCP.
    ssl_context: ssl.SSLContext | None = None
    #: The name the server's certificate is checked against, with TLS.
    server_hostname: str | None = None
    #: Seconds for each reply ...
    timeout: float = 5.0
    #: ... and for connecting.
    connect_timeout: float = 5.0

    def __str__(self) -> str:
        return self.path if self.path is not None else f"{self.host}:{self.port}"


def _encode(arg: Any) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float):
        return repr(arg).encode("ascii")
    raise TypeError(f"cannot send a {type(arg).__name__} to Redis")


def pack_command(*args: Any) -> bytes:
    """*args* as one RESP2 command (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _encode(arg)
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


class _Incomplete(Exception):
    pass


def parse_reply(buffer: bytes | bytearray, start: int = 0) -> tuple[Any, int]:
    """The RESP2 reply that starts at *start* of *buffer*, and where it ends.

    Bulk and simple strings come as ``bytes``, integers as ``int``, a nil as ``None``,
    an error as a :class:`ReplyError` instance (raised by the caller at the top level).

    :raises ValueError: if *buffer* does not hold the whole reply yet.
    """
    try:
        return _parse(buffer, start)
    except _Incomplete:
        raise ValueError("incomplete reply") from None


def _parse(buffer: bytes | bytearray, start: int) -> tuple[Any, int]:
    end = buffer.find(b"\r\n", start)
    if end < 0:
        raise _Incomplete
    kind = buffer[start]
    if kind == 36:  # $ bulk string
        size = int(buffer[start + 1:end])
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if len(buffer) < stop + 2:
            raise _Incomplete
        return bytes(buffer[end + 2:stop]), stop + 2
    if kind == 42:  # * array
        count = int(buffer[start + 1:end])
        if count < 0:
            return None, end + 2
        items = []
        position = end + 2
        for _ in range(count):
            item, position = _parse(buffer, position)
            items.append(item)
        return items, position
    if kind == 58:  # : integer
        return int(buffer[start + 1:end]), end + 2
    if kind == 43:  # + simple string
        return bytes(buffer[start + 1:end]), end + 2
    if kind == 45:  # - error
        return ReplyError(bytes(buffer[start + 1:end]).decode("utf-8", "replace")), end + 2
    raise ValueError(f"not a RESP2 reply: {bytes(buffer[start:end])[:50]!r}")


class RedisConnection:
    """One connection to Redis on a gevent socket of the caller's hub.

    :param address: where to connect, and the timeouts.
    :raises ConnectFailed: if the connection (or its ``AUTH``/``SELECT``) fails.
    """

    def __init__(self, address: Address) -> None:
        self.address = address
        self.timeout = address.timeout
        self._reader: Any = hiredis.Reader(replyError=ReplyError) if hiredis else None
        self._buffer = bytearray()
        try:
            self._sock = self._open()
        except (OSError, ssl.SSLError) as error:
            raise ConnectFailed(f"connecting to {address}: {error}") from error
        setup: list[tuple[Any, ...]] = []
        if address.password is not None:
            if address.username is not None:
                setup.append(("AUTH", address.username, address.password))
            else:
                setup.append(("AUTH", address.password))
        if address.db:
            setup.append(("SELECT", address.db))
        try:
            for command in setup:
                self.call(*command)
        except (CommandFailed, ReplyError) as error:
            self.close()
            raise ConnectFailed(f"connecting to {address}: {error}") from error

    def _open(self) -> Any:
        address = self.address
        if address.path is not None:
            sock = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(address.connect_timeout)
            try:
                sock.connect(address.path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = gsocket.create_connection((address.host, address.port),
                                             address.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if address.ssl_context is not None:  # gevent's, so that the TLS socket is too
            sock = address.ssl_context.wrap_socket(
                sock, server_hostname=address.server_hostname or address.host
            )
        sock.settimeout(self.timeout)
        return sock

    def call(self, *args: Any) -> Any:
        """Send one command and return its reply.

        :raises ReplyError: if Redis answered with an error; the connection stays usable.
        :raises CommandFailed: if the connection failed or timed out; close it.
        """
        try:
            self._sock.sendall(pack_command(*args))
            reply = self._read_reply()
        except (OSError, ssl.SSLError) as error:
            failure = CommandFailed(str(error) or type(error).__name__)
            failure.closed = isinstance(error, ConnectionError)
            raise failure from error
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def _read_reply(self) -> Any:
        reader = self._reader
        if reader is not None:
            reply = reader.gets()
            while reply is False:
                data = self._sock.recv(65536)
                if not data:
                    raise ConnectionError("Redis closed the connection")
                reader.feed(data)
                reply = reader.gets()
            return reply
        buffer = self._buffer
        while True:
            if buffer:
                try:
                    reply, end = _parse(buffer, 0)
                except _Incomplete:
                    pass
                else:
                    del buffer[:end]
                    return reply
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError("Redis closed the connection")
            buffer += data

    def stale(self) -> bool:
        """Whether the idle connection was closed by Redis (a restart, a timeout of its
        own), so that a command sent on it would fail without having run."""
        try:
            return bool(raw_socket(self._sock).recv(1, socket.MSG_PEEK) == b"")
        except BlockingIOError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        self._sock.close()


class CooperativePool:
    """At most *size* connections for the greenlets of one hub; a caller beyond waits.

    :param connect: makes a new connection (may raise :class:`ConnectFailed`).
    :param size: the most connections open at once.
    :param wait_timeout: the longest a caller waits for a free connection before
        :class:`ConnectFailed` (nothing was sent).
    """

    def __init__(
        self, connect: Callable[[], RedisConnection], size: int, wait_timeout: float
    ) -> None:
        self._connect = connect
        self._idle: list[RedisConnection] = []
        self._slots = Semaphore(size)
        self.size = size
        self.wait_timeout = wait_timeout
        self.hub = gevent.get_hub()

    def call(self, *args: Any) -> Any:
        """Run one command on a free connection (waiting for one if needed).

        :raises ReplyError: Redis's error reply.
        :raises ConnectFailed: if no connection could be had: the command was not sent.
        :raises CommandFailed: if the command's connection failed: it may have run.
        """
        slots = self._slots
        if not slots.acquire(timeout=self.wait_timeout):
            raise ConnectFailed(
                f"no free Redis connection within {self.wait_timeout} s "
                f"({self.size} busy)"
            )
        try:
            idle = self._idle
            connection = None
            while idle:
                connection = idle.pop()
                if not connection.stale():
                    break
                connection.close()
                connection = None
            if connection is not None:
                try:
                    return self._call(connection, args)
                except CommandFailed as error:
                    # A pooled connection Redis had closed (a restart not seen yet): once
                    # more on a new one. The engine's commands may run twice (reads, and
                    # publishes made idempotent by their keys).
                    if not error.closed:
                        raise
            return self._call(self._connect(), args)
        finally:
            slots.release()

    def _call(self, connection: RedisConnection, args: tuple[Any, ...]) -> Any:
        try:
            reply = connection.call(*args)
        except CommandFailed:
            connection.close()
            raise
        except BaseException as error:
            if isinstance(error, ReplyError):
                self._idle.append(connection)
            else:  # killed mid-command: the reply may be pending on it
                connection.close()
            raise
        self._idle.append(connection)
        return reply

    def close(self) -> None:
        """Close the idle connections (those in use close when their call ends)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
