"""The applications the protocol suite (``tests/test_protocol_suite.py``) serves under
``gunicorn -k wsgi_longpoll.server.gunicorn.LongpollWorker``, and the options every
adapter of the suite is configured with, so that their answers can be compared.

Each application also answers ``GET /waiting?category=<name>`` with the number of
subscribers waiting on that category, so that a test in another process knows when a
long poll is parked.
"""

from __future__ import annotations

import os
from typing import Any

#: The longest ``timeout`` a subscriber may ask for.
MAX_TIMEOUT_SECONDS = 30
#: Events kept per category: small, so that a few publishes make a gap.
MAX_EVENT_BUFFER_SIZE = 3
#: The largest publish body, in bytes: small, so that a 413 is cheap to provoke, and
#: larger than a publish of a category of 1025 bytes (a 400).
MAX_BODY_SIZE = 2048
#: How many categories one subscribe may name.
MAX_CATEGORIES_PER_REQUEST = 3
#: The Redis the applications keep their events in (``None``: in memory), from the
#: environment their gunicorn runs in.
REDIS_URL = os.environ.get("PROTOCOL_SUITE_REDIS_URL") or None
#: The category the applications' authorization callbacks refuse.
SECRET = "secret"


def may_read(category: str) -> bool:
    """The Flask application's ``authorize_subscribe``: every category but :data:`SECRET`."""
    return category != SECRET


def can_read_category(user: Any, category: str) -> bool:
    """The Django project's ``CAN_READ_CATEGORY``: every category but :data:`SECRET`."""
    return may_read(category)


def can_publish(user: Any, category: str) -> bool:
    """The Django project's ``CAN_PUBLISH``: anyone may publish over HTTP."""
    return True
