"""The Flask extension: long polling answered by Flask views.

.. code-block:: python

    from flask import Flask, session
    from wsgi_longpoll.contrib.flask import LongPoll

    longpoll = LongPoll()

    def create_app():
        app = Flask(__name__)
        app.config["LONGPOLL_MAX_LONGPOLL_TIMEOUT_SECONDS"] = 120
        longpoll.init_app(app)
        return app

    @longpoll.authorize_subscribe
    def may_read(category):                 # runs in the request context
        return category == f"user-{session.get('user_id')}"

The subscription and publish paths are URL rules of a blueprint named ``longpoll``
(``url_for("longpoll.subscribe")``, ``url_for("longpoll.publish")``), so Flask's
``before_request`` functions, ``flask.session``, ``flask.g`` and Flask-Login's
``current_user`` work there and in the authorization callbacks. The answers are
:class:`~wsgi_longpoll.LongpollMiddleware`'s, byte for byte: the views hand the request to
one.

Configuration (``app.config``; the manager's and engine's options are ignored when a
manager is given): every option of the package under its one name, as
``LONGPOLL_<NAME>`` (see the README's options table and :data:`DEFAULTS`), e.g.

``LONGPOLL_SUBSCRIPTION_PATH``, ``LONGPOLL_PUBLISH_PATH``
    The subscription URL (GET) and the publish URL (POST); ``None`` registers none
    (publish from Python with :meth:`LongPoll.publish`).
``LONGPOLL_MAX_LONGPOLL_TIMEOUT_SECONDS``, ``LONGPOLL_MAX_EVENT_BUFFER_SIZE``, ...
    The manager's and its engine's options; ``LONGPOLL_REDIS_URL`` keeps the events in
    Redis (extra ``[redis]``), shared by every worker.
``LONGPOLL_SUBSCRIBE_SECRET``, ``LONGPOLL_SUBSCRIBE_SECRET_PREVIOUS``
    Require a signed subscribe token on every subscribe, and issue them with
    :meth:`LongPoll.subscribe_token` (see :mod:`wsgi_longpoll.tokens`): for a long-poll
    tier apart from the application, the application may serve no long poll at all.
``LONGPOLL_CORS_ORIGINS``, ``LONGPOLL_CORS_ALLOW_HEADERS``, ...
    Let pages of other origins subscribe and publish (see
    :class:`~wsgi_longpoll.wsgi.cors.CORSOptions`).
``LONGPOLL_CLIENT_SCRIPT_PATH``
    Serve the browser client (ES module) at this path and ``longpoll.global.js`` beside
    it, default ``None`` (not served); the one key of Flask's own.

A value given as a string (from the environment, say) is converted to the option's type,
and :meth:`LongPoll.init_app` refuses, naming the key, a value that does not fit and a
``LONGPOLL_*`` key it does not know.

Serve the application with ``gunicorn -k wsgi_longpoll.server.gunicorn.LongpollWorker``:
the views decide, and the server parks the polls they hold on their sockets (the hold
hand-off, :data:`wsgi_longpoll.endpoints.HOLD_KEY`). Under any other gevent server
(``gunicorn -k gevent``, gevent's ``WSGIServer``) long polls wait in the view, on gevent.
The first long poll served outside a gevent greenlet logs a warning once;
under a threaded server without gevent (``flask run``) the views answer 500 saying so.

For development, the extension adds a command to the ``flask`` command line that serves the
application on this package's server, where long polls wait, with ``flask run``'s
defaults (127.0.0.1:5000, werkzeug's reloader in debug mode)::

    flask --app myapp --debug longpoll run [--host 127.0.0.1] [--port 5000] [--no-reload]
"""

from __future__ import annotations

import datetime
import logging
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

try:
    import click
    from flask import Blueprint, Flask, Response, current_app, has_app_context, request
    from flask.cli import with_appcontext
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "wsgi_longpoll.contrib.flask needs Flask: pip install 'wsgi_longpoll[flask]'"
    ) from error

