"""Real servers for tests: an ephemeral Postgres (pgserver) and a loopback S3 server
(SeaweedFS), each started by PID and stopped the same way."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from reelmill.cli.processes import stop_process
from reelmill.cli.seaweedfs import S3Server, SeaweedFS

__all__ = ["S3Server", "SeaweedFS", "stop_process"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def run_seaweedfs() -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 server on loopback ports (see ``reelmill.cli.seaweedfs``) with its data
    in a temporary directory, removed afterwards. ``kill()`` then ``start()`` on the handle is a
    restart on the same data and ports. Stopped with a short grace: its data is thrown away."""
    root = Path(tempfile.mkdtemp(prefix="reelmill-seaweedfs-"))
    weed = SeaweedFS(root)
    try:
        weed.start()
        yield weed
    finally:
        weed.stop(grace=2.0)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class PostgresServer:
    socket_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@/{database}?host={self.socket_dir}"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def create_database(self, prefix: str = "t", *, template: str | None = None) -> str:
        """A new database (a copy of ``template`` when given, else empty); its name. From
        sync code only: it runs an event loop of its own."""
        import asyncio

        import asyncpg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        clone = f" TEMPLATE {template}" if template else ""

        async def create() -> None:
            conn = await asyncpg.connect(self.dsn())
            try:
                await conn.execute(f'CREATE DATABASE "{name}"{clone}')
            finally:
                await conn.close()

        asyncio.run(create())
        return name


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


def restart_postgres(server: PostgresServer, *, down: float = 0.0) -> None:
    """Stops Postgres (``-m fast``: every session is disconnected at once), leaves it down for
    ``down`` seconds, and starts it again on the same data directory and socket."""
    from pgserver._commands import POSTGRES_BIN_PATH

    data = server.socket_dir
    pg_ctl = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data), "-w"]
    if os.geteuid() == 0:  # pgserver runs Postgres as its own user when we are root
        pg_ctl = ["runuser", "-u", "pgserver", "--", *pg_ctl]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "timeout": 60}
    subprocess.run([*pg_ctl, "-m", "fast", "stop"], check=True, **quiet)  # type: ignore[call-overload]
    time.sleep(down)
    start = ["-o", '-h ""', "-o", f"-k {data}", "-l", str(data / "log"), "start"]
    subprocess.run([*pg_ctl, *start], check=True, **quiet)  # type: ignore[call-overload]


def entries_under(root: Path, *, files_only: bool = False) -> list[Path]:
    """Everything below ``root`` (nothing when it does not exist). ``os.walk`` rather than
    ``rglob``: a process may be removing a directory while the test looks."""
    found: list[Path] = []
    for directory, dirs, files in os.walk(root):
        names = files if files_only else [*dirs, *files]
        found += [Path(directory, name) for name in names]
    return found
