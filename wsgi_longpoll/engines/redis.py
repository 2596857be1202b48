"""The Redis engine: events in Redis Streams, shared by every process and host.

Each category is one stream, ``<prefix>s:<category>``. A Lua script publishes: it takes
``ms = max(Redis TIME, the last ms given out)`` and ``seq = INCR`` of one counter shared by
every category, and adds the event as entry ``<ms>-<seq>``. Entry ids therefore increase
in one order across all streams, and that order is the publish order, whichever process
published. An event's ``timestamp`` is ``ms``; its ``id`` is a version-8 UUID that
carries ``ms`` and ``seq`` (see :func:`event_id`), so that a client's cursor
``(since_time, last_id)`` names a stream position without any lookup.

Delivery to the subscribers waiting in a process goes through one reader per process
(a real thread, or a greenlet when the process is monkey-patched by gevent) that blocks
in ``XREAD`` on the streams that have local waiters and wakes them. Subscribers never
hold a Redis connection of their own.

Durability is Redis's: turn on AOF (``appendonly yes``) for acknowledged events to
survive a Redis restart, and ``min_replicas`` (Redis ``WAIT``) for them to survive a
failover to a replica. A ``redis+sentinel://`` URL (see :mod:`.redis_url`) follows the
primary that Redis Sentinel names, through failovers.

Every key of one prefix carries the same hash tag (``{<prefix>}``, see
:func:`hash_tagged`), so the keys the scripts touch together live in one slot of a Redis
Cluster: the engine runs on the cluster's primary that holds that slot. Redis 6.2+ and
Valkey are supported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import uuid
import zlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import gevent
import redis
from gevent.event import Event as GeventEvent
from gevent.monkey import get_original, is_module_patched
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from .._gevent import get_hub_if_exists
from ..errors import (
    IdempotencyConflict,
    OutcomeUnknown,
    ReplicationIncomplete,
    StorageUnavailable,
)
from ..event import Event, Gap, encode_json
from .base import (
    Engine,
    Listener,
    Position,
    ReadResult,
    WatchCounts,
    data_digest,
    merge_by_position,
)
from .options import RedisOptions
from .redis_url import SentinelURL, describe, parse_sentinel_url

__all__ = ["RedisEngine", "cut_batch", "event_id", "hash_tagged", "stream_position"]

logger = logging.getLogger(__name__)

_start_new_thread = get_original("_thread", "start_new_thread")
_allocate_lock = get_original("_thread", "allocate_lock")
_real_sleep = get_original("time", "sleep")
_ThreadEvent = get_original("threading", "Event")

T = TypeVar("T")

_SEQ_BITS = 62
_SEQ_MASK = (1 << _SEQ_BITS) - 1

_EXPIRE = """
local function expire(stream, floor, cutoff, ttl)
  local old = redis.call('XREVRANGE', stream, string.format('(%d-0', cutoff), '-', 'COUNT', 1)
  if #old > 0 then
    redis.call('SET', floor, old[1][1], 'PX', 2 * ttl)
    redis.call('XTRIM', stream, 'MINID', string.format('%d-0', cutoff))
  end
