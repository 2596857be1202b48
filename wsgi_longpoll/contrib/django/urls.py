"""The app's URLs, to ``include()`` under a prefix of your choice::

    path("longpoll/", include("wsgi_longpoll.contrib.django.urls"))

gives ``/longpoll/events`` (subscribe, GET) and ``/longpoll/publish`` (publish, POST),
named ``longpoll:subscribe`` and ``longpoll:publish``; ``LONGPOLL["SUBSCRIPTION_PATH"]``
and ``LONGPOLL["PUBLISH_PATH"]`` change them (``None`` leaves one out).
"""

from django.urls import URLPattern, path

from . import views
from .conf import url_paths

app_name = "longpoll"

_subscription, _publish = url_paths()

urlpatterns: list[URLPattern] = []
if _subscription is not None:
    urlpatterns.append(path(_subscription, views.subscribe, name="subscribe"))
if _publish is not None:
    urlpatterns.append(path(_publish, views.publish, name="publish"))
