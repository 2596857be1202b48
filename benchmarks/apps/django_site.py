"""The Django deployment of ``bench_frameworks.py``: settings, URLs and WSGI application.

The app ``wsgi_longpoll.contrib.django`` under ``/longpoll/`` behind the middleware of
``startproject`` (security, sessions, common, CSRF, authentication, clickjacking), with
``CAN_READ_CATEGORY`` and ``CAN_PUBLISH`` hooks that let a logged-in user read and publish
to ``user-<id>``. ``POST /login/<id>`` logs in and answers the CSRF token a publish needs.
No database: sessions are signed cookies and the authentication backend makes a user of
any id (an unsaved ``User``), so that what is measured is Django, not a database.
Categories starting with ``fanout-`` are open to anyone, for a load generator that cannot
log in (``lpload``).

    gunicorn -w 1 -k wsgi_longpoll.server.gunicorn.LongpollWorker \\
        --pythonpath benchmarks/apps django_site:application
"""

from __future__ import annotations

from typing import Any

import django
from django.conf import settings

#: Categories anyone may read and publish to.
OPEN_PREFIX = "fanout-"

settings.configure(
    DEBUG=False,
    SECRET_KEY="benchmark-only",
    ALLOWED_HOSTS=["127.0.0.1"],
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "wsgi_longpoll.contrib.django",
    ],
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ],
    SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
    AUTHENTICATION_BACKENDS=["django_site.Backend"],
    ROOT_URLCONF="django_site",
    DATABASES={},
    USE_TZ=True,
    LONGPOLL={
        "MAX_LONGPOLL_TIMEOUT_SECONDS": 120,
        "CAN_READ_CATEGORY": "django_site.can_read_category",
        "CAN_PUBLISH": "django_site.can_publish",
    },
)
django.setup()

from django.contrib.auth import login as auth_login  # noqa: E402
from django.contrib.auth.models import User, update_last_login  # noqa: E402
from django.contrib.auth.signals import user_logged_in  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.middleware.csrf import get_token  # noqa: E402
from django.urls import include, path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from django.views.decorators.http import require_POST  # noqa: E402

# Saving the last login time needs the database this project does not have.
user_logged_in.disconnect(update_last_login, dispatch_uid="update_last_login")


class Backend:
    """Every user id is a user (an unsaved :class:`User`): no database."""

    def authenticate(self, request: HttpRequest, **credentials: Any) -> None:
        return None

    def get_user(self, user_id: int) -> User:
        return User(pk=user_id, username=f"user{user_id}")


def _may_use(user: Any, category: str) -> bool:
    if category.startswith(OPEN_PREFIX):
        return True
    return bool(user.is_authenticated) and category == f"user-{user.pk}"


def can_read_category(user: Any, category: str) -> bool:
    return _may_use(user, category)


def can_publish(user: Any, category: str) -> bool:
    return _may_use(user, category)


@csrf_exempt
@require_POST
def login(request: HttpRequest, user_id: int) -> JsonResponse:
    auth_login(request, User(pk=user_id, username=f"user{user_id}"),
               backend="django_site.Backend")
    return JsonResponse({"user": user_id, "csrf": get_token(request)})


urlpatterns = [
    path("login/<int:user_id>", login),
    path("longpoll/", include("wsgi_longpoll.contrib.django.urls")),
]

application = get_wsgi_application()
