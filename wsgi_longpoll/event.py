"""The event: the one data type that both the server and the client side use."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "Gap", "encode_json"]


def encode_json(value: Any) -> bytes:
    """Encode *value* as compact JSON in UTF-8.

    Non-ASCII text stays as UTF-8; a string that cannot be UTF-8 (a lone surrogate
    that came in as a ``\\ud800`` escape) is written as an escape instead, so that
    every accepted value can be written back unchanged.

    :raises ValueError: for NaN and infinities, which JSON cannot hold.
    """
    try:
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("ascii")


@dataclass(frozen=True, slots=True)
class Event:
    """One published event, as the protocol carries it.

    :param timestamp: when it was published, in milliseconds since the epoch.
    :param category: the category it was published to.
    :param id: a UUID in canonical lower-case form, unique to this event.
    :param data: the JSON value that was published (never ``None``).
    """

    timestamp: int
    category: str
    id: str
    data: Any
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def to_json(self) -> bytes:
        """The event's compact JSON form, in the protocol's key order; computed once."""
        encoded = self._json
        if encoded is None:
            encoded = b'{"timestamp":%d,"category":%s,"data":%s,"id":"%s"}' % (
                self.timestamp,
                encode_json(self.category),
                encode_json(self.data),
                self.id.encode("ascii"),
            )
            object.__setattr__(self, "_json", encoded)
        return encoded

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
