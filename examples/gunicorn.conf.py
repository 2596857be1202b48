"""gunicorn settings for an application with long polling (the Flask or Django example)::

    gunicorn -c examples/gunicorn.conf.py examples.flask_app:app
    gunicorn -c examples/gunicorn.conf.py --chdir examples/django_project \\
        longpoll_site.wsgi:application

Command-line options override these (``-b 0.0.0.0:8000`` behind a proxy, say).
"""

# Nothing is imported here: gunicorn reads this file before its worker monkey-patches,
# and modules imported earlier (ssl, by way of requests) would be left unpatched.

bind = "127.0.0.1:8000"

# This package's HTTP/1.1 server on gevent: a waiting long poll (whether a
# LongpollMiddleware, the Flask extension or the Django app decided to hold it) is a
# parked socket, answered from the publisher; on SIGTERM every one is answered at once.
worker_class = "wsgi_longpoll.server.gunicorn.LongpollWorker"

# One worker process: the in-memory manager's events and waiting subscribers live in
# it, so a publish that reached a second worker would never wake the first one's
# subscribers, and a client resuming with since_time on it would find other events.
# For more, give the manager a Redis URL (docs/scaling.md).
workers = 1

# The most requests the worker serves at once.
worker_connections = 2000

# On SIGTERM gunicorn stops accepting; waiting long polls are answered at once, and
# requests in progress get this long.
graceful_timeout = 10
