"""A minimal Django project with long polling: the middleware wraps the WSGI application.

``wsgi.py`` wraps ``get_wsgi_application()`` in :class:`~wsgi_longpoll.LongpollMiddleware`,
which answers ``/events`` (subscribe) and ``/publish`` before Django sees them; every
other path is Django's. The ``POST /notify/`` view publishes from Python with the
project's :class:`~wsgi_longpoll.LongpollManager` (``longpoll_site.longpoll.manager``).

Run it from the repository root on gevent's WSGIServer with the ``rungevent`` command
(Ctrl-C, or SIGTERM, stops it)::

    python examples/django_project/manage.py rungevent [address]   # default 127.0.0.1:8000

or under gunicorn, with the gevent worker and one worker process (the events live in
that process's memory)::

    gunicorn -k gevent -w 1 -b 127.0.0.1:8000 --chdir examples/django_project \\
        longpoll_site.wsgi:application

Then::

    curl 'http://127.0.0.1:8000/events?category=notifications&timeout=60'    # waits
    curl -X POST -d '{"message": "Hello"}' http://127.0.0.1:8000/notify/      # wakes it

``manage.py runserver`` serves Django's pages but not the long polls: it runs requests
in threads, where they cannot wait on gevent, and the middleware answers them with a
500 that says so.
"""
