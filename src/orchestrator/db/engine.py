"""The async engine, transaction helpers and migrations.

SQLite runs in WAL mode; writes start with ``BEGIN IMMEDIATE`` so two processes
never both read-then-write the same rows (the claim). PostgreSQL serialises claims
with a transaction-scoped advisory lock instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from orchestrator import errors
from orchestrator.db import health

if TYPE_CHECKING:
    from alembic.config import Config

P = ParamSpec("P")
R = TypeVar("R")

MIGRATIONS = Path(__file__).parent / "migrations"
CLAIM_LOCK_KEY = 7_270_001
MIGRATE_LOCK_KEY = 7_270_002
# SQLite: threads for read units of work (writes have one thread of their own).
READ_THREADS = 4


def cancel_safe(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Run a database operation to completion even if its caller is cancelled
    (the cancel is re-raised afterwards). A transaction interrupted half-way would
    leave its connection checked out and never closed."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        task = asyncio.ensure_future(fn(*args, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # Wait for the transaction to end, through further cancels too.
            while not task.done():
                with contextlib.suppress(BaseException):
                    await asyncio.shield(task)
            raise

    return wrapper


def db_now(conn: sa.Connection) -> datetime:
    """The database's clock, read inside the caller's transaction (after its locks
    are held): what leases are measured by, so that neither a long wait for the write
    lock nor a process whose own clock is off can make a lease that is born expired
    or take over a live one. PostgreSQL: ``clock_timestamp()`` of the server, shared
    by every machine. SQLite: the clock of the one machine that holds the file."""
    if conn.dialect.name == "sqlite":
        raw = conn.execute(sa.text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar()
        return datetime.fromisoformat(str(raw)).replace(tzinfo=UTC)
    value = conn.execute(sa.text("SELECT clock_timestamp()")).scalar()
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


# How long a SQLite statement waits for another process's write lock before "database
# is locked" (then retried by the worker, or answered 503 by the API).
SQLITE_BUSY_TIMEOUT_MS = 30_000
# PostgreSQL SQLSTATEs of an outage: connection exceptions (08), too many connections,
# the server shutting down or starting (57P0x), the database missing (3D000).
# A deadlock or serialization failure (40P01, 40001) is retried like an outage.
PG_TRANSIENT_STATES = ("08", "53300", "57P01", "57P02", "57P03", "3D000", "40P01", "40001")
SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o", "full")


def is_transient(exc: BaseException) -> bool:
    """Whether a database error may pass by itself: a lock held too long ("database
    is locked"), a lost or refused connection, a pool exhausted, an I/O error. A
    write failing so is retried (or answered with 503), never taken as the job's end."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc.orig, sqlite3.Error):
            # SQLite says OperationalError for "no such table" too: go by the message.
            text = str(exc.orig).lower()
            return any(m in text for m in SQLITE_TRANSIENT)
        state = str(getattr(exc.orig, "sqlstate", None) or "")
        if state.startswith(PG_TRANSIENT_STATES):
            return True
        return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    return isinstance(exc, sa_exc.TimeoutError | OSError | errors.DatabaseUnavailable)


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.closed = False
        # create_async_engine's options differ per dialect: **kwargs of any kind
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
            kwargs["pool_size"] = 20
            kwargs["max_overflow"] = 0
            kwargs["pool_timeout"] = 60
            if url.startswith("sqlite+aiosqlite:///"):
                Path(url[len("sqlite+aiosqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 10
            # No ping per checkout (it cost about 2 ms of each unit of work, a third of a
            # job's wall time): a connection the server dropped fails its statement as a
            # disconnect, SQLAlchemy then discards the pool's connections, and the
            # failure is transient (``is_transient``: retried by the worker, 503 in the
            # API) — one failed attempt after a server restart instead of a ping always.
            kwargs["pool_pre_ping"] = False
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _install_sqlite_hooks(self.engine.sync_engine)
        # SQLite: units of work (``run``) go to a synchronous engine on the same file,
        # each as one call on a thread: writes on one writer thread (so this process's
        # writes never wait for each other's lock), reads on a small pool.
        self._sync: sa.Engine | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        file_path = health.sqlite_path(url)
        if self.is_sqlite and file_path is not None:
            self._sync = sa.create_engine(
                "sqlite:///" + str(file_path),
                echo=echo,
                connect_args={
                    "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                    "check_same_thread": False,
                },
                pool_size=READ_THREADS + 1,
                max_overflow=0,
                pool_timeout=60,
            )
            _install_sqlite_hooks(self._sync)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="db-writer")
            self._readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="db-reader")
        self.path = health.sqlite_path(url)
        # The file as it was when opened (see db/health.py); set by open_database.
        self.identity: health.FileIdentity | None = None

    def file_problem(self) -> str | None:
        """What happened to the SQLite file since it was opened (deleted, replaced)."""
        return None if self.identity is None else health.file_problem(self.identity)

    def _check_file(self) -> None:
        problem = self.file_problem()
        if problem is not None:
            raise errors.DatabaseUnavailable(problem)

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("the database was closed; open a new runtime to use it")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        self._check_open()
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    @asynccontextmanager
    async def write(self, *, claim_lock: bool = False) -> AsyncIterator[AsyncConnection]:
        """A write transaction. ``claim_lock`` serialises it with every other
        claimer, in this process and others. Refused (503) once the SQLite file was
        deleted or replaced: what it wrote would be lost."""
        self._check_open()
        self._check_file()
        async with self.engine.connect() as conn:
            if self.is_sqlite:
                await conn.execution_options(orchestrator_immediate=True)
            async with conn.begin():
                if claim_lock and not self.is_sqlite:
                    await conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({CLAIM_LOCK_KEY})"))
                yield conn

    def engines(self) -> list[sa.Engine]:
        """Every synchronous engine statements run on (for event listeners)."""
        return [self.engine.sync_engine] + ([self._sync] if self._sync is not None else [])

    async def run(
        self,
        fn: Callable[[sa.Connection], R],
        *,
        write: bool = False,
        claim_lock: bool = False,
    ) -> R:
        """One unit of work: ``fn`` runs with a connection inside one transaction
        (committed when it returns, rolled back when it raises), as one synchronous
        call: on SQLite one hop to a database thread (``BEGIN IMMEDIATE`` for a write),
        on PostgreSQL one greenlet (no thread). ``claim_lock`` serialises it with
        every other claimer, in this process and others. A write is refused (503)
        once the SQLite file was deleted or replaced."""
        self._check_open()
        if write:
            self._check_file()
        unit = functools.partial(_unit, fn, write, claim_lock)
        if self._sync is not None:
            pool = self._writer if write else self._readers
            assert pool is not None
            sync = self._sync
            return await asyncio.get_running_loop().run_in_executor(
                pool, _on_thread, sync, write, unit
            )
        async with self.engine.connect() as conn:
            if write and self.is_sqlite:
                await conn.execution_options(orchestrator_immediate=True)
            return await conn.run_sync(unit)

    async def migrate(self) -> None:
        """Apply Alembic migrations up to head (safe when several processes start).
        At head (every start but the first after an upgrade) alembic is not even
        imported: the stored revision is compared with the newest migration file's."""
        if await self.current_revision() == head_revision():
            return
        async with self.write() as conn:
            if not self.is_sqlite:
                await conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK_KEY})"))
            await conn.run_sync(_upgrade)

    async def current_revision(self) -> str | None:
        """The schema revision stored in ``alembic_version`` (None: no schema yet)."""

        def read(conn: sa.Connection) -> str | None:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            rows = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
            return str(rows[0][0]) if len(rows) == 1 else None

        async with self.engine.connect() as conn:
            return await conn.run_sync(read)

    async def integrity_problem(self) -> str | None:
        """SQLite: what ``PRAGMA quick_check`` found wrong (None when sound)."""
        async with self.read() as conn:
            return await health.integrity_problem(conn)

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def dispose(self) -> None:
        self.closed = True
        for pool in (self._writer, self._readers):
            if pool is not None:
                await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)
        if self._sync is not None:
            self._sync.dispose()
        await self.engine.dispose()


