"""Reading the job event log (``job_events``): what the event streams and their one
reader per process (``engine/events.py``) ask of the database; and, on PostgreSQL, the
wake-up call between processes (LISTEN/NOTIFY).

Events are written by the job repository, in the transaction of the change they
record; nothing here writes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from orchestrator.db.engine import Database, cancel_safe
from orchestrator.db.schema import job_events
from orchestrator.domain.jobs import JobEvent, JobStatus

BATCH = 1000
CHANNEL = "orchestrator_events"
CONNECT_TIMEOUT_S = 5.0


class EventLog:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.wake = None if db.is_sqlite else PgWake(db.engine.url)

    @cancel_safe
    async def of_job(self, job_id: str, after_id: int = 0, limit: int = 500) -> list[JobEvent]:
        """A job's events after ``after_id``, oldest first."""
        q = (
            sa.select(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.id > after_id)
            .order_by(job_events.c.id)
            .limit(limit)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(q)).all()
        return [to_event(r) for r in rows]

    @cancel_safe
    async def after(
        self,
        high: int,
        gaps: Sequence[int] = (),
        *,
        job_id: str | None = None,
        limit: int = BATCH,
    ) -> list[JobEvent]:
        """Events after ``high`` and those among ``gaps`` (ids below it not seen yet,
        which may commit late: see ``domain/event_cursor.py``), oldest id first; of one
        job, or of all."""
        after = job_events.c.id > high
        where = sa.or_(after, job_events.c.id.in_(list(gaps))) if gaps else after
        q = sa.select(job_events).where(where)
        if job_id is not None:
            q = q.where(job_events.c.job_id == job_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(q.order_by(job_events.c.id).limit(limit))).all()
        return [to_event(r) for r in rows]

    @cancel_safe
    async def start(self, window: int) -> tuple[int, list[int]]:
        """Where a reader starting now stands: the newest visible id, and the ids
        among the ``window`` below it that are not visible. Some of those may belong
        to transactions still open (on PostgreSQL an id is taken at insert, visible at
        commit): a reader must watch them as gaps, or it never sees them."""
        newest_q = sa.select(sa.func.max(job_events.c.id)).scalar_subquery()
        # one statement, so one snapshot: the newest id and what is visible below it
        q = sa.select(job_events.c.id).where(job_events.c.id > newest_q - max(window, 1))
        async with self.db.read() as conn:
            seen = set((await conn.execute(q)).scalars())
        if not seen:
            return 0, []
        newest = max(seen)
        low = max(newest - window, 0)
        return newest, [i for i in range(low + 1, newest) if i not in seen]


class PgWake:
    """Processes on one PostgreSQL database wake each other's event readers: a process
    whose jobs changed sends ``NOTIFY orchestrator_events`` (after its commit), and a
    process with streams open listens. One dedicated connection per process, opened on
    first use; when it fails, readers still poll (``POLL_S``), so nothing is lost, only
    later. A process does not wake itself (its hub does): the payload names the sender."""

    def __init__(self, url: sa.URL) -> None:
        self.dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.me = uuid.uuid4().hex
        # asyncpg ships no type information: its connection is Any to mypy anyway
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._on_wake: Callable[[], None] | None = None
        self.sent = 0
        self.heard = 0
        self._listening_on: Any = None  # the connection LISTEN was issued on

    async def _connection(self) -> Any:
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                import asyncpg

                self._conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT_S)
            if self._on_wake is not None and self._listening_on is not self._conn:
                await self._conn.add_listener(CHANNEL, self._heard)
                self._listening_on = self._conn
            return self._conn

    @property
    def listening(self) -> bool:
        return self.connected and self._listening_on is self._conn

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload != self.me and self._on_wake is not None:
            self.heard += 1
            self._on_wake()

    async def notify(self) -> None:
        """Wake the other processes' readers (call after the change committed)."""
        try:
            conn = await self._connection()
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, self.me)
            self.sent += 1
        except Exception:
            await self._drop()
            raise

    async def listen(self, on_wake: Callable[[], None]) -> None:
        """Call ``on_wake`` (in this event loop) when another process notifies."""
        self._on_wake = on_wake
        try:
            await self._connection()
        except Exception:
            await self._drop()
            raise

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


def to_event(r: sa.Row[tuple[object, ...]]) -> JobEvent:
    m = r._mapping
    return JobEvent(
        id=m["id"],
        job_id=m["job_id"],
        at=m["at"],
        kind=m["kind"],
        status=JobStatus(m["status"]) if m["status"] else None,
        progress=m["progress"],
        message=m["message"],
        data=m["data"] or {},
    )
