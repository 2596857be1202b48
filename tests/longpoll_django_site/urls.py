"""The long-poll URLs under ``/longpoll/``, and ``/waiting`` for the tests."""

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from wsgi_longpoll.contrib.django import get_manager

#: What ``GET /hello`` answers (the reload test edits it).
GREETING = "hello"


def anyone_publishes(user: Any, category: str) -> bool:
    return True


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(GREETING, content_type="text/plain")


def waiting(request: HttpRequest) -> HttpResponse:
    """How many subscribers wait, so that a test knows its polls are parked."""
    return HttpResponse(str(get_manager().waiting_count()), content_type="text/plain")


urlpatterns = [
    path("longpoll/", include("wsgi_longpoll.contrib.django.urls")),
    path("hello", hello),
    path("waiting", waiting),
]
