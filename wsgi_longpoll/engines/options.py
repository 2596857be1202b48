"""The engines' options, each defined once (see :mod:`wsgi_longpoll.options`).

Importable without any engine's dependencies (redis-py), so that the command line and
the framework integrations know every option.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import at_least, check_options, more_than, option
from .redis_url import url_problem

__all__ = ["EngineOptions", "MemoryOptions", "RedisOptions"]


@dataclass(frozen=True, kw_only=True)
class EngineOptions:
    """The options every engine has.

    :raises TypeError: naming the option, for a value of the wrong type.
    :raises ValueError: naming the option, for a value out of range.
    """

    max_event_buffer_size: int = option(
        250, check=at_least(1), aliases=["--buffer-size"],
        help="events kept per category; the oldest go first",
    )
    event_time_to_live_seconds: float | None = option(
        None, check=at_least(0), zero_means_none=True, aliases=["--ttl-seconds"],
        help="events older than this (in seconds) are never served, and are purged; "
        "None (or 0): kept for ever",
    )
    max_categories: int = option(
        100_000, check=at_least(1),
        help="categories that may hold events at once: a new one pushes out the one "
        "published to least recently that nobody waits on (its subscribers get the gap "
        "signal); when every one has subscribers waiting, a publish to one more is refused "
        "(503)",
    )

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True, kw_only=True)
class MemoryOptions(EngineOptions):
    """The options of :class:`~wsgi_longpoll.engines.memory.MemoryEngine`."""

    delete_event_after_first_retrieval: bool = option(
        False, aliases=["--delete-after-first-retrieval"],
        help="remove an event from its buffer once it has been served (golongpoll's "
        "option; not with Redis)",
    )


@dataclass(frozen=True, kw_only=True)
class RedisOptions(EngineOptions):
    """The options of :class:`~wsgi_longpoll.engines.redis.RedisEngine`."""

    url: str | None = option(
        None, name="redis_url", check=url_problem, metavar="URL",
        help="keep the events in Redis Streams at this URL (e.g. redis://127.0.0.1:6379/0, "
        "or redis+sentinel://host:26379,host:26379/service_name for the primary Sentinel "
        "watches), shared by every process and host pointed at it; None: in this process's "
        "memory",
    )
    key_prefix: str = option(
        "wsgi_longpoll:", name="redis_key_prefix", metavar="PREFIX",
        help="put before every Redis key, so that several applications share one Redis",
    )
    min_replicas: int = option(
        0, name="redis_min_replicas", check=at_least(0), metavar="K",
        help="acknowledge a publish only once K replicas of the Redis primary have it "
        "(Redis WAIT), so that a failover loses no acknowledged event; too few in time: "
        "503, the event stored on the primary but perhaps not kept by a failover; 0: "
        "once the primary has it",
    )
    replica_timeout: float = option(
        1.0, name="redis_replica_timeout", check=more_than(0), metavar="SECONDS",
        help="how long a publish waits for redis_min_replicas replicas to confirm it "
        "(Redis WAIT), in seconds; the reply is waited for this long beyond the socket "
        "timeout",
    )
