"""How a server of this package stops: one shutdown for :class:`~wsgi_longpoll.Server`
and the gunicorn :class:`~wsgi_longpoll.server.gunicorn.LongpollWorker`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import gevent

from .http import HTTPServer
from .longpoll import LongpollRouter

__all__ = ["stop_serving"]

logger = logging.getLogger(__name__)


def stop_serving(servers: Sequence[HTTPServer], router: LongpollRouter, timeout: float,
                 tick: Callable[[], None] | None = None) -> None:
    """Stop *servers* in their hub: stop accepting, answer every parked subscriber at once
    (each manager a subscriber was parked on drains: long polls get their timeout answer,
    streams end), close idle keep-alive connections, give requests in progress up to
    *timeout* seconds, then end them.

    :param tick: called about every 50 ms while requests finish (gunicorn's heartbeat).
    """
    for server in servers:
        server.closing = True
        server.close()
    for manager in list(router.managers):
        manager.drain()
    gevent.sleep(0)  # let the released subscribers write their answers
    deadline = time.monotonic() + timeout
    for server in servers:
        server.close_idle_connections()
        while server.connections and time.monotonic() < deadline:
            if tick is not None:
                tick()
            gevent.sleep(0.05)
            server.close_idle_connections()
        if server.connections:
            logger.warning("shutdown timeout: ending %d connections still busy",
                           len(server.connections))
        server.pool.kill(block=True, timeout=1)
