"""The README's Flask snippet runs as written: a private channel per user, publishing
closed to clients, the polls held by this package's server."""

from __future__ import annotations

import importlib.util
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import wait_until

from wsgi_longpoll import Server, ServerInfo

README = Path(__file__).resolve().parent.parent / "README.md"


def _flask_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (snippet,) = [block for block in blocks if "from wsgi_longpoll.contrib.flask" in block]
    return str(snippet)


@pytest.fixture
def readme_app(tmp_path: Path) -> Any:
    path = tmp_path / "readme_flask_app.py"
    path.write_text(_flask_snippet(), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("readme_flask_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_flask_snippet_keeps_each_users_channel_private(readme_app: Any) -> None:
    server = Server(app=readme_app.app, access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", subscription_uri=None, publish_uri=None))
    base = f"http://127.0.0.1:{server.port}"
    try:
        ann, bob = requests.Session(), requests.Session()
        assert ann.post(f"{base}/login/7", timeout=10).status_code == 204
        assert bob.post(f"{base}/login/8", timeout=10).status_code == 204
        poll = f"{base}/events?category=user-7&timeout=20"
        assert bob.get(poll, timeout=10).status_code == 403
        assert requests.get(poll, timeout=10).status_code == 403  # anonymous
        # Publishing over HTTP is off: the path is no route of the application's.
        published = requests.post(f"{base}/publish",
                                  json={"category": "user-7", "data": "forged"}, timeout=10)
        assert published.status_code in (404, 405)
        assert requests.post(f"{base}/orders", timeout=10).status_code == 401

        answers: list[requests.Response] = []
        thread = threading.Thread(target=lambda: answers.append(ann.get(poll, timeout=30)))
        thread.start()
        manager = readme_app.longpoll.manager
        wait_until(lambda: manager.waiting_count("user-7") == 1)
        assert ann.post(f"{base}/orders", timeout=10).status_code == 201
        thread.join(30)
    finally:
        server.stop(5)
    assert [event["data"] for event in answers[0].json()["events"]] == [{"order": 42}]


def test_the_frameworks_pages_flask_example_serves_its_client_and_refuses_strangers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = (README.parent / "docs" / "frameworks.md").read_text(encoding="utf-8")
    (snippet,) = re.findall(r"```python\n(# myapp/__init__.py\n.*?)```", text, flags=re.S)
    path = tmp_path / "frameworks_myapp.py"
    path.write_text(snippet, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("frameworks_myapp", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setenv("SECRET_KEY", "test")
    spec.loader.exec_module(module)
    server = Server(app=module.create_app(), access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", subscription_uri=None, publish_uri=None))
    base = f"http://127.0.0.1:{server.port}"
    try:
        # The page's import, and the plain script beside it.
        assert requests.get(f"{base}/longpoll.js", timeout=10).status_code == 200
        assert requests.get(f"{base}/longpoll.global.js", timeout=10).status_code == 200
        assert requests.get(f"{base}/events?category=user-1&timeout=1",
                            timeout=10).status_code == 403
        assert requests.post(f"{base}/messages/1", json={"text": "x"},
                             timeout=10).status_code == 401
    finally:
        server.stop(5)
