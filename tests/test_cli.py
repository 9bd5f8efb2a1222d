"""The README's first command, for real: `reelmill demo` starts every process on embedded
defaults (pgserver, local store), processes a sample video and stops everything. And
`reelmill migrate`, which runs the gateway's own `python -m gateway migrate`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import psutil
import pytest

from tests.servers import PostgresServer, free_port

pytestmark = pytest.mark.e2e


def run(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` with ``env`` and none of this environment's ``REELMILL_*``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REELMILL_")}
    return subprocess.run(
        [sys.executable, "-m", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_processes_a_sample_and_stops_cleanly(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    home = str(tmp_path / "home")
    result = run(
        "reelmill.cli.main",
        "demo",
        "--listen",
        listen,
        timeout=600,
        REELMILL_HOME=home,
        COLUMNS="200",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "state SUCCEEDED" in output
    assert "probe" in output
    credentials = tmp_path / "home" / "credentials.json"
    assert credentials.is_file()
    # Every child was stopped: no process still runs from this home.
    assert [p.pid for p in psutil.process_iter() if _mentions(p, str(tmp_path))] == []


def _mentions(process: psutil.Process, needle: str) -> bool:
    try:
        parts = [*process.cmdline(), *process.environ().values()]
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    return any(needle in part for part in parts)


def test_migrate_runs_the_gateways_migrate_command(postgres: PostgresServer) -> None:
    """`reelmill migrate` brings an empty database to the newest migration, as
    `python -m gateway migrate` (what deployments run) does; again, it changes nothing."""
    from gateway.db.engine import head_revision

    name = f"cli_{uuid.uuid4().hex[:12]}"
    asyncio.run(_execute(postgres.dsn(), f'CREATE DATABASE "{name}"'))
    for command in (["reelmill.cli.main", "migrate"], ["gateway", "migrate"]):
        done = run(*command, REELMILL_DATABASE_URL=postgres.url(name))
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"database is at the newest migration ({head_revision()})" in done.stdout
    version = "SELECT version_num FROM alembic_version"
    assert asyncio.run(_execute(postgres.dsn(name), version)) == head_revision()


async def _execute(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def test_migrate_says_what_went_wrong() -> None:
    """Exit code 2 and the setting for bad settings; 1 and one line for no database."""
    bad = run("reelmill.cli.main", "migrate", REELMILL_DATABASE_POOL_SIZE="0")
    assert bad.returncode == 2
    assert "gateway migrate: bad settings: REELMILL_DATABASE_POOL_SIZE" in bad.stderr
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/reelmill"
    unreachable = run("reelmill.cli.main", "migrate", REELMILL_DATABASE_URL=nowhere)
    assert unreachable.returncode == 1
    assert "migration failed: ConnectionRefusedError" in unreachable.stdout
    assert "Traceback" not in unreachable.stdout + unreachable.stderr
