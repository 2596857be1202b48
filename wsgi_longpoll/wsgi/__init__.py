"""The WSGI layer: the long-poll middleware and the small WSGI apps around it.

- :mod:`.middleware`: :class:`~.middleware.LongpollMiddleware`, the subscription and
  publish paths in front of any WSGI app;
- :mod:`.answers`: the JSON answers every part of this layer gives;
- :mod:`.auth`: ready-made hooks (bearer token, basic auth, HMAC signatures);
- :mod:`.cors`: :class:`~.cors.CORSMiddleware`;
- :mod:`.monitoring`: stats, Prometheus metrics and health;
- :mod:`.demo`: the chat demo and the browser client's files.
"""
