"""Short-lived signed URLs for artifacts of the local store, served by the browser port.

S3 presigns its own URLs; the local store has nothing a page can fetch (``file://``), so the
gateway signs ``{base}/artifacts/{token}/{name}`` itself. The token binds, with an HMAC-SHA256
over a server secret (``REELMILL_ARTIFACT_URL_SECRET``):

- the owner (the caller of GetArtifactUrl), the job and the expiry (seconds since the epoch);
- a scope: the artifact's whole name, or for an HLS playlist (``*.m3u8``) and the storyboard's
  WebVTT its directory (``hls/``, ``storyboard/``), so that their relative URLs (variant
  playlists, segments, sprite sheets) resolve under the same token without rewriting them.

A request is served only if the signature holds, the expiry has not passed, the name is in the
scope, and ``Store.get_artifact(owner, job, name)`` finds it: the same check as
``DownloadArtifact``, for the owner the token names (a deleted job's artifacts are gone too).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import posixpath
import time
import uuid
from dataclasses import dataclass

from runtime.errors import PermissionDenied

VERSION = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


#: Artifacts whose relative URLs name their neighbours: HLS playlists (variants, segments) and
#: the storyboard's WebVTT (its sprite sheets).
DIRECTORY_SCOPED = (".m3u8", "storyboard.vtt")


def scope_of(name: str) -> str:
    """What one URL may reach: the directory of a playlist or of the storyboard's VTT, or the
    artifact alone."""
    if name.endswith(DIRECTORY_SCOPED) and "/" in name:
        return posixpath.dirname(name) + "/"
    return name


def in_scope(scope: str, name: str) -> bool:
    return name == scope or (scope.endswith("/") and name.startswith(scope))


@dataclass(frozen=True)
class Grant:
    """What a verified token allows."""

    owner: str
    job_id: str
    scope: str
    expires: int


class ArtifactSigner:
    """Signs and verifies artifact URLs under ``base`` (``http://127.0.0.1:8080``)."""

    def __init__(self, secret: bytes, base: str) -> None:
        if len(secret) < 16:
            raise ValueError("the artifact URL secret must be at least 16 bytes")
        self._secret = secret
        self.base = base.rstrip("/")

    def _mac(self, owner: str, job_id: str, scope: str, expires: int) -> bytes:
        text = "\n".join((VERSION, owner, job_id, scope, str(expires)))
        return hmac.new(self._secret, text.encode(), hashlib.sha256).digest()

    def token(self, owner: str, job_id: str, name: str, expires: int) -> str:
        scope = scope_of(name)
        mac = self._mac(owner, job_id, scope, expires)
        return ".".join(
            (VERSION, job_id, str(expires), _b64(owner.encode()), _b64(scope.encode()), _b64(mac))
        )

    def url(self, owner: str, job_id: str, name: str, expires_in: float) -> str:
        expires = int(time.time() + expires_in)
        return f"{self.base}/artifacts/{self.token(owner, job_id, name, expires)}/{name}"

    def verify(self, token: str, name: str, *, now: float | None = None) -> Grant:
        """The grant of a token for ``name``; PERMISSION_DENIED when it is malformed,
        tampered with, expired, or does not reach ``name``."""
        parts = token.split(".")
        try:
            version, job_id, expires_text, owner_b64, scope_b64, mac_b64 = parts
            if version != VERSION:
                raise ValueError(version)
            job_id = str(uuid.UUID(job_id))
            expires = int(expires_text)
            owner = _unb64(owner_b64).decode()
            scope = _unb64(scope_b64).decode()
            mac = _unb64(mac_b64)
        except (ValueError, UnicodeDecodeError):
            raise PermissionDenied(
                "not an artifact URL token", reason="PERMISSION_DENIED"
            ) from None
        if not hmac.compare_digest(mac, self._mac(owner, job_id, scope, expires)):
            raise PermissionDenied("the URL's signature does not hold", reason="PERMISSION_DENIED")
        if (time.time() if now is None else now) >= expires:
            raise PermissionDenied("the URL has expired", reason="PERMISSION_DENIED")
        if not in_scope(scope, name):
            raise PermissionDenied(
                "the URL does not reach this artifact", reason="PERMISSION_DENIED"
            )
        return Grant(owner=owner, job_id=job_id, scope=scope, expires=expires)
