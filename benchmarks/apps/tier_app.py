"""The application of ``benchmarks/tier.py``: a Flask app under ``flask run`` (threads,
no gevent) that issues subscribe tokens and publishes to Redis, while a long-poll tier
(``wsgi-longpoll serve --workers 2 --redis-url ... --subscribe-secret ...``) holds the
subscribers.

It serves no long poll itself (both paths are ``None``). A real application would log
the user in before it hands out a token; this one gives any ``user`` the token of its
own channel and of ``news``.

Read from the environment: ``TIER_REDIS_URL`` and ``WSGI_LONGPOLL_SUBSCRIBE_SECRET``.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request

from wsgi_longpoll.contrib.flask import LongPoll

app = Flask(__name__)
app.config.update(
    LONGPOLL_REDIS_URL=os.environ["TIER_REDIS_URL"],
    LONGPOLL_REDIS_KEY_PREFIX="tier:",
    LONGPOLL_SUBSCRIBE_SECRET=os.environ["WSGI_LONGPOLL_SUBSCRIBE_SECRET"],
    LONGPOLL_SUBSCRIPTION_PATH=None,
    LONGPOLL_PUBLISH_PATH=None,
)
longpoll = LongPoll(app)


@app.get("/token")
def token() -> str:
    """A token for ``news`` and the user's own channel, for ten minutes."""
    user = request.args["user"]
    return longpoll.subscribe_token(["news", f"user-{user}"], 600, subject=user)


@app.post("/announce")
def announce() -> dict[str, Any]:
    """Publish the JSON body to ``news`` (to Redis: the tier's subscribers get it)."""
    event = longpoll.publish("news", request.get_json())
    return {"id": event.id}
