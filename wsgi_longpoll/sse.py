"""Server-Sent Events on the long-poll cursor: the server side of the wire format.

Pure functions, no I/O (the client side's parser is :mod:`wsgi_longpoll.client.sse`). A
stream answers a ``GET`` on the subscription path whose ``Accept`` names
``text/event-stream`` (see ``docs/protocol.md``, "Server-Sent Events on the same cursor").
Each event is sent as::

    id: <timestamp>:<event id>
    data: <the event's JSON object, as in a long poll's "events" array>

and a gap (events the buffer dropped before the client saw them) as::

    event: gap
    data: <the gap's JSON object>

The ``id`` is the cursor a browser sends back as ``Last-Event-ID`` when it reconnects.
A stream opens with ``retry: <ms>`` and ``id: <timestamp>:<event id or nothing>``, the
cursor it starts from, so that a client that got no event before the stream ended
resumes from there, not from a later "now".
"""

from __future__ import annotations

from collections.abc import Sequence

from .event import Event, Gap
from .protocol import ProtocolError, _parse_go_int, canonical_uuid

__all__ = [
    "EVENT_STREAM",
    "KEEP_ALIVE",
    "LAST_EVENT_ID_ERROR",
    "accepts_event_stream",
    "batch_body",
    "event_id",
    "parse_last_event_id",
    "retry_field",
    "stream_start",
]

#: The media type of a stream.
EVENT_STREAM = "text/event-stream"
#: The comment sent when a stream has been idle for the keep-alive interval.
KEEP_ALIVE = b": keep-alive\n\n"
LAST_EVENT_ID_ERROR = (
    "Invalid 'Last-Event-ID' header: must be '<timestamp>:<event id>' or '<timestamp>:' "
    "as sent in an 'id:' field."
)


def accepts_event_stream(accept: str) -> bool:
    """Whether an ``Accept`` header value names ``text/event-stream`` (what
    ``EventSource`` sends); parameters and case are ignored, wildcards do not count."""
    return any(
        media_range.split(";", 1)[0].strip().lower() == EVENT_STREAM
        for media_range in accept.split(",")
    )


def event_id(event: Event) -> str:
    """The ``id`` field of *event*: ``<timestamp>:<event id>``."""
    return f"{event.timestamp}:{event.id}"


def parse_last_event_id(value: str) -> tuple[int, str | None]:
    """The cursor ``(since_time, last_id)`` in a ``Last-Event-ID`` header.

    :raises ProtocolError: unless *value* is ``<timestamp>:<UUID>``, as :func:`event_id`
        writes it, or ``<timestamp>:`` (the events after that millisecond), as
        :func:`stream_start` writes it.
    """
    timestamp, separator, raw_id = value.strip().partition(":")
    since_time = _parse_go_int(timestamp)
    last_id = canonical_uuid(raw_id) if raw_id else None
    if not separator or since_time is None or (raw_id and last_id is None):
        raise ProtocolError(LAST_EVENT_ID_ERROR)
    return since_time, last_id


def retry_field(milliseconds: int) -> bytes:
    """The ``retry:`` field: how long a browser waits before it reconnects."""
    return b"retry: %d\n\n" % milliseconds


def stream_start(milliseconds: int, since_time: int, last_id: str | None) -> bytes:
    """What opens a stream: the ``retry`` field and the cursor it starts from as ``id``
    (a message without data: it sets the client's last event id, and dispatches nothing)."""
    return b"retry: %d\nid: %d:%s\n\n" % (
        milliseconds, since_time, (last_id or "").encode("ascii")
    )


def batch_body(events: Sequence[Event], gaps: Sequence[Gap] = ()) -> bytes:
    """One write: the gaps first (as a subscribe answer carries them), then the events,
    oldest first."""
    parts = [b"event: gap\ndata: %s\n\n" % gap.to_json() for gap in gaps]
    parts.extend(
        b"id: %d:%s\ndata: %s\n\n" % (event.timestamp, event.id.encode("ascii"), event.to_json())
        for event in events
    )
    return b"".join(parts)
