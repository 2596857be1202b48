"""A Flask application with long polling: the middleware wraps ``app.wsgi_app``.

``/events`` (subscribe) and ``/publish`` are answered by
:class:`~wsgi_longpoll.LongpollMiddleware`; every other path is Flask's. The
``POST /notify`` route shows publishing from Python: any view (or task, or thread) in
the process calls :meth:`LongpollManager.publish`.

Run it from the repository root on gevent's WSGIServer (Ctrl-C, or SIGTERM, stops it)::

    python examples/flask_app.py [address]     # address defaults to 127.0.0.1:5000

or under gunicorn, with the gevent worker and one worker process (the events live in
this process's memory, so every subscriber and publisher must reach the same one)::

    gunicorn -k gevent -w 1 -b 127.0.0.1:5000 examples.flask_app:app

Then open http://127.0.0.1:5000/, or::

    curl 'http://127.0.0.1:5000/events?category=notifications&timeout=60'    # waits
    curl -X POST -H 'Content-Type: application/json' \\
         -d '{"message": "Hello"}' http://127.0.0.1:5000/notify                # wakes it

Do not use ``flask run``: it serves each request in a thread of its own, where long
polls cannot wait on gevent; the middleware answers them with a 500 that says so.
"""

from __future__ import annotations

import logging
import signal
import sys

import gevent
import gevent.event
from flask import Flask, request
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from wsgi_longpoll import LongpollManager, LongpollMiddleware
from wsgi_longpoll.server import parse_address

__all__ = ["app", "create_app", "serve"]

logger = logging.getLogger(__name__)

#: The category the ``/notify`` route publishes to and the page listens on.
CATEGORY = "notifications"

INDEX_HTML = """<!doctype html>
<meta charset="utf-8">
<title>wsgi_longpoll with Flask</title>
<h1>Notifications</h1>
<form id="notify"><input name="message" placeholder="Say something" required>
<button>Notify</button></form>
<ul id="events"></ul>
<script>
const list = document.getElementById("events");
document.getElementById("notify").addEventListener("submit", async (form) => {
  form.preventDefault();
  const message = form.target.message.value;
  form.target.reset();
  await fetch("/notify", {method: "POST", headers: {"Content-Type": "application/json"},
                          body: JSON.stringify({message})});
});
async function poll(sinceTime, lastId) {
  for (;;) {
    let query = "category=notifications&timeout=45&since_time=" + sinceTime;
    if (lastId) query += "&last_id=" + lastId;
    try {
      const answer = await (await fetch("/events?" + query)).json();
      for (const event of answer.events || []) {
        const item = document.createElement("li");
        item.textContent = new Date(event.timestamp).toLocaleTimeString() + " "
                           + event.data.message;
        list.append(item);
        [sinceTime, lastId] = [event.timestamp, event.id];
      }
    } catch (error) {
      await new Promise((resume) => setTimeout(resume, 3000));  // server restarting
    }
  }
}
poll(Date.now(), "");
</script>
"""


def create_app(manager: LongpollManager | None = None) -> Flask:
    """Build the Flask application, its long-poll endpoints answered by *manager*.

    :param manager: where events are kept; a new in-memory one when ``None``. It is
        also available as ``app.extensions["wsgi_longpoll"]``.
    """
    if manager is None:
        manager = LongpollManager(max_longpoll_timeout_seconds=120)
    app = Flask(__name__)
    app.extensions["wsgi_longpoll"] = manager
    app.wsgi_app = LongpollMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, manager, subscription_path="/events", publish_path="/publish"
    )

    @app.get("/")
    def index() -> str:
        return INDEX_HTML

    @app.post("/notify")
    def notify() -> tuple[dict[str, object], int]:
        payload = request.get_json(silent=True)
        message = payload.get("message") if isinstance(payload, dict) else None
        if not isinstance(message, str) or not message.strip():
            return {"error": "expected a JSON object with a non-empty 'message'"}, 400
        # Publishing from Python: waiting subscribers are answered right away.
        event = manager.publish(CATEGORY, {"message": message})
        return {"id": event.id, "timestamp": event.timestamp}, 201

    return app


app = create_app()


def serve(app: Flask, address: str = "127.0.0.1:5000", shutdown_timeout: float = 5) -> None:
    """Serve *app* on gevent's WSGIServer until SIGINT or SIGTERM.

    On either signal the manager is closed, which answers every waiting subscriber at
    once, and requests still in progress get *shutdown_timeout* seconds to finish.
    """
    manager: LongpollManager = app.extensions["wsgi_longpoll"]
    # A pool, unlike gevent's default spawn, lets stop() wait for requests in progress.
    server = WSGIServer(parse_address(address), app, spawn=Pool())
    stop_requested = gevent.event.Event()

    def request_stop(signum: int) -> None:
        logger.info("%s received: stopping", signal.Signals(signum).name)
        stop_requested.set()

    handlers = [gevent.signal_handler(signum, request_stop, signum)
                for signum in (signal.SIGINT, signal.SIGTERM)]
    try:
        server.start()
        logger.info("serving on http://%s:%d/", *server.address[:2])
        stop_requested.wait()
        manager.close()  # answers every waiting subscriber now, refuses new events
        server.stop(timeout=shutdown_timeout)
    finally:
        for handler in handlers:
            handler.cancel()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        serve(app, sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:5000")
    except (OSError, ValueError) as error:  # a bad address, or one already in use
        sys.exit(f"cannot serve: {error}")
