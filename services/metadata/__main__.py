"""``python -m services.metadata``: load settings, set up logging, serve until SIGTERM."""

from __future__ import annotations

import sys

from runtime.server import ServiceSpec, serve_main
from runtime.storage import open_store
from services.metadata.server import build_spec
from services.metadata.settings import MetadataSettings


async def build(settings: MetadataSettings) -> ServiceSpec:
    return build_spec(settings, open_store(settings))


if __name__ == "__main__":
    sys.exit(serve_main("metadata", MetadataSettings, build))