def _unit(
    fn: Callable[[sa.Connection], R], write: bool, claim_lock: bool, conn: sa.Connection
) -> R:
    with conn.begin():
        if claim_lock and write and conn.dialect.name != "sqlite":
            conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({CLAIM_LOCK_KEY})"))
        return fn(conn)


def _on_thread(engine: sa.Engine, write: bool, unit: Callable[[sa.Connection], R]) -> R:
    with engine.connect() as conn:
        if write:
            conn.execution_options(orchestrator_immediate=True)
        return unit(conn)


def alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


_REVISION = re.compile(r"^(down_)?revision(?:: [^=]+)? = (.+)$", re.MULTILINE)


@functools.cache
def head_revision() -> str:
    """The newest migration's revision, read from the migration files themselves (the
    one no other names as its ``down_revision``): alembic is not imported for it."""
    revisions: set[str] = set()
    downs: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for down, value in _REVISION.findall(path.read_text(encoding="utf-8")):
            found = set(re.findall(r"[\"']([^\"']+)[\"']", value))
            (downs if down else revisions).update(found)
    heads = revisions - downs
    if len(heads) != 1:
        raise RuntimeError(f"the migrations must have exactly one head, found {sorted(heads)}")
    return heads.pop()


def _upgrade(sync_conn: sa.Connection) -> None:
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


def _install_sqlite_hooks(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    # DBAPI objects: SQLAlchemy types event arguments as Any
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control from the driver (SQLAlchemy's documented
        # recipe), so BEGIN IMMEDIATE is possible and DDL is transactional.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        if conn.get_execution_options().get("orchestrator_immediate"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


async def open_database(url: str) -> Database:
    """Open, integrity-check (SQLite: ``PRAGMA quick_check``) and migrate."""
    db = Database(url)
    try:
        try:
            problem = await db.integrity_problem()
            if problem is not None:
                raise errors.DatabaseCorrupt(db.path, problem)
            await db.migrate()
        except sa_exc.DatabaseError as exc:
            if not db.is_sqlite or is_transient(exc):
                raise
            raise errors.DatabaseCorrupt(db.path, str(exc.orig)) from exc
        if db.path is not None:
            db.identity = health.identify(db.path)
    except BaseException:
        await asyncio.shield(db.dispose())
        raise
    return db
