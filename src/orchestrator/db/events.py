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
QUEUE_CHANNEL = "orchestrator_queue"  # a job became claimable: idle workers, claim
# leases given back at a worker's shutdown (jobs running upstream): take them over
RELEASED_CHANNEL = "orchestrator_released"
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
    """Processes on one PostgreSQL database wake each other: a process whose jobs
    changed sends ``NOTIFY orchestrator_events`` (after its commit) to wake the event
    readers of the others; a process where a job became claimable sends ``NOTIFY
    orchestrator_queue`` to wake the idle workers of the others. One dedicated
    connection per process carries both, opened on first use, and LISTENs on the
    channels this process wants; when it fails, readers and workers still poll, so
    nothing is lost, only later. A process does not wake itself (its hub does): the
    payload names the sender."""

    def __init__(self, url: sa.URL) -> None:
        self.dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.me = uuid.uuid4().hex
        # asyncpg ships no type information: its connection is Any to mypy anyway
        self._conn: Any = None
        # held while the connection is opened or used (asyncpg runs one statement
        # at a time on a connection)
        self._lock = asyncio.Lock()
        self._on_wake: dict[str, Callable[[], None]] = {}
        self.sent = 0
        self.heard = 0
        self._listening_on: Any = None  # the connection the LISTENs below were issued on
        self._listened: set[str] = set()

    async def _connection(self) -> Any:
        """Open the connection if needed and LISTEN on every wanted channel (the
        caller holds the lock)."""
        if self._conn is None or self._conn.is_closed():
            import asyncpg

            self._conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT_S)
        if self._listening_on is not self._conn:
            self._listening_on = self._conn
            self._listened = set()
        for channel in self._on_wake:
            if channel not in self._listened:
                await self._conn.add_listener(channel, self._heard)
                self._listened.add(channel)
        return self._conn

    @property
    def listening(self) -> bool:
        """Whether the event channel is listened to."""
        return self.listening_to(CHANNEL)

    def listening_to(self, channel: str) -> bool:
        return self.connected and self._listening_on is self._conn and channel in self._listened

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    def _heard(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        on_wake = self._on_wake.get(channel)
        if payload != self.me and on_wake is not None:
            self.heard += 1
            on_wake()

    async def notify(self, channel: str = CHANNEL) -> None:
        """Wake the other processes' listeners of ``channel`` (call after the change
        committed)."""
        try:
            async with self._lock:
                conn = await self._connection()
                await conn.execute("SELECT pg_notify($1, $2)", channel, self.me)
            self.sent += 1
        except Exception:
            await self._drop()
            raise

    async def listen(self, on_wake: Callable[[], None], channel: str = CHANNEL) -> None:
        """Call ``on_wake`` (in this event loop) when another process notifies
        ``channel``."""
        self._on_wake[channel] = on_wake
        try:
            async with self._lock:
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
