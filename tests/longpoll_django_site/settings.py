"""The test project's settings: the long-poll app and nothing else (no database)."""

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["wsgi_longpoll.contrib.django"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "longpoll_django_site.urls"
WSGI_APPLICATION = "longpoll_django_site.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
LONGPOLL = {
    "MAX_LONGPOLL_TIMEOUT_SECONDS": 120,
    "CAN_PUBLISH": "longpoll_django_site.urls.anyone_publishes",
}
# The autoreloader's log, to stderr: the reload test waits until it has seen the code
# (runlongpoll with reload only; silent otherwise).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.utils.autoreload": {"handlers": ["stderr"], "level": "DEBUG"}},
}
