"""A Flask application whose long polls are served by several gunicorn workers sharing Redis.

Every worker process builds its own :class:`~wsgi_longpoll.LongpollManager` on the same
Redis (``REDIS_URL``), so an event published to any worker, or by any host pointed at
the same Redis, reaches the subscribers of every worker::

    REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -c examples/gunicorn/gunicorn.conf.py \\
        --chdir examples/gunicorn app:app

See README.md next to this file.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request

from wsgi_longpoll import LongpollManager, LongpollMiddleware

__all__ = ["app", "create_app"]

#: The category ``POST /notify`` publishes to.
CATEGORY = "notifications"


def create_app(redis_url: str, key_prefix: str = "example:") -> Flask:
    """The Flask app, with ``/events`` and ``/publish`` answered from Redis."""
    app = Flask(__name__)
    manager = LongpollManager(
        max_event_buffer_size=500,
        event_time_to_live_seconds=3600,
        redis_url=redis_url,
        redis_key_prefix=key_prefix,
    )

    @app.get("/")
    def index() -> dict[str, object]:
        return {"worker_pid": os.getpid(), "subscribe": "/events?category=notifications&timeout=60"}

    @app.post("/notify")
    def notify() -> object:
        # Publishing from Python: acknowledged by Redis when this returns.
        event = manager.publish(CATEGORY, request.get_json(force=True))
        return jsonify(id=event.id, timestamp=event.timestamp, worker_pid=os.getpid())

    app.wsgi_app = LongpollMiddleware(app.wsgi_app, manager)  # type: ignore[method-assign]
    return app


app = create_app(
    os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("REDIS_KEY_PREFIX", "example:"),
)
