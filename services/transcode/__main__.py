"""``python -m services.transcode``: serve TranscodeService until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from runtime.server import ServiceSpec, serve_main
from services.transcode.server import build_service
from services.transcode.settings import TranscodeSettings


async def build(settings: TranscodeSettings) -> ServiceSpec:
    return build_service(settings)


if __name__ == "__main__":
    sys.exit(serve_main("transcode", TranscodeSettings, build))
