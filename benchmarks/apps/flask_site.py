"""The Flask deployment of ``bench_frameworks.py``: the README's per-user channel.

The extension's views (``GET /events``, ``POST /publish``), Flask-Login with a session
cookie, and authorization callbacks that let a logged-in user read and publish to
``user-<id>``, as the README's snippet does. ``POST /login/<id>`` logs in (every id is
a user: a benchmark needs no database). Categories starting with ``fanout-`` are open to
anyone, for a load generator that cannot log in (``lpload``).

    gunicorn -w 1 -k wsgi_longpoll.server.gunicorn.LongpollWorker \\
        --pythonpath benchmarks/apps flask_site:app
"""

from __future__ import annotations

from flask import Flask
from flask_login import LoginManager, UserMixin, current_user, login_user

from wsgi_longpoll.contrib.flask import LongPoll

#: Categories anyone may read and publish to.
OPEN_PREFIX = "fanout-"

app = Flask(__name__)
app.config["SECRET_KEY"] = "benchmark-only"
app.config["LONGPOLL_MAX_LONGPOLL_TIMEOUT_SECONDS"] = 120
login_manager = LoginManager(app)
longpoll = LongPoll(app)


class User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


@login_manager.user_loader
def load_user(user_id: str) -> User:
    return User(user_id)


def _may_use(category: str) -> bool:
    if category.startswith(OPEN_PREFIX):
        return True
    return bool(current_user.is_authenticated) and category == f"user-{current_user.id}"


@longpoll.authorize_subscribe
def may_read(category: str) -> bool:
    return _may_use(category)


@longpoll.authorize_publish
def may_publish(category: str) -> bool:
    return _may_use(category)


@app.post("/login/<user_id>")
def login(user_id: str) -> dict[str, str]:
    login_user(User(user_id))
    return {"user": user_id}
