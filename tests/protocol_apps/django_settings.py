"""The Django project of the protocol suite: the long-poll app alone, no database."""

from __future__ import annotations

from . import (
    MAX_BODY_SIZE,
    MAX_CATEGORIES_PER_REQUEST,
    MAX_EVENT_BUFFER_SIZE,
    MAX_TIMEOUT_SECONDS,
    REDIS_URL,
)

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS = ["wsgi_longpoll.contrib.django"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "protocol_apps.django_urls"
DATABASES: dict[str, object] = {}
USE_TZ = True
LONGPOLL = {
    "MAX_LONGPOLL_TIMEOUT_SECONDS": MAX_TIMEOUT_SECONDS,
    "MAX_EVENT_BUFFER_SIZE": MAX_EVENT_BUFFER_SIZE,
    "MAX_BODY_SIZE": MAX_BODY_SIZE,
    "MAX_CATEGORIES_PER_REQUEST": MAX_CATEGORIES_PER_REQUEST,
    "CAN_READ_CATEGORY": "protocol_apps.can_read_category",
    "CAN_PUBLISH": "protocol_apps.can_publish",
    "REDIS_URL": REDIS_URL,
}
