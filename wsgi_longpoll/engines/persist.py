"""File persistence: events appended to a file and read back when the manager starts.

The file holds one event a line, in the protocol's JSON form, each written as
``b"\\n" + json`` like golongpoll does, so that a record torn by a crash never glues onto
the next one. Files written by golongpoll and by this module read the same.

Writing happens in a real OS thread (even in a process monkey-patched by gevent):
:meth:`FilePersister.append` only hands the bytes over, so a slow disk never stalls the
gevent hub that answers subscribers. The same thread rewrites the file when it has grown
too much (see :class:`FilePersister` for the rule), in order with the appends.

**Guarantees.** One persister per file: the file itself (its device and inode) is locked
(``flock``) for the persister's life, and a second persister, in this process or another,
by whatever name it reaches the file (a symbolic or a hard link), raises
:class:`PersistFileLocked`. Once a write has failed (disk full, file too
large, an I/O error) :meth:`FilePersister.check` raises :class:`PersistenceFailed`, and
the memory engine refuses events with it, until a retry of the unwritten bytes
succeeds, so that no event is acknowledged that cannot be written. With
``acknowledge_after_write``, publish returns only once its event is written (and
synced, with ``fsync``).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import math
import os
import weakref
from time import monotonic
from typing import Any

from gevent.hub import Waiter, getcurrent
from gevent.monkey import get_original

from .._gevent import get_hub_if_exists
from ..errors import OutcomeUnknown, StorageUnavailable
from ..event import Event
from ..protocol import MAX_TIMESTAMP, canonical_uuid

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FilePersister", "NotWritten", "PersistFileLocked", "PersistenceFailed"]

logger = logging.getLogger(__name__)

# Real OS primitives even when the process is monkey-patched: the writer must be a
# thread of its own, not a greenlet of the hub it is there to keep free.
_start_new_thread = get_original("_thread", "start_new_thread")
_allocate_lock = get_original("_thread", "allocate_lock")
_SimpleQueue = get_original("queue", "SimpleQueue")
_Empty = get_original("queue", "Empty")
_get_thread_ident = get_original("_thread", "get_ident")


class PersistenceFailed(StorageUnavailable):
    """The persister cannot write its file (disk full, file too large, an I/O error).

    Raised by :meth:`FilePersister.check`, which the memory engine calls before it stores
    an event (so by ``LongpollManager.publish``, which the middleware answers with
    ``503`` and ``Retry-After``), from the first failed write until a retry of the
    unwritten bytes succeeds: the event was not published. With
    ``acknowledge_after_write``, raised when the write of the publisher's own event
    failed: the event was handed to live subscribers and is kept and retried, but it is
    not on disk.
    """


class NotWritten(PersistenceFailed, OutcomeUnknown):
    """With acknowledge after write: the event is published (buffered, handed to live
    subscribers) but its write failed. It stays queued and is retried; a publish that
    gets this answer was neither refused nor made durable (HTTP 504)."""


class PersistFileLocked(OSError):
    """Another persister (in this process or another) holds the persist file's lock.

    Two writers on one file lose events: each compaction of one replaces the file the
    other is appending to.
    """

#: How many bad lines :meth:`FilePersister.load` logs one by one before it only counts them.
_LOGGED_BAD_LINES = 20

#: The writer aims to write an event this fraction of the flush period early, so that
#: a thread scheduled a little late still meets the period.
_DEADLINE_HEADROOM = 0.2

#: Compaction writes the new file in pieces of this size.
_COMPACTION_CHUNK = 1024 * 1024

# Persisters still open, flushed by the interpreter's exit handler.
_open_persisters: weakref.WeakSet[FilePersister] = weakref.WeakSet()


def _write_out(fd: int, pending: bytearray) -> None:
    """Write all of *pending* to *fd*, removing from it what has been written.

    After an error, *pending* holds exactly what is still to be written.
    """
    while pending:
        written = os.write(fd, pending)
        del pending[:written]


def _fsync_directory(path: str) -> None:
    """Make a rename in the directory *path* durable (where the platform allows it)."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # not every file system can sync a directory
            os.fsync(fd)
    finally:
        os.close(fd)


