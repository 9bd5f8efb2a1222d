"""``python -m gateway``: the public API and the job orchestrator.

python -m gateway [serve]     serve until SIGTERM (the default)
python -m gateway migrate     apply the database migrations to REELMILL_DATABASE_URL, then exit
                              (idempotent; replicas migrating together wait for each other)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

#: Not ``__name__``: run with ``-m``, that is ``__main__``.
log = logging.getLogger("gateway.migrate")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = root.add_subparsers(dest="command", metavar="{serve,migrate}")
    commands.add_parser("serve", help="serve the API and run the orchestrator (the default)")
    commands.add_parser("migrate", help="apply the database migrations, then exit")
    return root


def serve() -> int:
    from gateway.server import build
    from gateway.settings import GatewaySettings
    from runtime.server import serve_main

    return serve_main("gateway", GatewaySettings, build)


def migrate() -> int:
    """Loads the gateway's settings (failing fast), brings the database to the newest
    migration and returns the exit code: 0 done, 1 the migration failed, 2 bad settings."""
    from gateway.db.engine import head_revision, make_engine
    from gateway.db.engine import migrate as run_migrations
    from gateway.settings import GatewaySettings
    from runtime.errors import ReelmillError
    from runtime.logs import setup_logging
    from runtime.settings import load_settings

    try:
        settings = load_settings(GatewaySettings)
    except ReelmillError as exc:
        print(f"gateway migrate: {exc.message}", file=sys.stderr)
        return 2
    setup_logging("migrate", settings.log_level, settings.log_format)

    async def main() -> None:
        engine = make_engine(settings.database_url, pool_size=1)
        try:
            await run_migrations(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(main())
    except Exception as exc:  # unreachable database, failed migration: one line says which
        debug = log.isEnabledFor(logging.DEBUG)
        log.error("migration failed: %s: %s", type(exc).__name__, exc, exc_info=debug)
        return 1
    log.info("database is at the newest migration (%s)", head_revision())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return migrate() if args.command == "migrate" else serve()


if __name__ == "__main__":
    sys.exit(main())
