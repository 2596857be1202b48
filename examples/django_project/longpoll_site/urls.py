"""URLs of the example project; ``/events`` and ``/publish`` are answered before Django."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("notify/", views.notify, name="notify"),
    path("status/", views.status, name="status"),
]
