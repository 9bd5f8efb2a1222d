"""``python -m services.transcode``: serve TranscodeService until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys

from runtime.errors import InvalidArgument
from runtime.logs import setup_logging
from runtime.server import run_service
from runtime.settings import load_settings
from services.transcode.server import build_service
from services.transcode.settings import TranscodeSettings


def main() -> None:
    try:
        settings = load_settings(TranscodeSettings)
    except InvalidArgument as exc:
        sys.exit(f"transcode: {exc.message}")
    setup_logging("transcode", settings.log_level, settings.log_format)
    asyncio.run(run_service(build_service(settings), settings))


if __name__ == "__main__":
    main()
