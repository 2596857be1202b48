"""The command line: ``wsgi-longpoll serve`` runs the standalone server."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, TypeVar

from . import __version__, multiprocess
from .budget import BudgetOptions
from .endpoints import EndpointOptions
from .engines.options import EngineOptions, MemoryOptions, RedisOptions
from .errors import EventsLost
from .manager import ManagerOptions
from .options import Option, convert, options_of
from .server import (
    FD_PREFIX,
    FilePersistorInfo,
    Server,
    ServerInfo,
    ServerOptions,
    inherited_socket,
    parse_address,
)
from .server.supervisor import REUSE_PORT, Supervisor, bind
from .wsgi.answers import Hook
from .wsgi.auth import bearer_token
from .wsgi.cors import CORSOptions
from .wsgi.demo import DemoApp

__all__ = ["main"]

logger = logging.getLogger("wsgi_longpoll.cli")

#: The environment variable read for the publish token when --publish-token is not given.
PUBLISH_TOKEN_ENV = "WSGI_LONGPOLL_PUBLISH_TOKEN"
#: The environment variables read for the subscribe secrets when their flags are not
#: given (the environment, unlike the process list, is not for every user to see).
SECRET_ENVIRONMENT = {
    "subscribe_secret": "WSGI_LONGPOLL_SUBSCRIBE_SECRET",
    "subscribe_secret_previous": "WSGI_LONGPOLL_SUBSCRIBE_SECRET_PREVIOUS",
}

#: The help section of the flags of each class of options. Every option of
#: :class:`ServerInfo` and :class:`ServerOptions` is a flag named after it
#: (:attr:`Option.flag`), with its default, check and help (:mod:`wsgi_longpoll.options`).
SECTIONS = {
    ServerInfo: "listening (ServerInfo)",
    EngineOptions: "events (MemoryOptions)",
    MemoryOptions: "events (MemoryOptions)",
    RedisOptions: "several processes and hosts (RedisOptions)",
    ManagerOptions: "subscribers (ManagerOptions)",
    BudgetOptions: "memory (BudgetOptions)",
    EndpointOptions: "endpoints (EndpointOptions)",
    CORSOptions: "security and cross-origin use (CORSOptions)",
    ServerOptions: "the server (ServerOptions)",
}


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
_non_negative_float = _number(float, 0, inclusive=True)


def _option_type(item: Option) -> Callable[[str], Any]:
    """An argparse type: the text of a flag as the option *item* takes it."""

    def parse(text: str) -> Any:
        try:
            return convert(item, text, "the value")
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = item.name  # what argparse names in its own errors
    return parse


class _Items(argparse.Action):
    """A list option: each use adds items (several, separated with commas), and the first
    replaces the default."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest)
        items = [] if current is self.default else list(current)
        setattr(namespace, self.dest, (*items, *values))


