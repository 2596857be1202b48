"""The command line: ``wsgi-longpoll serve`` in a real subprocess."""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests

from wsgi_longpoll import Server, ServerInfo
from wsgi_longpoll.cli import build_parser


def start_serving(*options: str) -> tuple[subprocess.Popen[str], str]:
    """Run ``python -m wsgi_longpoll serve`` on a free port; return it and its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "wsgi_longpoll", "serve", "--address", "127.0.0.1:0", *options],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:  # the banner names the port; it comes once the port is bound
        match = re.search(r"subscribe at (http://[\d.]+:\d+)/", line)
        if match:
            return process, match.group(1)
    process.kill()
    pytest.fail("the server exited before it was ready")


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[str], str]]:
    process, base_url = start_serving("--no-access-log", "--timeout-seconds", "30")
    yield process, base_url
    if process.poll() is None:
        process.kill()
        process.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_answers_and_exits_0_on_signal(
    served: tuple[subprocess.Popen[str], str], sig: signal.Signals
) -> None:
    process, base_url = served
    assert requests.post(f"{base_url}/publish", json={"category": "c", "data": 1},
                         timeout=10).status_code == 200
    response = requests.get(f"{base_url}/events?timeout=30&category=c&since_time=1", timeout=10)
    assert response.json()["events"][0]["data"] == 1
    process.send_signal(sig)
    assert process.wait(20) == 0


def test_options_reach_the_server() -> None:
    process, base_url = start_serving(
        "--timeout-seconds", "7", "--subscription-uri", "/sub", "--publish-uri", "/pub",
        "--buffer-size", "2", "--no-access-log", "--max-categories-per-request", "2",
    )
    try:
        for n in range(3):
            requests.post(f"{base_url}/pub", json={"category": "c", "data": n}, timeout=10)
        events = requests.get(f"{base_url}/sub?timeout=7&category=c&since_time=1",
                              timeout=10).json()["events"]
        assert [event["data"] for event in events] == [1, 2]
        error = requests.get(f"{base_url}/sub?timeout=8&category=c", timeout=10).json()
        assert error == {"error": "Invalid or missing 'timeout' arg.  Must be 1-7."}
        too_many = requests.get(f"{base_url}/sub?timeout=1&category=a&categories=b&categories=c",
                                timeout=10).json()
        assert too_many == {"error": "Too many categories: at most 2 in one request."}
    finally:
        process.terminate()
        assert process.wait(20) == 0


def test_unusable_address_exits_1_with_a_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wsgi_longpoll", "serve", "--address", "nonsense"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert "invalid address 'nonsense'" in result.stderr


def serve_parser() -> argparse.ArgumentParser:
    commands = next(
        action for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    parser: argparse.ArgumentParser = commands.choices["serve"]
    return parser


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = capsys.readouterr().out
    options = [action for action in serve_parser()._actions if action.option_strings]
    assert len(options) > 15
    for action in options:
        assert action.help, f"{action.option_strings} has no help"
        assert action.option_strings[-1] in help_text


@pytest.mark.parametrize(
    "option",
    ["--address", "--timeout-seconds", "--subscription-uri", "--publish-uri", "--buffer-size",
     "--ttl-seconds", "--persist-file", "--write-buffer-size", "--write-flush-period-seconds",
     "--fsync", "--log-level", "--no-access-log"],
)
def test_options_named_after_server_info_and_the_manager_exist(option: str) -> None:
    assert any(option in action.option_strings for action in serve_parser()._actions)


@pytest.mark.parametrize("arguments", [["serve", "--buffer-size", "0"],
                                       ["serve", "--ttl-seconds", "-1"], []])
def test_bad_arguments_are_usage_errors(arguments: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(arguments)
    assert exit_info.value.code == 2


def test_default_address_is_loopback() -> None:
    assert build_parser().parse_args(["serve"]).address == "127.0.0.1:8080"


def test_every_server_option_is_on_the_command_line_with_the_servers_default() -> None:
    from wsgi_longpoll.cli import server_info, server_options
    from wsgi_longpoll.server import ServerOptions

    args = build_parser().parse_args(["serve"])
    assert server_options(args) == ServerOptions()
    info = server_info(args)
    assert (info.timeout_seconds, info.subscription_uri, info.publish_uri) \
        == (ServerInfo.timeout_seconds, ServerInfo.subscription_uri, ServerInfo.publish_uri)
    given = build_parser().parse_args(["serve", "--ttl-seconds", "0", "--header-timeout", "0",
                                       "--cors-origin", "https://a.example",
                                       "--body-timeout", "5"])
    options = server_options(given)
    assert options.event_time_to_live_seconds is None
    assert options.header_timeout is None
    assert options.body_timeout == 5
    assert options.cors_origins == ("https://a.example",)
    streams = server_options(build_parser().parse_args(
        ["serve", "--max-memory-bytes", "0", "--sse-retry-ms", "500",
         "--sse-keepalive-seconds", "0.5"]))
    assert (streams.max_memory_bytes, streams.sse_retry_ms, streams.sse_keepalive_seconds) \
        == (None, 500, 0.5)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ([], ("*",)),
        (["--cors-allow-headers", "X-Token"], ("X-Token",)),
        (["--cors-allow-headers", "X-Token, X-Trace", "--cors-allow-headers", "X-More"],
         ("X-Token", "X-Trace", "X-More")),
    ],
    ids=["default", "one-replaces-the-default", "commas-and-repeats"],
)
def test_a_list_option_given_replaces_its_default(
    arguments: list[str], expected: tuple[str, ...]
) -> None:
    from wsgi_longpoll.cli import server_options

    options = server_options(build_parser().parse_args(["serve", *arguments]))
    assert options.cors_allow_headers == expected


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--max-body-size", "many"], "--max-body-size: the value must be an integer"),
        (["--cors-origins", "app.example"], "invalid origin 'app.example'"),
        (["--redis-url", "http://127.0.0.1:6379"],
         "must be a redis://, rediss://, unix:// or redis+sentinel://"),
    ],
    ids=["not-a-number", "not-an-origin", "not-a-redis-url"],
)
def test_a_bad_value_is_a_usage_error_naming_the_flag(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["serve", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_stream_options_reach_the_stream() -> None:
    server = Server(access_log=False, sse_retry_ms=500, sse_keepalive_seconds=0.2)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=5))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
            connection.sendall(b"GET /events?category=c&timeout=2 HTTP/1.1\r\n"
                               b"Host: x\r\nAccept: text/event-stream\r\n\r\n")
            received = b""
            while b": keep-alive" not in received:
                chunk = connection.recv(4096)
                assert chunk, received
                received += chunk
        assert b"retry: 500\n" in received
    finally:
        server.stop(5)


def test_help_shows_no_default_for_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """``--no-demo ... (default: True)`` read backwards: flags show no default."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: True)" not in help_text
    assert "(default: False)" not in help_text
    assert "--no-access-log do not log each request" in help_text
    assert "(default: 127.0.0.1:8080)" in help_text  # other options keep theirs
