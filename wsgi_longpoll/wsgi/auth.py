"""Ready-made before-hooks that authenticate publishers (or subscribers).

Each factory returns a :data:`~wsgi_longpoll.middleware.Hook`: pass it as
``handler_to_run_before_publish`` (or ``before_publish`` of
:class:`~wsgi_longpoll.middleware.LongpollMiddleware`). A request that passes goes on; one
that fails gets ``401`` with a ``WWW-Authenticate`` challenge and a JSON error body. Every
secret is compared with :func:`hmac.compare_digest`, so the time taken does not tell an
attacker how much of a guess was right.

The publish endpoint is open to anyone who can reach it unless one of these (or a hook of
your own) guards it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping

from werkzeug.wrappers import Request, Response

from .answers import Hook, error_response

__all__ = ["basic_auth", "bearer_token", "hmac_signature"]

logger = logging.getLogger(__name__)



def _secrets(value: str | bytes | Iterable[str | bytes], what: str) -> list[bytes]:
    items = [value] if isinstance(value, (str, bytes)) else list(value)
    secrets = [item.encode("utf-8") if isinstance(item, str) else bytes(item) for item in items]
    if not secrets:
        raise ValueError(f"give at least one {what}")
    if not all(secrets):
        raise ValueError(f"a {what} must not be empty")
    return secrets


def _matches_any(candidate: bytes, secrets: list[bytes]) -> bool:
    # Compare with every secret, not just until one matches: the time taken is the same
    # whichever secret (if any) the candidate is.
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(candidate, secret)
    return found


def _wire_bytes(header_value: str) -> bytes:
    """A header value as the bytes that came over the wire (WSGI decodes them as latin-1)."""
    try:
        return header_value.encode("latin-1")
    except UnicodeEncodeError:  # not from a WSGI server: it matches no secret
        return b""


def _unauthorized(challenge: str, message: str) -> Response:
    return error_response(401, message, {"WWW-Authenticate": challenge})


def _quote(realm: str) -> str:
    if '"' in realm or "\\" in realm:
        raise ValueError("realm must not contain '\"' or '\\'")
    return f'"{realm}"'


def bearer_token(
    tokens: str | bytes | Iterable[str | bytes], *, realm: str = "wsgi_longpoll"
) -> Hook:
    """A hook that lets a request through only with ``Authorization: Bearer <token>``.

    :param tokens: the accepted token, or several (to rotate one without downtime).
    :param realm: the realm named in the ``WWW-Authenticate`` challenge.
    :raises ValueError: if no token, or an empty one, is given.

    .. code-block:: python

        ServerInfo(handler_to_run_before_publish=bearer_token(os.environ["PUBLISH_TOKEN"]))
    """
    secrets = _secrets(tokens, "token")
    challenge = f"Bearer realm={_quote(realm)}"

    def check_bearer_token(request: Request) -> bool | Response:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _matches_any(_wire_bytes(credentials.strip()), secrets):
            return True
        logger.info("rejected %s %s from %s: no valid bearer token",
                    request.method, request.path, request.remote_addr)
        return _unauthorized(challenge, "A valid bearer token is required.")

    return check_bearer_token


def basic_auth(users: Mapping[str, str], *, realm: str = "wsgi_longpoll") -> Hook:
    """A hook that lets a request through only with HTTP basic credentials in *users*.

    Basic auth sends the password in the clear: use it over HTTPS only.

    :param users: user name to password.
    :param realm: the realm named in the ``WWW-Authenticate`` challenge.
    :raises ValueError: if *users* is empty or a password is empty.
    """
    if not users:
        raise ValueError("give at least one user")
    if not all(users.values()):
        raise ValueError("a password must not be empty")
    accounts = {name: password.encode("utf-8") for name, password in users.items()}
    challenge = f'Basic realm={_quote(realm)}, charset="UTF-8"'
    # Compared against a stand-in for an unknown user, so that a wrong name takes as long
    # as a wrong password.
    stand_in = hashlib.sha256(b"".join(accounts.values())).digest()

    def check_basic_auth(request: Request) -> bool | Response:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            name, colon, password = decoded.partition(":")
            expected = accounts.get(name)
            matched = hmac.compare_digest(
                password.encode("utf-8"), expected if expected is not None else stand_in
            )
            if colon and expected is not None and matched:
                return True
        logger.info("rejected %s %s from %s: no valid basic credentials",
                    request.method, request.path, request.remote_addr)
        return _unauthorized(challenge, "Valid credentials are required.")

    return check_basic_auth


def hmac_signature(
    secrets: str | bytes | Iterable[str | bytes],
    *,
    header: str = "X-Signature",
    digest: str = "sha256",
) -> Hook:
    """A hook that lets a request through only if it carries an HMAC of its body.

    The publisher sends ``<header>: <digest>=<hex HMAC of the body>``, e.g.
    ``X-Signature: sha256=5d5b...``. The signature proves who wrote the body and that it
    was not altered; it does not stop a captured request from being sent again, so put
    something unique (a time, a nonce) in the data if replays matter, and use HTTPS.

    :param secrets: the shared key, or several (to rotate one without downtime).
    :param header: the request header that carries the signature.
    :param digest: a :mod:`hashlib` algorithm name.
    :raises ValueError: if no key, or an empty one, is given, or *digest* is unknown.
    """
    keys = _secrets(secrets, "key")
    digest = digest.lower()
    try:
        hashlib.new(digest)
    except ValueError:
        raise ValueError(f"unknown digest {digest!r}") from None
    prefix = f"{digest}="
    challenge = f'HMAC header="{header}", digest="{digest}"'

    def check_hmac_signature(request: Request) -> bool | Response:
        body = request.get_data(cache=True)
        sent = request.headers.get(header, "").strip()
        if sent[: len(prefix)].lower() == prefix:
            candidate = sent[len(prefix):].lower().encode("ascii", "replace")
            found = False
            for key in keys:
                expected = hmac.new(key, body, digest).hexdigest().encode("ascii")
                found |= hmac.compare_digest(candidate, expected)
            if found:
                return True
        logger.info("rejected %s %s from %s: no valid %s signature",
                    request.method, request.path, request.remote_addr, header)
        return _unauthorized(challenge, f"A valid {header} signature of the body is required.")

    return check_hmac_signature
