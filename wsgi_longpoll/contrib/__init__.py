"""Integrations with web frameworks and metrics libraries.

- :mod:`wsgi_longpoll.contrib.flask`: the ``LongPoll`` Flask extension (extra ``[flask]``);
- :mod:`wsgi_longpoll.contrib.django`: a Django app for ``INSTALLED_APPS`` (extra ``[django]``);
- :mod:`wsgi_longpoll.contrib.prometheus`: a ``prometheus_client`` collector (extra
  ``[prometheus]``).

Each answers the subscription and publish requests inside the framework, so its session and
authentication apply, and its answers are :class:`~wsgi_longpoll.LongpollMiddleware`'s,
byte for byte.
"""
