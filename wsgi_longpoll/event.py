"""The event: the one data type that both the server and the client side use."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "Gap", "encode_json", "new_event_id"]


# Made once: json.dumps with options builds a new encoder on every call.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_COMPACT_ASCII = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_json(value: Any) -> bytes:
    """Encode *value* as compact JSON in UTF-8.

    Non-ASCII text stays as UTF-8; a string that cannot be UTF-8 (a lone surrogate
    that came in as a ``\\ud800`` escape) is written as an escape instead, so that
    every accepted value can be written back unchanged.

    :raises ValueError: for NaN and infinities, which JSON cannot hold.
    """
    try:
        return _COMPACT.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        return _COMPACT_ASCII.encode(value).encode("ascii")


def new_event_id() -> str:
    """A random (version 4) UUID in canonical lower-case form, as :func:`uuid.uuid4`
    makes it, without building a :class:`uuid.UUID` on the way."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_UNSET: Any = object()


class Event:
    """One published event, as the protocol carries it. Immutable.

    :param timestamp: when it was published, in milliseconds since the epoch.
    :param category: the category it was published to.
    :param id: a UUID in canonical lower-case form, unique to this event.
    :param data: the JSON value that was published (never ``None``).

    An event keeps its JSON form once made (:meth:`to_json`); :meth:`compact` gives the
    same event holding that form alone, which is what the in-memory engine buffers, so
    that a large value is held once, not decoded and encoded side by side. Its ``data``
    is then decoded from the JSON on each access.
    """

    __slots__ = ("timestamp", "category", "id", "_data", "_json")

    timestamp: int
    category: str
    id: str
    _data: Any
    _json: bytes | None

    def __init__(self, timestamp: int, category: str, id: str, data: Any) -> None:
        object.__setattr__(self, "timestamp", timestamp)
        object.__setattr__(self, "category", category)
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_json", None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"an Event is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"an Event is immutable: cannot delete {name!r}")

    @property
    def data(self) -> Any:
        """The JSON value that was published."""
        data = self._data
        if data is _UNSET:
            assert self._json is not None
            return json.loads(self._json)["data"]
        return data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self.timestamp, self.category, self.id, self.data) == (
            other.timestamp, other.category, other.id, other.data
        )

    def __hash__(self) -> int:
        return hash((self.timestamp, self.category, self.id))

    def __repr__(self) -> str:
        return (
            f"Event(timestamp={self.timestamp!r}, category={self.category!r}, "
            f"id={self.id!r}, data={self.data!r})"
        )

    def to_json(self) -> bytes:
        """The event's compact JSON form, in the protocol's key order; computed once."""
        encoded = self._json
        if encoded is None:
            encoded = b'{"timestamp":%d,"category":%s,"data":%s,"id":"%s"}' % (
                self.timestamp,
                encode_json(self.category),
                encode_json(self._data),
                self.id.encode("ascii"),
            )
            object.__setattr__(self, "_json", encoded)
        return encoded

    def compact(self) -> Event:
        """This event holding only its JSON form (``data`` is decoded when asked for)."""
        if self._data is _UNSET:
            return self
        event = Event(self.timestamp, self.category, self.id, _UNSET)
        object.__setattr__(event, "_json", self.to_json())
        return event

    @classmethod
    def from_dict(cls, record: Any) -> Event:
        """Build an event from its decoded JSON form.

        :raises ValueError: if *record* is not an object with an integer ``timestamp``,
            string ``category`` and ``id``, and a non-null ``data``.
        """
        if not isinstance(record, dict):
            raise ValueError("an event must be a JSON object")
        timestamp = record.get("timestamp")
        category = record.get("category")
        event_id = record.get("id")
        data = record.get("data")
        if not isinstance(timestamp, int) or isinstance(timestamp, bool):
            raise ValueError("an event's 'timestamp' must be an integer")
        if not isinstance(category, str) or not category:
            raise ValueError("an event's 'category' must be a non-empty string")
        if not isinstance(event_id, str) or not event_id:
            raise ValueError("an event's 'id' must be a non-empty string")
        if data is None:
            raise ValueError("an event's 'data' must not be null")
        return cls(timestamp, category, event_id, data)


@dataclass(frozen=True, slots=True)
class Gap:
    """Events of *category* that a subscriber had not seen were dropped (buffer size, age).

    ``(since_time, last_id)`` is the oldest cursor the server can still resume without
    loss: the newest event it dropped. The answer that carries the gap already starts
    from the oldest event still buffered.
    """

    category: str
    since_time: int
    last_id: str

    def to_json(self) -> bytes:
        """The gap's compact JSON form."""
        return b'{"category":%s,"since_time":%d,"last_id":"%s"}' % (
            encode_json(self.category),
            self.since_time,
            self.last_id.encode("ascii"),
        )

    @classmethod
    def from_dict(cls, record: Any) -> Gap:
        """Build a gap from its decoded JSON form.

        :raises ValueError: if *record* is not a gap object.
        """
        if not isinstance(record, dict):
            raise ValueError("a gap must be a JSON object")
        category = record.get("category")
        since_time = record.get("since_time")
        last_id = record.get("last_id")
        if not isinstance(category, str) or not category:
            raise ValueError("a gap's 'category' must be a non-empty string")
        if not isinstance(since_time, int) or isinstance(since_time, bool):
            raise ValueError("a gap's 'since_time' must be an integer")
        if not isinstance(last_id, str) or not last_id:
            raise ValueError("a gap's 'last_id' must be a non-empty string")
        return cls(category, since_time, last_id)