from ..event import Event
from ..manager import LongpollManager
from ..options import Option
from ..tokens import subscribe_token
from ..wsgi.middleware import LongpollMiddleware
from . import _devserver
from ._common import (
    CONFIG_OPTIONS,
    Answer,
    Configuration,
    read_configuration,
    run_middleware,
    threaded_server_refusal,
    unknown_keys_error,
    verdict,
    warn_if_not_in_gevent,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["LongPoll"]

logger = logging.getLogger(__name__)

#: The name under ``app.extensions`` and of the blueprint.
EXTENSION_NAME = "longpoll"

#: The prefix of every configuration key.
PREFIX = "LONGPOLL_"
#: Every configuration key and its default: each option's, and Flask's own.
DEFAULTS: dict[str, Any] = {
    **{PREFIX + item.key: item.default for item in CONFIG_OPTIONS.values()},
    "LONGPOLL_CLIENT_SCRIPT_PATH": None,
}

#: Every method the views take, so that a wrong one gets the protocol's 405, not Flask's.
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

Authorizer = Callable[[str], bool]
F = TypeVar("F", bound=Authorizer)


@dataclass(slots=True)
class _AppState:
    manager: LongpollManager
    middleware: LongpollMiddleware
    #: What the views call: the middleware, inside CORS's when origins are allowed.
    application: WSGIApplication


def _key(item: Option) -> str:
    return PREFIX + item.key


def read_config(config: dict[str, Any]) -> Configuration:
    """The options of the ``LONGPOLL_*`` keys of *config*, converted and checked.

    :raises ValueError: naming the key, for an unknown key, or a value that is not of its
        option's type or out of range.
    """
    unknown = [key for key in config if key.startswith(PREFIX) and key not in DEFAULTS]
    if unknown:
        raise ValueError(unknown_keys_error(unknown, DEFAULTS, "app.config"))
    given = {key[len(PREFIX):]: value for key, value in config.items() if key in DEFAULTS}
    return read_configuration(given, _key)


def manager_from_config(config: dict[str, Any]) -> LongpollManager:
    """A :class:`LongpollManager` built from the ``LONGPOLL_*`` keys of *config*."""
    return read_config(config).manager()


class LongPoll:
    """Long-poll subscription and publish endpoints as Flask views.

    :param app: the application to set up now; or call :meth:`init_app` later (an
        application factory).
    :param manager: the manager to use for every application; by default each application
        gets one built from its ``LONGPOLL_*`` configuration.

    After :meth:`init_app`, ``app.extensions["longpoll"]`` is this object.
    """

    def __init__(self, app: Flask | None = None, manager: LongpollManager | None = None) -> None:
        self._manager = manager
        self._apps: weakref.WeakKeyDictionary[Flask, _AppState] = weakref.WeakKeyDictionary()
        self._authorize_subscribe: Authorizer | None = None
        self._authorize_publish: Authorizer | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the long-poll views on *app*, with its ``LONGPOLL_*`` configuration.

        :raises ValueError: naming the key, for an unknown ``LONGPOLL_*`` key, a value
            that is not of its option's type or out of range (a number given as a string
            is converted), or options that do not go together (e.g. both paths equal).
        """
        configuration = read_config(app.config)
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        manager = self._manager if self._manager is not None else configuration.manager()
        subscription_path = configuration.endpoints.subscription_path
        publish_path = configuration.endpoints.publish_path
        script_path = app.config["LONGPOLL_CLIENT_SCRIPT_PATH"]
        middleware, application = configuration.application(
            manager, self._check_subscribe, self._check_publish,
            client_script_path=script_path,
        )
        blueprint = Blueprint(EXTENSION_NAME, __name__)
        if subscription_path is not None:
            blueprint.add_url_rule(subscription_path, "subscribe", self._view,
                                   methods=_METHODS, provide_automatic_options=False)
        if publish_path is not None:
            blueprint.add_url_rule(publish_path, "publish", self._view,
                                   methods=_METHODS, provide_automatic_options=False)
        if script_path is not None:  # the middleware checked its form
            global_path = script_path.rpartition("/")[0] + "/longpoll.global.js"
            blueprint.add_url_rule(script_path, "client_module", self._view,
                                   methods=["GET", "HEAD"])
            blueprint.add_url_rule(global_path, "client_script", self._view,
                                   methods=["GET", "HEAD"])
        blueprint.cli.add_command(run_command)  # flask longpoll run
        app.register_blueprint(blueprint)
        self._apps[app] = _AppState(manager, middleware, application)
        app.extensions[EXTENSION_NAME] = self

    # -- the manager ------------------------------------------------------------------

    def _state(self, app: Flask) -> _AppState:
        try:
            return self._apps[app]
        except KeyError:
            raise RuntimeError(
                f"LongPoll is not set up on the application {app.name!r}: call init_app(app)"
            ) from None

    @property
    def manager(self) -> LongpollManager:
        """The manager of the current application (or the one given, or the only one).

        :raises RuntimeError: outside an application context when :meth:`init_app` was
            called for several applications and no manager was given, or before
            :meth:`init_app`.
        """
        if self._manager is not None:
            return self._manager
        if has_app_context():
            return self._state(current_app._get_current_object()).manager  # type: ignore[attr-defined]
        if len(self._apps) == 1:
            return next(iter(self._apps.values())).manager
        raise RuntimeError(
            "LongPoll.manager needs an application context (or exactly one application "
            "set up with init_app)"
        )

    def publish(self, category: str, data: Any) -> Event:
        """Publish *data* to *category*: :meth:`LongpollManager.publish` of :attr:`manager`.

        Usable from views, CLI commands and background work alike.
        """
        return self.manager.publish(category, data)

    def subscribe_token(self, categories: str | Iterable[str],
                        ttl: float | datetime.timedelta, *, subject: str | None = None) -> str:
        """A token that lets its holder subscribe to *categories* for *ttl* (seconds or a
        :class:`~datetime.timedelta`), signed with ``LONGPOLL_SUBSCRIBE_SECRET`` of the
        current application (or the only one).

        Hand it to the page (the browser client's ``token`` option) or to a
        :class:`~wsgi_longpoll.client.Follower`; a long-poll tier run with the same
        secret (``wsgi-longpoll serve --subscribe-secret``), and this extension's own
        subscribe view, let it read those categories and no other until it expires. See
        :func:`wsgi_longpoll.tokens.subscribe_token`.

        :param subject: who it is for (the ``sub`` claim), for your own logs.
        :raises RuntimeError: if ``LONGPOLL_SUBSCRIBE_SECRET`` is not set.
        """
        if has_app_context():
            state = self._state(current_app._get_current_object())  # type: ignore[attr-defined]
        elif len(self._apps) == 1:
            state = next(iter(self._apps.values()))
        else:
            raise RuntimeError("LongPoll.subscribe_token needs an application context (or "
                               "exactly one application set up with init_app)")
        secret = state.middleware.options.subscribe_secret
        if secret is None:
            raise RuntimeError("set LONGPOLL_SUBSCRIBE_SECRET to issue subscribe tokens")
        return subscribe_token(secret, categories, ttl, subject=subject)

    # -- authorization ----------------------------------------------------------------

    def authorize_subscribe(self, callback: F) -> F:
        """Decorator: *callback(category) -> bool* decides who may read a category.

        It runs in the request context (``flask.request``, ``session``, ``g``,
        ``current_user``), once for every category a subscribe names (``category`` and
        each ``categories``), for long polls and Server-Sent Events streams alike; one
        ``False`` refuses the whole request with 403. Requests the protocol rejects
        anyway get the protocol's answer without it being called.
        Without a callback every category may be read.
        """
        self._authorize_subscribe = callback
        return callback

    def authorize_publish(self, callback: F) -> F:
        """Decorator: *callback(category) -> bool* decides who may publish over HTTP.

        It runs in the request context; ``request.get_json()`` gives the whole body.
        ``False`` answers 403. Without a callback anyone who reaches the publish path may
        publish; set ``LONGPOLL_PUBLISH_PATH = None`` to publish only from Python.
        """
        self._authorize_publish = callback
        return callback

    def _check_subscribe(self, request: object, category: str) -> bool:
        callback = self._authorize_subscribe
        return callback is None or verdict(callback, category)

    def _check_publish(self, request: object, category: str) -> bool:
        callback = self._authorize_publish
        return callback is None or verdict(callback, category)

    # -- the view ---------------------------------------------------------------------

    def _view(self) -> Response:
        state = self._state(current_app._get_current_object())  # type: ignore[attr-defined]
        environ = request.environ
        if request.endpoint in _LONG_POLL_ENDPOINTS:
            refused = threaded_server_refusal(environ, "flask longpoll run", logger)
            if refused is not None:
                return _response(refused)
        if request.endpoint == f"{EXTENSION_NAME}.subscribe":
            warn_if_not_in_gevent(logger)
        if request.url_rule is not None and environ.get("PATH_INFO") != request.url_rule.rule:
            environ = {**environ, "PATH_INFO": request.url_rule.rule}
        # A Server-Sent Events stream goes on after the view returns, without the
        # request context (it needs only the manager).
        return _response(run_middleware(state.application, environ))


_LONG_POLL_ENDPOINTS = frozenset({f"{EXTENSION_NAME}.subscribe", f"{EXTENSION_NAME}.publish"})


def _response(answer: Answer) -> Response:
    response = current_app.response_class(answer.chunks, status=answer.status,
                                          headers=answer.headers)
    if not any(name.lower() == "content-type" for name, _ in answer.headers):
        del response.headers["Content-Type"]  # Flask's default: a CORS preflight's 204
    return response


@click.command("run")
@click.option("--host", "-h", default="127.0.0.1", show_default=True,
              help="The interface to bind to.")
@click.option("--port", "-p", default=5000, show_default=True, type=click.IntRange(0, 65535),
              help="The port to bind to.")
@click.option("--reload/--no-reload", default=None,
              help="Restart when the code changes. On by default in debug mode (flask "
                   "--debug), as with flask run.")
@with_appcontext
def run_command(host: str, port: int, reload: bool | None) -> None:
    """Run the application on wsgi_longpoll's server, where long polls wait.

    flask run cannot hold long polls; this development server can, as gunicorn with
    LongpollWorker does in production.
    """
    # werkzeug's reloader, the one flask run uses (no public name: pinned by the tests).
    from werkzeug._reloader import run_with_reloader

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        _devserver.run(_devserver.DevelopmentServer(lambda: app, address),
                       reload=app.debug if reload is None else reload,
                       run_with_reloader=run_with_reloader,
                       announce=lambda line: click.echo(f" * {line}", err=True),
                       complain=lambda line: click.echo(f"Error: {line}", err=True))
    except (OSError, ValueError) as error:
        raise click.ClickException(f"cannot listen on {address}: {error}") from error
