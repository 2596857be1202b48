"""Ordinary Django views; ``notify`` publishes to the long-poll manager from Python."""

import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from .longpoll import CATEGORY, manager


@require_GET
def index(request: HttpRequest) -> JsonResponse:
    """Where things are."""
    return JsonResponse({
        "subscribe": f"/events?category={CATEGORY}&timeout=60",
        "publish": "/publish",
        "notify": "/notify/",
        "status": "/status/",
    })


@csrf_exempt  # a JSON API for the example; guard a real one with your own authentication
@require_POST
def notify(request: HttpRequest) -> JsonResponse:
    """Publish ``{"message": ...}`` to the notifications category."""
    try:
        payload = json.loads(request.body)
    except ValueError:
        payload = None
    message = payload.get("message") if isinstance(payload, dict) else None
    if not isinstance(message, str) or not message.strip():
        return JsonResponse({"error": "expected a JSON object with a non-empty 'message'"},
                            status=400)
    # Publishing from Python: waiting subscribers are answered right away.
    event = manager.publish(CATEGORY, {"message": message})
    return JsonResponse({"id": event.id, "timestamp": event.timestamp}, status=201)


@require_GET
def status(request: HttpRequest) -> JsonResponse:
    """How many long polls are waiting, and how many events the category holds."""
    return JsonResponse({
        "waiting": manager.waiting_count(CATEGORY),
        "buffered": len(manager.buffered_events(CATEGORY)),
    })
