"""gunicorn settings for the Redis example: four gevent workers share one event stream.

    REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -c examples/gunicorn/gunicorn.conf.py \\
        --chdir examples/gunicorn app:app
"""

# Nothing is imported here: gunicorn reads this file before its gevent worker
# monkey-patches the process.

bind = "127.0.0.1:8000"

# A waiting long poll is an idle greenlet: each gevent worker holds thousands of them.
worker_class = "gevent"

# With Redis, any number of workers (and hosts) serve one event stream.
workers = 4

# gevent worker connections: the long polls each worker may hold at once.
worker_connections = 10000

# Long polls wait up to 110 s by default: gunicorn must not kill a worker for it.
timeout = 120
graceful_timeout = 15
keepalive = 75

# Do not preload: each worker makes its own Redis connections and reader after the fork.
preload_app = False
