"""``python -m services.ingest``: load settings, set up logging, serve until SIGTERM."""

from __future__ import annotations

import asyncio
import sys

from runtime.errors import ReelmillError
from runtime.logs import setup_logging
from runtime.server import run_service
from runtime.settings import load_settings
from runtime.storage import open_store
from services.ingest.server import build_spec
from services.ingest.settings import IngestSettings


def main() -> None:
    try:
        settings = load_settings(IngestSettings)
    except ReelmillError as exc:
        sys.exit(f"ingest: {exc.message}")
    setup_logging("ingest", settings.log_level, settings.log_format)
    store = open_store(settings)
    asyncio.run(run_service(build_spec(settings, store), settings))


if __name__ == "__main__":
    main()