class _Command:
    """An order for the writer thread, with a lock released when it has been carried out."""

    __slots__ = ("kind", "events", "done", "error")

    def __init__(self, kind: str, events: list[Event] | None = None) -> None:
        self.kind = kind
        self.events = events
        self.error: OSError | None = None  # why the writes before it failed
        self.done = _allocate_lock()
        self.done.acquire()


class _Ack:
    """A publisher waiting for its event to be written (``acknowledge_after_write``).

    The writer thread calls :meth:`complete` (with the persister's lock held); the
    publisher waits in :meth:`FilePersister.wait_written`: on a gevent :class:`Waiter`
    woken by the hub's ``async`` watcher (which a thread may send, and which keeps the
    hub's loop alive) when it runs in a greenlet of a hub, so that the hub goes on
    serving; on an OS lock otherwise.
    """

    __slots__ = ("event_id", "done", "error", "lock", "watcher")

    def __init__(self, event_id: str) -> None:
        self.event_id = event_id
        self.done = False
        self.error: OSError | None = None
        self.lock = _allocate_lock()
        self.lock.acquire()
        self.watcher: Any = None

    def complete(self, error: OSError | None) -> None:
        self.done = True
        self.error = error
        self.lock.release()
        if self.watcher is not None:
            self.watcher.send()