end
local t = redis.call('TIME')
local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: counter hash, category set, stream, floor, idempotency key.
# ARGV: category, data, buffer size, time to live in ms (0: none), max categories,
#       prefix of the streams, prefix of the floors, idempotency window in ms, digest of
#       the data (hex; empty for a key of our own).
# Returns the entry id, then a space and the digest of the data stored with the key.
_PUBLISH = _EXPIRE + """
local known = redis.call('GET', KEYS[5])
if known then
  -- written again (same value and expiry) so that a WAIT after this call covers the event
  redis.call('SET', KEYS[5], known, 'KEEPTTL')
  return known
end
local ttl = tonumber(ARGV[4])
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  if ttl > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('(%d', clock - 2 * ttl))
  end
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
    -- push out the category published to least recently; its floor keeps the gap signal
    local idle = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
    local stream = ARGV[6] .. idle
    local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
    if #newest > 0 then
      if ttl > 0 then
        redis.call('SET', ARGV[7] .. idle, newest[1][1], 'PX', 2 * ttl)
      else
        redis.call('SET', ARGV[7] .. idle, newest[1][1])
      end
    end
    redis.call('DEL', stream)
    redis.call('ZREM', KEYS[2], idle)
  end
end
local ms = tonumber(redis.call('HGET', KEYS[1], 'ms') or '0')
if clock > ms then ms = clock end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'ms', string.format('%d', ms))
if ttl > 0 then expire(KEYS[3], KEYS[4], clock - ttl, ttl) end
local size = tonumber(ARGV[3])
local length = redis.call('XLEN', KEYS[3])
if length >= size then
  local dropped = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', length - size + 1)
  if ttl > 0 then
    redis.call('SET', KEYS[4], dropped[#dropped][1], 'PX', 2 * ttl)
  else
    redis.call('SET', KEYS[4], dropped[#dropped][1])
  end
end
local id = string.format('%d-%d', ms, seq)
redis.call('XADD', KEYS[3], 'MAXLEN', size, id, 'd', ARGV[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[3], 2 * ttl) end
redis.call('ZADD', KEYS[2], clock, ARGV[1])
local remembered = id .. ' ' .. ARGV[9]
redis.call('SET', KEYS[5], remembered, 'PX', ARGV[8])
return remembered
"""

# KEYS: counter hash, then the streams, then their floors.
# ARGV: start id (XRANGE form), time to live in ms (0: none), how many streams.
# Returns the counter's position, then for each stream its entries and its floor.
_READ = _EXPIRE + """
local ttl = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local position = redis.call('HMGET', KEYS[1], 'ms', 'seq')
local result = {(position[1] or '0') .. '-' .. (position[2] or '0')}
for i = 1, count do
  local stream, floor = KEYS[1 + i], KEYS[1 + count + i]
  if ttl > 0 then expire(stream, floor, clock - ttl, ttl) end
  result[#result + 1] = redis.call('XRANGE', stream, ARGV[1], '+')
  result[#result + 1] = redis.call('GET', floor) or ''
end
return result
"""

# KEYS: category set.
# ARGV: prefix of the streams, prefix of the floors, time to live in ms (0: none).
_COUNTS = _EXPIRE + """
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%d', clock - 2 * ttl))
end
local events = 0
for _, category in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local stream = ARGV[1] .. category
  if ttl > 0 then expire(stream, ARGV[2] .. category, clock - ttl, ttl) end
  events = events + redis.call('XLEN', stream)
end
return {redis.call('ZCARD', KEYS[1]), events}
"""


