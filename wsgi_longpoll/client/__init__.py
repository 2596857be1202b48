"""The client side: the seed's :func:`subscription` and :func:`publish` on requests, and
:class:`Follower`, which follows categories for as long as you like.

Nothing here imports the server side.
"""

from .api import (
    SUBSCRIPTION_TIMEOUT_MARGIN_SECONDS,
    ClientError,
    Header,
    InvalidResponse,
    PublishRequest,
    SubscriptionRequest,
    SubscriptionResponse,
    Transport,
    publish,
    subscription,
)
from .follower import Backoff, Cursor, Follower, GapDetected, SubscriptionRejected

__all__ = [
    "SUBSCRIPTION_TIMEOUT_MARGIN_SECONDS",
    "Backoff",
    "ClientError",
    "Cursor",
    "Follower",
    "GapDetected",
    "Header",
    "InvalidResponse",
    "PublishRequest",
    "SubscriptionRejected",
    "SubscriptionRequest",
    "SubscriptionResponse",
    "Transport",
    "publish",
    "subscription",
]