class FilePersister:
    """Keeps every published event in a file, and gives them back on start.

    Pass it to :class:`~wsgi_longpoll.manager.LongpollManager` as ``persister``; the
    standalone :class:`~wsgi_longpoll.server.Server` makes one from its
    ``FilePersistorInfo``. The file is created if needed and opened for appending here,
    so a file that cannot be written fails at once.

    Events are buffered in memory and written by a thread of the persister's own: when
    *write_buffer_size* bytes are waiting, and at the latest *write_flush_period_seconds*
    after an event was appended. A process killed at any moment therefore loses at most
    the events of the last flush period; with *fsync* each periodic write is also made
    durable against a power loss, at a cost (see ``docs/persistence.md``). :meth:`close`
    writes everything out; so does the interpreter's exit if ``close`` was never called.

    **Compaction**: the file is rewritten to hold exactly the events the buffers keep when
    the manager starts and whenever the bytes appended since the last rewrite reach the
    larger of *compact_bytes* and the size of that rewrite (so the file stays below about
    twice what the buffers hold, or *compact_bytes* more than that, and the cost of
    rewriting stays proportional to what is appended). The new file is written next to the
    old one as ``<file_name>.compacting``, synced, then renamed over it: a crash at any
    moment leaves either the old or the new file whole.

    **One writer**: the file itself is locked with ``flock`` while the persister is open;
    compaction locks the new file before it renames it over the old one. A second
    persister on the same file, by any name (a symbolic or a hard link), raises
    :class:`PersistFileLocked`. *file_name*'s symbolic links are resolved once, here:
    compaction rewrites the file they lead to, in its directory, and leaves the links
    be. A hard link to the file keeps the old content after a compaction (a warning
    says so at start).

    **Write failures**: a failed write is logged, counted (:attr:`write_failures`) and
    retried every *write_flush_period_seconds* with the bytes it could not write. From
    the failure until a retry succeeds, :attr:`healthy` is false, :attr:`write_error`
    says why, and :meth:`check` raises :class:`PersistenceFailed`, so that a publish is
    refused (``503``) rather than acknowledged and lost. Events still unwritten when the
    persister is closed are counted in :attr:`discarded_events` and
    :attr:`discarded_bytes` (the CLI then exits non-zero).

    **Acknowledge after write**: with *acknowledge_after_write*, the writer writes as soon
    as events come, every event queued in one write (and one ``fsync`` with *fsync*),
    and :meth:`wait_written` returns when the event it is given is written: the manager
    calls it after publishing, outside its lock, so publish returns only then. A process
    killed at any moment then loses no acknowledged event (a power loss neither, with
    *fsync*). Live subscribers may receive an event before it is written.

    :param file_name: the file to append to and read back from.
    :param write_buffer_size: bytes buffered before a write; more than 0.
    :param write_flush_period_seconds: the longest an appended event may wait before it
        is written; more than 0.
    :param fsync: sync the file to the disk at each periodic write and at close;
        otherwise the operating system decides when written data reaches the disk.
    :param compact_bytes: the least growth, in bytes, that triggers a rewrite while
        running; more than 0.
    :param acknowledge_after_write: make :meth:`wait_written` wait for the write (see
        above); otherwise it returns at once and events are written at the latest
        *write_flush_period_seconds* after they came.
    :raises ValueError: if an option is out of range (the message names it).
    :raises TypeError: if an option has the wrong type.
    :raises PersistFileLocked: if another persister has the file open.
    :raises OSError: if the file cannot be created or opened for appending.
    """

    #: The default of *compact_bytes*: 16 MiB.
    default_compact_bytes = 16 * 1024 * 1024

    def __init__(
        self,
        file_name: str | os.PathLike[str],
        write_buffer_size: int = 4096,
        write_flush_period_seconds: float = 1.0,
        *,
        fsync: bool = False,
        compact_bytes: int = default_compact_bytes,
        acknowledge_after_write: bool = False,
    ) -> None:
        if not isinstance(file_name, (str, os.PathLike)):
            raise TypeError(f"file_name must be a path, not {type(file_name).__name__}")
        path = os.fspath(file_name)
        if not path:
            raise ValueError("file_name must not be empty")
        _check_positive_int("write_buffer_size", write_buffer_size)
        _check_positive_int("compact_bytes", compact_bytes)
        if isinstance(write_flush_period_seconds, bool) or not isinstance(
            write_flush_period_seconds, (int, float)
        ):
            raise TypeError(
                "write_flush_period_seconds must be a number, "
                f"not {type(write_flush_period_seconds).__name__}"
            )
        if not (0 < write_flush_period_seconds < math.inf):
            raise ValueError(
                "write_flush_period_seconds must be more than 0, "
                f"not {write_flush_period_seconds!r}"
            )
        self.file_name = path
        self.write_buffer_size = write_buffer_size
        self.write_flush_period_seconds = float(write_flush_period_seconds)
        self.fsync = bool(fsync)
        self.compact_bytes = compact_bytes
        self.acknowledge_after_write = bool(acknowledge_after_write)
        #: How many writes (or syncs) have failed since the persister was opened.
        self.write_failures = 0
        #: Events, and bytes, that were still unwritten when the persister was closed.
        self.discarded_events = 0
        self.discarded_bytes = 0
        self._write_error: OSError | None = None
        #: The file written: *file_name* with its symbolic links resolved.
        self._path = os.path.realpath(path)
        self._fd = _open_locked(self._path, path)
        try:
            status = os.fstat(self._fd)
        except OSError:
            os.close(self._fd)
            raise
        if status.st_nlink > 1:
            logger.warning(
                "%s has %d hard links: compaction replaces the file, and the other names "
                "keep its old content", path, status.st_nlink,
            )
        # What the manager's compaction rule counts: bytes since the last rewrite.
        self._appended_bytes = status.st_size
        self._compacted_bytes = 0
        # Handed from append to the writer under _lock: encoded events and commands, in
        # order. The writer wakes on _wakeups only when it must: the first event when it
        # has no deadline set, a full buffer, a command.
        self._lock = _allocate_lock()
        self._pending: list[bytes | _Command | _Ack] = []
        self._acks: dict[str, _Ack] = {}  # event id -> its publisher's wait
        self._waiting_acks: list[_Ack] = []  # the writer's: acks whose bytes it holds
        self._pending_bytes = 0
        self._pending_since = 0.0  # when the first of the pending events came
        self._wake_sent = False
        self._writer_has_deadline = False
        self._wakeups: Any = _SimpleQueue()
        self._closed = False
        self._finished = _allocate_lock()  # held while the writer thread runs
        self._finished.acquire()
        try:
            _start_new_thread(self._run, ())
        except BaseException:
            os.close(self._fd)
            raise
        _open_persisters.add(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.file_name!r}>"

    # -- the Persister interface --------------------------------------------------------

    def load(self) -> list[Event]:
        """Read the events in the file, in file order.

        Blank lines are skipped quietly; torn and unparsable lines are skipped with a
        warning that gives their line number, and so are records no client could resume
        from: a timestamp outside 0 to :data:`~wsgi_longpoll.protocol.MAX_TIMESTAMP`
        (2**53 - 1 ms, JavaScript's safe integers), an id that is not a UUID in
        its canonical lower-case form. Lines may be of any length. Call it before the
        first :meth:`append`: what is still buffered is not in the file.
        """
        events: list[Event] = []
        skipped = 0
        with open(self._path, "rb") as stream:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    events.append(_checked(Event.from_dict(json.loads(line.decode("utf-8")))))
                except (ValueError, RecursionError) as error:  # JSON and UTF-8 errors too
                    skipped += 1
                    if skipped <= _LOGGED_BAD_LINES:
                        logger.warning(
                            "%s, line %d: skipped, not an event (%s)", self.file_name, number, error
                        )
        if skipped > _LOGGED_BAD_LINES:
            logger.warning(
                "%s: %d more bad lines skipped", self.file_name, skipped - _LOGGED_BAD_LINES
            )
        logger.info("%s: loaded %d events, skipped %d lines", self.file_name, len(events), skipped)
        return events

    def append(self, event: Event) -> None:
        """Queue *event* for writing and return at once; the writer thread writes it.

        It queues *event* even while writing fails: call :meth:`check` first, as the
        memory engine does, to refuse events then.

        :raises RuntimeError: once the persister is closed.
        """
        data = event.to_json()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            if not self._pending_bytes:
                self._pending_since = monotonic()
            self._pending.append(data)
            self._pending_bytes += len(data) + 1
            if self.acknowledge_after_write:
                ack = self._acks[event.id] = _Ack(event.id)
                self._pending.append(ack)
            wake = not self._wake_sent and (
                self.acknowledge_after_write
                or not self._writer_has_deadline
                or self._pending_bytes >= self.write_buffer_size
            )
            if wake:
                self._wake_sent = True
        self._appended_bytes += len(data) + 1
        if wake:
            self._wakeups.put(None)

    def wait_written(self, event: Event) -> None:
        """Return once *event*, given to :meth:`append`, is written (and synced, with
        *fsync*); at once without *acknowledge_after_write*.

        Call it without holding a lock others need: it waits. A greenlet waits on its
        hub (which goes on serving); any other caller blocks its OS thread.

        :raises PersistenceFailed: if the write failed. The event stays queued and is
            retried, but it is not on disk.
        """
        waiter = None
        with self._lock:
            ack = self._acks.pop(event.id, None)
            if ack is not None and not ack.done:
                hub = get_hub_if_exists()
                if (
                    hub is not None
                    and hub.thread_ident == _get_thread_ident()
                    and getcurrent() is not hub
                ):
                    waiter = Waiter(hub)
                    ack.watcher = hub.loop.async_()
                    ack.watcher.start(waiter.switch, None)
        if ack is None:
            return
        if waiter is not None:
            try:
                while not ack.done:
                    waiter.get()
            finally:
                with self._lock:  # the writer sends it with the lock held
                    ack.watcher.close()
                    ack.watcher = None
        else:
            ack.lock.acquire()
        if ack.error is not None:
            raise NotWritten(
                f"{self.file_name}: the event was delivered to live subscribers but could "
                f"not be written ({ack.error.strerror or ack.error}); it is kept and retried"
            )

    @property
    def discarded_acknowledged_events(self) -> int:
        """Of :attr:`discarded_events`, those whose publish was acknowledged: all of them,
        unless *acknowledge_after_write* (then a publish whose event is unwritten failed)."""
        return 0 if self.acknowledge_after_write else self.discarded_events

    @property
    def healthy(self) -> bool:
        """Whether events are accepted: no write has failed since the last that worked,
        and the writer thread runs."""
        return self._write_error is None and self._finished.locked()

    @property
    def write_error(self) -> OSError | None:
        """Why the last write failed, while it is not retried successfully; else ``None``."""
        return self._write_error

    def _failure_message(self) -> str:
        if not self._finished.locked():
            return f"{self.file_name}: the writer thread has ended; events cannot be stored"
        error = self._write_error
        reason = (error.strerror or str(error)) if error is not None else "unknown"
        return f"{self.file_name}: cannot write ({reason}); retried every " \
            f"{self.write_flush_period_seconds:g} s"

    @property
    def wants_compaction(self) -> bool:
        """Whether the file has grown by ``max(compact_bytes, size after the last rewrite)``."""
        return self._appended_bytes >= max(self.compact_bytes, self._compacted_bytes)

    def compact(self, events: list[Event]) -> None:
        """Have the file rewritten to hold exactly *events*, oldest first; return at once.

        *events* is the caller's to give away: it must not change afterwards.

        The writer thread writes out what was appended before, then writes the new file
        and renames it over the old one; what is appended afterwards goes to the new
        file. If the rewrite fails, the old file is kept and appended to, and the
        failure is logged.
        """
        self._compacted_bytes = sum(len(event.to_json()) + 1 for event in events)
        self._appended_bytes = 0
        self._send(_Command("compact", events))

    def flush(self) -> None:
        """Block until everything appended so far is written (and synced with *fsync*).

        It blocks the calling OS thread, hub included: call it from a script or a test,
        not from a request handler. A no-op once closed.

        :raises OSError: if the write failed; what was not written is kept, and
            retried at the next flush period or call.
        """
        command = _Command("flush")
        try:
            self._send(command)
        except RuntimeError:  # closed: everything is written already
            return
        self._wait(command)
        if command.error is not None:
            error = command.error
            raise OSError(error.errno, error.strerror, self.file_name)

    def close(self) -> None:
        """Write out everything appended, sync it with *fsync*, and close the file.

        Idempotent. It blocks the calling OS thread until the writer thread has ended.
        """
        with self._lock:
            if self._closed:
                return
            self._pending.append(_Command("close"))
            self._closed = True
        self._wakeups.put(None)
        _open_persisters.discard(self)
        self._finished.acquire()  # released when the writer thread ends, whatever happens
        self._finished.release()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def check(self) -> None:
        """Raise :class:`PersistenceFailed` (a
        :class:`~wsgi_longpoll.errors.StorageUnavailable`) while writes fail, that is
        while :attr:`healthy` is false."""
        if not self.healthy and not self._closed:
            raise PersistenceFailed(self._failure_message())

    # -- the writer thread --------------------------------------------------------------

    def _send(self, command: _Command) -> None:
        """Queue *command* after everything appended so far, and wake the writer."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            self._pending.append(command)
            self._wake_sent = True
        self._wakeups.put(None)

    def _wait(self, command: _Command) -> None:
        # Wait for the command, or for the writer thread to end (it failed).
        while not command.done.acquire(timeout=0.5):
            if not self._finished.locked():
                return

    def _run(self) -> None:
        try:
            self._write_loop()
        except BaseException:
            logger.exception("%s: the writer thread failed; events are no longer written", self)
        finally:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # releases the flock
            with self._lock:
                self._finished.release()
                acks = [item for item in self._pending if isinstance(item, _Ack)]
                acks += self._waiting_acks
                self._waiting_acks = []
                for ack in acks:
                    if not ack.done:
                        ack.complete(OSError("the persister's writer thread has ended"))

    def _write_loop(self) -> None:
        buffer = bytearray()  # taken from the appenders, not yet written
        # When what is not yet flushed (written, and synced with fsync) must be.
        deadline: float | None = None
        retry_at = 0.0  # after a failed write, when to try again
        target = self.write_flush_period_seconds * (1 - _DEADLINE_HEADROOM)
        waiting = self._waiting_acks  # publishers whose events are in buffer
        while True:
            timeout = None if deadline is None else max(deadline - monotonic(), 0.0)
            with contextlib.suppress(_Empty):
                self._wakeups.get(timeout=timeout)
            with self._lock:
                batch, self._pending = self._pending, []
                had_events = self._pending_bytes > 0
                since = self._pending_since
                self._pending_bytes = 0
                self._wake_sent = False
            if had_events and deadline is None:
                deadline = since + target
            for item in batch:
                if type(item) is bytes:
                    buffer += b"\n"
                    buffer += item
                    continue
                if type(item) is _Ack:
                    waiting.append(item)
                    continue
                assert isinstance(item, _Command)
                item.error = self._write(buffer, sync=self.fsync)
                if item.error is None:
                    deadline = None
                compacted = False
                if item.kind == "compact":
                    assert item.events is not None
                    compacted = self._compact(item.events)
                    if compacted:
                        # The new file holds every event the buffers keep, including any
                        # that a failed write left behind: the rest was evicted.
                        buffer.clear()
                        deadline = None
                        self._write_error = None
                    item.events = None
                self._settle(waiting, None if compacted else item.error)
                item.done.release()
                if item.kind == "close":
                    if buffer:
                        self._discard(buffer)
                    return
            now = monotonic()
            if waiting:  # acknowledge after write: write (and sync) now, all in one
                error = self._write(buffer, sync=self.fsync)
                self._settle(waiting, error)
                deadline = None if error is None else now + self.write_flush_period_seconds
            if len(buffer) >= self.write_buffer_size and now >= retry_at:
                if self._write(buffer, sync=False) is None:
                    if not self.fsync:
                        deadline = None
                else:
                    retry_at = now + self.write_flush_period_seconds
            if deadline is not None and now >= deadline:
                if self._write(buffer, sync=self.fsync) is None:
                    deadline = None
                else:
                    deadline = now + self.write_flush_period_seconds
            with self._lock:
                if deadline is None and self._pending_bytes:
                    deadline = self._pending_since + target  # came while this batch was written
                self._writer_has_deadline = deadline is not None

    def _settle(self, waiting: list[_Ack], error: OSError | None) -> None:
        """Tell the publishers *waiting* whether their events are written; empty it."""
        if not waiting:
            return
        with self._lock:
            for ack in waiting:
                if error is None:
                    self._acks.pop(ack.event_id, None)
                ack.complete(error)
        waiting.clear()

    def _discard(self, buffer: bytearray) -> None:
        """Count and log what *buffer* still holds when the persister closes."""
        # Each record starts with a newline; a record partly written has lost its own.
        events = buffer.count(b"\n") + (buffer[:1] != b"\n")
        self.discarded_events = events
        self.discarded_bytes = len(buffer)
        logger.error(
            "%s: closed with %d events (%d bytes) that could not be written: they are lost",
            self, events, len(buffer),
        )

    def _write(self, buffer: bytearray, *, sync: bool) -> OSError | None:
        """Write *buffer* out (and sync the file); log and return the error on failure.

        A failure makes the persister unhealthy (:attr:`healthy`) until a write works.
        """
        try:
            _write_out(self._fd, buffer)
            if sync:
                os.fsync(self._fd)
        except OSError as error:
            self.write_failures += 1
            first = self._write_error is None
            self._write_error = error
            if first:
                logger.error(
                    "%s: cannot write %d bytes (%s); they are kept and retried every %g s, "
                    "and events are refused until a retry works",
                    self, len(buffer), error, self.write_flush_period_seconds,
                )
            else:
                logger.debug("%s: retry failed: %s", self, error)
            return error
        if self._write_error is not None:
            logger.warning("%s: writing works again; events are accepted", self)
            self._write_error = None
        return None

    def _compact(self, events: list[Event]) -> bool:
        """Replace the file by one holding *events*; log and return ``False`` on failure."""
        temporary = self._path + ".compacting"  # next to the file, on its disk
        try:
            fd = os.open(
                temporary,
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0),
                0o666,
            )
        except OSError:
            logger.exception("%s: cannot compact; the file keeps growing", self)
            return False
        try:
            with contextlib.suppress(OSError):  # keep the old file's permissions
                os.chmod(temporary, os.fstat(self._fd).st_mode & 0o7777)
            chunk = bytearray()
            for event in events:
                chunk += b"\n"
                chunk += event.to_json()
                if len(chunk) >= _COMPACTION_CHUNK:
                    _write_out(fd, chunk)
            _write_out(fd, chunk)
            os.fsync(fd)
            _lock(fd)  # before it is in place: the file is never unlocked
            os.replace(temporary, self._path)
        except BaseException as error:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            if not isinstance(error, OSError):
                raise
            logger.exception("%s: compaction failed; the old file is kept", self)
            return False
        old_fd, self._fd = self._fd, fd
        os.close(old_fd)
        _fsync_directory(os.path.dirname(self._path))
        logger.info("%s: compacted to %d events", self.file_name, len(events))
        return True


def _checked(event: Event) -> Event:
    """*event* if a client can resume from it; else :class:`ValueError` saying why."""
    if not 0 <= event.timestamp <= MAX_TIMESTAMP:
        raise ValueError(
            f"timestamp {event.timestamp} is outside 0 to {MAX_TIMESTAMP} (2**53 - 1)"
        )
    if canonical_uuid(event.id) != event.id:
        raise ValueError(f"id {event.id[:64]!r} is not a canonical lower-case UUID")
    return event


def _open_locked(path: str, name: str) -> int:
    """Open the event file *path* for appending and ``flock`` it; return its descriptor.

    The lock is on the file itself (its device and inode), whatever name it was reached
    by (*name*, for messages). A file replaced by a compaction between the open and the
    lock is let go, and the file now in place is locked instead.

    :raises PersistFileLocked: if another open file description holds the lock.
    :raises OSError: if the file cannot be created or opened for appending.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    attempts = 0
    while True:
        attempts += 1
        fd = os.open(path, flags, 0o666)
        try:
            try:
                _lock(fd)
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = _lock_holder(fd)
                # A holder that is gone by now may have replaced the file: look again.
                if _in_place(fd, path) and (holder is not None or attempts >= 3):
                    raise PersistFileLocked(
                        error.errno,
                        f"{name} is in use by {holder or 'another process'} (it holds a "
                        "lock on the file); two servers must not share a persist file",
                        name,
                    ) from None
            else:
                if _in_place(fd, path):
                    return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # replaced by a compaction meanwhile: try the file now in place


def _in_place(fd: int, path: str) -> bool:
    """Whether *fd*'s file is the one at *path* (not one a rename replaced)."""
    status = os.fstat(fd)
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    return (current.st_dev, current.st_ino) == (status.st_dev, status.st_ino)


def _lock(fd: int) -> None:
    """``flock`` *fd*'s file, exclusively, without waiting (where the platform can)."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _lock_holder(fd: int) -> str | None:
    """Who holds the ``flock`` on *fd*'s file, ``"process <pid>"``, where ``/proc/locks``
    tells (Linux); else ``None``."""
    with contextlib.suppress(OSError, ValueError):
        status = os.fstat(fd)
        device = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}"
        wanted = f"{device}:{status.st_ino}"
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2146791 0 EOF"; waiters have "->"
                fields = line.split()
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
                    return f"process {fields[4]}"
    return None


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be more than 0, not {value}")


@atexit.register
def _close_at_exit() -> None:
    # The writer is a daemon thread: write out what it still holds before the end.
    for persister in list(_open_persisters):
        persister.close()
