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
import re
import ssl
import uuid
import weakref
import zlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import gevent
import gevent.ssl
import redis
from gevent.event import AsyncResult
from gevent.event import Event as GeventEvent
from gevent.hub import Waiter
from gevent.monkey import get_original, is_module_patched
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from .._gevent import get_hub_if_exists
from ..errors import (
    IdempotencyConflict,
    OutcomeUnknown,
    ReplicationIncomplete,
    StorageRefused,
    StorageUnavailable,
)
from ..event import Event, Gap, encode_json, new_event_id
from ..logs import RateLimitedLog
from ..protocol import ProtocolError
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
from .redis_connections import (
    Address,
    CommandFailed,
    ConnectFailed,
    CooperativePool,
    RedisConnection,
    ReplyError,
    SentinelPrimary,
    SetupRefused,
    read_only,
)
from .redis_url import SentinelURL, describe, parse_sentinel_url

__all__ = ["RedisEngine", "cooperative_address", "cut_batch", "epoch_floor", "event_id",
           "hash_tagged", "stream_position"]

logger = logging.getLogger(__name__)
#: A Redis that refuses ``WAIT`` refuses it for every publish: one line per 10 s.
_wait_refusals = RateLimitedLog(logger)

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

# KEYS: counter hash, category set, then for each event its stream, floor and
#       idempotency key.
# ARGV: buffer size, time to live in ms (0: none), max categories, prefix of the streams,
#       prefix of the floors, idempotency window in ms, then for each event its category,
#       data and the digest of the data (hex; empty for a key of our own).
# Returns one outcome per event, in order: the entry id, a space and the digest of the
# data stored with the key; or "!" and the error that refused this event alone (each event
# runs in a pcall, so one that Redis refuses fails alone, and the others are stored). A
# known key is written again (same value, same expiry), so that a WAIT after the call
# covers a retried event too.
# Each entry holds its data (d), the epoch of the counter (e: the ms at which the counter
# was made; a Redis that lost its data makes a new one) and the id of the entry before it
# in the stream (p, or the floor when the stream was emptied): a reader that finds p
# newer than what it read knows that events were dropped before it could read them.
_PUBLISH = _EXPIRE + """
local size, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_categories, window = tonumber(ARGV[3]), ARGV[6]
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = string.format('%d', clock)
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
-- The clock is one for the whole call, so the ms of every event is too.
local ms = tonumber(redis.call('HGET', KEYS[1], 'ms') or '0')
if clock > ms then
  ms = clock
  redis.call('HSET', KEYS[1], 'ms', string.format('%d', ms))
end
-- What this call knows of each stream it published to: its length and newest entry, so
-- that the next event of the group to the same stream reads neither, and whether its
-- expiry and its category's score (this call's clock) are set yet.
local streams = {}
local function remember(key, value)
  if ttl > 0 then
    redis.call('SET', key, value, 'PX', 2 * ttl)
  else
    redis.call('SET', key, value)
  end
end
local function publish(category, data, digest, stream, floor, idempotency)
  local known = redis.call('GET', idempotency)
  if known then
    redis.call('SET', idempotency, known, 'KEEPTTL')
    return known
  end
  local state = streams[stream]
  if not state then
    if not redis.call('ZSCORE', KEYS[2], category) then
      if ttl > 0 then
        redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('(%d', clock - 2 * ttl))
      end
      if redis.call('ZCARD', KEYS[2]) >= max_categories then
        -- push out the category published to least recently; its floor keeps the gap signal
        local idle = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
        local pushed = ARGV[4] .. idle
        local newest = redis.call('XREVRANGE', pushed, '+', '-', 'COUNT', 1)
        if #newest > 0 then remember(ARGV[5] .. idle, newest[1][1]) end
        redis.call('DEL', pushed)
        redis.call('ZREM', KEYS[2], idle)
        streams[pushed] = nil
      end
    end
    if ttl > 0 then expire(stream, floor, clock - ttl, ttl) end
    local length = redis.call('XLEN', stream)
    local last = ''
    if length > 0 then
      last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1][1]
    else
      last = redis.call('GET', floor) or ''
    end
    state = {length = length, last = last, fresh = true}
    streams[stream] = state
  end
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  if state.length >= size then
    local dropped = redis.call('XRANGE', stream, '-', '+', 'COUNT', state.length - size + 1)
    remember(floor, dropped[#dropped][1])
  end
  local id = string.format('%d-%d', ms, seq)
  redis.call('XADD', stream, 'MAXLEN', size, id, 'd', data, 'e', epoch, 'p', state.last)
  if state.fresh then  -- the clock is one for the call: once per stream is enough
    if ttl > 0 then redis.call('PEXPIRE', stream, 2 * ttl) end
    redis.call('ZADD', KEYS[2], clock, category)
    state.fresh = false
  end
  state.length = math.min(state.length + 1, size)
  state.last = id
  local remembered = id .. ' ' .. digest
  redis.call('SET', idempotency, remembered, 'PX', window)
  return remembered
end
local outcomes = {}
for i = 1, (#ARGV - 6) / 3 do
  local k, a = 3 * i, 3 * i + 4
  local ok, outcome = pcall(publish, ARGV[a], ARGV[a + 1], ARGV[a + 2],
                            KEYS[k], KEYS[k + 1], KEYS[k + 2])
  if ok then
    outcomes[i] = outcome
  else
    if type(outcome) == 'table' then outcome = outcome.err or 'error' end
    outcomes[i] = '!' .. tostring(outcome)
    streams[KEYS[k]] = nil  -- what failed may have been half done: read it again
  end
end
return outcomes
"""

