"""HTTP long-polling pub/sub for WSGI applications and gevent, golongpoll-compatible.

The seed API (:class:`Server`, :func:`subscription`, :func:`publish` and their
dataclasses) mirrors the Go package ``long_polling``; :class:`LongpollManager` and
:class:`LongpollMiddleware` are the parts a WSGI application uses directly.
"""

import importlib
import logging
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .client.api import (
        PublishRequest,
        SubscriptionRequest,
        SubscriptionResponse,
        publish,
        subscription,
    )

#: The client's names load on first use: importing the server side (a gunicorn worker
#: does, before gevent patches the process) must not import requests and with it ssl.
_CLIENT_NAMES = frozenset(
    {"PublishRequest", "SubscriptionRequest", "SubscriptionResponse", "publish", "subscription"}
)


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        value = getattr(importlib.import_module(".client.api", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
