"""The command line: ``wsgi-longpoll serve`` runs the standalone server."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TypeVar

from . import __version__
from .errors import EventsLost
from .server import FilePersistorInfo, Server, ServerInfo, ServerOptions
from .wsgi.auth import bearer_token
from .wsgi.demo import DemoApp

__all__ = ["main"]

logger = logging.getLogger("wsgi_longpoll.cli")

#: The environment variable read for the publish token when --publish-token is not given.
PUBLISH_TOKEN_ENV = "WSGI_LONGPOLL_PUBLISH_TOKEN"

#: Every ``serve`` option that is a :class:`ServerOptions` field has that field's name as
#: its ``dest`` and its default from here: the server's definition is the one definition.
DEFAULTS = ServerOptions()
#: :class:`ServerOptions` fields the command line does not set (Python objects).
NOT_ON_THE_COMMAND_LINE = frozenset({"app", "before_stats"})


class _ShutdownRequested(Exception):
    pass


T = TypeVar("T", int, float)


def _number(kind: Callable[[str], T], least: float, *, inclusive: bool) -> Callable[[str], T]:
    """An argparse type: a *kind* of number, at least (or more than) *least*."""
    bound = f"at least {least:g}" if inclusive else f"more than {least:g}"

    def parse(text: str) -> T:
        value = kind(text)
        if not (value >= least if inclusive else value > least):
            raise argparse.ArgumentTypeError(f"must be {bound}, not {text}")
        return value

    return parse


_positive_int = _number(int, 1, inclusive=True)
_non_negative_int = _number(int, 0, inclusive=True)
_positive_float = _number(float, 0, inclusive=False)
_non_negative_float = _number(float, 0, inclusive=True)


def _bytes_or_none(text: str) -> int | None:
    """0 means no bound (``None``)."""
    return _non_negative_int(text) or None


def _seconds_or_none(text: str) -> float | None:
    """0 means no limit (``None``)."""
    return _non_negative_float(text) or None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except a flag's: ``--no-demo (default: True)`` reads
    backwards (the default is to serve the demo)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsgi-longpoll",
        description="HTTP long-polling pub/sub, golongpoll-compatible.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the standalone long-polling server",
        description="Run the standalone long-polling server until SIGINT or SIGTERM, "
        "which answer every waiting subscriber, flush the persistence file and exit 0 "
        "(1 if acknowledged events could not be written).",
        formatter_class=_HelpFormatter,
    )
    listen = serve.add_argument_group("listening (ServerInfo)")
    listen.add_argument(
        "--address", default="127.0.0.1:8080",
        help="host:port to listen on; ':8080' listens on every interface, '[::1]:8080' on "
        "IPv6 loopback, port 0 on any free port",
    )
    listen.add_argument(
        "--timeout-seconds", type=int, default=110,
        help="the longest long-poll 'timeout' a client may ask for (0 means 110)",
    )
    listen.add_argument("--subscription-uri", default="/events",
                        help="path of the subscribe endpoint (GET)")
    listen.add_argument("--publish-uri", default="/publish",
                        help="path of the publish endpoint (POST); it is open to anyone "
                        "who can reach the server unless --publish-token is given")
    listen.add_argument("--max-body-size", type=_positive_int, default=DEFAULTS.max_body_size,
                        help="largest publish body accepted, in bytes (larger: 413)")
    listen.add_argument("--max-request-body-size", type=_positive_int,
                        default=DEFAULTS.max_request_body_size,
                        help="largest body of a request to any other path, in bytes "
                        "(larger: 413)")
    listen.add_argument("--max-categories-per-request", type=_positive_int,
                        default=DEFAULTS.max_categories_per_request,
                        help="how many categories one subscribe may name with the "
                        "'categories' extension")
    listen.add_argument("--sse-keepalive-seconds", type=_positive_float,
                        default=DEFAULTS.sse_keepalive_seconds,
                        help="how often an idle Server-Sent Events stream gets a keep-alive "
                        "comment")
    listen.add_argument("--sse-retry-ms", type=_non_negative_int,
                        default=DEFAULTS.sse_retry_ms,
                        help="how long a stream tells browsers to wait before reconnecting")
    events = serve.add_argument_group("events (LongpollManager)")
    events.add_argument("--buffer-size", dest="max_event_buffer_size", type=_positive_int,
                        default=DEFAULTS.max_event_buffer_size,
                        help="events kept per category; the oldest go first")
    events.add_argument("--ttl-seconds", dest="event_time_to_live_seconds",
                        type=_seconds_or_none, default=DEFAULTS.event_time_to_live_seconds,
                        help="events older than this are never served (0 or None: kept for "
                        "ever)")
    events.add_argument("--max-buffered-bytes", type=_bytes_or_none,
                        default=DEFAULTS.max_buffered_bytes,
                        help="the most bytes of events held in memory; beyond it the oldest "
                        "of all go first, with the gap signal (0: no bound)")
    events.add_argument("--delete-after-first-retrieval",
                        dest="delete_event_after_first_retrieval", action="store_true",
                        help="remove an event from its buffer once it has been served")
    persist = serve.add_argument_group("file persistence (FilePersistorInfo)")
    persist.add_argument("--persist-file", metavar="FILE_NAME", default="",
                         help="append events to FILE_NAME and read them back on start "
                         "(off when not given)")
    persist.add_argument("--write-buffer-size", type=_positive_int, default=4096,
                         help="bytes buffered before a write to the file")
    persist.add_argument("--write-flush-period-seconds", type=float, default=1.0,
                         help="the longest an accepted event may sit unwritten")
    persist.add_argument("--fsync", action="store_true",
                         help="fsync the file at each flush: a power loss then loses no more "
                         "than a crash does, at the cost of one disk sync per flush")
    persist.add_argument("--persist-ack-after-write", action="store_true",
                         help="answer a publish only once its event is written (and synced, "
                         "with --fsync); concurrent publishes share one write: a crash then "
                         "loses no acknowledged event")
    shared = serve.add_argument_group("several processes and hosts (Redis)")
    shared.add_argument("--redis-url", metavar="URL", default=DEFAULTS.redis_url,
                        help="keep the events in Redis Streams at URL (e.g. "
                        "redis://127.0.0.1:6379/0), shared with every server pointed at it; "
                        "in this process when not given")
    shared.add_argument("--redis-key-prefix", metavar="PREFIX",
                        default=DEFAULTS.redis_key_prefix,
                        help="put before every Redis key, so that several applications "
                        "share one Redis")
    limits = serve.add_argument_group("limits (each answered with a JSON error)")
    limits.add_argument("--max-categories", type=_positive_int,
                        default=DEFAULTS.max_categories,
                        help="categories that may hold events at once (more: 503)")
    limits.add_argument("--max-waiting-subscribers", type=_positive_int,
                        default=DEFAULTS.max_waiting_subscribers,
                        help="subscribers that may wait at once (more: 503); None: the "
                        "open-files limit (ulimit -n) less some headroom")
    limits.add_argument("--header-timeout", type=_seconds_or_none,
                        default=DEFAULTS.header_timeout,
                        help="seconds a client has to send its request line and headers, "
                        "also the longest a keep-alive connection may idle (0: no limit)")
    limits.add_argument("--body-timeout", type=_seconds_or_none,
                        default=DEFAULTS.body_timeout,
                        help="seconds a client has to send a request body once its headers "
                        "are in (longer: 408; 0: no limit)")
    security = serve.add_argument_group("security and cross-origin use")
    security.add_argument("--publish-token", metavar="TOKEN", default=None,
                          help="require 'Authorization: Bearer TOKEN' to publish; better "
                          f"given in the environment variable {PUBLISH_TOKEN_ENV}, which "
                          "other users cannot see in the process list")
    security.add_argument("--cors-origin", dest="cors_origins", metavar="ORIGIN",
                          action="append", default=list(DEFAULTS.cors_origins),
                          help="let pages on ORIGIN (e.g. https://app.example.com, or '*') "
                          "subscribe and publish across origins; repeat for several")
    security.add_argument("--cors-allow-credentials", action="store_true",
                          help="let those pages send cookies and HTTP authentication")
    ops = serve.add_argument_group("operations")
    ops.add_argument("--stats-path", metavar="PATH", default=DEFAULTS.stats_path,
                     help="serve statistics as JSON at PATH, e.g. /stats (off when not given)")
    ops.add_argument("--metrics-path", metavar="PATH", default=DEFAULTS.metrics_path,
                     help="serve statistics in the Prometheus text format at PATH, "
                     "e.g. /metrics (off when not given)")
    ops.add_argument("--health-path", metavar="PATH", default=DEFAULTS.health_path,
                     help="serve a health check for load balancers at PATH, e.g. /healthz "
                     "(off when not given)")
    ops.add_argument("--shutdown-timeout", type=_non_negative_float, default=10.0,
                     help="seconds that requests in progress get to finish on shutdown")
    ops.add_argument("--log-level", default="INFO",
                     choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                     help="level of the log written to standard error")
    ops.add_argument("--no-access-log", dest="access_log", action="store_false",
                     help="do not log each request")
    ops.add_argument("--no-demo", dest="demo", action="store_false",
                     help="do not serve the chat demo at / and the browser client under "
                     "/static/ (every other path then answers 404)")
    return parser


def _serve(args: argparse.Namespace) -> int:
    demo = None
    if args.demo:
        demo = DemoApp(
            args.subscription_uri,
            args.publish_uri,
            timeout_seconds=min(45, args.timeout_seconds or 110),
        )
    server = Server(server_options(args), app=demo)
    token = args.publish_token or os.environ.get(PUBLISH_TOKEN_ENV, "")
    persistence = FilePersistorInfo(
        use=bool(args.persist_file),
        file_name=args.persist_file,
        write_buffer_size=args.write_buffer_size,
        write_flush_period_seconds=args.write_flush_period_seconds,
        fsync=args.fsync,
        acknowledge_after_write=args.persist_ack_after_write,
    )
    info = ServerInfo(
        address=args.address,
        timeout_seconds=args.timeout_seconds,
        subscription_uri=args.subscription_uri,
        publish_uri=args.publish_uri,
        handler_to_run_before_publish=bearer_token(token) if token else None,
    )
    try:
        server.start(info, persistence)
    except (OSError, ValueError) as error:
        logger.error("cannot start: %s", error)
        return 1

    def request_shutdown(signum: int, frame: FrameType | None) -> None:
        raise _ShutdownRequested(signal.Signals(signum).name)

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, request_shutdown) for sig in signals}
    print(
        f"wsgi-longpoll: subscribe at http://{_display_host(args.address)}:{server.port}"
        f"{args.subscription_uri}, publish at {args.publish_uri}; Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    if demo is not None:
        print(
            f"wsgi-longpoll: chat demo at http://{_display_host(args.address)}:{server.port}/",
            file=sys.stderr,
            flush=True,
        )
    try:
        try:
            server.serve_forever()
        except _ShutdownRequested as reason:
            logger.info("%s received: draining for up to %.1f s", reason, args.shutdown_timeout)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            server.stop(args.shutdown_timeout)
    except EventsLost as lost:
        logger.error("stopped, but %s", lost)
        return 1
    logger.info("stopped")
    return 0


def server_options(args: argparse.Namespace) -> ServerOptions:
    """The :class:`ServerOptions` that parsed ``serve`` arguments give (each field from the
    argument of the same name)."""
    return ServerOptions(**{
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(ServerOptions)
        if field.name not in NOT_ON_THE_COMMAND_LINE
    })


def _display_host(address: str) -> str:
    host = address.rpartition(":")[0]
    return host or "127.0.0.1"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
