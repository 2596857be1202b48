"""The Flask extension's application of the protocol suite."""

from __future__ import annotations

from flask import Flask, request

from wsgi_longpoll.contrib.flask import LongPoll

from . import (
    MAX_BODY_SIZE,
    MAX_CATEGORIES_PER_REQUEST,
    MAX_EVENT_BUFFER_SIZE,
    MAX_TIMEOUT_SECONDS,
    REDIS_URL,
    may_read,
)

longpoll = LongPoll()
app = Flask(__name__)
app.config.update(
    LONGPOLL_MAX_LONGPOLL_TIMEOUT_SECONDS=MAX_TIMEOUT_SECONDS,
    LONGPOLL_MAX_EVENT_BUFFER_SIZE=MAX_EVENT_BUFFER_SIZE,
    LONGPOLL_MAX_BODY_SIZE=MAX_BODY_SIZE,
    LONGPOLL_MAX_CATEGORIES_PER_REQUEST=MAX_CATEGORIES_PER_REQUEST,
    LONGPOLL_REDIS_URL=REDIS_URL,
)
longpoll.init_app(app)
longpoll.authorize_subscribe(may_read)


@app.get("/waiting")
def waiting() -> str:
    return str(longpoll.manager.waiting_count(request.args["category"]))
