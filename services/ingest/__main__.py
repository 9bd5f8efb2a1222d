"""``python -m services.ingest``: load settings, set up logging, serve until SIGTERM."""

from __future__ import annotations

import sys

from runtime.server import ServiceSpec, serve_main
from runtime.storage import open_store
from services.ingest.server import build_spec
from services.ingest.settings import IngestSettings


async def build(settings: IngestSettings) -> ServiceSpec:
    return build_spec(settings, open_store(settings))


if __name__ == "__main__":
    sys.exit(serve_main("ingest", IngestSettings, build))