# KEYS: counter hash.
# ARGV: the ms and seq of the newest event this process saw (published or read).
# A counter behind that event (a failover to a replica that had not received it, a
# restart that lost the last writes) means acknowledged events are lost: a new epoch,
# after every position given out before, so that every cursor from before gets a gap;
# the counter moves past the lost events, so that other processes do not count them
# again. Returns the epoch ('' for none).
_RESUME = _EXPIRE + """
local counter = redis.call('HMGET', KEYS[1], 'ms', 'seq', 'epoch')
local ms, seq = tonumber(counter[1] or '0'), tonumber(counter[2] or '0')
local seen_ms, seen_seq = tonumber(ARGV[1]), tonumber(ARGV[2])
if seq >= seen_seq then return counter[3] or '' end
local epoch = math.max(clock, seen_ms + 2, tonumber(counter[3] or '0') + 1)
redis.call('HSET', KEYS[1], 'epoch', string.format('%d', epoch),
           'ms', string.format('%d', math.max(ms, epoch)), 'seq', string.format('%d', seen_seq))
return string.format('%d', epoch)
"""

# KEYS: counter hash, then the streams, then their floors.
# ARGV: start id (XRANGE form), time to live in ms (0: none), how many streams.
# Returns the counter's position and epoch, then for each stream its entries and its floor.
_READ = _EXPIRE + """
local ttl = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local position = redis.call('HMGET', KEYS[1], 'ms', 'seq', 'epoch')
local result = {(position[1] or '0') .. '-' .. (position[2] or '0'), position[3] or ''}
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
    text = "%032x" % ((ms << 80) | (8 << 76) | (tag << 64) | (0b10 << 62) | (seq & _SEQ_MASK))
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def stream_position(event_id_text: str, tag: int) -> Position | None:
    """The stream position an id made by :func:`event_id` with *tag* carries, or ``None``."""
    try:
        value = uuid.UUID(event_id_text).int
    except ValueError:
        return None
    if (value >> 76) & 0xF != 8 or (value >> 64) & 0xFFF != tag or (value >> 62) & 0b11 != 0b10:
        return None
    return value >> 80, value & _SEQ_MASK


def epoch_floor(epoch: bytes | str) -> Position:
    """The position just before the first event of *epoch* (a counter made at that ms):
    every cursor older than it was given out by a Redis whose data are lost."""
    return (max(int(epoch) - 1, 0), 0)


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


def cooperative_address(client: redis.Redis) -> Address:
    """Where the hub's own connections go: the address of redis-py's *client* (made from
    the URL by :meth:`RedisEngine._connect`), for :class:`RedisConnection`. For a client
    of Sentinel's primary, all but the host and port (:class:`SentinelPrimary` finds
    them)."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    context = None
    if issubclass(pool.connection_class, redis.SSLConnection):
        context = gevent.ssl.create_default_context(cafile=kwargs.get("ssl_ca_certs"))
        requirement = kwargs.get("ssl_cert_reqs", "required")
        if requirement in ("none", None) or requirement == ssl.CERT_NONE:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context.check_hostname = bool(kwargs.get("ssl_check_hostname", True))
    return Address(
        host=kwargs.get("host", "127.0.0.1"), port=int(kwargs.get("port", 6379)),
        path=kwargs.get("path"), db=int(kwargs.get("db", 0) or 0),
        username=kwargs.get("username"), password=kwargs.get("password"),
        ssl_context=context, timeout=float(kwargs.get("socket_timeout") or 5.0),
        connect_timeout=float(kwargs.get("socket_connect_timeout") or 5.0),
    )


class _Script:
    """A Lua script, run by its SHA1 (and loaded again when Redis forgot it)."""

    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        self.source = source.encode("utf-8")
        self.sha = hashlib.sha1(self.source).hexdigest()


_LEAD = object()


class _Append:
    """One event waiting for its group commit."""

    __slots__ = ("category", "key", "digest", "keys", "args", "size", "waiter", "lead")

    def __init__(self, category: str, key: str, digest: str, keys: list[bytes],
                 args: list[Any], size: int) -> None:
        self.category = category
        #: The idempotency key, and the digest of the data sent with it.
        self.key = key
        self.digest = digest
        self.keys = keys
        self.args = args
        self.size = size
        self.waiter: Waiter[Any] | None = None
        self.lead = False