def parse_position(entry_id: bytes | str) -> Position:
    """``b"<ms>-<seq>"`` as ``(ms, seq)``."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode("ascii")
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def event_id(position: Position, tag: int) -> str:
    """The UUID (version 8) of the event at stream *position*.

    48 bits of ms, the version, 12 bits of *tag* (from the key prefix), the variant,
    and 62 bits of seq: canonical lower-case, unique per Redis and prefix.
    """
    ms, seq = position
    value = (ms << 80) | (8 << 76) | (tag << 64) | (0b10 << 62) | (seq & _SEQ_MASK)
    return str(uuid.UUID(int=value))


def stream_position(event_id_text: str, tag: int) -> Position | None:
    """The stream position an id made by :func:`event_id` with *tag* carries, or ``None``."""
    try:
        value = uuid.UUID(event_id_text).int
    except ValueError:
        return None
    if (value >> 76) & 0xF != 8 or (value >> 64) & 0xFFF != tag or (value >> 62) & 0b11 != 0b10:
        return None
    return value >> 80, value & _SEQ_MASK


def hash_tagged(prefix: bytes) -> bytes:
    """*prefix* as the start of every key of the engine: in a hash tag (``{prefix}``), so
    that Redis Cluster keeps all of them in one slot.

    A prefix that would give an empty tag (none, or one starting with ``}``) gets the tag
    ``{\\xff}`` before it, which no UTF-8 prefix's tag can equal.
    """
    if prefix and not prefix.startswith(b"}"):
        return b"{" + prefix + b"}"
    return b"{\xff}" + prefix


def _in_hub_greenlet() -> bool:
    """Whether the caller is a greenlet run by a gevent hub (not a thread's own flow)."""
    return get_hub_if_exists() is not None and gevent.getcurrent().parent is not None


class RedisEngine(Engine):
    """Events in Redis Streams, one stream per category, shared by many processes.

    The options are :class:`~.options.RedisOptions`' (and their defaults):

    :param url: a redis-py URL, e.g. ``redis://127.0.0.1:6379/0``, or a
        ``redis+sentinel://`` URL (see :mod:`.redis_url`); its query may set
        ``socket_timeout`` and ``socket_connect_timeout`` (default: :attr:`socket_timeout`).
    :param key_prefix: put before every key, so that several applications share one Redis.
    :param max_event_buffer_size: events kept per stream (exact ``MAXLEN``).
    :param event_time_to_live_seconds: events older than this are trimmed (``MINID``)
        and never served; ``None`` keeps them.
    :param max_categories: how many categories may hold events at once, across every
        process that shares the prefix; a new one beyond pushes out the category
        published to least recently.
    :param min_replicas: :meth:`append` returns only once this many replicas of the
        primary have the event (Redis ``WAIT``, for at most :attr:`replica_timeout`), so
        that a failover to one of them cannot lose it.
    """

    #: Seconds a Redis command may take before it fails with :class:`StorageUnavailable`.
    socket_timeout = 5.0
    #: How long the reader blocks in one ``XREAD``, in ms.
    block_ms = 5000
    #: The longest pause between reconnection attempts of the reader, in seconds.
    max_backoff = 5.0
    #: Seconds :meth:`append` waits for ``min_replicas`` replicas to confirm an event.
    replica_timeout = 1.0

    def __init__(
        self,
        url: str,
        key_prefix: str = RedisOptions.key_prefix,
        max_event_buffer_size: int = RedisOptions.max_event_buffer_size,
        event_time_to_live_seconds: float | None = RedisOptions.event_time_to_live_seconds,
        max_categories: int = RedisOptions.max_categories,
        min_replicas: int = RedisOptions.min_replicas,
    ) -> None:
        #: The engine's options, checked.
        self.options = RedisOptions(
            url=url, key_prefix=key_prefix, max_event_buffer_size=max_event_buffer_size,
            event_time_to_live_seconds=event_time_to_live_seconds, max_categories=max_categories,
            min_replicas=min_replicas,
        )
        if url is None:
            raise TypeError("RedisEngine needs the URL of a Redis")
        self.url = url
        self.key_prefix = key_prefix
        self.max_event_buffer_size = max_event_buffer_size
        self.event_time_to_live_seconds = event_time_to_live_seconds or None
        self.max_categories = max_categories
        self.min_replicas = min_replicas
        self._listener: Listener | None = None
        self._ttl_ms = (
            0 if not event_time_to_live_seconds else int(event_time_to_live_seconds * 1000)
        )
        self._tag = zlib.crc32(key_prefix.encode("utf-8")) & 0xFFF
        prefix = hash_tagged(key_prefix.encode("utf-8"))
        self._counter_key = prefix + b"counter"
        self._categories_key = prefix + b"categories"
        self._stream_prefix = prefix + b"s:"
        self._floor_prefix = prefix + b"f:"
        self._idempotency_prefix = prefix + b"i:"
        self._client = self._connect(url, self.socket_timeout)
        self._publish_script = self._client.register_script(_PUBLISH)
        self._read_script = self._client.register_script(_READ)
        self._counts_script = self._client.register_script(_COUNTS)
        self._reader: _Reader | None = None

    @staticmethod
    def _connect(url: str, timeout: float) -> redis.Redis:
        # One quick retry on a fresh connection (a pooled one may be stale after a Redis
        # restart, or a failover), no backoff: an unreachable Redis is reported, not
        # waited out.
        options: dict[str, Any] = {
            "socket_timeout": timeout, "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 1), "health_check_interval": 0,
        }
        sentinel_url = parse_sentinel_url(url)
        if sentinel_url is not None:
            return _sentinel_primary(sentinel_url, options)
        return redis.Redis.from_url(url, **options)

    # -- keys and events ----------------------------------------------------------------

    def stream_key(self, category: str) -> bytes:
        return self._stream_prefix + category.encode("utf-8", "surrogateescape")

    def _floor_key(self, category: str) -> bytes:
        return self._floor_prefix + category.encode("utf-8", "surrogateescape")

    def category_of(self, stream_key: bytes) -> str:
        return stream_key[len(self._stream_prefix):].decode("utf-8", "surrogateescape")

    def event(self, category: str, entry_id: bytes, fields: dict[bytes, bytes]) -> Event:
        """Build the event stored as entry *entry_id* of *category*'s stream."""
        position = parse_position(entry_id)
        return Event(position[0], category, event_id(position, self._tag), json.loads(fields[b"d"]))

    def start_position(self, since_time: int, last_id: str | None) -> Position:
        """The position just before the first event after the cursor ``(since_time, last_id)``.

        Events after a position are those with a greater ``(ms, seq)``.
        """
        start = (since_time + 1, 0) if last_id is None else (since_time, 0)
        if last_id is not None:
            seen = stream_position(last_id, self._tag)
            if seen is not None and seen > start:
                start = seen
        return (0, 0) if start[0] < 0 else start

    # -- commands ---------------------------------------------------------------------

    def _call(self, function: Callable[..., T], *args: Any) -> T:
        """Run a Redis command, off the hub's thread when the hub's sockets would block."""
        try:
            if not is_module_patched("socket") and _in_hub_greenlet():
                hub = get_hub_if_exists()
                assert hub is not None
                return hub.threadpool.apply(function, args)  # type: ignore[no-any-return]
            return function(*args)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise StorageUnavailable(
                f"Redis at {self._safe_url()} is unavailable: {error}"
            ) from error

    def _safe_url(self) -> str:
        kwargs = self._client.connection_pool.connection_kwargs
        if "host" not in kwargs:  # a Sentinel's primary, or a Unix socket
            return describe(self.url)
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

    def append(self, category: str, data: Any, idempotency_key: str | None = None) -> Event:
        """Publish *data* to *category*; return once Redis has acknowledged the ``XADD``.

        A new category beyond ``max_categories`` pushes out the category published to
        least recently (its floor keeps the gap signal). Every append carries an
        idempotency key (a fresh one when none is given), so that the client's own retry
        of a command whose answer was lost cannot store the event twice.

        :raises TypeError: if *data* cannot be encoded as JSON.
        :raises IdempotencyConflict: if *idempotency_key* stands for other data in
            *category*; nothing was published.
        :raises StorageUnavailable: if Redis cannot be reached; nothing was published.
        :raises OutcomeUnknown: if Redis did not answer in time: the event may be stored.
        """
        encoded = encode_json(data)
        digest = ""  # none for a key of our own: it is never sent twice
        if idempotency_key is None:
            idempotency_key = uuid.uuid4().hex
        else:
            digest = data_digest(data).hex()
        key = self._idempotency_prefix + hashlib.sha256(
            category.encode("utf-8", "surrogateescape") + b"\0"
            + idempotency_key.encode("utf-8", "surrogateescape")
        ).hexdigest().encode("ascii")
        keys = [self._counter_key, self._categories_key, self.stream_key(category),
                self._floor_key(category), key]
        args = [category.encode("utf-8", "surrogateescape"), encoded,
                self.max_event_buffer_size, self._ttl_ms, self.max_categories,
                self._stream_prefix, self._floor_prefix,
                int(self.idempotency_window_seconds * 1000), digest]
        replicas = None
        try:
            if self.min_replicas:
                reply, replicas = self._call(self._publish_and_wait, keys, args)
            else:
                reply = self._call(self._publish_script, keys, args)
        except StorageUnavailable as error:
            # Failing to connect is "not published"; a command sent and not answered, or
            # a connection lost while waiting for the answer, may have been carried out.
            if not _not_sent(error.__cause__):
                raise OutcomeUnknown(
                    f"Redis at {self._safe_url()} did not confirm the event in time: it may "
                    "have been published"
                ) from error.__cause__
            raise
        entry_id, _, remembered = reply.partition(b" ")
        if remembered and remembered.decode("ascii") != digest:
            raise IdempotencyConflict(idempotency_key, category)
        if replicas is not None and replicas < self.min_replicas:
            raise ReplicationIncomplete(
                replicas, self.min_replicas, self.replica_timeout, self._safe_url()
            )
        position = parse_position(entry_id)
        return Event(position[0], category, event_id(position, self._tag), data)

    def _publish_and_wait(self, keys: list[Any], args: list[Any]) -> tuple[Any, int]:
        """Run the publish script, then ``WAIT`` on the same connection for
        :attr:`min_replicas` replicas to have what it wrote: the script's reply, and how
        many replicas confirmed."""
        wait = ("WAIT", self.min_replicas, int(self.replica_timeout * 1000))
        script = self._publish_script
        for attempt in (1, 2):
            with self._client.pipeline(transaction=False) as pipeline:
                pipeline.evalsha(script.sha, len(keys), *keys, *args)
                pipeline.execute_command(*wait)  # type: ignore[no-untyped-call]
                reply, replicas = pipeline.execute(raise_on_error=False)
            if isinstance(reply, redis.exceptions.NoScriptError) and attempt == 1:
                self._client.script_load(script.script)  # nothing was written: run again
                continue
            for result in (reply, replicas):
                if isinstance(result, Exception):
                    raise result
            break
        return reply, int(replicas)

    def bind(self, listener: Listener) -> None:
        self._listener = listener

    def read(
        self, categories: Sequence[str], since_time: int | None, last_id: str | None
    ) -> ReadResult:
        if since_time is None:
            # "Now" is where the reader stands in every category it follows already: no
            # round trip for the thousands of subscribers that park on a busy category.
            reader = self._reader
            now = None
            if reader is not None and reader.pid == os.getpid():  # not a forked copy
                now = reader.newest_position(categories)
            if now is None:
                now = self._read(categories, None, None)[2]
            return ReadResult(position=now)
        events, gaps, now = self._read(categories, since_time, last_id)
        return ReadResult(events, gaps, max(now, self.start_position(since_time, last_id)))

    def _read(
        self, categories: Sequence[str], since_time: int | None, last_id: str | None
    ) -> tuple[list[Event], list[Gap], Position]:
        """The events after the cursor, the gaps, and the position of the newest event
        published anywhere. Without *since_time*, only the position is asked for."""
        if since_time is None:
            categories = ()
            start = (0, 0)
        else:
            start = self.start_position(since_time, last_id)
        keys = [self._counter_key]
        keys += [self.stream_key(category) for category in categories]
        keys += [self._floor_key(category) for category in categories]
        first = f"({start[0]}-{start[1]}" if start != (0, 0) else "-"
        reply = self._call(self._read_script, keys, [first, self._ttl_ms, len(categories)])
        now = parse_position(reply[0])
        runs = []
        gaps = []
        for index, category in enumerate(categories):
            entries, floor = reply[1 + 2 * index], reply[2 + 2 * index]
            runs.append([
                (parse_position(entry_id), self.event(category, entry_id, _fields(fields)))
                for entry_id, fields in entries
            ])
            if floor and since_time is not None and self._missed(
                parse_position(floor), since_time, last_id
            ):
                position = parse_position(floor)
                gaps.append(Gap(category, position[0], event_id(position, self._tag)))
        return [event for _, event in merge_by_position(runs)], gaps, now

    def _missed(self, floor: Position, since_time: int, last_id: str | None) -> bool:
        """Whether the cursor had not seen the event *floor* (the newest one dropped)."""
        if last_id is None:
            return floor[0] > since_time
        seen = stream_position(last_id, self._tag)
        if seen is not None:
            return floor[0] >= since_time and floor > seen
        return floor[0] > since_time or (
            floor[0] == since_time and event_id(floor, self._tag) != last_id
        )

    def events(self, category: str) -> list[Event]:
        return self._read([category], -1, None)[0]

    def counts(self) -> tuple[int, int]:
        """``(categories, buffered events)`` across every process sharing the prefix."""
        reply = self._call(
            self._counts_script, [self._categories_key],
            [self._stream_prefix, self._floor_prefix, self._ttl_ms],
        )
        return int(reply[0]), int(reply[1])

    def check(self) -> None:
        self._call(self._client.ping)

    # -- the reader -------------------------------------------------------------------

    def watch(self, categories: Sequence[str], after: Position) -> None:
        """Have this process's reader follow *categories* from *after* on.

        Waits (briefly, on Redis) until the reader has taken a position it did not
        follow yet, so that a new category does not wait for the ``XREAD`` in progress.
        """
        reader = self._reader
        if reader is None or reader.pid != os.getpid():  # a forked worker gets its own
            reader = self._reader = _Reader(self)
        target = reader.watch(categories, after)
        if target is not None:
            reader.interrupt(target)

    def unwatch(self, categories: Sequence[str]) -> None:
        reader = self._reader
        if reader is not None:
            reader.unwatch(categories)

    def _deliver(self, batch: list[tuple[Position, Event]]) -> None:
        if self._listener is not None:
            self._listener(batch)

    def close(self) -> None:
        """Stop the reader and close the connections."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.stop()
        _close(self._client)


def _sentinel_primary(url: SentinelURL, options: dict[str, Any]) -> redis.Redis:
    """A client of the primary the sentinels of *url* name: each new connection asks them
    where it is, so that after a failover the client writes to the promoted replica."""
    timeouts = {name: value for name in ("socket_timeout", "socket_connect_timeout")
                if (value := getattr(url, name)) is not None}
    options = {**options, **timeouts}
    sentinels = Sentinel(
        url.sentinels,
        sentinel_kwargs={"socket_timeout": options["socket_timeout"],
                         "socket_connect_timeout": options["socket_connect_timeout"],
                         "password": url.sentinel_password},
        db=url.db, username=url.username, password=url.password, **options,
    )
    return sentinels.master_for(url.service_name)  # type: ignore[no-any-return]


def _close(client: redis.Redis) -> None:
    """Close *client*'s connections, and those to the sentinels it asks."""
    client.close()
    sentinels = getattr(client.connection_pool, "sentinel_manager", None)
    if sentinels is not None:
        sentinels.close()


def _not_sent(error: BaseException | None) -> bool:
    """Whether the Redis *error* means the command never reached Redis (no connection)."""
    return isinstance(error, MasterNotFoundError) or "connecting to" in str(error)


def _fields(fields: Any) -> dict[bytes, bytes]:
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[::2], fields[1::2], strict=False))  # a Lua reply: a flat list


