"""``python -m services.transcribe``: load settings, set up logging, serve until SIGTERM."""

from __future__ import annotations

import sys

from runtime.server import ServiceSpec, serve_main
from runtime.storage import open_store
from services.transcribe.server import build_spec
from services.transcribe.settings import TranscribeSettings


async def build(settings: TranscribeSettings) -> ServiceSpec:
    return build_spec(settings, open_store(settings))


if __name__ == "__main__":
    sys.exit(serve_main("transcribe", TranscribeSettings, build))
