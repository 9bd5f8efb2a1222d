"""``python -m services.vision``: load settings, set up logging, serve until SIGTERM."""

from __future__ import annotations

import sys

from runtime.server import ServiceSpec, serve_main
from runtime.storage import open_store
from services.vision.server import build_spec
from services.vision.settings import VisionSettings


async def build(settings: VisionSettings) -> ServiceSpec:
    return build_spec(settings, open_store(settings))


if __name__ == "__main__":
    sys.exit(serve_main("vision", VisionSettings, build))
