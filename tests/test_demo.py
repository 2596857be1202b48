"""The chat demo app and the middleware's serving of the browser client (WebTest, no browser)."""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files
from typing import Any

import pytest
import requests
from test_cli import start_serving
from webtest import TestApp

from wsgi_longpoll import LongpollManager, LongpollMiddleware
from wsgi_longpoll.wsgi.demo import DemoApp

STATIC = files("wsgi_longpoll") / "static"


def fallback(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"the wrapped app"]


@pytest.mark.parametrize(
    ("path", "content_type", "file"),
    [
        ("/static/longpoll.js", "text/javascript", "longpoll.js"),
        ("/static/longpoll.global.js", "text/javascript", "longpoll.global.js"),
        ("/static/demo/demo.js", "text/javascript", "demo/demo.js"),
        ("/static/demo/demo.css", "text/css", "demo/demo.css"),
    ],
    ids=["module", "plain-script", "page-script", "stylesheet"],
)
def test_demo_serves_the_static_files(path: str, content_type: str, file: str) -> None:
    response = TestApp(DemoApp()).get(path)
    assert response.content_type in (content_type, "application/javascript")
    assert response.body == (STATIC / file).read_bytes()
    assert response.headers["Cache-Control"] == "max-age=3600, public"
    again = TestApp(DemoApp()).get(path, headers={"If-None-Match": response.headers["ETag"]},
                                   status=304)
    assert again.body == b""


def test_demo_page_points_at_the_servers_endpoints() -> None:
    app = DemoApp("/lp/sub", "/lp/pub", category='a"<b', timeout_seconds=20)
    page = TestApp(app).get("/").text
    assert (
        'data-subscribe-url="/lp/sub" data-publish-url="/lp/pub" data-category="a&quot;&lt;b"'
        in page
    )
    assert 'data-timeout-seconds="20"' in page
    assert '<script type="module" src="/static/demo/demo.js">' in page


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/", 405),
        ("DELETE", "/static/longpoll.js", 405),
        ("GET", "/static/missing.js", 404),
        ("GET", "/static/../demo.py", 404),
        ("GET", "/elsewhere", 404),
    ],
    ids=["post-page", "delete-static", "missing", "outside-static", "other-path"],
)
def test_demo_refuses_what_it_does_not_serve(method: str, path: str, status: int) -> None:
    TestApp(DemoApp()).request(path, method=method, status=status)


def test_demo_passes_other_paths_to_the_app_given() -> None:
    assert TestApp(DemoApp(app=fallback)).get("/elsewhere").text == "the wrapped app"


@pytest.mark.parametrize(
    "options",
    [{"category": ""}, {"timeout_seconds": 0}],
    ids=["empty-category", "zero-timeout"],
)
def test_demo_refuses_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DemoApp(**options)


def middleware(**options: Any) -> TestApp:
    return TestApp(LongpollMiddleware(fallback, LongpollManager(), **options))


@pytest.mark.parametrize(
    ("client_script_path", "module", "plain"),
    [
        ("/longpoll.js", "/longpoll.js", "/longpoll.global.js"),
        ("/assets/lp.js", "/assets/lp.js", "/assets/longpoll.global.js"),
    ],
    ids=["root", "directory"],
)
def test_middleware_serves_both_forms_of_the_client(
    client_script_path: str, module: str, plain: str
) -> None:
    app = middleware(client_script_path=client_script_path)
    module_answer = app.get(module)
    plain_answer = app.get(plain)
    assert module_answer.body == (STATIC / "longpoll.js").read_bytes()
    assert plain_answer.body == (STATIC / "longpoll.global.js").read_bytes()
    for answer in (module_answer, plain_answer):
        assert answer.content_type in ("text/javascript", "application/javascript")
        assert answer.headers["Cache-Control"] == "max-age=3600, public"
        assert "ETag" in answer.headers
    app.get(module, headers={"If-None-Match": module_answer.headers["ETag"]}, status=304)
    assert app.head(module).headers["Content-Length"] == str(len(module_answer.body))
    assert app.post(module, status=405).headers["Allow"] == "GET, HEAD"


def test_middleware_serves_no_client_unless_asked() -> None:
    assert middleware().get("/longpoll.js").text == "the wrapped app"


@pytest.mark.parametrize(
    "options",
    [
        {"client_script_path": "longpoll.js"},
        {"client_script_path": "/longpoll"},
        {"client_script_path": "/longpoll.global.js"},
        {"client_script_path": "/feed.js", "subscription_path": "/feed.js"},
        {"client_script_path": "/lp.js", "publish_path": "/longpoll.global.js"},
    ],
    ids=["relative", "no-js-suffix", "plain-script-name", "subscription-path", "publish-path"],
)
def test_middleware_refuses_a_bad_client_script_path(options: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        LongpollMiddleware(fallback, LongpollManager(), **options)


@pytest.mark.parametrize(
    ("options", "status"),
    [((), 200), (("--no-demo",), 404)],
    ids=["default", "no-demo"],
)
def test_serve_shows_the_chat_at_the_root(options: tuple[str, ...], status: int) -> None:
    process, base_url = start_serving(
        "--no-access-log", "--subscription-uri", "/sub", "--timeout-seconds", "30", *options
    )
    try:
        page = requests.get(f"{base_url}/", timeout=10)
        client = requests.get(f"{base_url}/static/longpoll.js", timeout=10)
    finally:
        process.terminate()
        assert process.wait(20) == 0
    assert (page.status_code, client.status_code) == (status, status)
    if status == 200:
        assert 'data-subscribe-url="/sub"' in page.text
        assert 'data-timeout-seconds="30"' in page.text


def test_demo_page_sends_security_headers_and_an_icon() -> None:
    client = TestApp(DemoApp())
    page = client.get("/")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    # The page names an empty icon (allowed by img-src data:), so browsers ask for none.
    assert '<link rel="icon" href="data:,">' in page.text
    assert "img-src 'self' data:" in csp
    assert "<script>" not in page.text and " style=" not in page.text  # nothing inline
    favicon = client.get("/favicon.ico", status=204)
    assert favicon.body == b""


def test_demo_leaves_the_favicon_to_the_app_given() -> None:
    assert TestApp(DemoApp(app=fallback)).get("/favicon.ico").body == b"the wrapped app"
    TestApp(DemoApp()).post("/favicon.ico", status=404)
