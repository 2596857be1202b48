"""The seed's Server over real sockets on 127.0.0.1: lifecycle, addresses, concurrency."""

from __future__ import annotations

import datetime
import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from conftest import wait_until

from wsgi_longpoll import FilePersistorInfo, Server, ServerInfo
from wsgi_longpoll.server import parse_address


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (":8080", ("", 8080)),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_go_address_forms(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["8080", "::1:8080", "host:", "host:http", "h:65536", ""])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError, match="invalid address"):
        parse_address(address)


def test_start_answers_requests_from_a_plain_thread(server: Server, base_url: str) -> None:
    response = requests.post(f"{base_url}/publish", json={"category": "c", "data": 1}, timeout=10)
    assert response.content == b'{"success": true}'
    response = requests.get(f"{base_url}/events?timeout=5&category=c&since_time=1", timeout=10)
    assert response.json()["events"][0]["data"] == 1
    assert requests.get(f"{base_url}/elsewhere", timeout=10).status_code == 404


def test_python_code_publishes_through_the_servers_manager(server: Server, base_url: str) -> None:
    results: list[requests.Response] = []
    thread = threading.Thread(
        target=lambda: results.append(
            requests.get(f"{base_url}/events?timeout=20&category=c", timeout=30)
        )
    )
    thread.start()
    wait_until(lambda: server.manager.waiting_count("c") == 1)
    event = server.manager.publish("c", {"from": "python"})
    thread.join(30)
    assert results[0].json()["events"][0]["id"] == event.id


def test_start_twice_raises_and_leaves_the_server_running(server: Server, base_url: str) -> None:
    manager = server.manager
    with pytest.raises(RuntimeError, match="already running"):
        server.start(ServerInfo(address="127.0.0.1:0"))
    assert server.manager is manager
    assert requests.get(f"{base_url}/x", timeout=10).status_code == 404


def test_start_raises_when_the_address_is_taken(server: Server) -> None:
    other = Server()
    with pytest.raises(OSError):
        other.start(ServerInfo(address=f"127.0.0.1:{server.port}"))
    assert not other.running
    other.stop()  # never started: a no-op


def test_start_raises_on_invalid_options() -> None:
    other = Server()
    with pytest.raises(ValueError, match="timeout_seconds"):
        other.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=-1))
    with pytest.raises(ValueError, match="address"):
        other.start(ServerInfo(address="nonsense"))
    assert not other.running


def test_custom_uris_and_hooks() -> None:
    server = Server(access_log=False)
    server.start(ServerInfo(
        address="127.0.0.1:0",
        subscription_uri="/sub",
        publish_uri="/pub",
        handler_to_run_before_subscription=lambda request: request.args.get("key") == "k",
        handler_to_run_before_publish=lambda request: request.headers.get("X-Key") == "k",
    ))
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert requests.post(f"{base}/pub", json={"category": "c", "data": 1},
                             timeout=10).status_code == 403
        assert requests.post(f"{base}/pub", json={"category": "c", "data": 1},
                             headers={"X-Key": "k"}, timeout=10).status_code == 200
        assert requests.get(f"{base}/sub?timeout=1&category=c&since_time=1",
                            timeout=10).status_code == 403
        response = requests.get(f"{base}/sub?timeout=1&category=c&since_time=1&key=k", timeout=10)
        assert response.json()["events"][0]["data"] == 1
    finally:
        server.stop()


def park(base_url: str, category: str, count: int) -> tuple[list[threading.Thread], list[str]]:
    answers: list[str] = []

    def subscribe() -> None:
        answers.append(requests.get(f"{base_url}/events?timeout=30&category={category}",
                                    timeout=60).text)

    threads = [threading.Thread(target=subscribe) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, answers


def test_stop_answers_waiting_subscribers_at_once(server: Server, base_url: str) -> None:
    threads, answers = park(base_url, "c", 20)
    wait_until(lambda: server.manager.waiting_count() == 20)
    started = time.monotonic()
    server.stop(30)
    elapsed = time.monotonic() - started
    for thread in threads:
        thread.join(10)
    assert len(answers) == 20
    assert all(answer.startswith('{"timeout":"no events before timeout"') for answer in answers)
    assert elapsed < 15, "stop waited for the shutdown timeout instead of releasing subscribers"
    server.stop()  # idempotent


def test_stop_closes_idle_keep_alive_connections_at_once(server: Server, base_url: str) -> None:
    session = requests.Session()
    session.get(f"{base_url}/x", timeout=10)  # leaves a keep-alive connection open
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)  # idle, no request
    wait_until(lambda: len(server._wsgi_server.connections) == 2)  # both accepted
    started = time.monotonic()
    server.stop(30)
    assert time.monotonic() - started < 15
    assert raw.recv(1) == b""  # closed by the server
    raw.close()
    session.close()