class _Reader:
    """One per process: blocks in ``XREAD`` on the streams that have local watchers.

    Each stream is read from the oldest position watched on it. Each ``XREAD`` reply
    goes to the engine's listener as one batch in position order across streams; when
    a stream's reply was cut at ``count`` entries, the batch ends at the lowest position
    such a stream reached, and the rest is read again next time, so that a subscriber
    of several categories, whose one cursor moves to the newest event handed to it,
    never skips an event another stream holds below that cursor.
    """

    #: Entries read per stream in one ``XREAD``.
    count = 1000

    def __init__(self, engine: RedisEngine) -> None:
        self.engine = engine
        self.pid = os.getpid()
        self._lock = _allocate_lock()
        #: For each watched stream, the position the next ``XREAD`` starts after.
        self._positions: dict[str, Position] = {}
        self._watchers = WatchCounts()
        self._generation = 0
        self._stopped = False
        self._started = False
        self._client_id: int | None = None
        self._client = engine._connect(engine.url, engine.socket_timeout + engine.block_ms / 1000)
        self._unblocker = engine._client
        self._patched = is_module_patched("socket")
        self._work: Any = GeventEvent() if self._patched else _ThreadEvent()

    def newest_position(self, categories: Sequence[str]) -> Position | None:
        """The newest position read in *categories*, if every one of them is followed."""
        with self._lock:
            known = [self._positions.get(category) for category in categories]
        if None in known:
            return None
        return max(known)  # type: ignore[type-var]

    def watch(self, categories: Sequence[str], after: Position) -> int | None:
        """Follow *categories* from *after* on.

        :returns: ``None``, or the generation the reader must reach (see :meth:`interrupt`)
            for the new positions to be read.
        """
        restart = False
        with self._lock:
            self._watchers.add(categories)
            for category in categories:
                known = self._positions.get(category)
                if known is None or after < known:
                    self._positions[category] = after
                    restart = True
            target = self._generation + 1 if restart else None
            start = not self._started
            self._started = True
        if start:
            if self._patched:
                gevent.spawn(self._run)
            else:
                _start_new_thread(self._run, ())
        self._work.set()
        return target

    def unwatch(self, categories: Sequence[str]) -> None:
        with self._lock:
            for category in self._watchers.remove(categories):
                self._positions.pop(category, None)

    def interrupt(self, target: int) -> None:
        """End the ``XREAD`` in progress until the reader has reached generation *target*
        (taken its positions anew)."""
        for _ in range(200):
            if self._stopped or self._generation >= target:
                return
            client_id = self._client_id
            try:
                if client_id is not None and self.engine._call(
                    self._unblocker.client_unblock, client_id
                ):
                    return
            except StorageUnavailable:
                return  # the reader is reconnecting, and will read the new positions
            _sleep(0.001)

    def stop(self) -> None:
        self._stopped = True
        self._work.set()
        client_id = self._client_id
        if client_id is not None:
            with contextlib.suppress(redis.RedisError):
                self._unblocker.client_unblock(client_id)

    def _run(self) -> None:
        backoff = 0.05
        while not self._stopped:
            try:
                if self._client_id is None:
                    self._client_id = int(self._client.client_id())
                self._read_once()
                backoff = 0.05
            except (redis.ConnectionError, redis.TimeoutError) as error:
                self._client_id = None
                pause = random.uniform(0, backoff)  # full jitter
                logger.warning("reading from Redis failed (%s); retrying in %.2f s", error, pause)
                _sleep(pause)
                backoff = min(backoff * 2, self.engine.max_backoff)
            except Exception:  # never let the reader die: the waiters depend on it
                logger.exception("the Redis reader failed; retrying")
                _sleep(1.0)
        _close(self._client)

    def _read_once(self) -> None:
        engine = self.engine
        with self._lock:
            self._generation += 1
            starts = dict(self._positions)
            if not starts:
                self._work.clear()
        if not starts:
            self._work.wait(1.0)
            return
        streams: dict[Any, Any] = {
            engine.stream_key(category): f"{ms}-{seq}" for category, (ms, seq) in starts.items()
        }
        reply: Any = self._client.xread(streams, count=self.count, block=engine.block_ms)
        if not reply:
            return
        runs = {}
        for stream_key, entries in reply:
            category = engine.category_of(stream_key)
            runs[category] = [
                (parse_position(entry_id), engine.event(category, entry_id, fields))
                for entry_id, fields in entries
            ]
        batch, reached = cut_batch(runs, self.count)
        with self._lock:
            # Move on only where nobody asked for an older position meanwhile.
            for category, position in reached.items():
                if self._positions.get(category) == starts[category]:
                    self._positions[category] = position
        if batch:
            engine._deliver(batch)


def cut_batch(
    runs: dict[str, list[tuple[Position, Event]]], count: int
) -> tuple[list[tuple[Position, Event]], dict[str, Position]]:
    """One ``XREAD`` reply as a batch in position order, and where each stream got to.

    A stream that returned *count* entries may hold more: the batch stops at the lowest
    position such a stream reached, so that nothing below the batch's end is missing.
    """
    cut = min((run[-1][0] for run in runs.values() if len(run) >= count), default=None)
    reached = {}
    kept = []
    for category, run in runs.items():
        if cut is not None:
            run = [entry for entry in run if entry[0] <= cut]
        if run:
            reached[category] = run[-1][0]
            kept.append(run)
    return merge_by_position(kept), reached


def _sleep(seconds: float) -> None:
    if is_module_patched("time") or _in_hub_greenlet():
        gevent.sleep(seconds)
    else:
        _real_sleep(seconds)
