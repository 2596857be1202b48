"""Park N long polls on one category, then read every answer (run as a subprocess).

``python fanout_client.py PORT N CATEGORY``: prints ``parked`` once every request is sent,
then, once every answer has been read (each connection closes after its answer), one JSON
line: how many answers came, how many were 200, and the distinct bodies.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time


def read_answers(sockets: list[socket.socket], within: float) -> list[bytes]:
    """Read each socket to its end (an answer on a ``Connection: close`` request ends with
    EOF); every answer complete within *within* seconds (fewer: some did not end)."""
    selector = selectors.DefaultSelector()
    received: dict[socket.socket, bytearray] = {}
    for sock in sockets:
        sock.setblocking(False)
        received[sock] = bytearray()
        selector.register(sock, selectors.EVENT_READ)
    answers: list[bytes] = []
    deadline = time.monotonic() + within
    while received and time.monotonic() < deadline:
        for key, _ in selector.select(0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except ConnectionError:
                data = b""
            if data:
                received[sock] += data
                continue
            answers.append(bytes(received.pop(sock)))
            selector.unregister(sock)
            sock.close()
    selector.close()
    return answers


def main() -> None:
    port, count, category = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    request = (f"GET /events?category={category}&timeout=60 HTTP/1.1\r\nHost: t\r\n"
               "Connection: close\r\n\r\n").encode()
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(request)
        sockets.append(sock)
    print("parked", flush=True)
    answers = read_answers(sockets, within=120)
    ok = [answer for answer in answers if answer.startswith(b"HTTP/1.1 200 OK\r\n")]
    bodies = sorted({answer.partition(b"\r\n\r\n")[2].decode() for answer in ok})
    print(json.dumps({"answered": len(answers), "ok": len(ok), "bodies": bodies[:3],
                      "distinct": len(bodies)}), flush=True)

if __name__ == "__main__":
    main()
