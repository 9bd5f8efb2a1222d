"""Postgres access for the gateway: models, engine, migrations."""
