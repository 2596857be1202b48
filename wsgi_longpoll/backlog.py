"""What streams hold for readers that are behind: shared frames, counted once, capped.

A stream that its reader does not keep up with keeps what is owed to it, in order: a
backlog of :class:`Frame` objects. Streams at the same position are handed the same frame
(one encoding of a run of events), so that a frame is held once however many backlogs
refer to it: :class:`StreamBacklog` counts each frame's bytes while any backlog holds it,
and past :attr:`StreamBacklog.max_bytes` ends the streams furthest behind first, until the
frames still held fit. Each stream also has a bound of its own (the server's
``ParkedStream.max_pending``).

No I/O here: a :class:`Backlogged` stream writes its frames; this module counts them.
"""

from __future__ import annotations

import logging
from typing import Protocol

from gevent.monkey import get_original

__all__ = ["Backlogged", "Frame", "StreamBacklog"]

logger = logging.getLogger(__name__)

# A real OS lock even when the process is monkey-patched: streams of one manager may be
# written from the hubs of several threads; never held across a greenlet switch.
_allocate_lock = get_original("_thread", "allocate_lock")


class Frame:
    """One encoded write, shared by every stream it is owed to.

    :param data: the bytes to write.
    """

    __slots__ = ("data", "holders")

    def __init__(self, data: bytes) -> None:
        self.data = data
        #: How many backlogs hold it (see :class:`StreamBacklog`).
        self.holders = 0


class Backlogged(Protocol):
    """A stream with a backlog: what :class:`StreamBacklog` asks of it."""

    @property
    def behind(self) -> int:
        """The bytes of its backlog not yet written."""

    def cut(self) -> None:
        """End the stream now, releasing its backlog (:meth:`StreamBacklog.release`)."""


class StreamBacklog:
    """The frames held by the backlogs of every stream of a manager, and their cap.

    A stream :meth:`hold`\\ s each frame it queues and :meth:`release`\\ s it once written
    (or when the stream ends); :meth:`enforce` ends the streams furthest behind while the
    frames held exceed :attr:`max_bytes`.
    """

    #: The most bytes of frames every stream backlog may hold together; beyond it the
    #: streams furthest behind are ended first (their readers reconnect with their
    #: ``Last-Event-ID`` and resume from the buffer).
    max_bytes = 64 * 1024 * 1024

    def __init__(self) -> None:
        self._lock = _allocate_lock()
        self._bytes = 0
        #: The streams whose backlog is not empty.
        self._behind: dict[Backlogged, None] = {}

    @property
    def bytes(self) -> int:
        """The bytes of the frames held by some backlog, each frame counted once."""
        return self._bytes

    @property
    def streams_behind(self) -> int:
        """How many streams have a backlog."""
        return len(self._behind)

    def hold(self, stream: Backlogged, frame: Frame) -> None:
        """*stream* queued *frame*."""
        with self._lock:
            frame.holders += 1
            if frame.holders == 1:
                self._bytes += len(frame.data)
            self._behind[stream] = None

    def release(self, stream: Backlogged, frames: list[Frame], empty: bool) -> None:
        """*stream* wrote (or dropped) *frames*; *empty*: its backlog is empty now."""
        with self._lock:
            for frame in frames:
                frame.holders -= 1
                if not frame.holders:
                    self._bytes -= len(frame.data)
            if empty:
                self._behind.pop(stream, None)

    def enforce(self) -> None:
        """Past :attr:`max_bytes`, end the streams furthest behind until what is held
        fits. Call it without holding a stream's lock."""
        if self._bytes <= self.max_bytes:
            return
        with self._lock:
            streams = sorted(self._behind, key=_behind, reverse=True)
        for stream in streams:
            if self._bytes <= self.max_bytes:
                break
            logger.warning(
                "ending an event stream %d bytes behind: stream backlogs hold %d bytes "
                "(more than %d)", stream.behind, self._bytes, self.max_bytes,
            )
            stream.cut()


def _behind(stream: Backlogged) -> int:
    return stream.behind
