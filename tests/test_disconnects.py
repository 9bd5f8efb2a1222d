"""Which database errors mean "unreachable, retry" to the runner (``gateway.runs``)."""

from __future__ import annotations

import asyncpg
import pytest
from asyncpg import exceptions as asyncpg_exc
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import asyncpg as sa_asyncpg

from gateway.runs import disconnected


def as_sqlalchemy_raises(error: Exception) -> sa_exc.DBAPIError:
    """``error`` as SQLAlchemy hands it over: asyncpg's exception translated into the DBAPI
    adapter's, wrapped in a ``DBAPIError`` (the adapter's carries asyncpg's as its cause)."""
    dbapi = sa_asyncpg.AsyncAdapt_asyncpg_dbapi(asyncpg)
    try:
        sa_asyncpg.AsyncAdapt_asyncpg_connection._handle_exception_no_connection(dbapi, error)
    except Exception as translated:
        wrapped = sa_exc.DBAPIError.instance("SELECT 1", {}, translated, dbapi.Error)
        assert isinstance(wrapped, sa_exc.DBAPIError)
        return wrapped
    raise AssertionError("not translated")


@pytest.mark.parametrize(
    "error",
    [
        asyncpg_exc.CannotConnectNowError("the database system is shutting down"),
        asyncpg_exc.CannotConnectNowError("the database system is starting up"),
        asyncpg_exc.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg_exc.ConnectionDoesNotExistError("connection was closed in the middle"),
    ],
)
def test_restart_errors_are_disconnects(error: Exception) -> None:
    assert disconnected(as_sqlalchemy_raises(error))


@pytest.mark.parametrize(
    "error",
    [
        asyncpg_exc.UniqueViolationError("duplicate key"),
        asyncpg_exc.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg_exc.UndefinedTableError('relation "x" does not exist'),
    ],
)
def test_statement_errors_are_not(error: Exception) -> None:
    assert not disconnected(as_sqlalchemy_raises(error))


def test_refused_connections_are_disconnects() -> None:
    assert disconnected(ConnectionRefusedError(111, "Connection refused"))
    assert not disconnected(ValueError("bad"))
