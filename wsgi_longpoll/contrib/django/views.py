"""The subscription and publish views.

They hand the request to a :class:`~wsgi_longpoll.LongpollMiddleware`, so that the
answers are the protocol's byte for byte, after asking ``LONGPOLL["CAN_READ_CATEGORY"]``
about every category a subscribe names and ``LONGPOLL["CAN_PUBLISH"]`` about a publish,
with ``request.user``.

CSRF: the publish view is exempt from ``CsrfViewMiddleware`` so that API clients (the Go
client, ``curl``, a service with a token) can publish, and checks CSRF itself when the
request carries Django's session cookie, the one case where another site's page could
publish with a logged-in user's rights (the rule Django REST framework applies to session
authentication). A page of your own site that publishes sends ``X-CSRFToken`` as for any
other POST.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from ...protocol import error_body
from .._common import Answer, run_middleware, threaded_server_refusal, warn_if_not_in_gevent
from .conf import LongpollSettings, UserHook, current

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["publish", "subscribe"]

logger = logging.getLogger(__name__)

# The paths the views give the middleware, wherever the URLconf put them.
_SUBSCRIPTION_PATH = "/events"
_PUBLISH_PATH = "/publish"


#: Where the views put ``request.user`` for the authorization hooks.
_USER_KEY = "wsgi_longpoll.django.user"

_built: tuple[LongpollSettings, Any, WSGIApplication] | None = None


def _application(loaded: LongpollSettings, manager: Any) -> WSGIApplication:
    """The middleware the views hand their requests to (inside CORS's when configured),
    built once per settings and manager; it answers the fixed paths the views give it,
    wherever the URLconf put them."""
    global _built
    built = _built
    if built is not None and built[0] is loaded and built[1] is manager:
        return built[2]
    can_read, can_publish = loaded.can_read_category, loaded.can_publish

    def may_read(request: Any, category: str) -> bool:
        return can_read is None or _checked(can_read, request.environ[_USER_KEY], category)

    def may_publish(request: Any, category: str) -> bool:
        return can_publish is not None and _checked(can_publish, request.environ[_USER_KEY],
                                                    category)

    application = loaded.configuration.application(
        manager, may_read, may_publish,
        paths=(_SUBSCRIPTION_PATH, _PUBLISH_PATH),
    )[1]
    _built = (loaded, manager, application)
    return application


def _checked(hook: UserHook, user: Any, category: str) -> bool:
    verdict = hook(user, category)
    if not isinstance(verdict, bool):
        raise TypeError(f"the LONGPOLL hook {hook!r} must return True or False, not {verdict!r}")
    return verdict


def _answer(request: HttpRequest, path: str) -> HttpResponseBase:
    refused = threaded_server_refusal(request.META, "python manage.py runlongpoll", logger)
    if refused is not None:
        return _response(refused)
    loaded, manager = current()
    environ = {**request.META, "PATH_INFO": path, "wsgi.input": request,
               _USER_KEY: getattr(request, "user", None)}
    if _from_test_client(request):
        environ["wsgi.multiprocess"] = False  # the view runs in the test's own process
    return _response(run_middleware(_application(loaded, manager), environ))


def _from_test_client(request: HttpRequest) -> bool:
    """Whether Django's test client (or ``RequestFactory``) made *request*: its environ
    says ``wsgi.multiprocess`` whatever the process, which the middleware would refuse on
    the in-memory engine (see :mod:`wsgi_longpoll.multiprocess`)."""
    return type(request.META.get("wsgi.input")).__module__ == "django.test.client"


def _response(answer: Answer) -> HttpResponseBase:
    response: HttpResponseBase
    if answer.streaming:  # a Server-Sent Events stream: sent as it comes
        response = StreamingHttpResponse(answer.chunks, status=answer.status_code,
                                         reason=answer.reason)
    else:
        response = HttpResponse(answer.body, status=answer.status_code, reason=answer.reason)
    if not any(name.lower() == "content-type" for name, _ in answer.headers):
        del response["Content-Type"]  # Django's default: a CORS preflight's 204
    for name, value in answer.headers:
        response[name] = value
    return response


def subscribe(request: HttpRequest) -> HttpResponseBase:
    """The subscription endpoint (GET); any other method gets the protocol's 405."""
    warn_if_not_in_gevent(logger)
    return _answer(request, _SUBSCRIPTION_PATH)


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request: HttpRequest, reason: str) -> Any:
        return reason


def _csrf_failure(request: HttpRequest) -> str | None:
    """Why CSRF fails for *request*, or ``None`` (also when it has no session cookie)."""
    if request.method != "POST" or settings.SESSION_COOKIE_NAME not in request.COOKIES:
        return None
    check = _CsrfCheck(lambda request: HttpResponse())
    check.process_request(request)
    reason = check.process_view(request, None, (), {})
    return None if reason is None else str(reason)


@csrf_exempt
def publish(request: HttpRequest) -> HttpResponseBase:
    """The publish endpoint (POST); any other method gets the protocol's 405.

    Refused (403) unless ``LONGPOLL["CAN_PUBLISH"]`` allows the user and category, and,
    for a request with the session cookie, unless its CSRF token is right.
    """
    reason = _csrf_failure(request)
    if reason is not None:
        return _response(Answer("403 Forbidden", [("Content-Type", "application/json"),
                                                  ("X-Content-Type-Options", "nosniff")],
                                [error_body(f"CSRF Failed: {reason}")]))
    return _answer(request, _PUBLISH_PATH)
