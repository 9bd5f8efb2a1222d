"""The session's real servers and what every test that needs them takes from them: a database
cloned from the migrated template (``fresh_database``), a bucket (``fresh_bucket``), and the
storage and database settings of a suite (``suite_env``)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db.engine import make_engine, make_sessionmaker
from tests.servers import PostgresServer, S3Server, run_postgres, run_seaweedfs

SHARED_MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"

Backend = Literal["local", "s3"]
#: ``fresh_database(prefix, migrated=True)`` -> the name of a new database.
FreshDatabase = Callable[..., str]
#: ``fresh_bucket(prefix)`` -> the name of a new, empty bucket.
FreshBucket = Callable[..., str]
#: ``suite_env(backend)`` -> a fresh database and fresh storage, as ``REELMILL_*`` settings.
SuiteEnv = Callable[[Backend], dict[str, str]]


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[Callable[[], S3Server]]:
    """The session's S3 server, SeaweedFS, started by the first call (a session that needs
    no S3 starts none) and stopped at the end of the session."""
    with contextlib.ExitStack() as stack:
        started: list[S3Server] = []

        def server() -> S3Server:
            if not started:
                started.append(stack.enter_context(run_seaweedfs()).server)
            return started[0]

        yield server


@pytest.fixture(scope="session")
def s3_server(seaweedfs: Callable[[], S3Server]) -> S3Server:
    """Where the session's S3 server answers, and the identity it checks signatures against."""
    return seaweedfs()


@pytest.fixture(scope="session")
def fresh_bucket(seaweedfs: Callable[[], S3Server]) -> FreshBucket:
    def make(prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:16]}"
        seaweedfs().client().make_bucket(name)
        return name

    return make


@pytest.fixture
def s3_bucket(fresh_bucket: FreshBucket) -> str:
    """A fresh, empty bucket per test."""
    return fresh_bucket()


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
    """A database with every migration applied, cloned by ``fresh_database``."""
    from gateway.db.engine import make_engine, migrate

    name = postgres.create_database("template")

    async def build() -> None:
        engine = make_engine(postgres.url(name))
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(build())
    return name


@pytest.fixture(scope="session")
def fresh_database(postgres: PostgresServer, migrated_template: str) -> FreshDatabase:
    """Creates a database and returns its name: a clone of the migrated template, or with
    ``migrated=False`` an empty one (for what has to migrate it itself). Call it from sync
    code (a fixture), not from a running event loop."""

    def make(prefix: str = "t", *, migrated: bool = True) -> str:
        return postgres.create_database(prefix, template=migrated_template if migrated else None)

    return make


@pytest.fixture
def database_url(postgres: PostgresServer, fresh_database: FreshDatabase) -> str:
    """A fresh, migrated database per test."""
    return postgres.url(fresh_database())


@pytest_asyncio.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions of the gateway's engine on a fresh, migrated database."""
    engine = make_engine(database_url)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
def empty_database(fresh_database: FreshDatabase) -> str:
    """A database with no tables (its name): what migrates has to create them."""
    return fresh_database("empty", migrated=False)


@pytest.fixture(scope="session")
def suite_env(
    postgres: PostgresServer,
    fresh_database: FreshDatabase,
    fresh_bucket: FreshBucket,
    seaweedfs: Callable[[], S3Server],
    tmp_path_factory: pytest.TempPathFactory,
) -> SuiteEnv:
    """The settings a suite of its own needs: a fresh migrated database, and a fresh bucket
    on the session's S3 server (``"s3"``) or a fresh local object directory (``"local"``)."""

    def make(backend: Backend) -> dict[str, str]:
        env = {"REELMILL_DATABASE_URL": postgres.url(fresh_database())}
        if backend == "s3":
            env.update(seaweedfs().env(fresh_bucket()))
        else:
            objects = tmp_path_factory.mktemp("objects")
            env.update({"REELMILL_STORAGE_BACKEND": "local", "REELMILL_STORAGE_DIR": str(objects)})
        return env

    return make
