"""The browser client and the chat demo in a real headless Chromium, driven by Selenium.

They need Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and
skip, saying so, where they are missing. Every server is on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import publish_concurrently
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.wrappers import Request, Response

from wsgi_longpoll import FilePersistorInfo, Server, ServerInfo
from wsgi_longpoll.client.api import PublishRequest, SubscriptionRequest, publish, subscription
from wsgi_longpoll.client.follower import Cursor
from wsgi_longpoll.engines import MemoryEngine
from wsgi_longpoll.event import Event
from wsgi_longpoll.wsgi.demo import DemoApp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="the browser tests need Chromium and its driver: "
    "apt-get install chromium chromium-driver",
)

#: How long a page may take to show what the test waits for.
WAIT_SECONDS = 20


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """A headless Chromium with a fresh profile, quit after the test."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        # Two windows both stay "in front": no timer throttling of the one not focused.
        "--disable-background-timer-throttling",
        "--disable-backgrounding-occluded-windows",
        "--disable-renderer-backgrounding",
        "--window-size=900,760",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER or ""), options=options)
    driver.set_script_timeout(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


class DemoServer:
    """The standalone server with the chat demo, persisting to a file, restartable."""

    def __init__(self, tmp_path: Path) -> None:
        self.persistence = FilePersistorInfo(
            use=True,
            file_name=str(tmp_path / "events.jsonl"),
            write_flush_period_seconds=0.05,
        )
        self.server = Server(app=DemoApp(timeout_seconds=25), access_log=False)
        self.server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30), self.persistence)
        self.address = f"127.0.0.1:{self.server.port}"
        self.url = f"http://{self.address}"

    def restart(self, *, down_for: Callable[[], None] | None = None) -> None:
        """Stop; run *down_for* while the port is free; start again on the same address."""
        self.server.stop(5)
        if down_for is not None:
            down_for()
        self.server.start(ServerInfo(address=self.address, timeout_seconds=30), self.persistence)

    def publish(self, data: Any, category: str = "chat") -> None:
        answer = publish(f"{self.url}/publish", 5, None, PublishRequest(category, data), "", "",
                         None)
        assert answer.status_code == 200, answer.text


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoServer]:
    server = DemoServer(tmp_path)
    yield server
    server.server.stop(5)


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    return WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.05).until(
        condition, f"the page did not show {what} within {WAIT_SECONDS} s"
    )


def messages(driver: WebDriver) -> list[str]:
    return [item.text for item in driver.find_elements(By.CSS_SELECTOR, "#messages li .text")]


def message_ids(driver: WebDriver) -> list[str]:
    return [
        str(item.get_attribute("data-id"))
        for item in driver.find_elements(By.CSS_SELECTOR, "#messages li")
    ]


def state(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "state").get_attribute("data-state"))


def open_chat(driver: WebDriver, url: str, query: str = "") -> None:
    driver.get(url + "/" + query)
    wait_for(driver, lambda d: state(d) == "connected", "the state 'connected'")


def send(driver: WebDriver, name: str, text: str) -> None:
    name_input = driver.find_element(By.ID, "name")
    name_input.clear()
    name_input.send_keys(name)
    driver.find_element(By.ID, "message").send_keys(text)
    driver.find_element(By.ID, "send").click()


def run_async(driver: WebDriver, body: str, *args: Any) -> Any:
    """Run *body* as an async function in the page (``args`` is its ``arguments``)."""
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const args = Array.from(arguments).slice(0, -1);"
        f"(async (...args) => {{ {body} }})(...args)"
        ".then(done, (e) => done({error: String(e && e.stack || e)}));",
        *args,
    )
    if isinstance(result, dict) and "error" in result:
        pytest.fail(f"the page's script failed: {result['error']}")
    return result


def test_two_pages_see_each_others_messages_at_once(
    browser: WebDriver, demo: DemoServer, tmp_path: Path
) -> None:
    open_chat(browser, demo.url)
    alice = browser.current_window_handle
    browser.switch_to.new_window("window")
    open_chat(browser, demo.url)
    bob = browser.current_window_handle

    browser.switch_to.window(alice)
    send(browser, "alice", "hello from alice")
    browser.switch_to.window(bob)
    wait_for(browser, lambda d: messages(d) == ["hello from alice"], "alice's message")
    send(browser, "bob", "hi alice, bob here")
    browser.switch_to.window(alice)
    wait_for(browser, lambda d: len(messages(d)) == 2, "bob's answer")

    assert messages(browser) == ["hello from alice", "hi alice, bob here"]
    alice_ids = message_ids(browser)
    browser.switch_to.window(bob)
    assert message_ids(browser) == alice_ids
    assert state(browser) == "connected"
    assert browser.find_element(By.ID, "message").get_attribute("value") == ""

    browser.switch_to.window(alice)
    screenshot = tmp_path / "chat-two-windows.png"
    assert browser.save_screenshot(str(screenshot))
    print(f"\nscreenshot of alice's window after the exchange: {screenshot}")


