"""A Flask application with the ``LongPoll`` extension, run in subprocesses by the tests
(under gunicorn, and by ``flask longpoll run``)::

    gunicorn --chdir tests -k wsgi_longpoll.server.gunicorn.LongpollWorker longpoll_flask_app:app
    flask --app tests/longpoll_flask_app.py longpoll run --no-reload
"""

from __future__ import annotations

from flask import Flask

from wsgi_longpoll.contrib.flask import LongPoll

#: What ``GET /hello`` answers (the reload test edits it).
GREETING = "hello"

longpoll = LongPoll()
app = Flask(__name__)
app.config["LONGPOLL_MAX_LONGPOLL_TIMEOUT_SECONDS"] = 120
longpoll.init_app(app)


@longpoll.authorize_publish
def anyone_publishes(category: str) -> bool:
    return True


@app.get("/hello")
def hello() -> str:
    return GREETING


@app.get("/waiting")
def waiting() -> str:
    """How many subscribers wait, so that a test knows its polls are parked."""
    return str(longpoll.manager.waiting_count())