def test_stop_lets_a_request_in_progress_finish(server: Server, base_url: str) -> None:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    body = b'{"category": "c", "data": 1}'
    raw.sendall(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                + body[:5])
    wait_until(lambda: any(handler.busy for handler in server._wsgi_server.connections))
    stopper = threading.Thread(target=server.stop, args=(20,))
    stopper.start()
    time.sleep(0.2)
    raw.sendall(body[5:])
    response = b""
    while chunk := raw.recv(4096):  # the server closes the connection: it is stopping
        response += chunk
    stopper.join(30)
    assert b'{"success": true}' in response
    raw.close()


def test_stop_accepts_a_timedelta(server: Server) -> None:
    server.stop(datetime.timedelta(seconds=1))
    assert not server.running


def test_start_again_on_the_same_object_and_address(server: Server) -> None:
    port = server.port
    server.manager.publish("c", 1)
    server.stop()
    server.start(ServerInfo(address=f"127.0.0.1:{port}"))
    assert server.port == port
    response = requests.post(f"http://127.0.0.1:{port}/publish",
                             json={"category": "c", "data": 2}, timeout=10)
    assert response.status_code == 200


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    server = Server(access_log=False)
    try:
        server.start(ServerInfo(address="[::1]:0"))
    except OSError as error:
        pytest.skip(f"cannot bind ::1: {error}")
    try:
        response = requests.post(f"http://[::1]:{server.port}/publish",
                                 json={"category": "c", "data": 1}, timeout=10)
        assert response.status_code == 200
    finally:
        server.stop()


def test_a_client_that_hangs_up_stops_waiting(server: Server) -> None:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    raw.sendall(b"GET /events?timeout=30&category=c HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: server.manager.waiting_count("c") == 1)
    raw.close()
    wait_until(lambda: server.manager.waiting_count("c") == 0, timeout=5)


def test_a_pipelined_request_does_not_end_the_wait(server: Server) -> None:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    raw.sendall(b"GET /events?timeout=30&category=c HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: server.manager.waiting_count("c") == 1)
    time.sleep(0.1)
    assert server.manager.waiting_count("c") == 1
    event = server.manager.publish("c", 1)
    reply = b""
    while b"404" not in reply:
        chunk = raw.recv(65536)
        assert chunk
        reply += chunk
    assert event.id.encode() in reply
    raw.close()


def test_listen_and_serve_failure_func_hears_of_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failures: list[BaseException] = []
    server = Server(access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0"), None, failures.append)

    def broken(self: Server, wsgi_server: object) -> None:
        raise RuntimeError("serving died")

    monkeypatch.setattr(Server, "_shutdown", broken)
    server.stop()
    assert [str(error) for error in failures] == ["serving died"]
    assert server.manager.closed  # the engine, its reader and its persister are released
    server.stop()  # and stopping again is still fine


def test_file_persistor_info_off_by_default() -> None:
    assert FilePersistorInfo() == FilePersistorInfo(use=False)


@pytest.fixture
def busy_server() -> Iterator[Server]:
    server = Server(access_log=False, max_event_buffer_size=100_000)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    yield server
    server.stop(5)


def test_concurrent_publishers_and_resuming_http_subscribers(busy_server: Server) -> None:
    """Threads publish over HTTP and from Python; HTTP subscribers resume; nothing lost."""
    base = f"http://127.0.0.1:{busy_server.port}"
    publishers, per_publisher = 4, 50
    total = publishers * per_publisher + per_publisher

    def publish_http(name: str) -> None:
        with requests.Session() as session:
            for n in range(per_publisher):
                response = session.post(f"{base}/publish",
                                        json={"category": "c", "data": f"{name}-{n}"}, timeout=10)
                assert response.status_code == 200

    def publish_python() -> None:
        for n in range(per_publisher):
            busy_server.manager.publish("c", f"python-{n}")

    def follow(seen: list[str]) -> None:
        since_time, last_id = 1, ""
        with requests.Session() as session:
            while len(seen) < total:
                params = {"category": "c", "timeout": 10, "since_time": since_time}
                if last_id:
                    params["last_id"] = last_id
                events = session.get(f"{base}/events", params=params, timeout=30).json()["events"]
                seen.extend(event["data"] for event in events)
                since_time, last_id = events[-1]["timestamp"], events[-1]["id"]

    follower_results: list[list[str]] = [[] for _ in range(4)]
    followers = [threading.Thread(target=follow, args=(seen,)) for seen in follower_results]
    workers = [threading.Thread(target=publish_http, args=(f"p{n}",)) for n in range(publishers)]
    workers.append(threading.Thread(target=publish_python))
    for thread in followers + workers:
        thread.start()
    for thread in workers + followers:
        thread.join(60)
    published = [event.data for event in busy_server.manager.buffered_events("c")]
    assert len(published) == total == len(set(published))
    for seen in follower_results:
        assert seen == published


def test_http_10_client_gets_an_answer(server: Server) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection._http_vsn, connection._http_vsn_str = 10, "HTTP/1.0"  # type: ignore[attr-defined]
    connection.request("GET", "/events?timeout=1&category=c")
    assert b"no events before timeout" in connection.getresponse().read()
    connection.close()
