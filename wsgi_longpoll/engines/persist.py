"""File persistence: events appended to a file and read back when the manager starts.

The file holds one event a line, in the protocol's JSON form, each written as
``b"\\n" + json`` like golongpoll does, so that a record torn by a crash never glues onto
the next one. Files written by golongpoll and by this module read the same.

Writing happens in a real OS thread (even in a process monkey-patched by gevent):
:meth:`FilePersister.append` only hands the bytes over, so a slow disk never stalls the
gevent hub that answers subscribers. The same thread rewrites the file when it has grown
too much (see :class:`FilePersister` for the rule), in order with the appends.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import weakref
from time import monotonic
from typing import Any

from gevent.monkey import get_original

from ..errors import StorageUnavailable
from ..event import Event

__all__ = ["FilePersister"]

logger = logging.getLogger(__name__)

# Real OS primitives even when the process is monkey-patched: the writer must be a
# thread of its own, not a greenlet of the hub it is there to keep free.
_start_new_thread = get_original("_thread", "start_new_thread")
_allocate_lock = get_original("_thread", "allocate_lock")
_SimpleQueue = get_original("queue", "SimpleQueue")
_Empty = get_original("queue", "Empty")

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

    :param file_name: the file to append to and read back from.
    :param write_buffer_size: bytes buffered before a write; more than 0.
    :param write_flush_period_seconds: the longest an appended event may wait before it
        is written; more than 0.
    :param fsync: sync the file to the disk at each periodic write and at close;
        otherwise the operating system decides when written data reaches the disk.
    :param compact_bytes: the least growth, in bytes, that triggers a rewrite while
        running; more than 0.
    :raises ValueError: if an option is out of range (the message names it).
    :raises TypeError: if an option has the wrong type.
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
        self._fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666
        )
        try:
            # What the manager's compaction rule counts: bytes since the last rewrite.
            self._appended_bytes = os.fstat(self._fd).st_size
        except OSError:
            os.close(self._fd)
            raise
        self._compacted_bytes = 0
        # Handed from append to the writer under _lock: encoded events and commands, in
        # order. The writer wakes on _wakeups only when it must: the first event when it
        # has no deadline set, a full buffer, a command.
        self._lock = _allocate_lock()
        self._pending: list[bytes | _Command] = []
        self._pending_bytes = 0
        self._pending_since = 0.0  # when the first of the pending events came
        self._wake_sent = False
        self._writer_has_deadline = False
        self._wakeups: Any = _SimpleQueue()
        self._closed = False
        #: The error of the last write, while writes fail.
        self._write_error: OSError | None = None
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
        warning that gives their line number. Lines may be of any length. Call it
        before the first :meth:`append`: what is still buffered is not in the file.
        """
        events: list[Event] = []
        skipped = 0
        with open(self.file_name, "rb") as stream:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    events.append(Event.from_dict(json.loads(line.decode("utf-8"))))
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
            wake = not self._wake_sent and (
                not self._writer_has_deadline or self._pending_bytes >= self.write_buffer_size
            )
            if wake:
                self._wake_sent = True
        self._appended_bytes += len(data) + 1
        if wake:
            self._wakeups.put(None)

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
        """Raise :class:`~wsgi_longpoll.errors.StorageUnavailable` while writes fail."""
        error = self._write_error
        if error is not None:
            raise StorageUnavailable(f"{self}: cannot write: {error}")

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
                os.close(self._fd)
            self._finished.release()

    def _write_loop(self) -> None:
        buffer = bytearray()  # taken from the appenders, not yet written
        # When what is not yet flushed (written, and synced with fsync) must be.
        deadline: float | None = None
        retry_at = 0.0  # after a failed write, when to try again
        target = self.write_flush_period_seconds * (1 - _DEADLINE_HEADROOM)
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
                assert isinstance(item, _Command)
                item.error = self._write(buffer, sync=self.fsync)
                if item.error is None:
                    deadline = None
                if item.kind == "compact":
                    assert item.events is not None
                    if self._compact(item.events):
                        # The new file holds every event the buffers keep, including any
                        # that a failed write left behind: the rest was evicted.
                        buffer.clear()
                        deadline = None
                    item.events = None
                item.done.release()
                if item.kind == "close":
                    if buffer:
                        logger.error(
                            "%s: closed with %d bytes that could not be written",
                            self, len(buffer),
                        )
                    return
            now = monotonic()
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

    def _write(self, buffer: bytearray, *, sync: bool) -> OSError | None:
        """Write *buffer* out (and sync the file); log and return the error on failure."""
        try:
            _write_out(self._fd, buffer)
            if sync:
                os.fsync(self._fd)
        except OSError as error:
            logger.exception(
                "%s: cannot write %d bytes; they are kept and retried", self, len(buffer)
            )
            self._write_error = error
            return error
        self._write_error = None
        return None

    def _compact(self, events: list[Event]) -> bool:
        """Replace the file by one holding *events*; log and return ``False`` on failure."""
        temporary = self.file_name + ".compacting"
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
            os.replace(temporary, self.file_name)
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
        _fsync_directory(os.path.dirname(self.file_name))
        logger.info("%s: compacted to %d events", self.file_name, len(events))
        return True


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
