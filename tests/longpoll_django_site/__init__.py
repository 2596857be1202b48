"""A Django project with the ``wsgi_longpoll.contrib.django`` app, run in subprocesses by
the tests (``DJANGO_SETTINGS_MODULE=longpoll_django_site.settings``, ``tests`` on the path):
under gunicorn (``longpoll_django_site.wsgi``) and by ``django-admin runlongpoll``."""
