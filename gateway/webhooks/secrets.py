"""Webhook signing secrets at rest.

The gateway must sign with the secret itself, so unlike API keys it cannot keep only a hash.
With ``REELMILL_WEBHOOK_SECRET_KEY`` (base64 of 32 bytes) each secret is sealed with
AES-256-GCM, the endpoint's id as associated data (a sealed secret copied to another row does
not open there): ``aesgcm:<base64 nonce + ciphertext>``. Without a key it is stored as
``plain:<secret>`` and the gateway warns at start. The scheme is stored with the value, so a
key configured later keeps the older secrets readable (and the next rotation seals them);
removing or changing the key makes sealed secrets unreadable, and their deliveries fail with
``WEBHOOK_SECRET_UNREADABLE`` until it is restored.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


class SecretUnreadable(Exception):
    """A stored secret cannot be opened with the configured key (or without one)."""


def parse_key(value: str) -> bytes | None:
    """The AES key of the setting (None when unset); ValueError unless it is 32 bytes."""
    if not value:
        return None
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("REELMILL_WEBHOOK_SECRET_KEY must be base64") from None
    if len(key) != 32:
        raise ValueError("REELMILL_WEBHOOK_SECRET_KEY must be base64 of 32 bytes")
    return key


class SecretBox:
    def __init__(self, key: bytes | None) -> None:
        self._aead = AESGCM(key) if key is not None else None

    @property
    def sealing(self) -> bool:
        return self._aead is not None

    def seal(self, secret: str, context: str) -> str:
        if self._aead is None:
            return "plain:" + secret
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode(), context.encode())
        return "aesgcm:" + base64.b64encode(nonce + sealed).decode()

    def open(self, stored: str, context: str) -> str:
        scheme, _, value = stored.partition(":")
        if scheme == "plain":
            return value
        if scheme != "aesgcm":
            raise SecretUnreadable(f"unknown secret scheme {scheme[:20]!r}")
        if self._aead is None:
            raise SecretUnreadable(
                "the secret is sealed, and no REELMILL_WEBHOOK_SECRET_KEY is set"
            )
        try:
            raw = base64.b64decode(value)
            return self._aead.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode()
            ).decode()
        except (InvalidTag, binascii.Error, ValueError):
            raise SecretUnreadable(
                "the secret does not open with REELMILL_WEBHOOK_SECRET_KEY"
            ) from None
