"""The event: the one data type that both the server and the client side use."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "Gap", "encode_json", "new_event_id"]


# Made once: json.dumps with options builds a new encoder on every call.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_COMPACT_ASCII = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
#: What ``_COMPACT`` does with a string.
_encode_string = json.encoder.encode_basestring


def encode_json(value: Any) -> bytes:
    """Encode *value* as compact JSON in UTF-8.

    Non-ASCII text stays as UTF-8; a string that cannot be UTF-8 (a lone surrogate
    that came in as a ``\\ud800`` escape) is written as an escape instead, so that
    every accepted value can be written back unchanged.

    :raises ValueError: for NaN and infinities, which JSON cannot hold.
    """
    try:
        if type(value) is str:  # the common case, without the encoder's dispatch
            return _encode_string(value).encode("utf-8")
        return _COMPACT.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        return _COMPACT_ASCII.encode(value).encode("ascii")


#: How many ids' worth of random bytes :func:`new_event_id` reads at once.
_IDS_PER_READ = 64
#: The hex digit of a UUID's variant nibble (``10xx``) from any random hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
#: Random ids not handed out yet: 32 hex digits each. Taking one is one ``next`` (atomic
#: under the GIL), so two threads never get the same.
_random_hex: Iterator[str] = iter(())


def _forget_random_hex() -> None:
    global _random_hex
    _random_hex = iter(())


# A forked child must not hand out the ids its parent (or a sibling) will.
os.register_at_fork(after_in_child=_forget_random_hex)


def new_event_id() -> str:
    """A random (version 4) UUID in canonical lower-case form, as :func:`uuid.uuid4`
    makes it (from :func:`os.urandom`), without building a :class:`uuid.UUID` on the way;
    the random bytes of 64 ids are read at once."""
    global _random_hex
    text = next(_random_hex, None)
    if text is None:
        digits = os.urandom(16 * _IDS_PER_READ).hex()
        _random_hex = iter([digits[start:start + 32] for start in range(32, len(digits), 32)])
        text = digits[:32]
    # Version 4 and the RFC 4122 variant in place of two of the random digits.
    return (f"{text[:8]}-{text[8:12]}-4{text[13:16]}-{_VARIANT[text[16]]}{text[17:20]}-"
            f"{text[20:]}")


_UNSET: Any = object()
#: Sets an attribute of an (immutable) event while it is being made.
_set = object.__setattr__


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
        _set(self, "timestamp", timestamp)
        _set(self, "category", category)
        _set(self, "id", id)
        _set(self, "_data", data)
        _set(self, "_json", None)

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
            encoded = _encode(self.timestamp, self.category, self.id, self._data)
            _set(self, "_json", encoded)
        return encoded

    def compact(self) -> Event:
        """This event holding only its JSON form (``data`` is decoded when asked for)."""
        if self._data is _UNSET:
            return self
        return Event._holding(self.timestamp, self.category, self.id, self.to_json())

    @classmethod
    def encoded(cls, timestamp: int, category: str, id: str, data: Any) -> Event:
        """``Event(timestamp, category, id, data).compact()``, in one step.

        :raises ValueError: for a value JSON cannot hold (NaN, infinities).
        :raises TypeError: if *data* cannot be encoded as JSON.
        """
        return cls._holding(timestamp, category, id, _encode(timestamp, category, id, data))

    @classmethod
    def _holding(cls, timestamp: int, category: str, id: str, encoded: bytes) -> Event:
        """The event holding only *encoded*, its JSON form (:meth:`to_json`)."""
        event = cls.__new__(cls)
        _set(event, "timestamp", timestamp)
        _set(event, "category", category)
        _set(event, "id", id)
        _set(event, "_data", _UNSET)
        _set(event, "_json", encoded)
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


def _encode(timestamp: int, category: str, id: str, data: Any) -> bytes:
    """An event's compact JSON form, in the protocol's key order."""
    return b'{"timestamp":%d,"category":%s,"data":%s,"id":"%s"}' % (
        timestamp, encode_json(category), encode_json(data), id.encode("ascii"))


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
