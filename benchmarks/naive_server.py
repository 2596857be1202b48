"""A naive gevent long-polling server: BENCHMARKS.md's baseline, for ``--compare-url``.

gevent's ``pywsgi.WSGIServer``, one ``gevent.event.Event`` per category, a list of
events per category, ``TCP_NODELAY`` on accepted sockets, nothing else: no validation,
no eviction, no hang-up detection. It answers the benchmark's requests the way the
protocol does, so that our server can be measured against plain pywsgi in one sitting::

    python benchmarks/naive_server.py 127.0.0.1:8081 &
    python benchmarks/run.py --compare-url http://127.0.0.1:8081 --compare-pid $!
"""

from __future__ import annotations

import json
import socket
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from gevent.event import Event
from gevent.pywsgi import WSGIHandler, WSGIServer

_events: dict[str, list[dict[str, Any]]] = defaultdict(list)
_arrivals: dict[str, Event] = defaultdict(Event)
_HEADERS = [("Content-Type", "application/json")]


def _events_body(events: list[dict[str, Any]]) -> bytes:
    return json.dumps({"events": events}, separators=(",", ":")).encode()


def _answer(start_response: Any, body: bytes) -> list[bytes]:
    start_response("200 OK", [*_HEADERS, ("Content-Length", str(len(body)))])
    return [body]


def application(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/publish":
        request = json.loads(environ["wsgi.input"].read())
        category = request["category"]
        _events[category].append({"timestamp": int(time.time() * 1000), "category": category,
                                  "data": request["data"], "id": str(uuid.uuid4())})
        arrival = _arrivals.pop(category, None)
        if arrival is not None:
            arrival.set()
        return _answer(start_response, b'{"success": true}')
    if path == "/events":
        query = {name: values[0] for name, values in parse_qs(environ["QUERY_STRING"]).items()}
        category = query["category"]
        if "since_time" in query:
            since = int(query["since_time"])
            found = [e for e in _events[category] if e["timestamp"] > since]
            if found:
                return _answer(start_response, _events_body(found))
        seen = len(_events[category])
        _arrivals[category].wait(int(query["timeout"]))
        found = _events[category][seen:]
        if found:
            return _answer(start_response, _events_body(found))
        return _answer(start_response, b'{"timeout":"no events before timeout","timestamp":%d}'
                       % int(time.time() * 1000))
    start_response("404 Not Found", [("Content-Length", "0")])
    return [b""]


class _NoDelayHandler(WSGIHandler):  # type: ignore[misc]
    def handle(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle()


def main() -> None:
    host, _, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8081").rpartition(":")
    WSGIServer((host, int(port)), application, handler_class=_NoDelayHandler,
               log=None).serve_forever()


if __name__ == "__main__":
    main()
