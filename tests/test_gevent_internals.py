"""The private parts of gevent that wsgi_longpoll._gevent relies on: a gevent release that
changes one fails here first, by name."""

from __future__ import annotations

import socket
import struct

import gevent
import gevent.socket
import pytest
from gevent.server import StreamServer

from wsgi_longpoll._gevent import (
    pause_accepting,
    peek,
    peer_closed,
    raw_socket,
    read_watcher,
    send_all,
    wait_readable,
)


def _pair() -> tuple[gevent.socket.socket, gevent.socket.socket]:
    left, right = gevent.socket.socketpair()
    return left, right


def test_a_gevent_socket_wraps_a_non_blocking_standard_socket() -> None:
    left, right = _pair()
    with left, right:
        raw = raw_socket(left)
        assert isinstance(raw, socket.SocketType)  # the C socket, not gevent's
        assert raw is not left and raw.fileno() == left.fileno()
        assert raw.gettimeout() == 0.0  # non-blocking: a send never waits


def test_a_standard_socket_is_its_own_raw_socket() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert raw_socket(left) is left


def test_the_read_watcher_is_the_sockets_own_and_wakes_on_data() -> None:
    left, right = _pair()
    with left, right:
        loop = gevent.get_hub().loop
        watcher = read_watcher(left, loop)
        assert watcher is read_watcher(left, loop)  # not a new one per call
        woke: list[bool] = []
        watcher.start(lambda: woke.append(True))
        try:
            right.sendall(b"x")
            with gevent.Timeout(5):
                while not woke:
                    gevent.sleep(0.001)
        finally:
            watcher.stop()
        assert woke


def test_peer_closed_tells_a_hang_up_from_data() -> None:
    left, right = _pair()
    with left:
        right.sendall(b"x")
        assert not peer_closed(left)
        assert left.recv(1) == b"x"
        right.close()
        assert peer_closed(left)


def test_peek_reads_nothing_and_tells_data_end_of_file_and_reset_apart() -> None:
    left, right = _pair()
    with left:
        assert peek(left) is None  # nothing yet
        right.sendall(b"xy")
        assert peek(left) == b"x"
        assert left.recv(2) == b"xy"  # it was left unread
        right.shutdown(socket.SHUT_WR)
        assert peek(left) == b""  # end of file
        right.close()
    with gevent.socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = gevent.socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with accepted:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # a reset
            with gevent.Timeout(5):
                while True:
                    try:
                        if peek(accepted) is None:
                            gevent.sleep(0.001)  # not arrived yet
                            continue
                    except ConnectionResetError:
                        break
                    raise AssertionError("a reset read as data or an end of file")


def test_pause_accepting_stops_then_resumes_accepting() -> None:
    server = StreamServer(("127.0.0.1", 0), lambda sock, address: sock.close())
    server.start()
    try:
        pause_accepting(server, 0.05)
        assert server._watcher is None  # stop_accepting drops the accept watcher
        assert server._timer.active
        with gevent.Timeout(5):
            while server._watcher is None:  # the timer started accepting again
                gevent.sleep(0.01)
        with gevent.Timeout(5), gevent.socket.create_connection(
                ("127.0.0.1", server.server_port)) as client:
            assert client.recv(1) == b""  # accepted, then closed by the handler
    finally:
        server.close()


def test_wait_readable_waits_on_the_sockets_watcher_for_its_timeout() -> None:
    left, right = _pair()
    with left, right:
        left.settimeout(0.05)
        with pytest.raises(socket.timeout):
            wait_readable(left)  # nothing sent: the socket's own timeout ends the wait
        gevent.spawn_later(0.01, right.sendall, b"x")
        left.settimeout(5)
        wait_readable(left)
        assert raw_socket(left).recv(1) == b"x"


def test_send_all_sends_what_the_socket_buffer_cannot_take_at_once() -> None:
    left, right = _pair()
    with left, right:
        data = bytes(range(256)) * 40_000  # 10 MB: more than the socket buffers hold
        received = bytearray()

        def read() -> None:
            while len(received) < len(data):
                received.extend(right.recv(1 << 20))

        reader = gevent.spawn(read)
        with gevent.Timeout(30):
            send_all(left, data)
            reader.get()
        assert received == data
