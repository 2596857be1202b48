"""Signed subscribe tokens: the categories a subscriber may read, and until when.

An application that does not hold long polls itself (any WSGI application, even a
synchronous one under ``flask run``) can still decide who reads what: it issues each user
a token naming the categories that user may read and when the token expires, and a
long-poll tier (``wsgi-longpoll serve --redis-url ... --subscribe-secret ...``) checks the
token on every subscribe, with no call into the application. The application publishes
to the same Redis. Centrifugo and Pushpin let an application scale its subscribers apart
from its request handling the same way.

A token is a JSON Web Token (RFC 7519) signed with HMAC-SHA256 (``"alg": "HS256"``), so
that an application in any language can issue one with its JWT library. Its claims:

``categories``
    The categories the holder may read: a list of strings (required).
``exp``
    When the token expires, in seconds since the epoch (required).
``sub``
    Who it was issued to (optional; not checked).

The subscriber passes it as the query parameter ``token`` (the only way an
``EventSource`` can) or as ``Authorization: Bearer <token>``. A subscribe that names a
category the token does not allow, or with an expired, forged or malformed token, is
answered 403 with a JSON error saying which; one with no token at all, 401.

.. code-block:: python

    from wsgi_longpoll.tokens import subscribe_token

    token = subscribe_token(secret, ["news", f"user-{user.id}"], ttl=3600)

Rotate the secret without cutting anyone off: give the tier the new secret and the old
one (``--subscribe-secret NEW --subscribe-secret-previous OLD``), then have the
application issue with the new one; once the old tokens have expired, drop it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import LongpollError

__all__ = [
    "TOKEN_PARAMETER",
    "SubscribeTokenRejected",
    "TokenVerifier",
    "subscribe_token",
]

#: The query parameter that carries a subscribe token.
TOKEN_PARAMETER = "token"

#: The shortest secret accepted, in bytes: HMAC-SHA256's key is best at 32 (RFC 2104 asks
#: for no less than the hash's output), and a short one is guessed offline from any token.
MIN_SECRET_BYTES = 16

_HEADER = {"alg": "HS256", "typ": "JWT"}
#: The signed header every token issued here starts with.
_HEADER_SEGMENT = base64.urlsafe_b64encode(
    json.dumps(_HEADER, separators=(",", ":")).encode("ascii")).rstrip(b"=")


class SubscribeTokenRejected(LongpollError, ValueError):
    """A subscribe token that does not let its holder read what it asks for.

    :param message: why, for the 403's JSON error (``"Forbidden: the subscribe token has
        expired."``).
    :param status: the HTTP status that says so: 401 when no token came, else 403.
    """

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


#: The messages of the answers that refuse a token, by what was wrong.
MISSING = ("A subscribe token is required: pass it as the 'token' query parameter or in "
           "an 'Authorization: Bearer' header.")
MALFORMED = "Forbidden: the subscribe token is malformed."
WRONG_ALGORITHM = "Forbidden: the subscribe token is not signed with HS256."
FORGED = "Forbidden: the subscribe token's signature is not valid (forged, or another secret's)."
EXPIRED = "Forbidden: the subscribe token has expired."


def category_forbidden(category: str) -> str:
    """The message of a token that does not allow *category*."""
    shown = category if len(category) <= 100 else category[:100] + "..."
    return f"Forbidden: the subscribe token does not allow the category {shown!r}."


def _secret_bytes(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"a subscribe secret must be at least {MIN_SECRET_BYTES} bytes "
                         f"(32 random bytes are best: python -c 'import secrets; "
                         f"print(secrets.token_urlsafe(32))'), not {len(key)}")
    return key


def _b64encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64decode(segment: str) -> bytes:
    if "=" in segment:  # JWT's base64url has no padding
        raise binascii.Error("padding")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _seconds(ttl: float | datetime.timedelta) -> float:
    if isinstance(ttl, datetime.timedelta):
        return ttl.total_seconds()
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be seconds or a timedelta, not {ttl!r}")
    return float(ttl)


def subscribe_token(
    secret: str | bytes,
    categories: str | Iterable[str],
    ttl: float | datetime.timedelta,
    *,
    subject: str | None = None,
    now: float | None = None,
) -> str:
    """A token that lets its holder read *categories* for *ttl*, signed with *secret*.

    :param secret: the secret the long-poll tier checks with (``--subscribe-secret``), at
        least 16 bytes (a string is taken as UTF-8).
    :param categories: a category, or several.
    :param ttl: how long it is valid: seconds, or a :class:`datetime.timedelta`. Its
        holder re-subscribes every poll, so keep it short (minutes to hours) and have the
        client fetch a new one when it expires (the browser client and the
        :class:`~wsgi_longpoll.client.Follower` take a function that does).
    :param subject: who it is for (the ``sub`` claim), for your own logs.
    :param now: the time it is issued, in seconds since the epoch (default: now).
    :raises ValueError: for a short secret, no category, an empty one, or a *ttl* that
        is not positive.
    """
    key = _secret_bytes(secret)
    names = [categories] if isinstance(categories, str) else list(categories)
    if not names:
        raise ValueError("a subscribe token names at least one category")
    if not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"each category must be a non-empty string: {names!r}")
    seconds = _seconds(ttl)
    if not seconds > 0:
        raise ValueError(f"ttl must be more than 0 seconds, not {seconds!r}")
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {"categories": list(dict.fromkeys(names)),
                              "exp": int(issued + seconds)}
    if subject is not None:
        claims["sub"] = subject
    payload = _b64encode(json.dumps(claims, separators=(",", ":"),
                                    ensure_ascii=False).encode("utf-8"))
    signed = _HEADER_SEGMENT + b"." + payload
    signature = _b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    return (signed + b"." + signature).decode("ascii")


class TokenVerifier:
    """Checks subscribe tokens against one secret or several (while one is rotated).

    :param secrets: the secrets tokens may be signed with, the current one first.
    :param leeway: seconds a token is still taken after its expiry, for clocks that
        differ between the hosts that issue and check.
    :param cache_size: how many checked tokens to remember (a subscriber presents its
        token on every poll; a remembered one costs a dictionary lookup, not a MAC).
    :raises ValueError: without a secret, or for one shorter than 16 bytes.
    """

    def __init__(self, secrets: Sequence[str | bytes], *, leeway: float = 0.0,
                 cache_size: int = 8192) -> None:
        self._keys = [_secret_bytes(secret) for secret in secrets]
        if not self._keys:
            raise ValueError("give at least one subscribe secret")
        self.leeway = leeway
        self.cache_size = cache_size
        #: Token -> (its expiry, its categories), for tokens whose signature was valid.
        self._checked: dict[str, tuple[float, frozenset[str]]] = {}

    def categories(self, token: str, now: float | None = None) -> frozenset[str]:
        """The categories *token* lets its holder read.

        :raises SubscribeTokenRejected: saying why, if it is malformed, not HS256, not
            signed with one of the secrets, or expired.
        """
        if now is None:
            now = time.time()
        known = self._checked.get(token)
        if known is None:
            known = self._check(token)
            checked = self._checked
            if len(checked) >= self.cache_size:
                checked.clear()
            checked[token] = known
        expiry, categories = known
        if now > expiry + self.leeway:
            raise SubscribeTokenRejected(EXPIRED)
        return categories

    def check(self, token: str | None, categories: Iterable[str],
              now: float | None = None) -> None:
        """Let *token* read *categories*, or refuse it.

        :param token: the token presented, or ``None`` (no token: 401).
        :raises SubscribeTokenRejected: with the status and the message that say why.
        """
        if not token:
            raise SubscribeTokenRejected(MISSING, 401)
        allowed = self.categories(token, now)
        for category in categories:
            if category not in allowed:
                raise SubscribeTokenRejected(category_forbidden(category))

    def _check(self, token: str) -> tuple[float, frozenset[str]]:
        """Check *token*'s form and signature; its expiry and categories."""
        header_segment, dot, rest = token.partition(".")
        payload_segment, dot2, signature_segment = rest.partition(".")
        if not (dot and dot2) or "." in signature_segment:
            raise SubscribeTokenRejected(MALFORMED)
        try:
            header = json.loads(_b64decode(header_segment))
            signature = _b64decode(signature_segment)
            signed = f"{header_segment}.{payload_segment}".encode("ascii")
        except (ValueError, binascii.Error, UnicodeError):
            raise SubscribeTokenRejected(MALFORMED) from None
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            raise SubscribeTokenRejected(WRONG_ALGORITHM)
        valid = False
        for key in self._keys:  # every key, so that the time taken names none
            expected = hmac.new(key, signed, hashlib.sha256).digest()
            valid |= hmac.compare_digest(signature, expected)
        if not valid:
            raise SubscribeTokenRejected(FORGED)
        try:
            claims = json.loads(_b64decode(payload_segment))
        except (ValueError, binascii.Error):
            raise SubscribeTokenRejected(MALFORMED) from None
        if not isinstance(claims, dict):
            raise SubscribeTokenRejected(MALFORMED)
        expiry = claims.get("exp")
        names = claims.get("categories")
        if (isinstance(expiry, bool) or not isinstance(expiry, (int, float))
                or not isinstance(names, list)
                or not all(isinstance(name, str) for name in names)):
            raise SubscribeTokenRejected(
                "Forbidden: the subscribe token's claims are not 'categories' (a list of "
                "strings) and 'exp' (seconds since the epoch).")
        return float(expiry), frozenset(names)
