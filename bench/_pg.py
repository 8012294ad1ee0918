"""A throwaway PostgreSQL database for a bench run (shared by the benches that start
``serve`` processes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def throwaway_postgres(url: str) -> Iterator[str]:
    """A new database next to ``url``'s (a local server only); its URL. Dropped at the end."""
    import asyncpg
    from sqlalchemy.engine import make_url

    base = make_url(url).set(drivername="postgresql+asyncpg")
    if base.host not in (None, "127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to use a non-local PostgreSQL host: {base.host}")
    admin = base.set(drivername="postgresql", database="postgres")
    dsn = admin.render_as_string(hide_password=False)
    name = f"orch_bench_{os.urandom(6).hex()}"

    async def sql(statement: str) -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(sql(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
