"""Real servers for tests: an ephemeral Postgres (pgserver) and a loopback S3 server (moto),
each started by PID and stopped the same way."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from minio import Minio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str = "testing"
    secret_key: str = "testing"

    def client(self) -> Minio:
        return Minio(
            self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False
        )

    def env(self, bucket: str) -> dict[str, str]:
        return {
            "REELMILL_STORAGE_BACKEND": "s3",
            "REELMILL_S3_ENDPOINT": self.endpoint,
            "REELMILL_S3_ACCESS_KEY": self.access_key,
            "REELMILL_S3_SECRET_KEY": self.secret_key,
            "REELMILL_S3_BUCKET": bucket,
        }


@contextmanager
def run_moto() -> Iterator[S3Server]:
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
    )
    try:
        wait_for_port(port, proc=proc)
        yield S3Server(endpoint=f"127.0.0.1:{port}")
    finally:
        stop_process(proc)
        log.close()
        os.unlink(log.name)


@dataclass(frozen=True)
class PostgresServer:
    socket_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@/{database}?host={self.socket_dir}"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"


@contextmanager
def run_postgres() -> Iterator[PostgresServer]:
    import pgserver

    data = Path(tempfile.mkdtemp(prefix="reelmill-pg-"))
    server = pgserver.get_server(data, cleanup_mode="stop")
    try:
        yield PostgresServer(socket_dir=data)
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)