def test_a_page_resumes_without_loss_after_the_server_restarts(
    browser: WebDriver, demo: DemoServer, tmp_path: Path
) -> None:
    for n in range(5):
        demo.publish({"name": "feed", "text": f"message {n}"})
    open_chat(browser, demo.url)
    wait_for(browser, lambda d: len(messages(d)) == 5, "the first five messages")

    def until_the_page_notices() -> None:
        wait_for(browser, lambda d: state(d) == "reconnecting", "the state 'reconnecting'")

    demo.restart(down_for=until_the_page_notices)
    # The page is backing off: these are published before it polls again, and it must
    # fetch them with its cursor; the first five (restored from the file) not again.
    for n in range(5, 10):
        demo.publish({"name": "feed", "text": f"message {n}"})
    wait_for(browser, lambda d: len(messages(d)) >= 10, "the five messages sent while it was away")
    wait_for(browser, lambda d: state(d) == "connected", "the state 'connected'")

    assert messages(browser) == [f"message {n}" for n in range(10)]
    assert len(set(message_ids(browser))) == 10
    screenshot = tmp_path / "chat-after-restart.png"
    assert browser.save_screenshot(str(screenshot))
    print(f"\nscreenshot after the server restart: {screenshot}")


class RequestCounter:
    """A subscribe hook that answers 503 and notes when each request came."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Response:
        with self.lock:
            self.arrivals.append(time.monotonic())
        return Response('{"error": "down for maintenance"}', status=503,
                        content_type="application/json")

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)


def outage(address: str, counter: RequestCounter) -> Server:
    """A server on *address* that answers every subscribe with 503."""
    down = Server(access_log=False)
    down.start(ServerInfo(address=address, handler_to_run_before_subscription=counter))
    return down


def test_the_demo_backs_off_while_the_server_is_down(
    browser: WebDriver, demo: DemoServer
) -> None:
    open_chat(browser, demo.url)
    counter = RequestCounter()
    observed_for = 4.0

    def down_for() -> None:
        down = outage(demo.address, counter)
        try:
            wait_for(browser, lambda d: counter.count >= 2, "a retry")
            time.sleep(observed_for)  # the observation window: count what comes in it
            seen = counter.count
        finally:
            down.stop(5)
        # Default backoff: pauses drawn from [0, 0.5], [0, 1], [0, 2], ... seconds. A client
        # without backoff would send hundreds of requests in this window.
        assert seen <= 12, f"{seen} polls while the server was down: a request storm"

    demo.restart(down_for=down_for)
    demo.publish({"name": "ops", "text": "back up"})
    wait_for(browser, lambda d: messages(d) == ["back up"], "the message sent after the outage")
    assert state(browser) == "connected"


def test_pauses_grow_exponentially_and_stop_ends_the_retries(
    browser: WebDriver, demo: DemoServer
) -> None:
    # The client's own backoff with its random draw pinned to 1: pauses of exactly 0.2,
    # 0.4, 0.8, 1.6 s. The server sees the gaps between polls; they can only be longer.
    browser.get(demo.url + "/no-page-here")
    run_async(browser, """
        const { LongpollClient } = await import("/static/longpoll.js");
        window.states = [];
        window.client = new LongpollClient({
          subscribeUrl: "/events", category: "chat", timeoutSeconds: 5,
          backoff: { initialMs: 200, maximumMs: 10000, random: () => 1 },
          onState: (state) => window.states.push(state),
        });
        window.client.start();
    """)
    wait_for(browser, lambda d: d.execute_script("return window.client.state") == "connected",
             "the client connected")
    counter = RequestCounter()

    def down_for() -> None:
        down = outage(demo.address, counter)
        try:
            wait_for(browser, lambda d: counter.count >= 4, "four polls during the outage")
            browser.execute_script("window.client.stop()")
            stopped_at = counter.count
            time.sleep(2.0)  # longer than the pause of 1.6 s that stop() cut short
            assert counter.count == stopped_at, "the client polled after stop()"
        finally:
            down.stop(5)

    demo.restart(down_for=down_for)
    arrivals = counter.arrivals
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    assert len(gaps) >= 3
    for gap, pause in zip(gaps[:3], [0.2, 0.4, 0.8], strict=True):
        assert gap >= pause * 0.9, f"polls {gaps} came faster than the pauses 0.2, 0.4, 0.8 s"
    states = browser.execute_script("return window.states")
    assert states[:3] == ["connecting", "connected", "reconnecting"]
    assert states[-1] == "stopped"


def test_both_script_forms_and_a_reload_resume_from_the_stored_cursor(
    browser: WebDriver, demo: DemoServer
) -> None:
    for n in range(3):
        demo.publish(n, "feed")
    follow = """
        const [LongpollClient, storageKey] = args;
        window.got = [];
        window.client = new LongpollClient({
          subscribeUrl: "/events", category: "feed", timeoutSeconds: 5,
          cursor: 0, storageKey,
          onEvent: (event) => window.got.push(event),
        });
        window.client.start();
    """
    page = demo.url + "/no-page-here"  # any page of the origin will do

    # First visit: the plain script, window.WsgiLongpoll.
    browser.get(page)
    run_async(browser, """
        await new Promise((resolve, reject) => {
          const script = document.createElement("script");
          script.src = "/static/longpoll.global.js";
          script.onload = resolve;
          script.onerror = reject;
          document.head.append(script);
        });
    """)
    browser.execute_script(
        f"const args = [window.WsgiLongpoll.LongpollClient, 'feed-cursor']; {follow}"
    )
    wait_for(browser, lambda d: len(d.execute_script("return window.got")) == 3, "three events")
    first = browser.execute_script("return window.got")
    browser.execute_script("window.client.stop()")

    # Published while the page is being reloaded.
    demo.publish(3, "feed")
    demo.publish(4, "feed")

    # Second visit: the ES module, the same storage key.
    browser.get(page)
    run_async(browser, f"""
        const module = await import("/static/longpoll.js");
        args = [module.LongpollClient, "feed-cursor"];
        {follow}
    """)
    wait_for(browser, lambda d: len(d.execute_script("return window.got")) >= 2, "two events")
    second = browser.execute_script("return window.got")
    saved = json.loads(browser.execute_script("return localStorage.getItem('feed-cursor')"))

    assert [event["data"] for event in first] == [0, 1, 2]
    assert [event["data"] for event in second] == [3, 4]
    assert Cursor.from_dict(saved) == Cursor(second[-1]["timestamp"], second[-1]["id"])


def test_basic_auth_and_headers_reach_the_server_and_a_refusal_stops_the_client(
    browser: WebDriver, tmp_path: Path
) -> None:
    def require_credentials(request: Request) -> bool | Response:
        authorization = request.authorization
        if (
            authorization is None
            or (authorization.username, authorization.password) != ("ann", "pässword")
            or request.headers.get("X-Client") != "test"
        ):
            return Response("who are you?", status=401)
        return True

    server = Server(app=DemoApp(), access_log=False)
    server.start(ServerInfo(
        address="127.0.0.1:0",
        handler_to_run_before_subscription=require_credentials,
        handler_to_run_before_publish=require_credentials,
    ))
    try:
        browser.get(f"http://127.0.0.1:{server.port}/no-page-here")
        result = run_async(browser, """
            const { LongpollClient, SubscriptionRejected } = await import("/static/longpoll.js");
            const stranger = new LongpollClient({ subscribeUrl: "/events", category: "c" });
            const refused = await new Promise((resolve) => {
              stranger.onError = (error) => resolve({
                rejected: error instanceof SubscriptionRejected, status: error.status,
              });
              stranger.start();
            });
            const friend = new LongpollClient({
              subscribeUrl: "/events", publishUrl: "/publish", category: "c", cursor: 0,
              timeoutSeconds: 5, username: "ann", password: "pässword",
              headers: { "X-Client": "test" },
            });
            const received = new Promise((resolve) => { friend.onEvent = resolve; });
            friend.start();
            await friend.publish({ hello: "world" });
            const event = await received;
            friend.stop();
            return { refused, strangerState: stranger.state, data: event.data };
        """)
    finally:
        server.stop(5)
    assert result == {
        "refused": {"rejected": True, "status": 401},
        "strangerState": "stopped",
        "data": {"hello": "world"},
    }



def test_each_poll_asks_after_the_last_event_and_nothing_comes_twice(
    browser: WebDriver, demo: DemoServer
) -> None:
    # A scripted fetch, as in test_follower.py: the exact queries, and what is handed out.
    browser.get(demo.url + "/no-page-here")
    result = run_async(browser, """
        const { LongpollClient } = await import("/static/longpoll.js");
        const ev = (timestamp, id) => ({ timestamp, category: "news", data: id, id });
        const answers = [
          { timeout: "no events before timeout", timestamp: 1000 },  // from now: nothing yet
          { events: [ev(1001, "a"), ev(1001, "b"), ev(1001, "x")] },
          { timeout: "no events before timeout", timestamp: 5000 },  // keep the cursor
          { events: [ev(1001, "a"), ev(1001, "b")] },  // x lost: these again, at once
          { events: [ev(1002, "c")] },
        ];
        const queries = [];
        const got = [];
        return await new Promise((resolve) => {
          const client = new LongpollClient({
            subscribeUrl: "/events", category: "news",
            onEvent: (event) => got.push(event.id),
            fetch: async (url) => {
              const query = Object.fromEntries(new URL(url).searchParams);
              queries.push(query);
              if (!answers.length) {
                client.stop();
                resolve({ queries, got, cursor: client.cursor });
                return new Promise(() => {});
              }
              return new Response(JSON.stringify(answers.shift()), { status: 200 });
            },
          });
          client.start();
        });
    """)
    assert result["got"] == ["a", "b", "x", "c"]
    assert result["queries"] == [
        {"category": "news", "timeout": "1"},
        {"category": "news", "timeout": "45", "since_time": "999"},
        {"category": "news", "timeout": "45", "since_time": "1001", "last_id": "x"},
        {"category": "news", "timeout": "45", "since_time": "1001", "last_id": "x"},
        {"category": "news", "timeout": "45", "since_time": "1001", "last_id": "b"},
        {"category": "news", "timeout": "45", "since_time": "1002", "last_id": "c"},
    ]
    assert result["cursor"] == {"sinceTime": 1002, "lastId": "c"}


# --- several categories with one cursor, and the gap signal ---------------------------------


def test_categories_go_in_one_query_and_a_gap_is_reported_once_after_its_events(
    browser: WebDriver, demo: DemoServer
) -> None:
    # A scripted fetch: the exact queries, and the order of onEvent and onGap calls.
    browser.get(demo.url + "/no-page-here")
    result = run_async(browser, """
        const { LongpollClient } = await import("/static/longpoll.js");
        const ev = (timestamp, category, id) => ({ timestamp, category, data: id, id });
        const gap = (category, since_time, last_id) => ({ category, since_time, last_id });
        const answers = [
          { events: [ev(10, "news", "a")] },
          { events: [ev(20, "sport", "d"), ev(21, "news", "e")], gaps: [gap("news", 15, "c")] },
          { timeout: "no events before timeout", timestamp: 99, gaps: [gap("sport", 30, "s")] },
          { events: [ev(30, "news", "f")], gaps: [gap("news", 30, "g")] },
          { timeout: "no events before timeout", timestamp: 99, gaps: [gap("news", 30, "g")] },
        ];
        const queries = [];
        const log = [];
        return await new Promise((resolve) => {
          const client = new LongpollClient({
            subscribeUrl: "/events", category: "news", categories: ["sport", "news", "weather"],
            cursor: { sinceTime: 5, lastId: "x" },
            onEvent: (event) => log.push(event.id),
            onGap: (detail) => log.push(detail),
            fetch: async (url) => {
              queries.push(Array.from(new URL(url).searchParams));
              if (!answers.length) {
                client.stop();
                resolve({ queries, log, cursor: client.cursor, categories: client.categories });
                return new Promise(() => {});
              }
              return new Response(JSON.stringify(answers.shift()), { status: 200 });
            },
          });
          client.start();
        });
    """)
    assert result["categories"] == ["news", "sport", "weather"]
    more = [["categories", "sport"], ["categories", "weather"]]
    # After a gap in an answer without events, the next poll asks after the gap; with
    # events of the same millisecond as the gap, after the last event.
    cursors = [("5", "x"), ("10", "a"), ("21", "e"), ("30", "s"), ("30", "f"), ("30", "g")]
    assert result["queries"] == [
        [["category", "news"], *more, ["timeout", timeout], ["since_time", since],
         ["last_id", last]]
        for timeout, (since, last) in zip(["1"] + ["45"] * 5, cursors, strict=True)
    ]
    assert result["log"] == [
        "a", "d", "e",
        {"gaps": [{"category": "news", "sinceTime": 15, "lastId": "c"}],
         "cursor": {"sinceTime": 10, "lastId": "a"}},
        {"gaps": [{"category": "sport", "sinceTime": 30, "lastId": "s"}],
         "cursor": {"sinceTime": 21, "lastId": "e"}},
        "f",
        {"gaps": [{"category": "news", "sinceTime": 30, "lastId": "g"}],
         "cursor": {"sinceTime": 30, "lastId": "s"}},
    ]  # the same gap named again by the last answer is not reported twice
    assert result["cursor"] == {"sinceTime": 30, "lastId": "g"}


FOLLOW_AND_LOG = """
    const [categories, cursor] = args;
    const { LongpollClient } = await import("/static/longpoll.js");
    window.log = [];
    window.client = new LongpollClient({
      subscribeUrl: "/events", categories, cursor, timeoutSeconds: 5,
      onEvent: (event) => window.log.push(event),
      onGap: (detail) => window.log.push(detail),
    });
    window.client.start();
