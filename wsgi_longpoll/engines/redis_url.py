"""The Redis URLs the engine takes, read without redis-py.

Besides redis-py's own (``redis://``, ``rediss://``, ``unix://``), a primary that Redis
Sentinel watches is named by a ``redis+sentinel://`` URL (the form of the
``redis-sentinel-url`` package)::

    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/service_name[/db][?query]

The hosts are the sentinels (port 26379 by default), *service_name* the name they monitor
the primary under (``sentinel monitor <service_name> ...``), *db* the database number (0).
The username and password are the Redis servers'. The query may set ``socket_timeout``
and ``socket_connect_timeout`` (seconds, for the sentinels and the servers alike) and
``sentinel_password`` (for sentinels that require one: ``requirepass`` in their
configuration). The engine asks the sentinels for the primary's address, and asks again
whenever a connection to it fails, so that after a failover it writes to the promoted
replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["SENTINEL_SCHEME", "SentinelURL", "describe", "parse_sentinel_url", "url_problem"]

#: The scheme of a URL that names a primary watched by Redis Sentinel.
SENTINEL_SCHEME = "redis+sentinel"
#: The port of a sentinel whose URL names none.
DEFAULT_SENTINEL_PORT = 26379
#: What the query of a ``redis+sentinel://`` URL may set.
SENTINEL_QUERY = ("socket_timeout", "socket_connect_timeout", "sentinel_password")


@dataclass(frozen=True)
class SentinelURL:
    """A ``redis+sentinel://`` URL, read."""

    #: The sentinels' ``(host, port)``.
    sentinels: tuple[tuple[str, int], ...]
    #: The name the sentinels monitor the primary under.
    service_name: str
    #: The database number.
    db: int = 0
    #: The Redis servers' username and password.
    username: str | None = None
    password: str | None = None
    #: The sentinels' password (``sentinel_password=`` in the query).
    sentinel_password: str | None = None
    #: Seconds a command and a connection may take (``socket_timeout=``,
    #: ``socket_connect_timeout=``); ``None``: the engine's.
    socket_timeout: float | None = None
    socket_connect_timeout: float | None = None

    def __str__(self) -> str:
        """The URL without its passwords."""
        hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                         for host, port in self.sentinels)
        return f"{SENTINEL_SCHEME}://{hosts}/{self.service_name}/{self.db}"


def parse_sentinel_url(url: str) -> SentinelURL | None:
    """*url* read, if it is a ``redis+sentinel://`` URL, else ``None``.

    :raises ValueError: naming what is wrong, for a ``redis+sentinel://`` URL that is not
        well formed.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() != SENTINEL_SCHEME:
        return None
    netloc, _, path = rest.partition("/")
    path, _, query = path.partition("?")
    path = path.partition("#")[0]
    username = password = None
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_and_port(part) for part in hosts.split(","))
    names = [unquote(part) for part in path.split("/")]
    if not names[0]:
        raise ValueError("names no service: redis+sentinel://host:port/service_name[/db]")
    if len(names) > 2 or (len(names) == 2 and not names[1].isdigit()):
        raise ValueError(
            f"has the path {'/' + path!r}: it must be /service_name or /service_name/db"
        )
    settings = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(settings) - set(SENTINEL_QUERY))
    if unknown:
        raise ValueError(f"sets {', '.join(unknown)} in its query: it may set "
                         f"{', '.join(SENTINEL_QUERY)}")
    timeouts = {name: _seconds(name, settings[name])
                for name in ("socket_timeout", "socket_connect_timeout") if name in settings}
    return SentinelURL(
        sentinels, names[0], int(names[1]) if len(names) == 2 else 0, username, password,
        settings.get("sentinel_password") or None, **timeouts,
    )


def _host_and_port(text: str) -> tuple[str, int]:
    if text.startswith("["):  # an IPv6 address
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"names a sentinel without a host ({text!r}): "
                         "redis+sentinel://host:port[,host:port...]/service_name")
    if not port:
        return host, DEFAULT_SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"names a sentinel with the port {port!r}: a number from 1 to 65535")
    return host, int(port)


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"sets {name} to {text!r}: a number of seconds more than 0")
    return value


def url_problem(url: str) -> str | None:
    """What is wrong with the Redis URL *url* (the check of the ``redis_url`` option),
    or ``None``."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError:  # an IPv6 address not well formed
        scheme = ""
    if scheme in ("redis", "rediss", "unix"):
        return None
    try:
        if parse_sentinel_url(url) is not None:
            return None
    except ValueError as error:
        return f"{error}, not {describe(url)!r}"
    return (f"must be a redis://, rediss://, unix:// or redis+sentinel:// URL, "
            f"not {describe(url)!r}")


def describe(url: str) -> str:
    """*url* with its passwords left out, to show in messages."""
    try:
        sentinel = parse_sentinel_url(url)
    except ValueError:
        sentinel = None
    if sentinel is not None:
        return str(sentinel)
    scheme, separator, rest = url.partition("://")
    userinfo, at, _ = rest.partition("/")[0].rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}{separator}{user}:***@{rest[len(userinfo) + 1:]}"