class _HubState:
    """What the greenlets of one hub share: their connections, the appends waiting for a
    group commit, and the reads in progress (identical ones share one call)."""

    def __init__(self, engine: RedisEngine) -> None:
        self.engine = engine
        self.pool = CooperativePool(
            engine._new_connection, engine.pool_size, engine._address.timeout,
            engine._lost,
        )
        self.hub = self.pool.hub
        self.queue: list[_Append] = []
        self.committing = False
        self.reads: dict[Any, AsyncResult[Any]] = {}

    def commit(self, item: _Append) -> Any:
        """Publish *item* in the next group commit; its outcome (a reply or an error).

        The first append when none is in progress goes at once; those that come while a
        commit is in progress wait and go together in the next one, led by the first of
        them.
        """
        if self.committing:
            item.waiter = Waiter(self.hub)
            self.queue.append(item)
            try:
                outcome = item.waiter.get()
            except BaseException:  # killed while waiting: never strand the leadership
                if item in self.queue:
                    self.queue.remove(item)
                    if item.lead:
                        self._hand_off()
                raise
            if outcome is not _LEAD:
                return outcome
        else:
            self.committing = True
            self.queue.append(item)
        batch = self._take()
        try:
            outcomes: list[Any] = self.engine._commit(batch, self.pool)
        except BaseException as error:
            unknown = OutcomeUnknown(f"the group commit was interrupted ({error!r}): the "
                                     "event may have been published")
            outcomes = [unknown] * len(batch)
            raise
        finally:
            callback = self.hub.loop.run_callback
            for other, outcome in zip(batch, outcomes, strict=True):
                if other is not item and other.waiter is not None:
                    callback(other.waiter.switch, outcome)
            self._hand_off()
        return outcomes[batch.index(item)]

    def _take(self) -> list[_Append]:
        queue = self.queue
        engine = self.engine
        count = size = 0
        for pending in queue:
            if count and (count >= engine.max_commit_events
                          or size + pending.size > engine.max_commit_bytes):
                break
            count += 1
            size += pending.size
        batch = queue[:count]
        del queue[:count]
        return batch

    def _hand_off(self) -> None:
        if self.queue:
            following = self.queue[0]
            following.lead = True
            assert following.waiter is not None
            self.hub.loop.run_callback(following.waiter.switch, _LEAD)
        else:
            self.committing = False

    def shared(self, key: Any, read: Callable[[], T]) -> T:
        """``read()``, or the outcome of the identical read in progress."""
        pending = self.reads.get(key)
        if pending is not None:
            return pending.get()  # type: ignore[no-any-return]
        result: AsyncResult[Any] = AsyncResult()
        self.reads[key] = result
        try:
            value = read()
        except Exception as error:
            result.set_exception(error)
            raise
        except BaseException:
            result.set_exception(StorageUnavailable("the read was interrupted"))
            raise
        else:
            result.set(value)
            return value
        finally:
            del self.reads[key]


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
        primary have the event (Redis ``WAIT``, one per group commit), so that a failover
        to one of them cannot lose it.
    :param replica_timeout: the longest :meth:`append` waits for them, in seconds; the
        reply is waited for this long beyond the socket timeout.

    Commands from a greenlet of a gevent hub go on that hub's own connections
    (:mod:`.redis_connections`: cooperative, at most :attr:`pool_size` of them, a caller
    beyond waits); commands from any other thread go through redis-py.
    """

    #: Seconds a Redis command may take before it fails with :class:`StorageUnavailable`.
    socket_timeout = 5.0
    #: How long the reader blocks in one ``XREAD``, in ms.
    block_ms = 5000
    #: The longest pause between reconnection attempts of the reader, in seconds.
    max_backoff = 5.0
    #: The most connections to Redis each hub opens; a command beyond waits for one.
    pool_size = 32
    #: The most events one group commit carries ...
    max_commit_events = 256
    #: ... and the most bytes of their data (one bigger event goes alone).
    max_commit_bytes = 1 << 20

    def __init__(
        self,
        url: str,
        key_prefix: str = RedisOptions.key_prefix,
        max_event_buffer_size: int = RedisOptions.max_event_buffer_size,
        event_time_to_live_seconds: float | None = RedisOptions.event_time_to_live_seconds,
        max_categories: int = RedisOptions.max_categories,
        min_replicas: int = RedisOptions.min_replicas,
        replica_timeout: float = RedisOptions.replica_timeout,
    ) -> None:
        #: The engine's options, checked.
        self.options = RedisOptions(
            url=url, key_prefix=key_prefix, max_event_buffer_size=max_event_buffer_size,
            event_time_to_live_seconds=event_time_to_live_seconds, max_categories=max_categories,
            min_replicas=min_replicas, replica_timeout=replica_timeout,
        )
        if url is None:
            raise TypeError("RedisEngine needs the URL of a Redis")
        self.url = url
        self.key_prefix = key_prefix
        self.max_event_buffer_size = max_event_buffer_size
        self.event_time_to_live_seconds = event_time_to_live_seconds or None
        self.max_categories = max_categories
        self.min_replicas = min_replicas
        self.replica_timeout = replica_timeout
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
        self._address = cooperative_address(self._client)
        #: redis-py's client for a publish followed by ``WAIT`` (from threads without a
        #: hub): its replies are waited for ``replica_timeout`` longer.
        self._waiting_client = None if not min_replicas else self._connect(
            url, self.socket_timeout, longer=replica_timeout)
        sentinel_url = parse_sentinel_url(url)
        #: Where the hub's connections find the primary, for a ``redis+sentinel://`` URL.
        self._sentinel = None if sentinel_url is None else SentinelPrimary(
            [Address(host, port, password=sentinel_url.sentinel_password,
                     timeout=self._address.timeout,
                     connect_timeout=self._address.connect_timeout)
             for host, port in sentinel_url.sentinels],
            sentinel_url.service_name, self._address,
        )
        self._where = describe(url) if sentinel_url is not None else str(self._address)
        #: The newest position this process published or read, and whether a new
        #: connection should check that Redis still has it (after a lost connection).
        self._newest: Position = (0, 0)
        self._recheck = False
        self._resume_script = _Script(_RESUME)
        self._publish_script = _Script(_PUBLISH)
        self._read_script = _Script(_READ)
        self._counts_script = _Script(_COUNTS)
        self._hubs: weakref.WeakKeyDictionary[Any, _HubState] = weakref.WeakKeyDictionary()
        self._hubs_lock = _allocate_lock()
        #: The epoch of the counter last seen (see :func:`epoch_floor`).
        self.epoch: bytes | None = None
        self._reader: _Reader | None = None

    @staticmethod
    def _connect(url: str, timeout: float, *, retries: int = 1, longer: float = 0.0,
                 on_connect: Callable[[Any], None] | None = None) -> redis.Redis:
        """redis-py's client for *url*: the reader's, and the one of callers on threads
        without a hub. The hub's own connections go to the same address
        (:func:`cooperative_address`).

        :param timeout: seconds for a reply and for connecting, unless the URL says.
        :param retries: how many times redis-py sends a command again on a new
            connection when its connection failed (a pooled one may be stale after a
            Redis restart, or a failover); at once: an unreachable Redis is reported,
            not waited out.
        :param longer: seconds a reply may take beyond the timeout (a blocking command).
        :param on_connect: called with each new connection, once it is set up.
        """
        options: dict[str, Any] = {
            "socket_timeout": timeout, "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), retries), "health_check_interval": 0,
        }
        if on_connect is not None:
            def set_up(connection: Any) -> None:
                connection.on_connect()
                on_connect(connection)

            options["redis_connect_func"] = set_up
        sentinel_url = parse_sentinel_url(url)
        if sentinel_url is not None:
            client = _sentinel_primary(sentinel_url, options)
        else:
            client = redis.Redis.from_url(url, **options)
        if longer:
            kwargs = client.connection_pool.connection_kwargs
            kwargs["socket_timeout"] = float(kwargs.get("socket_timeout") or timeout) + longer
        return client

    def _new_connection(self) -> RedisConnection:
        """A new connection of a hub's pool: to the primary the sentinels name, or to the
        URL's Redis; after a lost connection, first checked with :meth:`_resume`."""
        try:
            if self._sentinel is not None:
                connection = self._sentinel.connect()
            else:
                connection = RedisConnection(self._address)
        except ConnectFailed:
            self._recheck = True
            raise
        if self._recheck:
            try:
                self._resume(lambda *args: connection.call(*args))
            except (CommandFailed, ReplyError) as error:
                connection.close()
                raise ConnectFailed(f"connecting to {connection.address}: {error}") from error
        return connection

    def _lost(self) -> None:
        """A connection failed, or Redis answered ``READONLY``: the next one asks the
        sentinels again, and checks that Redis kept what this process saw."""
        self._recheck = True
        if self._sentinel is not None:
            self._sentinel.forget()

    def _resume(self, call: Callable[..., Any]) -> None:
        """Check, with *call*, that the Redis connected to now holds the newest event this
        process saw; if not (a failover to a replica that was behind, a restart that lost
        writes), start a new epoch, so that every cursor from before gets a gap."""
        newest = self._newest
        if newest != (0, 0):
            keys, args = [self._counter_key], [newest[0], newest[1]]
            try:
                epoch = call("EVALSHA", self._resume_script.sha, 1, *keys, *args)
            except (ReplyError, redis.ResponseError) as error:
                if not _no_script(error):
                    raise
                epoch = call("EVAL", self._resume_script.source, 1, *keys, *args)
            if epoch:
                if epoch != self.epoch and self.epoch is not None:
                    logger.warning(
                        "Redis at %s lacks events this process saw (a failover to a replica "
                        "that was behind, or a restart): every cursor from before gets a gap",
                        self._where)
                self.epoch = epoch
        self._recheck = False

    def _note(self, position: Position) -> None:
        """Remember *position* if it is the newest this process knows Redis had (see
        :meth:`_resume`)."""
        if position > self._newest:
            self._newest = position

    # -- keys and events ----------------------------------------------------------------

    def stream_key(self, category: str) -> bytes:
        return self._stream_prefix + _category_bytes(category)

    def _floor_key(self, category: str) -> bytes:
        return self._floor_prefix + _category_bytes(category)

    def category_of(self, stream_key: bytes) -> str:
        return stream_key[len(self._stream_prefix):].decode("utf-8", "surrogateescape")

    def event(self, category: str, entry_id: bytes, fields: dict[bytes, bytes]) -> Event:
        """Build the event stored as entry *entry_id* of *category*'s stream."""
        position = parse_position(entry_id)
        return Event(position[0], category, event_id(position, self._tag), json.loads(fields[b"d"]))

    def gap(self, category: str, floor: Position) -> Gap:
        """The gap signal of *category* whose newest dropped event stood at *floor*."""
        return Gap(category, floor[0], event_id(floor, self._tag))

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

    def _hub_state(self) -> _HubState | None:
        """The calling hub's connections, or ``None`` off any hub (redis-py then)."""
        if not _in_hub_greenlet():
            return None
        hub = get_hub_if_exists()
        state = self._hubs.get(hub)
        if state is None:
            with self._hubs_lock:
                state = self._hubs.get(hub)
                if state is None:
                    state = self._hubs[hub] = _HubState(self)
        return state

    def _call(self, *args: Any, writes: bool = False, pool: CooperativePool | None = None,
              then: tuple[Any, ...] | None = None) -> Any:
        """Run one Redis command: cooperatively from a hub's greenlet, else by redis-py.
        With *then* (``WAIT``), that command follows on the same connection, sent with
        the first: both replies come back, an error reply as an exception instance; they
        are waited for :attr:`replica_timeout` beyond the socket timeout.

        :raises StorageUnavailable: naming Redis's address and what failed.
        :raises OutcomeUnknown: with *writes*, if the command was sent and not answered.
        """
        if pool is None:
            state = self._hub_state()
            pool = state.pool if state is not None else None
        try:
            if pool is not None:
                if then is None:
                    return pool.call(*args)
                return pool.pipeline(args, then,
                                     timeout=self._address.timeout + self.replica_timeout)
            if then is not None:
                client = self._waiting_client or self._client
                with client.pipeline(transaction=False) as pipeline:
                    pipeline.execute_command(*args)  # type: ignore[no-untyped-call]
                    pipeline.execute_command(*then)  # type: ignore[no-untyped-call]
                    return pipeline.execute(raise_on_error=False)
            return self._client.execute_command(*args)  # type: ignore[no-untyped-call]
        except SetupRefused as error:
            raise StorageRefused(self._where, _redis_message(error.reply)) from error
        except ConnectFailed as error:
            raise StorageUnavailable(
                f"Redis at {self._where} is unavailable: {error}") from error
        except (redis.AuthenticationError, redis.BusyLoadingError) as error:
            # Refused before it ran (NOAUTH, LOADING), though redis-py calls these
            # connection errors.
            raise StorageRefused(self._where, _redis_message(error)) from error
        except (CommandFailed, redis.ConnectionError, redis.TimeoutError) as error:
            if writes and (isinstance(error, CommandFailed) or not _not_sent(error)):
                raise OutcomeUnknown(
                    f"Redis at {self._where} did not confirm the event in time: it may "
                    "have been published"
                ) from error
            raise StorageUnavailable(
                f"Redis at {self._where} is unavailable: {error}") from error
        except (ReplyError, redis.ResponseError) as error:
            if _no_script(error):
                raise
            raise StorageRefused(self._where, _redis_message(error)) from error

    def _eval(self, script: _Script, keys: Sequence[bytes], args: Sequence[Any], *,
              writes: bool = False, pool: CooperativePool | None = None) -> Any:
        """Run *script* by its SHA1, loading it first if Redis does not know it.

        A script that only reads, answered ``READONLY`` (it trims expired events), runs
        once more where the primary is now (see :meth:`_demoted`); a publish is retried
        by :meth:`_commit`.
        """
        try:
            return self._eval_once(script, keys, args, writes, pool)
        except StorageUnavailable as error:
            if writes or not _demoted_primary(error):
                raise
        self._demoted(pool)
        return self._eval_once(script, keys, args, writes, pool)

    def _eval_once(self, script: _Script, keys: Sequence[bytes], args: Sequence[Any],
                   writes: bool, pool: CooperativePool | None) -> Any:
        try:
            return self._call("EVALSHA", script.sha, len(keys), *keys, *args,
                              writes=writes, pool=pool)
        except (ReplyError, redis.ResponseError):  # NOSCRIPT: a restarted Redis
            return self._call("EVAL", script.source, len(keys), *keys, *args,
                              writes=writes, pool=pool)

    def _safe_url(self) -> str:
        return self._where

    def append(self, category: str, data: Any, idempotency_key: str | None = None) -> Event:
        """Publish *data* to *category*; return once Redis has acknowledged the ``XADD``.

        A new category beyond ``max_categories`` pushes out the category published to
        least recently (its floor keeps the gap signal). Every append carries an
        idempotency key (a fresh one when none is given), so that the client's own retry
        of a command whose answer was lost cannot store the event twice. Appends made
        from one hub while a commit is in progress go to Redis together, in the next
        one (a group commit); each has its own outcome.

        :raises TypeError: if *data* cannot be encoded as JSON.
        :raises ValueError: if *category* cannot be a Redis key (a lone surrogate).
        :raises IdempotencyConflict: if *idempotency_key* stands for other data in
            *category*; nothing was published.
        :raises StorageUnavailable: if Redis cannot be reached; nothing was published.
        :raises StorageRefused: (a :class:`StorageUnavailable`) if Redis answered with an
            error (out of memory, a read-only replica, busy); nothing was published.
        :raises OutcomeUnknown: if Redis did not answer in time: the event may be stored.
        """
        item = self._pending(category, data, idempotency_key)
        state = self._hub_state()
        outcome = self._commit([item])[0] if state is None else state.commit(item)
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome.startswith(b"!"):  # Redis refused this event alone
            raise StorageRefused(self._where, _redis_message(outcome[1:].decode(
                "utf-8", "replace")))
        entry_id, _, remembered = outcome.partition(b" ")
        if remembered and remembered.decode("ascii") != item.digest:
            raise IdempotencyConflict(item.key, category)
        position = parse_position(entry_id)
        if position > self._newest:
            self._newest = position
        return Event(position[0], category, event_id(position, self._tag), data)

    def _pending(self, category: str, data: Any, idempotency_key: str | None = None
                 ) -> _Append:
        """The append of *data* to *category*, ready for a group commit."""
        name = _category_bytes(category)
        encoded = encode_json(data)
        digest = ""  # none for a key of our own: it is never sent twice
        if idempotency_key is None:
            idempotency_key = new_event_id()  # random: unique in every process
        else:
            digest = data_digest(data).hex()
        key = self._idempotency_prefix + hashlib.sha256(
            name + b"\0" + idempotency_key.encode("utf-8", "surrogateescape")
        ).hexdigest().encode("ascii")
        return _Append(
            category, idempotency_key, digest,
            [self._stream_prefix + name, self._floor_prefix + name, key],
            [name, encoded, digest], len(encoded),
        )

    def _commit(self, batch: list[_Append], pool: CooperativePool | None = None) -> list[Any]:
        """Publish *batch* in one call of the publish script: one outcome per event, a
        reply (``bytes``) or the error that every event of the batch got."""
        keys = [self._counter_key, self._categories_key]
        args: list[Any] = [self.max_event_buffer_size, self._ttl_ms, self.max_categories,
                           self._stream_prefix, self._floor_prefix,
                           int(self.idempotency_window_seconds * 1000)]
        for item in batch:
            keys += item.keys
            args += item.args
        for attempt in (1, 2):
            # A primary demoted to a replica (a failover) wrote nothing, whether Redis
            # refused the script (READONLY at its top) or each event in it: once more,
            # where the sentinels say the primary is now.
            try:
                reply, replicas = self._publish(keys, args, pool)
            except StorageUnavailable as error:
                if attempt == 2 or not _demoted_primary(error):
                    return [error] * len(batch)
            else:
                outcomes = list(reply)
                if attempt == 2 or not any(read_only(outcome) for outcome in outcomes):
                    break
            self._demoted(pool)
        if replicas is not None and replicas < self.min_replicas:
            # Every event this call stored is unconfirmed: one WAIT covered the group.
            short = ReplicationIncomplete(replicas, self.min_replicas, self.replica_timeout,
                                          self._where)
            for index, (item, outcome) in enumerate(zip(batch, outcomes, strict=True)):
                if outcome.startswith(b"!"):
                    continue
                remembered = outcome.partition(b" ")[2]
                if not remembered or remembered.decode("ascii") == item.digest:
                    outcomes[index] = short
        return outcomes

    def _publish(self, keys: list[bytes], args: list[Any], pool: CooperativePool | None
                 ) -> tuple[Any, int | None]:
        """Run the publish script; with :attr:`min_replicas`, then ``WAIT`` on the same
        connection (sent with it) for that many replicas to have what it wrote: the
        script's reply, and how many replicas confirmed (``None`` without ``WAIT``)."""
        script = self._publish_script
        if not self.min_replicas:
            return self._eval(script, keys, args, writes=True, pool=pool), None
        wait = ("WAIT", self.min_replicas, int(self.replica_timeout * 1000))
        for run in (("EVALSHA", script.sha), ("EVAL", script.source)):
            reply, replicas = self._call(*run, len(keys), *keys, *args, writes=True,
                                         pool=pool, then=wait)
            if not isinstance(reply, Exception):
                break
            if run[0] == "EVALSHA" and _no_script(reply):
                continue  # nothing was written: once more with the script's source
            raise StorageRefused(self._where, _redis_message(reply)) from reply
        if isinstance(replicas, Exception):  # stored, not confirmed; or a replica now
            if not any(read_only(outcome) for outcome in reply):
                _wait_refusals.log(logging.WARNING, "Redis at %s refused WAIT: %s",
                                   self._where, replicas)
            replicas = 0
        return reply, int(replicas)

    def _demoted(self, pool: CooperativePool | None) -> None:
        """The primary was demoted to a replica: forget the connections to it."""
        if pool is not None:
            pool.reset()
        else:
            self._client.connection_pool.disconnect()
            if self._waiting_client is not None:
                self._waiting_client.connection_pool.disconnect()
            self._lost()

    def bind(self, listener: Listener) -> None:
        self._listener = listener

    def read(
        self, categories: Sequence[str], since_time: int | None, last_id: str | None
    ) -> ReadResult:
        for category in categories:
            _category_bytes(category)
        reader = self._reader
        if reader is not None and reader.pid != os.getpid():  # a forked copy
            reader = None
        if since_time is None:
            # "Now" is where the reader stands in every category it follows already: no
            # round trip for the thousands of subscribers that park on a busy category.
            now = None
            if reader is not None:
                now = reader.newest_position(categories)
            if now is None:
                now = self._shared_read(categories, None, None)[2]
            return ReadResult(position=now)
        if reader is not None and not self._ttl_ms:
            # A cursor inside what the reader holds: answered from this process.
            start = self.start_position(since_time, last_id)
            held = reader.held_after(categories, start)
            if held is not None:
                events, position = held
                return ReadResult(events, [], max(position, start))
        events, gaps, now = self._shared_read(categories, since_time, last_id)
        return ReadResult(events, gaps, max(now, self.start_position(since_time, last_id)))

    def _shared_read(
        self, categories: Sequence[str], since_time: int | None, last_id: str | None
    ) -> tuple[list[Event], list[Gap], Position]:
        """:meth:`_read`, shared by the identical reads of a hub's greenlets in progress."""
        state = self._hub_state()
        if state is None:
            return self._read(categories, since_time, last_id)
        events, gaps, now = state.shared(
            (tuple(categories), since_time, last_id),
            lambda: self._read(categories, since_time, last_id, state.pool),
        )
        return list(events), list(gaps), now

    def _read(
        self, categories: Sequence[str], since_time: int | None, last_id: str | None,
        pool: CooperativePool | None = None,
    ) -> tuple[list[Event], list[Gap], Position]:
        """The events after the cursor, the gaps, and the position of the newest event
        published anywhere. Without *since_time*, only the position is asked for.

        A cursor that names an event of a Redis that has lost its data since (an older
        epoch of the counter, or a position beyond the counter) gets a gap in every
        category, and the events of the new epoch.
        """
        if since_time is None:
            categories = ()
            start = (0, 0)
        else:
            start = self.start_position(since_time, last_id)
        now, epoch, entries = self._read_streams(categories, start, pool)
        gaps = []
        seen = None if last_id is None else stream_position(last_id, self._tag)
        lost: Position | None = None
        if since_time is not None and seen is not None and seen > (0, 0):
            if seen > now:
                lost = now
            elif epoch and seen < epoch_floor(epoch):
                lost = epoch_floor(epoch)
        if lost is not None:
            gaps = [self.gap(category, lost) for category in categories]
            if lost < start:
                now, epoch, entries = self._read_streams(categories, lost, pool)
            since_time, last_id = lost[0], event_id(lost, self._tag)
        runs = []
        for category, (run, floor) in zip(categories, entries, strict=True):
            runs.append(run)
            if floor and since_time is not None and self._missed(
                parse_position(floor), since_time, last_id
            ):
                gaps.append(self.gap(category, parse_position(floor)))
        return [event for _, event in merge_by_position(runs)], gaps, now

    def _read_streams(
        self, categories: Sequence[str], start: Position, pool: CooperativePool | None
    ) -> tuple[Position, bytes, list[tuple[list[tuple[Position, Event]], bytes]]]:
        """The counter's position and epoch, and each category's entries after *start*
        with its floor."""
        keys = [self._counter_key]
        keys += [self.stream_key(category) for category in categories]
        keys += [self._floor_key(category) for category in categories]
        first = f"({start[0]}-{start[1]}" if start != (0, 0) else "-"
        reply = self._eval(self._read_script, keys, [first, self._ttl_ms, len(categories)],
                           pool=pool)
        now = parse_position(reply[0])
        self._note(now)
        epoch = reply[1]
        if epoch:
            self.epoch = epoch
        found = []
        for index, category in enumerate(categories):
            entries, floor = reply[2 + 2 * index], reply[3 + 2 * index]
            found.append(([
                (parse_position(entry_id), self.event(category, entry_id, _fields(fields)))
                for entry_id, fields in entries
            ], floor))
        return now, epoch, found

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
        reply = self._eval(
            self._counts_script, [self._categories_key],
            [self._stream_prefix, self._floor_prefix, self._ttl_ms],
        )
        return int(reply[0]), int(reply[1])

    def check(self) -> None:
        self._call("PING")

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

    def _deliver(self, batch: list[tuple[Position, Event]],
                 gaps: list[tuple[Position, Gap]]) -> None:
        if self._listener is not None:
            if gaps:
                self._listener(batch, gaps)
            else:  # a listener of its own may take the batch alone
                self._listener(batch)

    def close(self) -> None:
        """Stop the reader and close the connections."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.stop()
        with self._hubs_lock:
            states = list(self._hubs.values())
            self._hubs.clear()
        for state in states:
            state.pool.close()
        _close(self._client)
        if self._waiting_client is not None:
            _close(self._waiting_client)


def _sentinel_primary(url: SentinelURL, options: dict[str, Any]) -> redis.Redis:
    """redis-py's client of the primary the sentinels of *url* name: each new connection
    asks them where it is, so that after a failover the client writes to the promoted
    replica."""
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


def _no_script(error: BaseException) -> bool:
    """Whether the Redis *error* is ``NOSCRIPT`` (a script Redis does not know)."""
    return isinstance(error, redis.exceptions.NoScriptError) or str(error).startswith(
        "NOSCRIPT")


def _not_sent(error: BaseException | None) -> bool:
    """Whether the Redis *error* means the command never reached Redis: no connection,
    no primary named by the sentinels, or a primary demoted to a replica (``READONLY``)."""
    return (isinstance(error, MasterNotFoundError) or "connecting to" in str(error)
            or "previous master is now a slave" in str(error))


def _demoted_primary(error: StorageUnavailable) -> bool:
    """Whether Redis refused a command with ``READONLY``: a primary demoted to a replica
    (a failover), which wrote nothing."""
    return isinstance(error, StorageRefused) and read_only(error.reply)


#: The codes redis-py takes off the errors it has a class for.
_ERROR_CODES = {redis.exceptions.OutOfMemoryError: "OOM", redis.ReadOnlyError: "READONLY",
                redis.exceptions.NoPermissionError: "NOPERM",
                redis.exceptions.MasterDownError: "MASTERDOWN"}
_SCRIPT_ERROR = re.compile(
    r"^(?:ERR )?Error running script \(call to [^)]*\): |^(?:@user_script: ?\d+: )+-?"
    r"| script: \w+, on @user_script:\d+\.$")  # the last: how Redis 7 says where


def _redis_message(error: BaseException | str) -> str:
    """Redis's own message in the error reply *error*, with its code (``OOM ...``,
    ``READONLY ...``, ``BUSY ...``) and without what Redis wraps around an error inside a
    script (``@user_script: 48: -`` before it in Redis 6, ``script: <sha1>, on
    @user_script:48.`` after it in Redis 7)."""
    text = str(error).strip()
    if not isinstance(error, str):
        code = getattr(error, "status_code", None) or next(
            (code for kind, code in _ERROR_CODES.items() if isinstance(error, kind)), None)
        if code and not text.startswith(code):
            text = f"{code} {text}"
    while True:
        shorter = _SCRIPT_ERROR.sub("", text, count=1)
        if shorter == text:
            break
        text = shorter
    return text.strip()[:500]


def _category_bytes(category: str) -> bytes:
    """*category* as it is named in Redis keys (a query string's undecodable bytes as
    they came).

    :raises ValueError: for a category Redis cannot name: a lone surrogate from a JSON
        escape (``"\\udfff"``), which no byte string stands for uniquely.
    """
    try:
        return category.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ProtocolError(
            "category must be valid UTF-8 to be kept in Redis: it holds a lone surrogate"
        ) from None


def _fields(fields: Any) -> dict[bytes, bytes]:
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[::2], fields[1::2], strict=False))  # a Lua reply: a flat list


class _Reader:
    """One per process: blocks in ``XREAD`` on the streams that have local watchers.

    Each stream is read from the oldest position watched on it. A blocking ``XREAD``
    only says that something came (Redis 6 answers it with the one stream it woke on);
    the entries are read by a ``XREAD`` that does not block, which reads every stream
    at one instant. Each reply goes to the engine's listener as one batch in position
    order across streams; when a stream's reply was cut at ``count`` entries, the batch
    ends at the lowest position such a stream reached, and the rest is read again next
    time, so that a subscriber of several categories, whose one cursor moves to the
    newest event handed to it, never skips an event another stream holds below that
    cursor.

    Each entry names the one before it in its stream and the epoch of the counter: an
    entry whose predecessor the reader never read (pushed out of a category, trimmed
    before it could be read) or of another epoch (a Redis that lost its data) comes with
    a gap for its category, which the listener hands to the subscribers that had not
    seen it.

    The reader also keeps the newest events of each category it follows (at most the
    buffer size), with the position from which it holds every one: a read whose cursor
    is inside is answered from them (:meth:`held_after`), without Redis.
    """

    #: Entries read per stream in one ``XREAD``.
    count = 1000

    def __init__(self, engine: RedisEngine) -> None:
        self.engine = engine
        self.pid = os.getpid()
        self._lock = _allocate_lock()
        #: For each watched stream, the position the next ``XREAD`` starts after.
        self._positions: dict[str, Position] = {}
        #: For each watched stream, the position up to which it has been read.
        self._through: dict[str, Position] = {}
        #: For each watched stream, the newest events read, and the position from which
        #: the reader holds every one (``None``: not known).
        self._held: dict[str, list[tuple[Position, Event]]] = {}
        self._held_from: dict[str, Position | None] = {}
        #: For each watched stream, the epoch of the counter its entries had.
        self._epochs: dict[str, bytes | None] = {}
        self._watchers = WatchCounts()
        self._generation = 0
        self._stopped = False
        self._started = False
        self._client_id: int | None = None
        #: How many times the reader connected, and had checked Redis (:meth:`_connected`).
        self._connects = 0
        self._connections = 0
        self._checked = 0
        # No retry by redis-py on a new connection: every new connection is checked
        # first; a blocking XREAD's reply may take block_ms beyond the socket timeout.
        self._client = engine._connect(
            engine.url, engine.socket_timeout, retries=0, longer=engine.block_ms / 1000,
            on_connect=self._connect_made,
        )
        self._patched = is_module_patched("socket")
        self._work: Any = GeventEvent() if self._patched else _ThreadEvent()

    def newest_position(self, categories: Sequence[str]) -> Position | None:
        """The newest position read in *categories*, if every one of them is followed."""
        with self._lock:
            known = [self._through.get(category) for category in categories]
        if None in known:
            return None
        return max(known)  # type: ignore[type-var]

    def held_after(
        self, categories: Sequence[str], start: Position
    ) -> tuple[list[Event], Position] | None:
        """The events held after *start* in *categories*, and the position to wait from
        if there are none; ``None`` unless the reader holds every event after *start*."""
        runs = []
        with self._lock:
            through = []
            for category in categories:
                held_from = self._held_from.get(category)
                if held_from is None or start < held_from:
                    return None
                through.append(self._through[category])
                held = self._held[category]
                if held and held[-1][0] > start:
                    runs.append([entry for entry in held if entry[0] > start])
        return [event for _, event in merge_by_position(runs)], min(through)

    def watch(self, categories: Sequence[str], after: Position) -> int | None:
        """Follow *categories* from *after* on.

        :returns: ``None``, or the generation the reader must reach (see :meth:`interrupt`)
            for the new positions to be read.
        """
        restart = False
        epoch = self.engine.epoch
        with self._lock:
            self._watchers.add(categories)
            for category in categories:
                known = self._positions.get(category)
                if known is None:
                    self._through[category] = after
                    self._held[category] = []
                    self._held_from[category] = after
                    self._epochs[category] = epoch
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
                self._through.pop(category, None)
                self._held.pop(category, None)
                self._held_from.pop(category, None)
                self._epochs.pop(category, None)

    def interrupt(self, target: int) -> None:
        """End the ``XREAD`` in progress until the reader has reached generation *target*
        (taken its positions anew)."""
        for _ in range(200):
            if self._stopped or self._generation >= target:
                return
            client_id = self._client_id
            try:
                if client_id is not None and self.engine._call("CLIENT", "UNBLOCK", client_id):
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
                self.engine._client.client_unblock(client_id)

    def _run(self) -> None:
        backoff = 0.05
        failures = 0
        while not self._stopped:
            try:
                if self._client_id is None:
                    self._connected()
                self._read_once()
                backoff = 0.05
                if failures:
                    logger.warning("reading from Redis again after %d failures", failures)
                    failures = 0
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as error:
                # A lost connection, or an error reply (Redis busy with a script; a primary
                # demoted: "UNBLOCKED"): the connection is checked again after a pause.
                self._client_id = None
                pause = random.uniform(0, backoff)  # full jitter
                failures += 1
                if failures == 1 or backoff >= self.engine.max_backoff:
                    # the first failure, then about one line per max_backoff seconds
                    logger.warning("reading from Redis failed (%s); retrying", error)
                _sleep(pause)
                backoff = min(backoff * 2, self.engine.max_backoff)
            except Exception:  # never let the reader die: the waiters depend on it
                logger.exception("the Redis reader failed; retrying")
                _sleep(1.0)
        _close(self._client)

    def _connect_made(self, connection: Any) -> None:
        """redis-py made a new connection for the reader."""
        self._connects += 1

    def _check_connection(self) -> None:
        """Make sure every command since :meth:`_connected` went on the connection it
        checked.

        :raises redis.ConnectionError: if redis-py connected again meanwhile (to a Redis
            that may have lost data), so that the reader checks the new connection.
        """
        if self._connects != self._checked:
            raise redis.ConnectionError("the connection to Redis was made again")

    def _connected(self) -> None:
        """A new connection: check the epoch, which a Redis that lost its data changed."""
        first = self._client_id is None and not self._connections
        self._client_id = int(self._client.client_id())
        self._checked = self._connects
        self._connections += 1
        if not first:  # perhaps another Redis (a failover), or one restarted
            self.engine._resume(self._client.execute_command)
        epoch: Any = self._client.hget(self.engine._counter_key, "epoch")
        self._check_connection()
        if not first and (epoch is None or epoch != self.engine.epoch):
            # Events may be lost, unseen: hold nothing older than what is read next.
            with self._lock:
                for category in self._held_from:
                    self._held_from[category] = None
                    self._held[category] = []
        if epoch is not None:
            self.engine.epoch = epoch

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
        reply: Any = self._client.xread(streams, count=self.count)
        self._check_connection()
        if not reply:
            # Wait for something to come; then read every stream at one instant.
            self._client.xread(streams, count=1, block=engine.block_ms)
            return
        runs = {}
        gaps: list[tuple[Position, Gap]] = []
        epochs = self._epochs
        for stream_key, entries in reply:
            category = engine.category_of(stream_key)
            run = []
            before = starts[category]
            for entry_id, fields in entries:
                position = parse_position(entry_id)
                epoch = fields.get(b"e")
                if epoch is not None:
                    known = epochs.get(category)
                    if known is not None and known != epoch:  # Redis lost its data
                        gaps.append((epoch_floor(epoch), engine.gap(category, epoch_floor(epoch))))
                        engine.epoch = epoch
                    epochs[category] = epoch
                previous = fields.get(b"p")
                if previous:
                    floor = parse_position(previous)
                    if floor > before:  # entries were dropped before they could be read
                        gaps.append((floor, engine.gap(category, floor)))
                run.append((position, engine.event(category, entry_id, fields)))
                before = position
            runs[category] = run
        batch, reached = cut_batch(runs, self.count)
        high = batch[-1][0] if batch else None
        if high is not None:
            engine._note(high)
        size = engine.max_event_buffer_size
        with self._lock:
            for floor, gap in gaps:
                category = gap.category
                if category in self._held_from:
                    self._held_from[category] = floor
                    self._held[category] = []
            # Move on only where nobody asked for an older position meanwhile.
            for category, position in reached.items():
                if self._positions.get(category) == starts[category]:
                    self._positions[category] = position
            for category, run in runs.items():
                held = self._held.get(category)
                if held is None or not run:
                    continue
                held_from = self._held_from[category]
                if held_from is None:  # known again from the first entry read
                    held_from = self._held_from[category] = run[0][0]
                newest = held[-1][0] if held else held_from
                held += [entry for entry in run if entry[0] > newest and (
                    high is None or entry[0] <= high)]
                if len(held) > size:
                    self._held_from[category] = held[-size - 1][0]
                    del held[:-size]
            if high is not None:
                for category, start in starts.items():
                    through = self._through.get(category)
                    if through is not None and start <= through < high:
                        self._through[category] = high
        gaps = [(floor, gap) for floor, gap in gaps if high is None or floor <= high]
        if batch or gaps:
            engine._deliver(batch, gaps)


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
