"""A gateway is ready only on a database migrated to exactly the schema its code expects."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.db.engine import make_engine, migrate
from gateway.server import assemble
from gateway.settings import GatewaySettings
from tests.servers import PostgresServer
from tests.suite import INTERNAL_TOKEN


async def test_readiness_waits_for_migrations(
    postgres: PostgresServer, empty_database: str, tmp_path: Path
) -> None:
    settings = GatewaySettings(
        database_url=postgres.url(empty_database),
        jwt_secret="s" * 32,
        storage_dir=tmp_path / "objects",
        migrate_on_start=False,
        internal_token=INTERNAL_TOKEN,
    )
    parts = await assemble(settings)
    check = parts.spec.health_checks["postgres"]
    try:
        with pytest.raises(Exception, match="alembic_version"):
            await check()  # nothing migrated: not ready
        engine = make_engine(settings.database_url)
        try:
            await migrate(engine)
            await check()  # at head: ready
            async with engine.begin() as connection:
                await connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0001'")
            with pytest.raises(RuntimeError, match="schema is at '0001'"):
                await check()  # behind the code
        finally:
            await engine.dispose()
    finally:
        assert parts.spec.on_close is not None
        await parts.spec.on_close()
