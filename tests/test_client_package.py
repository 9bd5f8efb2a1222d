"""Internal callers import the stubs and the typed client without any server code."""

from __future__ import annotations

import subprocess
import sys

from tests.suite import ROOT


def test_client_imports_no_server_code() -> None:
    probe = (
        "import sys\n"
        "import reelmill.client, reelmill.v1.job_service_pb2_grpc, reelmill.v1.job_pb2\n"
        "server = ('gateway', 'services', 'runtime', 'sqlalchemy', 'asyncpg', 'minio', 'av',"
        " 'alembic', 'pgserver')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in server)\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
