"""CLI settings: where the gateway is and which credential to use.

``REELMILL_GATEWAY`` and ``REELMILL_API_KEY`` / ``REELMILL_TOKEN`` win; otherwise the
credentials file that ``reelmill up`` writes into ``REELMILL_HOME`` (default ``./.reelmill``)
is used. The credential is a JWT or an API key (``rk_…``); ``REELMILL_API_KEY`` wins over
``REELMILL_TOKEN``, and either is sent as ``authorization: Bearer …``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REELMILL_", extra="ignore", frozen=True)

    #: Working directory of `reelmill up`: database, objects, logs, credentials.
    home: Path = Path(".reelmill")
    #: The object store `reelmill up` runs: "local" (a directory, ``$REELMILL_HOME/objects``;
    #: artifact URLs are the browser port's signed http URLs) or "seaweedfs" (an embedded S3
    #: server on loopback, ``$REELMILL_HOME/seaweedfs``; artifact URLs are presigned http URLs).
    up_storage: Literal["local", "seaweedfs"] = "local"
    #: Gateway address for the CLI.
    gateway: str | None = None
    #: Bearer token for the CLI: a JWT or an API key.
    token: str | None = None
    #: API key for the CLI (wins over the token).
    api_key: str | None = None

    @property
    def credentials_file(self) -> Path:
        return self.home / "credentials.json"

    def resolve(self) -> tuple[str, str]:
        """(gateway target, token), or raise SystemExit with what to do."""
        saved: dict[str, str] = {}
        if self.credentials_file.is_file():
            saved = json.loads(self.credentials_file.read_text())
        gateway = self.gateway or saved.get("gateway")
        token = self.api_key or self.token or saved.get("token")
        if not gateway or not token:
            raise SystemExit(
                "reelmill: no gateway credentials; run `reelmill up` first, or set "
                "REELMILL_GATEWAY and REELMILL_TOKEN (or REELMILL_API_KEY)"
            )
        return gateway, token
