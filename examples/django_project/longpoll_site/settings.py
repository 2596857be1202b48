"""Settings for the long-polling example project: only what it needs.

It has no database, templates or static files. Set ``DJANGO_SECRET_KEY`` and leave
``DJANGO_DEBUG`` unset anywhere but on your own machine.
"""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

# The project package is also an app, for its ``rungevent`` management command.
INSTALLED_APPS = ["longpoll_site"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "longpoll_site.urls"
WSGI_APPLICATION = "longpoll_site.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
