"""Which database errors mean "unreachable, retry" to the runner (``gateway.runs``)."""

from __future__ import annotations

import asyncpg
import pytest
from asyncpg import exceptions as asyncpg_exc
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import asyncpg as sa_asyncpg

from gateway.runs import database_unavailable, disconnected
from runtime.errors import error_info


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


async def test_handlers_answer_unavailable_while_the_database_is_unreachable() -> None:
    """Through the real interceptor: a handler that meets an unreachable database answers
    UNAVAILABLE (retry) with its reason, not INTERNAL."""
    import grpc

    from runtime.errors import register_translation
    from runtime.server import build_server
    from runtime.settings import ServiceSettings

    register_translation(database_unavailable)
    failures = {
        "down": as_sqlalchemy_raises(asyncpg_exc.CannotConnectNowError("shutting down")),
        "bug": as_sqlalchemy_raises(asyncpg_exc.UndefinedTableError('relation "x"')),
    }

    async def fail(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        raise failures[request.decode()]

    server = build_server(ServiceSettings())
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "t.T", {"F": grpc.unary_unary_rpc_method_handler(fail)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.T/F")
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await call(b"down", timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as bug:
                await call(b"bug", timeout=10)
    finally:
        await server.stop(0)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(down.value).reason == "DATABASE_UNAVAILABLE"
    assert bug.value.code() == grpc.StatusCode.INTERNAL
