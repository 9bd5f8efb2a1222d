"""Standard Webhooks signatures: what the gateway signs deliveries with, and what a receiver
written in Python can verify them with.

A delivery is an HTTP POST whose headers carry ``webhook-id`` (the same on every attempt of
one delivery), ``webhook-timestamp`` (the attempt's Unix time, in seconds) and
``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256>`` signatures of
``{id}.{timestamp}.{body}``, one per valid secret (two while a rotated-out secret still signs).
A secret reads ``whsec_`` + base64 of its key bytes.

    from reelmill.webhooks import verify, WebhookVerificationError
    try:
        event = verify(secret, request.headers, raw_body)   # the bytes as received
    except WebhookVerificationError:
        return 400

Standard library only, like the rest of the client package.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

SECRET_PREFIX = "whsec_"
#: Bytes of a new secret's key (the spec asks for 24 to 64).
SECRET_BYTES = 32
#: How far a timestamp may be from the receiver's clock (the spec's example: 5 minutes).
DEFAULT_TOLERANCE_SECONDS = 300


def event_type_name(enum_name: str) -> str:
    """The payload ``type`` of a ``WebhookEventType`` value's name:
    ``WEBHOOK_EVENT_TYPE_JOB_SUCCEEDED`` is ``job.succeeded``."""
    return enum_name.removeprefix("WEBHOOK_EVENT_TYPE_").lower().replace("_", ".", 1)


class WebhookVerificationError(Exception):
    """The delivery is not signed by any of the given secrets (or is too old or too new)."""


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The key bytes of a ``whsec_…`` secret (the prefix is optional); ValueError if it is not
    base64."""
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ followed by base64") from None


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one delivery."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets_: Iterable[str], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated."""
    return " ".join(sign(secret, message_id, timestamp, body) for secret in secrets_)


def headers(
    secrets_: Iterable[str], message_id: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt (``timestamp``: now)."""
    when = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(when),
        "webhook-signature": signature_header(secrets_, message_id, when, body),
    }


def verify(
    secret: str | Iterable[str],
    received: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> Any:
    """The delivery's JSON payload if ``received`` (its headers, any case) carries a valid
    ``v1`` signature by ``secret`` (or one of several) within the timestamp tolerance; raises
    ``WebhookVerificationError`` otherwise. ``body`` is the raw request body."""
    lowered = {name.lower(): value for name, value in received.items()}
    message_id = lowered.get("webhook-id", "")
    stamp = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    if not message_id or not stamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance")
    candidates = [secret] if isinstance(secret, str) else list(secret)
    expected = [sign(s, message_id, timestamp, body).encode() for s in candidates]
    for item in signatures.split(" "):
        version, _, _value = item.partition(",")
        if version != "v1":
            continue
        if any(hmac.compare_digest(item.encode(), e) for e in expected):
            return json.loads(body)
    raise WebhookVerificationError("no valid v1 signature")
