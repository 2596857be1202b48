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

:class:`SentinelPrimary` finds the primary that Redis Sentinel names (``redis+sentinel://``
URLs), for the pool's new connections, and asks again once a connection to it failed or
it answered ``READONLY`` (a failover).
"""

from __future__ import annotations

import importlib
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.lock import Semaphore

from .._gevent import raw_socket, send_all, wait_readable

_monotonic = time.monotonic

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
    "SentinelPrimary",
    "SetupRefused",
    "pack_command",
    "parse_reply",
    "read_only",
]


class ReplyError(Exception):
    """Redis answered a command with an error (``-ERR ...``, ``-NOSCRIPT ...``)."""


def read_only(error: BaseException | bytes | str) -> bool:
    """Whether *error* (a reply, or its text) is Redis's ``READONLY``: the server is a
    replica now (a failover demoted it), and wrote nothing."""
    if isinstance(error, bytes):  # a script's outcome: "!@user_script: 48: -READONLY ..."
        return error.startswith(b"!") and b"READONLY" in error
    text = error if isinstance(error, str) else str(error)
    return text.startswith("READONLY") or "-READONLY" in text


class ConnectFailed(OSError):
    """No connection to Redis could be made: no command was sent."""


class SetupRefused(ConnectFailed):
    """Redis refused to set a new connection up (``NOAUTH``, a wrong password, a database
    it does not have): no command was sent, and none will be until that is fixed.

    :param reply: Redis's own message.
    """

    def __init__(self, message: str, reply: str) -> None:
        super().__init__(message)
        self.reply = reply


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
        #: Whether the socket is plain (not TLS): then it is written and read directly.
        self._plain = address.ssl_context is None
        #: Whether a command was sent on the plain socket whose reply has not been read
        #: from yet.
        self._sent = False
        #: When the connection was last used (:func:`time.monotonic`).
        self.used_at = _monotonic()
        setup: list[tuple[Any, ...]] = []
        if address.password is not None:
            if address.username is not None:
                setup.append(("AUTH", address.username, address.password))
            else:
                setup.append(("AUTH", address.password))
        if address.db:
            setup.append(("SELECT", address.db))
        if not setup:  # a Redis that wants a password says so now (NOAUTH), clearly
            setup.append(("PING",))
        try:
            for command in setup:
                self.call(*command)
        except CommandFailed as error:
            self.close()
            raise ConnectFailed(f"connecting to {address}: {error}") from error
        except ReplyError as error:
            self.close()
            raise SetupRefused(f"connecting to {address}: {error}", str(error)) from error

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
            self._send(pack_command(*args))
            reply = self._read_reply()
        except (OSError, ssl.SSLError) as error:
            failure = CommandFailed(str(error) or type(error).__name__)
            failure.closed = isinstance(error, ConnectionError)
            raise failure from error
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def call_many(self, commands: Sequence[tuple[Any, ...]],
                  timeout: float | None = None) -> list[Any]:
        """Send *commands* in one write and return their replies, in order; an error reply
        comes as a :class:`ReplyError` instance, not raised.

        :param timeout: seconds for each reply, if not the connection's (a command that
            blocks, such as ``WAIT``).
        :raises CommandFailed: if the connection failed or timed out; close it.
        """
        try:
            if timeout is not None:
                self._sock.settimeout(timeout)
            self._send(b"".join(pack_command(*command) for command in commands))
            replies = [self._read_reply() for _ in commands]
            if timeout is not None:
                self._sock.settimeout(self.timeout)
            return replies
        except (OSError, ssl.SSLError) as error:
            failure = CommandFailed(str(error) or type(error).__name__)
            failure.closed = isinstance(error, ConnectionError)
            raise failure from error

    def _send(self, data: bytes) -> None:
        if self._plain:
            send_all(self._sock, data)
            self._sent = True
        else:
            self._sock.sendall(data)
        self.used_at = _monotonic()

    def _receive(self) -> bytes:
        """What Redis sent next (waiting for it, for at most the socket's timeout)."""
        if not self._plain:
            data: bytes = self._sock.recv(65536)
        else:
            if self._sent:  # a round trip away: wait, rather than try a read that would fail
                self._sent = False
                wait_readable(self._sock)
            raw = raw_socket(self._sock)
            while True:
                try:
                    data = raw.recv(65536)
                    break
                except BlockingIOError:
                    wait_readable(self._sock)
        if not data:
            raise ConnectionError("Redis closed the connection")
        return data

    def _read_reply(self) -> Any:
        reader = self._reader
        if reader is not None:
            reply = reader.gets()
            while reply is False:
                reader.feed(self._receive())
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
            buffer += self._receive()

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
    :param lost: called when a connection failed, was found closed, or :meth:`reset`:
        Redis may be elsewhere now (a :class:`SentinelPrimary` forgets it).

    The engine resets the pool when Redis answered ``READONLY`` (the server was demoted
    to a replica by a failover; nothing was written), and sends the command once more.
    """

    #: Seconds after its last use from which an idle connection is checked before it is
    #: used (:meth:`RedisConnection.stale`: a syscall); a busy pool skips the check. A call
    #: on a connection Redis closed in the meantime (a restart) finds it closed and goes
    #: once more on a new connection, as one the check found stale would.
    checked_after = 1.0

    def __init__(
        self, connect: Callable[[], RedisConnection], size: int, wait_timeout: float,
        lost: Callable[[], None] | None = None,
    ) -> None:
        self._connect = connect
        self._lost = lost
        self._idle: list[RedisConnection] = []
        self._slots = Semaphore(size)
        self._generation = 0
        self.size = size
        self.wait_timeout = wait_timeout
        self.hub = gevent.get_hub()

    def call(self, *args: Any) -> Any:
        """Run one command on a free connection (waiting for one if needed).

        :raises ReplyError: Redis's error reply.
        :raises ConnectFailed: if no connection could be had: the command was not sent.
        :raises CommandFailed: if the command's connection failed: it may have run.
        """
        return self._run(lambda connection: connection.call(*args))

    def pipeline(self, *commands: tuple[Any, ...], timeout: float | None = None) -> list[Any]:
        """Run *commands* on one connection, sent in one write: their replies, an error
        reply as a :class:`ReplyError` instance.

        :param timeout: seconds for each reply, if not the connection's.
        :raises ConnectFailed: if no connection could be had: nothing was sent.
        :raises CommandFailed: if the connection failed: the commands may have run.
        """
        replies: list[Any] = self._run(
            lambda connection: connection.call_many(commands, timeout))
        return replies

    def reset(self) -> None:
        """Forget the connections: Redis is elsewhere now (the idle ones close now, those
        in use when their call ends)."""
        self._generation += 1
        self.close()
        if self._lost is not None:
            self._lost()

    def _run(self, command: Callable[[RedisConnection], Any]) -> Any:
        slots = self._slots
        if not slots.acquire(timeout=self.wait_timeout):
            raise ConnectFailed(
                f"no free Redis connection within {self.wait_timeout} s "
                f"({self.size} busy)"
            )
        try:
            idle = self._idle
            connection = None
            now = _monotonic()
            while idle:
                connection = idle.pop()
                if now - connection.used_at < self.checked_after or not connection.stale():
                    break
                connection.close()
                connection = None
                if self._lost is not None:
                    self._lost()
            if connection is not None:
                try:
                    return self._call(connection, command)
                except CommandFailed as error:
                    # A pooled connection Redis had closed (a restart not seen yet): once
                    # more on a new one. The engine's commands may run twice (reads, and
                    # publishes made idempotent by their keys).
                    if not error.closed:
                        raise
            return self._call(self._connect(), command)
        finally:
            slots.release()

    def _call(self, connection: RedisConnection,
              command: Callable[[RedisConnection], Any]) -> Any:
        generation = self._generation
        try:
            reply = command(connection)
        except CommandFailed:
            connection.close()
            if self._lost is not None:
                self._lost()
            raise
        except BaseException as error:
            if isinstance(error, ReplyError):
                self._keep(connection, generation)
            else:  # killed mid-command: the reply may be pending on it
                connection.close()
            raise
        self._keep(connection, generation)
        return reply

    def _keep(self, connection: RedisConnection, generation: int) -> None:
        if generation == self._generation:
            self._idle.append(connection)
        else:  # taken before a reset: to where Redis was
            connection.close()

    def close(self) -> None:
        """Close the idle connections (those in use close when their call ends)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class SentinelPrimary:
    """Where the primary that Redis Sentinel monitors as *service_name* is, for new
    connections.

    The address is asked of the sentinels once and kept; a connection to it that fails,
    or finds a server that is not a primary (``ROLE``), makes it ask again, and so does
    :meth:`forget` (called by the pool when a connection was lost or answered
    ``READONLY``). During a failover the sentinels still name the old primary until they
    promote a replica: a new connection meanwhile fails with :class:`ConnectFailed`.

    :param sentinels: the sentinels' addresses (with their password, if any).
    :param service_name: the name they monitor the primary under.
    :param template: the primary's address but for its host and port (database,
        credentials, TLS, timeouts).
    """

    def __init__(self, sentinels: Sequence[Address], service_name: str,
                 template: Address) -> None:
        self.sentinels = list(sentinels)
        self.service_name = service_name
        self.template = template
        #: The primary's address last named by a sentinel, ``None`` until asked.
        self.primary: Address | None = None

    def forget(self) -> None:
        """Ask the sentinels again before the next connection."""
        self.primary = None

    def connect(self) -> RedisConnection:
        """A new connection to the primary, checked with ``ROLE``.

        :raises ConnectFailed: if no sentinel names a primary, or it cannot be reached,
            or it is not a primary (yet).
        """
        address = self.primary
        if address is not None:
            try:
                return self._checked(address)
            except ConnectFailed:
                self.primary = None
        address = self.primary = self.locate()
        try:
            return self._checked(address)
        except ConnectFailed:
            self.primary = None
            raise

    def _checked(self, address: Address) -> RedisConnection:
        connection = RedisConnection(address)
        try:
            role = connection.call("ROLE")
        except (CommandFailed, ReplyError) as error:
            connection.close()
            raise ConnectFailed(f"connecting to {address}: ROLE failed: {error}") from error
        if not role or role[0] != b"master":
            connection.close()
            kind = role[0].decode("ascii", "replace") if role else "?"
            raise ConnectFailed(
                f"connecting to {address}, named by the sentinels as the primary of "
                f"{self.service_name!r}: it is a {kind} (a failover in progress)"
            )
        return connection

    def locate(self) -> Address:
        """The primary's address, as the first sentinel that answers names it.

        :raises ConnectFailed: if none does.
        """
        problems = []
        for index, sentinel in enumerate(self.sentinels):
            try:
                connection = RedisConnection(sentinel)
            except ConnectFailed as error:
                problems.append(str(error))
                continue
            try:
                reply = connection.call("SENTINEL", "get-master-addr-by-name",
                                        self.service_name)
            except (CommandFailed, ReplyError) as error:
                problems.append(f"sentinel {sentinel}: {error}")
                continue
            finally:
                connection.close()
            if not reply:
                problems.append(f"sentinel {sentinel} monitors no {self.service_name!r}")
                continue
            if index:  # ask the one that answered first next time
                self.sentinels.insert(0, self.sentinels.pop(index))
            return replace(self.template, host=reply[0].decode("utf-8"), port=int(reply[1]))
        raise ConnectFailed(
            f"connecting to the primary of {self.service_name!r}: no sentinel named it "
            f"({'; '.join(problems)})"
        )
