"""The seed's "Basic server" example: the standalone long-polling server.

Run it from the repository root (Ctrl-C, or SIGTERM, stops it)::

    python examples/standalone.py [address]    # address defaults to 127.0.0.1:8080

then, in another terminal, ``python examples/client.py`` publishes an event and reads it
back. The address takes Go's forms: ``":8080"`` listens on every interface,
``"[::1]:8080"`` on IPv6 loopback.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from wsgi_longpoll import FilePersistorInfo, Server, ServerInfo


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM (a service manager, a container) stops it like Ctrl-C


def _block(how: int) -> None:
    if hasattr(signal, "pthread_sigmask"):  # not on Windows, where the race is Ctrl-C's own
        signal.pthread_sigmask(how, {signal.SIGINT, signal.SIGTERM})


def main(address: str = "127.0.0.1:8080") -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    # Both handlers explicitly: Python installs its own SIGINT handler only when SIGINT was
    # not ignored at start (a shell's background job has it ignored), so relying on it
    # would leave Ctrl-C, or `kill -INT`, without effect there.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    # Held back while the server starts (its thread inherits the mask, so they come to this
    # one): a signal sent as soon as the port accepts arrives inside the try below.
    _block(signal.SIG_BLOCK)
    server = Server()
    try:
        server.start(
            ServerInfo(
                address=address,
                timeout_seconds=120,
                subscription_uri="/events",
                publish_uri="/publish",
            ),
            FilePersistorInfo(use=False),
            None,
        )
    except (OSError, ValueError) as error:  # a bad address, or one already in use
        print(f"cannot start: {error}", file=sys.stderr)
        return 1
    try:
        _block(signal.SIG_UNBLOCK)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        # Answers every waiting subscriber at once, then gives requests in progress up
        # to 10 seconds to finish.
        server.stop(10)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
