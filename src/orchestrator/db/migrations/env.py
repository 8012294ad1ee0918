"""Alembic environment: migrations run on the connection Orchestrator hands in
(``config.attributes["connection"]``); there is no alembic.ini and no URL here."""

from __future__ import annotations

from alembic import context

from orchestrator.db.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable from the alembic CLI
    raise RuntimeError("run migrations through orchestrator (Database.migrate)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
