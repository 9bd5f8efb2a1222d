"""``python -m gateway``: the public API and the job orchestrator."""

import sys

from gateway.server import build
from gateway.settings import GatewaySettings
from runtime.server import serve_main

if __name__ == "__main__":
    sys.exit(serve_main("gateway", GatewaySettings, build))
