"""The seed's client examples: publish a notification, then subscribe to it.

Start a server first (``wsgi-longpoll serve --address 127.0.0.1:8080``), then run::

    python examples/client.py [base_url]    # base_url defaults to http://127.0.0.1:8080
"""

from __future__ import annotations

import sys

from wsgi_longpoll import PublishRequest, SubscriptionRequest, publish, subscription


def main(base_url: str = "http://127.0.0.1:8080") -> int:
    base_url = base_url.rstrip("/")

    # Publish notification.
    response = publish(
        f"{base_url}/publish",
        10,  # timeout: seconds, or a datetime.timedelta
        None,  # header
        PublishRequest(category="notifications", data={"message": "Hello"}),
        "",  # username
        "",  # password
        None,  # transport
    )
    print(f"publish: {response.status_code} {response.text}")
    if response.status_code != 200:
        return 1

    # Basic subscription. since_time=1 asks for every event the server still holds, so the
    # one just published comes back at once; with since_time=0 (the default) the request
    # would wait up to timeout_seconds for the next one.
    answer = subscription(
        f"{base_url}/events",
        None,  # header
        SubscriptionRequest(category="notifications", timeout_seconds=60, since_time=1),
        "",  # username
        "",  # password
        None,  # transport
    )
    print(f"subscription: {answer.status_code}, {len(answer.events)} event(s)")
    if answer.error is not None:
        print(f"error: {answer.error}")
        return 1
    for event in answer.events:
        print(f"  {event.timestamp} {event.category} {event.id} {event.data}")
    return 0 if answer.status_code == 200 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