"""


def page_log(driver: WebDriver) -> list[dict[str, Any]]:
    return list(driver.execute_script("return window.log"))


def test_three_categories_published_concurrently_arrive_in_publish_order_once(
    browser: WebDriver,
) -> None:
    per_category = 50
    server = Server(app=DemoApp(), max_event_buffer_size=1000, access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=10))
    url = f"http://127.0.0.1:{server.port}"
    try:
        browser.get(url + "/no-page-here")
        run_async(browser, FOLLOW_AND_LOG, ["x", "y", "z"], None)
        # Connected: it holds a cursor from the server's clock, so nothing is missed.
        wait_for(browser, lambda d: d.execute_script("return window.client.state") == "connected",
                 "the client connected")

        publish_concurrently(url, "xyz", per_category)
        wait_for(browser, lambda d: len(page_log(d)) >= 3 * per_category, "every event")
        received = page_log(browser)
        everything = subscription(
            f"{url}/events", None, SubscriptionRequest("x", 1, -1, categories=["y", "z"]),
            "", "", None,
        ).events
        cursor = browser.execute_script("window.client.stop(); return window.client.cursor")
    finally:
        server.stop(5)
    assert len(everything) == 3 * per_category
    assert [Event.from_dict(record) for record in received] == everything
    assert cursor == {"sinceTime": everything[-1].timestamp, "lastId": everything[-1].id}



@pytest.mark.parametrize(
    ("cause", "published_while_stopped", "dropped_unseen"),
    [
        ("size", 2, 0),
        ("size", 3, 0),  # only the event it had received is dropped
        ("size", 4, 1),
        ("size", 6, 3),
        ("age", 0, 0),  # only the event it had received expires
        ("age", 2, 2),
    ],
    ids=["size-nothing-dropped", "size-seen-dropped", "size-one-unseen", "size-three-unseen",
         "age-seen-expired", "age-unseen-expired"],
)
def test_on_gap_is_called_exactly_when_unseen_events_were_dropped(
    browser: WebDriver, engine_clock: list[int], cause: str, published_while_stopped: int,
    dropped_unseen: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The page stops following after the first event (a tab put away, say) while events
    # are published to "c"; started again, it goes on from its cursor. (Without the grace
    # that keeps the events after what it was handed: the clock does not move here.)
    monkeypatch.setattr(MemoryEngine, "repoll_grace_seconds", 0)
    options: dict[str, Any] = (
        {"max_event_buffer_size": 3} if cause == "size" else {"event_time_to_live_seconds": 10}
    )
    server = Server(app=DemoApp(), access_log=False, **options)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=10))

    def publish_now(data: Any) -> Event:
        engine_clock[0] += 1
        return server.manager.publish("c", data)

    try:
        first = publish_now(0)
        browser.get(f"http://127.0.0.1:{server.port}/no-page-here")
        run_async(browser, FOLLOW_AND_LOG, ["other", "c"], 0)
        wait_for(browser, lambda d: len(page_log(d)) == 1, "the first event")
        browser.execute_script("window.client.stop()")

        later = [publish_now(n) for n in range(1, published_while_stopped + 1)]
        if cause == "age":
            engine_clock[0] += 15_000  # everything so far is older than 10 s
            later.append(publish_now("fresh"))
            kept = later[-1:]
        else:
            kept = later[dropped_unseen:]
        browser.execute_script("window.client.start()")
        wait_for(browser, lambda d: len(page_log(d)) >= 1 + len(kept) + (dropped_unseen > 0),
                 "the events kept")
        # Then it keeps up: each event after the previous one arrived, while each pushes
        # an event it has received out of the buffer (or out of its time to live).
        for n in range(100, 105):
            if cause == "age":
                engine_clock[0] += 11_000
            publish_now(n)
            wait_for(browser, lambda d, n=n: page_log(d)[-1].get("data") == n, f"event {n}")
        log = page_log(browser)
        browser.execute_script("window.client.stop()")
    finally:
        server.stop(5)
    expected: list[Any] = [first.data, *[event.data for event in kept]]
    if dropped_unseen:
        newest = later[dropped_unseen - 1]
        expected.append({
            "gaps": [{"category": "c", "sinceTime": newest.timestamp, "lastId": newest.id}],
            "cursor": {"sinceTime": first.timestamp, "lastId": first.id},
        })
    expected.extend(range(100, 105))
    assert [entry.get("data", entry) for entry in log] == expected


# --- Server-Sent Events: the native EventSource, and the client's "eventsource" transport --


def test_a_native_event_source_gets_the_events_and_resumes_with_last_event_id(
    browser: WebDriver, demo: DemoServer
) -> None:
    browser.get(demo.url + "/no-page-here")
    browser.execute_script("""
        window.got = []; window.opened = 0;
        const source = new EventSource("/events?category=chat");
        source.onopen = () => { window.opened += 1; };
        source.onmessage = (m) => window.got.push({ id: m.lastEventId, data: JSON.parse(m.data) });
        window.source = source;
    """)
    wait_for(browser, lambda d: d.execute_script("return window.opened") == 1, "the stream open")
    for n in range(3):
        demo.publish({"name": "feed", "text": f"live {n}"})
    wait_for(browser, lambda d: len(d.execute_script("return window.got")) == 3, "three events")

    def until_it_reconnects() -> None:
        wait_for(browser, lambda d: d.execute_script("return window.source.readyState") == 0,
                 "EventSource reconnecting")

    # The server stops (the stream ends), events come while it is away; EventSource
    # reconnects by itself with Last-Event-ID and gets exactly those.
    demo.restart(down_for=until_it_reconnects)
    for n in range(3, 6):
        demo.publish({"name": "feed", "text": f"live {n}"})
    wait_for(browser, lambda d: len(d.execute_script("return window.got")) >= 6, "six events")
    got = browser.execute_script("window.source.close(); return window.got")
    assert [item["data"]["data"]["text"] for item in got] == [f"live {n}" for n in range(6)]
    for item in got:
        event = item["data"]
        assert item["id"] == f"{event['timestamp']}:{event['id']}"
    assert browser.execute_script("return window.opened") == 2


def test_the_demo_over_event_source_resumes_after_a_restart(
    browser: WebDriver, demo: DemoServer
) -> None:
    for n in range(3):
        demo.publish({"name": "feed", "text": f"message {n}"})
    open_chat(browser, demo.url, "?transport=eventsource")
    transport = browser.find_element(By.ID, "state").get_attribute("data-transport")
    assert transport == "eventsource"
    wait_for(browser, lambda d: len(messages(d)) == 3, "the first three messages")
    send(browser, "alice", "sent over a stream page")
    wait_for(browser, lambda d: len(messages(d)) == 4, "its own message")

    def until_the_page_notices() -> None:
        wait_for(browser, lambda d: state(d) == "reconnecting", "the state 'reconnecting'")

    demo.restart(down_for=until_the_page_notices)
    for n in range(4, 7):
        demo.publish({"name": "feed", "text": f"message {n}"})
    wait_for(browser, lambda d: len(messages(d)) >= 7, "the messages sent while it was away")
    assert messages(browser) == [
        "message 0", "message 1", "message 2", "sent over a stream page",
        "message 4", "message 5", "message 6",
    ]
    assert len(set(message_ids(browser))) == 7


def test_the_eventsource_transport_reports_a_gap_and_falls_back_to_long_polls(
    browser: WebDriver, tmp_path: Path
) -> None:
    streams_refused = threading.Event()

    def hook(request: Request) -> bool | Response:
        if streams_refused.is_set() and "text/event-stream" in request.headers.get("Accept", ""):
            return Response('{"error": "no streams here"}', status=503,
                            content_type="application/json")
        return True

    server = Server(app=DemoApp(), access_log=False, max_event_buffer_size=3)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30,
                            handler_to_run_before_subscription=hook))
    url = f"http://127.0.0.1:{server.port}"
    try:
        events = [server.manager.publish("news", n) for n in range(6)]
        browser.get(url + "/no-page-here")
        browser.execute_script("""
            const [cursor] = arguments;
            window.log = [];
            import("/static/longpoll.js").then(({ LongpollClient }) => {
              window.client = new LongpollClient({
                subscribeUrl: "/events", category: "news", cursor, timeoutSeconds: 5,
                transport: "eventsource", backoff: { initialMs: 50, maximumMs: 100 },
                onEvent: (event) => window.log.push(event.data),
                onGap: (detail) => window.log.push(detail),
              });
              window.client.start();
            });
        """, {"sinceTime": events[0].timestamp, "lastId": events[0].id})
        wait_for(browser, lambda d: len(page_log(d)) == 4, "a gap and three events")
        log = page_log(browser)
        assert browser.execute_script("return window.client.transportInUse") == "eventsource"
        assert log[0] == {
            "gaps": [{"category": "news", "sinceTime": events[2].timestamp,
                      "lastId": events[2].id}],
            "cursor": {"sinceTime": events[0].timestamp, "lastId": events[0].id},
        }
        assert log[1:] == [3, 4, 5]
        # Streams refused from now on: when this one ends (stop drains it), EventSource
        # fails for good and the client goes on with long polls from its cursor.
        streams_refused.set()
        server.stop(5)
        server.start(ServerInfo(address=f"127.0.0.1:{server.port}", timeout_seconds=30,
                                handler_to_run_before_subscription=hook))
        wait_for(browser,
                 lambda d: d.execute_script("return window.client.transportInUse") == "longpoll",
                 "the switch to long polls")
        # The restarted server's buffer is empty: the cursor's event is unknown to it.
        server.manager.publish("news", 6)
        wait_for(browser, lambda d: page_log(d)[-1] == 6, "an event over long polls")
        assert page_log(browser)[1:] == [3, 4, 5, 6]
    finally:
        browser.execute_script("window.client && window.client.stop()")
        server.stop(5)


def test_the_transport_option_is_checked_and_auto_needs_no_headers(
    browser: WebDriver, demo: DemoServer
) -> None:
    browser.get(demo.url + "/no-page-here")
    result = run_async(browser, """
        const { LongpollClient } = await import("/static/longpoll.js");
        const make = (options) => {
          try {
            return new LongpollClient(Object.assign({ subscribeUrl: "/events", category: "c" },
                                                    options)).transportInUse;
          } catch (error) {
            return error.name + ": " + error.message;
          }
        };
        return [
          make({}),
          make({ transport: "auto" }),
          make({ transport: "eventsource" }),
          make({ transport: "auto", headers: { "X-Token": "t" } }),
          make({ transport: "auto", username: "u", password: "p" }),
          make({ transport: "eventsource", headers: { "X-Token": "t" } }),
          make({ transport: "websocket" }),
          make({ transport: "eventsource", EventSource: null }),
          (() => {  // a browser without EventSource: long polls
            const saved = window.EventSource;
            window.EventSource = undefined;
            try {
              return make({ transport: "eventsource" });
            } finally {
              window.EventSource = saved;
            }
          })(),
        ];
    """)
    assert result[:5] == ["longpoll", "eventsource", "eventsource", "longpoll", "longpoll"]
    assert result[5].startswith("TypeError: EventSource cannot send headers")
    assert result[6].startswith("TypeError: transport must be")
    assert result[7:] == ["eventsource", "longpoll"]  # null: the page's own EventSource


def test_event_source_reconnects_from_an_empty_streams_opening_id(browser: WebDriver) -> None:
    # A stream that ends before any event: the browser keeps the opening's id (a message
    # without data) and sends it back, so an event published in between is not missed.
    last_event_ids: list[str | None] = []

    def hook(request: Request) -> bool:
        last_event_ids.append(request.headers.get("Last-Event-ID"))
        return True

    server = Server(app=DemoApp(), access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30,
                            handler_to_run_before_subscription=hook))
    manager = server.manager
    try:
        browser.get(f"http://127.0.0.1:{server.port}/no-page-here")
        browser.execute_script("""
            window.got = [];
            window.source = new EventSource("/events?category=quiet&timeout=1");
            window.source.onmessage = (m) => window.got.push(JSON.parse(m.data).data);
        """)
        wait_for(browser, lambda d: manager.waiting_count("quiet") == 1, "the stream open")
        # The stream ends after a second; EventSource waits its retry (2 s) to reconnect.
        wait_for(browser, lambda d: d.execute_script("return window.source.readyState") == 0
                 and manager.waiting_count("quiet") == 0, "the stream ended")
        manager.publish("quiet", "published between two streams")
        wait_for(browser, lambda d: len(d.execute_script("return window.got")) == 1,
                 "the event published between the streams")
        assert browser.execute_script("return window.got") == ["published between two streams"]
        assert last_event_ids[0] is None
        since_time, separator, last_id = str(last_event_ids[1]).partition(":")
        assert separator == ":" and last_id == "" and int(since_time) > 0
    finally:
        browser.execute_script("window.source && window.source.close()")
        server.stop(5)


def test_a_cross_origin_event_source_reconnects_through_cors(
    browser: WebDriver, demo: DemoServer
) -> None:
    # The page comes from the demo server; the stream from another origin (another port)
    # that allows it. Its reconnects carry Last-Event-ID, which needs no preflight (the
    # CORS middleware's default allow_headers do not name it).
    other = Server(access_log=False, cors_origins=[demo.url])
    other.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    manager = other.manager
    try:
        browser.get(demo.url + "/no-page-here")
        browser.execute_script("""
            const [url] = arguments;
            window.got = [];
            window.source = new EventSource(url + "/events?category=far&timeout=1");
            window.source.onmessage = (m) => window.got.push(JSON.parse(m.data).data);
        """, f"http://127.0.0.1:{other.port}")
        wait_for(browser, lambda d: manager.waiting_count("far") == 1, "the stream open")
        manager.publish("far", "first")
        wait_for(browser, lambda d: len(d.execute_script("return window.got")) == 1,
                 "the first event")
        wait_for(browser, lambda d: d.execute_script("return window.source.readyState") == 0
                 and manager.waiting_count("far") == 0, "the stream ended")
        manager.publish("far", "second")
        wait_for(browser, lambda d: len(d.execute_script("return window.got")) == 2,
                 "the event published between the streams")
        assert browser.execute_script("return window.got") == ["first", "second"]
    finally:
        browser.execute_script("window.source && window.source.close()")
        other.stop(5)


@pytest.mark.parametrize("transport", ["longpoll", "eventsource"])
def test_a_token_function_gives_the_client_a_fresh_token_when_one_expires(
    browser: WebDriver, transport: str
) -> None:
    from wsgi_longpoll.tokens import subscribe_token

    secret = "browser-subscribe-secret-0123456789"
    issued: list[str] = []
    demo = DemoApp()

    def app(environ: Any, start_response: Any) -> Any:
        request = Request(environ)
        if request.path != "/token":
            return demo(environ, start_response)
        # The application's token view: the first token it hands out has expired already.
        issued_at = time.time() - 120 if not issued else time.time()
        issued.append(subscribe_token(secret, ["news"], 60, now=issued_at))
        return Response(issued[-1])(environ, start_response)

    server = Server(app=app, subscribe_secret=secret, access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0", timeout_seconds=30))
    try:
        server.manager.publish("news", {"n": 1})
        browser.get(f"http://127.0.0.1:{server.port}/no-page-here")
        result = run_async(browser, """
            const { LongpollClient } = await import("/static/longpoll.js");
            const errors = [];
            const client = new LongpollClient({
              subscribeUrl: "/events", category: "news", cursor: 0, timeoutSeconds: 5,
              transport: args[0], onError: (error) => errors.push(error.message),
              token: () => fetch("/token").then((answer) => answer.text()),
            });
            const event = await new Promise((resolve) => {
              client.onEvent = resolve;
              client.start();
            });
            client.stop();
            return { data: event.data, transport: client.transportInUse, errors };
        """, transport)
    finally:
        server.stop(5)
    assert result["data"] == {"n": 1}
    assert result["transport"] == transport  # the stream was opened again, not given up
    assert len(issued) == 2


def test_a_token_refused_again_at_once_stops_the_client_saying_why(browser: WebDriver) -> None:
    from wsgi_longpoll.tokens import category_forbidden, subscribe_token

    secret = "browser-subscribe-secret-0123456789"
    server = Server(app=DemoApp(), subscribe_secret=secret, access_log=False)
    server.start(ServerInfo(address="127.0.0.1:0"))
    try:
        browser.get(f"http://127.0.0.1:{server.port}/no-page-here")
        result = run_async(browser, """
            const { LongpollClient, SubscriptionRejected } = await import("/static/longpoll.js");
            let calls = 0;
            const client = new LongpollClient({
              subscribeUrl: "/events", category: "news", timeoutSeconds: 5,
              token: () => { calls += 1; return args[0]; },
            });
            const error = await new Promise((resolve) => {
              client.onError = (error, delayMs) => { if (delayMs === null) resolve(error); };
              client.start();
            });
            return { rejected: error instanceof SubscriptionRejected, status: error.status,
                     serverError: error.serverError, calls, state: client.state };
        """, subscribe_token(secret, ["sport"], 60))
    finally:
        server.stop(5)
    assert result == {"rejected": True, "status": 403,
                      "serverError": category_forbidden("news"), "calls": 2, "state": "stopped"}