def _add_option(group: argparse._ArgumentGroup, item: Option) -> None:
    """The flag of the option *item* (its aliases too), stored under its field's name.

    A switch's help is a verb phrase ("log each request"): ``--no-access-log`` turns off
    one that is on by default, and says "do not".
    """
    flags = [item.flag, *item.spec.aliases]
    if bool in item.kinds:
        group.add_argument(*flags, dest=item.attribute,
                           action="store_false" if item.default else "store_true",
                           help=f"do not {item.help}" if item.default else item.help)
        return
    metavar = item.spec.metavar
    if metavar is None:
        seconds = item.name.endswith(("_seconds", "_timeout"))
        metavar = "SECONDS" if seconds else "N" if int in item.kinds else None
    if tuple in item.kinds:
        group.add_argument(*flags, dest=item.attribute, action=_Items, default=item.default,
                           type=_option_type(item), metavar=metavar,
                           help=f"{item.help}; repeat it, or separate with commas")
    else:
        group.add_argument(*flags, dest=item.attribute, default=item.default,
                           type=_option_type(item), metavar=metavar, help=item.help)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except a flag's: ``--no-demo (default: True)`` reads
    backwards (the default is to serve the demo); a list's as its items."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0:
            return action.help
        if isinstance(action.default, tuple):
            shown = ", ".join(action.default) or "none"
            return f"{action.help} (default: {shown})"
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
    sections = {title: serve.add_argument_group(title) for title in dict.fromkeys(
        SECTIONS.values())}
    listen = sections[SECTIONS[ServerInfo]]
    listen.add_argument(
        "--address", default="127.0.0.1:8080",
        help="host:port to listen on; ':8080' listens on every interface, '[::1]:8080' on "
        "IPv6 loopback, port 0 on any free port",
    )
    for item in options_of(ServerInfo).values():
        _add_option(listen, item)
    for item in options_of(ServerOptions).values():
        _add_option(sections[SECTIONS[item.owner]], item)
    persist = serve.add_argument_group("file persistence (FilePersistorInfo)")
    persist.add_argument("--persist-file", metavar="FILE_NAME", default="",
                         help="append events to FILE_NAME and read them back on start "
                         "(off when not given)")
    persist.add_argument("--write-buffer-size", type=_positive_int,
                         default=FilePersistorInfo.write_buffer_size,
                         help="bytes buffered before a write to the file")
    persist.add_argument("--write-flush-period-seconds", type=float,
                         default=FilePersistorInfo.write_flush_period_seconds,
                         help="the longest an accepted event may sit unwritten")
    persist.add_argument("--fsync", action="store_true",
                         help="fsync the file at each flush: a power loss then loses no more "
                         "than a crash does, at the cost of one disk sync per flush")
    persist.add_argument("--persist-ack-after-write", action="store_true",
                         help="answer a publish only once its event is written (and synced, "
                         "with --fsync); concurrent publishes share one write: a crash then "
                         "loses no acknowledged event")
    security = sections[SECTIONS[CORSOptions]]
    security.add_argument("--publish-token", metavar="TOKEN", default=None,
                          help="require 'Authorization: Bearer TOKEN' to publish; better "
                          f"given in the environment variable {PUBLISH_TOKEN_ENV}, which "
                          "other users cannot see in the process list")
    ops = sections[SECTIONS[ServerOptions]]
    ops.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                     help="serve from N processes that share the address, each with its "
                     "own gevent hub (a supervisor restarts a worker that dies and drains "
                     "them all on SIGTERM or SIGINT); more than 1 needs --redis-url, so "
                     "that every process serves the same events")
    ops.add_argument("--shutdown-timeout", type=_non_negative_float, default=10.0,
                     help="seconds that requests in progress get to finish on shutdown")
    ops.add_argument("--log-level", default="INFO",
                     choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                     help="level of the log written to standard error")
    ops.add_argument("--no-demo", dest="demo", action="store_false",
                     help="do not serve the chat demo at / and the browser client under "
                     "/static/ (every other path then answers 404)")
    return parser


def _serve(args: argparse.Namespace) -> int:
    if args.workers > 1:
        return _supervise(args)
    server = _start(args, args.address)
    if server is None:
        return 1
    return _run(server, args, ready=lambda: _announce(args, server.port))


def _start(args: argparse.Namespace, address: str) -> Server | None:
    """A server started on *address* as *args* say; ``None`` (logged) if it cannot start."""
    demo = None
    if args.demo:
        demo = DemoApp(
            args.subscription_uri,
            args.publish_uri,
            timeout_seconds=min(45, args.timeout_seconds
                                or ManagerOptions.max_longpoll_timeout_seconds),
        )
    token = args.publish_token or os.environ.get(PUBLISH_TOKEN_ENV, "")
    persistence = FilePersistorInfo(
        use=bool(args.persist_file),
        file_name=args.persist_file,
        write_buffer_size=args.write_buffer_size,
        write_flush_period_seconds=args.write_flush_period_seconds,
        fsync=args.fsync,
        acknowledge_after_write=args.persist_ack_after_write,
    )
    info = server_info(args, bearer_token(token) if token else None)
    info.address = address
    try:
        server = Server(server_options(args), app=demo)  # checks across options
        server.start(info, persistence)
    except (OSError, ValueError) as error:
        logger.error("cannot start: %s", error)
        return None
    return server


