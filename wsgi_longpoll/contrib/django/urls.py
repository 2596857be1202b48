"""The app's URLs, to ``include()`` under a prefix of your choice::

    path("longpoll/", include("wsgi_longpoll.contrib.django.urls"))

gives ``/longpoll/events`` (subscribe, GET) and ``/longpoll/publish`` (publish, POST),
named ``longpoll:subscribe`` and ``longpoll:publish``.
"""

from django.urls import path

from . import views

app_name = "longpoll"

urlpatterns = [
    path("events", views.subscribe, name="subscribe"),
    path("publish", views.publish, name="publish"),
]
