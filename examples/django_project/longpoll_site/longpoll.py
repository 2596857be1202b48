"""The project's long-polling manager: one per process, shared by the views and wsgi.py."""

from wsgi_longpoll import LongpollManager

#: The category the ``/notify/`` view publishes to.
CATEGORY = "notifications"

manager = LongpollManager(max_longpoll_timeout_seconds=120)