def _announce(args: argparse.Namespace, port: int, workers: int = 1) -> None:
    if (args.subscribe_secret and args.publish_uri is not None
            and not (args.publish_token or os.environ.get(PUBLISH_TOKEN_ENV))):
        logger.warning(
            "subscribers need a token (--subscribe-secret), but anyone who reaches this "
            "server can publish at %s: guard it with --publish-token, or turn it off with "
            "--publish-uri '' when the application publishes to Redis itself",
            args.publish_uri,
        )
    processes = f" ({workers} processes)" if workers > 1 else ""
    publish = "no publish path" if args.publish_uri is None else f"publish at {args.publish_uri}"
    print(
        f"wsgi-longpoll: subscribe at http://{_display_host(args.address)}:{port}"
        f"{args.subscription_uri}, {publish}{processes}; Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    if args.demo:
        print(
            f"wsgi-longpoll: chat demo at http://{_display_host(args.address)}:{port}/",
            file=sys.stderr,
            flush=True,
        )


def _run(server: Server, args: argparse.Namespace,
         parent_alive: Callable[[], bool] | None = None,
         ready: Callable[[], None] | None = None) -> int:
    """Serve until SIGINT or SIGTERM (a worker: SIGTERM, or its supervisor's end), then
    drain; the exit status.

    :param parent_alive: in a worker of ``--workers``: whether its supervisor still runs.
        A worker ignores SIGINT (the supervisor passes a stop on as SIGTERM) and any signal
        while it drains; a lone server restores the previous handlers as it drains, so that
        a second Ctrl-C ends it at once.
    :param ready: called once the stop signals are handled (to say the server is ready).
    """

    def request_shutdown(signum: int, frame: FrameType | None) -> None:
        raise _ShutdownRequested(signal.Signals(signum).name)

    worker = parent_alive is not None
    signals = (signal.SIGTERM,) if worker else (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, request_shutdown) for sig in signals}
    try:
        try:
            if ready is not None:  # said once a stop signal drains the server
                ready()
            if parent_alive is None:
                server.serve_forever()
            else:
                while server.running:
                    time.sleep(Supervisor.parent_check_interval)
                    if not parent_alive():
                        logger.error("the supervisor is gone: stopping")
                        break
        except _ShutdownRequested as reason:
            logger.info("%s received: draining for up to %.1f s", reason, args.shutdown_timeout)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_IGN if worker else handler)
            server.stop(args.shutdown_timeout)
    except EventsLost as lost:
        logger.error("stopped, but %s", lost)
        return 1
    logger.info("stopped")
    return 0


def _supervise(args: argparse.Namespace) -> int:
    """``serve --workers N``: bind once, run N workers on the socket, drain them on a signal."""
    if args.redis_url is None:
        reason = multiprocess.several_processes_reason(f"--workers {args.workers}")
        if not multiprocess.allowed():
            logger.error("cannot start: %s Or set %s=1 if every process is meant to keep "
                         "events of its own.", reason, multiprocess.ALLOW_VARIABLE)
            return 1
        logger.warning("%s Going on: %s is set.", reason, multiprocess.ALLOW_VARIABLE)
    reuse_port = REUSE_PORT and not args.address.startswith(FD_PREFIX)
    try:
        server_options(args)  # refuse invalid options before any process starts
        if args.address.startswith(FD_PREFIX):
            held = inherited_socket(args.address)
        else:
            host, port = parse_address(args.address)
            # With SO_REUSEPORT, the supervisor's socket only holds the port.
            held = bind(host, port, backlog=None if reuse_port else 4096,
                        reuse_port=reuse_port)
    except (OSError, ValueError) as error:
        logger.error("cannot start: %s", error)
        return 1
    port = held.getsockname()[1]

    def work(ready: Callable[[], None]) -> int:
        listener = bind(host, port, reuse_port=True) if reuse_port else held
        server = _start(args, f"{FD_PREFIX}{listener.fileno()}")
        if server is None:
            return 1
        ready()
        return _run(server, args, parent_alive=supervisor.parent_alive)

    supervisor = Supervisor(args.workers, work, shutdown_timeout=args.shutdown_timeout,
                            on_ready=lambda: _announce(args, port, args.workers))
    try:
        status = supervisor.run()
    finally:
        held.close()
    if status:
        logger.error("stopped: a worker's exit status was %d", status)
    else:
        logger.info("stopped")
    return status


def server_options(args: argparse.Namespace) -> ServerOptions:
    """The :class:`ServerOptions` that parsed ``serve`` arguments give (each option from
    the argument of the same name)."""
    return ServerOptions(**{
        item.attribute: getattr(args, item.attribute)
        for item in options_of(ServerOptions).values()
    })


def server_info(args: argparse.Namespace, before_publish: Hook | None = None) -> ServerInfo:
    """The :class:`ServerInfo` that parsed ``serve`` arguments give, with the publish hook
    *before_publish*."""
    return ServerInfo(
        address=args.address,
        handler_to_run_before_publish=before_publish,
        **{item.attribute: getattr(args, item.attribute)
           for item in options_of(ServerInfo).values()},
    )


def _display_host(address: str) -> str:
    host = address.rpartition(":")[0]
    return host or "127.0.0.1"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for item in options_of(EndpointOptions).values():
        variable = SECRET_ENVIRONMENT.get(item.name)
        if variable and getattr(args, item.attribute) is None and os.environ.get(variable):
            try:
                setattr(args, item.attribute, convert(item, os.environ[variable], variable))
            except ValueError as error:
                parser.error(str(error))
    # Several processes log to one stream: each line says which.
    process = "[%(process)d] " if args.workers > 1 else ""
    logging.basicConfig(
        level=args.log_level,
        format=f"%(asctime)s {process}%(levelname)s %(name)s: %(message)s",
    )
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
