"""HTTP long-polling pub/sub for WSGI applications and gevent, golongpoll-compatible.

The seed API (:class:`Server`, :func:`subscription`, :func:`publish` and their
dataclasses) mirrors the Go package ``long_polling``; :class:`LongpollManager` and
:class:`LongpollMiddleware` are the parts a WSGI application uses directly.
"""

import logging

from .client.api import (
    PublishRequest,
    SubscriptionRequest,
    SubscriptionResponse,
    publish,
    subscription,
)
from .event import Event
from .manager import LongpollManager, ManagerClosed
from .server import FilePersistorInfo, Server, ServerInfo
from .wsgi.middleware import LongpollMiddleware

__version__ = "0.1.0.dev0"

__all__ = [
    "Event",
    "FilePersistorInfo",
    "LongpollManager",
    "LongpollMiddleware",
    "ManagerClosed",
    "PublishRequest",
    "Server",
    "ServerInfo",
    "SubscriptionRequest",
    "SubscriptionResponse",
    "publish",
    "subscription",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
