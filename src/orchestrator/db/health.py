"""Is the database still the one we opened, and is it sound?

SQLite keeps working on a file that was deleted (or replaced) under a running process:
writes land in the unlinked inode and are gone at the next start. So the file's
identity (device, inode) is remembered when it is opened and compared on every write
and readiness check. At start-up and in ``ignite`` the file is integrity-checked
(``PRAGMA quick_check``); on PostgreSQL a round trip stands for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

SQLITE_PREFIX = "sqlite+aiosqlite:///"


@dataclass(frozen=True)
class FileIdentity:
    path: Path
    device: int
    inode: int


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for PostgreSQL or an in-memory database)."""
    if not url.startswith(SQLITE_PREFIX):
        return None
    raw = url[len(SQLITE_PREFIX) :].split("?", 1)[0]
    return Path(raw) if raw and raw != ":memory:" else None


def identify(path: Path) -> FileIdentity | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return FileIdentity(path, st.st_dev, st.st_ino)


def file_problem(known: FileIdentity) -> str | None:
    """None while ``known.path`` is still the file that was opened, else what happened."""
    now = identify(known.path)
    if now is None:
        return (
            f"the database file {known.path} was deleted while Orchestrator was running; "
            "nothing written now would survive a restart (restore it, or restart to begin anew)"
        )
    if (now.device, now.inode) != (known.device, known.inode):
        return (
            f"the database file {known.path} was replaced while Orchestrator was running; "
            "restart to use the new file"
        )
    return None


async def integrity_problem(conn: AsyncConnection) -> str | None:
    """SQLite: ``PRAGMA quick_check``; None when it says ok."""
    if conn.dialect.name != "sqlite":
        await conn.execute(sa.text("SELECT 1"))
        return None
    rows = [str(r[0]) for r in (await conn.execute(sa.text("PRAGMA quick_check"))).all()]
    if rows == ["ok"]:
        return None
    return "; ".join(rows[:5]) + (f" (and {len(rows) - 5} more)" if len(rows) > 5 else "")
