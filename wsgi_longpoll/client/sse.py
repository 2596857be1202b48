"""Server-Sent Events, the client side: split a stream into messages.

Pure code, no I/O, and nothing of the server side (the server's half of the wire format is
:mod:`wsgi_longpoll.sse`). The follower's ``stream=True`` mode reads its streams with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["EVENT_STREAM", "SSEMessage", "SSEParser", "parse_stream_id"]

#: The media type of a stream.
EVENT_STREAM = "text/event-stream"


def parse_stream_id(value: str) -> tuple[int, str] | None:
    """The cursor ``(since_time, last_id)`` in an ``id`` field of this package's server:
    ``<timestamp>:<event id>``, or ``<timestamp>:`` (``last_id`` ``""``) for where a
    stream started; ``None`` for anything else."""
    timestamp, separator, last_id = value.partition(":")
    if not separator or not timestamp.isascii() or not timestamp.lstrip("-").isdigit():
        return None
    return int(timestamp), last_id


@dataclass(frozen=True, slots=True)
class SSEMessage:
    """One dispatched message of a stream.

    :param event: the ``event`` field, ``"message"`` when there was none.
    :param data: the ``data`` fields, joined with newlines.
    :param id: the ``id`` field of this message, or ``None`` when it had none.
    """

    event: str
    data: str
    id: str | None


class SSEParser:
    """Splits a stream's lines into messages, as the HTML standard's EventSource does.

    Feed it decoded lines without their line ends; it returns a message at each blank line
    that ends one with data. Comments are skipped. :attr:`retry` holds the last ``retry``
    field (milliseconds), :attr:`last_event_id` the last ``id``.
    """

    def __init__(self) -> None:
        self.retry: int | None = None
        self.last_event_id: str | None = None
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> SSEMessage | None:
        """Take one line; return the message it completes, if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id = value
                self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def feed_lines(self, lines: Iterator[str]) -> Iterator[SSEMessage]:
        """Every message that *lines* complete, as they complete."""
        for line in lines:
            message = self.feed(line)
            if message is not None:
                yield message

    def _dispatch(self) -> SSEMessage | None:
        event, data, message_id = self._event or "message", self._data, self._id
        self._event, self._data, self._id = "", [], None
        if not data:
            return None
        return SSEMessage(event, "\n".join(data), message_id)
