from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import PostgresServer, S3Server, run_moto, run_postgres

SHARED_MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with run_moto() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket per test."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3_server.client().make_bucket(name)
    return name


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with run_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def shared_media() -> Path:
    if not SHARED_MEDIA.is_dir():
        pytest.fail(f"../shared/media not found at {SHARED_MEDIA}")
    return SHARED_MEDIA


@pytest.fixture(scope="session")
def migrated_template(postgres: PostgresServer) -> str:
    """A database with every migration applied, cloned by each test that needs one."""
    import asyncio

    import asyncpg

    from gateway.db.engine import make_engine, migrate

    async def build() -> None:
        conn = await asyncpg.connect(postgres.dsn())
        try:
            await conn.execute("CREATE DATABASE reelmill_template")
        finally:
            await conn.close()
        engine = make_engine(postgres.url("reelmill_template"))
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(build())
    return "reelmill_template"


@pytest.fixture
def database_url(postgres: PostgresServer, migrated_template: str) -> str:
    """A fresh, migrated database per test."""
    import asyncio

    import asyncpg

    name = f"t_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(postgres.dsn())
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE {migrated_template}')
        finally:
            await conn.close()

    asyncio.run(create())
    return postgres.url(name)
