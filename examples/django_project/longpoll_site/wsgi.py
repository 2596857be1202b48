"""The WSGI application: Django's, wrapped so that long polls never reach Django.

Serve ``application`` with a gevent server: ``manage.py rungevent``, or
``gunicorn -k gevent -w 1 longpoll_site.wsgi:application``.
"""

import os

from django.core.wsgi import get_wsgi_application

from wsgi_longpoll import LongpollMiddleware

from .longpoll import manager

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "longpoll_site.settings")

application = LongpollMiddleware(
    get_wsgi_application(), manager, subscription_path="/events", publish_path="/publish"
)
