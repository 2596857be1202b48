"""The Django project's URLs: the long-poll app at the root, and ``/waiting``."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from wsgi_longpoll.contrib.django import get_manager


def waiting(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(get_manager().waiting_count(request.GET["category"])))


urlpatterns = [
    path("", include("wsgi_longpoll.contrib.django.urls")),
    path("waiting", waiting),
]
